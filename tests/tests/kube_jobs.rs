//! Stages as Kubernetes Jobs (`executor: kubernetes`), end to end: the real
//! gantry binary as the host, the test Kubernetes API server, and its kubelet
//! running each Job's pod for real on the Docker engine — the gantry image
//! (built by gantry itself, pulled from a local registry) running `gantry
//! stage`, which runs the stage's plugin on the workspace claim (a host
//! directory: the workspace). The cluster: [`gantry_e2e::kube_jobs`].

use gantry_e2e::kube_jobs::{
    Cluster, build_gantry_image, docker, layout_blob, local_image, read, wait_until,
};
use gantry_e2e::{gantry, plugin};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn three_stages_run_as_jobs_and_share_the_workspace() {
    let c = Cluster::start();
    c.manifest(
        "  - name: one\n    uses: echo\n    with: { message: first, append: trail.txt, write: one.txt }\n    \
         permissions: { workspace: write }\n\
         \x20 - name: two\n    uses: echo\n    needs: [one]\n    with: { message: \"after ${{ stages.one.outputs.message }}\", append: trail.txt }\n    \
         permissions: { workspace: write }\n\
         \x20 - name: three\n    uses: echo\n    needs: [two]\n    with: { message: last, append: trail.txt, stdout_lines: 3 }\n    \
         permissions: { workspace: write }\n",
    );
    let out = c.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    for stage in ["one", "two", "three"] {
        assert!(out.succeeded(stage), "{}", out.all());
    }
    // Each stage appended to the same file, in order: one workspace.
    assert_eq!(read(&c.ws.path().join("trail.txt")), "one\ntwo\nthree\n");
    assert_eq!(read(&c.ws.path().join("one.txt")), "first");
    // The upstream output reached stage two through the host.
    assert!(out.all().contains("echo: after first"), "{}", out.all());
    // The pod's log was streamed into the stage log.
    assert!(out.all().contains("stdout line 2"), "{}", out.all());
    let jobs = c.jobs();
    assert_eq!(jobs.len(), 3, "one Job per stage: {jobs:#?}");
    for job in &jobs {
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
        assert_eq!(
            job["spec"]["template"]["spec"]["automountServiceAccountToken"],
            false
        );
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["image"],
            c.image
        );
        assert!(job["metadata"]["labels"]["gantry.dev/run-id"].is_string());
        let conditions = job["status"]["conditions"].as_array().unwrap();
        assert!(
            conditions.iter().any(|c| c["type"] == "Complete"),
            "{job:#}"
        );
    }
    // The stage Secrets went once their pods ended.
    assert!(c.api.objects("v1", "secrets", "ci").is_empty());
}

fn job_condition(job: &Value) -> (String, String) {
    job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

#[test]
fn a_failing_stage_is_reported_with_the_jobs_reason() {
    let c = Cluster::start();
    c.manifest(
        "  - name: broken\n    uses: echo\n    with: { message: x, write: no/such/dir/file.txt }\n    \
         permissions: { workspace: write }\n\
         \x20 - name: after\n    uses: echo\n    needs: [broken]\n    with: { message: never }\n\
         \x20 - name: nosy\n    uses: echo\n    with: { message: x, secret: other }\n",
    );
    let out = c.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    // A refusal in the pod is reported by the host, as locally.
    let nosy = out.stage_line("nosy");
    assert!(nosy.starts_with('✘') && nosy.contains("denied"), "{nosy}");
    assert!(
        out.all()
            .lines()
            .any(|l| l.trim_start().starts_with("denied:") && l.contains("other")),
        "{}",
        out.all()
    );
    let line = out.stage_line("broken");
    assert!(line.starts_with('✘'), "{line}");
    // The plugin's own error, from the pod's report, and the Job's reason.
    assert!(
        line.contains("failed: cannot write no/such/dir/file.txt"),
        "{line}"
    );
    assert!(line.contains("BackoffLimitExceeded, exit code 1"), "{line}");
    assert!(out.stage_line("after").starts_with('⊘'), "{}", out.all());
    let jobs = c.jobs();
    assert_eq!(jobs.len(), 2, "a skipped stage makes no Job");
    for job in &jobs {
        assert_eq!(
            job_condition(job),
            ("Failed".into(), "BackoffLimitExceeded".into())
        );
    }
}

#[test]
fn a_stage_past_its_timeout_fails_with_deadline_exceeded() {
    let c = Cluster::start();
    c.manifest(
        "  - name: slow\n    uses: echo\n    with: { message: zzz, sleep_ms: 60000 }\n    timeout: 4s\n",
    );
    let started = Instant::now();
    let out = c.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out.stage_line("slow");
    assert!(
        line.contains("timeout: stage `slow` did not finish within its timeout of 4s"),
        "{line}"
    );
    assert!(line.contains("DeadlineExceeded"), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the Job's deadline stopped it"
    );
    let jobs = c.jobs();
    assert_eq!(jobs[0]["spec"]["activeDeadlineSeconds"], 4);
    assert_eq!(
        job_condition(&jobs[0]),
        ("Failed".into(), "DeadlineExceeded".into())
    );
    // Its pod was deleted, and the kubelet removed the container.
    wait_until("the pod's container to go", Duration::from_secs(30), || {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            "label=gantry-test-kubelet=1",
            "--filter",
            "name=kube-gantry-slow-",
        ])
        .is_empty()
    });
}

#[test]
fn cancel_deletes_the_job() {
    let c = Cluster::start();
    c.manifest("  - name: long\n    uses: echo\n    with: { message: zzz, sleep_ms: 60000 }\n");
    let child = c.spawn();
    let job = c.wait_for_running_pod();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    // Deleted with background propagation: the Job, its pod and its Secret.
    assert!(c.jobs().is_empty(), "{:#?}", c.jobs());
    assert!(c.api.objects("v1", "pods", "ci").is_empty());
    assert!(c.api.objects("v1", "secrets", "ci").is_empty());
    let deletes: Vec<String> = c
        .api
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "DELETE" && p.contains(&format!("/jobs/{job}")))
        .map(|(_, p, _)| p)
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    wait_until("the pod's container to go", Duration::from_secs(30), || {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            "label=gantry-test-kubelet=1",
            "--filter",
            &format!("name=kube-{job}-"),
        ])
        .is_empty()
    });
}

#[test]
fn a_resumed_host_reattaches_instead_of_starting_a_second_job() {
    let c = Cluster::start();
    c.manifest(
        "  - name: long\n    uses: echo\n    with: { message: done, sleep_ms: 5000, append: ran.txt }\n    \
         permissions: { workspace: write }\n\
         \x20 - name: next\n    uses: echo\n    needs: [long]\n    with: { message: \"${{ stages.long.outputs.message }}\" }\n",
    );
    let mut child = c.spawn();
    let job = c.wait_for_running_pod();
    // SIGKILL: the host has no chance to clean up; the Job runs on.
    child.kill().unwrap();
    child.wait().unwrap();
    let journal = c.ws.only_journal().unwrap();
    assert!(
        read(&journal).contains(&format!("\"job\":\"{job}\"")),
        "the Job is journaled"
    );
    let run_id = journal
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let mut cmd = c.ws.command(&["resume", &run_id]);
    cmd.env("KJ_TOKEN", "s3cret-token-value")
        .env("KJ_OTHER", "other-secret-value");
    let out = cmd.output().unwrap();
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&format!("long: re-attaching to Job ci/{job}")),
        "{all}"
    );
    // One Job for `long` (the one the killed host made), one for `next`.
    let jobs = c.jobs();
    let long: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["metadata"]["labels"]["gantry.dev/stage"] == "long")
        .collect();
    assert_eq!(long.len(), 1, "{jobs:#?}");
    assert_eq!(
        read(&c.ws.path().join("ran.txt")),
        "long\n",
        "the stage ran once"
    );
    assert!(
        all.contains("echo: done"),
        "the next stage got its output: {all}"
    );
}

#[test]
fn only_stages_granted_cluster_get_a_token_and_secrets_reach_only_their_pod() {
    let c = Cluster::start();
    c.manifest(
        "  - name: plain\n    uses: echo\n    with: { message: plain, secret: token }\n    \
         permissions: { secrets: [token] }\n\
         \x20 - name: deployer\n    uses: echo\n    with: { message: deploy }\n    \
         permissions: { cluster: { namespaces: [ci] } }\n",
    );
    let out = c.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    // The granted secret reached the stage, and its log is redacted.
    assert!(out.all().contains("secret token is"), "{}", out.all());
    assert!(!out.all().contains("s3cret-token-value"), "{}", out.all());
    let specs = c.pod_specs();
    assert_eq!(specs.len(), 2);
    for spec in &specs {
        let secrets = spec["secrets"].as_object().unwrap();
        match spec["stage"].as_str().unwrap() {
            "plain" => assert_eq!(secrets.keys().collect::<Vec<_>>(), ["token"]),
            "deployer" => assert!(secrets.is_empty(), "{spec:#}"),
            other => panic!("unexpected stage {other}"),
        }
        assert!(
            !serde_json::to_string(spec)
                .unwrap()
                .contains("other-secret-value")
        );
    }
    let jobs = c.jobs();
    let job = |stage: &str| {
        jobs.iter()
            .find(|j| j["metadata"]["labels"]["gantry.dev/stage"] == stage)
            .unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount".to_string();
    assert!(!c.container_mounts(&job("plain")).contains(&sa));
    assert!(c.container_mounts(&job("deployer")).contains(&sa));
}

/// Against a real cluster: `KUBECONFIG` names it, `GANTRY_KUBE_IMAGE` the
/// gantry image it can pull, `GANTRY_KUBE_NAMESPACE` and `GANTRY_KUBE_CLAIM`
/// a namespace and a ReadWriteMany claim this machine also mounts at
/// `GANTRY_KUBE_WORKSPACE`.
#[test]
fn on_a_real_cluster() {
    let vars = [
        "KUBECONFIG",
        "GANTRY_KUBE_IMAGE",
        "GANTRY_KUBE_NAMESPACE",
        "GANTRY_KUBE_CLAIM",
        "GANTRY_KUBE_WORKSPACE",
    ];
    let missing: Vec<&str> = vars
        .iter()
        .copied()
        .filter(|v| std::env::var(v).is_err())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "skipped: no real cluster configured ({} not set); this test needs a cluster, an \
             image it can pull and a claim shared with this machine",
            missing.join(", ")
        );
        return;
    }
    let env = |v: &str| std::env::var(v).unwrap();
    let ws = PathBuf::from(env("GANTRY_KUBE_WORKSPACE"));
    std::fs::copy(plugin("echo"), ws.join("echo.wasm")).unwrap();
    std::fs::write(
        ws.join("pipeline.yaml"),
        format!(
            "pipeline: kube-real\nexecutor:\n  kubernetes: {{ namespace: {}, image: \"{}\", workspace-claim: {} }}\n\
             plugins:\n  echo: {{ path: echo.wasm }}\nstages:\n  - name: hello\n    uses: echo\n    with: {{ message: hi, append: real.txt }}\n    permissions: {{ workspace: write }}\n",
            env("GANTRY_KUBE_NAMESPACE"),
            env("GANTRY_KUBE_IMAGE"),
            env("GANTRY_KUBE_CLAIM")
        ),
    )
    .unwrap();
    let out = Command::new(gantry())
        .args(["run", "pipeline.yaml"])
        .current_dir(&ws)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(read(&ws.join("real.txt")).contains("hello"));
}

#[test]
fn a_job_that_finished_while_the_host_was_down_is_read_not_run_again() {
    let c = Cluster::start();
    c.manifest(
        "  - name: long\n    uses: echo\n    with: { message: done, sleep_ms: 2000, append: ran.txt }\n    \
         permissions: { workspace: write }\n",
    );
    let mut child = c.spawn();
    let job = c.wait_for_running_pod();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("the Job to complete", Duration::from_secs(60), || {
        c.jobs()
            .first()
            .is_some_and(|j| job_condition(j).0 == "Complete")
    });
    let journal = c.ws.only_journal().unwrap();
    let run_id = journal
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let out = c.ws.gantry(&["resume", &run_id, "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all().contains(&format!(
            "re-attaching to Job ci/{job}, finished (Complete) while the host was down"
        )),
        "{}",
        out.all()
    );
    assert_eq!(out.outputs("long")["message"], "done");
    assert_eq!(c.jobs().len(), 1);
    assert_eq!(read(&c.ws.path().join("ran.txt")), "long\n");
}

#[test]
fn a_report_too_big_for_the_termination_message_is_spilled_and_checked() {
    let c = Cluster::start();
    let big = "x".repeat(6000);
    c.manifest(&format!(
        "  - name: big\n    uses: echo\n    with: {{ message: \"{big}\" }}\n"
    ));
    let mut cmd = c.ws.command(&["run", "pipeline.yaml", "--output", "json"]);
    cmd.env("KJ_TOKEN", "a-token-value")
        .env("KJ_OTHER", "an-other-value");
    let out = cmd.output().unwrap();
    let out = gantry_e2e::Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(out.outputs("big")["message"], big.as_str());
    let pods = c.api.objects("v1", "pods", "ci");
    let message = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.len() < 4096 && message.contains("\"spilled\""),
        "{message}"
    );
    // The host removed the spilled report once read.
    let results = c.ws.path().join(".gantry/kube-results");
    let left: Vec<_> = walk(&results);
    assert!(left.is_empty(), "{left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_gantry_image_is_built_by_gantry_reproducibly() {
    let first = {
        local_image();
        build_gantry_image()
    };
    let again = build_gantry_image();
    assert_eq!(first, again, "the same binary gives the same image digest");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(layout_blob(&again)).unwrap()).unwrap();
    let config: Value = serde_json::from_slice(
        &std::fs::read(layout_blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(config["config"]["Entrypoint"], json!(["/gantry"]));
    // scratch + the binary + what it links + the CA bundle: nothing else.
    let layer = std::fs::File::open(layout_blob(
        manifest["layers"][0]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    let files: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.header().entry_type().is_file())
        .map(|e| e.path().unwrap().display().to_string())
        .collect();
    assert!(
        files.iter().any(|f| f.trim_start_matches('/') == "gantry"),
        "{files:?}"
    );
    assert!(files.iter().any(|f| f.contains("libc.so")), "{files:?}");
    assert!(files.iter().any(|f| f.contains("ld-linux")), "{files:?}");
    assert!(
        files.len() <= 8,
        "only the binary and its libraries: {files:?}"
    );
}

#[test]
fn a_missing_claim_or_an_image_that_cannot_be_pulled_fails_the_stage_at_once() {
    let c = Cluster::start();
    c.manifest("  - name: one\n    uses: echo\n    with: { message: hi }\n");
    let manifest = c.ws.path().join("pipeline.yaml");
    let text = read(&manifest);
    std::fs::write(
        &manifest,
        text.replace("workspace-claim: ws", "workspace-claim: nope"),
    )
    .unwrap();
    let out = c.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out.stage_line("one");
    assert!(line.contains("the workspace claim ci/nope"), "{line}");
    assert!(c.jobs().is_empty(), "no Job without its claim");

    let unpullable = text.replace(&c.image, "127.0.0.1:9/gantry:missing");
    std::fs::write(&manifest, unpullable).unwrap();
    let started = Instant::now();
    let out = c.run();
    assert_eq!(out.code, Some(1), "{}", out.all());
    let line = out.stage_line("one");
    assert!(
        line.contains("transient: its pod could not start: ErrImagePull"),
        "{line}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "it did not wait for a deadline"
    );
    // The Job was deleted rather than left pending.
    wait_until("the Job to go", Duration::from_secs(10), || {
        c.jobs().is_empty()
    });
}

#[test]
fn a_plugin_from_a_registry_is_pulled_in_the_pod_at_the_pinned_digest() {
    let c = Cluster::start();
    let reference = format!("oci://{}/plugins/echo:1", c.registry.addr);
    let digest = gantry_e2e::oci::push(&c.ws, "echo", &reference, &[]);
    c.manifest("  - name: one\n    uses: echo\n    with: { message: from-the-registry }\n");
    let manifest = c.ws.path().join("pipeline.yaml");
    let text = read(&manifest).replace(
        "echo: { path: echo.wasm }",
        &format!("echo: {{ oci: \"{reference}\", insecure: true }}"),
    );
    std::fs::write(&manifest, text).unwrap();
    std::fs::remove_file(c.ws.path().join("echo.wasm")).unwrap();
    let out = c.run();
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.all().contains("echo: from-the-registry"),
        "{}",
        out.all()
    );
    // The host pinned it; the pod fetched that pin (`--locked`), not the tag.
    assert!(read(&c.ws.path().join("gantry.lock")).contains(&digest));
}

#[test]
fn a_job_deleted_by_someone_else_fails_its_stage_with_a_clear_error() {
    let c = Cluster::start();
    c.manifest("  - name: long\n    uses: echo\n    with: { message: zzz, sleep_ms: 60000 }\n");
    let child =
        c.ws.command(&["run", "pipeline.yaml"])
            .env("KJ_TOKEN", "s3cret-token-value")
            .env("KJ_OTHER", "other-secret-value")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let job = c.wait_for_running_pod();
    assert!(c.api.delete("batch/v1", "jobs", "ci", &job));
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("Job ci/{job} was deleted before it finished")),
        "{all}"
    );
}
