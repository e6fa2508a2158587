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

/// `rel` must be a relative path without `..`.
pub fn check_relative(rel: &str) -> Result<&std::path::Path, String> {
    use std::path::Component;
    let path = std::path::Path::new(rel);
    if rel.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "`{rel}` must be a relative path inside the workspace, without `..`"
        ));
    }
    Ok(path)
}

/// An existing path inside the workspace, with symlinks resolved; `.` or an
/// empty string is the workspace itself.
pub fn resolve_inside(workspace: &Path, rel: &str) -> Result<std::path::PathBuf, String> {
    if rel.is_empty() || rel == "." {
        return Ok(workspace.to_path_buf());
    }
    let lexical = workspace.join(check_relative(rel)?);
    let outside = || format!("`{rel}` leads outside the workspace");
    match lexical.canonicalize() {
        Ok(full) if full.starts_with(workspace) => Ok(full),
        Ok(_) => Err(outside()),
        // Through a link, "does not exist" would tell a stage whether a path
        // outside the workspace exists: answer as for any link leading out.
        Err(_) if has_link(workspace, &lexical) => Err(outside()),
        Err(e) => Err(format!("`{rel}`: {e}")),
    }
}

/// Whether any existing component of `path` below `workspace` is a symlink.
fn has_link(workspace: &Path, path: &Path) -> bool {
    let Ok(rest) = path.strip_prefix(workspace) else {
        return true;
    };
    let mut at = workspace.to_path_buf();
    for c in rest.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// A path inside the workspace that may not exist yet: its nearest existing
/// ancestor must resolve inside the workspace.
pub fn resolve_new_inside(workspace: &Path, rel: &str) -> Result<std::path::PathBuf, String> {
    let path = workspace.join(check_relative(rel)?);
    let mut existing = path.as_path();
    while !existing.exists() {
        existing = existing
            .parent()
            .ok_or_else(|| format!("`{rel}` has no existing parent"))?;
    }
    let real = existing
        .canonicalize()
        .map_err(|e| format!("`{rel}`: {e}"))?;
    if !real.starts_with(workspace) {
        return Err(format!("`{rel}` leads outside the workspace"));
    }
    Ok(path)
}
