//! What a call's [`wasmtime::Store`] holds.

use std::path::Path;
use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::CallContext;
use super::host_api::HostApi;
use crate::egress::{Credentials, Egress, EgressHooks};

/// The state of one call: a WASI context with nothing granted, the HTTP hooks, the host API.
pub struct CallState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: EgressHooks,
    pub(super) host: HostApi,
    limits: StoreLimits,
}

impl CallState {
    pub(super) fn new(
        egress: Arc<Egress>,
        context: &CallContext,
        credentials: Arc<Credentials>,
        call: u64,
        limits: StoreLimits,
        scratch: Option<&Path>,
    ) -> wasmtime::Result<Self> {
        // No environment, arguments or sockets, and stdio goes nowhere. The only directory is
        // the call's own scratch space, for a plugin that declared it.
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(path) = scratch {
            wasi.preopened_dir(path, "/scratch", FsPerms::ReadWrite)?;
        }
        let wasi = wasi.build();
        Ok(Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: EgressHooks::new(
                egress,
                context.policy.clone(),
                credentials,
                context.plugin.clone(),
                call,
                context.limits,
            ),
            host: HostApi::new(
                context.plugin.clone(),
                call,
                context.settings.clone(),
                crate::limits::bytes(context.limits.max_log_bytes),
            ),
            limits,
        })
    }

    pub(super) fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}
