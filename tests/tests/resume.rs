//! Crash safety: a run whose host is killed (SIGKILL) at any point resumes from
//! its journal without running any finished stage again; Ctrl-C stops a run
//! cleanly and it resumes too.

use gantry_e2e::Workspace;
use serde_json::Value;
use std::process::{Command, Stdio};

const CHAIN: &str = r#"pipeline: chain
stages:
  - name: first
    uses: "{echo}"
    with: { message: one, append: ran.txt, sleep_ms: 1200 }
    permissions: { workspace: write }
  - name: second
    uses: "{echo}"
    needs: [first]
    with: { message: "${{ stages.first.outputs.message }}-two", append: ran.txt, sleep_ms: 1200 }
    permissions: { workspace: write }
  - name: third
    uses: "{echo}"
    needs: [second]
    with: { message: "${{ stages.second.outputs.message }}-three", append: ran.txt, sleep_ms: 1200 }
    permissions: { workspace: write }
"#;

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn count(records: &[Value], event: &str, stage: &str) -> usize {
    records
        .iter()
        .filter(|r| r["event"] == event && r["stage"] == stage)
        .count()
}

fn runs_of(ws: &Workspace, stage: &str) -> usize {
    std::fs::read_to_string(ws.path().join("ran.txt"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == stage)
        .count()
}

/// Start `gantry run`, and kill it (SIGKILL: no chance to clean up) once its
/// journal shows stage `stage` started; returns the journal.
fn kill_once_started(ws: &Workspace, stage: &str) -> std::path::PathBuf {
    let mut child = ws
        .command(&["run", "pipeline.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = ws.wait_for_journal(&format!(
        "\"event\":\"stage-started\",\"stage\":\"{stage}\""
    ));
    child.kill().unwrap();
    child.wait().unwrap();
    journal
}

fn run_id(journal: &std::path::Path) -> String {
    journal
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Resume and check the run completed with each stage finished exactly once,
/// and that gantry said what it kept and what it started again (`says`).
fn resume_and_check(ws: &Workspace, journal: &std::path::Path, says: &[String]) -> Value {
    let out = ws.gantry(&["resume", &run_id(journal), "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    for text in says {
        assert!(
            out.stderr.contains(text.as_str()),
            "expected `{text}` in:\n{}",
            out.stderr
        );
    }
    let result: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(result["status"], "succeeded");
    let third = result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "third")
        .unwrap();
    assert_eq!(
        third["outputs"][0],
        serde_json::json!(["message", "one-two-three"]),
        "outputs flowed across the crash"
    );
    let recs = records(journal);
    for stage in ["first", "second", "third"] {
        assert_eq!(
            count(&recs, "stage-finished", stage),
            1,
            "{stage} finished once: {recs:#?}"
        );
    }
    assert!(recs.iter().any(|r| r["event"] == "run-resumed"));
    assert_eq!(recs.last().unwrap()["event"], "run-finished");
    assert_eq!(recs.last().unwrap()["success"], true);
    result
}

#[test]
fn a_killed_run_resumes_without_rerunning_finished_stages() {
    for (i, victim) in ["first", "second", "third"].into_iter().enumerate() {
        let ws = Workspace::new();
        ws.manifest(CHAIN);
        let journal = kill_once_started(&ws, victim);
        let before = records(&journal);
        assert_eq!(
            count(&before, "stage-finished", victim),
            0,
            "killed while {victim} ran"
        );
        let finished_before: Vec<&str> = ["first", "second", "third"][..i].to_vec();
        for s in &finished_before {
            assert_eq!(count(&before, "stage-finished", s), 1);
        }

        // What resume says: the finished stages with their recorded durations
        // (each sleeps 1.2 s), the one cut off by the kill.
        let mut says = vec![format!("starting again: {victim} (cut off after ")];
        if i > 0 {
            says.push(format!("kept {i} finished stage(s): first (succeeded, 1."));
            says.push("✔ first (1.".to_string());
        }
        resume_and_check(&ws, &journal, &says);
        // Side effects: finished stages ran once; the one killed mid-run may have
        // run twice (its completion was never recorded); later ones once.
        for s in &finished_before {
            assert_eq!(runs_of(&ws, s), 1, "{s} must not run again after resume");
        }
        assert!((1..=2).contains(&runs_of(&ws, victim)));
        for s in &["first", "second", "third"][i + 1..] {
            assert_eq!(runs_of(&ws, s), 1);
        }
    }
}

#[test]
fn ctrl_c_stops_the_run_and_records_it() {
    let ws = Workspace::new();
    ws.manifest(CHAIN);
    let child = ws
        .command(&["run", "pipeline.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let journal = ws.wait_for_journal("\"event\":\"stage-started\",\"stage\":\"second\"");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let recs = records(&journal);
    let cancelled = recs
        .iter()
        .find(|r| r["event"] == "run-cancelled")
        .expect("cancellation recorded");
    assert_eq!(cancelled["stages"], serde_json::json!(["second"]));
    assert_eq!(count(&recs, "stage-finished", "second"), 0);
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(journal.with_file_name("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["status"], "cancelled", "{summary}");
    resume_and_check(
        &ws,
        &journal,
        &["starting again: second (cancelled after ".to_string()],
    );
    assert_eq!(runs_of(&ws, "first"), 1);
}

#[test]
fn resume_refuses_a_changed_manifest_and_a_finished_run() {
    let ws = Workspace::new();
    ws.manifest("pipeline: p\nstages:\n  - name: a\n    uses: \"{noop}\"\n");
    let out = ws.gantry(&["run", "pipeline.yaml", "--output", "json"]);
    let id = serde_json::from_str::<Value>(&out.stdout).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let again = ws.gantry(&["resume", &id]);
    assert_eq!(again.code, Some(2));
    assert!(
        again.stderr.contains("already finished"),
        "{}",
        again.stderr
    );

    assert_eq!(ws.run().code, Some(0));
    // Simulate a crash by dropping the end of a journal, then edit the manifest.
    let journal = std::fs::read_dir(ws.runs_dir().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path().join("journal.jsonl"))
        .find(|j| !j.to_string_lossy().contains(&id))
        .unwrap();
    let text = std::fs::read_to_string(&journal).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("run-finished"))
        .collect();
    std::fs::write(&journal, kept.join("\n") + "\n").unwrap();
    ws.manifest("pipeline: p\nstages:\n  - name: b\n    uses: \"{noop}\"\n");
    let out = ws.gantry(&["resume", &run_id(&journal)]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("changed (or is gone) since run"),
        "{}",
        out.stderr
    );
}

/// Simulate a crash after the fact: drop the `run-finished` record of the
/// only run's journal (in the state directory), so that it can be resumed.
fn unfinish(ws: &Workspace) -> String {
    let journal = ws.only_journal().expect("one run");
    let text = std::fs::read_to_string(&journal).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("run-finished"))
        .collect();
    std::fs::write(&journal, kept.join("\n") + "\n").unwrap();
    run_id(&journal)
}

#[test]
fn resume_refuses_when_a_plugin_changed_and_says_how_to_start_fresh() {
    let ws = Workspace::new();
    ws.write(
        "plug.wasm",
        std::fs::read(gantry_e2e::plugin("echo")).unwrap(),
    );
    ws.manifest(
        "pipeline: p\nstages:\n  - name: a\n    uses: plug.wasm\n    with: { message: hi }\n",
    );
    assert_eq!(ws.run().code, Some(0));
    let recs = records(&ws.only_journal().unwrap());
    let digest = recs[0]["plugins"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{recs:?}");
    assert_eq!(
        recs[1]["plugin_digest"],
        digest.as_str(),
        "each stage records its plugin"
    );
    let id = unfinish(&ws);
    // Same manifest, other code behind the same path (a stage with
    // `workspace: write` could do this).
    ws.write(
        "plug.wasm",
        std::fs::read(gantry_e2e::plugin("noop")).unwrap(),
    );
    let out = ws.gantry(&["resume", &id]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr
            .contains("the plugin of `a` (plug.wasm) changed: ")
            && out
                .stderr
                .contains(&format!("{digest} when the run started")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("start a new run with `gantry run "),
        "{}",
        out.stderr
    );
    // Put it back and the same run resumes.
    ws.write(
        "plug.wasm",
        std::fs::read(gantry_e2e::plugin("echo")).unwrap(),
    );
    let out = ws.gantry(&["resume", &id]);
    assert_eq!(out.code, Some(0), "{}", out.all());
}

#[test]
fn a_stage_that_rewrites_the_manifest_cannot_widen_its_grants_on_resume() {
    let ws = Workspace::new();
    // The stage rewrites the manifest it runs from, granting itself more.
    ws.manifest(
        "pipeline: p\nstages:\n  - name: evil\n    uses: \"{hostile}\"\n    with: { attack: write-text, target: pipeline.yaml, args: [\"pipeline: p\\nstages:\\n  - name: evil\\n    uses: command\\n    permissions: { exec: [sh] }\\n\"] }\n    permissions: { workspace: write }\n",
    );
    assert_eq!(ws.run().code, Some(0));
    let id = unfinish(&ws);
    let out = ws.gantry(&["resume", &id]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("changed (or is gone) since run"),
        "{}",
        out.stderr
    );
}

/// A stage that forges a journal where runs used to be kept (with a planted
/// manifest granting more, and a fake `finished` record for a later stage)
/// changes nothing: resume reads only the host's journal, runs the later stage
/// for real, and never runs the planted manifest.
#[test]
fn a_journal_forged_in_the_workspace_is_ignored_by_resume() {
    use sha2::Digest;
    let ws = Workspace::new();
    let evil = ws.write(
        "evil.yaml",
        "pipeline: forge\nstages:\n  - name: last\n    uses: command\n    with: { steps: [{ run: [sh, -c, \"echo evil >> ran.txt\"] }] }\n    permissions: { exec: [sh] }\n",
    );
    let evil_sha = hex::encode(sha2::Sha256::digest(std::fs::read(&evil).unwrap()));
    let forged = format!(
        "{{\\\"event\\\":\\\"run-started\\\",\\\"run_id\\\":\\\"x\\\",\\\"pipeline\\\":\\\"forge\\\",\\\"environment\\\":\\\"default\\\",\\\"manifest\\\":\\\"{}\\\",\\\"manifest_sha256\\\":\\\"{evil_sha}\\\",\\\"commit\\\":null,\\\"ts_ms\\\":1}}\\n{{\\\"event\\\":\\\"stage-finished\\\",\\\"stage\\\":\\\"last\\\",\\\"status\\\":\\\"succeeded\\\",\\\"detail\\\":\\\"forged\\\",\\\"duration_ms\\\":1,\\\"outputs\\\":[[\\\"message\\\",\\\"FORGED\\\"]],\\\"artifacts\\\":[],\\\"denials\\\":[],\\\"ts_ms\\\":2}}\\n",
        evil.display()
    );
    ws.manifest(&format!(
        r#"pipeline: forge
stages:
  - name: forger
    uses: "{{hostile}}"
    with: {{ attack: write-text, target: ".gantry/runs/${{{{ run.id }}}}/journal.jsonl", args: ["{forged}"] }}
    permissions: {{ workspace: write }}
  - name: slow
    uses: "{{echo}}"
    needs: [forger]
    with: {{ message: slow, append: ran.txt, sleep_ms: 1500 }}
    permissions: {{ workspace: write }}
  - name: last
    uses: "{{echo}}"
    needs: [slow]
    with: {{ message: genuine, append: ran.txt }}
    permissions: {{ workspace: write }}
"#
    ));
    let journal = kill_once_started(&ws, "slow");
    let id = run_id(&journal);
    let planted = ws.path().join(format!(".gantry/runs/{id}/journal.jsonl"));
    assert!(
        std::fs::read_to_string(&planted)
            .unwrap()
            .contains("FORGED"),
        "the forger planted its journal"
    );
    let out = ws.gantry(&["resume", &id, "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("last")["message"], "genuine", "{}", out.stdout);
    assert_eq!(runs_of(&ws, "last"), 1, "the later stage really ran");
    assert_eq!(runs_of(&ws, "evil"), 0, "the planted manifest never ran");
    assert!(
        !std::fs::read_to_string(&journal)
            .unwrap()
            .contains("FORGED")
    );
}
