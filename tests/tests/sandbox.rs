//! Every capability is denied unless granted: each hostile plugin attack must end
//! its stage with a clear error, while the host keeps running and a benign stage
//! after it in the same invocation still succeeds.

use gantry_e2e::{HttpServer, Output, Workspace};

/// Run `stage` (YAML for one list item, named `evil`) followed by a benign stage.
fn contain(ws: &Workspace, stage: &str) -> Output {
    ws.manifest(&format!(
        "pipeline: sandbox\nstages:\n{stage}\n  - name: benign\n    uses: \"{{noop}}\"\n"
    ));
    let out = ws.run();
    assert!(
        out.succeeded("benign"),
        "the benign stage must still succeed:\n{}",
        out.all()
    );
    out
}

fn attack(ws: &Workspace, attack: &str, target: &str, extra: &str) -> Output {
    contain(
        ws,
        &format!(
            "  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: {attack}, target: \"{target}\" }}\n{extra}"
        ),
    )
}

/// A file outside the workspace that no stage may read.
fn outside_secret() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.txt");
    std::fs::write(&file, "TOP-SECRET-OUTSIDE").unwrap();
    (dir, file)
}

fn failed_with<'a>(out: &'a Output, status: &str, text: &str) -> &'a str {
    let line = out.stage_line("evil");
    assert!(
        line.starts_with("✘ evil"),
        "stage should have failed: {line}"
    );
    assert!(
        line.contains(&format!("): {status}: ")),
        "expected status `{status}`: {line}"
    );
    assert!(line.contains(text), "expected `{text}` in: {line}");
    assert_eq!(out.code, Some(1));
    line
}

#[test]
fn reading_outside_by_dotdot_fails() {
    let (dir, _) = outside_secret();
    let ws = Workspace::new();
    // From the workspace, up to the temp root, down into the other directory.
    let name = dir.path().file_name().unwrap().to_str().unwrap();
    let out = attack(&ws, "read", &format!("../{name}/secret.txt"), "");
    failed_with(&out, "failed", "cannot read ../");
    assert!(!out.all().contains("TOP-SECRET-OUTSIDE"));
}

#[test]
fn reading_by_absolute_path_fails() {
    let (_dir, file) = outside_secret();
    let ws = Workspace::new();
    let out = attack(&ws, "read", file.to_str().unwrap(), "");
    failed_with(&out, "failed", "No such file or directory");
    assert!(!out.all().contains("TOP-SECRET-OUTSIDE"));
}

#[test]
fn reading_through_a_planted_symlink_fails() {
    let (dir, file) = outside_secret();
    let ws = Workspace::new();
    std::os::unix::fs::symlink(&file, ws.path().join("escape")).unwrap();
    std::os::unix::fs::symlink(dir.path(), ws.path().join("escape-dir")).unwrap();
    let out = attack(&ws, "read", "escape", "");
    failed_with(
        &out,
        "failed",
        "cannot read escape: Operation not permitted",
    );
    let out = attack(&ws, "read", "escape-dir/secret.txt", "");
    failed_with(&out, "failed", "cannot read escape-dir/secret.txt");
    assert!(!out.all().contains("TOP-SECRET-OUTSIDE"));
}

#[test]
fn reading_inside_the_workspace_works() {
    let ws = Workspace::new();
    ws.write("data/in.txt", "inside-data");
    let out = attack(&ws, "read", "data/in.txt", "");
    assert!(
        out.stage_line("evil")
            .contains("read data/in.txt: inside-data"),
        "{}",
        out.all()
    );
    let out = attack(&ws, "read", "/workspace/data/in.txt", "");
    assert!(
        out.stage_line("evil").contains(": inside-data"),
        "{}",
        out.all()
    );
}

#[test]
fn writing_to_a_read_only_workspace_fails() {
    let ws = Workspace::new();
    let out = attack(&ws, "write", "pwned.txt", "");
    failed_with(
        &out,
        "failed",
        "cannot write pwned.txt: Operation not permitted",
    );
    assert!(!ws.path().join("pwned.txt").exists());
}

#[test]
fn writing_with_a_write_grant_works() {
    let ws = Workspace::new();
    let out = attack(
        &ws,
        "write",
        "allowed.txt",
        "    permissions: { workspace: write }\n",
    );
    assert!(out.succeeded("evil"), "{}", out.all());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("allowed.txt")).unwrap(),
        "pwned"
    );
}

#[test]
fn http_to_a_host_not_granted_is_denied_before_connecting() {
    let server = HttpServer::start("hello");
    let ws = Workspace::new();
    let origin = format!("http://127.0.0.1:{}", server.port);
    let out = attack(&ws, "http", &format!("{origin}/"), "");
    failed_with(&out, "denied", "HttpRequestDenied");
    assert!(
        out.stdout.contains(&format!(
            "denied: stage `evil` is not allowed to send HTTP requests to {origin}: grant it with `stages[0].permissions.http: [\"{origin}\"]`"
        )),
        "{}",
        out.stdout
    );
    assert_eq!(server.hits(), 0, "no connection may be made");
}

#[test]
fn http_to_a_granted_origin_works_and_the_port_matters() {
    let server = HttpServer::start("hello from the test server");
    let ws = Workspace::new();
    let granted = format!(
        "    permissions: {{ http: [\"http://127.0.0.1:{}\"] }}\n",
        server.port
    );
    let out = attack(
        &ws,
        "http",
        &format!("http://127.0.0.1:{}/x", server.port),
        &granted,
    );
    assert!(
        out.stage_line("evil")
            .contains("200 hello from the test server"),
        "{}",
        out.all()
    );
    assert_eq!(server.hits(), 1);

    let other = HttpServer::start("other");
    let out = attack(
        &ws,
        "http",
        &format!("http://127.0.0.1:{}/", other.port),
        &granted,
    );
    failed_with(&out, "denied", "HttpRequestDenied");
    assert_eq!(other.hits(), 0);
    // `localhost` is not `127.0.0.1`: origins match literally.
    let out = attack(
        &ws,
        "http",
        &format!("http://localhost:{}/", server.port),
        &granted,
    );
    failed_with(&out, "denied", "HttpRequestDenied");
    assert_eq!(server.hits(), 1);
}

#[test]
fn sockets_are_denied() {
    let server = HttpServer::start("x");
    let ws = Workspace::new();
    let out = attack(&ws, "socket", &format!("127.0.0.1:{}", server.port), "");
    failed_with(&out, "denied", "cannot connect to 127.0.0.1");
    assert_eq!(server.hits(), 0);
    // The user is told too, with where outgoing HTTP is granted instead.
    assert!(
        out.stdout.contains(
            "denied: stage `evil` is not allowed to open a network socket: sockets are never granted; for outgoing HTTP, grant the origin with `stages[0].permissions.http`"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn an_infinite_loop_is_stopped_by_the_cpu_budget() {
    let ws = Workspace::new();
    let out = attack(&ws, "loop", "", "    limits: { cpu: 500ms }\n");
    failed_with(
        &out,
        "stopped",
        "exceeded its CPU budget of 500ms in WebAssembly (raise `limits.cpu`)",
    );
}

#[test]
fn a_stage_blocked_in_the_host_is_stopped_by_its_timeout() {
    let ws = Workspace::new();
    let out = attack(&ws, "sleep", "3600", "    timeout: 1s\n");
    failed_with(
        &out,
        "timeout",
        "did not finish within its timeout of 1s (raise `timeout`)",
    );
}

#[test]
fn a_memory_bomb_is_stopped_by_the_memory_cap() {
    let ws = Workspace::new();
    let out = attack(&ws, "memory", "", "    limits: { memory: 64MiB }\n");
    failed_with(
        &out,
        "stopped",
        "exceeded its memory limit of 64.0 MiB (raise `limits.memory`)",
    );
}

#[test]
fn unbounded_recursion_is_stopped() {
    let ws = Workspace::new();
    // Deep frames in wasm locals: the engine's own stack limit.
    let out = attack(&ws, "deep-recursion", "", "");
    failed_with(
        &out,
        "stopped",
        "overflowed its call stack (unbounded recursion?)",
    );
    // Big frames on the guest's shadow stack in linear memory.
    let out = attack(&ws, "recursion", "", "");
    failed_with(
        &out,
        "stopped",
        "calls deep (unbounded recursion overflowing the guest's stack?)",
    );
}

#[test]
fn a_log_flood_is_stopped_by_the_log_cap() {
    let ws = Workspace::new();
    let out = attack(&ws, "log-flood", "", "    limits: { log: 64KiB }\n");
    failed_with(
        &out,
        "stopped",
        "wrote more than its log cap of 64.0 KiB (raise `limits.log`)",
    );
    let out = attack(&ws, "stdout-flood", "", "    limits: { log: 64KiB }\n");
    failed_with(&out, "stopped", "wrote more than its log cap of 64.0 KiB");
    assert!(
        out.stdout.len() < 256 * 1024,
        "the flood must not reach the terminal: {} bytes",
        out.stdout.len()
    );
}

#[test]
fn a_stage_that_ignores_write_errors_past_its_log_cap_is_still_stopped() {
    let ws = Workspace::new();
    let out = attack(&ws, "stdout-flood-ignoring-errors", "", "    limits: { log: 64KiB }\n");
    failed_with(&out, "stopped", "wrote more than its log cap of 64.0 KiB (raise `limits.log`)");
}

#[test]
fn telemetry_is_limited_by_size_and_count() {
    let ws = Workspace::new();
    // 600 events of 1 MiB each: stopped at the default 4 MiB.
    let out = attack(&ws, "telemetry-flood", "", "");
    failed_with(
        &out,
        "stopped",
        "sent more telemetry than its limit of 4.0 MiB or 10000 metrics and events (raise `limits.telemetry` or `limits.events`)",
    );
    // Small events, but more than `limits.events`.
    let out = contain(
        &ws,
        "  - name: evil\n    uses: \"{hostile}\"\n    with: { attack: telemetry-flood, args: [\"50\", \"10\"] }\n    limits: { events: 20 }\n",
    );
    failed_with(&out, "stopped", "or 20 metrics and events");
}

#[test]
fn summaries_outputs_and_artifacts_are_limited_by_size() {
    let ws = Workspace::new();
    let out = attack(&ws, "big-summary", "1048576", "");
    failed_with(
        &out,
        "stopped",
        "returned a summary of 1.0 MiB, more than its limit of 64.0 KiB (raise `limits.summary`)",
    );
    assert!(!out.all().contains(&"s".repeat(70_000)), "the summary is not printed");
    let out = attack(&ws, "big-outputs", "2097152", "");
    failed_with(&out, "stopped", "more than its limit of 1.0 MiB (raise `limits.outputs`)");
    let out = attack(&ws, "big-artifacts", "4096", "    limits: { artifacts: 1KiB }\n");
    failed_with(&out, "stopped", "more than its limit of 1.0 KiB (raise `limits.artifacts`)");
    // Within a raised limit the same summary is fine.
    let out = contain(
        &ws,
        "  - name: evil\n    uses: \"{hostile}\"\n    with: { attack: big-summary, target: \"100000\" }\n    limits: { summary: 128KiB }\n",
    );
    assert!(out.succeeded("evil"), "{}", out.all());
}

#[test]
fn engine_build_paths_are_checked_before_the_filesystem_is_touched() {
    let ws = Workspace::new();
    let grant = "    permissions: { engine: true }\n";
    // A Dockerfile outside the context is refused as text, whether it exists or not.
    for dockerfile in ["../../../../etc/passwd", "../../../../no/such/file", "/etc/passwd"] {
        let out = attack(&ws, "engine-build", dockerfile, grant);
        failed_with(
            &out,
            "failed",
            &format!("dockerfile `{dockerfile}` must be a relative path inside the workspace"),
        );
    }
    // A planted link as the context gets one answer, whether its target exists or not.
    std::os::unix::fs::symlink("/etc", ws.path().join("to-etc")).unwrap();
    std::os::unix::fs::symlink("/no/such/dir", ws.path().join("to-nowhere")).unwrap();
    let mut answers = vec![];
    for ctx in ["to-etc", "to-nowhere"] {
        let out = contain(
            &ws,
            &format!(
                "  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: engine-build, target: Dockerfile, args: [{ctx}] }}\n{grant}"
            ),
        );
        let line = failed_with(&out, "failed", "leads outside the workspace").to_string();
        answers.push(line.replace(ctx, "CTX").split("): ").nth(1).unwrap().to_string());
    }
    assert_eq!(answers[0], answers[1], "the answers must not tell the two apart");
}

#[test]
fn an_artifact_outside_the_workspace_is_denied() {
    let ws = Workspace::new();
    for path in ["../outside.tar", "/etc/passwd", "a/../../b"] {
        let out = attack(&ws, "artifact-outside", path, "");
        failed_with(
            &out,
            "denied",
            &format!("returned artifact `escape` with path `{path}` outside the workspace"),
        );
    }
}

#[test]
fn a_describe_that_loops_is_stopped_with_its_budget_named() {
    let ws = Workspace::new();
    ws.manifest("pipeline: p\nstages:\n  - name: slow\n    uses: \"{describe-loop}\"\n");
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("describe() used up the CPU budget of 5s that describe() runs under"),
        "{}",
        out.stderr
    );
    assert!(!out.all().contains("backtrace"), "no raw backtrace without --verbose: {}", out.all());
    let verbose = ws.gantry(&["validate", "pipeline.yaml", "--verbose"]);
    assert!(verbose.all().contains("backtrace"), "--verbose keeps it: {}", verbose.all());
}

#[test]
fn exec_of_a_program_not_granted_is_denied() {
    let ws = Workspace::new();
    let out = attack(&ws, "exec", "sh", "");
    failed_with(
        &out,
        "denied",
        "stage `evil` is not allowed to run `sh`: grant it with `stages[0].permissions.exec: [sh]`",
    );
    assert!(!out.stdout.contains("pwned"));
}

#[test]
fn exec_runs_granted_programs_with_a_cleared_environment() {
    let ws = Workspace::new()
        .env("GANTRY_TEST_VISIBLE", "seen")
        .env("GANTRY_TEST_HIDDEN", "unseen");
    let out = contain(
        &ws,
        "  - name: evil\n    uses: \"{hostile}\"\n    with: { attack: exec, target: sh, args: [-c, env] }\n    permissions: { exec: [sh], env: [GANTRY_TEST_VISIBLE] }\n",
    );
    let line = out.stage_line("evil");
    assert!(line.starts_with("✔"), "{}", out.all());
    assert!(line.contains("exit Some(0)"), "{line}");
    assert!(
        out.stdout.contains("GANTRY_TEST_VISIBLE=seen"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("PATH="), "{}", out.stdout);
    assert!(!out.stdout.contains("GANTRY_TEST_HIDDEN"), "{}", out.stdout);
    assert!(!out.stdout.contains("HOME="), "{}", out.stdout);
}

#[test]
fn exec_cannot_leave_the_workspace_by_cwd() {
    let ws = Workspace::new();
    std::os::unix::fs::symlink("/", ws.path().join("root-link")).unwrap();
    for cwd in ["..", "/tmp", "root-link"] {
        let out = contain(
            &ws,
            &format!(
                "  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: exec, target: sh, cwd: \"{cwd}\" }}\n    permissions: {{ exec: [sh] }}\n"
            ),
        );
        let line = failed_with(&out, "failed", "cwd");
        assert!(
            line.contains("inside the workspace") || line.contains("outside the workspace"),
            "{line}"
        );
    }
}

#[test]
fn a_secret_not_granted_is_denied_and_never_shown() {
    let ws = Workspace::new().env("GANTRY_TEST_TOKEN", "hunter2-very-secret");
    ws.manifest(
        "pipeline: sandbox\nsecrets:\n  token: { env: GANTRY_TEST_TOKEN }\nstages:\n  - name: evil\n    uses: \"{hostile}\"\n    with: { attack: secret, target: token }\n  - name: benign\n    uses: \"{noop}\"\n",
    );
    let out = ws.run();
    assert!(out.succeeded("benign"));
    failed_with(
        &out,
        "denied",
        "stage `evil` is not allowed to read secret `token`: grant it with `stages[0].permissions.secrets: [token]`",
    );
    assert!(!out.all().contains("hunter2"));
}

#[test]
fn host_environment_variables_are_invisible_unless_granted() {
    let ws = Workspace::new().env("GANTRY_TEST_HIDDEN", "unseen-value");
    let out = attack(&ws, "env", "GANTRY_TEST_HIDDEN", "");
    failed_with(&out, "denied", "environment variable GANTRY_TEST_HIDDEN");
    assert!(!out.all().contains("unseen-value"));
    let out = attack(
        &ws,
        "env",
        "GANTRY_TEST_HIDDEN",
        "    permissions: { env: [GANTRY_TEST_HIDDEN] }\n",
    );
    assert!(
        out.stage_line("evil")
            .contains("GANTRY_TEST_HIDDEN=unseen-value"),
        "{}",
        out.all()
    );
}

#[test]
fn the_container_engine_is_denied_unless_granted() {
    let ws = Workspace::new();
    let out = attack(&ws, "engine", "busybox", "");
    failed_with(
        &out,
        "denied",
        "grant it with `stages[0].permissions.engine: true`",
    );
    // Granted, the call reaches the engine (a registry that is not there: the
    // pull fails, naming the reference; with no engine at all it is
    // `unavailable`, a transient error).
    let out = attack(
        &ws,
        "engine",
        "127.0.0.1:1/gantry-none:1",
        "    permissions: { engine: true }\n",
    );
    let line = out.stage_line("evil");
    assert!(
        line.contains("pulling `127.0.0.1:1/gantry-none:1` failed")
            || line.contains("transient: cannot reach the Docker engine"),
        "{line}"
    );
}

#[test]
fn the_cluster_is_denied_outside_granted_namespaces() {
    let ws = Workspace::new();
    let out = attack(
        &ws,
        "cluster",
        "kube-system",
        "    permissions: { cluster: { namespaces: [apps] } }\n",
    );
    failed_with(
        &out,
        "denied",
        "grant it with `stages[0].permissions.cluster: { namespaces: [kube-system] }`",
    );
    let out = attack(
        &ws,
        "cluster",
        "apps",
        "    permissions: { cluster: { namespaces: [apps] } }\n",
    );
    // Granted, the call reaches the host, which has no cluster for this
    // environment and says how to name one.
    failed_with(
        &out,
        "transient",
        "environment `default` names no cluster: add `cluster: { kubeconfig: <path>, context: <name> }`",
    );
}

/// Links a stage plants where the host once kept its run records, or where
/// docker-deploy kept its live slot, lead outside the workspace: the host writes
/// none of its files through them (they live in the state directory now, and
/// are opened without following links).
#[test]
fn links_planted_where_host_records_were_lead_nowhere() {
    let outside = tempfile::tempdir().unwrap();
    let name = outside.path().file_name().unwrap().to_str().unwrap().to_string();
    let ws = Workspace::new();
    // `.gantry/runs/<id>/x` is four levels below the workspace's parent.
    let run = ".gantry/runs/${{ run.id }}";
    let links = [
        format!("{run}/summary.json=../../../../{name}/summary"),
        format!("{run}/journal.jsonl=../../../../{name}/journal"),
        format!("{run}/logs/benign.log=../../../../../{name}/log"),
        format!(".gantry/deploy/app.json=../../../{name}/deploy"),
        format!(".gantry/state=../../{name}/state"),
    ];
    let args: Vec<String> = links.iter().map(|l| format!("\"{l}\"")).collect();
    let out = contain(
        &ws,
        &format!(
            "  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: symlinks, args: [{}] }}\n    permissions: {{ workspace: write }}\n",
            args.join(", ")
        ),
    );
    assert!(out.stage_line("evil").contains("planted 5 link(s)"), "{}", out.all());
    assert!(
        std::fs::symlink_metadata(ws.path().join(".gantry/deploy/app.json"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the links were planted"
    );
    let written: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(written.is_empty(), "gantry wrote outside the workspace: {written:?}");
    // The run's records are where the host keeps them, as regular files.
    let runs = ws.runs_dir().unwrap();
    let run_dir = std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path();
    for file in ["summary.json", "journal.jsonl", "logs/benign.log"] {
        let meta = std::fs::symlink_metadata(run_dir.join(file)).unwrap();
        assert!(meta.file_type().is_file(), "{file}");
    }
    // And `gantry logs` reads the real log, not the planted link.
    let id = run_dir.file_name().unwrap().to_str().unwrap();
    let logs = ws.gantry(&["logs", id, "benign"]);
    assert_eq!(logs.code, Some(0), "{}", logs.all());
}

/// A run directory forged in the workspace (where runs used to live) is not a
/// run: `runs`, `logs` and `resume` never look there.
#[test]
fn a_run_forged_in_the_workspace_is_not_a_run() {
    let ws = Workspace::new();
    ws.manifest("pipeline: p\nstages:\n  - name: a\n    uses: \"{noop}\"\n");
    assert_eq!(ws.run().code, Some(0));
    ws.write(
        ".gantry/runs/1-forged/journal.jsonl",
        format!(
            "{{\"event\":\"run-started\",\"run_id\":\"1-forged\",\"pipeline\":\"p\",\"environment\":\"default\",\"manifest\":\"{}\",\"manifest_sha256\":\"00\",\"commit\":null,\"ts_ms\":1}}\n",
            ws.path().join("pipeline.yaml").display()
        ),
    );
    ws.write(".gantry/runs/1-forged/logs/a.log", "1 forged log\n");
    let runs = ws.gantry(&["runs"]);
    assert_eq!(runs.code, Some(0), "{}", runs.all());
    assert_eq!(runs.stdout.lines().count(), 1, "only the real run: {}", runs.stdout);
    assert!(!runs.stdout.contains("1-forged"), "{}", runs.stdout);
    for args in [["resume", "1-forged"], ["logs", "1-forged"]] {
        let out = ws.gantry(&args);
        assert_eq!(out.code, Some(2), "{}", out.all());
        assert!(out.stderr.contains("no run `1-forged`"), "{}", out.stderr);
    }
}
