//! `gantry serve` end to end: a real git daemon on loopback with a bare
//! repository the tests push to, real HTTP deliveries signed as GitHub signs
//! them, the service killed with SIGKILL and started again, promotion through
//! environments with approvals.

use gantry_e2e::git::{GitDaemon, WorkClone};
use gantry_e2e::serve::{Serve, github_push, github_signature};
use serde_json::Value;
use std::time::Duration;

const SECRET: &str = "webhook-secret-for-tests";
const ZERO: &str = "0000000000000000000000000000000000000000";
const LONG: Duration = Duration::from_secs(120);

/// A pipeline of echo stages: `build` appends to `trace.txt` in the
/// workspace (a counter of how often it ran), `deploy` and `gate` run in
/// every environment; `gate` fails where `${{ vars.gate }}` names a path that
/// cannot be written.
fn manifest(extra: &str) -> String {
    let echo = gantry_e2e::plugin("echo").display().to_string();
    format!(
        r#"pipeline: svc
on:
  push:
    branches: [main, "release/**"]
variables:
  gate: trace.txt
promotion:
  reuse: [build]
  environments:
    - default
    - name: staging
    - name: production
      approval: required
environments:
  default: {{ default: true }}
  staging: {{}}
  production: {{}}
  broken-staging: {{ variables: {{ gate: "missing/dir/trace.txt" }} }}
stages:
  - name: build
    uses: "{echo}"
    with: {{ message: "built ${{{{ run.commit }}}}", append: trace.txt }}
    permissions: {{ workspace: write }}
  - name: deploy
    uses: "{echo}"
    needs: [build]
    with: {{ message: "deploy ${{{{ stages.build.outputs.message }}}} to ${{{{ run.environment }}}}", append: trace.txt }}
    permissions: {{ workspace: write }}
  - name: gate
    uses: "{echo}"
    needs: [deploy]
    with: {{ message: "gate", append: "${{{{ vars.gate }}}}" }}
    permissions: {{ workspace: write }}
{extra}"#
    )
}

fn config(url: &str, poll: &str) -> String {
    format!(
        "repositories:\n  - name: svc\n    url: {url}\n    manifest: pipeline.yaml\n    poll: {poll}\n    \
         github: {{ secret: {{ env: TEST_WEBHOOK_SECRET }} }}\n    \
         azure-devops: {{ username: hook, password: {{ env: TEST_ADO_PASSWORD }} }}\n"
    )
}

fn start(url: &str, poll: &str) -> Serve {
    Serve::start(
        &config(url, poll),
        &[
            ("TEST_WEBHOOK_SECRET", SECRET),
            ("TEST_ADO_PASSWORD", "ado-password"),
        ],
    )
}

/// A repository with the pipeline committed and pushed to `main`.
fn repo(daemon: &GitDaemon) -> (String, WorkClone, String) {
    let url = daemon.create_repo("svc");
    let work = WorkClone::new(&url);
    let commit = work.commit(&[("pipeline.yaml", &manifest(""))], "add the pipeline");
    work.push(&["HEAD:refs/heads/main"]);
    (url, work, commit)
}

fn deliver(
    serve: &Serve,
    id: &str,
    body: &str,
    signature: Option<&str>,
) -> gantry_e2e::serve::Reply {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("x-github-event", "push"),
        ("x-github-delivery", id),
    ];
    if let Some(s) = signature {
        headers.push(("x-hub-signature-256", s));
    }
    serve.http("POST", "/hooks/github/svc", &headers, body.as_bytes())
}

fn runs_of(serve: &Serve, env: &str) -> Vec<Value> {
    serve
        .runs()
        .into_iter()
        .filter(|r| r["environment"] == env)
        .collect()
}

#[test]
fn a_signed_push_runs_once_a_redelivery_runs_nothing_and_a_forged_one_is_refused() {
    let daemon = GitDaemon::start();
    let (url, _work, commit) = repo(&daemon);
    let serve = start(&url, "off");
    let body = github_push(&url, "refs/heads/main", ZERO, &commit, "add the pipeline");

    // Forged: no signature, a wrong one, one over another body.
    for sig in [
        None,
        Some("sha256=00"),
        Some(&*github_signature("wrong", body.as_bytes())),
    ] {
        let r = deliver(&serve, "d-forged", &body, sig);
        assert_eq!(r.status, 401, "{sig:?}: {}", r.body);
    }
    let tampered = body.replace("add the pipeline", "tampered");
    let r = deliver(
        &serve,
        "d-forged",
        &tampered,
        Some(&github_signature(SECRET, body.as_bytes())),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(serve.runs().is_empty(), "a refused delivery queued a run");

    // ping
    let ping = r#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let r = serve.http(
        "POST",
        "/hooks/github/svc",
        &[
            ("content-type", "application/json"),
            ("x-github-event", "ping"),
            ("x-github-delivery", "d-ping"),
            (
                "x-hub-signature-256",
                &github_signature(SECRET, ping.as_bytes()),
            ),
        ],
        ping.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outcome"], "pong");

    let sig = github_signature(SECRET, body.as_bytes());
    let r = deliver(&serve, "d-1", &body, Some(&sig));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["runs"][0].as_i64().unwrap();
    let done = serve.wait_run(id, LONG);
    assert_eq!(
        done["run"]["status"],
        "succeeded",
        "{done}\n{}",
        serve.log()
    );
    assert_eq!(done["run"]["commit"], commit.as_str());
    assert_eq!(done["run"]["trigger"], "push");
    let stages: Vec<&str> = done["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["build", "deploy", "gate"]);

    // The same delivery again (GitHub's "Redeliver"): answered, runs nothing.
    let r = deliver(&serve, "d-1", &body, Some(&sig));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outcome"], "duplicate");
    std::thread::sleep(Duration::from_millis(500));
    let default_runs = runs_of(&serve, "default");
    assert_eq!(default_runs.len(), 1, "{default_runs:?}");

    // A deleted ref is ignored.
    let delete = github_push(&url, "refs/heads/main", &commit, ZERO, "");
    let r = deliver(
        &serve,
        "d-2",
        &delete,
        Some(&github_signature(SECRET, delete.as_bytes())),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outcome"], "ignored");
}

#[test]
fn polling_picks_up_a_push_whose_webhook_was_lost_and_skip_ci_is_honoured() {
    let daemon = GitDaemon::start();
    let (url, work, _first) = repo(&daemon);
    let mut serve = start(&url, "200ms");
    // The first poll records what is there; nothing runs for it.
    serve.wait_for_log("first look", LONG);
    std::thread::sleep(Duration::from_millis(600));
    assert!(serve.runs().is_empty(), "{:?}", serve.runs());

    let second = work.commit(&[("app.txt", "2")], "change the app");
    work.push(&["HEAD:refs/heads/main"]);
    let run = serve.wait_for_run(LONG, |r| r["commit"] == second.as_str());
    assert_eq!(run["trigger"], "poll");
    let done = serve.wait_run(run["id"].as_i64().unwrap(), LONG);
    assert_eq!(done["run"]["status"], "succeeded", "{done}");

    // [skip ci] in the head commit: queued, then skipped by the manifest's rules.
    let third = work.commit(&[("app.txt", "3")], "docs only [skip ci]");
    work.push(&["HEAD:refs/heads/main"]);
    let run = serve.wait_for_run(LONG, |r| r["commit"] == third.as_str());
    let done = serve.wait_run(run["id"].as_i64().unwrap(), LONG);
    assert_eq!(done["run"]["status"], "skipped", "{done}");
    assert!(done["stages"].as_array().unwrap().is_empty());

    // A branch the manifest does not name: skipped.
    let other = work.commit(&[("app.txt", "4")], "experiment");
    work.push(&["HEAD:refs/heads/experiment"]);
    let run = serve.wait_for_run(LONG, |r| r["commit"] == other.as_str());
    let done = serve.wait_run(run["id"].as_i64().unwrap(), LONG);
    assert_eq!(done["run"]["status"], "skipped", "{done}");
    assert!(
        done["run"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("experiment"),
        "{done}"
    );
}

#[test]
fn azure_devops_push_with_basic_auth() {
    let daemon = GitDaemon::start();
    let (url, _work, commit) = repo(&daemon);
    let serve = start(&url, "off");
    let body = serde_json::json!({
        "id": "03c164c2-8912-4d5e-8009-3707d5f83734",
        "eventType": "git.push",
        "publisherId": "tfs",
        "resource": {
            "commits": [{ "commitId": commit, "comment": "add the pipeline", "url": "https://example/commit" }],
            "refUpdates": [{ "name": "refs/heads/main", "oldObjectId": ZERO, "newObjectId": commit }],
            "repository": { "name": "svc", "remoteUrl": url },
            "pushedBy": { "displayName": "Tester", "uniqueName": "tester@example.com" },
            "pushId": 14,
            "date": "2026-12-06T08:00:00Z"
        }
    })
    .to_string();
    let basic = |user: &str, pass: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    };
    let post = |auth: Option<&str>| {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        serve.http("POST", "/hooks/azure-devops/svc", &headers, body.as_bytes())
    };
    assert_eq!(post(None).status, 401);
    assert_eq!(post(Some(&basic("hook", "wrong"))).status, 401);
    assert!(serve.runs().is_empty());
    let r = post(Some(&basic("hook", "ado-password")));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["runs"][0].as_i64().unwrap();
    let done = serve.wait_run(id, LONG);
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    // Azure DevOps retries with the same event id: nothing runs twice.
    let r = post(Some(&basic("hook", "ado-password")));
    assert_eq!(r.json()["outcome"], "duplicate", "{}", r.body);
}

#[test]
fn the_api_needs_a_token() {
    let daemon = GitDaemon::start();
    let (url, _work, _) = repo(&daemon);
    let serve = start(&url, "off");
    assert_eq!(serve.http("GET", "/api/v1/runs", &[], b"").status, 401);
    assert_eq!(
        serve
            .http(
                "GET",
                "/api/v1/runs",
                &[("authorization", "Bearer not-the-token")],
                b""
            )
            .status,
        401
    );
    assert_eq!(serve.http("GET", "/healthz", &[], b"").status, 200);
    let metrics = serve.http("GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("gantry_queue_depth"),
        "{}",
        metrics.body
    );
}

#[test]
fn sigkill_mid_run_then_restart_completes_the_run_without_rerunning_finished_stages() {
    let daemon = GitDaemon::start();
    let url = daemon.create_repo("svc");
    let work = WorkClone::new(&url);
    // `deploy` takes long enough to be killed in the middle of.
    let slow = manifest("").replace(
        "append: trace.txt }\n    permissions: { workspace: write }\n  - name: gate",
        "append: trace.txt, sleep_ms: 4000 }\n    permissions: { workspace: write }\n  - name: gate",
    );
    assert!(slow.contains("sleep_ms"));
    let commit = work.commit(&[("pipeline.yaml", &slow)], "slow deploy");
    work.push(&["HEAD:refs/heads/main"]);
    let mut serve = start(&url, "off");
    let r = serve.api(
        "POST",
        "/api/v1/runs",
        Some(serde_json::json!({ "repository": "svc", "ref": "main" })),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["run"].as_i64().unwrap();
    serve.wait_for_log(&format!("run {id} build: succeeded"), LONG);
    // deploy is running (it sleeps 4 s): kill the service without warning.
    std::thread::sleep(Duration::from_millis(800));
    serve.kill9();
    serve.restart();
    serve.wait_for_log(&format!("run {id}: left running"), LONG);
    let done = serve.wait_run(id, LONG);
    assert_eq!(
        done["run"]["status"],
        "succeeded",
        "{done}\n{}",
        serve.log()
    );
    assert_eq!(done["run"]["commit"], commit.as_str());
    // build ran once: its line is in the trace once, and the journal has one
    // completion for it.
    let ws = serve.data().join("workspaces").join(id.to_string());
    let trace = std::fs::read_to_string(ws.join("trace.txt")).unwrap();
    assert_eq!(trace.matches("build").count(), 1, "{trace}");
    let journal = journal_text(&serve, done["run"]["journal_run_id"].as_str().unwrap());
    assert_eq!(
        journal
            .matches(r#""event":"stage-finished","stage":"build""#)
            .count(),
        1,
        "{journal}"
    );
    assert!(journal.contains(r#""event":"run-resumed""#), "{journal}");
}

/// The journal of run `journal_id`, wherever the service's state root holds it.
fn journal_text(serve: &Serve, journal_id: &str) -> String {
    let all = serve.state_root().join("workspaces");
    for ws in std::fs::read_dir(&all).unwrap() {
        let j = ws
            .unwrap()
            .path()
            .join("runs")
            .join(journal_id)
            .join("journal.jsonl");
        if let Ok(text) = std::fs::read_to_string(&j) {
            return text;
        }
    }
    panic!("no journal {journal_id} under {}", all.display());
}

#[test]
fn promotion_reuses_the_build_waits_for_approval_and_a_rejection_never_deploys() {
    let daemon = GitDaemon::start();
    let (url, work, _first) = repo(&daemon);
    let serve = start(&url, "off");
    let trigger = |commit: &str| {
        let r = serve.api(
            "POST",
            "/api/v1/runs",
            Some(serde_json::json!({ "repository": "svc", "ref": "main", "commit": commit })),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.json()["run"].as_i64().unwrap()
    };
    let first = work.head();
    let ci = trigger(&first);
    let done = serve.wait_run(ci, LONG);
    assert_eq!(
        done["run"]["status"],
        "succeeded",
        "{done}\n{}",
        serve.log()
    );
    // staging follows by itself, reusing build.
    let staging = serve.wait_for_run(LONG, |r| r["environment"] == "staging");
    assert_eq!(staging["trigger"], "promotion");
    assert_eq!(staging["source_run"], ci);
    let staging = serve.wait_run(staging["id"].as_i64().unwrap(), LONG);
    assert_eq!(
        staging["run"]["status"],
        "succeeded",
        "{staging}\n{}",
        serve.log()
    );
    let build = &staging["stages"][0];
    assert_eq!(build["name"], "build");
    // production waits for an approval.
    let prod = serve.wait_for_run(LONG, |r| r["environment"] == "production");
    let prod_id = prod["id"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let shown = serve
        .api("GET", &format!("/api/v1/runs/{prod_id}"), None)
        .json();
    assert_eq!(shown["run"]["status"], "queued", "{shown}");
    assert_eq!(shown["approval"]["state"], "pending", "{shown}");

    // Rejected: it never runs.
    let r = serve.api(
        "POST",
        &format!("/api/v1/runs/{prod_id}/reject"),
        Some(serde_json::json!({ "comment": "not today" })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["approval"]["decided_by"], "tester");
    let done = serve.wait_run(prod_id, LONG);
    assert_eq!(done["run"]["status"], "rejected", "{done}");
    assert!(done["stages"].as_array().unwrap().is_empty());
    // A decided approval stays decided.
    let r = serve.api("POST", &format!("/api/v1/runs/{prod_id}/approve"), None);
    assert_eq!(r.status, 409, "{}", r.body);

    // The workspace's trace: build ran once for ci and staging together;
    // deploy and gate once in each environment.
    let ws = serve.data().join("workspaces").join(ci.to_string());
    let trace = std::fs::read_to_string(ws.join("trace.txt")).unwrap();
    assert_eq!(
        trace.lines().collect::<Vec<_>>(),
        ["build", "deploy", "gate", "deploy", "gate"]
    );

    // A second commit, approved this time.
    let second = work.commit(&[("app.txt", "v2")], "v2");
    work.push(&["HEAD:refs/heads/main"]);
    let ci2 = trigger(&second);
    serve.wait_run(ci2, LONG);
    let prod2 = serve.wait_for_run(LONG, |r| {
        r["environment"] == "production" && r["commit"] == second.as_str()
    });
    let prod2 = prod2["id"].as_i64().unwrap();
    let r = serve.api(
        "POST",
        &format!("/api/v1/runs/{prod2}/approve"),
        Some(serde_json::json!({ "comment": "ship it" })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let done = serve.wait_run(prod2, LONG);
    assert_eq!(
        done["run"]["status"],
        "succeeded",
        "{done}\n{}",
        serve.log()
    );

    // What is live where: production has the second commit, by run prod2.
    let envs = serve.api("GET", "/api/v1/environments", None).json();
    let live = |env: &str| {
        envs["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["environment"] == env)
            .cloned()
            .unwrap_or_else(|| panic!("nothing live in {env}: {envs}"))
    };
    assert_eq!(live("production")["commit"], second.as_str());
    assert_eq!(live("production")["run"], prod2);
    assert_eq!(live("staging")["commit"], second.as_str());

    // `run.previous-commit`, from the service's deployment history: each
    // second-commit run replaced the first commit where it ran, except in
    // production, where the rejected first commit never went.
    let started = |run: i64| -> Value {
        let shown = serve
            .api("GET", &format!("/api/v1/runs/{run}"), None)
            .json();
        let journal = journal_text(&serve, shown["run"]["journal_run_id"].as_str().unwrap());
        serde_json::from_str(journal.lines().next().unwrap()).unwrap()
    };
    let previous = |run: i64| started(run)["previous_commit"].clone();
    let staging2 = serve.wait_for_run(LONG, |r| {
        r["environment"] == "staging" && r["commit"] == second.as_str()
    });
    assert_eq!(previous(ci2), first.as_str());
    assert_eq!(previous(staging2["id"].as_i64().unwrap()), first.as_str());
    assert_eq!(previous(prod2), Value::Null);
    // `run.url`: each run's page on this service (promotions included).
    for run in [ci2, prod2] {
        let url = started(run)["url"].as_str().unwrap_or_default().to_string();
        assert!(
            url.starts_with("http://127.0.0.1:") && url.ends_with(&format!("/runs/{run}")),
            "{url}"
        );
        let page = serve.http("GET", &format!("/runs/{run}"), &[], b"");
        assert_ne!(page.status, 404, "the page run.url names exists");
    }
}

#[test]
fn a_failed_gate_stops_promotion() {
    let daemon = GitDaemon::start();
    let url = daemon.create_repo("svc");
    let work = WorkClone::new(&url);
    // staging's gate fails (it writes under a directory that does not exist).
    let m = manifest("").replace(
        "  staging: {}\n",
        "  staging: { variables: { gate: \"missing/dir/trace.txt\" } }\n",
    );
    let commit = work.commit(&[("pipeline.yaml", &m)], "gate fails in staging");
    work.push(&["HEAD:refs/heads/main"]);
    let serve = start(&url, "off");
    let r = serve.api(
        "POST",
        "/api/v1/runs",
        Some(serde_json::json!({ "repository": "svc", "ref": "main", "commit": commit })),
    );
    let ci = r.json()["run"].as_i64().unwrap();
    let done = serve.wait_run(ci, LONG);
    assert_eq!(
        done["run"]["status"],
        "succeeded",
        "{done}\n{}",
        serve.log()
    );
    let staging = serve.wait_for_run(LONG, |r| r["environment"] == "staging");
    let staging = serve.wait_run(staging["id"].as_i64().unwrap(), LONG);
    assert_eq!(staging["run"]["status"], "failed", "{staging}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        runs_of(&serve, "production").is_empty(),
        "{:?}",
        serve.runs()
    );
    let envs = serve.api("GET", "/api/v1/environments", None).json();
    assert!(
        !envs["environments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["environment"] == "staging"),
        "{envs}"
    );
}

/// `gantry <args>` against the service, with or without the API token.
fn cli(serve: &Serve, args: &[&str], token: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new(gantry_e2e::gantry());
    cmd.args(args)
        .arg("--server")
        .arg(format!("http://{}", serve.addr))
        .env_remove("GANTRY_TOKEN")
        .env_remove("GANTRY_SERVER");
    if token {
        cmd.env("GANTRY_TOKEN", gantry_e2e::serve::TOKEN);
    }
    cmd.output().unwrap()
}

#[test]
fn the_cli_lists_runs_follows_logs_and_approves_through_the_service() {
    let daemon = GitDaemon::start();
    let (url, work, _) = repo(&daemon);
    let serve = start(&url, "off");
    let r = serve.api(
        "POST",
        "/api/v1/runs",
        Some(serde_json::json!({ "repository": "svc", "ref": "main" })),
    );
    let ci = r.json()["run"].as_i64().unwrap();
    // Follow deploy's log while the run goes on: the stream ends with the run.
    let logs = cli(&serve, &["logs", &ci.to_string(), "deploy"], true);
    assert!(logs.status.success(), "{logs:?}");
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.contains(&format!("deploy built {} to default", work.head())),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("succeeded"),
        "{logs:?}"
    );

    let prod = serve.wait_for_run(LONG, |r| r["environment"] == "production");
    let prod = prod["id"].as_i64().unwrap().to_string();
    let runs = cli(&serve, &["runs"], true);
    let listed = String::from_utf8_lossy(&runs.stdout);
    for env in ["default", "staging", "production"] {
        assert!(listed.contains(env), "{listed}");
    }

    // Without a token: refused, and told what to set.
    let denied = cli(&serve, &["approve", &prod, "production"], false);
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("401") && err.contains("GANTRY_TOKEN"), "{err}");
    assert_eq!(
        serve
            .api("GET", &format!("/api/v1/runs/{prod}"), None)
            .json()["approval"]["state"],
        "pending"
    );

    let ok = cli(
        &serve,
        &["approve", &prod, "production", "--comment", "checked"],
        true,
    );
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("approved by tester"),
        "{ok:?}"
    );
    let done = serve.wait_run(prod.parse().unwrap(), LONG);
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    assert_eq!(done["approval"]["comment"], "checked");
}

#[test]
fn a_cancelled_run_resumes_from_its_journal_through_the_cli() {
    let daemon = GitDaemon::start();
    let url = daemon.create_repo("svc");
    let work = WorkClone::new(&url);
    let slow = manifest("").replace(
        "append: trace.txt }\n    permissions: { workspace: write }\n  - name: gate",
        "append: trace.txt, sleep_ms: 3000 }\n    permissions: { workspace: write }\n  - name: gate",
    );
    work.commit(&[("pipeline.yaml", &slow)], "slow deploy");
    work.push(&["HEAD:refs/heads/main"]);
    let mut serve = start(&url, "off");
    let r = serve.api(
        "POST",
        "/api/v1/runs",
        Some(serde_json::json!({ "repository": "svc", "ref": "main" })),
    );
    let id = r.json()["run"].as_i64().unwrap();
    serve.wait_for_log(&format!("run {id} build: succeeded"), LONG);
    std::thread::sleep(Duration::from_millis(300));
    let r = serve.api("POST", &format!("/api/v1/runs/{id}/cancel"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let done = serve.wait_run(id, LONG);
    assert_eq!(done["run"]["status"], "cancelled", "{done}");

    let out = cli(&serve, &["resume", &id.to_string()], true);
    assert!(out.status.success(), "{out:?}");
    let done = serve.wait_run(id, LONG);
    assert_eq!(
        done["run"]["status"],
        "succeeded",
        "{done}\n{}",
        serve.log()
    );
    let ws = serve.data().join("workspaces").join(id.to_string());
    let trace = std::fs::read_to_string(ws.join("trace.txt")).unwrap();
    assert_eq!(trace.matches("build").count(), 1, "build ran once: {trace}");
    // A run that succeeded does not resume.
    let again = cli(&serve, &["resume", &id.to_string()], true);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("409"),
        "{again:?}"
    );
}
