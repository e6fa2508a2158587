//! A strict stand-in for Azure Boards (Work Item Tracking REST, api-version
//! 7.1) on 127.0.0.1: a client replaces `https://dev.azure.com` with
//! [`Boards::url`]. It enforces the documented protocol and answers a client
//! that gets it wrong the way the service does, and records every request and
//! every accepted patch so tests can assert the exact updates.
//!
//! Paths (organization and project are free path segments; the project may be
//! left out; `workitems` matches in any case):
//! - `GET /{org}/{project}/_apis/wit/workitems/{id}?api-version=7.1[&$expand=Relations]`
//!   → 200 `{id, rev, fields, relations?, url}`; `relations` only with
//!   `$expand=Relations` or `All`, and, as the service does, left out when the
//!   item has none.
//! - `PATCH` the same path, `Content-Type: application/json-patch+json` (else
//!   415), a JSON Patch array applied atomically (all operations or none); each
//!   accepted patch adds exactly 1 to `rev` and answers 200 with the item.
//! - `GET|POST /{org}/{project}/_apis/wit/workItems/{id}/comments?api-version=7.0-preview.3`
//!   (a preview api-version is required): the list (`$top`, at most 200;
//!   `continuationToken`; `order=asc|desc`, newest first by default, as the
//!   service: a client must not assume the order) or a new
//!   comment `{"text"}`. A comment is a `System.History` entry and the other
//!   way round; adding one is a revision (`rev` + 1), as in the service.
//!
//! Authentication: `Authorization: Basic base64(":" + PAT)` (empty user), or
//! `Bearer <token>` when started with [`Boards::start_with_bearer`]. No or a
//! wrong credential → 401 (TF400813). A Basic credential that is not
//! base64 of `:PAT` (a user name given, no colon, not base64) → 203 with an
//! HTML sign-in page, which is what the service answers: a client must treat a
//! `text/html` body as an authentication error.
//!
//! Field paths: `/fields/<reference name>` for the fields in `FIELDS`
//! (others → 400 TF51535, the read-only ones → 400 TF401326); `/rev` and
//! `/id` only with `test`; `/relations/-` (add) and `/relations/{index}`
//! (remove, test). `test /rev` with another value → 412 TF26071.
//!
//! Workflow of `System.State`: New → Active; Active → New, Resolved;
//! Resolved → Active, Closed; Closed → Active; any → Removed; Removed → New;
//! staying in a state is allowed. Any other transition → 400 TF401320
//! (`InvalidListValue`); a value outside the list → 400 TF401320 "... is not in
//! the list of supported values". The transition is checked from the state the
//! item had before the patch.
//!
//! Links: `rel` is `ArtifactLink` (`vstfs:///` URL), `Hyperlink` (http or https
//! URL) or a work-item link type in `LINK_TYPES` (URL of an existing work item);
//! anything else → 400. Codes the service's documentation does not give, chosen
//! here: an unknown link type or a URL that does not fit the type → 400
//! `TF201036`, a link with the same `rel` and
//! URL (compared ignoring case) as one the item has → 400 `TF201035`, a failed
//! `test` of a field or relation → 412 `TF26071` like a stale `/rev`.
//!
//! Errors have the service's body: `{"$id":"1","innerException":null,
//! "message":"TF...: ...","typeName":"...","typeKey":"...","errorCode":0,
//! "eventId":3000}`.
//!
//! Cues: [`Boards::throttle_next`] (429 TF400733 with the rate-limit headers;
//! checked after authentication, as the service charges a user),
//! [`Boards::edit_before_next_patch`] (someone else's edit right before a PATCH
//! is evaluated, so the client's `test /rev` is stale).

use crate::standin::{Incoming, Outgoing, Req, Server, Throttled, epoch_secs, lock, now_rfc3339};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The states of the workflow, in order.
const STATES: [&str; 5] = ["New", "Active", "Resolved", "Closed", "Removed"];

/// Allowed transitions (besides staying and `any → Removed`).
const TRANSITIONS: [(&str, &str); 7] = [
    ("New", "Active"),
    ("Active", "New"),
    ("Active", "Resolved"),
    ("Resolved", "Active"),
    ("Resolved", "Closed"),
    ("Closed", "Active"),
    ("Removed", "New"),
];

/// Fields a patch may write.
const FIELDS: [&str; 17] = [
    "System.Title",
    "System.State",
    "System.Reason",
    "System.History",
    "System.Description",
    "System.AssignedTo",
    "System.Tags",
    "System.AreaPath",
    "System.IterationPath",
    "System.WorkItemType",
    "Microsoft.VSTS.Common.Priority",
    "Microsoft.VSTS.Common.ResolvedReason",
    "Microsoft.VSTS.Common.AcceptanceCriteria",
    "Microsoft.VSTS.Scheduling.StoryPoints",
    "Microsoft.VSTS.Build.IntegrationBuild",
    "Microsoft.VSTS.Build.FoundIn",
    "Microsoft.VSTS.Common.ValueArea",
];

/// Fields that exist but only the service writes.
const READ_ONLY: [&str; 8] = [
    "System.Id",
    "System.Rev",
    "System.TeamProject",
    "System.CreatedDate",
    "System.CreatedBy",
    "System.ChangedDate",
    "System.ChangedBy",
    "System.CommentCount",
];

/// Work-item link types (`rel`) besides `ArtifactLink` and `Hyperlink`.
const LINK_TYPES: [&str; 7] = [
    "System.LinkTypes.Hierarchy-Forward",
    "System.LinkTypes.Hierarchy-Reverse",
    "System.LinkTypes.Related",
    "System.LinkTypes.Dependency-Forward",
    "System.LinkTypes.Dependency-Reverse",
    "System.LinkTypes.Duplicate-Forward",
    "System.LinkTypes.Duplicate-Reverse",
];

/// The latest api-version the service knows; above it is out of range.
const LATEST: (u32, u32) = (7, 2);
/// The latest released (non-preview) api-version of the work items resource.
const WORK_ITEMS_RELEASED: (u32, u32) = (7, 1);
/// Most comments one page of the comments list holds.
const MAX_TOP: usize = 200;

const WIT: &str = "Microsoft.TeamFoundation.WorkItemTracking.Server";
const WEBAPI: &str = "Microsoft.VisualStudio.Services.WebApi";
const FRAMEWORK: &str = "Microsoft.TeamFoundation.Framework.Server";

#[derive(Clone)]
struct Comment {
    id: u32,
    text: String,
    created: String,
}

#[derive(Clone)]
struct Item {
    id: u32,
    rev: u32,
    fields: Map<String, Value>,
    relations: Vec<Value>,
    comments: Vec<Comment>,
}

impl Item {
    fn state(&self) -> &str {
        self.fields["System.State"].as_str().unwrap_or("")
    }

    /// The item as the service returns it, `url` naming `base`.
    fn to_json(&self, base: &str, relations: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "rev": self.rev,
            "fields": self.fields,
            "url": format!("{base}/_apis/wit/workItems/{}", self.id),
        });
        if relations && !self.relations.is_empty() {
            v["relations"] = json!(self.relations);
        }
        v
    }

    /// A new revision: `rev` + 1, `System.History` is `history` (or absent).
    fn revise(&mut self, history: Option<String>) {
        self.rev += 1;
        self.fields.insert("System.Rev".into(), json!(self.rev));
        self.fields
            .insert("System.ChangedDate".into(), json!(now_rfc3339()));
        match history {
            Some(text) => {
                self.comments.push(Comment {
                    id: self.comments.len() as u32 + 1,
                    text: text.clone(),
                    created: now_rfc3339(),
                });
                self.fields
                    .insert("System.CommentCount".into(), json!(self.comments.len()));
                self.fields.insert("System.History".into(), json!(text));
            }
            None => {
                self.fields.remove("System.History");
            }
        }
    }
}

struct State {
    pat: String,
    bearer: Option<String>,
    url: String,
    items: BTreeMap<u32, Item>,
    patches: Vec<(u32, Value)>,
    /// Requests still to throttle, and the `Retry-After` they get.
    throttle: (usize, u32),
    edit_before_patch: BTreeSet<u32>,
}

/// The server. Dropping it stops it.
pub struct Boards {
    state: Arc<Mutex<State>>,
    server: Server,
}

impl Boards {
    /// On a free port, accepting PAT `pat` (Basic, empty user).
    pub fn start(pat: &str) -> Self {
        Self::start_on("127.0.0.1:0", pat).expect("start the Azure Boards stand-in")
    }

    /// Like [`Boards::start`], also accepting `Authorization: Bearer <token>`
    /// (an Entra ID token).
    pub fn start_with_bearer(pat: &str, token: &str) -> Self {
        let boards = Self::start(pat);
        lock(&boards.state).bearer = Some(token.to_string());
        boards
    }

    /// On `addr` (e.g. `127.0.0.1:8095`, for the `boards` example).
    pub fn start_on(addr: &str, pat: &str) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State {
            pat: pat.to_string(),
            bearer: None,
            url,
            items: BTreeMap::new(),
            patches: vec![],
            throttle: (0, 0),
            edit_before_patch: BTreeSet::new(),
        }));
        let shared = state.clone();
        let server = Server::start(
            listener,
            "boards-standin",
            Arc::new(move |req: &Incoming| handle(&mut lock(&shared), req)),
        )?;
        Ok(Self { state, server })
    }

    /// `http://127.0.0.1:PORT`, what replaces `https://dev.azure.com`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Create work item `id` of type `kind` (e.g. `User Story`) at rev 1.
    /// Panics when `state` is not one of the workflow's states.
    pub fn add_item(&self, id: u32, kind: &str, title: &str, state: &str) {
        assert!(
            STATES.contains(&state),
            "work item state `{state}` is not one of {STATES:?}"
        );
        let now = now_rfc3339();
        let fields = json!({
            "System.Id": id,
            "System.Rev": 1,
            "System.AreaPath": "gantry",
            "System.TeamProject": "gantry",
            "System.IterationPath": "gantry",
            "System.WorkItemType": kind,
            "System.State": state,
            "System.Reason": if state == "New" { "New".to_string() } else { format!("Moved to state {state}") },
            "System.CreatedDate": now,
            "System.ChangedDate": now,
            "System.CommentCount": 0,
            "System.Title": title,
        });
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        let item = Item {
            id,
            rev: 1,
            fields,
            relations: vec![],
            comments: vec![],
        };
        lock(&self.state).items.insert(id, item);
    }

    /// Work item `id` as `GET ...?$expand=All` returns it (`relations` always
    /// present here, empty when none). Panics when there is no such item.
    pub fn item(&self, id: u32) -> Value {
        let state = lock(&self.state);
        let item = state
            .items
            .get(&id)
            .unwrap_or_else(|| panic!("the Boards stand-in has no work item {id}"));
        let mut v = item.to_json(&state.url, true);
        v["relations"] = json!(item.relations);
        v
    }

    /// Every `System.History` entry / comment of item `id`, oldest first.
    pub fn history(&self, id: u32) -> Vec<String> {
        lock(&self.state)
            .items
            .get(&id)
            .map(|i| i.comments.iter().map(|c| c.text.clone()).collect())
            .unwrap_or_default()
    }

    /// Every accepted PATCH body (the JSON Patch array) with its item id, in order.
    pub fn patches(&self) -> Vec<(u32, Value)> {
        lock(&self.state).patches.clone()
    }

    /// Every request, in order of arrival.
    pub fn requests(&self) -> Vec<Req> {
        self.server.requests()
    }

    /// The next `n` authenticated requests get 429 TF400733 with
    /// `Retry-After: retry_after_secs` and the `X-RateLimit-*` headers.
    pub fn throttle_next(&self, n: usize, retry_after_secs: u32) {
        lock(&self.state).throttle = (n, retry_after_secs);
    }

    /// The throttled requests and when the client came back after each.
    pub fn throttled(&self) -> Vec<Throttled> {
        self.server.throttled()
    }

    /// Right before the next PATCH of item `id` is evaluated, the server makes
    /// its own update of it (title changed, `rev` + 1), so that a `test /rev`
    /// from an earlier GET is stale.
    pub fn edit_before_next_patch(&self, id: u32) {
        lock(&self.state).edit_before_patch.insert(id);
    }
}

/// The service's error body.
fn error(status: u16, message: &str, namespace: &str, type_key: &str) -> Outgoing {
    Outgoing::json(
        status,
        &json!({
            "$id": "1",
            "innerException": null,
            "message": message,
            "typeName": format!("{namespace}.{type_key}, {namespace}"),
            "typeKey": type_key,
            "errorCode": 0,
            "eventId": 3000,
        }),
    )
}

fn bad_request(message: &str) -> Outgoing {
    error(400, message, WEBAPI, "VssPropertyValidationException")
}

fn rule_error(message: &str) -> Outgoing {
    error(400, message, WIT, "RuleValidationException")
}

fn not_found(id: u32) -> Outgoing {
    error(
        404,
        &format!(
            "TF401232: Work item {id} does not exist, or you do not have permissions to read it."
        ),
        WIT,
        "WorkItemUnauthorizedAccessException",
    )
}

fn stale(message: &str) -> Outgoing {
    error(412, message, WIT, "WorkItemRevisionMismatchException")
}

const STALE: &str = "TF26071: This work item has been changed by someone else since you opened it. You will need to refresh it and discard your changes.";

/// What the service answers a credential it cannot read: a sign-in page, 203.
const SIGN_IN_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Azure DevOps Services | Sign In</title></head>\n<body><p>Sign in to your account to continue to Azure DevOps.</p></body></html>\n";

fn unauthorized() -> Outgoing {
    error(
        401,
        "TF400813: The user '' is not authorized to access this resource.",
        FRAMEWORK,
        "UnauthorizedRequestException",
    )
    .header(
        "www-authenticate",
        "Bearer authorization_uri=https://login.microsoftonline.com/common",
    )
    .header("www-authenticate", "Basic realm=\"https://dev.azure.com/\"")
}

fn authenticate(state: &State, req: &Incoming) -> Result<(), Outgoing> {
    let Some(value) = req.header("authorization") else {
        return Err(unauthorized());
    };
    let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
    let credential = credential.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return match &state.bearer {
            Some(token) if token == credential => Ok(()),
            _ => Err(unauthorized()),
        };
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(unauthorized());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credential)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some(("", pat)) if pat == state.pat => Ok(()),
        Some(("", _)) => Err(unauthorized()),
        _ => Err(Outgoing::text(
            203,
            "text/html; charset=utf-8",
            SIGN_IN_PAGE,
        )),
    }
}

/// Which resource a path names.
enum Route {
    Item(u32),
    Comments(u32),
}

fn route(req: &Incoming) -> Option<Result<Route, Outgoing>> {
    let seg = req.segments();
    let rest = match seg.as_slice() {
        [_, _, "_apis", "wit", rest @ ..] | [_, "_apis", "wit", rest @ ..] => rest,
        _ => return None,
    };
    let (id, comments) = match rest {
        [wi, id] if wi.eq_ignore_ascii_case("workitems") => (*id, false),
        [wi, id, c]
            if wi.eq_ignore_ascii_case("workitems") && c.eq_ignore_ascii_case("comments") =>
        {
            (*id, true)
        }
        _ => return None,
    };
    Some(match id.parse::<u32>() {
        Ok(id) if comments => Ok(Route::Comments(id)),
        Ok(id) => Ok(Route::Item(id)),
        Err(_) => Err(bad_request(&format!(
            "The work item id '{id}' is not a valid integer."
        ))),
    })
}

/// `api-version` from the query or the `Accept` header: (major, minor, preview).
fn api_version(req: &Incoming) -> Result<(u32, u32, bool), Outgoing> {
    let from_accept = || {
        req.header("accept")?
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("api-version"))
            .map(|(_, v)| v.trim().to_string())
    };
    let Some(v) = req.param("api-version").or_else(from_accept) else {
        return Err(error(
            400,
            &format!(
                "No api-version was supplied for the \"{}\" request. The version must be supplied either as part of the Accept header (e.g. \"application/json; api-version=1.0\") or as a query parameter (e.g. \"?api-version=1.0\").",
                req.method
            ),
            WEBAPI,
            "VssVersionNotSpecifiedException",
        ));
    };
    let (number, preview) = match v.split_once('-') {
        Some((n, p)) => (n, Some(p)),
        None => (v.as_str(), None),
    };
    let parsed = number
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    let preview_ok = preview.is_none_or(|p| {
        p == "preview"
            || p.strip_prefix("preview.")
                .is_some_and(|r| r.parse::<u32>().is_ok())
    });
    match parsed {
        Some(n) if preview_ok => {
            if n > LATEST || n < (1, 0) {
                return Err(error(
                    400,
                    &format!(
                        "The requested REST API version of {number} is out of range for this server. The latest REST API version this server supports is {}.{}.",
                        LATEST.0, LATEST.1
                    ),
                    WEBAPI,
                    "VssVersionOutOfRangeException",
                ));
            }
            Ok((n.0, n.1, preview.is_some()))
        }
        _ => Err(error(
            400,
            &format!(
                "The api-version '{v}' is not valid: expected MAJOR.MINOR, optionally followed by -preview or -preview.N."
            ),
            WEBAPI,
            "VssInvalidApiVersionException",
        )),
    }
}

fn preview_required(version: (u32, u32)) -> Outgoing {
    let v = format!("{}.{}", version.0, version.1);
    error(
        400,
        &format!(
            "The requested version \"{v}\" of the resource is under preview. The -preview flag must be supplied in the api-version for such requests. For example: \"{v}-preview\""
        ),
        WEBAPI,
        "VssInvalidPreviewVersionException",
    )
}

fn method_not_allowed(req: &Incoming) -> Outgoing {
    error(
        405,
        &format!(
            "The requested resource does not support http method '{}'.",
            req.method
        ),
        WEBAPI,
        "VssMethodNotAllowedException",
    )
}

fn handle(state: &mut State, req: &Incoming) -> Outgoing {
    if let Err(out) = authenticate(state, req) {
        return out;
    }
    if state.throttle.0 > 0 {
        state.throttle.0 -= 1;
        return throttled(state.throttle.1);
    }
    let route = match route(req) {
        None => {
            return error(
                404,
                &format!(
                    "The resource at '{}' does not exist (the Boards stand-in serves work items and their comments).",
                    req.path
                ),
                WEBAPI,
                "VssResourceNotFoundException",
            );
        }
        Some(Err(out)) => return out,
        Some(Ok(r)) => r,
    };
    let (major, minor, preview) = match api_version(req) {
        Ok(v) => v,
        Err(out) => return out,
    };
    let base = project_base(state, req);
    match route {
        Route::Item(id) => {
            if !preview && (major, minor) > WORK_ITEMS_RELEASED {
                return preview_required((major, minor));
            }
            match req.method.as_str() {
                "GET" => get_item(state, req, id, &base),
                "PATCH" => patch_item(state, req, id, &base),
                _ => method_not_allowed(req),
            }
        }
        Route::Comments(id) => {
            if !preview {
                return preview_required((major, minor));
            }
            match req.method.as_str() {
                "GET" => list_comments(state, req, id, &base),
                "POST" => add_comment(state, req, id, &base),
                _ => method_not_allowed(req),
            }
        }
    }
}

/// `http://127.0.0.1:PORT/{org}/{project}` of this request.
fn project_base(state: &State, req: &Incoming) -> String {
    let seg = req.segments();
    let end = seg.iter().position(|s| *s == "_apis").unwrap_or(0);
    format!("{}/{}", state.url, seg[..end].join("/"))
}

fn throttled(retry_after: u32) -> Outgoing {
    let mut out = error(
        429,
        "TF400733: The request has been canceled: Request was blocked due to exceeding usage of resource 'WorkItemTracking' in namespace 'User'.",
        FRAMEWORK,
        "RequestBlockedException",
    )
    .header("retry-after", retry_after)
    .header("x-ratelimit-resource", "WorkItemTracking")
    .header("x-ratelimit-delay", format!("{retry_after}.000"))
    .header("x-ratelimit-limit", 200)
    .header("x-ratelimit-remaining", 0)
    .header("x-ratelimit-reset", epoch_secs() + u64::from(retry_after));
    out.throttled = Some(Duration::from_secs(retry_after.into()));
    out
}

fn get_item(state: &State, req: &Incoming, id: u32, base: &str) -> Outgoing {
    let Some(item) = state.items.get(&id) else {
        return not_found(id);
    };
    let expand = req.param("$expand").unwrap_or_default();
    let relations = expand.eq_ignore_ascii_case("relations") || expand.eq_ignore_ascii_case("all");
    Outgoing::json(200, &item.to_json(base, relations))
}

fn patch_item(state: &mut State, req: &Incoming, id: u32, base: &str) -> Outgoing {
    let media = req.media_type();
    if media != "application/json-patch+json" {
        return error(
            415,
            &format!(
                "The request indicated a Content-Type of \"{}\" for method type \"PATCH\" which is not supported. Valid content types for this method are: application/json-patch+json.",
                req.header("content-type").unwrap_or("")
            ),
            WEBAPI,
            "VssRequestContentTypeNotSupportedException",
        );
    }
    let ops = match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Array(ops)) if !ops.is_empty() => ops,
        _ => {
            return bad_request("You must pass a valid patch document in the body of the request.");
        }
    };
    if !state.items.contains_key(&id) {
        return not_found(id);
    }
    if state.edit_before_patch.remove(&id) {
        let item = state.items.get_mut(&id).expect("checked above");
        let title = format!(
            "{} (edited elsewhere)",
            item.fields["System.Title"].as_str().unwrap_or("")
        );
        item.fields.insert("System.Title".into(), json!(title));
        item.revise(None);
    }
    let existing: BTreeSet<u32> = state.items.keys().copied().collect();
    let mut item = state.items[&id].clone();
    let history = match apply(&mut item, &ops, &existing) {
        Ok(h) => h,
        Err(out) => return out,
    };
    item.revise(history.filter(|h| !h.is_empty()));
    let out = Outgoing::json(200, &item.to_json(base, true));
    state.items.insert(id, item);
    state.patches.push((id, Value::Array(ops)));
    out
}

/// Apply `ops` to `item` (a copy: the caller keeps it only when this succeeds);
/// returns the `System.History` text the patch adds, if any.
fn apply(
    item: &mut Item,
    ops: &[Value],
    existing: &BTreeSet<u32>,
) -> Result<Option<String>, Outgoing> {
    let before = item.state().to_string();
    let mut history = None;
    let mut reason_set = false;
    for (i, op) in ops.iter().enumerate() {
        let (Some(name), Some(path)) = (op["op"].as_str(), op["path"].as_str()) else {
            return Err(bad_request(&format!(
                "You must pass a valid patch document in the body of the request: operation {i} needs `op` and `path` strings."
            )));
        };
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        if !matches!(name, "add" | "replace" | "remove" | "test") {
            return Err(bad_request(&format!(
                "The patch operation '{name}' (operation {i}) is not supported: use add, replace, remove or test."
            )));
        }
        if path == "/rev" || path == "/id" {
            let current = if path == "/rev" { item.rev } else { item.id };
            if name != "test" {
                return Err(bad_request(&format!(
                    "'{path}' cannot be changed; only a `test` of it is allowed."
                )));
            }
            let given = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()));
            if given != Some(u64::from(current)) {
                return Err(stale(STALE));
            }
        } else if let Some(field) = path.strip_prefix("/fields/") {
            if READ_ONLY.contains(&field) && name != "test" {
                return Err(rule_error(&format!(
                    "TF401326: Invalid field status 'ReadOnly' for field '{field}'."
                )));
            }
            if !FIELDS.contains(&field) && !READ_ONLY.contains(&field) {
                return Err(bad_request(&format!("TF51535: Cannot find field {field}.")));
            }
            match name {
                "test" => {
                    if item.fields.get(field).unwrap_or(&Value::Null) != &value {
                        return Err(stale(&format!(
                            "TF26071: The test of '{path}' failed: the work item has {} there, not {value}. This work item has been changed by someone else since you opened it.",
                            item.fields.get(field).unwrap_or(&Value::Null)
                        )));
                    }
                }
                "remove" => {
                    if matches!(
                        field,
                        "System.Title" | "System.State" | "System.WorkItemType"
                    ) {
                        return Err(rule_error(&format!(
                            "TF401320: Rule Error for field {}. Error code: Required, InvalidEmpty.",
                            short(field)
                        )));
                    }
                    item.fields.remove(field);
                }
                _ => {
                    let value = set_field(field, value, &mut history)?;
                    reason_set |= field == "System.Reason";
                    item.fields.insert(field.to_string(), value);
                }
            }
        } else if path == "/relations/-" {
            if name != "add" {
                return Err(bad_request(&format!(
                    "'{name}' of '/relations/-' is not supported: `-` only appends (add)."
                )));
            }
            let relation = relation(value, existing)?;
            let duplicate = item.relations.iter().any(|r| {
                r["rel"]
                    .as_str()
                    .unwrap_or("")
                    .eq_ignore_ascii_case(relation["rel"].as_str().unwrap_or(""))
                    && r["url"]
                        .as_str()
                        .unwrap_or("")
                        .eq_ignore_ascii_case(relation["url"].as_str().unwrap_or(""))
            });
            if duplicate {
                return Err(bad_request(&format!(
                    "TF201035: The link already exists: work item {} already has a '{}' link to {}.",
                    item.id,
                    relation["rel"].as_str().unwrap_or(""),
                    relation["url"].as_str().unwrap_or("")
                )));
            }
            item.relations.push(relation);
        } else if let Some(index) = path.strip_prefix("/relations/") {
            let Some(index) = index
                .parse::<usize>()
                .ok()
                .filter(|i| *i < item.relations.len())
            else {
                return Err(bad_request(&format!(
                    "'{path}' names no relation: the work item has {} relations.",
                    item.relations.len()
                )));
            };
            match name {
                "remove" => {
                    item.relations.remove(index);
                }
                "test" => {
                    if item.relations[index] != value {
                        return Err(stale(STALE));
                    }
                }
                _ => {
                    return Err(bad_request(&format!(
                        "'{name}' of '{path}' is not supported: remove a relation and add another."
                    )));
                }
            }
        } else {
            return Err(bad_request(&format!(
                "The path '{path}' (operation {i}) is not valid: use /fields/<reference name>, /relations/- or /relations/<index>, /rev or /id."
            )));
        }
    }
    let after = item.state().to_string();
    if after != before {
        let allowed =
            after == "Removed" || TRANSITIONS.contains(&(before.as_str(), after.as_str()));
        if !allowed {
            return Err(rule_error(&format!(
                "TF401320: Rule Error for field State. Error code: InvalidListValue, HasValues, LimitedToValues, AllowsOldValue. The transition from '{before}' to '{after}' is not allowed."
            )));
        }
        if !reason_set {
            item.fields.insert(
                "System.Reason".into(),
                json!(format!("Moved to state {after}")),
            );
        }
    }
    if item
        .fields
        .get("System.Title")
        .and_then(Value::as_str)
        .is_none_or(|t| t.trim().is_empty())
    {
        return Err(rule_error(
            "TF401320: Rule Error for field Title. Error code: Required, InvalidEmpty.",
        ));
    }
    Ok(history)
}

/// `System.State` → `State`.
fn short(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

/// Check a value written to `field`; the value to store.
fn set_field(field: &str, value: Value, history: &mut Option<String>) -> Result<Value, Outgoing> {
    match field {
        "System.State" => {
            let given = value.as_str().unwrap_or_default();
            // The service matches allowed values ignoring case and stores its own spelling.
            match STATES.iter().find(|s| s.eq_ignore_ascii_case(given)) {
                Some(s) => Ok(json!(s)),
                None => Err(rule_error(&format!(
                    "TF401320: Rule Error for field State. Error code: InvalidListValue, HasValues, LimitedToValues, AllowsOldValue. The field 'State' contains the value '{}' that is not in the list of supported values.",
                    value.as_str().map_or(value.to_string(), str::to_string)
                ))),
            }
        }
        "System.History" => match value {
            Value::String(text) => {
                *history = Some(text.clone());
                Ok(Value::String(text))
            }
            other => Err(bad_request(&format!(
                "The value of System.History must be a string (HTML), not {other}."
            ))),
        },
        _ if value.is_null() => Err(bad_request(&format!(
            "The value for field {field} is missing: use `remove` to clear a field."
        ))),
        _ => Ok(value),
    }
}

/// Check the value of an `add /relations/-`; the relation to store.
fn relation(value: Value, existing: &BTreeSet<u32>) -> Result<Value, Outgoing> {
    let (Some(rel), Some(url)) = (value["rel"].as_str(), value["url"].as_str()) else {
        return Err(bad_request(
            "A relation needs `rel` and `url` strings (and optionally `attributes`).",
        ));
    };
    let attributes = match value.get("attributes") {
        None | Some(Value::Null) => json!({}),
        Some(a @ Value::Object(_)) => a.clone(),
        Some(other) => {
            return Err(bad_request(&format!(
                "The relation's `attributes` must be an object, not {other}."
            )));
        }
    };
    let lower = url.to_ascii_lowercase();
    if rel == "ArtifactLink" {
        if !lower.starts_with("vstfs:///") {
            return Err(bad_request(&format!(
                "TF201036: The artifact link URL '{url}' is not valid: an ArtifactLink names a vstfs:/// artifact."
            )));
        }
    } else if rel == "Hyperlink" {
        if !(lower.starts_with("http://") || lower.starts_with("https://")) || url.len() < 9 {
            return Err(bad_request(&format!(
                "TF201036: The hyperlink '{url}' is not valid: use an http or https URL."
            )));
        }
    } else if LINK_TYPES.contains(&rel) {
        let target = lower
            .rsplit_once("/_apis/wit/workitems/")
            .and_then(|(_, id)| id.parse::<u32>().ok());
        if !target.is_some_and(|t| existing.contains(&t)) {
            return Err(bad_request(&format!(
                "TF201036: The work item link URL '{url}' does not name an existing work item (.../_apis/wit/workItems/{{id}})."
            )));
        }
    } else {
        return Err(bad_request(&format!(
            "TF201036: The link type '{rel}' is not recognized: use ArtifactLink, Hyperlink or a work item link type such as System.LinkTypes.Related."
        )));
    }
    Ok(json!({ "rel": rel, "url": url, "attributes": attributes }))
}

fn comment_json(item: &Item, c: &Comment, base: &str) -> Value {
    json!({
        "workItemId": item.id,
        "id": c.id,
        "version": 1,
        "text": c.text,
        "createdBy": { "displayName": "gantry" },
        "createdDate": c.created,
        "modifiedDate": c.created,
        "url": format!("{base}/_apis/wit/workItems/{}/comments/{}", item.id, c.id),
    })
}

fn list_comments(state: &State, req: &Incoming, id: u32, base: &str) -> Outgoing {
    let Some(item) = state.items.get(&id) else {
        return not_found(id);
    };
    let top = match req.param("$top") {
        None => MAX_TOP,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => n,
            _ => {
                return bad_request(&format!(
                    "$top must be a number from 1 to {MAX_TOP}, not '{t}'."
                ));
            }
        },
    };
    // The token is opaque to clients; here it is the offset of the next page.
    let start = match req.param("continuationToken") {
        None => 0,
        Some(t) => match t.strip_prefix("c").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n <= item.comments.len() => n,
            _ => {
                return bad_request(&format!("The continuation token '{t}' is not valid."));
            }
        },
    };
    let mut ordered: Vec<&Comment> = item.comments.iter().collect();
    match req.param("order").as_deref() {
        Some("asc") => {}
        None | Some("desc") => ordered.reverse(),
        Some(o) => return bad_request(&format!("order must be asc or desc, not '{o}'.")),
    }
    let page: Vec<Value> = ordered
        .iter()
        .skip(start)
        .take(top)
        .map(|c| comment_json(item, c, base))
        .collect();
    let mut body = json!({
        "totalCount": item.comments.len(),
        "count": page.len(),
        "comments": page,
    });
    let next = start + top;
    if next < item.comments.len() {
        body["continuationToken"] = json!(format!("c{next}"));
        body["nextPage"] = json!(format!(
            "{base}/_apis/wit/workItems/{id}/comments?continuationToken=c{next}&$top={top}"
        ));
    }
    Outgoing::json(200, &body)
}

fn add_comment(state: &mut State, req: &Incoming, id: u32, base: &str) -> Outgoing {
    if req.media_type() != "application/json" {
        return error(
            415,
            &format!(
                "The request indicated a Content-Type of \"{}\" for method type \"POST\" which is not supported. Valid content types for this method are: application/json.",
                req.header("content-type").unwrap_or("")
            ),
            WEBAPI,
            "VssRequestContentTypeNotSupportedException",
        );
    }
    let Some(item) = state.items.get_mut(&id) else {
        return not_found(id);
    };
    let text = serde_json::from_slice::<Value>(&req.body)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_string));
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return bad_request("The comment needs a non-empty `text` string: {\"text\": \"...\"}.");
    };
    item.revise(Some(text));
    let comment = item.comments.last().expect("just added").clone();
    Outgoing::json(200, &comment_json(item, &comment, base))
}
