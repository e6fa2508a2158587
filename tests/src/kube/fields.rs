//! Field ownership (`metadata.managedFields`) and the merges built on it:
//! server-side apply, strategic merge patch, and the bookkeeping of plain updates.
//!
//! Without schemas, the list and map semantics come from field names: see
//! [`list_keys`] and [`is_atomic`].

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// One step of a field path, as in FieldsV1 (`f:name`, `k:{"name":"x"}`, `v:..`, `i:..`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Elem {
    Field(String),
    /// An associative list element, by its key fields as canonical JSON.
    Key(String),
    /// A set element, by value (only parsed, never produced).
    Value(String),
    /// A list element by position (only parsed, never produced).
    Index(usize),
}

pub(crate) type Path = Vec<Elem>;
pub(crate) type FieldSet = BTreeSet<Path>;

/// Associative lists: merged element by element, each element identified by these
/// fields. Every other list is atomic (replaced whole), like a real server's default.
fn list_keys(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        // Container ports are keyed by containerPort, Service ports by port (both
        // also by protocol in reality).
        "ports"
            if items
                .first()
                .is_some_and(|i| i.get("containerPort").is_some()) =>
        {
            "containerPort"
        }
        "ports" => "port",
        _ => return None,
    };
    // A list whose elements lack the key cannot be merged by key: treat it as atomic.
    items
        .iter()
        .all(|i| i.get(key).is_some_and(|k| !k.is_null()))
        .then_some(key)
}

/// Maps owned and replaced as a whole (LabelSelector and Service selectors are atomic).
fn is_atomic(field: Option<&str>) -> bool {
    field == Some("selector")
}

fn key_of(item: &Value, key: &str) -> String {
    let mut m = Map::new();
    m.insert(key.to_string(), item[key].clone());
    Value::Object(m).to_string()
}

/// The leaf paths of `value` (what an applier of `value` owns). Element markers
/// (paths ending in a [`Elem::Key`]) stand for list elements themselves.
fn collect(value: &Value, field: Option<&str>, prefix: &mut Path, out: &mut FieldSet) {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() && !is_atomic(field) => {
            for (k, v) in map {
                prefix.push(Elem::Field(k.clone()));
                collect(v, Some(k), prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let Some(key) = field.and_then(|f| list_keys(f, items)) else {
                out.insert(prefix.clone());
                return;
            };
            for item in items {
                prefix.push(Elem::Key(key_of(item, key)));
                out.insert(prefix.clone());
                collect(item, None, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// Metadata the server owns: never part of a field set.
const SYSTEM_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The fields of a whole object that a writer of `scope` can own.
pub(crate) fn object_fields(obj: &Value, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        if k == "apiVersion" || k == "kind" || !scope.covers(k) {
            continue;
        }
        let mut prefix = vec![Elem::Field(k.clone())];
        if k == "metadata" {
            let Some(meta) = v.as_object() else { continue };
            for (mk, mv) in meta {
                if !SYSTEM_METADATA.contains(&mk.as_str()) {
                    prefix.push(Elem::Field(mk.clone()));
                    collect(mv, Some(mk), &mut prefix, &mut out);
                    prefix.pop();
                }
            }
        } else {
            collect(v, Some(k), &mut prefix, &mut out);
        }
    }
    out
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Scope {
    /// The main resource of a type with a status subresource: everything but `status`.
    MainWithStatus,
    /// The main resource of a type without one: everything.
    Main,
    /// The `/status` subresource: `status` and metadata.
    Status,
}

impl Scope {
    fn covers(self, top: &str) -> bool {
        match self {
            Scope::MainWithStatus => top != "status",
            Scope::Main => true,
            Scope::Status => top == "status" || top == "metadata",
        }
    }

    fn subresource(self) -> Option<&'static str> {
        (self == Scope::Status).then_some("status")
    }
}

/// The value at `path`, if any.
pub(crate) fn get<'a>(value: &'a Value, path: &[Elem]) -> Option<&'a Value> {
    let mut cur = value;
    for e in path {
        cur = match e {
            Elem::Field(f) => cur.get(f)?,
            Elem::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?
                    .iter()
                    .find(|i| key.iter().all(|(kf, kv)| i.get(kf) == Some(kv)))?
            }
            Elem::Value(v) => {
                let v: Value = serde_json::from_str(v).ok()?;
                cur.as_array()?.iter().find(|i| **i == v)?
            }
            Elem::Index(i) => cur.as_array()?.get(*i)?,
        };
    }
    Some(cur)
}

/// Remove the field or list element at `path` (nothing if absent).
fn remove(value: &mut Value, path: &[Elem]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let Some(parent) = get_mut(value, parent) else {
        return;
    };
    match (last, parent) {
        (Elem::Field(f), Value::Object(m)) => {
            m.remove(f);
        }
        (Elem::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
        }
        (e, Value::Array(a)) => {
            let Some(target) = get(&Value::Array(a.clone()), std::slice::from_ref(e)).cloned()
            else {
                return;
            };
            a.retain(|i| *i != target);
        }
        _ => {}
    }
}

fn get_mut<'a>(value: &'a mut Value, path: &[Elem]) -> Option<&'a mut Value> {
    let Some((last, parent)) = path.split_last() else {
        return Some(value);
    };
    let parent = get_mut(value, parent)?;
    match last {
        Elem::Field(f) => parent.get_mut(f),
        e => {
            let target = get(parent, std::slice::from_ref(e))?.clone();
            parent.as_array_mut()?.iter_mut().find(|i| **i == target)
        }
    }
}

/// `.spec.template.spec.containers[name="app"].image`, as the real server prints paths.
pub(crate) fn display(path: &[Elem]) -> String {
    let mut s = String::new();
    for e in path {
        match e {
            Elem::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Elem::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(f, v)| format!("{f}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Elem::Value(v) => s.push_str(&format!("[={v}]")),
            Elem::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// A FieldsV1 tree (`{"f:spec": {"f:replicas": {}}}`) from a field set.
fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Value::Object(Map::new());
    for path in set {
        let mut node = &mut root;
        for e in path {
            let k = match e {
                Elem::Field(f) => format!("f:{f}"),
                Elem::Key(k) => format!("k:{k}"),
                Elem::Value(v) => format!("v:{v}"),
                Elem::Index(i) => format!("i:{i}"),
            };
            node = node
                .as_object_mut()
                .expect("fields tree nodes are objects")
                .entry(k)
                .or_insert_with(|| Value::Object(Map::new()));
        }
        if matches!(path.last(), Some(Elem::Key(_))) {
            node.as_object_mut()
                .expect("fields tree nodes are objects")
                .insert(".".into(), Value::Object(Map::new()));
        }
    }
    root
}

fn from_fields_v1(tree: &Value, prefix: &mut Path, out: &mut FieldSet) {
    let Some(map) = tree.as_object() else { return };
    for (k, child) in map {
        if k == "." {
            out.insert(prefix.clone());
            continue;
        }
        let elem = match k.split_at_checked(2) {
            Some(("f:", f)) => Elem::Field(f.to_string()),
            Some(("k:", k)) => Elem::Key(k.to_string()),
            Some(("v:", v)) => Elem::Value(v.to_string()),
            Some(("i:", i)) => match i.parse() {
                Ok(i) => Elem::Index(i),
                Err(_) => continue,
            },
            _ => continue,
        };
        prefix.push(elem);
        if child.as_object().is_some_and(|m| m.is_empty()) {
            out.insert(prefix.clone());
        } else {
            from_fields_v1(child, prefix, out);
        }
        prefix.pop();
    }
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub manager: String,
    pub operation: &'static str,
    pub subresource: Option<String>,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }

    fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&self.fields),
        });
        if let Some(s) = &self.subresource {
            v["subresource"] = Value::String(s.clone());
        }
        v
    }
}

/// The entries stored in `obj.metadata.managedFields`.
pub(crate) fn entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj["metadata"]["managedFields"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let mut fields = FieldSet::new();
            from_fields_v1(&e["fieldsV1"], &mut Vec::new(), &mut fields);
            Entry {
                manager: e["manager"].as_str().unwrap_or_default().to_string(),
                operation: if e["operation"] == "Apply" {
                    "Apply"
                } else {
                    "Update"
                },
                subresource: e["subresource"].as_str().map(String::from),
                api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                time: e["time"].as_str().unwrap_or_default().to_string(),
                fields,
            }
        })
        .collect()
}

fn set_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Who is writing, and how.
pub(crate) struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub scope: Scope,
    pub now: &'a str,
}

/// A field another manager owns with a different value than the applied one.
pub(crate) struct Conflict {
    pub manager: String,
    pub path: Path,
}

impl Conflict {
    /// How the real server names the other manager: just the name for appliers,
    /// `"m" using apps/v1` (with ` with subresource "status"`) for updaters.
    pub fn manager_display(&self, entries: &[Entry]) -> String {
        let Some(e) = entries.iter().find(|e| e.manager == self.manager) else {
            return format!("{:?}", self.manager);
        };
        let mut s = format!("{:?}", e.manager);
        if let Some(sub) = &e.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if e.operation == "Update" {
            s.push_str(&format!(" using {}", e.api_version));
        }
        s
    }
}

/// Server-side apply of `applied` by `w` onto `live` (an empty object when creating).
/// Returns the merged object with its new managedFields, or the conflicts.
pub(crate) fn apply(
    live: &Value,
    applied: &Value,
    w: &Writer,
    force: bool,
) -> Result<Value, (Vec<Conflict>, Vec<Entry>)> {
    let mut managers = entries(live);
    let applied_fields = object_fields(applied, w.scope);
    let mine = managers
        .iter()
        .position(|e| e.is(w.manager, "Apply", w.scope.subresource()));
    let conflicts = find_conflicts(live, applied, &applied_fields, &managers, mine);
    if !conflicts.is_empty() && !force {
        return Err((conflicts, managers));
    }
    // Forcing moves the conflicting fields to the applier.
    for c in &conflicts {
        for (i, e) in managers.iter_mut().enumerate() {
            if Some(i) != mine && e.manager == c.manager {
                e.fields.remove(&c.path);
            }
        }
    }
    let old_mine = mine.map(|i| managers[i].fields.clone()).unwrap_or_default();
    let others: FieldSet = managers
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != mine)
        .flat_map(|(_, e)| e.fields.iter().cloned())
        .collect();

    let mut merged = live.clone();
    // Fields this manager applied before but no longer does go away, unless someone
    // else also owns them (deepest first, so elements go after their fields).
    let mut dropped: Vec<&Path> = old_mine
        .difference(&applied_fields)
        .filter(|p| !others.iter().any(|o| o.starts_with(p)))
        .collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        remove(&mut merged, p);
    }
    merge(&mut merged, &scoped(applied, w.scope), None);

    match mine {
        Some(i) if managers[i].fields == applied_fields => {}
        Some(i) => {
            managers[i].fields = applied_fields;
            managers[i].time = w.now.to_string();
            managers[i].api_version = w.api_version.to_string();
        }
        None => managers.push(Entry {
            manager: w.manager.to_string(),
            operation: "Apply",
            subresource: w.scope.subresource().map(String::from),
            api_version: w.api_version.to_string(),
            time: w.now.to_string(),
            fields: applied_fields,
        }),
    }
    set_entries(&mut merged, &managers);
    Ok(merged)
}

fn find_conflicts(
    live: &Value,
    applied: &Value,
    applied_fields: &FieldSet,
    managers: &[Entry],
    mine: Option<usize>,
) -> Vec<Conflict> {
    let mut out = Vec::new();
    for (i, e) in managers.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        for p in e.fields.intersection(applied_fields) {
            // Element markers never conflict: only the values in them can.
            let marker = matches!(p.last(), Some(Elem::Key(_)));
            if !marker && get(live, p) != get(applied, p) {
                out.push(Conflict {
                    manager: e.manager.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    out
}

/// `obj` without the top-level fields outside `scope` (status for main writes).
pub(crate) fn scoped(obj: &Value, scope: Scope) -> Value {
    let mut out = obj.clone();
    if let Some(m) = out.as_object_mut() {
        m.retain(|k, _| k == "apiVersion" || k == "kind" || scope.covers(k));
    }
    out
}

/// Record a non-apply write (create, update, patch, a controller's write): the
/// fields it added or changed become `w.manager`'s (taken from everyone else, as
/// updates never conflict), fields it removed are nobody's. Sets
/// `new.metadata.managedFields`.
pub(crate) fn record_update(old: Option<&Value>, new: &mut Value, w: &Writer) {
    let mut managers = old.map(entries).unwrap_or_default();
    let empty = Value::Null;
    let old = old.unwrap_or(&empty);
    let old_fields = object_fields(old, w.scope);
    let new_fields = object_fields(new, w.scope);
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| {
            if matches!(p.last(), Some(Elem::Key(_))) {
                !old_fields.contains(*p)
            } else {
                get(old, p) != get(new, p)
            }
        })
        .cloned()
        .collect();
    let removed: FieldSet = old_fields.difference(&new_fields).cloned().collect();
    for e in managers.iter_mut() {
        e.fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    if !changed.is_empty() {
        let sub = w.scope.subresource();
        match managers.iter_mut().find(|e| e.is(w.manager, "Update", sub)) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = w.now.to_string();
                e.api_version = w.api_version.to_string();
            }
            None => managers.push(Entry {
                manager: w.manager.to_string(),
                operation: "Update",
                subresource: sub.map(String::from),
                api_version: w.api_version.to_string(),
                time: w.now.to_string(),
                fields: changed,
            }),
        }
    }
    set_entries(new, &managers);
}

/// Merge `patch` into `base` with the list semantics above: objects field by
/// field (null deletes), keyed lists element by element, anything else replaced.
/// This is server-side apply's merge and, with its `$patch`/`$setElementOrder`
/// directives honoured, a strategic merge patch.
pub(crate) fn merge(base: &mut Value, patch: &Value, field: Option<&str>) {
    if let Some(p) = patch.as_object()
        && p.get("$patch").and_then(Value::as_str) == Some("replace")
    {
        *base = clean(patch);
        return;
    }
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) if !is_atomic(field) => {
            for (k, pv) in p {
                if k.starts_with('$') {
                    continue;
                }
                match (pv, b.get_mut(k)) {
                    (Value::Null, _) => {
                        b.remove(k);
                    }
                    (_, Some(bv)) => merge(bv, pv, Some(k)),
                    (_, None) => {
                        b.insert(k.clone(), clean(pv));
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p)) => {
            let key = field.and_then(|f| list_keys(f, p).filter(|k| list_keys(f, b) == Some(k)));
            let Some(key) = key else {
                *b = p.iter().map(clean).collect();
                return;
            };
            merge_keyed(b, p, key);
        }
        (b, p) => *b = clean(p),
    }
}

fn merge_keyed(base: &mut Vec<Value>, patch: &[Value], key: &str) {
    for pe in patch {
        let pos = base.iter().position(|be| be.get(key) == pe.get(key));
        let delete = pe.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                base.remove(i);
            }
            (Some(i), false) => merge(&mut base[i], pe, None),
            (None, true) => {}
            (None, false) => base.push(clean(pe)),
        }
    }
}

/// `v` without nulls and patch directives: what a new field is stored as.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        v => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            scope: Scope::MainWithStatus,
            now: "2025-01-01T00:00:00Z",
        }
    }

    #[test]
    fn fields_v1_round_trips() {
        let obj = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        let set = object_fields(&obj, Scope::MainWithStatus);
        let tree = to_fields_v1(&set);
        assert_eq!(
            tree,
            json!({"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        let mut back = FieldSet::new();
        from_fields_v1(&tree, &mut Vec::new(), &mut back);
        assert_eq!(back, set);
    }

    #[test]
    fn apply_removes_fields_no_longer_applied_and_detects_conflicts() {
        let live = apply(
            &json!({}),
            &json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 2}}),
            &writer("one"),
            false,
        )
        .ok()
        .unwrap();
        let live = apply(
            &live,
            &json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 2}}),
            &writer("one"),
            false,
        )
        .ok()
        .unwrap();
        assert_eq!(live["metadata"]["labels"], json!({"a": "1"}));
        let Err((conflicts, _)) = apply(
            &live,
            &json!({"spec": {"replicas": 3}}),
            &writer("two"),
            false,
        ) else {
            panic!("expected a conflict")
        };
        assert_eq!(display(&conflicts[0].path), ".spec.replicas");
        // Same value: shared ownership, no conflict.
        assert!(
            apply(
                &live,
                &json!({"spec": {"replicas": 2}}),
                &writer("two"),
                false
            )
            .is_ok()
        );
    }
}
