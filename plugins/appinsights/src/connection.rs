//! The Application Insights connection string: `key=value` pairs separated by
//! `;`, keys case-insensitive, unknown keys ignored, at most 4096 characters.
//!
//! - `InstrumentationKey` is required.
//! - `IngestionEndpoint` overrides everything else (trimmed, trailing `/`
//!   dropped). Without a scheme it is `https://`; an explicit `https://` or
//!   `http://` is kept as given (the SDKs force https; gantry keeps `http://`
//!   so that a local test endpoint works, and says so in the README).
//! - Otherwise `EndpointSuffix` (and optionally `Location`) gives
//!   `https://[{Location}.]dc.{EndpointSuffix}`.
//! - Otherwise `https://dc.services.visualstudio.com`.
//! - `Authorization`, when present, must be `ikey` (AAD is not supported).
//!
//! Error messages name keys and segment positions, never values: the string
//! may come from a secret.

/// The most characters a connection string may have.
pub const MAX_LENGTH: usize = 4096;

/// Where telemetry goes when the connection string names no endpoint.
pub const DEFAULT_INGESTION: &str = "https://dc.services.visualstudio.com";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub instrumentation_key: String,
    /// `scheme://host[:port][/path]`, no trailing `/`.
    pub ingestion_endpoint: String,
}

impl ConnectionString {
    /// The track URL: `{ingestion}/v2.1/track`.
    pub fn track_url(&self) -> String {
        format!("{}/v2.1/track", self.ingestion_endpoint)
    }
}

/// Parse a connection string.
pub fn parse(text: &str) -> Result<ConnectionString, String> {
    let length = text.chars().count();
    if length > MAX_LENGTH {
        return Err(format!(
            "it is {length} characters long; at most {MAX_LENGTH} are allowed"
        ));
    }
    if text.trim().is_empty() {
        return Err("it is empty; it needs at least `InstrumentationKey=...`".into());
    }
    let segments: Vec<&str> = text.split(';').collect();
    let mut pairs: Vec<(String, String)> = vec![];
    for (i, segment) in segments.iter().enumerate() {
        if segment.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = segment.split_once('=') else {
            return Err(format!(
                "segment {} of {} has no `=`; write `key=value` pairs separated by `;`",
                i + 1,
                segments.len()
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!(
                "segment {} of {} has an empty key",
                i + 1,
                segments.len()
            ));
        }
        let lower = key.to_ascii_lowercase();
        if pairs.iter().any(|(k, _)| *k == lower) {
            return Err(format!("key `{key}` is given more than once"));
        }
        pairs.push((lower, value.trim().to_string()));
    }
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };

    let instrumentation_key = match get("instrumentationkey") {
        None => return Err("`InstrumentationKey` is missing".into()),
        Some("") => return Err("`InstrumentationKey` is empty".into()),
        Some(k) if k.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err("`InstrumentationKey` contains whitespace".into());
        }
        Some(k) => k.to_string(),
    };
    if let Some(auth) = get("authorization")
        && !auth.eq_ignore_ascii_case("ikey")
    {
        return Err(format!(
            "`Authorization={auth}` is not supported; only `ikey` is (AAD authentication is not built)"
        ));
    }

    let ingestion_endpoint = match (get("ingestionendpoint"), get("endpointsuffix")) {
        (Some(endpoint), _) => endpoint_url("IngestionEndpoint", endpoint)?,
        (None, Some(suffix)) => {
            let suffix = suffix.trim_matches(|c: char| c == '.' || c == '/');
            if suffix.is_empty() {
                return Err("`EndpointSuffix` is empty".into());
            }
            check_host("EndpointSuffix", suffix)?;
            match get("location").map(|l| l.trim_matches('.')) {
                Some(location) if !location.is_empty() => {
                    check_host("Location", location)?;
                    format!("https://{location}.dc.{suffix}")
                }
                _ => format!("https://dc.{suffix}"),
            }
        }
        (None, None) => DEFAULT_INGESTION.to_string(),
    };
    Ok(ConnectionString {
        instrumentation_key,
        ingestion_endpoint,
    })
}

/// `IngestionEndpoint`: trimmed, without trailing `/`, https unless the
/// scheme is given.
fn endpoint_url(key: &str, value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.trim_end_matches('/').trim().is_empty() {
        return Err(format!("`{key}` is empty"));
    }
    let (scheme, rest) = match value.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("https".to_string(), value),
    };
    let rest = rest.trim_end_matches('/');
    if scheme != "https" && scheme != "http" {
        return Err(format!(
            "`{key}` has the scheme `{scheme}`; use https:// (or http:// for a local endpoint)"
        ));
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("`{key}` has no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(format!("`{key}` must not have a query or fragment"));
    }
    let (hostname, port) = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) if p.starts_with(':') => (h, Some(&p[1..])),
            _ => return Err(format!("`{key}` is not a valid host name")),
        },
        None => match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        },
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("`{key}` has an invalid port"));
    }
    check_host(key, hostname)?;
    Ok(format!("{scheme}://{rest}"))
}

fn check_host(key: &str, host: &str) -> Result<(), String> {
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
    {
        return Err(format!("`{key}` is not a valid host name"));
    }
    Ok(())
}

/// A JSON Schema (ECMA 262) `pattern` that literal connection strings must
/// match: `key=value` segments separated by `;`, one of them a non-empty
/// `InstrumentationKey` (any case). The parser has the final word at run time.
pub const SCHEMA_PATTERN: &str = concat!(
    r"^(?:\s*(?:[^;=\s][^;=]*=[^;]*)?;)*",
    r"\s*[Ii][Nn][Ss][Tt][Rr][Uu][Mm][Ee][Nn][Tt][Aa][Tt][Ii][Oo][Nn][Kk][Ee][Yy]\s*=\s*[^;\s][^;]*",
    r"(?:;\s*(?:[^;=\s][^;=]*=[^;]*)?)*$"
);

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00000000-1111-2222-3333-444444444444";

    fn ok(text: &str) -> ConnectionString {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        parse(text).expect_err(text)
    }

    #[test]
    fn instrumentation_key_alone_uses_the_default_endpoint() {
        let c = ok(&format!("InstrumentationKey={KEY}"));
        assert_eq!(c.instrumentation_key, KEY);
        assert_eq!(c.ingestion_endpoint, "https://dc.services.visualstudio.com");
        assert_eq!(
            c.track_url(),
            "https://dc.services.visualstudio.com/v2.1/track"
        );
    }

    #[test]
    fn keys_are_case_insensitive_and_unknown_keys_ignored() {
        let c = ok(&format!(
            "instrumentationkey={KEY};INGESTIONENDPOINT=https://westeurope-5.in.applicationinsights.azure.com/;LiveEndpoint=https://westeurope.livediagnostics.monitor.azure.com/;ApplicationId=abc;Whatever=1"
        ));
        assert_eq!(c.instrumentation_key, KEY);
        assert_eq!(
            c.ingestion_endpoint,
            "https://westeurope-5.in.applicationinsights.azure.com"
        );
    }

    #[test]
    fn whitespace_and_empty_segments_are_tolerated() {
        let c = ok(&format!(
            " InstrumentationKey = {KEY} ;; IngestionEndpoint =  https://x.example//  ;"
        ));
        assert_eq!(c.instrumentation_key, KEY);
        assert_eq!(c.ingestion_endpoint, "https://x.example");
    }

    #[test]
    fn ingestion_endpoint_without_scheme_is_https_and_http_is_kept() {
        let c = ok(&format!(
            "InstrumentationKey={KEY};IngestionEndpoint=dc.example.com"
        ));
        assert_eq!(c.ingestion_endpoint, "https://dc.example.com");
        let c = ok(&format!(
            "InstrumentationKey={KEY};IngestionEndpoint=http://127.0.0.1:8080/"
        ));
        assert_eq!(c.ingestion_endpoint, "http://127.0.0.1:8080");
        assert_eq!(c.track_url(), "http://127.0.0.1:8080/v2.1/track");
        let c = ok(&format!(
            "InstrumentationKey={KEY};IngestionEndpoint=HTTPS://proxy.example/ai/"
        ));
        assert_eq!(c.ingestion_endpoint, "https://proxy.example/ai");
    }

    #[test]
    fn ingestion_endpoint_overrides_the_suffix() {
        let c = ok(&format!(
            "InstrumentationKey={KEY};EndpointSuffix=ai.contoso.com;Location=westus;IngestionEndpoint=https://custom.example"
        ));
        assert_eq!(c.ingestion_endpoint, "https://custom.example");
    }

    #[test]
    fn endpoint_suffix_and_location() {
        let c = ok(&format!(
            "InstrumentationKey={KEY};EndpointSuffix=applicationinsights.azure.cn"
        ));
        assert_eq!(
            c.ingestion_endpoint,
            "https://dc.applicationinsights.azure.cn"
        );
        let c = ok(&format!(
            "InstrumentationKey={KEY};EndpointSuffix=ai.contoso.com;Location=westus2"
        ));
        assert_eq!(c.ingestion_endpoint, "https://westus2.dc.ai.contoso.com");
        // Location alone changes nothing.
        let c = ok(&format!("InstrumentationKey={KEY};Location=westus2"));
        assert_eq!(c.ingestion_endpoint, DEFAULT_INGESTION);
    }

    #[test]
    fn authorization_must_be_ikey() {
        ok(&format!("InstrumentationKey={KEY};Authorization=ikey"));
        ok(&format!("InstrumentationKey={KEY};authorization=IKEY"));
        let e = err(&format!("InstrumentationKey={KEY};Authorization=aad"));
        assert!(e.contains("`Authorization=aad` is not supported"), "{e}");
    }

    #[test]
    fn malformed_strings_say_what_is_wrong_without_values() {
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("empty"));
        let e = err(KEY);
        assert!(e.contains("segment 1 of 1 has no `=`"), "{e}");
        assert!(!e.contains(KEY), "{e}");
        let e = err(&format!("IngestionEndpoint=https://x.example;{KEY}"));
        assert!(e.contains("segment 2 of 2 has no `=`"), "{e}");
        assert!(!e.contains(KEY), "{e}");
        assert_eq!(
            err("IngestionEndpoint=https://x.example"),
            "`InstrumentationKey` is missing"
        );
        assert_eq!(err("InstrumentationKey=;"), "`InstrumentationKey` is empty");
        assert!(err("InstrumentationKey=a b").contains("whitespace"));
        assert!(err(&format!("=x;InstrumentationKey={KEY}")).contains("empty key"));
        let e = err(&format!(
            "InstrumentationKey={KEY};instrumentationKey={KEY}"
        ));
        assert!(e.contains("more than once"), "{e}");
        assert!(!e.contains(KEY), "{e}");
        let e = err(&format!(
            "InstrumentationKey={KEY};IngestionEndpoint=ftp://x"
        ));
        assert!(
            e.contains("`IngestionEndpoint` has the scheme `ftp`"),
            "{e}"
        );
        assert!(
            err(&format!(
                "InstrumentationKey={KEY};IngestionEndpoint=https://"
            ))
            .contains("no host")
        );
        assert!(
            err(&format!("InstrumentationKey={KEY};IngestionEndpoint= / "))
                .contains("`IngestionEndpoint` is empty")
        );
        assert!(
            err(&format!(
                "InstrumentationKey={KEY};IngestionEndpoint=https://a b.example"
            ))
            .contains("not a valid host")
        );
        assert!(
            err(&format!(
                "InstrumentationKey={KEY};IngestionEndpoint=https://x.example:99999"
            ))
            .contains("invalid port")
        );
        assert!(err(&format!("InstrumentationKey={KEY};EndpointSuffix=")).contains("empty"));
        let long = format!("InstrumentationKey={KEY};X={}", "a".repeat(5000));
        assert!(err(&long).contains("at most 4096"));
    }

    #[test]
    fn exactly_4096_characters_is_allowed() {
        let prefix = format!("InstrumentationKey={KEY};X=");
        let text = format!("{prefix}{}", "a".repeat(MAX_LENGTH - prefix.len()));
        assert_eq!(text.len(), MAX_LENGTH);
        ok(&text);
    }

    #[test]
    fn the_schema_pattern_accepts_what_parses_and_refuses_the_obviously_wrong() {
        let re = regex::Regex::new(SCHEMA_PATTERN).unwrap();
        for good in [
            format!("InstrumentationKey={KEY}"),
            format!("instrumentationkey={KEY};"),
            format!("InstrumentationKey={KEY};IngestionEndpoint=https://x.example/"),
            format!(
                "IngestionEndpoint=http://127.0.0.1:1;InstrumentationKey={KEY};LiveEndpoint=https://l"
            ),
            format!(" InstrumentationKey = {KEY} ;; EndpointSuffix=ai.contoso.com"),
        ] {
            assert!(re.is_match(&good), "{good}");
            ok(&good);
        }
        for bad in [
            String::new(),
            KEY.to_string(),
            "IngestionEndpoint=https://x.example".to_string(),
            "InstrumentationKey=".to_string(),
            "InstrumentationKey= ;x=y".to_string(),
            format!("InstrumentationKey={KEY};garbage"),
            format!("garbage;InstrumentationKey={KEY}"),
        ] {
            assert!(!re.is_match(&bad), "{bad}");
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }
}
