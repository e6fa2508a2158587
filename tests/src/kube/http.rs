//! HTTP: authentication, routing, the REST verbs, and watch streams.

use super::resources::{self, NAMESPACES, RESOURCES};
use super::store::{Key, Selector, Store};
use super::write::{self, ApiError, Change, Request};
use super::{Shared, TOKEN, lock};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The one handler: every path is routed here (the paths are data, not code).
pub(crate) async fn handle(
    State(sh): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = header_str(&headers, header::CONTENT_TYPE);
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    lock(&sh.requests).push((
        method.to_string(),
        path_and_query.to_string(),
        content_type.clone(),
    ));
    if header_str(&headers, header::AUTHORIZATION) != format!("Bearer {TOKEN}") {
        return error(ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let query = Query::parse(uri.query().unwrap_or(""));
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let ctx = Ctx {
        sh: &sh,
        method: &method,
        query: &query,
        headers: &headers,
        content_type: &content_type,
        body: &body,
    };
    match route(&segments) {
        Route::Doc(doc) => match doc(&sh.addr) {
            Some(v) => json_response(200, &v),
            None => not_found_path(),
        },
        Route::Resource(target) => ctx.resource(target).unwrap_or_else(error),
        Route::NotFound => not_found_path(),
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

type DocFn = Box<dyn Fn(&str) -> Option<Value>>;

enum Route {
    /// A fixed document (version, discovery, OpenAPI), given the server address.
    Doc(DocFn),
    Resource(Target),
    NotFound,
}

/// A request for objects of one type.
struct Target {
    res: usize,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(seg: &[&str]) -> Route {
    let owned = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match seg {
        ["version"] => Route::Doc(Box::new(|_| Some(resources::version()))),
        ["api"] => Route::Doc(Box::new(|addr| Some(resources::api_versions(addr)))),
        ["apis"] => Route::Doc(Box::new(|_| Some(resources::group_list()))),
        ["api", v] => {
            let v = v.to_string();
            Route::Doc(Box::new(move |_| resources::resource_list("", &v)))
        }
        ["apis", g, v] => {
            let (g, v) = (g.to_string(), v.to_string());
            Route::Doc(Box::new(move |_| resources::resource_list(&g, &v)))
        }
        ["openapi", "v3"] => Route::Doc(Box::new(|_| Some(resources::openapi_index()))),
        ["openapi", "v3", rest @ ..] => {
            let path = owned(rest).join("/");
            Route::Doc(Box::new(move |_| resources::openapi_doc(&path)))
        }
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let s = |x: Option<&&str>| x.map(|x| x.to_string());
    // `namespaces/{ns}/{plural}/...` unless `{plural}` is not a type, in which case it
    // is a subresource of the namespace object itself.
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some(res) = resources::find(group, version, plural)
        && RESOURCES[res].namespaced
        && tail.len() <= 2
    {
        return Route::Resource(Target {
            res,
            namespace: Some(ns.to_string()),
            name: s(tail.first()),
            subresource: s(tail.get(1)),
        });
    }
    match rest {
        [plural, tail @ ..] if tail.len() <= 2 => match resources::find(group, version, plural) {
            Some(res) => Route::Resource(Target {
                res,
                namespace: None,
                name: s(tail.first()),
                subresource: s(tail.get(1)),
            }),
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

/// Decoded query parameters (the last value of a repeated one wins).
pub(crate) struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: &str) -> Self {
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    fn selector(&self, k: &str) -> Result<Selector, ApiError> {
        Selector::parse(self.get(k).unwrap_or_default()).map_err(ApiError::bad_request)
    }
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: u16, v: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .expect("static response parts are valid")
}

fn error(e: ApiError) -> Response {
    json_response(e.code, &e.status())
}

/// What the real server answers for paths it does not serve at all.
fn not_found_path() -> Response {
    error(ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    ))
}

struct Ctx<'a> {
    sh: &'a Arc<Shared>,
    method: &'a Method,
    query: &'a Query,
    headers: &'a HeaderMap,
    content_type: &'a str,
    body: &'a Bytes,
}

impl Ctx<'_> {
    fn resource(&self, t: Target) -> Result<Response, ApiError> {
        let r = &RESOURCES[t.res];
        if r.namespaced != t.namespace.is_some() && (t.name.is_some() || !r.namespaced) {
            return Ok(not_found_path());
        }
        let status = match t.subresource.as_deref() {
            None => false,
            Some("status") if r.has_status => true,
            Some("log") if t.res == resources::PODS && self.method == Method::GET => {
                let key = (
                    t.res,
                    t.namespace.clone().unwrap_or_default(),
                    t.name.clone().unwrap_or_default(),
                );
                return super::jobs::pod_log(self.sh, &key, self.query.flag("follow"));
            }
            Some(_) => return Ok(not_found_path()),
        };
        let namespace = t.namespace.clone().unwrap_or_default();
        match (self.method.as_str(), &t.name) {
            ("GET", _) if self.query.flag("watch") => watch(self.sh.clone(), &t, self.query),
            ("GET", None) => Ok(json_response(200, &self.list(&t)?)),
            ("GET", Some(name)) => {
                let store = lock(&self.sh.store);
                match store.get(&(t.res, namespace, name.clone())) {
                    Some(obj) => Ok(json_response(200, obj)),
                    None => Err(ApiError::not_found(r, name)),
                }
            }
            ("POST", None) => self.create(t.res, namespace),
            ("PUT", Some(name)) => {
                let obj = self.object_body()?;
                self.write(
                    (t.res, namespace, name.clone()),
                    status,
                    Change::Object(obj),
                )
            }
            ("PATCH", Some(name)) => {
                let change = self.patch_change()?;
                self.write((t.res, namespace, name.clone()), status, change)
            }
            ("DELETE", Some(name)) => self.delete((t.res, namespace, name.clone())),
            ("DELETE", None) => self.delete_collection(&t),
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )),
        }
    }

    fn list(&self, t: &Target) -> Result<Value, ApiError> {
        let r = &RESOURCES[t.res];
        let labels = self.query.selector("labelSelector")?;
        let fields = self.query.selector("fieldSelector")?;
        let store = lock(&self.sh.store);
        let items: Vec<&Value> = store
            .list(t.res, t.namespace.as_deref())
            .into_iter()
            .map(|(_, o)| o)
            .filter(|o| labels.matches_labels(o) && fields.matches_fields(o))
            .collect();
        // Paging: the continue token is the offset (the list is not a snapshot).
        let start = match self.query.get("continue").filter(|c| !c.is_empty()) {
            Some(c) => c
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request("invalid continue token"))?,
            None => 0,
        };
        let limit = self
            .query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let end = start.saturating_add(limit).min(items.len());
        let page: Vec<&Value> = items.get(start.min(end)..end).unwrap_or_default().to_vec();
        let mut metadata = json!({"resourceVersion": store.rv.to_string()});
        if end < items.len() {
            metadata["continue"] = json!(end.to_string());
            metadata["remainingItemCount"] = json!(items.len() - end);
        }
        Ok(json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": metadata,
            "items": page,
        }))
    }

    /// The field manager: the `fieldManager` parameter, else (like the real server)
    /// the user agent up to its first `/`.
    fn manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager") {
            return m.to_string();
        }
        let ua = header_str(self.headers, header::USER_AGENT);
        let prefix = ua.split('/').next().unwrap_or_default();
        if prefix.is_empty() {
            "unknown".into()
        } else {
            prefix.into()
        }
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.query.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(v) => Err(ApiError::bad_request(format!(
                "Invalid dry run value: {v:?}, supported values: \"All\""
            ))),
        }
    }

    /// The request's media type, without parameters.
    fn mime(&self) -> &str {
        self.content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
    }

    /// The body of a create or update: JSON or YAML. Protobuf (which kubectl's
    /// typed commands such as `kubectl create configmap` send) is not supported.
    fn object_body(&self) -> Result<Value, ApiError> {
        let mime = self.mime();
        match mime {
            "" | "application/json" | "application/yaml" | "*/*" => parse_body(self.body),
            other => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {other:?})"
                ),
            )),
        }
    }

    fn create(&self, res: usize, namespace: String) -> Result<Response, ApiError> {
        let mut obj = self.object_body()?;
        let meta = &obj["metadata"];
        let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(prefix)) => {
                let n = format!("{prefix}{}", super::suffix(&mut lock(&self.sh.store)));
                obj["metadata"]["name"] = json!(n);
                n
            }
            _ => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "name or generateName is required",
                ));
            }
        };
        self.write_with((res, namespace, name), false, Change::Object(obj), true)
    }

    fn patch_change(&self) -> Result<Change, ApiError> {
        let mime = self.mime();
        let body = parse_body(self.body)?;
        Ok(match mime {
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Change::Apply {
                config: body,
                force: self.query.flag("force"),
            },
            "application/merge-patch+json" => Change::Merge(body),
            "application/strategic-merge-patch+json" => Change::Strategic(body),
            "application/json-patch+json" => Change::Json(
                serde_json::from_value(body)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?,
            ),
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                    ),
                ));
            }
        })
    }

    fn write(&self, key: Key, status: bool, change: Change) -> Result<Response, ApiError> {
        self.write_with(key, status, change, false)
    }

    fn write_with(
        &self,
        key: Key,
        status: bool,
        change: Change,
        create: bool,
    ) -> Result<Response, ApiError> {
        let manager = self.manager();
        if matches!(change, Change::Apply { .. }) && self.query.get("fieldManager").is_none() {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        if manager.len() > 128 {
            return Err(ApiError::bad_request(
                "fieldManager: Too long: may not be more than 128 bytes",
            ));
        }
        let req = Request {
            key,
            status,
            manager: &manager,
            dry_run: self.dry_run()?,
        };
        let mut store = lock(&self.sh.store);
        require_namespace(&store, &req.key)?;
        let existed = store.get(&req.key).is_some();
        let (obj, _) = write::write(&mut store, &req, change, create)?;
        Ok(json_response(if existed { 200 } else { 201 }, &obj))
    }

    fn delete(&self, key: Key) -> Result<Response, ApiError> {
        let r = &RESOURCES[key.0];
        let dry_run = self.dry_run()?;
        let mut store = lock(&self.sh.store);
        let obj = match (dry_run, store.get(&key).cloned()) {
            (_, None) => return Err(ApiError::not_found(r, &key.2)),
            (true, Some(obj)) => obj,
            (false, Some(obj)) => {
                // `Orphan` leaves the dependents, without their owner reference.
                if self.propagation() == "Orphan" {
                    let uid = obj["metadata"]["uid"].clone();
                    let owned: Vec<Key> = store
                        .objects
                        .iter()
                        .filter(|(_, o)| {
                            o["metadata"]["ownerReferences"]
                                .as_array()
                                .is_some_and(|r| r.iter().any(|r| r["uid"] == uid))
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in owned {
                        let mut o = store.get(&k).cloned().expect("listed just now");
                        if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                            refs.retain(|r| r["uid"] != uid);
                        }
                        store.put(&k, o);
                    }
                }
                store.delete(&key).expect("the object was just found")
            }
        };
        Ok(json_response(
            200,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": key.2, "group": r.group, "kind": r.plural, "uid": obj["metadata"]["uid"]}
            }),
        ))
    }

    /// `propagationPolicy` of a DELETE, from the query or the DeleteOptions
    /// body (kube-rs sends the body); `Background` when absent.
    fn propagation(&self) -> String {
        if let Some(p) = self.query.get("propagationPolicy") {
            return p.to_string();
        }
        serde_json::from_slice::<Value>(self.body)
            .ok()
            .and_then(|b| b["propagationPolicy"].as_str().map(String::from))
            .unwrap_or_else(|| "Background".into())
    }

    fn delete_collection(&self, t: &Target) -> Result<Response, ApiError> {
        let list = self.list(t)?;
        if !self.dry_run()? {
            let mut store = lock(&self.sh.store);
            for o in list["items"].as_array().into_iter().flatten() {
                let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                store.delete(&(t.res, ns.to_string(), name.to_string()));
            }
        }
        Ok(json_response(200, &list))
    }
}

/// Writes into a namespace need the namespace to exist, as on a real server.
fn require_namespace(store: &Store, key: &Key) -> Result<(), ApiError> {
    if !RESOURCES[key.0].namespaced
        || store
            .get(&(NAMESPACES, String::new(), key.1.clone()))
            .is_some()
    {
        return Ok(());
    }
    Err(ApiError::not_found(&RESOURCES[NAMESPACES], &key.1))
}

/// A request body: JSON, or YAML (apply bodies may be either).
fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(body).or_else(|json_err| {
        serde_saphyr::from_slice::<Value>(body).map_err(|yaml_err| {
            ApiError::bad_request(format!(
                "the body is neither JSON ({json_err}) nor YAML ({yaml_err})"
            ))
        })
    })
}

/// Which events a watch reports.
struct WatchFilter {
    res: usize,
    namespace: Option<String>,
    name: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl WatchFilter {
    fn matches(&self, res: usize, namespace: &str, obj: &Value) -> bool {
        res == self.res
            && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self
                .name
                .as_deref()
                .is_none_or(|n| obj["metadata"]["name"] == n)
            && self.labels.matches_labels(obj)
            && self.fields.matches_fields(obj)
    }
}

struct WatchParams {
    filter: WatchFilter,
    /// Resume after this resourceVersion; None: start with the current objects.
    since: Option<u64>,
    timeout: Duration,
    bookmarks: bool,
    initial_events_end: bool,
}

/// A watch: newline-delimited JSON events over a chunked response.
fn watch(sh: Arc<Shared>, t: &Target, q: &Query) -> Result<Response, ApiError> {
    let since = match q.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = match q.get("timeoutSeconds") {
        Some(s) => Duration::from_secs(
            s.parse()
                .map_err(|_| ApiError::bad_request("invalid timeoutSeconds"))?,
        ),
        None => Duration::from_secs(1800),
    };
    let params = WatchParams {
        filter: WatchFilter {
            res: t.res,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            labels: q.selector("labelSelector")?,
            fields: q.selector("fieldSelector")?,
        },
        since,
        timeout,
        bookmarks: q.flag("allowWatchBookmarks"),
        initial_events_end: q.flag("sendInitialEvents"),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(run_watch(sh, params, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("static response parts are valid"))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(res: usize, rv: u64, initial_events_end: bool) -> Bytes {
    let r = &RESOURCES[res];
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": meta}),
    )
}

fn gone(rv: u64, oldest: u64) -> Bytes {
    let e = ApiError::new(
        410,
        "Expired",
        format!("too old resource version: {rv} ({oldest})"),
    );
    event_line("ERROR", &e.status())
}

/// How often an idle watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

async fn run_watch(sh: Arc<Shared>, p: WatchParams, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let deadline = tokio::time::Instant::now() + p.timeout;
    // Subscribing before reading the store means no change can slip in between.
    let (mut changes, mut last, initial) = {
        let store = lock(&sh.store);
        let changes = store.subscribe();
        let mut lines = Vec::new();
        let last = match p.since {
            None => {
                for (k, o) in store.list(p.filter.res, p.filter.namespace.as_deref()) {
                    if p.filter.matches(k.0, &k.1, o) {
                        lines.push(event_line("ADDED", o));
                    }
                }
                store.rv
            }
            Some(rv) => rv,
        };
        (changes, last, lines)
    };
    for line in initial {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    if p.initial_events_end
        && p.bookmarks
        && tx.send(bookmark(p.filter.res, last, true)).await.is_err()
    {
        return;
    }
    loop {
        let lines = {
            let store = lock(&sh.store);
            changes.borrow_and_update();
            let lines: Option<Vec<Bytes>> = store.events_after(last).map(|events| {
                events
                    .filter(|e| p.filter.matches(e.res, &e.namespace, &e.object))
                    .map(|e| event_line(e.kind, &e.object))
                    .collect()
            });
            let rv = last;
            last = last.max(store.rv);
            lines.ok_or_else(|| gone(rv, store.rv))
        };
        match lines {
            Ok(lines) => {
                for line in lines {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
            Err(gone) => {
                let _ = tx.send(gone).await;
                return;
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tokio::time::sleep(BOOKMARK_EVERY), if p.bookmarks => {
                if tx.send(bookmark(p.filter.res, last, false)).await.is_err() {
                    return;
                }
            }
        }
    }
}
