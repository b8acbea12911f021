//! The wasmtime side: one engine, components compiled once and cached, a fresh instance per call.
//!
//! A call instantiates the plugin from its [`PluginPre`] (imports resolved once, at load) in a
//! new [`Store`] whose [`CallState`] gives it no filesystem, environment or sockets: only the
//! clocks and randomness WASI needs, `wasi:http` through [`crate::egress`], and the
//! `keyhole:plugin/host` interface (`host_api.rs`). The instance is dropped when the call ends,
//! so nothing of one call is visible to the next.

mod host_api;
mod scratch;
mod state;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Store,
    StoreLimitsBuilder, Trap, UpdateDeadline,
};

use crate::description::{Description, DescriptionError};
use crate::egress::{Credentials, Egress, HostPolicy};
use crate::limits::{CallLimits, ServerLimits, bytes};
use crate::store::CompiledArtifact;

pub use scratch::ScratchRoot;
pub use state::CallState;

/// Bindings generated from `wit/plugin.wit`.
#[allow(missing_docs, reason = "generated code; the WIT documents it")]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "keyhole:plugin/plugin",
        exports: { default: async },
    });
}

pub use bindings::exports::keyhole::plugin::tools::ToolError;
pub use bindings::{Plugin, PluginPre};

/// How often the epoch ticks; a guest that computes without yielding is checked this often.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of each memory and table that a finished call leaves resident, restored to their
/// initial contents, rather than returning them to the kernel.
const KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// Slots decommitted together, so that one TLB flush serves several.
const DECOMMIT_BATCH: usize = 16;

/// Extra instance slots beyond the call limit, for uploads describing themselves.
const SPARE_SLOTS: u32 = 8;

/// A plugin's share of the pool. A Rust `wasm32-wasip2` component holds three core instances
/// (program, WASI adapter, shim), one or two memories and a few tables; other toolchains
/// (componentize-js, componentize-py) need a little more.
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 8;

/// The engine, the linker and the limits every call runs under.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    engine_key: String,
    egress: Arc<Egress>,
    /// What an upload's `describe` runs under: the server's defaults.
    describe_limits: CallLimits,
    /// Where calls of plugins that declare scratch space get their directory.
    scratch: Option<ScratchRoot>,
    next_call: AtomicU64,
}

/// Why a component was refused at upload.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not WebAssembly at all.
    #[error("the file is not WebAssembly")]
    NotWasm,
    /// A core module instead of a component.
    #[error(
        "the file is a core WebAssembly module, not a component; build the plugin with \
         `--target wasm32-wasip2`"
    )]
    CoreModule,
    /// Malformed, or not compilable.
    #[error("the component is invalid: {0}")]
    Invalid(String),
    /// Imports what the host does not provide, or does not export the plugin interface.
    #[error("the component does not implement the keyhole:plugin world: {0}")]
    WrongWorld(String),
    /// `describe` failed or answered an invalid description.
    #[error(transparent)]
    Description(#[from] DescriptionError),
    /// `describe` trapped or overran the deadline.
    #[error("the plugin failed while describing itself: {0}")]
    DescribeFailed(String),
}

/// How a call ended when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin returned a typed error.
    #[error("tool error: {0:?}")]
    Tool(ToolError),
    /// The plugin trapped or broke the contract; the cause is for the log only.
    #[error("plugin failed: {0}")]
    Failed(String),
    /// The call ran past its deadline.
    #[error("the call ran past its deadline")]
    Deadline,
}

/// A plugin compiled and linked, ready to instantiate.
#[derive(Clone)]
pub struct Loaded {
    /// Pre-instantiated component, imports resolved.
    pub pre: PluginPre<CallState>,
    /// The description it answered at upload.
    pub description: Description,
}

/// What a call needs to know about its plugin besides the component.
#[derive(Clone)]
pub struct CallContext {
    /// Plugin id, for logs.
    pub plugin: Arc<str>,
    /// Hosts it may reach.
    pub policy: Arc<HostPolicy>,
    /// Its settings.
    pub settings: Arc<BTreeMap<String, String>>,
    /// What one call may spend.
    pub limits: CallLimits,
    /// Whether the call gets a scratch directory.
    pub scratch: bool,
}

impl Runtime {
    /// Builds the engine, with an instance pool sized for the server's limits, and the linker,
    /// and starts the epoch ticker. Without a `scratch` root, plugins that ask for scratch
    /// space fail their calls.
    pub fn new(
        limits: &ServerLimits,
        egress: Arc<Egress>,
        scratch: Option<ScratchRoot>,
    ) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(limits))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Plugin::add_to_linker::<_, wasmtime::component::HasSelf<CallState>>(&mut linker, |s| s)?;

        let engine_key = engine_key(&engine);
        start_epoch_ticker(&engine);

        Ok(Self {
            engine,
            linker,
            engine_key,
            egress,
            describe_limits: limits.defaults,
            scratch,
            next_call: AtomicU64::new(1),
        })
    }

    /// Identifies this engine's compiled code: wasmtime's version and every setting that
    /// changes it. An artifact made under another key is recompiled.
    pub fn engine_key(&self) -> &str {
        &self.engine_key
    }

    /// Compiles an uploaded component, checks that it implements the world, and asks it to
    /// describe itself. Compiling is CPU-heavy and runs on the blocking pool, so that an upload
    /// does not stall the calls served meanwhile.
    pub async fn load_new(&self, wasm: Arc<[u8]>) -> Result<(Loaded, CompiledArtifact), LoadError> {
        sniff(&wasm)?;
        let engine = self.engine.clone();
        let (component, bytes) = tokio::task::spawn_blocking(move || {
            let component = Component::new(&engine, &wasm)?;
            let bytes = component.serialize()?;
            Ok::<_, wasmtime::Error>((component, bytes))
        })
        .await
        .map_err(|err| LoadError::Invalid(format!("compilation stopped: {err}")))?
        .map_err(|err| LoadError::Invalid(format!("{err:#}")))?;

        let pre = self.link(&component)?;
        let description = self.describe(&pre).await?;
        let artifact = CompiledArtifact {
            engine_key: self.engine_key.clone(),
            bytes,
        };
        Ok((Loaded { pre, description }, artifact))
    }

    /// Loads an installed plugin from its compiled artifact, or recompiles it from `wasm` when
    /// the artifact was made by another engine; the new artifact is returned to be stored.
    pub fn load_installed(
        &self,
        description: Description,
        compiled: Option<&CompiledArtifact>,
        wasm: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<(Loaded, Option<CompiledArtifact>), LoadError> {
        let cached = compiled
            .filter(|artifact| artifact.engine_key == self.engine_key)
            // SAFETY: the artifact was produced by `Component::serialize` of an engine with this
            // very key and read back from the server's own data directory, which only the
            // server writes; wasmtime also checks its header and refuses a mismatch.
            .and_then(|artifact| {
                unsafe { Component::deserialize(&self.engine, &artifact.bytes) }.ok()
            });

        let (component, fresh) = match cached {
            Some(component) => (component, None),
            None => {
                let wasm =
                    wasm().ok_or_else(|| LoadError::Invalid("no component stored".into()))?;
                let component = Component::new(&self.engine, &wasm)
                    .map_err(|err| LoadError::Invalid(format!("{err:#}")))?;
                let bytes = component
                    .serialize()
                    .map_err(|err| LoadError::Invalid(format!("{err:#}")))?;
                let artifact = CompiledArtifact {
                    engine_key: self.engine_key.clone(),
                    bytes,
                };
                (component, Some(artifact))
            }
        };

        let pre = self.link(&component)?;
        Ok((Loaded { pre, description }, fresh))
    }

    fn link(&self, component: &Component) -> Result<PluginPre<CallState>, LoadError> {
        check_imports(component, &self.engine)?;
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|err| LoadError::WrongWorld(format!("{err:#}")))?;
        PluginPre::new(instance_pre).map_err(|err| LoadError::WrongWorld(format!("{err:#}")))
    }

    async fn describe(&self, pre: &PluginPre<CallState>) -> Result<Description, LoadError> {
        let context = CallContext {
            plugin: Arc::from("(uploading)"),
            policy: Arc::new(HostPolicy::default()),
            settings: Arc::default(),
            limits: self.describe_limits,
            scratch: false,
        };
        let json = self
            .run(pre, &context, Arc::default(), |plugin, store| {
                Box::pin(async move { plugin.keyhole_plugin_tools().call_describe(store).await })
            })
            .await
            .map_err(|err| LoadError::DescribeFailed(err.to_string()))?;
        Ok(Description::parse(&json)?)
    }

    /// Runs one tool call in a fresh instance, with the user's credentials for egress.
    pub async fn call(
        &self,
        pre: &PluginPre<CallState>,
        context: &CallContext,
        credentials: Arc<Credentials>,
        tool: &str,
        arguments: &str,
    ) -> Result<String, CallError> {
        let (tool, arguments) = (tool.to_owned(), arguments.to_owned());
        let answer = self
            .run(pre, context, credentials, move |plugin, store| {
                Box::pin(async move {
                    plugin
                        .keyhole_plugin_tools()
                        .call_call(store, &tool, &arguments)
                        .await
                })
            })
            .await?;
        answer.map_err(CallError::Tool)
    }

    /// Instantiates the plugin in a new store and runs `f` under the call's deadline: epoch
    /// interruption stops a guest that computes, the timeout one that waits on the host.
    async fn run<R>(
        &self,
        pre: &PluginPre<CallState>,
        context: &CallContext,
        credentials: Arc<Credentials>,
        f: impl for<'a> FnOnce(
            &'a Plugin,
            &'a mut Store<CallState>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
    ) -> Result<R, CallError> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + context.limits.call_timeout();
        // Declared before the store, so that it is removed after the instance is gone.
        let scratch = match (context.scratch, &self.scratch) {
            (false, _) => None,
            (true, Some(root)) => Some(root.for_call(call).map_err(|err| {
                CallError::Failed(format!("cannot make the scratch directory: {err}"))
            })?),
            (true, None) => {
                return Err(CallError::Failed(
                    "the server has no scratch space configured".to_owned(),
                ));
            }
        };
        let state = CallState::new(
            self.egress.clone(),
            context,
            credentials,
            call,
            store_limits(&context.limits),
            scratch.as_ref().map(|s| s.host_path()).as_deref(),
        )
        .map_err(|err| CallError::Failed(format!("cannot set up the call: {err:#}")))?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state.limits());
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let work = async {
            let plugin = pre.instantiate_async(&mut store).await?;
            f(&plugin, &mut store).await
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Err(_elapsed) => Err(CallError::Deadline),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if is_interrupt(&err) => Err(CallError::Deadline),
            Ok(Err(err)) => Err(CallError::Failed(format!("{err:#}"))),
        }
    }
}

/// What an instance may allocate: memories up to the call's limit, tables in proportion (a
/// table element takes a pointer's room), and no more instances than the pool's share.
fn store_limits(limits: &CallLimits) -> wasmtime::StoreLimits {
    let memory = bytes(limits.max_memory_bytes);
    StoreLimitsBuilder::new()
        .memory_size(memory)
        .table_elements(memory / std::mem::size_of::<usize>())
        .instances(CORE_INSTANCES_PER_COMPONENT as usize)
        .build()
}

fn is_interrupt(err: &wasmtime::Error) -> bool {
    matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt))
}

/// Interfaces a plugin may import: the host API, outgoing HTTP, and what WASI 0.2 language
/// runtimes import to start at all. The host grants nothing through the last group beyond
/// clocks and randomness: no preopened directory, no environment, every socket address denied.
const IMPORTABLE: &[&str] = &[
    "keyhole:plugin/host@",
    "wasi:http/outgoing-handler@",
    "wasi:http/types@",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// Refuses a component that imports an interface outside the plugin world, naming the first
/// such import, before the linker says less clearly that it cannot satisfy it.
fn check_imports(component: &Component, engine: &Engine) -> Result<(), LoadError> {
    let component_type = component.component_type();
    let foreign: Vec<&str> = component_type
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !IMPORTABLE.iter().any(|prefix| name.starts_with(prefix)))
        .collect();
    match foreign.as_slice() {
        [] => Ok(()),
        names => Err(LoadError::WrongWorld(format!(
            "it imports {}, which Keyhole does not provide; a plugin may import              `keyhole:plugin/host`, `wasi:http/outgoing-handler` and the WASI 0.2 interfaces a              language runtime needs",
            names
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Recognises what is not a component before wasmtime does, for a clearer message.
fn sniff(wasm: &[u8]) -> Result<(), LoadError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    // Bytes 4..8 are the version and layer: 1 for core modules, 0x0d with layer 1 for components.
    if wasm[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

fn engine_config(limits: &ServerLimits) -> Config {
    let slots = limits.max_concurrent_calls + SPARE_SLOTS;

    // A Rust wasm32-wasip2 component holds three core instances (the program, the WASI adapter
    // and a shim), and each has a memory or table or two; size the pool with room to spare.
    // Each component is held to a fixed share, so that one plugin cannot take the slots of
    // the others' calls; a component over the share fails to instantiate at upload.
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .total_core_instances(slots * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(slots * MEMORIES_PER_COMPONENT)
        .total_tables(slots * TABLES_PER_COMPONENT)
        .total_stacks(slots)
        .max_memory_size(bytes(limits.defaults.max_memory_bytes))
        .max_unused_warm_slots(slots.min(64))
        // Resetting a slot with `madvise` makes the kernel flush every core's TLB, which costs
        // more than the call itself once the server runs on several cores. Instead, restore
        // the pages a call dirtied in place (found with `PAGEMAP_SCAN` where the kernel has it)
        // and keep them resident for the next call; flush what is decommitted in batches.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES)
        .decommit_batch_size(DECOMMIT_BATCH);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

fn engine_key(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    // The hash covers wasmtime's version as well as its settings.
    format!("wasmtime-{:016x}", hasher.finish())
}

/// Ticks the engine's epoch so that running guests reach their deadline checks. The thread
/// holds only a weak reference and ends with the engine.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("keyhole-epoch".to_owned())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("the epoch thread starts");
}
