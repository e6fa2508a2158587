//! The data of one component instance's Store: WASI contexts and the prepared
//! state of every capability.

use crate::capabilities::Denials;
use crate::capabilities::cluster::ClusterState;
use crate::capabilities::engine::EngineState;
use crate::capabilities::exec::ExecState;
use crate::capabilities::http::HttpPolicy;
use crate::capabilities::log::StageLog;
use crate::capabilities::secrets::SecretsState;
use crate::capabilities::state::StateState;
use crate::capabilities::telemetry::TelemetryState;
use crate::runtime::limits::MemoryLimiter;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub struct StageState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_policy: HttpPolicy,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) log: Arc<StageLog>,
    pub(crate) secrets: SecretsState,
    pub(crate) exec: ExecState,
    pub(crate) telemetry: TelemetryState,
    pub(crate) engine: EngineState,
    pub(crate) cluster: ClusterState,
    pub(crate) workspace: crate::capabilities::workspace::WorkspaceAccess,
    pub(crate) state: StateState,
    pub(crate) denials: Denials,
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StageState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_policy,
        }
    }
}

impl crate::runtime::bindings::types::Host for StageState {}
