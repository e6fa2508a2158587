//! From gantry telemetry events to Application Insights envelopes: one
//! transaction per run.
//!
//! | event | envelope |
//! |---|---|
//! | `run-finished` | `RequestData`: id = run id, name = pipeline, responseCode `0` (succeeded) or `1` (failed) |
//! | `stage-finished` | `RemoteDependencyData`: id = `{run id}/{stage}`, name = stage, type `gantry stage`, target = the stage's plugin, resultCode = its status |
//! | `deployment`, `custom` | `EventData` named after the event |
//! | `metric` | `MetricData` with one point |
//! | `run-started`, `stage-started` | nothing (the finished events carry start and duration) |
//!
//! Every envelope has `ai.operation.id` = run id, `ai.operation.name` =
//! pipeline, `ai.cloud.role`, optionally `ai.cloud.roleInstance`, and
//! `ai.internal.sdkVersion` = `gantry:<version>`; all but the request also
//! have `ai.operation.parentId` = run id (the request's id), so the portal
//! shows the run as one tree. Strings are cut to the documented maximum
//! lengths.

use gantry_sdk::{Event, EventKind};
use serde_json::{Map, Value, json};

/// Maximum lengths (characters) from the ingestion schema.
pub mod max {
    pub const ROLE: usize = 256;
    pub const ROLE_INSTANCE: usize = 256;
    pub const OPERATION_ID: usize = 128;
    pub const PARENT_ID: usize = 128;
    pub const OPERATION_NAME: usize = 1024;
    pub const SDK_VERSION: usize = 64;
    pub const ID: usize = 128;
    pub const NAME: usize = 1024;
    pub const EVENT_NAME: usize = 512;
    pub const RESULT_CODE: usize = 1024;
    pub const TARGET: usize = 1024;
    pub const PROPERTY_KEY: usize = 150;
    pub const PROPERTY_VALUE: usize = 8192;
}

/// Durations are capped below the documented 1000 days.
const MAX_DURATION_MS: u64 = 1000 * 86_400_000 - 1;

/// What every envelope of a run shares.
pub struct Context<'a> {
    pub instrumentation_key: &'a str,
    /// `ai.cloud.role`; the pipeline's name when none.
    pub role: Option<&'a str>,
    pub role_instance: Option<&'a str>,
}

/// `ai.internal.sdkVersion`.
pub fn sdk_version() -> String {
    truncate(
        &format!("gantry:{}", env!("CARGO_PKG_VERSION")),
        max::SDK_VERSION,
    )
}

/// The first `max` characters of `s`.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// Unix milliseconds as ISO-8601 UTC: `2024-05-01T12:00:00.123Z`.
pub fn iso_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) to days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds as `D.HH:MM:SS.ffffff`, capped below 1000 days.
pub fn duration(ms: u64) -> String {
    let ms = ms.min(MAX_DURATION_MS);
    let secs = ms / 1000;
    format!(
        "{}.{:02}:{:02}:{:02}.{:06}",
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
        (ms % 1000) * 1000
    )
}

/// Properties as a string map with cut keys and values; later keys win.
fn properties(pairs: &[(String, String)], extra: &[(&str, String)]) -> Value {
    let mut map = Map::new();
    for (k, v) in extra
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        if k.is_empty() {
            continue;
        }
        map.insert(
            truncate(k, max::PROPERTY_KEY),
            Value::String(truncate(v, max::PROPERTY_VALUE)),
        );
    }
    Value::Object(map)
}

/// The dependency id of a stage: `{run id}/{stage}`, or a hashed form when
/// that is longer than ids may be.
pub fn dependency_id(run_id: &str, stage: &str) -> String {
    let id = format!("{run_id}/{stage}");
    if id.chars().count() <= max::ID {
        return id;
    }
    // FNV-1a, so that distinct long ids stay distinct after cutting.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}#{hash:016x}", truncate(&id, max::ID - 17))
}

fn envelope(
    ctx: &Context,
    event: &Event,
    kind: &str,
    time_ms: u64,
    parent: bool,
    base_data: Value,
) -> Value {
    let role = ctx.role.unwrap_or(&event.pipeline);
    let mut tags = Map::new();
    let run_id = truncate(&event.run_id, max::OPERATION_ID);
    tags.insert("ai.operation.id".into(), run_id.clone().into());
    if parent {
        tags.insert(
            "ai.operation.parentId".into(),
            truncate(&event.run_id, max::PARENT_ID).into(),
        );
    }
    tags.insert(
        "ai.operation.name".into(),
        truncate(&event.pipeline, max::OPERATION_NAME).into(),
    );
    tags.insert("ai.cloud.role".into(), truncate(role, max::ROLE).into());
    if let Some(instance) = ctx.role_instance {
        tags.insert(
            "ai.cloud.roleInstance".into(),
            truncate(instance, max::ROLE_INSTANCE).into(),
        );
    }
    tags.insert("ai.internal.sdkVersion".into(), sdk_version().into());
    let base_type = if kind == "Metric" {
        "MetricData".to_string()
    } else {
        format!("{kind}Data")
    };
    json!({
        "name": format!("Microsoft.ApplicationInsights.{kind}"),
        "time": iso_time(time_ms),
        "iKey": ctx.instrumentation_key,
        "sampleRate": 100.0,
        "tags": tags,
        "data": { "baseType": base_type, "baseData": base_data },
    })
}

fn property<'a>(event: &'a Event, key: &str) -> Option<&'a str> {
    event
        .properties
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The envelope for `event`, or none for events that have none (the
/// `*-started` kinds, and metrics whose value is not a finite number).
/// `dropped` is added to the run's request as `gantry.telemetry.dropped`.
pub fn map(ctx: &Context, event: &Event, dropped: u64) -> Option<Value> {
    let environment = ("environment", event.environment.clone());
    let stage = event.stage.clone().map(|s| ("stage", s));
    match event.kind {
        EventKind::RunStarted | EventKind::StageStarted => None,
        EventKind::RunFinished => {
            let ms = event.duration_ms.unwrap_or(0);
            let success = event.success.unwrap_or(false);
            let mut extra = vec![environment];
            if dropped > 0 {
                extra.push(("gantry.telemetry.dropped", dropped.to_string()));
            }
            Some(envelope(
                ctx,
                event,
                "Request",
                event.timestamp_ms.saturating_sub(ms),
                false,
                json!({
                    "ver": 2,
                    "id": truncate(&event.run_id, max::ID),
                    "name": truncate(&event.pipeline, max::NAME),
                    "duration": duration(ms),
                    "success": success,
                    "responseCode": if success { "0" } else { "1" },
                    "properties": properties(&event.properties, &extra),
                }),
            ))
        }
        EventKind::StageFinished => {
            let ms = event.duration_ms.unwrap_or(0);
            let name = event.stage.as_deref().unwrap_or(&event.name);
            let success = event.success.unwrap_or(false);
            let result_code = property(event, "status")
                .map(str::to_string)
                .unwrap_or_else(|| if success { "0" } else { "1" }.into());
            let mut data = json!({
                "ver": 2,
                "id": dependency_id(&event.run_id, name),
                "name": truncate(name, max::NAME),
                "duration": duration(ms),
                "success": success,
                "resultCode": truncate(&result_code, max::RESULT_CODE),
                "type": "gantry stage",
                "properties": properties(&event.properties, &[environment]),
            });
            if let Some(plugin) = property(event, "plugin") {
                data["target"] = truncate(plugin, max::TARGET).into();
            }
            Some(envelope(
                ctx,
                event,
                "RemoteDependency",
                event.timestamp_ms.saturating_sub(ms),
                true,
                data,
            ))
        }
        EventKind::Deployment | EventKind::Custom => {
            let extra: Vec<_> = [Some(environment), stage].into_iter().flatten().collect();
            Some(envelope(
                ctx,
                event,
                "Event",
                event.timestamp_ms,
                true,
                json!({
                    "ver": 2,
                    "name": truncate(&event.name, max::EVENT_NAME),
                    "properties": properties(&event.properties, &extra),
                }),
            ))
        }
        EventKind::Metric => {
            let value = event.value.filter(|v| v.is_finite())?;
            let extra: Vec<_> = [Some(environment), stage].into_iter().flatten().collect();
            Some(envelope(
                ctx,
                event,
                "Metric",
                event.timestamp_ms,
                true,
                json!({
                    "ver": 2,
                    "metrics": [{ "name": truncate(&event.name, max::NAME), "value": value, "count": 1 }],
                    "properties": properties(&event.properties, &extra),
                }),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> Event {
        Event {
            kind,
            timestamp_ms: 1_714_564_800_500, // 2024-05-01T12:00:00.500Z
            run_id: "run-1".into(),
            pipeline: "shop".into(),
            environment: "prod".into(),
            stage: None,
            name: "shop".into(),
            value: None,
            duration_ms: None,
            success: None,
            properties: vec![],
        }
    }

    const CTX: Context = Context {
        instrumentation_key: "ikey",
        role: None,
        role_instance: None,
    };

    #[test]
    fn times_are_utc_iso_8601() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(1_714_564_800_500), "2024-05-01T12:00:00.500Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso_time(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        for days in [-1000, 0, 11_016, 20_000, 60_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn durations_are_d_hh_mm_ss_ffffff() {
        assert_eq!(duration(0), "0.00:00:00.000000");
        assert_eq!(duration(1_500), "0.00:00:01.500000");
        assert_eq!(duration(123_456_789), "1.10:17:36.789000");
        assert_eq!(duration(u64::MAX), "999.23:59:59.999000");
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abc", 10), "abc");
        assert!(sdk_version().starts_with("gantry:"));
    }

    #[test]
    fn run_finished_is_the_root_request() {
        let mut e = event(EventKind::RunFinished);
        e.duration_ms = Some(2_000);
        e.success = Some(true);
        let v = map(&CTX, &e, 3).unwrap();
        assert_eq!(v["name"], "Microsoft.ApplicationInsights.Request");
        assert_eq!(v["time"], "2024-05-01T11:59:58.500Z");
        assert_eq!(v["iKey"], "ikey");
        assert_eq!(v["sampleRate"], 100.0);
        assert_eq!(v["data"]["baseType"], "RequestData");
        let d = &v["data"]["baseData"];
        assert_eq!(d["ver"], 2);
        assert_eq!(d["id"], "run-1");
        assert_eq!(d["name"], "shop");
        assert_eq!(d["duration"], "0.00:00:02.000000");
        assert_eq!(d["success"], true);
        assert_eq!(d["responseCode"], "0");
        assert_eq!(d["properties"]["environment"], "prod");
        assert_eq!(d["properties"]["gantry.telemetry.dropped"], "3");
        assert_eq!(v["tags"]["ai.operation.id"], "run-1");
        assert_eq!(v["tags"]["ai.operation.name"], "shop");
        assert_eq!(v["tags"]["ai.cloud.role"], "shop");
        assert!(v["tags"].get("ai.operation.parentId").is_none());
        e.success = Some(false);
        assert_eq!(
            map(&CTX, &e, 0).unwrap()["data"]["baseData"]["responseCode"],
            "1"
        );
    }

    #[test]
    fn stage_finished_is_a_dependency_of_the_run() {
        let mut e = event(EventKind::StageFinished);
        e.stage = Some("build".into());
        e.name = "build".into();
        e.duration_ms = Some(61_250);
        e.success = Some(false);
        e.properties = vec![
            ("plugin".into(), "command".into()),
            ("status".into(), "failed".into()),
            ("output.x".into(), "y".repeat(9000)),
        ];
        let ctx = Context {
            role: Some("ci"),
            role_instance: Some("agent-7"),
            ..CTX
        };
        let v = map(&ctx, &e, 0).unwrap();
        assert_eq!(v["name"], "Microsoft.ApplicationInsights.RemoteDependency");
        assert_eq!(v["time"], "2024-05-01T11:58:59.250Z");
        let d = &v["data"]["baseData"];
        assert_eq!(d["id"], "run-1/build");
        assert_eq!(d["name"], "build");
        assert_eq!(d["type"], "gantry stage");
        assert_eq!(d["target"], "command");
        assert_eq!(d["resultCode"], "failed");
        assert_eq!(d["success"], false);
        assert_eq!(d["duration"], "0.00:01:01.250000");
        assert_eq!(d["properties"]["output.x"].as_str().unwrap().len(), 8192);
        assert_eq!(v["tags"]["ai.operation.parentId"], "run-1");
        assert_eq!(v["tags"]["ai.cloud.role"], "ci");
        assert_eq!(v["tags"]["ai.cloud.roleInstance"], "agent-7");
    }

    #[test]
    fn long_dependency_ids_stay_distinct() {
        let a = dependency_id(&"r".repeat(200), "a");
        let b = dependency_id(&"r".repeat(200), "b");
        assert_eq!(a.chars().count(), max::ID);
        assert_ne!(a, b);
    }

    #[test]
    fn events_and_metrics() {
        let mut e = event(EventKind::Deployment);
        e.name = "deployment".into();
        e.stage = Some("deploy".into());
        e.properties = vec![("target".into(), "aks".into())];
        let v = map(&CTX, &e, 0).unwrap();
        assert_eq!(v["name"], "Microsoft.ApplicationInsights.Event");
        assert_eq!(v["data"]["baseType"], "EventData");
        assert_eq!(v["data"]["baseData"]["name"], "deployment");
        assert_eq!(v["data"]["baseData"]["properties"]["target"], "aks");
        assert_eq!(v["data"]["baseData"]["properties"]["stage"], "deploy");
        assert_eq!(v["time"], "2024-05-01T12:00:00.500Z");

        let mut m = event(EventKind::Metric);
        m.name = "tests.passed".into();
        m.value = Some(42.0);
        let v = map(&CTX, &m, 0).unwrap();
        assert_eq!(v["name"], "Microsoft.ApplicationInsights.Metric");
        assert_eq!(v["data"]["baseType"], "MetricData");
        assert_eq!(v["data"]["baseData"]["metrics"][0]["name"], "tests.passed");
        assert_eq!(v["data"]["baseData"]["metrics"][0]["value"], 42.0);
        m.value = Some(f64::NAN);
        assert!(map(&CTX, &m, 0).is_none());
        assert!(map(&CTX, &event(EventKind::RunStarted), 0).is_none());
        assert!(map(&CTX, &event(EventKind::StageStarted), 0).is_none());
    }
}
