//! A strict stand-in for the GitHub Issues REST API (`X-GitHub-Api-Version:
//! 2022-11-28`) on 127.0.0.1: a client uses [`GithubIssues::url`] instead of
//! `https://api.github.com`. It answers mistakes the way GitHub does and
//! records every request and every accepted write.
//!
//! Enforced, in this order:
//! - a `User-Agent` header (403 with GitHub's plain-text message otherwise);
//! - `Authorization: Bearer <token>` or `token <token>` (401 `Requires
//!   authentication` without one, `Bad credentials` for another);
//! - `X-GitHub-Api-Version`, when sent, is `2022-11-28` (400 otherwise);
//! - the rate limits: every response after the User-Agent check carries
//!   `x-ratelimit-limit/remaining/reset/used/resource` (5000 an hour, `core`);
//!   on cue, a secondary limit (403 with `retry-after`) or an exhausted primary
//!   limit (403, `x-ratelimit-remaining: 0` until `x-ratelimit-reset`).
//!
//! Endpoints (`{o}/{r}` matched ignoring case; `/repositories/{repo id}/...`,
//! the form of GitHub's `Link` URLs, works too):
//! - `GET /repos/{o}/{r}/issues/{n}`;
//! - `PATCH /repos/{o}/{r}/issues/{n}` `{"state", "state_reason", "title",
//!   "body", "labels"}`: `state` is `open` or `closed`, `state_reason`
//!   `completed`, `not_planned`, `duplicate` or `reopened`; otherwise 422 with
//!   GitHub's validation error body (also, the stand-in's choice, for closing
//!   as `reopened`). As GitHub documents, `state_reason` is ignored unless
//!   `state` is given; closing without a reason is `completed`.
//! - `GET /repos/{o}/{r}/issues/{n}/comments?per_page=&page=` (30 a page by
//!   default, at most 100) with a `Link` header (`next`, `last`, `first`,
//!   `prev`) when there is more than one page;
//! - `POST .../comments` `{"body"}` → 201;
//! - `GET .../labels`; `POST .../labels` `{"labels": [...]}` (or a bare array;
//!   names or `{"name"}`) → 200 with all the issue's labels (adding one it has
//!   is no change).
//!
//! Unknown repositories and issues → 404 `{"message":"Not Found"}`; a body
//! that is not JSON → 400 `Problems parsing JSON`.

use crate::standin::{Incoming, Outgoing, Req, Server, Throttled, epoch_secs, lock, now_rfc3339};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The API version the stand-in (and the client) speak.
pub const API_VERSION: &str = "2022-11-28";
/// The primary rate limit, requests an hour.
const LIMIT: u64 = 5000;
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;
const DOCS: &str = "https://docs.github.com/rest";

#[derive(Clone)]
struct Comment {
    id: u64,
    body: String,
    created: String,
}

struct Issue {
    owner: String,
    repo: String,
    repo_id: u64,
    number: u64,
    title: String,
    body: Option<String>,
    state: String,
    state_reason: Option<String>,
    closed_at: Option<String>,
    labels: Vec<String>,
    comments: Vec<Comment>,
    created: String,
    updated: String,
}

struct State {
    token: String,
    url: String,
    /// By (owner, repo) in lower case, then number.
    issues: BTreeMap<(String, String), BTreeMap<u64, Issue>>,
    repo_ids: BTreeMap<(String, String), u64>,
    next_comment_id: u64,
    writes: Vec<(String, String, Value)>,
    /// Requests counted in this window, and when it resets (epoch seconds).
    used: u64,
    reset: u64,
    /// The primary limit is used up until `reset`.
    exhausted: bool,
    /// Requests still to refuse with a secondary limit, and their `retry-after`.
    secondary: (usize, u32),
}

/// The server. Dropping it stops it.
pub struct GithubIssues {
    state: Arc<Mutex<State>>,
    server: Server,
}

impl GithubIssues {
    /// On a free port, accepting `token`.
    pub fn start(token: &str) -> Self {
        Self::start_on("127.0.0.1:0", token).expect("start the GitHub Issues stand-in")
    }

    /// On `addr` (e.g. `127.0.0.1:8096`).
    pub fn start_on(addr: &str, token: &str) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            url,
            issues: BTreeMap::new(),
            repo_ids: BTreeMap::new(),
            next_comment_id: 1,
            writes: vec![],
            used: 0,
            reset: epoch_secs() + 3600,
            exhausted: false,
            secondary: (0, 0),
        }));
        let shared = state.clone();
        let server = Server::start(
            listener,
            "github-standin",
            Arc::new(move |req: &Incoming| handle(&mut lock(&shared), req)),
        )?;
        Ok(Self { state, server })
    }

    /// `http://127.0.0.1:PORT`, what replaces `https://api.github.com`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Create open issue `number` in `owner/repo` (the repository too, when new).
    pub fn add_issue(&self, owner: &str, repo: &str, number: u64, title: &str) {
        let mut state = lock(&self.state);
        let key = (owner.to_ascii_lowercase(), repo.to_ascii_lowercase());
        let next_id = 1000 + state.repo_ids.len() as u64;
        let repo_id = *state.repo_ids.entry(key.clone()).or_insert(next_id);
        let now = now_rfc3339();
        state.issues.entry(key).or_default().insert(
            number,
            Issue {
                owner: owner.into(),
                repo: repo.into(),
                repo_id,
                number,
                title: title.into(),
                body: None,
                state: "open".into(),
                state_reason: None,
                closed_at: None,
                labels: vec![],
                comments: vec![],
                created: now.clone(),
                updated: now,
            },
        );
    }

    /// A comment on an issue written by someone else (not recorded as a write).
    /// Panics when there is no such issue.
    pub fn add_comment(&self, owner: &str, repo: &str, number: u64, body: &str) {
        let mut state = lock(&self.state);
        let id = state.next_comment_id;
        state.next_comment_id += 1;
        let key = (owner.to_ascii_lowercase(), repo.to_ascii_lowercase());
        let issue = state
            .issues
            .get_mut(&key)
            .and_then(|i| i.get_mut(&number))
            .unwrap_or_else(|| panic!("the GitHub stand-in has no issue {owner}/{repo}#{number}"));
        issue.comments.push(Comment {
            id,
            body: body.into(),
            created: now_rfc3339(),
        });
    }

    /// Issue `owner/repo#number` in short: `{number, title, state,
    /// state_reason, labels: [names], comments: [bodies, oldest first]}`.
    /// Panics when there is no such issue.
    pub fn issue(&self, owner: &str, repo: &str, number: u64) -> Value {
        let state = lock(&self.state);
        let key = (owner.to_ascii_lowercase(), repo.to_ascii_lowercase());
        let issue = state
            .issues
            .get(&key)
            .and_then(|i| i.get(&number))
            .unwrap_or_else(|| panic!("the GitHub stand-in has no issue {owner}/{repo}#{number}"));
        json!({
            "number": issue.number,
            "title": issue.title,
            "state": issue.state,
            "state_reason": issue.state_reason,
            "labels": issue.labels,
            "comments": issue.comments.iter().map(|c| c.body.clone()).collect::<Vec<_>>(),
        })
    }

    /// Every accepted write: (method, path without the query, JSON body), in order.
    pub fn writes(&self) -> Vec<(String, String, Value)> {
        lock(&self.state).writes.clone()
    }

    /// Every request, in order of arrival.
    pub fn requests(&self) -> Vec<Req> {
        self.server.requests()
    }

    /// The next `n` requests (after authentication) get GitHub's secondary rate
    /// limit: 403 with `retry-after: retry_after_secs`.
    pub fn secondary_limit_next(&self, n: usize, retry_after_secs: u32) {
        lock(&self.state).secondary = (n, retry_after_secs);
    }

    /// Use up the primary rate limit: `x-ratelimit-remaining: 0` and every
    /// request refused with 403 until `x-ratelimit-reset`, `reset_in_secs`
    /// from now; then a fresh window.
    pub fn exhaust_primary(&self, reset_in_secs: u32) {
        let mut state = lock(&self.state);
        state.exhausted = true;
        state.used = LIMIT;
        state.reset = epoch_secs() + u64::from(reset_in_secs);
    }

    /// The requests refused by a rate limit and when the client came back.
    pub fn throttled(&self) -> Vec<Throttled> {
        self.server.throttled()
    }
}

fn message(status: u16, message: &str, docs: &str) -> Outgoing {
    Outgoing::json(
        status,
        &json!({ "message": message, "documentation_url": docs, "status": status.to_string() }),
    )
}

fn not_found() -> Outgoing {
    message(404, "Not Found", DOCS)
}

fn validation_failed(field: &str, value: &Value, docs: &str) -> Outgoing {
    Outgoing::json(
        422,
        &json!({
            "message": "Validation Failed",
            "errors": [{ "value": value, "resource": "Issue", "field": field, "code": "invalid" }],
            "documentation_url": docs,
            "status": "422",
        }),
    )
}

const USER_AGENT_REQUIRED: &str = "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.\n";

fn handle(state: &mut State, req: &Incoming) -> Outgoing {
    if req
        .header("user-agent")
        .is_none_or(|ua| ua.trim().is_empty())
    {
        return Outgoing::text(403, "text/plain; charset=utf-8", USER_AGENT_REQUIRED);
    }
    let out = checked(state, req);
    let remaining = LIMIT.saturating_sub(state.used);
    out.header("x-ratelimit-limit", LIMIT)
        .header("x-ratelimit-remaining", remaining)
        .header("x-ratelimit-reset", state.reset)
        .header("x-ratelimit-used", state.used)
        .header("x-ratelimit-resource", "core")
}

/// Everything after the User-Agent check; the caller adds the rate-limit headers.
fn checked(state: &mut State, req: &Incoming) -> Outgoing {
    let now = epoch_secs();
    if now >= state.reset {
        state.used = 0;
        state.exhausted = false;
        state.reset = now + 3600;
    }
    let token = req.header("authorization").and_then(|v| {
        let (scheme, t) = v.split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
            .then(|| t.trim())
    });
    match token {
        _ if req.header("authorization").is_none() => {
            return message(401, "Requires authentication", DOCS);
        }
        Some(t) if t == state.token => {}
        _ => return message(401, "Bad credentials", DOCS),
    }
    if let Some(v) = req.header("x-github-api-version")
        && v != API_VERSION
    {
        return message(
            400,
            &format!(
                "Unsupported 'X-GitHub-Api-Version' header: {v}. The supported values are: {API_VERSION}."
            ),
            "https://docs.github.com/rest/about-the-rest-api/api-versions",
        );
    }
    if state.exhausted {
        let mut out = message(
            403,
            "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000.",
            "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-primary-rate-limits",
        );
        out.throttled = Some(Duration::from_secs(state.reset.saturating_sub(now)));
        return out;
    }
    if state.secondary.0 > 0 {
        state.secondary.0 -= 1;
        let secs = state.secondary.1;
        let mut out = message(
            403,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000.",
            "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
        )
        .header("retry-after", secs);
        out.throttled = Some(Duration::from_secs(secs.into()));
        return out;
    }
    state.used += 1;
    route(state, req)
}

fn route(state: &mut State, req: &Incoming) -> Outgoing {
    let seg = req.segments();
    let (key, rest) = match seg.as_slice() {
        ["repos", o, r, "issues", rest @ ..] => {
            ((o.to_ascii_lowercase(), r.to_ascii_lowercase()), rest)
        }
        ["repositories", id, "issues", rest @ ..] => {
            let found = state
                .repo_ids
                .iter()
                .find(|(_, v)| v.to_string() == *id)
                .map(|(k, _)| k.clone());
            match found {
                Some(k) => (k, rest),
                None => return not_found(),
            }
        }
        _ => return not_found(),
    };
    let (number, sub) = match rest {
        [n] => (*n, None),
        [n, sub @ ("comments" | "labels")] => (*n, Some(*sub)),
        _ => return not_found(),
    };
    let Some(number) = number.parse::<u64>().ok() else {
        return not_found();
    };
    let body = if matches!(req.method.as_str(), "POST" | "PATCH") {
        match serde_json::from_slice::<Value>(&req.body) {
            Ok(v) => v,
            Err(_) => return message(400, "Problems parsing JSON", DOCS),
        }
    } else {
        Value::Null
    };
    let url = state.url.clone();
    let Some(issue) = state.issues.get_mut(&key).and_then(|i| i.get_mut(&number)) else {
        return not_found();
    };
    let out = match (req.method.as_str(), sub) {
        ("GET", None) => Outgoing::json(200, &issue_json(issue, &url)),
        ("PATCH", None) => update_issue(issue, &body, &url),
        ("GET", Some("comments")) => list_comments(issue, req, &url),
        ("POST", Some("comments")) => {
            let id = state.next_comment_id;
            let out = add_comment(issue, &body, id, &url);
            if out.status == 201 {
                state.next_comment_id += 1;
            }
            out
        }
        ("GET", Some("labels")) => Outgoing::json(200, &labels_json(issue, &url)),
        ("POST", Some("labels")) => add_labels(issue, &body, &url),
        _ => message(404, "Not Found", DOCS),
    };
    if matches!(out.status, 200 | 201) && req.method != "GET" {
        state
            .writes
            .push((req.method.clone(), req.path.clone(), body));
    }
    out
}

fn repo_url(issue: &Issue, base: &str) -> String {
    format!("{base}/repos/{}/{}", issue.owner, issue.repo)
}

fn label_json(issue: &Issue, name: &str, base: &str) -> Value {
    json!({
        "id": 1 + name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into())) % 1_000_000,
        "name": name,
        "url": format!("{}/labels/{name}", repo_url(issue, base)),
        "color": "ededed",
        "default": false,
        "description": null,
    })
}

fn labels_json(issue: &Issue, base: &str) -> Value {
    Value::Array(
        issue
            .labels
            .iter()
            .map(|l| label_json(issue, l, base))
            .collect(),
    )
}

fn issue_json(issue: &Issue, base: &str) -> Value {
    let url = format!("{}/issues/{}", repo_url(issue, base), issue.number);
    json!({
        "url": url,
        "comments_url": format!("{url}/comments"),
        "labels_url": format!("{url}/labels{{/name}}"),
        "html_url": format!("https://github.com/{}/{}/issues/{}", issue.owner, issue.repo, issue.number),
        "id": issue.repo_id * 100_000 + issue.number,
        "number": issue.number,
        "title": issue.title,
        "body": issue.body,
        "user": { "login": "octocat", "type": "User" },
        "labels": labels_json(issue, base),
        "state": issue.state,
        "state_reason": issue.state_reason,
        "locked": false,
        "comments": issue.comments.len(),
        "created_at": issue.created,
        "updated_at": issue.updated,
        "closed_at": issue.closed_at,
    })
}

fn comment_json(issue: &Issue, c: &Comment, base: &str) -> Value {
    let repo = repo_url(issue, base);
    json!({
        "id": c.id,
        "url": format!("{repo}/issues/comments/{}", c.id),
        "html_url": format!("https://github.com/{}/{}/issues/{}#issuecomment-{}", issue.owner, issue.repo, issue.number, c.id),
        "issue_url": format!("{repo}/issues/{}", issue.number),
        "body": c.body,
        "user": { "login": "octocat", "type": "User" },
        "created_at": c.created,
        "updated_at": c.created,
    })
}

fn update_issue(issue: &mut Issue, body: &Value, base: &str) -> Outgoing {
    const DOC: &str = "https://docs.github.com/rest/issues/issues#update-an-issue";
    if !body.is_object() {
        return message(400, "Problems parsing JSON", DOC);
    }
    let state = &body["state"];
    let new_state = match state {
        Value::Null => None,
        Value::String(s) if s == "open" || s == "closed" => Some(s.clone()),
        other => return validation_failed("state", other, DOC),
    };
    let reason = &body["state_reason"];
    let new_reason = match reason {
        Value::Null => None,
        Value::String(s)
            if ["completed", "not_planned", "duplicate", "reopened"].contains(&s.as_str()) =>
        {
            Some(s.clone())
        }
        other => return validation_failed("state_reason", other, DOC),
    };
    if new_state.as_deref() == Some("closed") && new_reason.as_deref() == Some("reopened") {
        return validation_failed("state_reason", reason, DOC);
    }
    let title = match &body["title"] {
        Value::Null => None,
        Value::String(t) if !t.trim().is_empty() => Some(t.clone()),
        other => return validation_failed("title", other, DOC),
    };
    let labels = match &body["labels"] {
        Value::Null => None,
        v => match label_names(v) {
            Some(l) => Some(l),
            None => return validation_failed("labels", v, DOC),
        },
    };
    if let Some(t) = title {
        issue.title = t;
    }
    if let Some(b) = body["body"].as_str() {
        issue.body = Some(b.to_string());
    }
    if let Some(l) = labels {
        issue.labels.clear();
        for name in l {
            if !issue.labels.contains(&name) {
                issue.labels.push(name);
            }
        }
    }
    match new_state.as_deref() {
        Some("closed") => {
            if issue.state != "closed" {
                issue.closed_at = Some(now_rfc3339());
            }
            issue.state = "closed".into();
            issue.state_reason = Some(new_reason.unwrap_or_else(|| "completed".into()));
        }
        Some(_) => {
            if issue.state == "closed" {
                issue.state_reason = Some("reopened".into());
            }
            issue.state = "open".into();
            issue.closed_at = None;
        }
        // GitHub ignores a state_reason without a state.
        None => {}
    }
    issue.updated = now_rfc3339();
    Outgoing::json(200, &issue_json(issue, base))
}

/// Label names from `["a", {"name": "b"}]`; `None` when malformed.
fn label_names(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|l| {
            l.as_str()
                .or_else(|| l["name"].as_str())
                .filter(|n| !n.trim().is_empty())
                .map(str::to_string)
        })
        .collect()
}

fn add_labels(issue: &mut Issue, body: &Value, base: &str) -> Outgoing {
    const DOC: &str = "https://docs.github.com/rest/issues/labels#add-labels-to-an-issue";
    let list = if body.is_array() {
        body
    } else {
        &body["labels"]
    };
    let Some(names) = label_names(list).filter(|n| !n.is_empty()) else {
        return message(
            422,
            "Invalid request.\n\nNo subschema in \"anyOf\" matched.\n\"labels\" wasn't supplied.",
            DOC,
        );
    };
    for name in names {
        if !issue.labels.contains(&name) {
            issue.labels.push(name);
        }
    }
    issue.updated = now_rfc3339();
    Outgoing::json(200, &labels_json(issue, base))
}

fn add_comment(issue: &mut Issue, body: &Value, id: u64, base: &str) -> Outgoing {
    const DOC: &str = "https://docs.github.com/rest/issues/comments#create-an-issue-comment";
    let Some(text) = body["body"].as_str() else {
        return message(422, "Invalid request.\n\n\"body\" wasn't supplied.", DOC);
    };
    if text.trim().is_empty() {
        return validation_failed("body", &body["body"], DOC);
    }
    let comment = Comment {
        id,
        body: text.to_string(),
        created: now_rfc3339(),
    };
    issue.comments.push(comment.clone());
    issue.updated = now_rfc3339();
    let v = comment_json(issue, &comment, base);
    let location = v["url"].as_str().unwrap_or_default().to_string();
    Outgoing::json(201, &v).header("location", location)
}

fn list_comments(issue: &Issue, req: &Incoming, base: &str) -> Outgoing {
    // GitHub ignores values it cannot read and caps per_page at 100.
    let per_page = req
        .param("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p > 0)
        .map_or(DEFAULT_PER_PAGE, |p| p.min(MAX_PER_PAGE));
    let page = req
        .param("page")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p > 0)
        .unwrap_or(1);
    let total = issue.comments.len();
    let items: Vec<Value> = issue
        .comments
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(|c| comment_json(issue, c, base))
        .collect();
    let last = total.div_ceil(per_page).max(1);
    let mut out = Outgoing::json(200, &Value::Array(items));
    // GitHub's Link URLs name the repository by id.
    let link = |p: usize, rel: &str| {
        format!(
            "<{base}/repositories/{}/issues/{}/comments?per_page={per_page}&page={p}>; rel=\"{rel}\"",
            issue.repo_id, issue.number
        )
    };
    let mut links = vec![];
    if page > 1 {
        links.push(link(page - 1, "prev"));
    }
    if page < last {
        links.push(link(page + 1, "next"));
        links.push(link(last, "last"));
    }
    if page > 1 {
        links.push(link(1, "first"));
    }
    if !links.is_empty() {
        out = out.header("link", links.join(", "));
    }
    out
}
