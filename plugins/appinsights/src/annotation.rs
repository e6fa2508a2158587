//! Release annotations: each `deployment` event of a run becomes an annotation
//! on the Application Insights resource, through the Azure management API
//! (`PUT {arm}{resource-id}/Annotations?api-version=2015-05-01`, AAD bearer
//! token), so deployments show on the portal's charts. Ingestion cannot do
//! this; the old API-key method is deprecated.

use crate::envelope::iso_time;
use gantry_sdk::{Event, EventKind};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// `/subscriptions/{sub}/resourceGroups/{rg}/providers/microsoft.insights/components/{name}`
    pub resource_id: String,
    /// A granted secret holding an AAD access token for the management API
    /// (`az account get-access-token --resource https://management.azure.com`).
    pub token_secret: String,
    #[serde(default = "arm")]
    pub endpoint: String,
}

fn arm() -> String {
    "https://management.azure.com".into()
}

pub fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["resource-id", "token-secret"],
        "properties": {
            "resource-id": {"type": "string", "pattern": "^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/(?i:microsoft\\.insights)/components/[^/]+$",
                            "description": "the Application Insights resource's id"},
            "token-secret": {"type": "string", "minLength": 1,
                             "description": "granted secret holding an AAD token for https://management.azure.com"},
            "endpoint": {"type": "string", "pattern": "^https?://", "description": "default https://management.azure.com"}
        }
    })
}

/// The annotation's URL.
pub fn url(cfg: &Config) -> String {
    format!(
        "{}{}/Annotations?api-version=2015-05-01",
        cfg.endpoint.trim_end_matches('/'),
        cfg.resource_id
    )
}

/// A version-4 GUID from 128 random bits.
pub fn guid(random: u128) -> String {
    let r = (random & !(0xf000 << 64) | (0x4000 << 64)) & !(0xc000 << 48) | (0x8000 << 48);
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The annotation body of a deployment event; `Properties` is a JSON string,
/// as the API wants.
pub fn body(event: &Event, id: &str) -> Option<Value> {
    if event.kind != EventKind::Deployment {
        return None;
    }
    let prop = |k: &str| {
        event
            .properties
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let what = prop("deployment")
        .or_else(|| prop("name"))
        .unwrap_or_else(|| event.stage.clone().unwrap_or_default());
    let version = prop("revision")
        .map(|r| format!("revision {r}"))
        .or_else(|| prop("image"))
        .unwrap_or_default();
    let mut properties: serde_json::Map<String, Value> = event
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    properties.insert(
        "ReleaseName".into(),
        format!("{} {}", event.pipeline, event.run_id).into(),
    );
    properties.insert("TriggerBy".into(), "gantry".into());
    properties.insert("RunId".into(), event.run_id.clone().into());
    properties.insert("Environment".into(), event.environment.clone().into());
    Some(json!({
        "Id": id,
        "AnnotationName": format!("{}: {what} {version}", event.pipeline).trim_end().to_string(),
        "EventTime": iso_time(event.timestamp_ms),
        "Category": "Deployment",
        "Properties": Value::Object(properties).to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_version_4() {
        let g = guid(u128::MAX);
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
        assert!(matches!(&g[19..20], "8" | "9" | "a" | "b"), "{g}");
        assert_eq!(guid(0), "00000000-0000-4000-8000-000000000000");
    }
}
