//! `gantry plugins test`: plugins run against case files whose host answers
//! are scripted; expectations that hold pass, those that do not fail saying
//! what differed; denials are the real ones; `--record` turns a run against a
//! real server into a case that replays without it.

use gantry_e2e::{Output, Workspace, plugin, repo};
use std::io::{Read, Write};
use std::net::TcpListener;

/// Write `cases.yaml` (with `{echo}` and `{hostile}` replaced by the test
/// plugins' paths) and run `gantry plugins test` on it.
fn test_cases(ws: &Workspace, yaml: &str, extra: &[&str]) -> Output {
    let text = yaml
        .replace("{echo}", &plugin("echo").display().to_string())
        .replace("{hostile}", &plugin("hostile").display().to_string());
    ws.write("cases.yaml", text);
    let mut args = vec!["plugins", "test", "--case", "cases.yaml"];
    args.extend(extra);
    ws.gantry(&args)
}

/// The result line of case `name`.
fn case_line<'a>(out: &'a Output, name: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.get(4..).is_some_and(|rest| rest.starts_with(name)))
        .unwrap_or_else(|| panic!("no line for case `{name}` in:\n{}", out.all()))
}

#[test]
fn a_passing_case_checks_outcome_outputs_artifacts_files_and_secrets() {
    let ws = Workspace::new();
    let out = test_cases(
        &ws,
        r#"plugin: "{echo}"
cases:
  - name: writes its message
    with: { message: hello, write: out/msg.txt, secret: token }
    permissions: { workspace: write, secrets: [token] }
    workspace: { files: { out/.keep: "" } }
    secrets: { token: s3cret }
    expect:
      outcome: success
      message: echoed 5 bytes
      outputs: { message: hello }
      artifacts: [message, out/msg.txt]
      files: { out/msg.txt: hello }
      calls: []
      denials: []
"#,
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(
        case_line(&out, "writes its message"),
        "✓ writes its message"
    );
    assert!(out.stdout.contains("1 case(s), 0 failed"), "{}", out.all());
    assert!(!out.all().contains("s3cret"), "{}", out.all());
}

#[test]
fn a_wrong_expectation_fails_saying_what_differed() {
    let ws = Workspace::new();
    let out = test_cases(
        &ws,
        r#"cases:
  - name: expects too much
    with: { message: hello }
    expect:
      outcome: failure
      outputs: { message: bye, missing: x }
      artifacts: [report.json]
      files: { report.json: "{}" }
  - name: right
    with: { message: hello }
    expect: { outcome: success }
"#,
        // The plugin named on the command line, not in the file.
        &[plugin("echo").to_str().unwrap()],
    );
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = case_line(&out, "expects too much");
    assert!(line.starts_with("✗ expects too much: "), "{line}");
    for part in [
        "outcome: expected failure, got success (echoed 5 bytes)",
        "outputs.message: expected `bye`, got `hello`",
        "outputs.missing: expected `x`, but there is no such output",
        "artifacts: expected `report.json`, got []",
        "files.report.json: expected `{}`, but there is no such file",
    ] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    assert_eq!(case_line(&out, "right"), "✓ right");
    assert!(out.stdout.contains("2 case(s), 1 failed"), "{}", out.all());
}

#[test]
fn responses_are_served_in_turn_429_then_200() {
    let ws = Workspace::new();
    let out = test_cases(
        &ws,
        r#"plugin: health-gate
cases:
  - name: rate limited first
    with: { probe: { url: "https://api.example.com/items", successes: 1, interval-ms: 1 } }
    permissions: { http: ["https://api.example.com"] }
    http:
      - request: { method: GET, url: "https://api.example.com/items" }
        responses:
          - { status: 429, headers: { retry-after: "0" } }
          - { status: 200, body: '{"n": 3}' }
    expect:
      outcome: success
      message: answered 2xx 1 times in a row (2 probes)
      outputs: { healthy: "true" }
      calls: [GET https://api.example.com/items, GET https://api.example.com/items]
"#,
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(
        case_line(&out, "rate limited first"),
        "✓ rate limited first"
    );
}

#[test]
fn a_request_nothing_answers_fails_the_case() {
    let ws = Workspace::new();
    let out = test_cases(
        &ws,
        r#"plugin: "{hostile}"
cases:
  - name: unscripted
    with: { attack: http, target: "https://api.example.com/other" }
    permissions: { http: ["https://api.example.com"] }
    http:
      - request: { url: "https://api.example.com/items" }
        responses: [{ status: 200 }]
    # Even a case that expects the failure fails: the script is incomplete.
    expect: { outcome: failure }
"#,
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = case_line(&out, "unscripted");
    assert!(
        line.starts_with(
            "✗ unscripted: no scripted response for `GET https://api.example.com/other`"
        ),
        "{line}"
    );
}

#[test]
fn an_ungranted_origin_is_a_denial_and_the_script_is_not_consulted() {
    let ws = Workspace::new();
    let out = test_cases(
        &ws,
        r#"plugin: "{hostile}"
cases:
  - name: denied
    with: { attack: http, target: "https://evil.example.com/x" }
    permissions: { http: ["https://api.example.com"] }
    http:
      - request: { url: "https://evil.example.com/x" }
        responses: [{ status: 200, body: SCRIPTED-ANSWER }]
    expect:
      outcome: denied
      calls: []
      denials: ["not allowed to send HTTP requests to https://evil.example.com:443"]
  - name: expects the call anyway
    with: { attack: http, target: "https://evil.example.com/x" }
    permissions: { http: ["https://api.example.com"] }
    http:
      - request: { url: "https://evil.example.com/x" }
        responses: [{ status: 200, body: SCRIPTED-ANSWER }]
    expect:
      outcome: success
      calls: [GET https://evil.example.com/x]
      denials: []
"#,
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert_eq!(case_line(&out, "denied"), "✓ denied");
    let line = case_line(&out, "expects the call anyway");
    for part in [
        "outcome: expected success, got denied",
        "calls: expected [GET https://evil.example.com/x], got []",
        "denials: unexpected `stage `stage` is not allowed to send HTTP requests to https://evil.example.com:443: grant it with `cases[1].permissions.http: [\"https://evil.example.com:443\"]``",
    ] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    assert!(!out.all().contains("SCRIPTED-ANSWER"), "{}", out.all());
}

#[test]
fn exec_results_are_scripted_and_ungranted_programs_denied() {
    let ws = Workspace::new();
    let out = test_cases(
        &ws,
        r#"plugin: command
cases:
  - name: nothing runs for real
    with: { steps: [{ run: [rm, -rf, marker] }] }
    permissions: { exec: [rm] }
    workspace: { files: { marker: here } }
    exec:
      - run: [rm, -rf, marker]
        results: [{ code: 3, stderr: scripted failure }]
    expect:
      outcome: failed
      message: "exited with 3; last lines:\nscripted failure"
      files: { marker: here }
      calls: [exec rm -rf marker]
  - name: not granted
    with: { steps: [{ run: [rm, marker] }] }
    permissions: { exec: [ls] }
    expect:
      outcome: denied
      calls: []
      denials: ["not allowed to run `rm`"]
"#,
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(
        case_line(&out, "nothing runs for real"),
        "✓ nothing runs for real"
    );
    assert_eq!(case_line(&out, "not granted"), "✓ not granted");
}

/// A real HTTP server on 127.0.0.1 answering one connection each with
/// `answers` in turn, then closing its socket.
fn serve(answers: Vec<(u16, &'static str)>) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        for (status, body) in answers {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-served-by: test\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, handle)
}

#[test]
fn a_recorded_run_replays_without_the_server() {
    let ws = Workspace::new().env("CERTIFY_TOKEN", "tok-123456");
    let (port, server) = serve(vec![(503, "warming up"), (200, "up, token tok-123456")]);
    let url = format!("http://127.0.0.1:{port}/health");
    // A port nothing listens on: its refused connection is recorded too.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let input = format!(
        r#"cases:
  - name: live
    with: {{ probe: {{ url: "{url}", successes: 1, interval-ms: 1 }} }}
    permissions: {{ http: ["http://127.0.0.1:{port}"] }}
    secrets: {{ token: {{ env: CERTIFY_TOKEN }} }}
  - name: nothing listens
    with: {{ probe: {{ url: "http://127.0.0.1:{closed}/", successes: 1, interval-ms: 2000, window: 1 }}, rollback: false }}
    permissions: {{ http: ["http://127.0.0.1:{closed}"] }}
"#
    );
    let out = test_cases(&ws, &input, &["health-gate", "--record", "recorded.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("● live: success (2 call(s))"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains("● nothing listens: failed (1 call(s))"),
        "{}",
        out.all()
    );
    server.join().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server must be gone before the replay"
    );
    let recorded = std::fs::read_to_string(ws.path().join("recorded.yaml")).unwrap();
    assert!(recorded.contains("status: 503"), "{recorded}");
    assert!(recorded.contains("x-served-by: test"), "{recorded}");
    assert!(!recorded.contains("tok-123456"), "{recorded}");
    assert!(recorded.contains("up, token ***"), "{recorded}");
    assert!(recorded.contains("env: CERTIFY_TOKEN"), "{recorded}");
    assert!(
        recorded.contains("error: \"connection error: "),
        "{recorded}"
    );
    assert!(
        recorded.contains("the connection was refused"),
        "{recorded}"
    );

    let replay = ws.gantry(&["plugins", "test", "--case", "recorded.yaml"]);
    assert_eq!(replay.code, Some(0), "{}\n{recorded}", replay.all());
    assert_eq!(case_line(&replay, "live"), "✓ live");
    assert_eq!(case_line(&replay, "nothing listens"), "✓ nothing listens");

    // The replay really compares: an edited expectation fails it.
    let edited = recorded.replace("healthy: \"true\"", "healthy: \"false\"");
    assert_ne!(edited, recorded, "{recorded}");
    std::fs::write(ws.path().join("recorded.yaml"), edited).unwrap();
    let replay = ws.gantry(&["plugins", "test", "--case", "recorded.yaml"]);
    assert_eq!(replay.code, Some(1), "{}", replay.all());
    assert!(
        case_line(&replay, "live").contains("outputs.healthy: expected `false`, got `true`"),
        "{}",
        replay.all()
    );
}

#[test]
fn a_recorded_program_replays_with_its_writes_without_running() {
    let ws = Workspace::new();
    let input = r#"plugin: command
cases:
  - name: builds
    with: { steps: [{ name: build, run: [sh, -c, "echo built > out.txt; echo done"] }] }
    permissions: { workspace: write, exec: [sh] }
    workspace: { files: { src.txt: source } }
    expect: { files: { out.txt: "" } }
"#;
    let out = test_cases(&ws, input, &["--record", "recorded.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let recorded = std::fs::read_to_string(ws.path().join("recorded.yaml")).unwrap();
    assert!(
        recorded.contains("writes:\n        out.txt: |\n          built"),
        "{recorded}"
    );
    assert!(recorded.contains("stdout: |\n        done"), "{recorded}");
    // The replay runs no program: with no PATH, a real `sh` could not be found.
    let replay = ws
        .command(&["plugins", "test", "--case", "recorded.yaml"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(replay.status.code(), Some(0), "{stdout}\n{recorded}");
    assert!(stdout.contains("✓ builds"), "{stdout}");
}

#[test]
fn record_refuses_secret_values_in_the_case_and_engine_grants() {
    let ws = Workspace::new();
    let refused = [
        (
            "secrets: { token: s3cret }",
            "cases.yaml:4:23: cases[0].secrets.token: with --record, secret values come from the environment",
        ),
        // Engine and cluster calls are scripted by hand, never recorded.
        (
            "permissions: { engine: true }",
            "cases.yaml:4:28: cases[0].permissions.engine: --record records HTTP requests and programs, not engine calls",
        ),
    ];
    for (line, want) in refused {
        let out = test_cases(
            &ws,
            &format!("cases:\n  - name: x\n    with: {{ message: hi }}\n    {line}\n"),
            &[
                plugin("echo").to_str().unwrap(),
                "--record",
                "recorded.yaml",
            ],
        );
        assert_eq!(out.code, Some(2), "{}", out.all());
        assert!(out.stderr.contains(want), "want `{want}`:\n{}", out.all());
        assert!(!ws.path().join("recorded.yaml").exists());
    }
}

#[test]
fn a_malformed_case_file_is_refused_naming_file_and_line() {
    let ws = Workspace::new();
    let bad = [
        (
            "cases:\n  - name: a\n    with: { message: hi }\n    expect:\n      outcome: sucess\n",
            "cases.yaml:5:16: unknown variant `sucess`",
        ),
        (
            "cases:\n  - name: a\n    expct: {}\n",
            "cases.yaml:3:5: unknown field `expct`",
        ),
        (
            "cases:\n  - name: a\n    permissions: { http: [api.example.com] }\n",
            "cases.yaml:3:27: cases[0].permissions.http[0]: `api.example.com` has no scheme",
        ),
        (
            "cases:\n  - name: a\n    cluster: [{ call: rollback team-a web, results: [{ ok: 1, failed: x }] }]\n",
            "cases.yaml:3:63: expected end of mapping after enum variant value",
        ),
        (
            "cases:\n  - name: a\n  - name: a\n",
            "cases.yaml:3:11: cases[1].name: a second case named `a`",
        ),
        (
            "cases:\n  - name: a\n    timeout: soon\n",
            "cases.yaml:3:14: cases[0].timeout:",
        ),
    ];
    for (yaml, want) in bad {
        let out = test_cases(&ws, yaml, &[plugin("echo").to_str().unwrap()]);
        assert_eq!(out.code, Some(2), "{yaml}\n{}", out.all());
        assert!(
            out.stderr.contains(want),
            "want `{want}` for:\n{yaml}\ngot:\n{}",
            out.all()
        );
        assert!(
            !out.stdout.contains('✓') && !out.stdout.contains('✗'),
            "{}",
            out.all()
        );
        // Refused before the plugin is even loaded.
        assert!(!out.stderr.contains("compiling"), "{}", out.all());
    }
}

#[test]
fn a_config_the_plugin_schema_rejects_is_refused_before_any_case_runs() {
    let ws = Workspace::new();
    let out = test_cases(
        &ws,
        "plugin: command\ncases:\n  - name: fine\n    with: { steps: [{ run: [true] }] }\n    exec: [{ run: [true], results: [{ code: 0 }] }]\n  - name: typo\n    with: { stepz: [] }\n",
        &[],
    );
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("cases.yaml:7:13: cases[1].with: Additional properties are not allowed ('stepz' was unexpected)"),
        "{}",
        out.all()
    );
    assert!(
        out.stderr
            .contains("`gantry plugins inspect command` shows its config schema"),
        "{}",
        out.all()
    );
    assert!(!out.stdout.contains("fine"), "{}", out.all());
}

#[test]
fn the_builtin_plugins_pass_their_case_files() {
    let ws = Workspace::new();
    for name in ["health-gate", "registry", "command", "backlog"] {
        let cases = repo().join("plugins").join(name).join("cases.yaml");
        let out = ws.gantry(&["plugins", "test", "--case", cases.to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "{name}:\n{}", out.all());
        let passed = out.stdout.lines().filter(|l| l.starts_with("✓ ")).count();
        assert!(passed >= 4, "{name}: only {passed} case(s):\n{}", out.all());
        assert!(!out.stdout.contains('✗'), "{name}:\n{}", out.all());
    }
}
