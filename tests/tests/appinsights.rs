//! The built-in `appinsights` telemetry sink against a strict local ingestion
//! endpoint (gantry_e2e::appinsights): the transaction tree of a run, partial
//! success, throttling, permissions, malformed connection strings and secrecy.

use gantry_e2e::appinsights::{Ingestion, Reply};
use gantry_e2e::{Output, Workspace};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const SECRET_ENV: &str = "GANTRY_TEST_AI_CONNECTION";

/// A three-stage pipeline (command, echo reporting a deployment, noop) whose
/// telemetry goes to appinsights with the connection string from secret `ai`.
/// `with` is added to the sink's config; `http` is its `permissions.http`.
fn manifest(with: &str, http: &str) -> String {
    format!(
        r#"pipeline: shop
secrets:
  ai: {{ env: {SECRET_ENV} }}
stages:
  - name: unit
    uses: command
    with:
      steps: [{{ name: check, run: ["true"] }}]
    permissions: {{ exec: ["true"] }}
  - name: package
    uses: "{{echo}}"
    needs: [unit]
    with: {{ message: packaged, event: deployment }}
  - name: notify
    uses: "{{noop}}"
    needs: [package]
telemetry:
  - uses: appinsights
    with:
      connection-string-secret: ai
      role-instance: ci-agent-1
{with}    permissions:
      secrets: [ai]
      http: {http}
"#
    )
}

/// A workspace with the manifest and the connection string of `ing` in the secret.
fn workspace(ing: &Ingestion, with: &str) -> Workspace {
    let ws = Workspace::new().env(SECRET_ENV, &ing.connection_string());
    ws.manifest(&manifest(with, &format!("[\"{}\"]", ing.url())));
    ws
}

/// `gantry run --output json`: the output and the run id.
fn run(ws: &Workspace) -> (Output, String) {
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    (out, v["run_id"].as_str().unwrap().to_string())
}

fn base(e: &Value) -> &Value {
    &e["data"]["baseData"]
}

/// How often each envelope (by its JSON text) was sent, over all requests.
fn sends(ing: &Ingestion) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in ing.requests() {
        for e in r.envelopes {
            *counts.entry(e.to_string()).or_default() += 1;
        }
    }
    counts
}

fn assert_each_accepted_once(ing: &Ingestion) {
    let accepted = ing.accepted();
    let mut seen = std::collections::HashSet::new();
    for e in &accepted {
        assert!(seen.insert(e.to_string()), "accepted twice: {e}");
    }
}

/// Every file under the workspace's `.gantry` and its state directory (run
/// journals, logs, summaries), as text.
fn run_files(ws: &Workspace) -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                out.push_str(&text);
            }
        }
    }
    let mut out = String::new();
    walk(&ws.path().join(".gantry"), &mut out);
    walk(ws.state_root(), &mut out);
    out
}

#[test]
fn a_run_arrives_once_as_one_transaction_tree() {
    let ing = Ingestion::start();
    let ws = workspace(&ing, "");
    let (out, run_id) = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(ing.rejected().is_empty(), "{:#?}", ing.rejected());

    for r in ing.requests() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v2.1/track");
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.status, 200);
    }
    assert_eq!(ing.requests().len(), 1, "one batch is enough");
    assert_each_accepted_once(&ing);

    let requests = ing.accepted_of("RequestData");
    assert_eq!(requests.len(), 1, "{:#?}", ing.accepted());
    let request = &requests[0];
    assert_eq!(request["name"], "Microsoft.ApplicationInsights.Request");
    assert_eq!(base(request)["id"], run_id);
    assert_eq!(base(request)["name"], "shop");
    assert_eq!(base(request)["success"], true);
    assert_eq!(base(request)["responseCode"], "0");
    assert_eq!(base(request)["properties"]["environment"], "default");
    assert_eq!(request["tags"]["ai.operation.id"], run_id);
    assert_eq!(request["tags"]["ai.operation.name"], "shop");
    assert_eq!(request["tags"]["ai.cloud.role"], "shop");
    assert_eq!(request["tags"]["ai.cloud.roleInstance"], "ci-agent-1");
    assert!(
        request["tags"]["ai.internal.sdkVersion"]
            .as_str()
            .unwrap()
            .starts_with("gantry:")
    );
    assert!(request["tags"].get("ai.operation.parentId").is_none());

    let deps = ing.accepted_of("RemoteDependencyData");
    let mut names: Vec<&str> = deps
        .iter()
        .map(|d| base(d)["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["notify", "package", "unit"]);
    for d in &deps {
        assert_eq!(d["tags"]["ai.operation.id"], run_id);
        assert_eq!(d["tags"]["ai.operation.parentId"], run_id);
        assert_eq!(base(d)["type"], "gantry stage");
        assert_eq!(base(d)["success"], true);
        assert_eq!(
            base(d)["id"],
            format!("{run_id}/{}", base(d)["name"].as_str().unwrap())
        );
        // A stage starts within its run.
        assert!(
            d["time"].as_str() >= request["time"].as_str(),
            "{d} {request}"
        );
    }
    let unit = deps.iter().find(|d| base(d)["name"] == "unit").unwrap();
    assert_eq!(base(unit)["target"], "command");

    let events = ing.accepted_of("EventData");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(base(&events[0])["name"], "deployment");
    assert_eq!(base(&events[0])["properties"]["message"], "packaged");
    assert_eq!(base(&events[0])["properties"]["stage"], "package");
    assert_eq!(events[0]["tags"]["ai.operation.parentId"], run_id);

    let metrics = ing.accepted_of("MetricData");
    assert!(
        metrics
            .iter()
            .any(|m| base(m)["metrics"][0]["name"] == "step.duration-ms"
                && base(m)["properties"]["stage"] == "unit"),
        "{metrics:#?}"
    );
    for m in &metrics {
        assert_eq!(m["tags"]["ai.operation.parentId"], run_id);
    }
    assert_eq!(
        ing.accepted().len(),
        1 + deps.len() + events.len() + metrics.len()
    );

    // The instrumentation key was in a secret: it appears nowhere.
    assert!(out.all().contains("accepted"), "{}", out.all());
    assert!(
        !out.all().contains(&ing.instrumentation_key),
        "{}",
        out.all()
    );
    let files = run_files(&ws);
    assert!(files.contains(&run_id));
    assert!(!files.contains(&ing.instrumentation_key));
}

#[test]
fn partial_success_resends_only_the_retryable_items() {
    let ing = Ingestion::start();
    ing.script(vec![Reply::Partial(vec![(1, 500), (2, 429), (3, 400)])]);
    let ws = workspace(&ing, "");
    let (out, _) = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());

    let requests = ing.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].status, 206);
    assert_eq!(requests[1].status, 200);
    let first = &requests[0].envelopes;
    assert!(first.len() >= 5, "{first:#?}");
    assert_eq!(
        requests[1].envelopes,
        [first[1].clone(), first[2].clone()],
        "exactly the 500 and 429 items are resent, in order"
    );
    let counts = sends(&ing);
    for (i, e) in first.iter().enumerate() {
        let expected = if i == 1 || i == 2 { 2 } else { 1 };
        assert_eq!(counts[&e.to_string()], expected, "item {i}");
    }
    let accepted = ing.accepted();
    assert_eq!(accepted.len(), first.len() - 1);
    assert!(
        !accepted.contains(&first[3]),
        "the 400 item is not accepted"
    );
    assert_each_accepted_once(&ing);
    assert!(ing.rejected().is_empty(), "{:#?}", ing.rejected());
    assert!(
        out.stderr
            .contains("refused an envelope: item 3: 400 scripted failure 400"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("1 refused"), "{}", out.stderr);
}

#[test]
fn throttling_and_unavailability_are_retried_until_delivered() {
    let ing = Ingestion::start();
    ing.script(vec![Reply::throttle(429, "1"), Reply::status(503)]);
    let ws = workspace(&ing, "");
    let (out, run_id) = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());

    let requests = ing.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 503, 200]);
    assert_eq!(requests[0].envelopes, requests[1].envelopes);
    assert_eq!(requests[1].envelopes, requests[2].envelopes);
    assert!(
        requests[1].at - requests[0].at >= Duration::from_secs(1),
        "Retry-After: 1 is honoured"
    );
    assert_eq!(ing.accepted(), requests[2].envelopes);
    assert_each_accepted_once(&ing);
    assert_eq!(ing.accepted_of("RequestData").len(), 1);
    assert_eq!(base(&ing.accepted_of("RequestData")[0])["id"], run_id);
    assert!(ing.rejected().is_empty(), "{:#?}", ing.rejected());
    assert!(out.stderr.contains("429"), "{}", out.stderr);
    assert!(out.stderr.contains("retry 1 of 5"), "{}", out.stderr);
}

#[test]
fn retries_end_with_a_message_naming_the_endpoint_and_status() {
    let ing = Ingestion::start();
    ing.script(vec![
        Reply::status(503),
        Reply::status(503),
        Reply::status(503),
    ]);
    let ws = workspace(&ing, "      max-retries: 1\n");
    let (out, _) = run(&ws);
    assert_eq!(
        out.code,
        Some(0),
        "a sink's failure does not fail the run: {}",
        out.all()
    );
    assert_eq!(ing.requests().len(), 2);
    assert!(ing.accepted().is_empty());
    let line = out
        .all()
        .lines()
        .find(|l| l.contains("telemetry sink telemetry[0] (appinsights) failed"))
        .unwrap_or_else(|| panic!("{}", out.all()))
        .to_string();
    assert!(line.contains("transient"), "{line}");
    assert!(
        line.contains(&format!("POST {}/v2.1/track: 503", ing.url())),
        "{line}"
    );
    assert!(line.contains("gave up after 2 attempt(s)"), "{line}");
    // The count of what was lost is said once.
    assert_eq!(line.matches("envelope(s)").count(), 1, "{line}");
    assert!(line.contains(" envelope(s) not delivered"), "{line}");
}

#[test]
fn batches_and_the_buffer_are_bounded() {
    let ing = Ingestion::start();
    let ws = workspace(&ing, "      max-batch: 2\n      max-buffer: 4\n");
    let (out, run_id) = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(ing.rejected().is_empty(), "{:#?}", ing.rejected());
    let requests = ing.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(requests.iter().all(|r| r.envelopes.len() <= 2));
    assert_eq!(ing.accepted().len(), 4);
    // Three dependencies, an event, a metric and the request: two dropped,
    // never the request, which says how many.
    let request = &ing.accepted_of("RequestData")[0];
    assert_eq!(base(request)["id"], run_id);
    assert_eq!(base(request)["properties"]["gantry.telemetry.dropped"], "2");
    assert!(
        out.stderr
            .contains("buffer of 4 envelope(s) full; 2 event(s) dropped"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_ungranted_endpoint_is_denied_and_the_run_result_stands() {
    let ing = Ingestion::start();
    let ws = Workspace::new().env(SECRET_ENV, &ing.connection_string());
    ws.manifest(&manifest("", "[]"));
    let (out, _) = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    for stage in ["unit", "package", "notify"] {
        assert!(out.succeeded(stage), "{}", out.all());
    }
    assert!(ing.requests().is_empty());
    let all = out.all();
    assert!(
        all.contains(&format!(
            "grant it with `telemetry[0].permissions.http: [\"{}\"]`",
            ing.url()
        )),
        "{all}"
    );
    assert!(
        all.contains("telemetry sink telemetry[0] (appinsights) failed: denied"),
        "{all}"
    );
    assert!(!all.contains(&ing.instrumentation_key), "{all}");
}

#[test]
fn a_malformed_literal_fails_validation_naming_the_field() {
    let ing = Ingestion::start();
    let ws = Workspace::new();
    let literal = |value: &str| {
        format!(
            "pipeline: shop\nstages:\n  - name: a\n    uses: \"{{noop}}\"\ntelemetry:\n  - uses: appinsights\n    with:\n      connection-string: \"{value}\"\n    permissions:\n      http: [\"{}\"]\n",
            ing.url()
        )
    };
    ws.manifest(&literal(&ing.connection_string()));
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(
        out.code,
        Some(0),
        "a well-formed literal validates: {}",
        out.all()
    );

    for bad in [
        "IngestionEndpoint=https://dc.example",
        "0a1b2c3d-0000-4000-8000-000000000000",
        "InstrumentationKey=;IngestionEndpoint=https://dc.example",
    ] {
        ws.manifest(&literal(bad));
        let out = ws.gantry(&["validate", "pipeline.yaml"]);
        assert_ne!(out.code, Some(0), "{bad}: {}", out.all());
        assert!(
            out.stderr.contains("telemetry[0].with.connection-string"),
            "{bad}: {}",
            out.stderr
        );
    }

    // Neither field, or both.
    ws.manifest("pipeline: shop\nstages:\n  - name: a\n    uses: \"{noop}\"\ntelemetry:\n  - uses: appinsights\n    with: { role: x }\n");
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_ne!(out.code, Some(0), "{}", out.all());
    assert!(out.stderr.contains("telemetry[0].with"), "{}", out.stderr);
}

#[test]
fn a_malformed_secret_is_a_clear_error_at_run_time_without_its_value() {
    let ing = Ingestion::start();
    let value = format!("IngestionEndpoint={};Sup3rSecretPart", ing.url());
    let ws = Workspace::new().env(SECRET_ENV, &value);
    ws.manifest(&manifest("", &format!("[\"{}\"]", ing.url())));
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(
        out.code,
        Some(0),
        "a secret is only read at run time: {}",
        out.all()
    );
    let (out, _) = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let all = out.all();
    assert!(
        all.contains("failed: invalid-config: appinsights: the connection string in secret `ai` is malformed: segment 2 of 2 has no `=`"),
        "{all}"
    );
    assert!(!all.contains("Sup3rSecretPart"), "{all}");
    assert!(!run_files(&ws).contains("Sup3rSecretPart"));
    assert!(ing.requests().is_empty());
}

/// A stand-in for the Azure management API's annotations endpoint: records
/// each request (method, path and query, Authorization, body) and answers 201.
struct Arm {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<ArmRequest>>>,
}

/// Method, path and query, Authorization, JSON body.
type ArmRequest = (String, String, String, Value);

fn arm() -> Arm {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let log = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = vec![];
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let header = |name: &str| {
                head.iter()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                    .unwrap_or_default()
            };
            let mut body = vec![0u8; header("content-length").parse().unwrap_or(0)];
            let _ = reader.read_exact(&mut body);
            let mut parts = head[0].split(' ');
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            log.lock().unwrap().push((
                method.to_string(),
                target.to_string(),
                header("authorization"),
                json.clone(),
            ));
            let text = json.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    Arm { url, requests }
}

#[test]
fn deployments_become_release_annotations_through_the_management_api() {
    let ing = Ingestion::start();
    let arm = arm();
    let resource = "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/shop/providers/microsoft.insights/components/shop-ai";
    let with = format!(
        "      release-annotations: {{ resource-id: \"{resource}\", token-secret: arm, endpoint: \"{}\" }}\n",
        arm.url
    );
    let yaml = manifest(&with, &format!("[\"{}\", \"{}\"]", ing.url(), arm.url))
        .replace(
            &format!("  ai: {{ env: {SECRET_ENV} }}"),
            &format!("  ai: {{ env: {SECRET_ENV} }}\n  arm: {{ env: GANTRY_TEST_ARM_TOKEN }}"),
        )
        .replace("secrets: [ai]", "secrets: [ai, arm]");
    let ws = Workspace::new()
        .env(SECRET_ENV, &ing.connection_string())
        .env("GANTRY_TEST_ARM_TOKEN", "arm-token-e2e-5f1c");
    ws.manifest(&yaml);
    let (out, run_id) = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let requests = arm.requests.lock().unwrap().clone();
    assert_eq!(
        requests.len(),
        1,
        "one deployment, one annotation: {requests:?}"
    );
    let (method, target, auth, body) = &requests[0];
    assert_eq!(method, "PUT");
    assert_eq!(
        target,
        &format!("{resource}/Annotations?api-version=2015-05-01")
    );
    assert_eq!(auth, "Bearer arm-token-e2e-5f1c");
    assert_eq!(body["Category"], "Deployment");
    let id = body["Id"].as_str().unwrap();
    assert!(id.len() == 36 && &id[14..15] == "4", "a GUID: {id}");
    assert!(body["EventTime"].as_str().unwrap().ends_with('Z'), "{body}");
    assert!(
        body["AnnotationName"]
            .as_str()
            .unwrap()
            .starts_with("shop: "),
        "{body}"
    );
    // `Properties` is a JSON document in a string, as the API wants.
    let properties: Value =
        serde_json::from_str(body["Properties"].as_str().expect("a string")).unwrap();
    assert_eq!(properties["RunId"], run_id.as_str());
    assert_eq!(properties["TriggerBy"], "gantry");
    assert!(!out.all().contains("arm-token-e2e-5f1c"), "{}", out.all());
}
