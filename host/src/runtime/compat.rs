//! Plugins built against `gantry:pipeline@0.1.0` run on the same host
//! implementation as 0.2 ones: each 0.1 host interface is implemented here by
//! calling its 0.2 counterpart. The shared `types` need no conversion (the
//! 0.1 bindings reuse the 0.2 Rust types); the records declared inside the
//! `exec`, `engine` and `cluster` interfaces are converted field by field, so
//! that a field added on one side is a compile error here, not a silent drop.

use crate::runtime::bindings::types::{HostError, Level};
use crate::runtime::bindings::{self as v2, v0_1 as v1};
use crate::runtime::state::StageState;

type Props = Vec<(String, String)>;

impl v1::log::Host for StageState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        v2::log::Host::log(self, level, message).await
    }
    async fn progress(
        &mut self,
        done: u64,
        total: Option<u64>,
        message: String,
    ) -> wasmtime::Result<()> {
        v2::log::Host::progress(self, done, total, message).await
    }
}

impl v1::secrets::Host for StageState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, HostError>> {
        v2::secrets::Host::get(self, name).await
    }
}

impl v1::telemetry::Host for StageState {
    async fn metric(
        &mut self,
        name: String,
        value: f64,
        properties: Props,
    ) -> wasmtime::Result<()> {
        v2::telemetry::Host::metric(self, name, value, properties).await
    }
    async fn event(&mut self, name: String, properties: Props) -> wasmtime::Result<()> {
        v2::telemetry::Host::event(self, name, properties).await
    }
}

impl v1::exec::Host for StageState {
    async fn run(
        &mut self,
        cmd: v1::exec::Command,
    ) -> wasmtime::Result<Result<v1::exec::ExitStatus, HostError>> {
        let v1::exec::Command {
            program,
            args,
            cwd,
            env,
            timeout_ms,
        } = cmd;
        let cmd = v2::exec::Command {
            program,
            args,
            cwd,
            env,
            timeout_ms,
        };
        Ok(v2::exec::Host::run(self, cmd).await?.map(|s| {
            let v2::exec::ExitStatus {
                code,
                timed_out,
                stdout,
                stderr,
                duration_ms,
            } = s;
            v1::exec::ExitStatus {
                code,
                timed_out,
                stdout,
                stderr,
                duration_ms,
            }
        }))
    }
}

impl v1::engine::Host for StageState {
    async fn build(
        &mut self,
        req: v1::engine::BuildRequest,
    ) -> wasmtime::Result<Result<String, HostError>> {
        let v1::engine::BuildRequest {
            context,
            dockerfile,
            build_args,
            target,
            tags,
        } = req;
        let req = v2::engine::BuildRequest {
            context,
            dockerfile,
            build_args,
            target,
            tags,
        };
        v2::engine::Host::build(self, req).await
    }
    async fn export_layout(
        &mut self,
        image: String,
        layout_dir: String,
        ref_name: String,
    ) -> wasmtime::Result<Result<String, HostError>> {
        v2::engine::Host::export_layout(self, image, layout_dir, ref_name).await
    }
    async fn pull(&mut self, reference: String) -> wasmtime::Result<Result<String, HostError>> {
        v2::engine::Host::pull(self, reference).await
    }
    async fn start(
        &mut self,
        req: v1::engine::ContainerRequest,
    ) -> wasmtime::Result<Result<String, HostError>> {
        let v1::engine::ContainerRequest {
            image,
            name,
            env,
            ports,
            health_url,
            health_timeout_ms,
        } = req;
        let req = v2::engine::ContainerRequest {
            image,
            name,
            env,
            ports,
            health_url,
            health_timeout_ms,
        };
        v2::engine::Host::start(self, req).await
    }
    async fn remove(&mut self, container: String) -> wasmtime::Result<Result<(), HostError>> {
        v2::engine::Host::remove(self, container).await
    }
}

impl v1::cluster::Host for StageState {
    async fn apply(
        &mut self,
        namespace: String,
        manifest: String,
    ) -> wasmtime::Result<Result<String, HostError>> {
        v2::cluster::Host::apply(self, namespace, manifest).await
    }
    async fn get(
        &mut self,
        namespace: String,
        api_version: String,
        kind: String,
        name: String,
    ) -> wasmtime::Result<Result<Option<String>, HostError>> {
        v2::cluster::Host::get(self, namespace, api_version, kind, name).await
    }
    async fn delete(
        &mut self,
        namespace: String,
        api_version: String,
        kind: String,
        name: String,
    ) -> wasmtime::Result<Result<(), HostError>> {
        v2::cluster::Host::delete(self, namespace, api_version, kind, name).await
    }
    async fn rollout_status(
        &mut self,
        namespace: String,
        deployment: String,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<v1::cluster::Rollout, HostError>> {
        let status =
            v2::cluster::Host::rollout_status(self, namespace, deployment, timeout_ms).await?;
        Ok(status.map(|r| {
            let v2::cluster::Rollout {
                generation,
                observed_generation,
                replicas,
                updated_replicas,
                available_replicas,
                revision,
                complete,
                failure,
            } = r;
            v1::cluster::Rollout {
                generation,
                observed_generation,
                replicas,
                updated_replicas,
                available_replicas,
                revision,
                complete,
                failure,
            }
        }))
    }
    async fn rollback(
        &mut self,
        namespace: String,
        deployment: String,
    ) -> wasmtime::Result<Result<u64, HostError>> {
        v2::cluster::Host::rollback(self, namespace, deployment).await
    }
}
