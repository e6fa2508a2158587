//! The write path every change goes through (clients' creates, updates, patches
//! and applies, and the simulated controllers' writes): system metadata, status
//! subresource separation, defaulting, validation, generation and managedFields.

use super::fields::{self, Scope, Writer};
use super::resources::{Generation, RESOURCES, Resource};
use super::store::{Key, Store};
use serde_json::{Map, Value, json};

/// A failed request, answered as a `kind: Status` object.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn with_details(mut self, r: &Resource, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": r.group, "kind": r.plural}));
        self
    }

    pub fn not_found(r: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", r.qualified()),
        )
        .with_details(r, name)
    }

    pub fn already_exists(r: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", r.qualified()),
        )
        .with_details(r, name)
    }

    fn modified(r: &Resource, name: &str) -> Self {
        Self::new(409, "Conflict", format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            r.qualified()
        ))
        .with_details(r, name)
    }

    fn invalid(r: &Resource, name: &str, field: &str, detail: &str) -> Self {
        let kind = if r.group.is_empty() {
            r.kind.to_string()
        } else {
            format!("{}.{}", r.kind, r.group)
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind} {name:?} is invalid: {field}: {detail}"),
        );
        e.details = Some(json!({
            "name": name, "group": r.group, "kind": r.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}]
        }));
        e
    }

    pub fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

/// The current time in RFC 3339, second precision, as Kubernetes timestamps are.
pub(crate) fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil-from-days (H. Hinnant), to avoid a date crate for one format.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// What a write replaces the stored object with.
pub(crate) enum Change {
    /// A whole object (create, update).
    Object(Value),
    /// Server-side apply of a configuration.
    Apply { config: Value, force: bool },
    /// RFC 7386 merge patch.
    Merge(Value),
    /// Strategic merge patch (merge patch with keyed lists merged by key).
    Strategic(Value),
    /// RFC 6902 JSON patch.
    Json(json_patch::Patch),
}

/// One write request, after routing.
pub(crate) struct Request<'a> {
    pub key: Key,
    pub status: bool,
    pub manager: &'a str,
    pub dry_run: bool,
}

impl Request<'_> {
    fn resource(&self) -> &'static Resource {
        &RESOURCES[self.key.0]
    }

    fn scope(&self) -> Scope {
        match (self.status, self.resource().has_status) {
            (true, _) => Scope::Status,
            (false, true) => Scope::MainWithStatus,
            (false, false) => Scope::Main,
        }
    }
}

/// Create the object (POST, or an apply/patch of a missing object when allowed).
/// Returns the stored object and whether anything changed.
pub(crate) fn write(
    store: &mut Store,
    req: &Request,
    change: Change,
    create: bool,
) -> Result<(Value, bool), ApiError> {
    let r = req.resource();
    let old = store.get(&req.key).cloned();
    match (&old, create) {
        (Some(_), true) => return Err(ApiError::already_exists(r, &req.key.2)),
        (None, false) if !matches!(change, Change::Apply { .. }) => {
            return Err(ApiError::not_found(r, &req.key.2));
        }
        _ => {}
    }
    let now = now();
    let api_version = r.api_version();
    let writer = Writer {
        manager: req.manager,
        api_version: &api_version,
        scope: req.scope(),
        now: &now,
    };
    let base = old.clone().unwrap_or_else(|| json!({"metadata": {}}));
    let (new, applied) = match change {
        Change::Object(v) => (v, false),
        Change::Apply { config, force } => {
            let config = check_shape(config, r)?;
            let merged = fields::apply(&base, &config, &writer, force)
                .map_err(|(c, entries)| conflict_error(r, &req.key.2, &c, &entries))?;
            (merged, true)
        }
        Change::Merge(p) => {
            let mut v = base;
            json_patch::merge(&mut v, &p);
            (v, false)
        }
        Change::Strategic(p) => {
            let mut v = base;
            fields::merge(&mut v, &p, None);
            (v, false)
        }
        Change::Json(p) => {
            let mut v = base;
            json_patch::patch(&mut v, &p)
                .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
            (v, false)
        }
    };
    let new = finalize(store, req, old.as_ref(), new, (!applied).then_some(&writer))?;
    if req.dry_run {
        return Ok((new, false));
    }
    Ok(store.put(&req.key, new))
}

/// A body must be an object whose apiVersion and kind (when given) name the type.
fn check_shape(v: Value, r: &Resource) -> Result<Value, ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the body must be a JSON or YAML object",
        ));
    }
    let api_version = r.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", r.kind)] {
        if let Some(got) = v.get(field).and_then(Value::as_str)
            && got != want
        {
            return Err(ApiError::bad_request(format!(
                "the API version or kind in the body ({got}) does not match the {field} of the URL ({want})"
            )));
        }
    }
    Ok(v)
}

/// The 409 the real server answers conflicting applies with.
fn conflict_error(
    r: &Resource,
    name: &str,
    conflicts: &[fields::Conflict],
    entries: &[fields::Entry],
) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "type": "FieldManagerConflict",
                "message": format!("conflict with {}", c.manager_display(entries)),
                "field": fields::display(&c.path)
            })
        })
        .collect();
    let message = if let [c] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager_display(entries),
            fields::display(&c.path)
        )
    } else {
        let mut by_manager: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for c in conflicts {
            by_manager
                .entry(c.manager_display(entries))
                .or_default()
                .push(fields::display(&c.path));
        }
        let lines: Vec<String> = by_manager
            .into_iter()
            .flat_map(|(m, paths)| {
                std::iter::once(format!("conflicts with {m}:"))
                    .chain(paths.into_iter().map(|p| format!("- {p}")))
            })
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let mut e = ApiError::new(409, "Conflict", message);
    e.details = Some(json!({"name": name, "group": r.group, "kind": r.plural, "causes": causes}));
    e
}

/// Everything the server does to an object before storing it. `writer` is None
/// when server-side apply already set the managedFields.
fn finalize(
    store: &mut Store,
    req: &Request,
    old: Option<&Value>,
    new: Value,
    writer: Option<&Writer>,
) -> Result<Value, ApiError> {
    let r = req.resource();
    let mut new = check_shape(new, r)?;
    strip_nulls(&mut new);
    set_identity(store, req, old, &mut new)?;
    separate_status(req.scope(), old, &mut new);
    if req.scope() != Scope::Status {
        defaults(r, &req.key, &mut new);
    }
    validate(r, &req.key.2, old, &new)?;
    if req.scope() != Scope::Status {
        bump_generation(r, old, &mut new);
    }
    if let Some(w) = writer {
        fields::record_update(old, &mut new, w);
    }
    Ok(new)
}

/// A real server decodes into typed structs, where a null is an absent field.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// apiVersion, kind, name, namespace and the metadata only the server sets.
fn set_identity(
    store: &mut Store,
    req: &Request,
    old: Option<&Value>,
    new: &mut Value,
) -> Result<(), ApiError> {
    let r = req.resource();
    new["apiVersion"] = Value::String(r.api_version());
    new["kind"] = Value::String(r.kind.to_string());
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    let meta = new["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object");
    if let Some(n) = meta.get("name").and_then(Value::as_str)
        && n != req.key.2
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({})",
            req.key.2
        )));
    }
    meta.insert("name".into(), Value::String(req.key.2.clone()));
    if r.namespaced {
        if let Some(ns) = meta.get("namespace").and_then(Value::as_str)
            && ns != req.key.1
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta.insert("namespace".into(), Value::String(req.key.1.clone()));
    } else {
        meta.remove("namespace");
    }
    let sent_rv = meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from);
    match (old, sent_rv) {
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        (Some(old), Some(rv)) if old["metadata"]["resourceVersion"] != rv.as_str() => {
            return Err(ApiError::modified(r, &req.key.2));
        }
        _ => {}
    }
    for f in [
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        meta.remove(f);
    }
    match old {
        Some(old) => {
            for f in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                match old["metadata"].get(f) {
                    Some(v) => meta.insert(f.into(), v.clone()),
                    None => meta.remove(f),
                };
            }
        }
        None => {
            meta.insert("uid".into(), Value::String(store.uid()));
            meta.insert("creationTimestamp".into(), Value::String(now()));
            meta.remove("resourceVersion");
            if r.has_generation() {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
        }
    }
    Ok(())
}

/// Main writes keep the stored status; status writes keep everything else but
/// metadata (labels excepted), as the real status strategies do.
fn separate_status(scope: Scope, old: Option<&Value>, new: &mut Value) {
    let Some(obj) = new.as_object_mut() else {
        return;
    };
    match scope {
        Scope::Main => {}
        Scope::MainWithStatus => match old.and_then(|o| o.get("status")) {
            Some(s) => {
                obj.insert("status".into(), s.clone());
            }
            None => {
                obj.remove("status");
            }
        },
        Scope::Status => {
            let Some(old) = old.and_then(Value::as_object) else {
                return;
            };
            obj.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
            for (k, v) in old {
                if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                    obj.insert(k.clone(), v.clone());
                }
            }
            match old.get("metadata").and_then(|m| m.get("labels")) {
                Some(l) => obj["metadata"]["labels"] = l.clone(),
                None => {
                    if let Some(m) = obj["metadata"].as_object_mut() {
                        m.remove("labels");
                    }
                }
            }
        }
    }
}

fn bump_generation(r: &Resource, old: Option<&Value>, new: &mut Value) {
    let Some(old) = old else { return };
    let changed = match r.generation {
        Generation::None => return,
        Generation::Spec => old.get("spec") != new.get("spec"),
        Generation::SpecOrAnnotations => {
            old.get("spec") != new.get("spec")
                || old["metadata"].get("annotations") != new["metadata"].get("annotations")
        }
    };
    if changed {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        new["metadata"]["generation"] = json!(g);
    }
}

/// Set `obj[field]` unless present (nothing if `obj` is not an object).
fn default(obj: Option<&mut Value>, field: &str, value: Value) {
    if let Some(m) = obj.and_then(Value::as_object_mut) {
        m.entry(field).or_insert(value);
    }
}

/// The value at `path`, without creating anything (indexing a `&mut Value` would
/// insert nulls for missing fields).
fn at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(*k))
}

/// The defaults the real server fills in that matter to clients reading objects
/// back (a subset: enough that stored objects look like a real server's).
fn defaults(r: &Resource, key: &Key, obj: &mut Value) {
    match r.kind {
        "Namespace" => {
            default(Some(&mut *obj), "spec", json!({}));
            default(Some(&mut *obj), "status", json!({}));
            default(at(obj, &["spec"]), "finalizers", json!(["kubernetes"]));
            default(at(obj, &["status"]), "phase", json!("Active"));
            default(at(obj, &["metadata"]), "labels", json!({}));
            default(
                at(obj, &["metadata", "labels"]),
                "kubernetes.io/metadata.name",
                json!(key.2),
            );
        }
        "Deployment" => {
            let Some(spec) = at(obj, &["spec"]) else {
                return;
            };
            default(Some(&mut *spec), "replicas", json!(1));
            default(Some(&mut *spec), "revisionHistoryLimit", json!(10));
            default(Some(&mut *spec), "progressDeadlineSeconds", json!(600));
            default(
                Some(&mut *spec),
                "strategy",
                json!({"type": "RollingUpdate"}),
            );
            if spec["strategy"]["type"] == "RollingUpdate" {
                default(
                    at(spec, &["strategy"]),
                    "rollingUpdate",
                    json!({"maxSurge": "25%", "maxUnavailable": "25%"}),
                );
            }
            pod_spec_defaults(at(spec, &["template", "spec"]));
        }
        "ReplicaSet" => {
            default(at(obj, &["spec"]), "replicas", json!(1));
            pod_spec_defaults(at(obj, &["spec", "template", "spec"]));
        }
        "Pod" => {
            pod_spec_defaults(at(obj, &["spec"]));
            default(
                Some(obj),
                "status",
                json!({"phase": "Pending", "qosClass": "BestEffort"}),
            );
        }
        "Service" => service_defaults(key, obj),
        "Secret" => secret_defaults(obj),
        _ => {}
    }
}

fn pod_spec_defaults(spec: Option<&mut Value>) {
    let Some(spec) = spec.filter(|s| s.is_object()) else {
        return;
    };
    default(Some(&mut *spec), "restartPolicy", json!("Always"));
    default(Some(&mut *spec), "terminationGracePeriodSeconds", json!(30));
    default(Some(&mut *spec), "dnsPolicy", json!("ClusterFirst"));
    default(Some(&mut *spec), "securityContext", json!({}));
    default(
        Some(&mut *spec),
        "schedulerName",
        json!("default-scheduler"),
    );
    for list in ["initContainers", "containers"] {
        let Some(containers) = at(spec, &[list]).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let image = c["image"].as_str().unwrap_or_default();
            // `:latest` and untagged images are pulled always, others if not present.
            let last = image.rsplit('/').next().unwrap_or_default();
            let latest = !last.contains(':') || last.ends_with(":latest");
            let policy = if latest && !image.contains('@') {
                "Always"
            } else {
                "IfNotPresent"
            };
            default(Some(&mut *c), "imagePullPolicy", json!(policy));
            default(
                Some(&mut *c),
                "terminationMessagePath",
                json!("/dev/termination-log"),
            );
            default(Some(&mut *c), "terminationMessagePolicy", json!("File"));
            default(Some(&mut *c), "resources", json!({}));
            for p in at(c, &["ports"])
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                default(Some(p), "protocol", json!("TCP"));
            }
        }
    }
}

fn service_defaults(key: &Key, obj: &mut Value) {
    let Some(spec) = at(obj, &["spec"]).filter(|s| s.is_object()) else {
        return;
    };
    default(Some(&mut *spec), "type", json!("ClusterIP"));
    default(Some(&mut *spec), "sessionAffinity", json!("None"));
    if spec["type"] != "ExternalName" {
        // A stable address per service, like an allocator that never reuses one.
        let h = super::fnv(format!("{}/{}", key.1, key.2).as_bytes());
        let ip = format!("10.96.{}.{}", (h >> 8) % 256, h % 254 + 1);
        default(Some(&mut *spec), "clusterIP", json!(ip));
        let ip = spec["clusterIP"].clone();
        default(Some(&mut *spec), "clusterIPs", json!([ip]));
        default(Some(&mut *spec), "ipFamilies", json!(["IPv4"]));
        default(Some(&mut *spec), "ipFamilyPolicy", json!("SingleStack"));
        default(Some(&mut *spec), "internalTrafficPolicy", json!("Cluster"));
    }
    for p in at(spec, &["ports"])
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        default(Some(&mut *p), "protocol", json!("TCP"));
        let port = p["port"].clone();
        default(Some(p), "targetPort", port);
    }
    default(Some(obj), "status", json!({"loadBalancer": {}}));
}

/// `stringData` is write-only: the real server folds it into `data`.
fn secret_defaults(obj: &mut Value) {
    use base64::Engine;
    default(Some(&mut *obj), "type", json!("Opaque"));
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = Value::Object(Map::new());
    }
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// The validation a deploy path can trip over (a small part of the real rules).
fn validate(r: &Resource, name: &str, old: Option<&Value>, obj: &Value) -> Result<(), ApiError> {
    let invalid = |field: &str, detail: &str| Err(ApiError::invalid(r, name, field, detail));
    let pod_spec = match r.kind {
        "Deployment" | "ReplicaSet" => {
            let selector = &obj["spec"]["selector"];
            if !selector.is_object() {
                return invalid("spec.selector", "Required value");
            }
            let labels = &obj["spec"]["template"]["metadata"]["labels"];
            let matches = selector["matchLabels"]
                .as_object()
                .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
            if !matches {
                return invalid(
                    "spec.template.metadata.labels",
                    "Invalid value: `selector` does not match template `labels`",
                );
            }
            if let Some(old) = old
                && old["spec"]["selector"] != *selector
                && r.kind == "Deployment"
            {
                return invalid("spec.selector", "Invalid value: field is immutable");
            }
            &obj["spec"]["template"]["spec"]
        }
        "Pod" => &obj["spec"],
        _ => return Ok(()),
    };
    let containers = pod_spec["containers"].as_array();
    if containers.is_none_or(|c| c.is_empty()) {
        return invalid("spec.template.spec.containers", "Required value");
    }
    for c in containers.into_iter().flatten() {
        if c["name"].as_str().is_none_or(str::is_empty) {
            return invalid("spec.template.spec.containers[0].name", "Required value");
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            return invalid("spec.template.spec.containers[0].image", "Required value");
        }
    }
    Ok(())
}
