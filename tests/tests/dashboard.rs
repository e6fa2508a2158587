//! The dashboard and the run report in a real browser: headless Chromium
//! (tests/src/browser.rs) against a `gantry serve` on loopback fed by a real
//! git daemon, and against a report file opened with the network off.
//! Screenshots of each page end up in target/screenshots/.

use gantry_e2e::browser::scenario;
use gantry_e2e::git::{GitDaemon, WorkClone};
use gantry_e2e::serve::{Serve, TOKEN};
use gantry_e2e::{Workspace, plugin};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(180);
/// A summary that tries to run script in whoever reads it.
const XSS: &str =
    r#"<script>window.__xss=1;alert(1)</script><img src=x onerror="window.__xss=2;alert(2)">"#;

#[test]
fn a_report_opens_offline_shows_every_stage_and_the_injection_as_text() {
    let ws = Workspace::new();
    let echo = plugin("echo").display().to_string();
    ws.manifest(
        &r#"pipeline: report
stages:
  - name: build
    uses: "ECHO"
    with: { message: built, summary: 'XSS' }
  - name: test
    uses: "ECHO"
    needs: [build]
    with: { message: tested, ticks: 3, tick_ms: 10 }
  - name: lint
    uses: "ECHO"
    with: { message: linted }
  - name: package
    uses: "ECHO"
    needs: [test, lint]
    with: { message: packaged, event: deployment }
"#
        .replace("ECHO", &echo)
        .replace("XSS", XSS),
    );
    let file = ws.path().join("run.html");
    let out = ws.gantry(&["run", "pipeline.yaml", "--report", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stdout.contains("report: "), "{}", out.all());
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(!html.contains("<script"), "{html}");
    assert!(html.contains("tick 3"), "the log tail is in the report");
    // The telemetry the stages reported: package's deployment event.
    assert!(
        html.contains("<td>package</td><td>deployment</td><td>deployment</td>"),
        "{html}"
    );

    // `gantry report` writes the same report of a recorded run.
    let journal = ws.only_journal().expect("one run");
    let run_id = journal
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let again = ws.path().join("again.html");
    let out = ws.gantry(&["report", run_id, "-o", again.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let out = ws.gantry(&["report", run_id]);
    assert!(out.stdout.starts_with("<!DOCTYPE html>"), "{}", out.all());
    // A report that cannot be written fails the command, after the summary.
    let nowhere = ws.path().join("missing/run.html");
    let out = ws.gantry(&[
        "run",
        "pipeline.yaml",
        "--report",
        nowhere.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stderr.contains("the report was not written"),
        "{}",
        out.all()
    );
    assert!(out.stderr.contains("missing/run.html"), "{}", out.all());
    let out = ws.gantry(&["report", "no-such-run"]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("no run `no-such-run`"), "{}", out.all());

    let answer = scenario(
        "report",
        serde_json::json!({
            "file": again.display().to_string(),
            "stages": ["build", "test", "lint", "package"],
            "stage": "build",
            "text": "<script>window.__xss=1;alert(1)</script>",
        }),
    );
    assert_eq!(answer["requests"].as_array().unwrap().len(), 1, "{answer}");
}

/// The pipeline of the service test: `build` says where its image is (a
/// digest output) and tries script injection in its summary; `watch` logs a
/// line every 250 ms for 20 s; `gate` is the built-in health gate probing
/// the service's own /healthz; production needs an approval.
fn manifest(addr: &str) -> String {
    r#"pipeline: web
promotion:
  reuse: [build]
  environments:
    - default
    - name: production
      approval: required
environments:
  default: { default: true }
  production: {}
stages:
  - name: build
    uses: "ECHO"
    with: { message: built, outputs: { digest: "sha256:${{ run.commit }}" }, summary: 'XSS' }
  - name: watch
    uses: "ECHO"
    needs: [build]
    with: { message: watching, ticks: 80, tick_ms: 250 }
  - name: gate
    uses: health-gate
    needs: [watch]
    with: { probe: { url: "http://ADDR/healthz", successes: 2, interval-ms: 100, window: 60 }, rollback: false }
    permissions: { http: ["http://ADDR"] }
"#
    .replace("ECHO", &plugin("echo").display().to_string())
    .replace("XSS", XSS)
    .replace("ADDR", addr)
}

/// The value of `name="csrf"` in a page.
fn csrf(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF value")
        + 19;
    page[at..].split('"').next().unwrap().to_string()
}

#[test]
fn the_dashboard_lists_runs_streams_a_log_live_and_approves_a_promotion() {
    let daemon = GitDaemon::start();
    let url = daemon.create_repo("web");
    let serve = Serve::start(
        &format!(
            "repositories:\n  - name: web\n    url: {url}\n    manifest: pipeline.yaml\n    poll: off\n"
        ),
        &[],
    );
    let base = format!("http://{}", serve.addr);
    let work = WorkClone::new(&url);
    let commit = work.commit(&[("pipeline.yaml", &manifest(&serve.addr))], "the pipeline");
    work.push(&["HEAD:refs/heads/main"]);
    let r = serve.api(
        "POST",
        "/api/v1/runs",
        Some(serde_json::json!({ "repository": "web", "ref": "main", "commit": commit })),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let ci = r.json()["run"].as_i64().unwrap();

    // While `watch` runs, its log grows on the run page without a reload.
    let deadline = Instant::now() + LONG;
    loop {
        let shown = serve.api("GET", &format!("/api/v1/runs/{ci}"), None).json();
        let running = shown["stages"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "watch" && s["status"] == "running")
        });
        if running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watch never ran: {shown}\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let live = scenario(
        "liveLog",
        serde_json::json!({ "base": base, "token": TOKEN, "run": ci, "stage": "watch" }),
    );
    assert!(
        live["after"].as_u64().unwrap() >= live["before"].as_u64().unwrap() + 3,
        "{live}"
    );
    assert!(
        live["last"].as_str().unwrap().starts_with("tick "),
        "{live}"
    );

    // The finished run is listed; its summary's injection attempt is text.
    let done = serve.wait_run(ci, LONG);
    assert_eq!(
        done["run"]["status"],
        "succeeded",
        "{done}\n{}",
        serve.log()
    );
    scenario(
        "runs",
        serde_json::json!({ "base": base, "token": TOKEN, "run": ci, "status": "succeeded" }),
    );
    scenario(
        "xss",
        serde_json::json!({
            "base": base, "token": TOKEN, "run": ci, "stage": "build",
            "text": "<script>window.__xss=1;alert(1)</script>",
        }),
    );

    // Production waits for an approval.
    let prod = serve.wait_for_run(LONG, |r| r["environment"] == "production");
    let prod = prod["id"].as_i64().unwrap();

    // Pages need a session; the session is not an API credential; forms
    // need this session's CSRF value and this origin.
    let anonymous = serve.http("GET", "/environments", &[], b"");
    assert_eq!(anonymous.status, 303, "{}", anonymous.head);
    assert_eq!(
        anonymous.header("location"),
        Some("/login?next=%2Fenvironments")
    );
    let login = serve.http(
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("token={TOKEN}&next=%2Fenvironments").as_bytes(),
    );
    assert_eq!(login.status, 303, "{}", login.body);
    let set_cookie = login.header("set-cookie").unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let wrong = serve.http(
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"token=not-a-token-at-all-really",
    );
    assert_eq!(wrong.status, 401);
    let page = serve.http("GET", "/environments", &[("cookie", &cookie)], b"");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'"),
        "{}",
        page.head
    );
    let token = csrf(&page.body);
    let form = |csrf: &str, origin: &str| {
        serve.http(
            "POST",
            &format!("/runs/{prod}/approve"),
            &[
                ("cookie", &cookie),
                ("origin", origin),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            format!("csrf={csrf}&environment=production").as_bytes(),
        )
    };
    assert_eq!(form("forged", &base).status, 403);
    assert_eq!(form(&token, "http://evil.example").status, 403);
    let api_by_cookie = serve.http(
        "POST",
        &format!("/api/v1/runs/{prod}/approve"),
        &[("cookie", &cookie)],
        b"",
    );
    assert_eq!(api_by_cookie.status, 401, "{}", api_by_cookie.body);
    let shown = serve
        .api("GET", &format!("/api/v1/runs/{prod}"), None)
        .json();
    assert_eq!(shown["approval"]["state"], "pending", "{shown}");

    // The runs list filters; the run page draws the stages' `needs`.
    let list = |query: &str| {
        serve
            .http(
                "GET",
                &format!("/runs?{query}"),
                &[("cookie", &cookie)],
                b"",
            )
            .body
    };
    let succeeded = list("status=succeeded&pipeline=web&branch=main");
    assert!(
        succeeded.contains(&format!(r#"data-run="{ci}""#)),
        "{succeeded}"
    );
    assert!(
        !succeeded.contains(&format!(r#"data-run="{prod}""#)),
        "{succeeded}"
    );
    let queued = list("status=queued");
    assert!(
        queued.contains(&format!(r#"data-run="{prod}""#)) && queued.contains("waits for approval"),
        "{queued}"
    );
    assert!(!list("branch=other").contains("data-run="));
    let page = serve
        .http("GET", &format!("/runs/{ci}"), &[("cookie", &cookie)], b"")
        .body;
    assert_eq!(page.matches(r#"class="edge""#).count(), 2, "{page}");
    let report = serve.http(
        "GET",
        &format!("/runs/{ci}/report"),
        &[("cookie", &cookie)],
        b"",
    );
    assert_eq!(report.status, 200, "{}", report.body);
    assert!(
        report
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment")
    );
    assert!(
        report.body.starts_with("<!DOCTYPE html>") && report.body.contains(r#"id="stage-watch""#)
    );
    assert!(!report.body.contains("<script"), "{}", report.body);

    // The approve button promotes it; the environments page then shows what
    // production runs: the build's digest.
    let digest = format!("sha256:{commit}");
    let approved = scenario(
        "approve",
        serde_json::json!({
            "base": base, "token": TOKEN, "run": prod, "user": "tester",
            "pipeline": "web", "environment": "production", "digest": digest,
        }),
    );
    assert_eq!(approved["digest"], digest.as_str(), "{approved}");
    let shown = serve
        .api("GET", &format!("/api/v1/runs/{prod}"), None)
        .json();
    assert_eq!(shown["approval"]["decided_by"], "tester", "{shown}");
    assert_eq!(shown["approval"]["comment"], "looks good", "{shown}");
    let done = serve.wait_run(prod, LONG);
    assert_eq!(
        done["run"]["status"],
        "succeeded",
        "{done}\n{}",
        serve.log()
    );

    // The health gate's verdict and what it measured are on the page.
    let page = serve.http("GET", "/environments", &[("cookie", &cookie)], b"");
    assert!(
        page.body.contains("answered 2xx 2 times in a row"),
        "{}",
        page.body
    );

    // Signing out forgets the cookie (and needs this session's CSRF value).
    let out = serve.http(
        "POST",
        "/logout",
        &[
            ("cookie", &cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf={token}").as_bytes(),
    );
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(
        out.header("set-cookie").unwrap().contains("Max-Age=0"),
        "{}",
        out.head
    );

    scenario(
        "pipeline",
        serde_json::json!({ "base": base, "token": TOKEN, "pipeline": "web", "runs": 2 }),
    );
}
