//! Checks a plugin before anything runs: is it WebAssembly, is it a component
//! (not a core module), does it export a gantry contract, and is that contract a
//! version this host implements. Each refusal says which.

use crate::{WIT_OLDER, WIT_PACKAGE, WIT_VERSION};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorldKind {
    /// Exports `gantry:pipeline/plugin`.
    Stage,
    /// Exports `gantry:pipeline/sink`.
    Sink,
}

impl WorldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorldKind::Stage => "stage",
            WorldKind::Sink => "telemetry-sink",
        }
    }
}

/// Which version of the contract a plugin was built against; the host links
/// each with its own bindings onto the same implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `gantry:pipeline@0.1.x`: no `state` interface.
    V0_1,
    /// `gantry:pipeline@0.2.x`, the current one.
    V0_2,
}

impl Contract {
    /// The package and version, e.g. `gantry:pipeline@0.1.0`.
    pub fn name(self) -> String {
        let version = match self {
            Contract::V0_1 => WIT_OLDER[0],
            Contract::V0_2 => WIT_VERSION,
        };
        format!("{WIT_PACKAGE}@{version}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "{0} is not a WebAssembly file (no `\\0asm` header): check the path, or the file is corrupt"
    )]
    NotWasm(String),
    #[error(
        "{0} is a core WebAssembly module, not a component: build it for the wasm32-wasip2 target \
         (`cargo build --target wasm32-wasip2`), or wrap it with `wasm-tools component new`"
    )]
    CoreModule(String),
    #[error("{label} is corrupt or not a valid component: {reason}")]
    Invalid { label: String, reason: String },
    #[error(
        "{label} was built against {found}, but this gantry implements {WIT_PACKAGE}@{WIT_VERSION} \
         and runs plugins built against {compatible}: rebuild the plugin against the \
         WIT in this gantry's wit/ directory"
    )]
    WrongVersion {
        label: String,
        found: String,
        compatible: String,
    },
    #[error(
        "{label} is a component but not a gantry plugin: it exports neither {WIT_PACKAGE}/plugin nor \
         {WIT_PACKAGE}/sink (its exports: {exports})"
    )]
    NotAPlugin { label: String, exports: String },
    #[error("{label} cannot be linked: {reason}")]
    Link { label: String, reason: String },
    #[error("cannot read plugin {label}: {reason}")]
    Read { label: String, reason: String },
}

/// Refuse what is not a component before handing it to the compiler, so that
/// the message can say what it is instead.
pub fn check_header(label: &str, bytes: &[u8]) -> Result<(), LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm(label.into()));
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadError::CoreModule(label.into()));
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(LoadError::Invalid {
            label: label.into(),
            reason: "unknown WebAssembly binary version".into(),
        });
    }
    Ok(())
}

/// The version range a 0.x or 1+ package version is compatible with, e.g. `0.1.x`.
fn compatible_range(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}.x"),
        (Some(major), _) => format!("{major}.x"),
        _ => version.into(),
    }
}

/// The version ranges this host runs, newest first, e.g. `gantry:pipeline@0.2.x
/// or gantry:pipeline@0.1.x`.
fn supported_ranges() -> String {
    std::iter::once(WIT_VERSION)
        .chain(WIT_OLDER.iter().copied())
        .map(|v| format!("{WIT_PACKAGE}@{}", compatible_range(v)))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Find which gantry world the component implements, and check the version of
/// the contract it was built against.
pub fn contract(
    engine: &Engine,
    label: &str,
    component: &Component,
) -> Result<(WorldKind, Contract), LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    for name in &exports {
        let Some(rest) = name.strip_prefix(&format!("{WIT_PACKAGE}/")) else {
            continue;
        };
        let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let kind = match iface {
            "plugin" => WorldKind::Stage,
            "sink" => WorldKind::Sink,
            _ => continue,
        };
        let range = compatible_range(version);
        let contract = if range == compatible_range(WIT_VERSION) {
            Contract::V0_2
        } else if WIT_OLDER.iter().any(|v| compatible_range(v) == range) {
            Contract::V0_1
        } else {
            return Err(LoadError::WrongVersion {
                label: label.into(),
                found: format!(
                    "{WIT_PACKAGE}@{}",
                    if version.is_empty() {
                        "(unversioned)"
                    } else {
                        version
                    }
                ),
                compatible: supported_ranges(),
            });
        };
        return Ok((kind, contract));
    }
    Err(LoadError::NotAPlugin {
        label: label.into(),
        exports: if exports.is_empty() {
            "none".into()
        } else {
            exports.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(matches!(
            check_header("x", b"hello"),
            Err(LoadError::NotWasm(_))
        ));
        assert!(matches!(
            check_header("x", b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule(_))
        ));
        assert!(check_header("x", b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn version_ranges() {
        assert_eq!(compatible_range("0.1.0"), "0.1.x");
        assert_eq!(compatible_range("0.1.7"), "0.1.x");
        assert_eq!(compatible_range("0.2.0"), "0.2.x");
        assert_eq!(compatible_range("1.4.2"), "1.x");
        assert_eq!(
            supported_ranges(),
            "gantry:pipeline@0.2.x or gantry:pipeline@0.1.x"
        );
    }
}
