//! The dashboard: HTML pages of `gantry serve` ([`crate::web::pages`]) for
//! people with a browser, beside the JSON API.
//!
//! Same tokens as the API. A browser cannot add `Authorization: Bearer` to a
//! link or a form, so signing in (`POST /login` with the token) sets an
//! HttpOnly, SameSite=Strict cookie holding it: scripts cannot read it and
//! other sites' pages cannot send it. Every POST form also carries a CSRF
//! value derived from the token (HMAC), and a cross-origin `Origin` is
//! refused. Pages answer with a Content-Security-Policy that allows scripts
//! and styles from this origin only, so even a value that escaped escaping
//! could not run inline script. The API keeps its bearer tokens, and its
//! handlers never accept the cookie.

use super::Service;
use super::http::{ApiError, journal_dir, log_sse, record_decision, token_owner};
use crate::queue::{Decision, RunFilter, RunStatus};
use crate::web::{model, now_ms, pages};
use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::sync::Arc;

type Svc = State<Arc<Service>>;

/// The session cookie: the API token itself, HttpOnly, SameSite=Strict.
const COOKIE: &str = "gantry_session";
/// How many runs a pipeline's chart shows, and the failure-rate window.
const CHART_RUNS: u32 = 50;
const RATE_WINDOW: usize = 10;

pub(super) fn router() -> Router<Arc<Service>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/assets/dashboard.css", get(css))
        .route("/assets/dashboard.js", get(js))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/logs/{stage}", get(log))
        .route("/runs/{id}/report", get(report))
        .route("/runs/{id}/approve", post(approve))
        .route("/runs/{id}/reject", post(reject))
        .route("/environments", get(environments))
        .route("/pipelines/{name}", get(pipeline))
        .layer(middleware::from_fn(headers))
}

/// What every page answer carries: no caching of private pages, no framing,
/// scripts and styles from this origin only.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    // A page may set its own (the report: inline styles only).
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it, browsers send `Origin: null` on form
    // posts, and the same-origin check of forms needs the real one.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        pages::CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        pages::JS,
    )
        .into_response()
}

/// A page that could not be shown: its status and why, as HTML.
struct PageError(StatusCode, String);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = maud::html! {
            (maud::DOCTYPE)
            html { head { meta charset="utf-8"; title { "gantry: " (self.0.as_u16()) } link rel="stylesheet" href="/assets/dashboard.css"; }
                body { main { h1 { (self.0.canonical_reason().unwrap_or("error")) } p class="error" { (self.1) } p { a href="/runs" { "runs" } } } } }
        };
        (self.0, Html(body.into_string())).into_response()
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e.0, e.1)
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::from(e).into()
    }
}

/// The signed-in user: the token in the session cookie, its holder, and the
/// CSRF value its forms carry.
struct Session {
    user: String,
    csrf: String,
}

impl Session {
    fn ctx(&self) -> pages::Ctx<'_> {
        pages::Ctx {
            user: &self.user,
            csrf: &self.csrf,
        }
    }
}

/// The CSRF value of a session: HMAC-SHA256 keyed by its token, so that only
/// a page served to the token's holder knows it, and nothing is stored.
fn csrf_of(token: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"gantry dashboard csrf v1");
    hex::encode(mac.finalize().into_bytes())
}

/// The token in the request's session cookie.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse_encoded)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

/// The `Set-Cookie` value that signs a browser in with `token`:
/// percent-encoded, as a token may hold `;` or spaces.
fn session_cookie(token: &str, secure: bool) -> String {
    cookie::Cookie::build((COOKIE, token.to_string()))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(secure)
        .build()
        .encoded()
        .to_string()
}

fn session(svc: &Service, headers: &HeaderMap) -> Option<Session> {
    let token = cookie_token(headers)?;
    let user = token_owner(svc, &token)?;
    Some(Session {
        user,
        csrf: csrf_of(&token),
    })
}

/// The session, or (for a page) a redirect to the sign-in form that comes
/// back to `path`.
fn signed_in(svc: &Service, headers: &HeaderMap, path: &str) -> Result<Session, Redirect> {
    session(svc, headers).ok_or_else(|| {
        let next: String = form_urlencoded::byte_serialize(path.as_bytes()).collect();
        Redirect::to(&format!("/login?next={next}"))
    })
}

/// A POST form's session: signed in, same origin, and the CSRF value of
/// this session.
fn form_session(svc: &Service, headers: &HeaderMap, csrf: &str) -> Result<Session, PageError> {
    use subtle::ConstantTimeEq;
    let s = session(svc, headers).ok_or_else(|| {
        PageError(
            StatusCode::UNAUTHORIZED,
            "not signed in (or the token is no longer accepted): sign in again".into(),
        )
    })?;
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // Behind a reverse proxy, the host the browser asked for.
        let host = headers
            .get("x-forwarded-host")
            .or_else(|| headers.get(header::HOST))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let same = origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host);
        if !same {
            return Err(PageError(
                StatusCode::FORBIDDEN,
                format!("a form posted from another origin ({origin}) is refused"),
            ));
        }
    }
    if !bool::from(s.csrf.as_bytes().ct_eq(csrf.as_bytes())) {
        return Err(PageError(
            StatusCode::FORBIDDEN,
            "the form's CSRF value does not match this session: reload the page and try again"
                .into(),
        ));
    }
    Ok(s)
}

/// Only a path on this site: `/x`, never `//host` or `https://...`.
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") {
        next
    } else {
        "/runs"
    }
}

#[derive(Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_form(Query(q): Query<LoginQuery>) -> Html<String> {
    Html(pages::login(
        None,
        local_path(q.next.as_deref().unwrap_or("/runs")),
    ))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(State(svc): Svc, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let next = local_path(f.next.as_deref().unwrap_or("/runs")).to_string();
    let token = f.token.trim();
    let Some(user) = token_owner(&svc, token) else {
        return (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(Some("unknown token"), &next)),
        )
            .into_response();
    };
    svc.say(&format!("dashboard: {user} signed in"));
    // gantry serve speaks plain HTTP; behind a TLS proxy the cookie must
    // not travel unencrypted.
    let cookie = session_cookie(token, forwarded_https(&headers));
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(svc): Svc,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    form_session(&svc, &headers, &f.csrf)?;
    let gone = cookie::Cookie::build((COOKIE, ""))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build();
    Ok((
        [(header::SET_COOKIE, gone.to_string())],
        Redirect::to("/login"),
    )
        .into_response())
}

async fn runs(
    State(svc): Svc,
    headers: HeaderMap,
    Query(q): Query<pages::RunsQuery>,
) -> Result<Response, PageError> {
    let s = match signed_in(&svc, &headers, "/runs") {
        Ok(s) => s,
        Err(r) => return Ok(r.into_response()),
    };
    let empty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let status = match empty(&q.status) {
        Some(st) => Some(RunStatus::parse(&st).ok_or_else(|| {
            PageError(
                StatusCode::BAD_REQUEST,
                format!("`status={st}` is not a run status"),
            )
        })?),
        None => None,
    };
    let filter = RunFilter {
        pipeline: empty(&q.pipeline),
        branch: empty(&q.branch),
        status,
        limit: Some(200),
        ..Default::default()
    };
    let (list, mut pipelines) = svc
        .db(move |st| {
            let all = st.runs(&RunFilter {
                limit: Some(1000),
                ..Default::default()
            })?;
            Ok((
                st.runs(&filter)?,
                all.into_iter().map(|r| r.pipeline).collect::<Vec<_>>(),
            ))
        })
        .await?;
    pipelines.sort();
    pipelines.dedup();
    Ok(Html(pages::runs(&s.ctx(), &list, &q, &pipelines)).into_response())
}

async fn run(
    State(svc): Svc,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let s = match signed_in(&svc, &headers, &format!("/runs/{id}")) {
        Ok(s) => s,
        Err(r) => return Ok(r.into_response()),
    };
    let run = svc.db(move |st| st.run(id)).await?;
    let env = run.environment.clone();
    let approval = svc.db(move |st| st.approval(id, &env)).await?;
    let (view, logs) = match journal_dir(&svc, &run).await? {
        Some(dir) => {
            let view = model::RunView::load(&dir)?;
            let logs = model::log_tails(&dir, &view.stages)?;
            (Some(view), logs)
        }
        None => (None, Default::default()),
    };
    Ok(Html(pages::run(
        &s.ctx(),
        &run,
        view.as_ref(),
        &logs,
        approval.as_ref(),
        now_ms(),
    ))
    .into_response())
}

/// The run's self-contained report (as `gantry report` writes it), to save.
async fn report(
    State(svc): Svc,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let s = signed_in(&svc, &headers, &format!("/runs/{id}/report"));
    if let Err(r) = s {
        return Ok(r.into_response());
    }
    let run = svc.db(move |st| st.run(id)).await?;
    let dir = journal_dir(&svc, &run).await?.ok_or_else(|| {
        PageError(
            StatusCode::NOT_FOUND,
            format!("run {id} has no journal (yet) to report on"),
        )
    })?;
    let html = crate::web::report_html(&dir)?;
    Ok((
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"gantry-run-{id}.html\""),
            ),
        ],
        Html(html),
    )
        .into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    offset: Option<u64>,
}

async fn log(
    State(svc): Svc,
    headers: HeaderMap,
    Path((id, stage)): Path<(i64, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, PageError> {
    session(&svc, &headers)
        .ok_or_else(|| PageError(StatusCode::UNAUTHORIZED, "not signed in".into()))?;
    Ok(log_sse(svc, id, stage, q.offset.unwrap_or(0), true).await?)
}

#[derive(Deserialize)]
struct DecisionForm {
    csrf: String,
    environment: Option<String>,
    comment: Option<String>,
}

async fn approve(
    state: Svc,
    headers: HeaderMap,
    path: Path<i64>,
    form: Form<DecisionForm>,
) -> Result<Response, PageError> {
    decide(state, headers, path, form, Decision::Approve).await
}

async fn reject(
    state: Svc,
    headers: HeaderMap,
    path: Path<i64>,
    form: Form<DecisionForm>,
) -> Result<Response, PageError> {
    decide(state, headers, path, form, Decision::Reject).await
}

/// An approve or reject button: recorded with the signed-in user's name and
/// the time, like the API's.
async fn decide(
    State(svc): Svc,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<DecisionForm>,
    decision: Decision,
) -> Result<Response, PageError> {
    let s = form_session(&svc, &headers, &f.csrf)?;
    let comment = f.comment.filter(|c| !c.trim().is_empty());
    let environment = f.environment.filter(|e| !e.is_empty());
    record_decision(&svc, id, environment, comment, decision, s.user)
        .await
        .map_err(PageError::from)?;
    Ok(Redirect::to(&format!("/runs/{id}")).into_response())
}

async fn environments(State(svc): Svc, headers: HeaderMap) -> Result<Response, PageError> {
    let s = match signed_in(&svc, &headers, "/environments") {
        Ok(s) => s,
        Err(r) => return Ok(r.into_response()),
    };
    let (live, pending) = svc
        .db(|st| {
            let live = st.live(None)?;
            let mut pending = vec![];
            for a in st.pending_approvals()? {
                let run = st.run(a.run)?;
                // A decided run (rejected, superseded) no longer waits.
                if run.status == RunStatus::Queued {
                    pending.push((a, run));
                }
            }
            Ok((live, pending))
        })
        .await?;
    let mut envs = vec![];
    for d in live {
        let (pipeline, environment) = (d.pipeline.clone(), d.environment.clone());
        let (history, recent) = svc
            .db(move |st| {
                let mut history = st.deployment_history(&pipeline, &environment)?;
                history.truncate(20);
                let recent = st.runs(&RunFilter {
                    pipeline: Some(pipeline),
                    environment: Some(environment),
                    limit: Some(20),
                    ..Default::default()
                })?;
                Ok((history, recent))
            })
            .await?;
        envs.push(pages::EnvironmentView {
            pipeline: d.pipeline.clone(),
            environment: d.environment.clone(),
            health: last_gate(&svc, &recent).await,
            history,
            live: d,
        });
    }
    Ok(Html(pages::environments(&s.ctx(), &envs, &pending)).into_response())
}

/// The newest health-gate verdict among `runs` (newest first).
async fn last_gate(
    svc: &Service,
    runs: &[crate::queue::Run],
) -> Option<(i64, model::HealthVerdict)> {
    for run in runs {
        let Ok(Some(dir)) = journal_dir(svc, run).await else {
            continue;
        };
        let Ok(view) = model::RunView::load(&dir) else {
            continue;
        };
        if let Some(v) = view.stages.iter().rev().find_map(|s| s.health()) {
            return Some((run.id, v));
        }
    }
    None
}

async fn pipeline(
    State(svc): Svc,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let path: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
    let s = match signed_in(&svc, &headers, &format!("/pipelines/{path}")) {
        Ok(s) => s,
        Err(r) => return Ok(r.into_response()),
    };
    let n = name.clone();
    let runs = svc
        .db(move |st| {
            st.runs(&RunFilter {
                pipeline: Some(n),
                limit: Some(CHART_RUNS),
                ..Default::default()
            })
        })
        .await?;
    Ok(Html(pages::pipeline(&s.ctx(), &name, &runs, RATE_WINDOW)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path("/runs/3"), "/runs/3");
        assert_eq!(local_path("//evil.example/x"), "/runs");
        assert_eq!(local_path("/\\evil.example"), "/runs");
        assert_eq!(local_path("https://evil.example/"), "/runs");
    }

    #[test]
    fn any_token_survives_the_cookie() {
        let token = "a; b=c, d\"e 0123456789";
        let set = session_cookie(token, false);
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        assert!(!set.contains("Secure"), "{set}");
        let sent = set.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {sent}")).unwrap(),
        );
        assert_eq!(cookie_token(&headers).as_deref(), Some(token));
        assert!(session_cookie(token, true).contains("Secure"));
    }

    #[test]
    fn the_csrf_value_depends_on_the_token() {
        assert_eq!(csrf_of("a-token-0123456789"), csrf_of("a-token-0123456789"));
        assert_ne!(csrf_of("a-token-0123456789"), csrf_of("b-token-0123456789"));
        assert_eq!(csrf_of("x").len(), 64);
    }
}
