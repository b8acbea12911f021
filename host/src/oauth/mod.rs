//! OAuth 2.0 for plugins: the admin's client, the user's authorization, the tokens.
//!
//! The plugin declares its provider ([`crate::description::OAuthSpec`]); the admin brings the
//! client id and secret ([`client`]); the end user authorizes once through a flow the host runs,
//! authorization code with PKCE, bound to the browser that started it ([`flow`]); the tokens are
//! sealed in the store and refreshed when due, one refresh at a time per connection
//! ([`connections`]). Token, refresh and revocation requests go through the egress client, so
//! overrides and address rules apply to them as to plugins ([`token_request`]); answers are read
//! by a tolerant parser ([`token_response`]), because real providers deviate from the RFC.
//!
//! Nothing here logs or returns a token, a secret, a code, a PKCE verifier or a state.

pub mod client;
pub mod connections;
pub mod flow;
mod token_request;
pub mod token_response;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use url::Url;

use crate::egress::Egress;
use crate::store::{Store, StoreError};
use crate::vault::{Vault, VaultError};

pub use client::OAuthClient;
pub use connections::{ConnectionRef, ConnectionView};
pub use flow::{FlowError, LinkRecord, PendingFlow, Started, flow_cookie_name};

/// How long an authorization link, and the flow it starts, stay valid, unless configured.
pub const DEFAULT_FLOW_TTL_SECS: u64 = 10 * 60;

/// The OAuth side of the server.
pub struct OAuth {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    egress: Arc<Egress>,
    public_url: Url,
    flow_ttl_secs: u64,
    /// One lock per connection, so that concurrent calls wait for a single refresh: providers
    /// that rotate refresh tokens would otherwise invalidate all but one of them.
    refreshing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Why an OAuth operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The grant is gone (revoked, expired, rotated away): the user must authorize again.
    #[error("the user's authorization is no longer valid")]
    InvalidGrant,
    /// The provider refused for another reason.
    #[error("the provider refused: {0}")]
    Provider(String),
    /// The provider could not be reached or answered nonsense.
    #[error("the provider could not be reached: {0}")]
    Transport(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed record did not open.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl OAuth {
    /// The OAuth side, reached by users at `public_url`; links and flows live `flow_ttl_secs`.
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        egress: Arc<Egress>,
        public_url: Url,
        flow_ttl_secs: u64,
    ) -> Self {
        Self {
            store,
            vault,
            egress,
            public_url,
            flow_ttl_secs,
            refreshing: Mutex::new(HashMap::new()),
        }
    }

    /// Where providers send the user back; the admin registers it with the provider.
    pub fn redirect_uri(&self) -> String {
        self.url("oauth/callback")
    }

    /// How long links and flows stay valid.
    pub fn flow_ttl_secs(&self) -> u64 {
        self.flow_ttl_secs
    }

    /// Whether the flow's cookie must be `Secure`.
    pub fn is_https(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// The origin users' browsers reach the server at, as they write it in `Origin`.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }

    fn url(&self, path: &str) -> String {
        let base = self.public_url.as_str().trim_end_matches('/');
        format!("{base}/{path}")
    }

    /// Drops everything the OAuth side holds for a plugin that is uninstalled.
    pub fn forget_plugin(&self, plugin: &str) -> Result<(), OAuthError> {
        self.delete_client(plugin)?;
        self.drop_connections(plugin)?;
        Ok(())
    }
}
