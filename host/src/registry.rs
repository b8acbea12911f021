//! The installed plugins, compiled, linked and cached in memory, so that a call looks nothing
//! up in the store: the description, argument validators, host policy and settings are all here.
//! The store stays the truth; every change is written there first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use jsonschema::Validator;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::description::Description;
use crate::egress::HostPolicy;
use crate::runtime::{CallContext, CallState, LoadError, PluginPre, Runtime};
use crate::store::{PluginRecord, Store, StoreError};
use crate::time::now_unix;

/// One installed plugin, ready to call.
pub struct InstalledPlugin {
    /// What the store holds about it.
    pub record: PluginRecord,
    /// The component, linked.
    pub pre: PluginPre<CallState>,
    /// One compiled argument schema per tool.
    pub validators: Arc<HashMap<String, Validator>>,
    /// What each call needs: id, host policy, settings.
    pub context: CallContext,
}

impl InstalledPlugin {
    /// The plugin's self-description.
    pub fn description(&self) -> &Description {
        &self.record.description
    }

    /// Required settings that are not set.
    pub fn missing_settings(&self) -> Vec<String> {
        self.description()
            .settings
            .iter()
            .filter(|spec| spec.required && !self.context.settings.contains_key(&spec.name))
            .map(|spec| spec.name.clone())
            .collect()
    }

    fn with_settings(&self, settings: BTreeMap<String, String>) -> Self {
        Self {
            record: self.record.clone(),
            pre: self.pre.clone(),
            validators: self.validators.clone(),
            context: CallContext {
                plugin: self.context.plugin.clone(),
                policy: self.context.policy.clone(),
                settings: Arc::new(settings),
            },
        }
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The upload was refused.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// No plugin has this id.
    #[error("no plugin is installed with the id `{0}`")]
    NotFound(String),
    /// Settings named that the plugin does not declare.
    #[error("the plugin declares no setting named {}", .0.join(", "))]
    UnknownSettings(Vec<String>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The installed plugins.
pub struct Registry {
    runtime: Arc<Runtime>,
    store: Arc<dyn Store>,
    plugins: RwLock<HashMap<String, Arc<InstalledPlugin>>>,
    /// Serialises changes, so that the store and the cache change in the same order.
    writes: Mutex<()>,
}

impl Registry {
    /// Loads every installed plugin from the store, recompiling those compiled by another
    /// engine. A plugin that no longer loads is logged and skipped, not fatal.
    pub fn open(runtime: Arc<Runtime>, store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let mut plugins = HashMap::new();
        for record in store.plugins()? {
            let id = record.description.id.clone();
            match load_installed(&runtime, store.as_ref(), record) {
                Ok(plugin) => {
                    plugins.insert(id, Arc::new(plugin));
                }
                Err(err) => {
                    tracing::error!(plugin = %id, error = %err, "cannot load an installed plugin")
                }
            }
        }
        Ok(Self {
            runtime,
            store,
            plugins: RwLock::new(plugins),
            writes: Mutex::new(()),
        })
    }

    /// The plugin with this id.
    pub fn get(&self, id: &str) -> Option<Arc<InstalledPlugin>> {
        self.plugins.read().expect("registry lock").get(id).cloned()
    }

    /// Every plugin, by id.
    pub fn list(&self) -> Vec<Arc<InstalledPlugin>> {
        let mut plugins: Vec<_> = self
            .plugins
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        plugins.sort_by(|a, b| a.description().id.cmp(&b.description().id));
        plugins
    }

    /// Installs a plugin from its component, replacing one with the same id; answers the plugin
    /// and whether it replaced another. Settings the new version no longer declares are dropped.
    pub async fn install(
        &self,
        wasm: Vec<u8>,
    ) -> Result<(Arc<InstalledPlugin>, bool), RegistryError> {
        let (loaded, artifact) = self.runtime.load_new(&wasm).await?;
        let description = loaded.description;
        let id = description.id.clone();
        let record = PluginRecord {
            sha256: hex::encode(Sha256::digest(&wasm)),
            installed_at: now_unix(),
            description,
        };

        let _write = self.writes.lock().await;
        let mut settings = self.store.settings(&id)?;
        settings.retain(|name, _| record.description.settings.iter().any(|s| &s.name == name));
        let store = self.store.clone();
        let stored = record.clone();
        let kept = settings.clone();
        blocking(move || {
            store.put_plugin(&stored, &wasm, &artifact)?;
            store.put_settings(&stored.description.id, &kept)
        })
        .await?;

        let plugin = Arc::new(assemble(record, loaded.pre, settings)?);
        let replaced = self
            .plugins
            .write()
            .expect("registry lock")
            .insert(id, plugin.clone())
            .is_some();
        Ok((plugin, replaced))
    }

    /// Uninstalls a plugin and its settings.
    pub async fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let _write = self.writes.lock().await;
        let store = self.store.clone();
        let owned = id.to_owned();
        if !blocking(move || store.delete_plugin(&owned)).await? {
            return Err(RegistryError::NotFound(id.to_owned()));
        }
        self.plugins.write().expect("registry lock").remove(id);
        Ok(())
    }

    /// Replaces a plugin's settings; every name must be declared.
    pub async fn set_settings(
        &self,
        id: &str,
        settings: BTreeMap<String, String>,
    ) -> Result<Arc<InstalledPlugin>, RegistryError> {
        let _write = self.writes.lock().await;
        let plugin = self
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        let unknown: Vec<String> = settings
            .keys()
            .filter(|name| {
                !plugin
                    .description()
                    .settings
                    .iter()
                    .any(|s| &s.name == *name)
            })
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(RegistryError::UnknownSettings(unknown));
        }

        let store = self.store.clone();
        let (owned, stored) = (id.to_owned(), settings.clone());
        blocking(move || store.put_settings(&owned, &stored)).await?;

        let updated = Arc::new(plugin.with_settings(settings));
        self.plugins
            .write()
            .expect("registry lock")
            .insert(id.to_owned(), updated.clone());
        Ok(updated)
    }
}

/// Runs a store write on the blocking pool: it ends with an fsync.
async fn blocking<T: Send + 'static>(
    write: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|err| StoreError::Engine(format!("store task failed: {err}")))?
}

fn load_installed(
    runtime: &Runtime,
    store: &dyn Store,
    record: PluginRecord,
) -> Result<InstalledPlugin, RegistryError> {
    let id = record.description.id.clone();
    let compiled = store.compiled(&id)?;
    let (loaded, fresh) =
        runtime.load_installed(record.description.clone(), compiled.as_ref(), || {
            store.component(&id).ok().flatten()
        })?;
    if let Some(artifact) = fresh {
        tracing::info!(plugin = %id, "recompiled for this engine");
        store.put_compiled(&id, &artifact)?;
    }
    let settings = store.settings(&id)?;
    assemble(record, loaded.pre, settings)
}

fn assemble(
    record: PluginRecord,
    pre: PluginPre<CallState>,
    settings: BTreeMap<String, String>,
) -> Result<InstalledPlugin, RegistryError> {
    let validators = record
        .description
        .argument_validators()
        .map_err(LoadError::Description)?;
    let context = CallContext {
        plugin: Arc::from(record.description.id.as_str()),
        policy: Arc::new(HostPolicy::new(&record.description.hosts)),
        settings: Arc::new(settings),
    };
    Ok(InstalledPlugin {
        record,
        pre,
        validators: Arc::new(validators),
        context,
    })
}
