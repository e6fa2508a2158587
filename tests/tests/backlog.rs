//! The `backlog` stage against local stand-ins of Azure Boards and GitHub
//! Issues that enforce the documented protocol (tests/src/boards.rs,
//! tests/src/github_issues.rs), and `run.previous-commit`, the start of the
//! range of commits a deployment delivers.

use gantry_e2e::boards::Boards;
use gantry_e2e::github_issues::GithubIssues;
use gantry_e2e::{Output, Workspace};
use serde_json::Value;
use std::process::Command;

const PAT: &str = "pat-s3cr3t-0123456789abcdefghijklmnopqrstuvwxyz";
const TOKEN: &str = "ghp_t0ken0123456789abcdefghijklmnopqrstuv";

/// Deploy (stands for the real thing), tell the backlog, then a smoke test
/// that fails until the workspace has a file `ok`: a deployment that fails
/// after the backlog stage ran, to be run again.
const BOARDS: &str = r#"pipeline: shop
secrets:
  boards-pat: { env: BOARDS_PAT }
stages:
  - name: backlog
    uses: backlog
    with:
      provider: azure-boards
      commit: ${{ run.commit }}
      previous-commit: ${{ run.previous-commit }}
      image: "registry.example/shop@sha256:5e1f"
      run-url: "https://ci.example/runs/${{ run.id }}"
      max-wait: 30
      azure-boards:
        organization: contoso
        project: Shop Web
        token-secret: boards-pat
        endpoint: "{boards}"
        commit-url: "https://git.example/shop/commit/{commit}"
    permissions:
      exec: [git]
      http: ["{boards}"]
      secrets: [boards-pat]
  - name: smoke
    uses: command
    needs: [backlog]
    with:
      steps: [{ name: smoke, run: [test, -f, ok] }]
    permissions:
      exec: [test]
telemetry:
  - uses: file
    with: { path: ".gantry/telemetry/${{ run.id }}.jsonl" }
    permissions: { workspace: write }
"#;

fn gantry(ws: &Workspace, args: &[&str]) -> Output {
    ws.gantry_without_ci(args)
}

fn git(ws: &Workspace, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A commit with `message` (and a change, so each commit differs); its sha.
fn commit(ws: &Workspace, message: &str) -> String {
    let n = std::fs::read_dir(ws.path()).unwrap().count();
    ws.write(&format!("change-{n}.txt"), message);
    git(ws, &["add", "-A", "."]);
    git(ws, &["commit", "-q", "-m", message]);
    git(ws, &["rev-parse", "HEAD"])
}

/// A git workspace on `main` with `manifest` committed, its url
/// placeholders filled in.
fn workspace(manifest: &str, fill: &[(&str, &str)]) -> Workspace {
    let ws = Workspace::new()
        .env("BOARDS_PAT", PAT)
        .env("GH_TOKEN", TOKEN);
    let mut text = manifest.to_string();
    for (k, v) in fill {
        text = text.replace(k, v);
    }
    ws.manifest(&text);
    git(&ws, &["init", "-q", "-b", "main"]);
    ws.write(".gitignore", ".gantry/\nok\n");
    ws
}

fn run(ws: &Workspace) -> Output {
    gantry(ws, &["run", "pipeline.yaml", "--output", "json"])
}

fn ops(patch: &Value) -> Vec<(String, String)> {
    patch
        .as_array()
        .unwrap()
        .iter()
        .map(|op| {
            (
                op["op"].as_str().unwrap().to_string(),
                op["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn patch_of(boards: &Boards, id: u32) -> Value {
    let all: Vec<Value> = boards
        .patches()
        .into_iter()
        .filter(|(i, _)| *i == id)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        all.len(),
        1,
        "work item {id} must be patched exactly once: {all:?}"
    );
    all.into_iter().next().unwrap()
}

fn link_urls(patch: &Value) -> Vec<String> {
    patch
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| op["path"] == "/relations/-")
        .map(|op| op["value"]["url"].as_str().unwrap().to_string())
        .collect()
}

/// Everything gantry wrote about the workspace's runs: journals, logs,
/// summaries, telemetry.
fn everything_written(ws: &Workspace) -> String {
    let mut text = String::new();
    for root in [ws.state_root(), &ws.path().join(".gantry")] {
        for entry in walk(root) {
            text.push_str(&String::from_utf8_lossy(
                &std::fs::read(entry).unwrap_or_default(),
            ));
        }
    }
    text
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

#[test]
fn azure_boards_items_get_the_documented_updates_once_per_deployment() {
    let boards = Boards::start(PAT);
    for id in 1..=5 {
        boards.add_item(id, "User Story", &format!("story {id}"), "Active");
    }
    let ws = workspace(BOARDS, &[("{boards}", &boards.url())]);
    let c0 = commit(&ws, "Initial commit");
    ws.write("ok", "");
    let first = run(&ws);
    assert_eq!(first.code, Some(0), "{}", first.all());
    assert!(boards.patches().is_empty(), "no mention, nothing written");
    std::fs::remove_file(ws.path().join("ok")).unwrap();

    let c1 = commit(&ws, "Add search AB#1");
    let c2 = commit(&ws, "Fixes AB#2, AB#3");
    let c3 = commit(&ws, "Fixes AB#4, Fixes AB#5");
    let c4 = commit(&ws, "Tidy up the README");
    // Someone edits item 2 between our read and our write; the service is
    // busy for the first request.
    boards.edit_before_next_patch(2);
    boards.throttle_next(1, 2);
    let second = run(&ws);
    assert_ne!(
        second.code,
        Some(0),
        "the smoke test fails: {}",
        second.all()
    );
    assert!(
        second.all().contains(&format!("4 commit(s) since {c0}")),
        "{}",
        second.all()
    );
    let out = second.outputs("backlog");
    assert_eq!(out["updated"], "AB#1,AB#2,AB#3,AB#4,AB#5", "{out}");
    assert_eq!(out["transitioned"], "AB#2,AB#4,AB#5", "{out}");
    assert_eq!(out["failed"], "", "{out}");

    // The exact updates: one patch per item, each guarded by the rev it read.
    let run_id = serde_json::from_str::<Value>(&second.stdout).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let commit_url = |c: &str| format!("https://git.example/shop/commit/{c}");
    let run_url = format!("https://ci.example/runs/{run_id}");
    let expect = [
        (1, &c1, false),
        (2, &c2, true),
        (3, &c2, false),
        (4, &c3, true),
        (5, &c3, true),
    ];
    for (id, mentioned_in, resolves) in expect {
        let patch = patch_of(&boards, id);
        let mut want = vec![
            ("test".to_string(), "/rev".to_string()),
            ("add".into(), "/fields/System.History".into()),
            ("add".into(), "/relations/-".into()),
            ("add".into(), "/relations/-".into()),
        ];
        if resolves {
            want.push(("add".into(), "/fields/System.State".into()));
        }
        assert_eq!(ops(&patch), want, "work item {id}: {patch}");
        assert_eq!(
            link_urls(&patch),
            vec![commit_url(mentioned_in), run_url.clone()],
            "item {id}"
        );
        let history = patch[1]["value"].as_str().unwrap();
        assert!(history.contains("Deployed to <b>default</b>"), "{history}");
        assert!(
            history.contains(&c4[..12]),
            "the deployed commit: {history}"
        );
        assert!(
            history.contains("registry.example/shop@sha256:5e1f"),
            "{history}"
        );
        assert!(history.contains(&run_url), "{history}");
        let item = boards.item(id);
        let state = if resolves { "Resolved" } else { "Active" };
        assert_eq!(item["fields"]["System.State"], state, "item {id}: {item}");
        assert_eq!(boards.history(id).len(), 1, "item {id}");
    }
    // AB#2: its first write met a stale rev (412), was re-read and redone.
    let item2: Vec<(String, u16)> = boards
        .requests()
        .iter()
        .filter(|r| r.path.contains("/workitems/2?") && r.method == "PATCH")
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(item2, vec![("PATCH".into(), 412), ("PATCH".into(), 200)]);
    assert_eq!(
        patch_of(&boards, 2)[0]["value"],
        2,
        "the patch that landed tested the fresh rev"
    );
    assert_eq!(
        boards.item(2)["rev"],
        3,
        "the service's own edit, then ours"
    );
    // The throttled request was retried after the Retry-After it was given.
    let throttled = boards.throttled();
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    let waited = throttled[0].waited().expect("the client came back");
    assert!(
        waited >= throttled[0].retry_after,
        "came back after {waited:?}"
    );

    // A telemetry event per item.
    let telemetry = everything_written(&ws);
    let events = telemetry.matches("backlog.item").count();
    assert!(events >= 5, "one event per item, got {events}");

    // The deployment failed after the backlog stage; it is run again: the
    // range is the same (nothing succeeded since c0), and nothing is written twice.
    let patches = boards.patches().len();
    let requests = boards.requests().len();
    ws.write("ok", "");
    let third = run(&ws);
    assert_eq!(third.code, Some(0), "{}", third.all());
    assert!(
        third.all().contains(&format!("4 commit(s) since {c0}")),
        "{}",
        third.all()
    );
    assert_eq!(
        boards.patches().len(),
        patches,
        "a second run of the deployment writes nothing"
    );
    let writes_after: Vec<_> = boards.requests()[requests..]
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes_after.is_empty(), "{writes_after:?}");
    assert_eq!(
        third.outputs("backlog")["already-recorded"],
        "AB#1,AB#2,AB#3,AB#4,AB#5"
    );

    // The PAT is nowhere but in the Authorization header.
    for out in [&first, &second, &third] {
        assert!(!out.all().contains(PAT), "the PAT was printed");
    }
    assert!(
        !everything_written(&ws).contains(PAT),
        "the PAT was written to a run record"
    );
    for r in boards.requests() {
        assert!(
            !r.path.contains(PAT) && !r.body.contains(PAT),
            "{} {}",
            r.method,
            r.path
        );
    }
}

#[test]
fn an_invalid_transition_is_reported_and_the_other_items_still_update() {
    let boards = Boards::start(PAT);
    boards.add_item(1, "Bug", "fine", "Active");
    boards.add_item(2, "Bug", "never started", "New");
    boards.add_item(3, "Bug", "closed long ago", "Closed");
    let ws = workspace(BOARDS, &[("{boards}", &boards.url())]);
    ws.write("ok", "");
    commit(&ws, "Fixes AB#1, Fixes AB#2, Fixes AB#3");
    let out = run(&ws);
    assert_eq!(
        out.code,
        Some(0),
        "the deployment happened; the stage reports: {}",
        out.all()
    );
    let o = out.outputs("backlog");
    assert_eq!(o["transitioned"], "AB#1", "{o}");
    assert_eq!(o["failed"], "AB#2,AB#3", "{o}");
    assert_eq!(
        o["updated"], "AB#1,AB#2,AB#3",
        "history and links still land: {o}"
    );
    assert!(
        out.all().contains("TF401320"),
        "the service's reason is shown: {}",
        out.all()
    );
    assert!(
        out.all()
            .contains("cannot move it from `New` to `Resolved`"),
        "{}",
        out.all()
    );
    assert_eq!(boards.item(1)["fields"]["System.State"], "Resolved");
    assert_eq!(boards.item(2)["fields"]["System.State"], "New");
    assert_eq!(boards.item(3)["fields"]["System.State"], "Closed");
    for id in 1..=3 {
        assert_eq!(boards.history(id).len(), 1, "item {id}");
    }
}

#[test]
fn a_pat_the_service_refuses_fails_the_stage_in_words_and_writes_nothing() {
    let boards = Boards::start("the-right-pat");
    boards.add_item(1, "Bug", "b", "Active");
    let ws = workspace(BOARDS, &[("{boards}", &boards.url())]);
    ws.write("ok", "");
    commit(&ws, "Fixes AB#1");
    let out = run(&ws);
    assert_ne!(out.code, Some(0));
    let line = out.stage_line("backlog");
    assert!(line.starts_with('✘'), "{line}");
    assert!(
        out.all()
            .contains("did not accept the PAT in secret `boards-pat` (HTTP 401)"),
        "{}",
        out.all()
    );
    assert!(!out.all().contains(PAT));
    assert!(boards.patches().is_empty());
}

#[test]
fn every_capability_the_stage_uses_is_denied_unless_granted() {
    let boards = Boards::start(PAT);
    boards.add_item(1, "Bug", "b", "Active");
    // No http grant: nothing reaches the service.
    let no_http = BOARDS.replace("      http: [\"{boards}\"]\n", "");
    let ws = workspace(&no_http, &[("{boards}", &boards.url())]);
    ws.write("ok", "");
    commit(&ws, "Fixes AB#1");
    let out = run(&ws);
    assert!(out.stage_line("backlog").starts_with('✘'), "{}", out.all());
    assert!(
        out.all().contains("permissions.http"),
        "the denial names the grant: {}",
        out.all()
    );
    assert!(boards.requests().is_empty(), "{:?}", boards.requests());

    // No git: the stage says how to grant it, or how to do without.
    let no_git = BOARDS.replace("      exec: [git]\n", "");
    let ws = workspace(&no_git, &[("{boards}", &boards.url())]);
    ws.write("ok", "");
    commit(&ws, "Fixes AB#1");
    let out = run(&ws);
    assert!(out.stage_line("backlog").starts_with('✘'), "{}", out.all());
    assert!(out.all().contains("grant `exec: [git]`"), "{}", out.all());
    assert!(boards.requests().is_empty());

    // No secret grant: the PAT is not read.
    let no_secret = BOARDS.replace("      secrets: [boards-pat]\n", "");
    let ws = workspace(&no_secret, &[("{boards}", &boards.url())]);
    ws.write("ok", "");
    commit(&ws, "Fixes AB#1");
    let out = run(&ws);
    assert!(out.stage_line("backlog").starts_with('✘'), "{}", out.all());
    assert!(out.all().contains("permissions.secrets"), "{}", out.all());
    assert!(boards.requests().is_empty());
}

#[test]
fn a_dry_run_prints_the_patches_and_sends_nothing() {
    let boards = Boards::start(PAT);
    let dry = BOARDS
        .replace(
            "      max-wait: 30\n",
            "      max-wait: 30\n      dry-run: true\n",
        )
        .replace("      secrets: [boards-pat]\n", "");
    let ws = workspace(&dry, &[("{boards}", &boards.url())]);
    ws.write("ok", "");
    commit(&ws, "Fixes AB#7, AB#8");
    let out = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("backlog")["planned"], "AB#7,AB#8");
    let all = out.all();
    assert!(
        all.contains("/Shop%20Web/_apis/wit/workitems/7?api-version=7.1"),
        "{all}"
    );
    assert!(
        all.contains("\"/fields/System.State\""),
        "AB#7 would be resolved: {all}"
    );
    assert!(boards.requests().is_empty());
    // The messages passed in instead of git: no exec grant needed.
    let given = dry
        .replace(
            "      previous-commit: ${{ run.previous-commit }}\n",
            "      messages: ${{ run.commit-messages }}\n",
        )
        .replace("      exec: [git]\n", "");
    let ws = workspace(&given, &[("{boards}", &boards.url())]);
    ws.write("ok", "");
    commit(&ws, "Fixes AB#9");
    let out = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("backlog")["planned"], "AB#9");
    assert!(boards.requests().is_empty());
}

const GITHUB: &str = r#"pipeline: shop
secrets:
  gh: { env: GH_TOKEN }
stages:
  - name: backlog
    uses: backlog
    with:
      provider: github-issues
      commit: ${{ run.commit }}
      previous-commit: ${{ run.previous-commit }}
      max-wait: 30
      github-issues:
        repository: octo/shop
        token-secret: gh
        api: "{github}"
        branch: ${{ run.branch }}
    permissions:
      exec: [git]
      http: ["{github}"]
      secrets: [gh]
"#;

#[test]
fn github_issues_are_labelled_commented_and_closed_on_the_default_branch_only() {
    let gh = GithubIssues::start(TOKEN);
    for n in [10, 11, 12, 13] {
        gh.add_issue("octo", "shop", n, &format!("issue {n}"));
    }
    let ws = workspace(GITHUB, &[("{github}", &gh.url())]);
    commit(&ws, "Initial commit");
    assert_eq!(run(&ws).code, Some(0));
    commit(&ws, "Closes #10, refs #11");
    let c = commit(&ws, "fixes octo/shop#12 and other/repo#99");
    gh.secondary_limit_next(1, 1);
    let out = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let o = out.outputs("backlog");
    assert_eq!(o["updated"], "#10,#11,#12", "{o}");
    assert_eq!(o["transitioned"], "#10,#12", "{o}");
    for (n, closed) in [(10, true), (11, false), (12, true)] {
        let issue = gh.issue("octo", "shop", n);
        assert_eq!(
            issue["state"],
            if closed { "closed" } else { "open" },
            "#{n}: {issue}"
        );
        if closed {
            assert_eq!(issue["state_reason"], "completed", "#{n}");
        }
        let labels: Vec<&str> = issue["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().or(l.as_str()).unwrap())
            .collect();
        assert_eq!(labels, vec!["deployed:default"], "#{n}");
        let comments = issue["comments"].as_array().unwrap();
        assert_eq!(comments.len(), 1, "#{n}: {issue}");
        let body = comments[0]["body"]
            .as_str()
            .or(comments[0].as_str())
            .unwrap();
        assert!(body.contains(&c), "the deployed commit: {body}");
    }
    let throttled = gh.throttled();
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert!(throttled[0].waited().unwrap() >= throttled[0].retry_after);

    // A branch other than the default: comment and label, no close.
    git(&ws, &["checkout", "-q", "-b", "feature"]);
    commit(&ws, "Closes #13");
    let writes = gh.writes().len();
    let out = run(&ws);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(gh.issue("octo", "shop", 13)["state"], "open");
    let new: Vec<String> = gh.writes()[writes..]
        .iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        new,
        vec![
            "POST /repos/octo/shop/issues/13/labels".to_string(),
            "POST /repos/octo/shop/issues/13/comments".to_string()
        ]
    );
    for r in gh.requests() {
        assert!(!r.path.contains(TOKEN) && !r.body.contains(TOKEN));
    }
    assert!(!out.all().contains(TOKEN));
}

/// `run.previous-commit` per pipeline and environment, recorded in the
/// journal so a promotion sees its own environment's.
#[test]
fn previous_commit_is_the_last_success_in_the_same_environment() {
    let manifest = r#"pipeline: prev
stages:
  - name: show
    uses: "{echo}"
    with: { message: "prev=${{ run.previous-commit }}" }
  - name: gate
    uses: command
    needs: [show]
    with:
      steps: [{ name: gate, run: [test, -f, ok] }]
    permissions: { exec: [test] }
environments:
  default: { default: true }
  staging: {}
promotion:
  reuse: [show]
  environments: [default, staging]
"#;
    let ws = workspace(manifest, &[]);
    ws.write("ok", "");
    let c1 = commit(&ws, "one");
    let shown = |out: &Output| out.outputs("show")["message"].as_str().unwrap().to_string();
    let first = run(&ws);
    assert_eq!(shown(&first), "prev=", "{}", first.all());
    let c2 = commit(&ws, "two");
    let second = run(&ws);
    assert_eq!(shown(&second), format!("prev={c1}"));
    // A failed run does not count.
    std::fs::remove_file(ws.path().join("ok")).unwrap();
    let c3 = commit(&ws, "three");
    assert_ne!(run(&ws).code, Some(0));
    ws.write("ok", "");
    let fourth = run(&ws);
    assert_eq!(
        shown(&fourth),
        format!("prev={c2}"),
        "the failed run of {c3} is not a deployment"
    );
    // Another environment has its own history.
    let staging = gantry(
        &ws,
        &[
            "run",
            "pipeline.yaml",
            "--env",
            "staging",
            "--output",
            "json",
        ],
    );
    assert_eq!(shown(&staging), "prev=", "{}", staging.all());
    // A promotion into staging: staging's previous commit, recorded in its journal.
    let id = |out: &Output| {
        serde_json::from_str::<Value>(&out.stdout).unwrap()["run_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let promoted = gantry(
        &ws,
        &["promote", &id(&fourth), "staging", "--output", "json"],
    );
    assert_eq!(promoted.code, Some(0), "{}", promoted.all());
    let journal = std::fs::read_to_string(
        ws.runs_dir()
            .unwrap()
            .join(id(&promoted))
            .join("journal.jsonl"),
    )
    .unwrap();
    let started: Value = serde_json::from_str(journal.lines().next().unwrap()).unwrap();
    assert_eq!(
        started["previous_commit"],
        c3.as_str(),
        "staging last ran {c3}: {started}"
    );
}

/// Against the real Azure Boards, when credentials are set: a comment on one
/// work item the PAT may write to (no state change: the mention has no
/// `Fixes`), then nothing on a second run of the same deployment.
#[test]
fn real_azure_boards_when_credentials_are_set() {
    let vars = [
        "GANTRY_TEST_ADO_ORG",
        "GANTRY_TEST_ADO_PROJECT",
        "GANTRY_TEST_ADO_PAT",
        "GANTRY_TEST_ADO_ITEM",
    ];
    let values: Vec<String> = vars.iter().filter_map(|v| std::env::var(v).ok()).collect();
    if values.len() != vars.len() {
        eprintln!(
            "skipped: the real-Azure-Boards test needs {} (an organization, a project, a PAT with \
             Work Items read & write, and a work item id it may comment on)",
            vars.join(", ")
        );
        return;
    }
    let (org, project, pat, item) = (&values[0], &values[1], &values[2], &values[3]);
    let manifest = BOARDS
        .replace("organization: contoso", &format!("organization: \"{org}\""))
        .replace("project: Shop Web", &format!("project: \"{project}\""))
        .replace("        endpoint: \"{boards}\"\n", "")
        .replace("{boards}", "https://dev.azure.com");
    let ws = workspace(&manifest, &[]).env("BOARDS_PAT", pat);
    ws.write("ok", "");
    commit(
        &ws,
        &format!("gantry's real-service test mentions AB#{item}"),
    );
    let first = run(&ws);
    assert_eq!(first.code, Some(0), "{}", first.all());
    assert_eq!(first.outputs("backlog")["updated"], format!("AB#{item}"));
    let again = run(&ws);
    assert_eq!(again.code, Some(0), "{}", again.all());
    assert_eq!(
        again.outputs("backlog")["already-recorded"],
        format!("AB#{item}")
    );
    assert!(!first.all().contains(pat.as_str()) && !again.all().contains(pat.as_str()));
}

/// Against the real GitHub, when credentials are set: a label and a comment
/// on one issue (not closed: the mention has no closing keyword), then
/// nothing on a second run of the same deployment.
#[test]
fn real_github_issues_when_credentials_are_set() {
    let vars = [
        "GANTRY_TEST_GITHUB_REPO",
        "GANTRY_TEST_GITHUB_TOKEN",
        "GANTRY_TEST_GITHUB_ISSUE",
    ];
    let values: Vec<String> = vars.iter().filter_map(|v| std::env::var(v).ok()).collect();
    if values.len() != vars.len() {
        eprintln!(
            "skipped: the real-GitHub test needs {} (owner/name, a token with Issues read & \
             write, and an issue number it may label and comment on)",
            vars.join(", ")
        );
        return;
    }
    let (repo, token, issue) = (&values[0], &values[1], &values[2]);
    let manifest = GITHUB
        .replace("repository: octo/shop", &format!("repository: \"{repo}\""))
        .replace("        api: \"{github}\"\n", "")
        .replace("{github}", "https://api.github.com");
    let ws = workspace(&manifest, &[]).env("GH_TOKEN", token);
    commit(
        &ws,
        &format!("gantry's real-service test mentions #{issue}"),
    );
    let first = run(&ws);
    assert_eq!(first.code, Some(0), "{}", first.all());
    assert_eq!(first.outputs("backlog")["updated"], format!("#{issue}"));
    let again = run(&ws);
    assert_eq!(again.code, Some(0), "{}", again.all());
    assert_eq!(
        again.outputs("backlog")["already-recorded"],
        format!("#{issue}")
    );
    assert!(!first.all().contains(token.as_str()) && !again.all().contains(token.as_str()));
}
