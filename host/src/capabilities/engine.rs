//! The container engine capability (`permissions.engine: true`). The interface is
//! part of gantry:pipeline@0.1.0 so that plugins can be written against it; the
//! Docker-backed implementation arrives with the build stage. Until then a
//! granted call answers `unavailable` and an ungranted one `denied`.

use super::Subject;
use crate::manifest::Permissions;
use crate::runtime::bindings::engine::{self as wit, BuildRequest, ContainerRequest};
use crate::runtime::bindings::types::HostError;
use crate::runtime::state::StageState;

#[derive(Debug, Clone, Copy, Default)]
pub struct EngineGrant {
    pub granted: bool,
}

impl EngineGrant {
    pub fn configure(perms: &Permissions) -> Self {
        Self {
            granted: perms.engine.as_ref().is_some_and(|g| g.value),
        }
    }
}

pub struct EngineState {
    pub grant: EngineGrant,
    pub subject: Subject,
}

impl EngineState {
    /// Every call is refused for now: `denied` without the grant, else `unavailable`.
    fn refuse(&self, what: &str) -> HostError {
        if !self.grant.granted {
            let message = self.subject.deny(
                "to use the container engine",
                &format!("({what})"),
                "engine: true",
            );
            return HostError::Denied(message);
        }
        HostError::Unavailable(format!(
            "the container engine capability ({what}) is not implemented in gantry {}",
            env!("CARGO_PKG_VERSION")
        ))
    }
}

impl wit::Host for StageState {
    async fn build(&mut self, _req: BuildRequest) -> wasmtime::Result<Result<String, HostError>> {
        Ok(Err(self.engine.refuse("build")))
    }
    async fn export_layout(
        &mut self,
        _image: String,
        _dir: String,
        _r: String,
    ) -> wasmtime::Result<Result<String, HostError>> {
        Ok(Err(self.engine.refuse("export-layout")))
    }
    async fn pull(&mut self, _reference: String) -> wasmtime::Result<Result<String, HostError>> {
        Ok(Err(self.engine.refuse("pull")))
    }
    async fn start(
        &mut self,
        _req: ContainerRequest,
    ) -> wasmtime::Result<Result<String, HostError>> {
        Ok(Err(self.engine.refuse("start")))
    }
    async fn remove(&mut self, _container: String) -> wasmtime::Result<Result<(), HostError>> {
        Ok(Err(self.engine.refuse("remove")))
    }
}
