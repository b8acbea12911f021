//! The [`Store`] on sled, an embedded ordered key-value store.
//!
//! Each kind of record lives in its own tree, keyed by id, JSON-encoded except for bytes. Writes
//! that touch several trees run in one transaction, and every write is flushed before it
//! returns: sled's own background flush runs only every 500 ms.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Db, Transactional, Tree};
use tokio::runtime::RuntimeFlavor;

use super::{ApiKeyRecord, CompiledArtifact, PluginRecord, Space, Store, StoreError};

/// A [`Store`] in a sled database.
pub struct SledStore {
    db: Db,
    plugins: Tree,
    components: Tree,
    compiled: Tree,
    settings: Tree,
    api_keys: Tree,
    meta: Tree,
    oauth_clients: Tree,
    connections: Tree,
    links: Tree,
    flows: Tree,
    secrets: Tree,
    limits: Tree,
}

impl SledStore {
    /// Opens or creates the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open().map_err(engine)?;
        let tree = |name: &str| db.open_tree(name).map_err(engine);
        Ok(Self {
            plugins: tree("plugins")?,
            components: tree("components")?,
            compiled: tree("compiled")?,
            settings: tree("settings")?,
            api_keys: tree("api_keys")?,
            meta: tree("meta")?,
            oauth_clients: tree("oauth_clients")?,
            connections: tree("connections")?,
            links: tree("links")?,
            flows: tree("flows")?,
            secrets: tree("secrets")?,
            limits: tree("limits")?,
            db,
        })
    }

    fn space(&self, space: Space) -> &Tree {
        match space {
            Space::OAuthClients => &self.oauth_clients,
            Space::Connections => &self.connections,
            Space::Links => &self.links,
            Space::Flows => &self.flows,
            Space::Secrets => &self.secrets,
            Space::Limits => &self.limits,
        }
    }

    /// Flushes to disk, then answers `value`. The flush waits for an fsync; on a worker of a
    /// multi-threaded tokio runtime it tells the runtime so, which moves the worker's other
    /// tasks elsewhere instead of stalling them behind the disk.
    fn flushed<T>(&self, value: T) -> Result<T, StoreError> {
        let flush = || self.db.flush().map_err(engine);
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
        if on_worker {
            tokio::task::block_in_place(flush)?;
        } else {
            flush()?;
        }
        Ok(value)
    }
}

fn engine(err: sled::Error) -> StoreError {
    StoreError::Engine(err.to_string())
}

fn transaction(err: TransactionError<()>) -> StoreError {
    match err {
        TransactionError::Storage(err) => engine(err),
        TransactionError::Abort(()) => StoreError::Engine("transaction aborted".to_owned()),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize to JSON")
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt {
        key: key.to_owned(),
        reason: err.to_string(),
    })
}

/// A compiled artifact is stored as `engine key`, a newline, then the bytes.
fn encode_compiled(compiled: &CompiledArtifact) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(compiled.engine_key.len() + 1 + compiled.bytes.len());
    bytes.extend_from_slice(compiled.engine_key.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(&compiled.bytes);
    bytes
}

fn decode_compiled(id: &str, bytes: &[u8]) -> Result<CompiledArtifact, StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: format!("compiled/{id}"),
        reason: "no engine key".to_owned(),
    };
    let split = bytes.iter().position(|&b| b == b'\n').ok_or_else(corrupt)?;
    let engine_key = std::str::from_utf8(&bytes[..split]).map_err(|_| corrupt())?;
    Ok(CompiledArtifact {
        engine_key: engine_key.to_owned(),
        bytes: bytes[split + 1..].to_vec(),
    })
}

impl Store for SledStore {
    fn put_plugin(
        &self,
        record: &PluginRecord,
        component: &[u8],
        compiled: &CompiledArtifact,
    ) -> Result<(), StoreError> {
        let id = record.description.id.as_bytes();
        let record = encode(record);
        let compiled = encode_compiled(compiled);

        (&self.plugins, &self.components, &self.compiled)
            .transaction(|(plugins, components, compiled_tree)| {
                plugins.insert(id, record.as_slice())?;
                components.insert(id, component)?;
                compiled_tree.insert(id, compiled.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(transaction)?;
        self.flushed(())
    }

    fn plugin(&self, id: &str) -> Result<Option<PluginRecord>, StoreError> {
        self.plugins
            .get(id)
            .map_err(engine)?
            .map(|bytes| decode(&format!("plugins/{id}"), &bytes))
            .transpose()
    }

    fn plugins(&self) -> Result<Vec<PluginRecord>, StoreError> {
        self.plugins
            .iter()
            .map(|entry| {
                let (key, bytes) = entry.map_err(engine)?;
                decode(
                    &format!("plugins/{}", String::from_utf8_lossy(&key)),
                    &bytes,
                )
            })
            .collect()
    }

    fn component(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .components
            .get(id)
            .map_err(engine)?
            .map(|bytes| bytes.to_vec()))
    }

    fn compiled(&self, id: &str) -> Result<Option<CompiledArtifact>, StoreError> {
        self.compiled
            .get(id)
            .map_err(engine)?
            .map(|bytes| decode_compiled(id, &bytes))
            .transpose()
    }

    fn put_compiled(&self, id: &str, compiled: &CompiledArtifact) -> Result<(), StoreError> {
        self.compiled
            .insert(id, encode_compiled(compiled))
            .map_err(engine)?;
        self.flushed(())
    }

    fn delete_plugin(&self, id: &str) -> Result<bool, StoreError> {
        let existed = (
            &self.plugins,
            &self.components,
            &self.compiled,
            &self.settings,
        )
            .transaction(|(plugins, components, compiled, settings)| {
                let existed = plugins.remove(id.as_bytes())?.is_some();
                components.remove(id.as_bytes())?;
                compiled.remove(id.as_bytes())?;
                settings.remove(id.as_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(existed)
            })
            .map_err(transaction)?;
        self.flushed(existed)
    }

    fn settings(&self, id: &str) -> Result<BTreeMap<String, String>, StoreError> {
        match self.settings.get(id).map_err(engine)? {
            Some(bytes) => decode(&format!("settings/{id}"), &bytes),
            None => Ok(BTreeMap::new()),
        }
    }

    fn put_settings(
        &self,
        id: &str,
        settings: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.settings.insert(id, encode(settings)).map_err(engine)?;
        self.flushed(())
    }

    fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.api_keys
            .insert(key.key_id.as_bytes(), encode(key))
            .map_err(engine)?;
        self.flushed(())
    }

    fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.api_keys
            .get(key_id)
            .map_err(engine)?
            .map(|bytes| decode(&format!("api_keys/{key_id}"), &bytes))
            .transpose()
    }

    fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.api_keys
            .iter()
            .map(|entry| {
                let (key, bytes) = entry.map_err(engine)?;
                decode(
                    &format!("api_keys/{}", String::from_utf8_lossy(&key)),
                    &bytes,
                )
            })
            .collect()
    }

    fn delete_api_key(&self, key_id: &str) -> Result<bool, StoreError> {
        let existed = self.api_keys.remove(key_id).map_err(engine)?.is_some();
        self.flushed(existed)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .meta
            .get(key)
            .map_err(engine)?
            .map(|bytes| bytes.to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key, value).map_err(engine)?;
        self.flushed(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flushed(())
    }

    fn get(&self, space: Space, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .space(space)
            .get(key)
            .map_err(engine)?
            .map(|v| v.to_vec()))
    }

    fn put(&self, space: Space, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.space(space).insert(key, value).map_err(engine)?;
        self.flushed(())
    }

    fn take(&self, space: Space, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let taken = self.space(space).remove(key).map_err(engine)?;
        self.flushed(taken.map(|v| v.to_vec()))
    }

    fn scan(&self, space: Space, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.space(space)
            .scan_prefix(prefix)
            .map(|entry| {
                let (key, value) = entry.map_err(engine)?;
                Ok((String::from_utf8_lossy(&key).into_owned(), value.to_vec()))
            })
            .collect()
    }

    fn remove_prefix(&self, space: Space, prefix: &str) -> Result<usize, StoreError> {
        let tree = self.space(space);
        let mut removed = 0;
        for key in tree.scan_prefix(prefix).keys() {
            tree.remove(key.map_err(engine)?).map_err(engine)?;
            removed += 1;
        }
        self.flushed(removed)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::description::Description;

    fn record(id: &str) -> PluginRecord {
        let description = json!({
            "description_version": 1, "id": id, "name": "N", "version": "1", "description": "D",
            "tools": [{"name": "t", "description": "T", "parameters": {"type": "object"}}]
        });
        PluginRecord {
            description: Description::parse(&description.to_string()).unwrap(),
            sha256: "00".repeat(32),
            installed_at: 1,
        }
    }

    fn artifact(key: &str) -> CompiledArtifact {
        CompiledArtifact {
            engine_key: key.to_owned(),
            bytes: vec![0, 10, 255, b'\n'],
        }
    }

    #[test]
    fn plugins_survive_reopening_and_delete_takes_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .put_plugin(&record("a"), b"wasm", &artifact("k1"))
                .unwrap();
            store
                .put_settings("a", &BTreeMap::from([("x".to_owned(), "1".to_owned())]))
                .unwrap();
        }

        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.plugin("a").unwrap(), Some(record("a")));
        assert_eq!(store.component("a").unwrap().as_deref(), Some(&b"wasm"[..]));
        assert_eq!(store.compiled("a").unwrap(), Some(artifact("k1")));
        assert_eq!(store.settings("a").unwrap()["x"], "1");

        assert!(store.delete_plugin("a").unwrap());
        assert!(!store.delete_plugin("a").unwrap());
        assert_eq!(store.plugin("a").unwrap(), None);
        assert_eq!(store.component("a").unwrap(), None);
        assert!(store.settings("a").unwrap().is_empty());
    }

    #[test]
    fn records_are_taken_once_and_removed_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.put(Space::Flows, "s1", b"flow").unwrap();
        assert_eq!(
            store.take(Space::Flows, "s1").unwrap().as_deref(),
            Some(&b"flow"[..])
        );
        assert_eq!(store.take(Space::Flows, "s1").unwrap(), None);

        for key in ["a\nt\nu1", "a\nt\nu2", "ab\nt\nu1"] {
            store.put(Space::Connections, key, b"x").unwrap();
        }
        assert_eq!(store.scan(Space::Connections, "a\n").unwrap().len(), 2);
        assert_eq!(store.remove_prefix(Space::Connections, "a\n").unwrap(), 2);
        assert_eq!(
            store
                .get(Space::Connections, "ab\nt\nu1")
                .unwrap()
                .as_deref(),
            Some(&b"x"[..])
        );
    }

    #[test]
    fn api_keys_are_listed_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let key = ApiKeyRecord {
            key_id: "k1".to_owned(),
            tenant: "acme".to_owned(),
            secret_sha256: "ab".repeat(32),
            created_at: 5,
        };
        store.put_api_key(&key).unwrap();
        assert_eq!(store.api_keys().unwrap(), vec![key.clone()]);
        assert_eq!(store.api_key("k1").unwrap(), Some(key));
        assert!(store.delete_api_key("k1").unwrap());
        assert_eq!(store.api_key("k1").unwrap(), None);
    }
}
