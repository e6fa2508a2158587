//! The CNCF "Wasm OCI Artifact" layout, as `wkg oci push` writes it: an OCI
//! image manifest whose config has media type `application/vnd.wasm.config.v0+json`
//! and whose one layer, `application/wasm`, is the raw component.

use super::OciError;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
/// The largest plugin gantry pulls.
pub const MAX_COMPONENT: u64 = 256 << 20;

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What a pulled manifest says about the wasm layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
}

/// Check that `manifest` (served with `content_type`) is a wasm component
/// artifact and return its one layer. `reference` is for messages.
pub fn wasm_layer(reference: &str, manifest: &[u8], content_type: &str) -> Result<Layer, OciError> {
    let v: Value = serde_json::from_slice(manifest).map_err(|e| OciError::NotWasm {
        reference: reference.into(),
        found: format!("a manifest that is not JSON ({e})"),
    })?;
    let media_type = v["mediaType"]
        .as_str()
        .unwrap_or(content_type.split(';').next().unwrap_or("").trim());
    if media_type != OCI_MANIFEST {
        let what = if v["manifests"].is_array() {
            "an image index (a multi-platform image)"
        } else {
            "a manifest"
        };
        return Err(OciError::NotWasm {
            reference: reference.into(),
            found: format!("{what} of media type `{media_type}`"),
        });
    }
    let config = v["config"]["mediaType"].as_str().unwrap_or("(none)");
    if config != WASM_CONFIG {
        return Err(OciError::NotWasm {
            reference: reference.into(),
            found: format!("an artifact whose config media type is `{config}`"),
        });
    }
    let layers = v["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let [layer] = layers else {
        return Err(OciError::NotWasm {
            reference: reference.into(),
            found: format!(
                "a wasm artifact with {} layers (exactly one is expected)",
                layers.len()
            ),
        });
    };
    let layer_type = layer["mediaType"].as_str().unwrap_or("(none)");
    if layer_type != WASM_LAYER {
        return Err(OciError::NotWasm {
            reference: reference.into(),
            found: format!("a layer of media type `{layer_type}`"),
        });
    }
    let digest = layer["digest"].as_str().unwrap_or_default().to_string();
    super::reference::check_digest(&digest).map_err(OciError::Protocol)?;
    let size = layer["size"].as_u64().unwrap_or(0);
    if size > MAX_COMPONENT {
        return Err(OciError::Protocol(format!(
            "{reference}: the component is {size} bytes, more than the {MAX_COMPONENT} gantry pulls"
        )));
    }
    Ok(Layer { digest, size })
}

/// The config blob and the manifest for pushing `component` (named `title`),
/// as wkg writes them. `created` is RFC 3339.
pub fn wasm_artifact(component: &[u8], title: &str, created: &str) -> (Vec<u8>, Vec<u8>) {
    let layer_digest = sha256(component);
    let (imports, exports) = component_names(component);
    let config = serde_json::to_vec(&json!({
        "created": created,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
        "component": { "exports": exports, "imports": imports, "target": null },
    }))
    .expect("JSON");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": WASM_CONFIG, "digest": sha256(&config), "size": config.len() },
        "layers": [{
            "mediaType": WASM_LAYER,
            "digest": layer_digest,
            "size": component.len(),
            "annotations": { "org.opencontainers.image.title": title },
        }],
    }))
    .expect("JSON");
    (config, manifest)
}

/// The names a component imports and exports at its top level (interface
/// ids such as `gantry:pipeline/plugin@0.1.0`), sorted.
pub fn component_names(component: &[u8]) -> (Vec<String>, Vec<String>) {
    use wasmparser::{Parser, Payload};
    let (mut imports, mut exports) = (vec![], vec![]);
    // Nested modules and components have their own sections; only the
    // outermost component's count.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        match payload {
            Ok(Payload::ModuleSection { .. } | Payload::ComponentSection { .. }) => depth += 1,
            Ok(Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(Payload::ComponentImportSection(s)) if depth == 0 => {
                imports.extend(s.into_iter().flatten().map(|i| i.name.name.to_string()));
            }
            Ok(Payload::ComponentExportSection(s)) if depth == 0 => {
                exports.extend(s.into_iter().flatten().map(|e| e.name.name.to_string()));
            }
            Err(_) => break,
            _ => {}
        }
    }
    imports.sort();
    exports.sort();
    (imports, exports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_manifest_is_read_back_as_one_wasm_layer() {
        let wasm = crate::plugins::builtin("command").unwrap().wasm;
        let (config, manifest) = wasm_artifact(wasm, "command.wasm", "2026-01-01T00:00:00Z");
        let layer = wasm_layer("r", &manifest, "").unwrap();
        assert_eq!(layer.digest, sha256(wasm));
        let c: Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(c["os"], "wasip2");
        let exports = c["component"]["exports"].as_array().unwrap();
        assert!(
            exports
                .iter()
                .any(|e| *e == format!("gantry:pipeline/plugin@{}", crate::WIT_VERSION)),
            "{exports:?}"
        );
        assert!(
            c["component"]["imports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i.as_str().unwrap().starts_with("gantry:pipeline/log"))
        );
    }

    #[test]
    fn other_artifacts_are_named_by_media_type() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json"},"layers":[]}"#;
        let e = wasm_layer("r", image, "").unwrap_err().to_string();
        assert!(
            e.contains("`application/vnd.oci.image.config.v1+json`"),
            "{e}"
        );
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        let e = wasm_layer("r", index, "application/vnd.oci.image.index.v1+json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("image index") && e.contains(OCI_INDEX), "{e}");
    }
}
