//! The HTTP side of `gantry serve` (axum): webhooks, the JSON API, health
//! and metrics. The API is described in `schema/gantry-serve.openapi.yaml`; keep
//! the two in step.
//!
//! Webhooks authenticate by their own secrets (GitHub's HMAC, Azure DevOps'
//! basic auth or header); the API by bearer tokens from the configuration.
//! A webhook is answered only after what it asked for is in the store.

use super::Service;
use super::intake;
use crate::queue::{ApprovalState, CancelOutcome, Decision, RunFilter, RunStatus};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

type Svc = State<Arc<Service>>;

/// GitHub caps a webhook payload at 25 MB.
const HOOK_BODY_LIMIT: usize = 25 * 1024 * 1024;

pub(super) fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/hooks/github/{repo}", post(github_hook))
        .route("/hooks/azure-devops/{repo}", post(azure_devops_hook))
        .route("/api/v1/runs", get(list_runs).post(trigger_run))
        .route("/api/v1/runs/{id}", get(show_run))
        .route("/api/v1/runs/{id}/logs/{stage}", get(stream_log))
        .route("/api/v1/runs/{id}/cancel", post(cancel_run))
        .route("/api/v1/runs/{id}/resume", post(resume_run))
        .route("/api/v1/runs/{id}/approve", post(approve))
        .route("/api/v1/runs/{id}/reject", post(reject))
        .route("/api/v1/runs/{id}/promote", post(promote))
        .route("/api/v1/environments", get(environments))
        // The dashboard's pages (not API: signed in by cookie, outside the
        // OpenAPI document).
        .merge(super::pages::router())
        .layer(DefaultBodyLimit::max(HOOK_BODY_LIMIT))
        .with_state(svc)
}

/// An API error: a status and a message, as `{"error": "..."}`.
pub(super) struct ApiError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast_ref::<crate::queue::Error>() {
            Some(crate::queue::Error::NoSuchRun(id)) => {
                ApiError(StatusCode::NOT_FOUND, format!("no run {id}"))
            }
            _ => ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        }
    }
}

fn bad(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

/// The caller's name, from `Authorization: Bearer <token>`.
fn caller(svc: &Service, headers: &HeaderMap) -> Result<String, ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            bad(
                StatusCode::UNAUTHORIZED,
                "this API needs `Authorization: Bearer <token>` (a token from the service's `api-tokens`)",
            )
        })?;
    token_owner(svc, given).ok_or_else(|| bad(StatusCode::UNAUTHORIZED, "unknown token"))
}

/// Whose API token `given` is, if it is one.
pub(super) fn token_owner(svc: &Service, given: &str) -> Option<String> {
    use subtle::ConstantTimeEq;
    // Compare with every token, in constant time each, so the answer's
    // timing says nothing about which prefix matched.
    let mut found = None;
    for t in &svc.tokens {
        if bool::from(t.value.as_bytes().ct_eq(given.trim().as_bytes())) {
            found = Some(t.name.clone());
        }
    }
    found
}

async fn healthz(State(svc): Svc) -> Response {
    match svc.db(|_| Ok(())).await {
        Ok(()) => {
            Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "error": format!("{e:#}") })),
        )
            .into_response(),
    }
}

async fn metrics(State(svc): Svc) -> Result<Response, ApiError> {
    let m = svc.db(|s| s.metrics()).await?;
    let by_status: Vec<(String, i64)> = m
        .runs_by_status
        .iter()
        .map(|(s, n)| (s.as_str().to_string(), *n as i64))
        .collect();
    let text = svc.metrics.render(&by_status, m.queue_depth as i64);
    Ok(([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response())
}

async fn github_hook(
    State(svc): Svc,
    Path(repo): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(i) = svc.repos.iter().position(|r| r.config.name == repo) else {
        return Err(bad(
            StatusCode::NOT_FOUND,
            format!("no repository `{repo}` is watched"),
        ));
    };
    let Some(secret) = &svc.repos[i].github_secret else {
        return Err(bad(
            StatusCode::NOT_FOUND,
            format!("repository `{repo}` takes no GitHub webhooks (no `github.secret`)"),
        ));
    };
    let delivery = crate::webhook::github::receive(secret, &headers, &body).map_err(|e| {
        svc.say(&format!("github delivery for {repo} refused: {e}"));
        bad(StatusCode::from_u16(e.status()).unwrap(), e.to_string())
    })?;
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let accepted = intake::accept(&svc, i, "github", event, delivery).await?;
    Ok(answer(accepted))
}

async fn azure_devops_hook(
    State(svc): Svc,
    Path(repo): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(i) = svc.repos.iter().position(|r| r.config.name == repo) else {
        return Err(bad(
            StatusCode::NOT_FOUND,
            format!("no repository `{repo}` is watched"),
        ));
    };
    let Some(auth) = &svc.repos[i].azure_devops else {
        return Err(bad(
            StatusCode::NOT_FOUND,
            format!("repository `{repo}` takes no Azure DevOps service hooks (no `azure-devops`)"),
        ));
    };
    let delivery = crate::webhook::azure_devops::receive(auth, &headers, &body).map_err(|e| {
        svc.say(&format!("azure-devops delivery for {repo} refused: {e}"));
        bad(StatusCode::from_u16(e.status()).unwrap(), e.to_string())
    })?;
    let accepted = intake::accept(&svc, i, "azure-devops", "git.push".into(), delivery).await?;
    Ok(answer(accepted))
}

fn answer(accepted: intake::Accepted) -> Response {
    let status = if accepted.outcome == "queued" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (status, Json(accepted)).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    pipeline: Option<String>,
    branch: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

async fn list_runs(
    State(svc): Svc,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    caller(&svc, &headers)?;
    let status = match q.status.as_deref() {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            bad(
                StatusCode::BAD_REQUEST,
                format!("`status={s}` is not a run status"),
            )
        })?),
        None => None,
    };
    let filter = RunFilter {
        pipeline: q.pipeline,
        branch: q.branch,
        status,
        limit: Some(q.limit.unwrap_or(50).min(1000)),
        ..Default::default()
    };
    let runs = svc.db(move |s| s.runs(&filter)).await?;
    Ok(Json(json!({ "runs": runs })).into_response())
}

async fn show_run(
    State(svc): Svc,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    caller(&svc, &headers)?;
    let run = svc.db(move |s| s.run(id)).await?;
    let approval = {
        let env = run.environment.clone();
        svc.db(move |s| s.approval(id, &env)).await?
    };
    let stages = match journal_dir(&svc, &run).await? {
        Some(dir) => stages_of(&dir)?,
        None => vec![],
    };
    Ok(Json(json!({ "run": run, "approval": approval, "stages": stages })).into_response())
}

/// The journal directory of a run that has started one.
pub(super) async fn journal_dir(
    svc: &Service,
    run: &crate::queue::Run,
) -> anyhow::Result<Option<crate::state_dir::PrivateDir>> {
    let Some(journal) = &run.journal_run_id else {
        return Ok(None);
    };
    let ws = super::dispatch::workspace_of(svc, run).await?;
    if !ws.exists() {
        return Ok(None);
    }
    let Some(state) = crate::state_dir::WorkspaceState::open(&ws, false)? else {
        return Ok(None);
    };
    let Some(runs) = state.runs(false)? else {
        return Ok(None);
    };
    crate::journal::run_dir(&runs, journal)
}

/// Each stage's state as the journal has it.
fn stages_of(dir: &crate::state_dir::PrivateDir) -> anyhow::Result<Vec<serde_json::Value>> {
    use crate::journal::Record;
    let records = crate::journal::Journal::read(dir)?;
    let mut stages: Vec<serde_json::Value> = vec![];
    for r in records {
        match r {
            Record::StageStarted {
                stage,
                attempt,
                ts_ms,
                ..
            } => {
                stages.retain(|s| s["name"] != stage.as_str());
                stages.push(json!({ "name": stage, "status": "running", "attempt": attempt, "started_ms": ts_ms }));
            }
            Record::StageFinished {
                stage,
                status,
                detail,
                duration_ms,
                outputs,
                ..
            } => {
                stages.retain(|s| s["name"] != stage.as_str());
                let outputs: serde_json::Map<String, serde_json::Value> =
                    outputs.into_iter().map(|(k, v)| (k, v.into())).collect();
                stages.push(json!({ "name": stage, "status": status, "detail": detail, "duration_ms": duration_ms, "outputs": outputs }));
            }
            _ => {}
        }
    }
    Ok(stages)
}

/// A stage's log as Server-Sent Events: every line so far, then new lines
/// as they are written, until the run ends (`event: end`).
async fn stream_log(
    State(svc): Svc,
    headers: HeaderMap,
    Path((id, stage)): Path<(i64, String)>,
) -> Result<Response, ApiError> {
    caller(&svc, &headers)?;
    log_sse(svc, id, stage, 0, false).await
}

/// The SSE stream of a stage's log from byte `offset` on (the dashboard
/// continues from where its page's copy ended); with `text_only`, each line
/// without its time, as the pages show it.
pub(super) async fn log_sse(
    svc: Arc<Service>,
    id: i64,
    stage: String,
    offset: u64,
    text_only: bool,
) -> Result<Response, ApiError> {
    if stage.is_empty() || stage.contains(['/', '\\']) || stage.starts_with('.') {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            format!("`{stage}` is not a stage name"),
        ));
    }
    let run = svc.db(move |s| s.run(id)).await?;
    let svc2 = svc.clone();
    struct Tail {
        svc: Arc<Service>,
        run: crate::queue::Run,
        stage: String,
        offset: u64,
        pending: String,
        done: bool,
        out: std::collections::VecDeque<Event>,
    }
    let tail = Tail {
        svc: svc2,
        run,
        stage,
        offset,
        pending: String::new(),
        done: false,
        out: Default::default(),
    };
    let stream = futures::stream::unfold(tail, move |mut t| async move {
        loop {
            if let Some(e) = t.out.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(e), t));
            }
            if t.done {
                return None;
            }
            // Whether the run had ended before this read: then what is read
            // now is all there will be.
            let id = t.run.id;
            let current = t.svc.db(move |s| s.run(id)).await.ok();
            let ended = current.as_ref().is_none_or(|r| r.status.is_final());
            if let Some(r) = current {
                t.run = r;
            }
            if let Ok(Some(dir)) = journal_dir(&t.svc, &t.run).await {
                let path = dir.path().join("logs").join(format!("{}.log", t.stage));
                if let Ok(bytes) = read_from(&path, t.offset) {
                    t.offset += bytes.len() as u64;
                    t.pending.push_str(&String::from_utf8_lossy(&bytes));
                    while let Some(i) = t.pending.find('\n') {
                        let line: String = t.pending.drain(..=i).collect();
                        let line = line.trim_end_matches('\n');
                        let data = if text_only {
                            crate::show::parse_log_line(line).1
                        } else {
                            line.to_string()
                        };
                        t.out.push_back(Event::default().data(data));
                    }
                }
            }
            if ended {
                if !t.pending.is_empty() {
                    let rest = std::mem::take(&mut t.pending);
                    let rest = if text_only {
                        crate::show::parse_log_line(&rest).1
                    } else {
                        rest
                    };
                    t.out.push_back(Event::default().data(rest));
                }
                t.out
                    .push_back(Event::default().event("end").data(t.run.status.as_str()));
                t.done = true;
                continue;
            }
            if t.out.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The bytes of `path` from `offset` on (none when it does not exist yet).
fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![];
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    /// A watched repository's name.
    repository: String,
    /// A branch (`main`) or a full ref (`refs/tags/v1`).
    #[serde(rename = "ref")]
    reference: String,
    /// The commit; default: what the ref points at now.
    commit: Option<String>,
}

async fn trigger_run(
    State(svc): Svc,
    headers: HeaderMap,
    Json(body): Json<TriggerBody>,
) -> Result<Response, ApiError> {
    let who = caller(&svc, &headers)?;
    let Some(i) = svc
        .repos
        .iter()
        .position(|r| r.config.name == body.repository)
    else {
        return Err(bad(
            StatusCode::NOT_FOUND,
            format!("no repository `{}` is watched", body.repository),
        ));
    };
    let reference = if body.reference.starts_with("refs/") {
        body.reference.clone()
    } else {
        format!("refs/heads/{}", body.reference)
    };
    let commit = match body.commit {
        Some(c) => c,
        None => crate::git::ls_remote(&svc.repos[i].config.url, intake::LS_REMOTE_TIMEOUT)
            .await
            .map_err(anyhow::Error::from)?
            .into_iter()
            .find(|r| r.name == reference)
            .map(|r| r.oid)
            .ok_or_else(|| {
                bad(
                    StatusCode::NOT_FOUND,
                    format!("{} has no {reference}", svc.repos[i].config.url),
                )
            })?,
    };
    if !(matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            format!("`{commit}` is not a full commit id"),
        ));
    }
    let event =
        crate::webhook::PushEvent::from_refs(&svc.repos[i].config.url, &reference, None, &commit);
    let new = intake::new_run(&svc, i, &event, "manual");
    let queued = svc.db(move |s| s.enqueue(&new)).await?;
    intake::after_enqueue(&svc, std::slice::from_ref(&queued));
    svc.say(&format!(
        "run {}: {reference} at {} queued by {who} (API)",
        queued.run(),
        &commit[..10]
    ));
    Ok((StatusCode::ACCEPTED, Json(json!({ "run": queued.run() }))).into_response())
}

async fn cancel_run(
    State(svc): Svc,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let who = caller(&svc, &headers)?;
    let outcome = svc.db(move |s| s.cancel(id)).await.map_err(|e| {
        match e.downcast_ref::<crate::queue::Error>() {
            Some(crate::queue::Error::NoSuchRun(_)) => ApiError::from(e),
            _ => bad(StatusCode::CONFLICT, format!("{e:#}")),
        }
    })?;
    if outcome == CancelOutcome::Requested
        && let Some(token) = svc.active.lock().unwrap().get(&id)
    {
        token.cancel();
    }
    svc.wake.notify_one();
    svc.say(&format!("run {id}: cancelled by {who} (API)"));
    Ok(Json(json!({ "run": id, "outcome": match outcome {
        CancelOutcome::Dequeued => "dequeued",
        CancelOutcome::Requested => "stopping",
    } }))
    .into_response())
}

/// Queue a cancelled run again; it resumes from its journal.
async fn resume_run(
    State(svc): Svc,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let who = caller(&svc, &headers)?;
    let run = svc.db(move |s| s.requeue(id)).await.map_err(|e| {
        match e.downcast_ref::<crate::queue::Error>() {
            Some(crate::queue::Error::NoSuchRun(_)) => ApiError::from(e),
            _ => bad(
                StatusCode::CONFLICT,
                format!("{e:#}; only a cancelled run resumes (a failed one is run again with POST /api/v1/runs)"),
            ),
        }
    })?;
    svc.wake.notify_one();
    svc.say(&format!("run {id}: queued again by {who} (API), to resume"));
    Ok((StatusCode::ACCEPTED, Json(json!({ "run": run }))).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// The environment; default: the run's.
    environment: Option<String>,
    comment: Option<String>,
}

async fn approve(
    state: Svc,
    headers: HeaderMap,
    path: Path<i64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    decide(state, headers, path, body, Decision::Approve).await
}

async fn reject(
    state: Svc,
    headers: HeaderMap,
    path: Path<i64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    decide(state, headers, path, body, Decision::Reject).await
}

/// An optional JSON body: empty is the default.
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| bad(StatusCode::BAD_REQUEST, format!("the request body: {e}")))
}

async fn decide(
    State(svc): Svc,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
    decision: Decision,
) -> Result<Response, ApiError> {
    let who = caller(&svc, &headers)?;
    let body: DecisionBody = optional_json(&body)?;
    let approval = record_decision(&svc, id, body.environment, body.comment, decision, who).await?;
    Ok(Json(json!({ "approval": approval })).into_response())
}

/// Decide run `id`'s approval for `environment` (default: the run's) as
/// `who`, and wake the dispatcher.
pub(super) async fn record_decision(
    svc: &Arc<Service>,
    id: i64,
    environment: Option<String>,
    comment: Option<String>,
    decision: Decision,
    who: String,
) -> Result<crate::queue::Approval, ApiError> {
    let run = svc.db(move |s| s.run(id)).await?;
    let env = environment.unwrap_or_else(|| run.environment.clone());
    let (env2, who2) = (env.clone(), who.clone());
    let approval = svc
        .db(move |s| s.decide_approval(id, &env2, decision, &who2, comment.as_deref()))
        .await
        .map_err(|e| match e.downcast_ref::<crate::queue::Error>() {
            Some(crate::queue::Error::NoSuchRun(_)) => ApiError::from(e),
            _ => bad(StatusCode::CONFLICT, format!("{e:#}")),
        })?;
    svc.wake.notify_one();
    svc.say(&format!(
        "run {id}: `{env}` {} by {who}",
        match approval.state {
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Pending => "pending",
        }
    ));
    Ok(approval)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    environment: String,
}

/// Promote a finished run by hand: queue its promotion into `environment`
/// (which must be the next in the chain); the caller's request counts as the
/// approval where one is required.
async fn promote(
    State(svc): Svc,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Json(body): Json<PromoteBody>,
) -> Result<Response, ApiError> {
    let who = caller(&svc, &headers)?;
    let run = svc.db(move |s| s.run(id)).await?;
    let queued = super::dispatch::queue_promotion(&svc, &run, &body.environment, Some(&who))
        .await
        .map_err(|e| bad(StatusCode::CONFLICT, format!("{e:#}")))?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "run": queued }))).into_response())
}

async fn environments(State(svc): Svc, headers: HeaderMap) -> Result<Response, ApiError> {
    caller(&svc, &headers)?;
    let live = svc.db(|s| s.live(None)).await?;
    Ok(Json(json!({ "environments": live })).into_response())
}

#[cfg(test)]
mod tests {
    /// The routes this file serves and the paths the OpenAPI document
    /// describes are the same set: the document cannot fall behind. The
    /// dashboard's pages (serve/pages.rs, merged into the router) are left
    /// out on purpose: they are HTML for browsers, not API.
    #[test]
    fn the_openapi_document_describes_every_route_and_no_other() {
        let source = include_str!("http.rs");
        let mut routes: Vec<String> = source
            .split(".route(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_string)
            .collect();
        routes.sort();
        routes.dedup();
        let doc: serde_json::Value =
            serde_saphyr::from_str(include_str!("../../../schema/gantry-serve.openapi.yaml"))
                .expect("the OpenAPI document is YAML");
        let mut paths: Vec<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(|p| p.replace("{repository}", "{repo}"))
            .collect();
        paths.sort();
        assert!(routes.len() >= 10, "{routes:?}");
        assert_eq!(routes, paths);
    }
}
