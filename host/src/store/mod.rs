//! Durable state, behind the [`Store`] trait so that the engine can be replaced.
//!
//! Every write is durable when the method returns: the API acknowledges nothing that a crash
//! could still lose. [`SledStore`] is the implementation in use.

mod sled_store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::description::Description;

pub use sled_store::SledStore;

/// An installed plugin, without its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// The validated self-description.
    pub description: Description,
    /// SHA-256 of the uploaded component, hex.
    pub sha256: String,
    /// When it was installed, Unix seconds.
    pub installed_at: u64,
}

/// A component compiled to native code for one engine configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledArtifact {
    /// Which engine made it (wasmtime version and settings); any other engine recompiles.
    pub engine_key: String,
    /// The serialized component.
    pub bytes: Vec<u8>,
}

/// A chat backend's API key. The secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public identifier, part of the key.
    pub key_id: String,
    /// The tenant whose users the key acts for.
    pub tenant: String,
    /// SHA-256 of the key's secret part, hex.
    pub secret_sha256: String,
    /// When it was created, Unix seconds.
    pub created_at: u64,
}

/// A store failure. The message is for the log, not for API callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed.
    #[error("store engine: {0}")]
    Engine(String),
    /// A record could not be decoded.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// Which record.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Kinds of small records kept by key, besides plugins and API keys. Secret ones are sealed by the
/// [`crate::vault::Vault`] before they reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// A plugin's OAuth client (id, sealed secret, approval), by plugin id.
    OAuthClients,
    /// A user's sealed tokens, by `plugin \n tenant \n user`.
    Connections,
    /// Authorization links handed out, by the SHA-256 of the link.
    Links,
    /// Authorization flows under way, sealed, by the SHA-256 of their `state`.
    Flows,
    /// A plugin's sealed secret settings, by plugin id.
    Secrets,
    /// The admin's overrides of a plugin's call limits, by plugin id.
    Limits,
}

/// Durable state of the server.
pub trait Store: Send + Sync + 'static {
    /// Installs or replaces a plugin together with its component and compiled artifact, all or
    /// nothing.
    fn put_plugin(
        &self,
        record: &PluginRecord,
        component: &[u8],
        compiled: &CompiledArtifact,
    ) -> Result<(), StoreError>;

    /// One plugin's record.
    fn plugin(&self, id: &str) -> Result<Option<PluginRecord>, StoreError>;

    /// Every plugin's record, by id.
    fn plugins(&self) -> Result<Vec<PluginRecord>, StoreError>;

    /// A plugin's uploaded component.
    fn component(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// A plugin's compiled artifact.
    fn compiled(&self, id: &str) -> Result<Option<CompiledArtifact>, StoreError>;

    /// Replaces a plugin's compiled artifact, after the engine changed.
    fn put_compiled(&self, id: &str, compiled: &CompiledArtifact) -> Result<(), StoreError>;

    /// Removes a plugin with its settings; answers whether it existed.
    fn delete_plugin(&self, id: &str) -> Result<bool, StoreError>;

    /// A plugin's settings.
    fn settings(&self, id: &str) -> Result<BTreeMap<String, String>, StoreError>;

    /// Replaces a plugin's settings.
    fn put_settings(&self, id: &str, settings: &BTreeMap<String, String>)
    -> Result<(), StoreError>;

    /// Adds an API key.
    fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// One API key, by id.
    fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Every API key.
    fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Revokes an API key; answers whether it existed.
    fn delete_api_key(&self, key_id: &str) -> Result<bool, StoreError>;

    /// A server-wide value, such as the admin token's hash.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Sets a server-wide value.
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Makes sure everything written is on disk.
    fn flush(&self) -> Result<(), StoreError>;

    /// A record of `space`.
    fn get(&self, space: Space, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a record of `space`.
    fn put(&self, space: Space, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Removes a record of `space` and answers it: at most one caller gets it, which makes
    /// single-use records (links, flow states) safe against replay.
    fn take(&self, space: Space, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every record of `space` whose key starts with `prefix`.
    fn scan(&self, space: Space, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Removes every record of `space` whose key starts with `prefix`; answers how many.
    fn remove_prefix(&self, space: Space, prefix: &str) -> Result<usize, StoreError>;
}
