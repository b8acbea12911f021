//! The installed plugins, compiled, linked and cached in memory, so that a call looks nothing
//! up in the store: the description, argument validators, host policy and settings are all here.
//! The store stays the truth; every change is written there first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use jsonschema::Validator;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Semaphore};

use crate::description::{Description, OAuthSpec};
use crate::egress::{HostPolicy, SecretSetting};
use crate::limits::{LimitError, LimitOverrides, ServerLimits};
use crate::runtime::{CallContext, CallState, LoadError, PluginPre, Runtime};
use crate::store::{PluginRecord, Space, Store, StoreError};
use crate::time::now_unix;
use crate::vault::{Secret, Vault};

/// One installed plugin, ready to call.
pub struct InstalledPlugin {
    /// What the store holds about it.
    pub record: PluginRecord,
    /// The component, linked.
    pub pre: PluginPre<CallState>,
    /// One compiled argument schema per tool.
    pub validators: Arc<HashMap<String, Validator>>,
    /// What each call needs: id, host policy, settings, limits.
    pub context: CallContext,
    /// The admin's overrides of the server's limits, as set.
    pub overrides: LimitOverrides,
    /// One permit per call of this plugin that may run at once.
    pub calls: Arc<Semaphore>,
    /// Secret settings, unsealed; they reach requests only through their placeholders.
    pub secrets: Arc<BTreeMap<String, Secret>>,
    /// The OAuth provider, if the plugin declares one.
    pub oauth: Option<Arc<OAuthSpec>>,
    /// The hosts the user's token goes to.
    pub api_hosts: HostPolicy,
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
            .filter(|spec| {
                spec.required
                    && !self.context.settings.contains_key(&spec.name)
                    && !self.secrets.contains_key(&spec.name)
            })
            .map(|spec| spec.name.clone())
            .collect()
    }

    /// The secret settings as the egress uses them: each with the hosts it may go to.
    pub fn secret_settings(&self) -> Vec<SecretSetting> {
        self.description()
            .settings
            .iter()
            .filter_map(|spec| {
                let value = self.secrets.get(&spec.name)?;
                Some(SecretSetting {
                    name: spec.name.clone(),
                    value: value.clone(),
                    hosts: HostPolicy::new(&spec.hosts),
                })
            })
            .collect()
    }

    fn with_settings(
        &self,
        settings: BTreeMap<String, String>,
        secrets: BTreeMap<String, Secret>,
    ) -> Self {
        Self {
            record: self.record.clone(),
            pre: self.pre.clone(),
            validators: self.validators.clone(),
            context: CallContext {
                settings: Arc::new(settings),
                ..self.context.clone()
            },
            overrides: self.overrides.clone(),
            // The same permits: calls running now keep counting against the cap.
            calls: self.calls.clone(),
            secrets: Arc::new(secrets),
            oauth: self.oauth.clone(),
            api_hosts: self.api_hosts.clone(),
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
    /// Limits the server cannot honour.
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The installed plugins.
pub struct Registry {
    runtime: Arc<Runtime>,
    limits: ServerLimits,
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    plugins: RwLock<HashMap<String, Arc<InstalledPlugin>>>,
    /// Serialises changes, so that the store and the cache change in the same order.
    writes: Mutex<()>,
}

impl Registry {
    /// Loads every installed plugin from the store, recompiling those compiled by another
    /// engine. A plugin that no longer loads is logged and skipped, not fatal.
    pub fn open(
        runtime: Arc<Runtime>,
        limits: ServerLimits,
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
    ) -> Result<Self, StoreError> {
        let mut plugins = HashMap::new();
        for record in store.plugins()? {
            let id = record.description.id.clone();
            match load_installed(&runtime, &limits, store.as_ref(), &vault, record) {
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
            limits,
            store,
            vault,
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
    /// and the one it replaced. Settings the new version no longer declares are dropped.
    pub async fn install(
        &self,
        wasm: Vec<u8>,
    ) -> Result<(Arc<InstalledPlugin>, Option<Arc<InstalledPlugin>>), RegistryError> {
        let wasm: Arc<[u8]> = wasm.into();
        let (loaded, artifact) = self.runtime.load_new(wasm.clone()).await?;
        let description = loaded.description;
        let id = description.id.clone();
        let record = PluginRecord {
            sha256: hex::encode(Sha256::digest(&wasm)),
            installed_at: now_unix(),
            description,
        };

        let _write = self.writes.lock().await;
        let declared = |secret: bool| {
            let names: BTreeSet<String> = record
                .description
                .settings
                .iter()
                .filter(|spec| spec.secret == secret)
                .map(|spec| spec.name.clone())
                .collect();
            names
        };
        let (plain, secret) = (declared(false), declared(true));
        let mut settings = self.store.settings(&id)?;
        settings.retain(|name, _| plain.contains(name));
        let mut secrets = read_secrets(self.store.as_ref(), &self.vault, &id)?;
        secrets.retain(|name, _| secret.contains(name));
        let overrides = read_overrides(self.store.as_ref(), &id)?;

        let store = self.store.clone();
        let stored = record.clone();
        let kept = settings.clone();
        let sealed = seal_secrets(&self.vault, &id, &secrets);
        blocking(move || {
            store.put_plugin(&stored, &wasm, &artifact)?;
            store.put_settings(&stored.description.id, &kept)?;
            store.put(Space::Secrets, &stored.description.id, &sealed)
        })
        .await?;

        let parts = Parts {
            settings,
            secrets,
            overrides,
        };
        let plugin = Arc::new(assemble(record, loaded.pre, parts, &self.limits)?);
        let replaced = self
            .plugins
            .write()
            .expect("registry lock")
            .insert(id, plugin.clone());
        Ok((plugin, replaced))
    }

    /// Uninstalls a plugin and its settings.
    pub async fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let _write = self.writes.lock().await;
        let store = self.store.clone();
        let owned = id.to_owned();
        let existed = blocking(move || {
            let existed = store.delete_plugin(&owned)?;
            store.take(Space::Secrets, &owned)?;
            store.take(Space::Limits, &owned)?;
            Ok(existed)
        })
        .await?;
        if !existed {
            return Err(RegistryError::NotFound(id.to_owned()));
        }
        self.plugins.write().expect("registry lock").remove(id);
        Ok(())
    }

    /// Changes a plugin's settings: each named setting is set, or unset when `None`; the
    /// others keep their values. Every name must be declared; secret ones are sealed.
    pub async fn update_settings(
        &self,
        id: &str,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<Arc<InstalledPlugin>, RegistryError> {
        let _write = self.writes.lock().await;
        let plugin = self
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        let spec_of = |name: &str| {
            plugin
                .description()
                .settings
                .iter()
                .find(|s| s.name == name)
        };
        let unknown: Vec<String> = changes
            .keys()
            .filter(|name| spec_of(name).is_none())
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(RegistryError::UnknownSettings(unknown));
        }

        let mut settings = (*plugin.context.settings).clone();
        let mut secrets = (*plugin.secrets).clone();
        for (name, value) in changes {
            let secret = spec_of(&name).is_some_and(|spec| spec.secret);
            match (secret, value) {
                (false, Some(value)) => drop(settings.insert(name, value)),
                (false, None) => drop(settings.remove(&name)),
                (true, Some(value)) => drop(secrets.insert(name, Secret(value))),
                (true, None) => drop(secrets.remove(&name)),
            }
        }

        let store = self.store.clone();
        let (owned, stored) = (id.to_owned(), settings.clone());
        let sealed = seal_secrets(&self.vault, id, &secrets);
        blocking(move || {
            store.put_settings(&owned, &stored)?;
            store.put(Space::Secrets, &owned, &sealed)
        })
        .await?;

        let updated = Arc::new(plugin.with_settings(settings, secrets));
        self.plugins
            .write()
            .expect("registry lock")
            .insert(id.to_owned(), updated.clone());
        Ok(updated)
    }
}

impl Registry {
    /// Replaces the admin's overrides of a plugin's limits; calls that start afterwards run
    /// under them. Overrides the server cannot honour are refused and change nothing.
    pub async fn set_limits(
        &self,
        id: &str,
        overrides: LimitOverrides,
    ) -> Result<Arc<InstalledPlugin>, RegistryError> {
        let _write = self.writes.lock().await;
        let plugin = self
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        let limits = self.limits.for_plugin(&overrides)?;

        let store = self.store.clone();
        let owned = id.to_owned();
        let json = serde_json::to_vec(&overrides).expect("limit overrides serialize");
        blocking(move || store.put(Space::Limits, &owned, &json)).await?;

        let mut context = plugin.context.clone();
        context.limits = limits;
        let updated = Arc::new(InstalledPlugin {
            record: plugin.record.clone(),
            pre: plugin.pre.clone(),
            validators: plugin.validators.clone(),
            context,
            overrides,
            calls: Arc::new(Semaphore::new(limits.max_concurrent_calls as usize)),
            secrets: plugin.secrets.clone(),
            oauth: plugin.oauth.clone(),
            api_hosts: plugin.api_hosts.clone(),
        });
        self.plugins
            .write()
            .expect("registry lock")
            .insert(id.to_owned(), updated.clone());
        Ok(updated)
    }
}

/// A plugin's stored state besides its record and component.
struct Parts {
    settings: BTreeMap<String, String>,
    secrets: BTreeMap<String, Secret>,
    overrides: LimitOverrides,
}

fn read_overrides(store: &dyn Store, plugin: &str) -> Result<LimitOverrides, StoreError> {
    let Some(json) = store.get(Space::Limits, plugin)? else {
        return Ok(LimitOverrides::default());
    };
    serde_json::from_slice(&json).map_err(|err| StoreError::Corrupt {
        key: format!("limits/{plugin}"),
        reason: err.to_string(),
    })
}

fn secrets_key(plugin: &str) -> String {
    format!("secrets\n{plugin}")
}

fn seal_secrets(vault: &Vault, plugin: &str, secrets: &BTreeMap<String, Secret>) -> Vec<u8> {
    let plain: BTreeMap<&str, &str> = secrets
        .iter()
        .map(|(name, value)| (name.as_str(), value.expose()))
        .collect();
    let json = serde_json::to_vec(&plain).expect("a map of strings serializes");
    vault.seal(&secrets_key(plugin), &json)
}

fn read_secrets(
    store: &dyn Store,
    vault: &Vault,
    plugin: &str,
) -> Result<BTreeMap<String, Secret>, StoreError> {
    let Some(sealed) = store.get(Space::Secrets, plugin)? else {
        return Ok(BTreeMap::new());
    };
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: format!("secrets/{plugin}"),
        reason: reason.to_owned(),
    };
    let json = vault
        .unseal(&secrets_key(plugin), &sealed)
        .map_err(|_| corrupt("does not open with this master key"))?;
    let plain: BTreeMap<String, String> =
        serde_json::from_slice(&json).map_err(|_| corrupt("not a map of strings"))?;
    Ok(plain
        .into_iter()
        .map(|(name, value)| (name, Secret(value)))
        .collect())
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
    limits: &ServerLimits,
    store: &dyn Store,
    vault: &Vault,
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
    let parts = Parts {
        settings: store.settings(&id)?,
        secrets: read_secrets(store, vault, &id)?,
        overrides: read_overrides(store, &id)?,
    };
    assemble(record, loaded.pre, parts, limits)
}

fn assemble(
    record: PluginRecord,
    pre: PluginPre<CallState>,
    parts: Parts,
    server: &ServerLimits,
) -> Result<InstalledPlugin, RegistryError> {
    let description = &record.description;
    let validators = description
        .argument_validators()
        .map_err(LoadError::Description)?;
    let oauth = description.oauth.clone().map(Arc::new);
    let api_hosts: Vec<String> = oauth.iter().flat_map(|o| o.api_hosts.clone()).collect();

    // A request may go to the declared hosts, the API hosts, and the hosts of secret settings.
    let reachable: Vec<&String> = description
        .hosts
        .iter()
        .chain(&api_hosts)
        .chain(description.settings.iter().flat_map(|s| &s.hosts))
        .collect();
    // Overrides set under a more generous server configuration give way to its defaults.
    let limits = server.for_plugin(&parts.overrides).unwrap_or_else(|err| {
        tracing::warn!(plugin = %description.id, error = %err, "the plugin's limits no longer fit this server; using the defaults");
        server.defaults
    });
    let context = CallContext {
        plugin: Arc::from(description.id.as_str()),
        policy: Arc::new(HostPolicy::new(&reachable)),
        settings: Arc::new(parts.settings),
        limits,
        scratch: description.scratch,
    };
    Ok(InstalledPlugin {
        api_hosts: HostPolicy::new(&api_hosts),
        oauth,
        secrets: Arc::new(parts.secrets),
        overrides: parts.overrides,
        calls: Arc::new(Semaphore::new(limits.max_concurrent_calls as usize)),
        record,
        pre,
        validators: Arc::new(validators),
        context,
    })
}
