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

/// What the filesystem wrappers need to report a refused write.
pub struct WorkspaceAccess {
    pub write: bool,
    pub subject: super::Subject,
}

/// The `wasi:filesystem` version wasmtime-wasi links; guests importing any
/// 0.2.x reach it.
const FS_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Report writes refused on a read-only workspace. wasmtime-wasi answers them
/// with `not-permitted` and offers no hook, so the calls that write are
/// shadowed in the linker: each runs wasmtime-wasi's own implementation and,
/// when it was refused while the workspace is read-only, records the denial
/// with the grant that would allow it. The answer to the guest is unchanged.
pub fn link_write_denials(
    linker: &mut wasmtime::component::Linker<crate::runtime::state::StageState>,
) -> anyhow::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::filesystem::types::{
        DescriptorFlags, HostDescriptor, OpenFlags, PathFlags,
    };

    linker.allow_shadowing(true);
    let mut types = linker.instance(FS_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store,
         (fd, path_flags, path, open, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let writes = open.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE)
                    || flags.intersects(DescriptorFlags::WRITE | DescriptorFlags::MUTATE_DIRECTORY);
                let state = store.data_mut();
                let result = state
                    .filesystem()
                    .open_at(fd, path_flags, path.clone(), open, flags)
                    .await;
                Ok((answer(state, result, writes, &path)?,))
            })
        },
    )?;
    // The calls that take (descriptor, path) and only write.
    macro_rules! shadow_path_write {
        ($name:literal, $method:ident) => {
            types.func_wrap_async(
                concat!("[method]descriptor.", $name),
                |mut store, (fd, path): (Resource<Descriptor>, String)| {
                    Box::new(async move {
                        let state = store.data_mut();
                        let result = state.filesystem().$method(fd, path.clone()).await;
                        Ok((answer(state, result, true, &path)?,))
                    })
                },
            )?;
        };
    }
    shadow_path_write!("create-directory-at", create_directory_at);
    shadow_path_write!("unlink-file-at", unlink_file_at);
    shadow_path_write!("remove-directory-at", remove_directory_at);
    types.func_wrap_async(
        "[method]descriptor.rename-at",
        |mut store, (fd, old, new_fd, new): (Resource<Descriptor>, String, Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let result = state.filesystem().rename_at(fd, old, new_fd, new.clone()).await;
                Ok((answer(state, result, true, &new)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store, (fd, target, path): (Resource<Descriptor>, String, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let result = state
                    .filesystem()
                    .symlink_at(fd, target, path.clone())
                    .await;
                Ok((answer(state, result, true, &path)?,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The guest's answer to a filesystem call, recording a refused write.
fn answer<T>(
    state: &mut crate::runtime::state::StageState,
    result: wasmtime_wasi::p2::FsResult<T>,
    writes: bool,
    path: &str,
) -> wasmtime::Result<Result<T, wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode>> {
    use wasmtime_wasi::filesystem::WasiFilesystemView;
    use wasmtime_wasi::p2::bindings::filesystem::types::{ErrorCode, Host};
    let error = match result {
        Ok(value) => return Ok(Ok(value)),
        Err(error) => error,
    };
    let code = state.filesystem().convert_error_code(error)?;
    if writes && matches!(code, ErrorCode::NotPermitted) && !state.workspace.write {
        state.workspace.subject.deny(
            "to write the workspace",
            &format!("(`{path}`)"),
            "workspace: write",
        );
    }
    Ok(Err(code))
}
