//! The Application Insights Query API check: the failed-request rate of the
//! app over a window, from `GET {endpoint}/v1/apps/{app-id}/query`.

use gantry_sdk::http;
use serde_json::Value;
use std::time::Duration;

/// What the query measured.
#[derive(Debug, PartialEq)]
pub struct Measured {
    pub total: u64,
    pub failed: u64,
}

impl Measured {
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.failed as f64 / self.total as f64
        }
    }
}

/// The KQL: requests in the window (of one role, when given), counted.
pub fn kql(minutes: u64, role: Option<&str>) -> String {
    let role = role
        .map(|r| format!(" | where cloud_RoleName == '{}'", r.replace('\'', "\\'")))
        .unwrap_or_default();
    format!(
        "requests | where timestamp > ago({minutes}m){role} | summarize total = count(), failed = countif(success == false)"
    )
}

pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Read `total` and `failed` from the API's `tables[0]` by column name.
pub fn parse(body: &[u8]) -> Result<Measured, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let table = &v["tables"][0];
    let columns: Vec<&str> = table["columns"]
        .as_array()
        .ok_or("no tables[0].columns in the answer")?
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    let row = &table["rows"][0];
    let cell = |name: &str| -> Result<u64, String> {
        let i = columns
            .iter()
            .position(|c| *c == name)
            .ok_or(format!("no `{name}` column"))?;
        row[i]
            .as_u64()
            .or_else(|| row[i].as_f64().map(|f| f as u64))
            .ok_or(format!("`{name}` is not a number"))
    };
    Ok(Measured {
        total: cell("total")?,
        failed: cell("failed")?,
    })
}

/// Run the query.
pub fn run(
    endpoint: &str,
    app_id: &str,
    api_key: &str,
    minutes: u64,
    role: Option<&str>,
) -> Result<Measured, String> {
    let url = format!(
        "{}/v1/apps/{}/query?query={}&timespan=PT{minutes}M",
        endpoint.trim_end_matches('/'),
        percent_encode(app_id),
        percent_encode(&kql(minutes, role))
    );
    let shown = url.split('?').next().unwrap_or(&url).to_string();
    let r = http::send(
        "GET",
        &url,
        &[("x-api-key", api_key.to_string())],
        &[],
        Some(Duration::from_secs(30)),
    )
    .map_err(|e| format!("{shown}: {e}"))?;
    if r.status != 200 {
        let body = String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned();
        return Err(format!("{shown} answered {}: {body}", r.status));
    }
    parse(&r.body).map_err(|e| format!("{shown}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_column_name() {
        let body = br#"{"tables":[{"name":"PrimaryResult","columns":[{"name":"failed","type":"long"},{"name":"total","type":"long"}],"rows":[[3,60]]}]}"#;
        let m = parse(body).unwrap();
        assert_eq!(
            m,
            Measured {
                total: 60,
                failed: 3
            }
        );
        assert!((m.rate() - 0.05).abs() < 1e-9);
        assert!(parse(br#"{"tables":[]}"#).is_err());
    }

    #[test]
    fn the_query_filters_by_role() {
        assert_eq!(
            kql(10, Some("hello")),
            "requests | where timestamp > ago(10m) | where cloud_RoleName == 'hello' | summarize total = count(), failed = countif(success == false)"
        );
    }
}
