//! The HTML: the self-contained run report, and the pages `gantry serve`
//! shows. Built with maud, which escapes every value it interpolates (stage
//! output is untrusted input: a `<script>` in a summary is shown as text).

use super::model::{HealthVerdict, LogTail, RunView, StageView};
use super::svg::{self, RunPoint, secs, status_class};
use crate::queue::{Approval, Deployment, Run, RunStatus};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::collections::BTreeMap;

/// The stylesheet: inlined in reports, served as `/assets/dashboard.css`.
pub const CSS: &str = include_str!("assets/dashboard.css");
/// Live updates only (log tails over SSE, status refresh); every page reads
/// without it.
pub const JS: &str = include_str!("assets/dashboard.js");

/// When a unix-ms time was, in UTC.
pub fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

/// A provider as the table shows it: a local `.wasm` by its file name (the
/// full path is its tooltip), anything else as written.
fn provider(uses: &str) -> &str {
    match uses.rsplit_once('/') {
        Some((_, file)) if uses.ends_with(".wasm") && !uses.starts_with("oci://") => file,
        _ => uses,
    }
}

fn badge(status: &str) -> Markup {
    html! { span class=(format!("badge {}", status_class(status))) { (status) } }
}

/// A health-gate verdict: the decision and what was measured; `detail`
/// adds the gate's own words (the stage table shows them already).
fn health(v: &HealthVerdict, detail: bool) -> Markup {
    html! {
        div class=(if v.healthy { "health ok" } else { "health bad" }) {
            strong { (if v.healthy { "healthy" } else { "unhealthy" }) }
            dl {
                @if let Some(p) = &v.probe { dt { "probe" } dd { (p) } }
                @if let Some(r) = v.failure_rate_pct { dt { "failed-request rate" } dd { (format!("{r:.1}%")) } }
                @if let Some(n) = v.failed_requests { dt { "failed requests" } dd { (n) } }
                @if let Some(n) = v.requests { dt { "requests" } dd { (n) } }
                @if let Some(w) = v.window_minutes { dt { "window" } dd { (w) " min" } }
            }
            @if detail { p class="detail" { (v.detail) } }
        }
    }
}

fn outputs(s: &StageView) -> Markup {
    html! {
        @if !s.outputs.is_empty() {
            table class="kv" {
                @for (k, v) in &s.outputs { tr { th { (k) } td { code { (v) } } } }
            }
        }
        @for a in &s.artifacts {
            p class="artifact" {
                "artifact " strong { (a.name) } " (" (a.media_type) ")"
                @if let Some(r) = &a.reference { " " code { (r) } }
                @if let Some(d) = &a.digest { " " code { (d) } }
                @if let Some(p) = &a.path { " " code { (p) } }
            }
        }
    }
}

/// The stage table: status, time, outputs, denials, summary.
fn stage_table(run: &RunView) -> Markup {
    html! {
        table class="stages" {
            thead { tr { th { "stage" } th { "provider" } th { "status" } th { "time" } th { "outputs" } th { "summary" } } }
            tbody {
                @for s in &run.stages {
                    tr id=(format!("stage-{}", s.name)) {
                        td { a href=(format!("#log-{}", s.name)) { (s.name) } }
                        td { code title=(s.uses) { (provider(&s.uses)) } }
                        td {
                            (badge(&s.status))
                            @if s.attempts > 1 { " (attempt " (s.attempts) ")" }
                            @if let Some(from) = &s.reused_from { br; small { "reused from run " (from) } }
                            @if let Some(job) = &s.job { br; small { "Kubernetes Job " (job) } }
                        }
                        td { (s.duration_ms.map(secs).unwrap_or_default()) }
                        td { (outputs(s)) }
                        td class="summary" {
                            (s.detail)
                            @for r in &s.retries { p class="retry" { "retried: " (r) } }
                            @if !s.denials.is_empty() {
                                ul class="denials" {
                                    @for d in &s.denials { li { "denied: " (d) } }
                                }
                            }
                            @if let Some(h) = s.health() { (health(&h, false)) }
                        }
                    }
                }
            }
        }
    }
}

/// The run's facts: pipeline, environment, commit, trigger, approval, time.
fn run_facts(run: &RunView) -> Markup {
    html! {
        dl class="facts" {
            dt { "pipeline" } dd { (run.pipeline) }
            dt { "environment" } dd { (run.environment) }
            dt { "status" } dd { (badge(&run.status)) }
            @if let Some(c) = &run.commit { dt { "commit" } dd { code { (c) } } }
            @if let Some(b) = &run.branch { dt { "branch" } dd { (b) } }
            @if let Some(r) = &run.repository { dt { "repository" } dd { (r) } }
            @if let Some(p) = &run.promoted_from { dt { "promoted from" } dd { (p) } }
            @if let Some(a) = &run.approval { dt { "approved" } dd { "by " (a.by) " via " (a.via) " at " (when(a.ts_ms)) } }
            dt { "started" } dd { (when(run.started_ms)) }
            @if let Some(d) = run.duration_ms() { dt { "duration" } dd { (secs(d)) } }
            @if run.resumed > 0 { dt { "resumed" } dd { (run.resumed) " time(s)" } }
        }
    }
}

/// What the run reported as telemetry: its own numbers (stage times,
/// retries, denials), the sinks it publishes to, and the metrics and events
/// its stages reported (the host's run and stage events are the table and
/// timeline above).
fn telemetry(run: &RunView) -> Markup {
    const SHOWN: usize = 200;
    let retries: usize = run.stages.iter().map(|s| s.retries.len()).sum();
    let denials: usize = run.stages.iter().map(|s| s.denials.len()).sum();
    let busy: u64 = run.stages.iter().filter_map(|s| s.duration_ms).sum();
    let reported: Vec<_> = run
        .telemetry
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "metric" | "deployment" | "custom"))
        .collect();
    html! {
        section class="telemetry" {
            h2 { "Telemetry" }
            dl class="facts" {
                dt { "stage time, summed" } dd { (secs(busy)) }
                dt { "retries" } dd { (retries) }
                dt { "denied calls" } dd { (denials) }
                dt { "events recorded" } dd { (run.telemetry.len()) }
                dt { "sinks" }
                dd {
                    @if run.sinks.is_empty() { "none (the manifest has no `telemetry:`)" }
                    @for s in &run.sinks { code { (s.uses) } " " }
                }
            }
            @if !reported.is_empty() {
                table class="events" {
                    thead { tr { th { "when" } th { "stage" } th { "kind" } th { "name" } th { "value" } } }
                    tbody {
                        @for e in reported.iter().take(SHOWN) {
                            tr {
                                td { (secs(e.timestamp_ms.saturating_sub(run.started_ms))) }
                                td { (e.stage.clone().unwrap_or_default()) }
                                td { (e.kind) }
                                td { (e.name) }
                                td {
                                    @if let Some(v) = e.value { (v) " " }
                                    @for (k, v) in &e.properties { code { (k) "=" (v) } " " }
                                }
                            }
                        }
                    }
                }
                @if reported.len() > SHOWN { p { "(the first " (SHOWN) " of " (reported.len()) ")" } }
            }
        }
    }
}

fn log_block(stage: &str, tail: Option<&LogTail>, live: Option<String>) -> Markup {
    let lines = tail.map(|t| t.lines.join("\n")).unwrap_or_default();
    html! {
        section class="log" id=(format!("log-{stage}")) {
            h3 {
                "log: " (stage)
                @if let Some(t) = tail {
                    @if t.total > t.lines.len() { small { " (last " (t.lines.len()) " of " (t.total) " lines)" } }
                }
            }
            @match live {
                Some(src) => pre data-log-src=(src) { (lines) }
                None => pre { (lines) }
            }
        }
    }
}

fn page(title: &str, head: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                (head)
            }
            body { (body) }
        }
    }
}

/// A run's report as one HTML file: no script, no external resource (its
/// Content-Security-Policy forbids loading any), for a CI job's artifacts or
/// a ticket.
pub fn report(run: &RunView, logs: &BTreeMap<String, LogTail>, now_ms: u64) -> String {
    let head = html! {
        meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'";
        style { (PreEscaped(CSS)) }
    };
    let body = html! {
        main {
            h1 { "Run " (run.id) " " (badge(&run.status)) }
            (run_facts(run))
            h2 { "Timeline" }
            (svg::timeline(&run.stages, run.started_ms, run.end_ms(now_ms)))
            h2 { "Stages" }
            (svg::dag(&run.stages))
            (stage_table(run))
            (telemetry(run))
            h2 { "Logs" }
            @for s in &run.stages { (log_block(&s.name, logs.get(&s.name), None)) }
            footer { "gantry " (env!("CARGO_PKG_VERSION")) " report, written " (when(now_ms)) }
        }
    };
    page(&format!("gantry run {}", run.id), head, body).into_string()
}

/// What every page of `gantry serve` knows about the request.
pub struct Ctx<'a> {
    /// The signed-in token holder.
    pub user: &'a str,
    /// The value POST forms must carry back (CSRF defence).
    pub csrf: &'a str,
}

fn served(title: &str, ctx: &Ctx, body: Markup) -> String {
    let head = html! {
        link rel="stylesheet" href="/assets/dashboard.css";
        script src="/assets/dashboard.js" defer {}
    };
    let body = html! {
        nav {
            a href="/runs" { "Runs" }
            a href="/environments" { "Environments" }
            span class="user" {
                "signed in as " (ctx.user)
                form method="post" action="/logout" class="inline" {
                    input type="hidden" name="csrf" value=(ctx.csrf);
                    button type="submit" { "sign out" }
                }
            }
        }
        main { (body) }
    };
    page(title, head, body).into_string()
}

/// The sign-in form: the API token, kept in an HttpOnly cookie afterwards.
pub fn login(error: Option<&str>, next: &str) -> String {
    let head = html! { link rel="stylesheet" href="/assets/dashboard.css"; };
    let body = html! {
        main class="login" {
            h1 { "gantry" }
            @if let Some(e) = error { p class="error" { (e) } }
            form method="post" action="/login" {
                label for="token" { "API token (from the service's " code { "api-tokens" } ")" }
                input type="password" id="token" name="token" autocomplete="current-password" required;
                input type="hidden" name="next" value=(next);
                button type="submit" { "Sign in" }
            }
        }
    };
    page("gantry: sign in", head, body).into_string()
}

/// The runs' filters as given.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct RunsQuery {
    pub pipeline: Option<String>,
    pub branch: Option<String>,
    pub status: Option<String>,
}

fn duration_of(r: &Run) -> String {
    match (r.started_at_ms, r.finished_at_ms) {
        (Some(s), Some(f)) => secs(f.saturating_sub(s) as u64),
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    }
}

/// Runs, newest first, with their filters.
pub fn runs(ctx: &Ctx, runs: &[Run], q: &RunsQuery, pipelines: &[String]) -> String {
    let body = html! {
        h1 { "Runs" }
        form method="get" action="/runs" class="filters" {
            label { "pipeline "
                select name="pipeline" {
                    option value="" { "any" }
                    @for p in pipelines {
                        option value=(p) selected[q.pipeline.as_deref() == Some(p)] { (p) }
                    }
                }
            }
            label { "branch " input type="text" name="branch" value=(q.branch.clone().unwrap_or_default()); }
            label { "status "
                select name="status" {
                    option value="" { "any" }
                    @for s in RunStatus::ALL {
                        option value=(s.as_str()) selected[q.status.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if !pipelines.is_empty() {
            p { "Charts: " @for p in pipelines { a href=(format!("/pipelines/{p}")) { (p) } " " } }
        }
        div data-refresh id="runs" {
            table class="runs" {
                thead { tr { th { "run" } th { "pipeline" } th { "branch" } th { "commit" } th { "trigger" } th { "environment" } th { "duration" } th { "result" } } }
                tbody {
                    @for r in runs {
                        tr class="run" data-run=(r.id) {
                            td { a href=(format!("/runs/{}", r.id)) { "#" (r.id) } }
                            td { (r.pipeline) }
                            td { (r.branch) }
                            td { code { (short(&r.commit)) } }
                            td { (r.trigger) @if let Some(s) = r.source_run { " of " a href=(format!("/runs/{s}")) { "#" (s) } } }
                            td { (r.environment) }
                            td { (duration_of(r)) }
                            td {
                                (badge(r.status.as_str()))
                                @if r.status == RunStatus::Queued && r.needs_approval {
                                    " " a href="/environments" { small { "waits for approval" } }
                                }
                                @if let Some(d) = &r.detail { " " small { (d) } }
                            }
                        }
                    }
                }
            }
            @if runs.is_empty() { p { "No runs match." } }
        }
    };
    served("gantry: runs", ctx, body)
}

fn decision_forms(ctx: &Ctx, run: i64, environment: &str) -> Markup {
    html! {
        form method="post" action=(format!("/runs/{run}/approve")) class="inline" {
            input type="hidden" name="csrf" value=(ctx.csrf);
            input type="hidden" name="environment" value=(environment);
            input type="text" name="comment" placeholder="comment";
            button type="submit" class="approve" { "Approve" }
        }
        form method="post" action=(format!("/runs/{run}/reject")) class="inline" {
            input type="hidden" name="csrf" value=(ctx.csrf);
            input type="hidden" name="environment" value=(environment);
            button type="submit" class="reject" { "Reject" }
        }
    }
}

/// One run: its record in the queue, and what its journal says.
pub fn run(
    ctx: &Ctx,
    run: &Run,
    view: Option<&RunView>,
    logs: &BTreeMap<String, LogTail>,
    approval: Option<&Approval>,
    now_ms: u64,
) -> String {
    let live = !run.status.is_done();
    let body = html! {
        h1 { "Run #" (run.id) " " span id="run-status" data-status=(run.status.as_str()) { (badge(run.status.as_str())) } }
        dl class="facts" {
            dt { "pipeline" } dd { a href=(format!("/pipelines/{}", run.pipeline)) { (run.pipeline) } }
            dt { "environment" } dd { (run.environment) }
            dt { "branch" } dd { (run.branch) }
            dt { "commit" } dd { code { (run.commit) } }
            dt { "trigger" } dd { (run.trigger) @if let Some(s) = run.source_run { " of " a href=(format!("/runs/{s}")) { "#" (s) } } }
            dt { "queued" } dd { (when(run.created_at_ms as u64)) }
            @if let Some(d) = &run.detail { dt { "detail" } dd { (d) } }
            @if let Some(j) = &run.journal_run_id {
                dt { "journal" } dd { code { (j) } " " a href=(format!("/runs/{}/report", run.id)) { "download the report" } }
            }
        }
        @if let Some(a) = approval {
            section class="approval" {
                h2 { "Approval for " (a.environment) }
                p {
                    (badge(a.state.as_str()))
                    @if let Some(by) = &a.decided_by { " by " (by) }
                    @if let Some(at) = a.decided_at_ms { " at " (when(at as u64)) }
                    @if let Some(c) = &a.comment { " — " (c) }
                }
                @if a.state == crate::queue::ApprovalState::Pending { (decision_forms(ctx, run.id, &a.environment)) }
            }
        }
        @match view {
            None => p { "This run has not started a journal yet." }
            Some(v) => {
                // While the run runs, the script refreshes this part in place
                // (the logs below stream on their own).
                div id="run-overview" data-refresh[live] {
                    h2 { "Stages" }
                    (svg::dag(&v.stages))
                    h2 { "Timeline" }
                    (svg::timeline(&v.stages, v.started_ms, v.end_ms(now_ms)))
                    (stage_table(v))
                    (telemetry(v))
                }
                h2 { "Logs" }
                @for s in &v.stages {
                    @let tail = logs.get(&s.name);
                    (log_block(&s.name, tail, live.then(|| format!(
                        "/runs/{}/logs/{}?offset={}", run.id, s.name, tail.map_or(0, |t| t.bytes)))))
                }
            }
        }
    };
    served(&format!("gantry: run {}", run.id), ctx, body)
}

/// One environment of one pipeline on the environments page.
pub struct EnvironmentView {
    pub pipeline: String,
    pub environment: String,
    pub live: Deployment,
    /// Newest first.
    pub history: Vec<Deployment>,
    /// The last health-gate verdict in it: the run and what the gate decided.
    pub health: Option<(i64, HealthVerdict)>,
}

/// What is live where, its history and health, and the approvals waiting.
pub fn environments(ctx: &Ctx, envs: &[EnvironmentView], pending: &[(Approval, Run)]) -> String {
    let body = html! {
        h1 { "Environments" }
        section class="pending" {
            h2 { "Waiting for approval" }
            @if pending.is_empty() { p { "Nothing waits." } }
            @for (a, r) in pending {
                div class="pending-approval" data-run=(r.id) {
                    p {
                        a href=(format!("/runs/{}", r.id)) { "run #" (r.id) } " "
                        "promotes " (r.pipeline) " " code { (short(&r.commit)) } " into " strong { (a.environment) }
                        @if let Some(s) = r.source_run { " (from run " a href=(format!("/runs/{s}")) { "#" (s) } ")" }
                        ", requested " (when(a.requested_at_ms as u64))
                    }
                    (decision_forms(ctx, r.id, &a.environment))
                }
            }
        }
        @for e in envs {
            section class="environment" id=(format!("env-{}-{}", e.pipeline, e.environment)) {
                h2 { (e.pipeline) " / " (e.environment) }
                dl class="facts" {
                    dt { "live commit" } dd { code { (e.live.commit) } }
                    dt { "image digest" } dd { code class="digest" { (e.live.image_digest.clone().unwrap_or_else(|| "-".into())) } }
                    dt { "since" } dd { (when(e.live.deployed_at_ms as u64)) }
                    dt { "by run" } dd { a href=(format!("/runs/{}", e.live.run)) { "#" (e.live.run) } }
                }
                @match &e.health {
                    Some((run, v)) => { h3 { "Last health gate (run " a href=(format!("/runs/{run}")) { "#" (run) } ")" } (health(v, true)) }
                    None => p { "No health gate has run here." }
                }
                h3 { "History" }
                table class="history" {
                    thead { tr { th { "when" } th { "commit" } th { "image digest" } th { "run" } } }
                    tbody {
                        @for d in &e.history {
                            tr {
                                td { (when(d.deployed_at_ms as u64)) }
                                td { code { (short(&d.commit)) } }
                                td { code { (d.image_digest.clone().unwrap_or_else(|| "-".into())) } }
                                td { a href=(format!("/runs/{}", d.run)) { "#" (d.run) } }
                            }
                        }
                    }
                }
            }
        }
        @if envs.is_empty() { p { "Nothing has been deployed yet." } }
    };
    served("gantry: environments", ctx, body)
}

/// A pipeline's last runs: duration and failure rate.
pub fn pipeline(ctx: &Ctx, name: &str, runs: &[Run], window: usize) -> String {
    // Oldest first, finished runs only.
    let points: Vec<RunPoint> = runs
        .iter()
        .rev()
        .filter(|r| r.status.is_final())
        .filter_map(|r| {
            Some(RunPoint {
                label: format!("#{} {}", r.id, r.status.as_str()),
                duration_ms: r.finished_at_ms?.saturating_sub(r.started_at_ms?) as u64,
                failed: r.status == RunStatus::Failed,
            })
        })
        .collect();
    let failed = points.iter().filter(|p| p.failed).count();
    let body = html! {
        h1 { "Pipeline " (name) }
        p {
            (points.len()) " finished run(s), " (failed) " failed"
            @if !points.is_empty() { " (" (format!("{:.0}%", 100.0 * failed as f64 / points.len() as f64)) ")" }
            "; the line is the failure rate over the last " (window) " runs."
        }
        (svg::pipeline_chart(&points, window))
        p { a href=(format!("/runs?pipeline={name}")) { "its runs" } }
    };
    served(&format!("gantry: pipeline {name}"), ctx, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{PluginRecord, Record};

    fn xss_run() -> RunView {
        let records = vec![
            Record::RunStarted {
                run_id: "r-1".into(),
                pipeline: "app".into(),
                environment: "default".into(),
                manifest: "/m.yaml".into(),
                manifest_sha256: "00".into(),
                commit: Some("0123456789abcdef".into()),
                plugins: ["build", "test", "deploy"]
                    .iter()
                    .map(|s| PluginRecord {
                        unit: s.to_string(),
                        uses: "command".into(),
                        digest: "sha256:00".into(),
                    })
                    .collect(),
                ts_ms: 1_000,
                branch: Some("main".into()),
                reference: None,
                commit_messages: vec![],
                repository: None,
                promoted_from: None,
                approval: None,
                previous_commit: None,
                url: None,
            },
            Record::StageStarted {
                stage: "build".into(),
                attempt: 1,
                plugin_digest: None,
                ts_ms: 1_100,
            },
            Record::StageFinished {
                stage: "build".into(),
                status: "succeeded".into(),
                detail: "<script>alert('x')</script>".into(),
                duration_ms: 900,
                outputs: vec![("img".into(), "\"><img src=x onerror=alert(1)>".into())],
                artifacts: vec![],
                denials: vec!["http GET http://evil.example/: <b>no</b>".into()],
                ts_ms: 2_000,
                reused_from: None,
            },
        ];
        RunView::from_records("r-1", &records)
    }

    #[test]
    fn a_report_escapes_stage_text_and_loads_nothing() {
        let run = xss_run();
        let mut logs = BTreeMap::new();
        logs.insert(
            "build".to_string(),
            LogTail {
                lines: vec!["</pre><script>alert(2)</script>".into()],
                total: 1,
                bytes: 10,
            },
        );
        let html = report(&run, &logs, 5_000);
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert('x')&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("&lt;/pre&gt;&lt;script&gt;alert(2)"),
            "{html}"
        );
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>no</b>"));
        for stage in ["build", "test", "deploy"] {
            assert!(
                html.contains(&format!(r#"id="stage-{stage}""#)),
                "{stage} missing"
            );
            assert!(
                html.contains(&format!(r#"id="log-{stage}""#)),
                "{stage} log missing"
            );
        }
        // Nothing fetched from anywhere: no script, no external asset.
        for needle in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "<link",
            "@import",
            "url(http",
        ] {
            assert!(!html.contains(needle), "{needle} in the report");
        }
        assert!(html.contains("default-src 'none'"));
    }

    #[test]
    fn served_pages_escape_too() {
        let run = xss_run();
        let ctx = Ctx {
            user: "<i>me</i>",
            csrf: "c\"s",
        };
        let queued = Run {
            id: 7,
            pipeline: "app".into(),
            repository: "file:///r".into(),
            git_ref: "refs/heads/<x>".into(),
            branch: "<x>".into(),
            commit: "0123456789abcdef".into(),
            commit_messages: vec![],
            before: None,
            environment: "default".into(),
            trigger: "push".into(),
            source_run: None,
            needs_approval: false,
            status: RunStatus::Running,
            superseded_by: None,
            cancel_requested: false,
            journal_run_id: Some("r-1".into()),
            delivery: None,
            created_at_ms: 1,
            started_at_ms: Some(1),
            finished_at_ms: None,
            detail: None,
        };
        let html = super::run(&ctx, &queued, Some(&run), &BTreeMap::new(), None, 5_000);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<i>me</i>") && !html.contains("<x>"));
        // A running run's logs continue live from where the page stopped.
        assert!(
            html.contains(r#"data-log-src="/runs/7/logs/test?offset=0""#),
            "{html}"
        );
        let html = runs(&ctx, &[queued], &RunsQuery::default(), &["app".into()]);
        assert!(html.contains("&lt;x&gt;") && !html.contains("<x>"));
    }
}
