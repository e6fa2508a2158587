//! The stage's view of the filesystem: the workspace directory and nothing else,
//! read-only unless `permissions.workspace: write`.

use crate::manifest::{ManifestError, ManifestFile, Permissions};
use std::path::Path;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Where guests see the workspace, besides `.` (their current directory).
pub const GUEST_PATH: &str = "/workspace";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkspaceGrant {
    pub write: bool,
}

impl WorkspaceGrant {
    pub fn configure(
        file: &ManifestFile,
        field: &str,
        perms: &Permissions,
        errors: &mut Vec<ManifestError>,
    ) -> Self {
        let Some(access) = &perms.workspace else {
            return Self::default();
        };
        match access.value.as_str() {
            "read" => Self { write: false },
            "write" => Self { write: true },
            other => {
                errors.push(file.error(
                    &access.referenced,
                    &format!("{field}.workspace"),
                    format!("`{other}` is not a workspace access"),
                    Some("write `read` (the default) or `write`".into()),
                ));
                Self::default()
            }
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "workspace: {}",
            if self.write {
                "read-write"
            } else {
                "read-only"
            }
        )
    }

    /// Prepare: preopen the workspace at `/workspace` and `.`, nothing else.
    pub fn prepare(&self, builder: &mut WasiCtxBuilder, workspace: &Path) -> anyhow::Result<()> {
        let perms = if self.write {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        for guest in [GUEST_PATH, "."] {
            builder
                .preopened_dir(workspace, guest, perms)
                .map_err(|e| {
                    anyhow::anyhow!("cannot open workspace {}: {e:#}", workspace.display())
                })?;
        }
        Ok(())
    }
}
