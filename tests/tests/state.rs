//! Host-owned state: the `state` interface (granted by key prefix, capped),
//! `gantry state`, a state directory no stage can reach, and plugins built
//! against the frozen 0.1 contract still running beside 0.2 ones.

use gantry_e2e::{Output, Workspace};

/// Run the hostile `attack` on `target` with `args`, granted `perms`, then a
/// benign stage that must succeed whatever the first one did.
fn hostile(ws: &Workspace, attack: &str, target: &str, args: &[&str], perms: &str) -> Output {
    let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    ws.run_beside_benign(&format!(
        "  - name: evil\n    uses: \"{{hostile}}\"\n    with: {{ attack: {attack}, target: \"{target}\", args: [{}] }}\n    permissions: {{ {perms} }}",
        args.join(", ")
    ))
}

fn ok_line(out: &Output) -> &str {
    let line = out.stage_line("evil");
    assert!(line.starts_with("✔ evil"), "{}", out.all());
    line
}

fn denied_line(out: &Output) -> &str {
    let line = out.stage_line("evil");
    assert!(
        line.starts_with("✘ evil") && line.contains("): denied: "),
        "{}",
        out.all()
    );
    assert_eq!(out.code, Some(1));
    line
}

#[test]
fn granted_state_persists_across_runs_and_gantry_state_shows_it() {
    let ws = Workspace::new();
    let grant = "state: [app/]";
    ok_line(&hostile(&ws, "state-set", "app/slot", &["blue"], grant));
    let out = hostile(&ws, "state-get", "app/slot", &[], grant);
    assert!(
        ok_line(&out).contains("state app/slot = blue"),
        "{}",
        out.all()
    );

    let list = ws.gantry(&["state", "list"]);
    assert_eq!(list.code, Some(0), "{}", list.all());
    assert!(list.stdout.contains("app/slot\t4 bytes"), "{}", list.stdout);
    let get = ws.gantry(&["state", "get", "app/slot"]);
    assert_eq!(get.stdout, "blue\n");

    // Compare-and-set only from the value it expects.
    let out = hostile(&ws, "state-cas", "app/slot", &["green", "red"], grant);
    assert!(
        ok_line(&out).contains("compare-and-set app/slot: false"),
        "{}",
        out.all()
    );
    let out = hostile(&ws, "state-cas", "app/slot", &["blue", "green"], grant);
    assert!(
        ok_line(&out).contains("compare-and-set app/slot: true"),
        "{}",
        out.all()
    );
    let out = hostile(&ws, "state-cas", "app/new", &["-", "one"], grant);
    assert!(
        ok_line(&out).contains("compare-and-set app/new: true"),
        "{}",
        out.all()
    );
    let out = hostile(&ws, "state-list", "app/", &[], grant);
    assert!(
        ok_line(&out).contains("keys: app/new,app/slot"),
        "{}",
        out.all()
    );

    let del = ws.gantry(&["state", "delete", "app/slot"]);
    assert_eq!(del.code, Some(0), "{}", del.all());
    let out = hostile(&ws, "state-get", "app/slot", &[], grant);
    assert!(
        ok_line(&out).contains("state app/slot is not set"),
        "{}",
        out.all()
    );
    let missing = ws.gantry(&["state", "get", "app/slot"]);
    assert_eq!(missing.code, Some(2));
    assert!(
        missing.stderr.contains("no state key `app/slot`"),
        "{}",
        missing.stderr
    );
}

#[test]
fn state_is_denied_unless_granted_and_the_grant_is_named() {
    let ws = Workspace::new();
    let out = hostile(
        &ws,
        "state-set",
        "docker-deploy/app",
        &["forged"],
        "workspace: write",
    );
    assert!(
        denied_line(&out).contains(
            "stage `evil` is not allowed to write state key `docker-deploy/app`: grant it with `stages[0].permissions.state: [docker-deploy/]`"
        ),
        "{}",
        out.all()
    );
    assert!(
        out.stdout
            .contains("denied: stage `evil` is not allowed to write state key `docker-deploy/app`"),
        "the user is told too: {}",
        out.stdout
    );
    // A grant for one prefix reaches nothing outside it, not even a key that
    // merely starts with the same letters.
    for key in ["docker-deploy/app", "appx/slot", "other"] {
        let out = hostile(&ws, "state-get", key, &[], "state: [app/]");
        assert!(
            denied_line(&out).contains(&format!("read state key `{key}`")),
            "{}",
            out.all()
        );
    }
    let out = hostile(&ws, "state-list", "", &[], "state: [app/]");
    assert_eq!(out.code, Some(1), "{}", out.all());
    let out = hostile(&ws, "state-get", "../escape", &[], "state: [app/]");
    assert!(
        out.stage_line("evil")
            .contains("must not start with `/` or have empty"),
        "{}",
        out.all()
    );
    let list = ws.gantry(&["state", "list"]);
    assert!(
        list.stdout.contains("no state"),
        "nothing was written: {}",
        list.stdout
    );
}

#[test]
fn values_and_key_counts_are_capped() {
    let ws = Workspace::new();
    let out = hostile(&ws, "state-set", "app/big", &["", "70000"], "state: [app/]");
    let line = out.stage_line("evil");
    assert!(
        line.starts_with("✘ evil")
            && line.contains(
                "a state value of 70000 bytes is more than the 64.0 KiB a value may hold"
            ),
        "{}",
        out.all()
    );
    ok_line(&hostile(
        &ws,
        "state-set",
        "app/big",
        &["", "65536"],
        "state: [app/]",
    ));
    let out = hostile(&ws, "state-fill", "app/many", &["1100"], "state: [app/]");
    assert!(
        out.stage_line("evil")
            .contains("already holds 1024 state keys, the most it may"),
        "{}",
        out.all()
    );
}

#[test]
fn the_state_directory_is_out_of_every_stage_s_reach() {
    let ws = Workspace::new();
    ok_line(&hostile(
        &ws,
        "state-set",
        "app/slot",
        &["blue"],
        "state: [app/]",
    ));
    let runs = ws
        .runs_dir()
        .expect("the run is recorded in the state directory");
    assert!(
        !runs.starts_with(ws.path()),
        "{} is outside the workspace",
        runs.display()
    );
    assert!(
        !ws.path().join(".gantry").exists(),
        "nothing host-owned in the workspace"
    );
    let root = ws.state_root().to_path_buf();
    let name = root.file_name().unwrap().to_str().unwrap();
    let grant = "workspace: write";
    for target in [
        root.join("workspaces").display().to_string(),
        format!("../{name}/workspaces"),
    ] {
        let out = hostile(&ws, "read", &target, &[], grant);
        assert!(
            out.stage_line("evil").starts_with("✘ evil"),
            "{}",
            out.all()
        );
    }
    let planted = format!("../{name}/planted");
    let out = hostile(&ws, "write-text", &planted, &["x"], grant);
    assert!(
        out.stage_line("evil").starts_with("✘ evil"),
        "{}",
        out.all()
    );
    assert!(!root.join("planted").exists());
    let get = ws.gantry(&["state", "get", "app/slot"]);
    assert_eq!(get.stdout, "blue\n", "the state is untouched");
}

#[test]
fn a_plugin_built_against_the_0_1_contract_still_runs() {
    let ws = Workspace::new();
    ws.manifest(
        r#"pipeline: old-and-new
stages:
  - name: new
    uses: "{echo}"
    with: { message: from-0.2 }
  - name: old
    uses: "{legacy}"
    needs: [new]
    with: { exec: true }
    permissions: { exec: [echo] }
  - name: after
    uses: "{echo}"
    needs: [old]
    with: { message: "${{ stages.old.outputs.contract }}" }
"#,
    );
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let old = out.outputs("old");
    assert_eq!(old["contract"], "0.1.0");
    assert_eq!(
        old["exec"], "from-0.1",
        "exec records crossed the 0.1 adapter"
    );
    assert!(
        old["upstream"]
            .as_str()
            .unwrap()
            .starts_with("new.message=from-0.2,"),
        "the 0.1 stage saw its upstream's outputs: {old}"
    );
    assert!(
        out.stderr
            .contains("legacy stage `old` on the 0.1 contract"),
        "{}",
        out.stderr
    );
    assert_eq!(out.outputs("after")["message"], "0.1.0");

    let inspect = ws.gantry(&[
        "plugins",
        "inspect",
        gantry_e2e::plugin("legacy").to_str().unwrap(),
    ]);
    assert!(
        inspect.stdout.contains("contract: gantry:pipeline@0.1.0"),
        "{}",
        inspect.stdout
    );
    assert!(
        inspect.stdout.contains("gantry:pipeline/log@0.1.0"),
        "{}",
        inspect.stdout
    );

    // Denials still name the grant for a 0.1 plugin.
    ws.manifest(
        "pipeline: old\nstages:\n  - name: old\n    uses: \"{legacy}\"\n    with: { exec: true }\n",
    );
    let out = ws.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stage_line("old")
            .contains("grant it with `stages[0].permissions.exec: [echo]`"),
        "{}",
        out.all()
    );
}
