//! The object store: one global resourceVersion counter, a history of changes for
//! watches, and the selectors lists and watches filter with.

use super::resources::NAMESPACES;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};

/// A type (index into [`RESOURCES`](super::resources::RESOURCES)), a namespace ("" for cluster-scoped) and a name.
pub(crate) type Key = (usize, String, String);

/// One change, as a watch reports it.
#[derive(Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub res: usize,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
}

/// How many changes watches can resume from; older resourceVersions get 410 Gone.
const HISTORY: usize = 20_000;

pub(crate) struct Store {
    pub objects: BTreeMap<Key, Value>,
    pub rv: u64,
    history: VecDeque<Event>,
    pub writes: usize,
    uids: u64,
    /// Wakes watches and the controller after every change.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Store {
    /// A store holding the namespaces every cluster has.
    pub fn new(changes: tokio::sync::watch::Sender<u64>) -> Self {
        let mut store = Store {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            writes: 0,
            uids: 0,
            changes,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"}
            });
            store.put(&(NAMESPACES, String::new(), ns.to_string()), obj);
        }
        store
    }

    /// A receiver that wakes on every change after now.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// A fresh UID in the UUID format.
    pub fn uid(&mut self) -> String {
        self.uids += 1;
        let h = super::fnv(&self.uids.to_le_bytes()) as u64;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            h as u32,
            self.uids & 0xffff,
            (h >> 4) & 0xfff,
            (h >> 16) & 0xfff,
            self.uids
        )
    }

    /// Store `obj` under `key`. An object equal to the stored one (ignoring its
    /// resourceVersion) is not a write: nothing changes and false is returned.
    /// Otherwise the resourceVersion is bumped and a watch event recorded.
    pub fn put(&mut self, key: &Key, mut obj: Value) -> (Value, bool) {
        let old = self.objects.get(key);
        if let Some(old) = old {
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            if *old == obj {
                return (obj, false);
            }
        }
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.objects.insert(key.clone(), obj.clone());
        self.record(key, kind, obj.clone());
        (obj, true)
    }

    /// Delete `key` and, like the garbage collector with background propagation,
    /// everything it owns (and, for a namespace, everything in it).
    pub fn delete(&mut self, key: &Key) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.record(key, "DELETED", obj.clone());
        let uid = obj["metadata"]["uid"].clone();
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, o)| {
                (key.0 == NAMESPACES && k.1 == key.2)
                    || o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in dependents {
            self.delete(&k);
        }
        Some(obj)
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.writes += 1;
        self.rv
    }

    fn record(&mut self, key: &Key, kind: &'static str, object: Value) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Event {
            rv: self.rv,
            res: key.0,
            namespace: key.1.clone(),
            kind,
            object,
        });
        self.changes.send_replace(self.rv);
    }

    /// The objects of type `res` (in `namespace` if given), in key order.
    pub fn list(&self, res: usize, namespace: Option<&str>) -> Vec<(&Key, &Value)> {
        self.objects
            .iter()
            .filter(|(k, _)| k.0 == res && namespace.is_none_or(|ns| k.1 == ns))
            .collect()
    }

    /// The changes after `rv`, or None when they are no longer all kept.
    pub fn events_after(&self, rv: u64) -> Option<impl Iterator<Item = &Event>> {
        let oldest_kept = self.history.front().map_or(self.rv, |e| e.rv - 1);
        (rv >= oldest_kept).then(|| self.history.iter().filter(move |e| e.rv > rv))
    }
}

/// A parsed `labelSelector` or `fieldSelector`: every requirement must hold.
#[derive(Default, Clone)]
pub(crate) struct Selector(Vec<Requirement>);

#[derive(Clone)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    /// Parse the selector syntax (`a=b,c!=d,e in (f,g),!h`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(Selector(reqs))
    }

    /// Whether labels (or field values) looked up by `value` satisfy every requirement.
    pub fn matches(&self, value: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => value(k).as_deref() == Some(v),
            Requirement::NotEquals(k, v) => value(k).as_deref() != Some(v),
            Requirement::In(k, vs) => value(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => value(k).is_none_or(|x| !vs.contains(&x)),
            Requirement::Exists(k) => value(k).is_some(),
            Requirement::NotExists(k) => value(k).is_none(),
        })
    }

    pub fn matches_labels(&self, obj: &Value) -> bool {
        self.matches(|k| obj["metadata"]["labels"][k].as_str().map(String::from))
    }

    /// Field selectors name dotted paths (`metadata.name`, `status.phase`).
    pub fn matches_fields(&self, obj: &Value) -> bool {
        self.matches(|k| {
            let v = k.split('.').fold(obj, |v, f| &v[f]);
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                v => Some(v.to_string()),
            }
        })
    }
}

/// Split on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(k.trim().into(), v.trim().into()));
    }
    for (op, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((k, set)) = part.split_once(op) {
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("unable to parse requirement: {part:?}"))?;
            let values = inner.split(',').map(|v| v.trim().to_string()).collect();
            let k = k.trim().to_string();
            return Ok(if notin {
                Requirement::NotIn(k, values)
            } else {
                Requirement::In(k, values)
            });
        }
    }
    match part.strip_prefix('!') {
        Some(k) => Ok(Requirement::NotExists(k.trim().into())),
        None if part.contains(char::is_whitespace) => {
            Err(format!("unable to parse requirement: {part:?}"))
        }
        None => Ok(Requirement::Exists(part.into())),
    }
}
