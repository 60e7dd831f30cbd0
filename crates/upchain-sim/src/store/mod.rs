//! The object store with the API server's semantics: one cluster-wide resourceVersion,
//! optimistic concurrency, the status subresource, finalizers, owner-reference garbage
//! collection, graceful Pod deletion, Eviction against PodDisruptionBudgets, and a
//! bounded watch history.

mod cordons;
mod errors;
mod owners;
mod pods;
#[cfg(test)]
mod tests;
mod write;

pub use cordons::{CordonMoment, NodeState, node_ready};
pub use errors::*;
use owners::OwnerIndex;
pub use pods::pod_ready;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::patch::{Ownership, PatchError};
use crate::registry::{Registry, ResourceType};
use crate::selector::Selector;

/// Object coordinates within one type.
type Slot = (String, String);

/// An object's place in the store: its type's id and its slot.
pub type Key = (String, Slot);

/// All objects of the cluster.
#[derive(Debug)]
pub struct Store {
    registry: Registry,
    objects: BTreeMap<String, BTreeMap<Slot, Value>>,
    ownership: HashMap<(String, Slot), Ownership>,
    owners: OwnerIndex,
    /// Pods by `spec.nodeName` (unbound Pods under "").
    pods_by_node: HashMap<String, BTreeSet<Slot>>,
    /// Objects changed since the controllers last asked, with the owners of changed
    /// dependents: what the controllers' next pass looks at.
    changed: BTreeSet<Key>,
    rv: u64,
    uids: u64,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    changes: broadcast::Sender<Arc<Change>>,
    clock: Clock,
    /// PodDisruptionBudgets (namespace/name) that refuse every eviction: a fault.
    pub stubborn_pdbs: BTreeSet<String>,
    /// Every moment a node became unschedulable, with the state of every node then: the
    /// record the chaos tests check the invariants against.
    pub cordons: Vec<CordonMoment>,
    /// What each Pod's container printed, by (namespace, name), as `pods/log` serves it.
    logs: HashMap<(String, String), String>,
}

fn meta<'a>(object: &'a Value, key: &str) -> &'a str {
    object["metadata"][key].as_str().unwrap_or_default()
}

fn not_found(rt: &ResourceType, name: &str) -> ApiError {
    ApiError::NotFound {
        kind: rt.plural.clone(),
        name: name.to_owned(),
    }
}

/// Everything but metadata and status: a change here bumps metadata.generation.
fn spec_part(object: &Value) -> Value {
    let mut part = object.clone();
    if let Some(map) = part.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    part
}

impl Store {
    /// An empty store.
    pub fn new(clock: Clock, history_limit: usize) -> Self {
        let (changes, _) = broadcast::channel(65_536);
        Self {
            registry: Registry::default(),
            objects: BTreeMap::new(),
            ownership: HashMap::new(),
            owners: OwnerIndex::default(),
            pods_by_node: HashMap::new(),
            changed: BTreeSet::new(),
            rv: 1,
            uids: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            changes,
            clock,
            stubborn_pdbs: BTreeSet::new(),
            cordons: Vec::new(),
            logs: HashMap::new(),
        }
    }

    /// Appends to what a Pod's container printed.
    pub fn append_log(&mut self, namespace: &str, pod: &str, text: &str) {
        self.logs
            .entry((namespace.to_owned(), pod.to_owned()))
            .or_default()
            .push_str(text);
    }

    /// Whether the Pod is bound to a node.
    pub fn pod_has_node(&self, namespace: &str, pod: &str) -> bool {
        self.type_by_id("pods")
            .and_then(|pods| self.get(&pods, namespace, pod).ok())
            .is_some_and(|p| {
                p["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            })
    }

    /// A Pod's log, as `GET pods/{name}/log` serves it: the last `tail_lines` lines, then
    /// at most the last `limit_bytes` bytes. 404 when the Pod does not exist; 400 when it
    /// has several containers and `container` names none of them, as a real server answers.
    pub fn pod_log(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        tail_lines: Option<usize>,
        limit_bytes: Option<usize>,
    ) -> Result<String, ApiError> {
        let pods = self.type_by_id("pods").ok_or_else(|| ApiError::NotFound {
            kind: "resource".into(),
            name: "pods".into(),
        })?;
        let object = self.get(&pods, namespace, pod)?;
        let containers: Vec<&str> = object["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        match container {
            None if containers.len() > 1 => {
                return Err(ApiError::BadRequest(format!(
                    "a container name must be specified for pod {pod}, choose one of: [{}]",
                    containers.join(" ")
                )));
            }
            Some(name) if !containers.contains(&name) => {
                return Err(ApiError::BadRequest(format!(
                    "container {name} is not valid for pod {pod}"
                )));
            }
            _ => {}
        }
        let log = self
            .logs
            .get(&(namespace.to_owned(), pod.to_owned()))
            .map(String::as_str)
            .unwrap_or_default();
        let mut start = 0;
        if let Some(tail) = tail_lines {
            let lines: Vec<usize> = log
                .trim_end_matches('\n')
                .match_indices('\n')
                .map(|(i, _)| i + 1)
                .collect();
            if lines.len() >= tail {
                start = if tail == 0 {
                    log.len()
                } else {
                    lines[lines.len() - tail]
                };
            }
        }
        let mut text = &log[start..];
        if let Some(limit) = limit_bytes.filter(|l| *l < text.len()) {
            let mut cut = text.len() - limit;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text = &text[cut..];
        }
        Ok(text.to_owned())
    }

    /// The served types.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The clock the store stamps objects with.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    fn type_of(&self, api_version: &str, kind: &str) -> Result<ResourceType, ApiError> {
        self.registry
            .by_kind(api_version, kind)
            .cloned()
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "no kind \"{kind}\" is registered for version \"{api_version}\""
                ))
            })
    }

    /// A resource type by store id (`pods`, `jobs.batch`).
    pub fn type_by_id(&self, id: &str) -> Option<ResourceType> {
        let (plural, group) = id.split_once('.').unwrap_or((id, ""));
        self.registry
            .types()
            .iter()
            .find(|t| t.plural == plural && t.group == group)
            .cloned()
    }

    fn commit(
        &mut self,
        rt: &ResourceType,
        slot: Slot,
        object: Option<Value>,
        kind: ChangeType,
        mut previous: Value,
    ) {
        self.rv += 1;
        let rv = self.rv;
        let key: Key = (rt.id(), slot.clone());
        let mut before = None;
        let object = match object {
            Some(mut object) => {
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                before = self
                    .objects
                    .entry(rt.id())
                    .or_default()
                    .insert(slot, object.clone());
                if let Some(before) = &before {
                    self.forget(&key, before);
                }
                self.learn(&key, &object);
                object
            }
            None => {
                let gone = self.objects.get_mut(&key.0).and_then(|o| o.remove(&slot));
                if let Some(gone) = gone {
                    self.forget(&key, &gone);
                    self.owners.suspect_dependents_of(meta(&gone, "uid"));
                }
                self.ownership.remove(&key);
                previous["metadata"]["resourceVersion"] = json!(rv.to_string());
                previous
            }
        };
        self.record_cordon(rt, &object, before.as_ref());
        let change = Arc::new(Change {
            rv,
            resource: rt.id(),
            kind,
            object,
            previous: before.filter(|_| kind == ChangeType::Modified),
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
        let mirrored = (rt.id() == "events.events.k8s.io").then(|| core_event(&change.object));
        let _ = self.changes.send(change);
        if let Some(core) = mirrored {
            self.mirror_event(core, kind);
        }
        if rt.id() == "customresourcedefinitions.apiextensions.k8s.io" {
            self.register_crds();
        }
    }

    fn forget(&mut self, key: &Key, object: &Value) {
        self.mark_changed(key, object);
        self.owners.forget(key, object);
        if key.0 == "pods" {
            let node = object["spec"]["nodeName"].as_str().unwrap_or_default();
            if let Some(pods) = self.pods_by_node.get_mut(node) {
                pods.remove(&key.1);
                if pods.is_empty() {
                    self.pods_by_node.remove(node);
                }
            }
        }
    }

    fn learn(&mut self, key: &Key, object: &Value) {
        self.owners.learn(key, object);
        self.mark_changed(key, object);
        if key.0 == "pods" {
            let node = object["spec"]["nodeName"].as_str().unwrap_or_default();
            self.pods_by_node
                .entry(node.to_owned())
                .or_default()
                .insert(key.1.clone());
        }
    }

    fn mark_changed(&mut self, key: &Key, object: &Value) {
        self.changed.insert(key.clone());
        for owner in owner_uids(object) {
            if let Some(owner_key) = self.owners.by_uid.get(&owner) {
                self.changed.insert(owner_key.clone());
            }
        }
    }

    /// The objects changed since the last call (and the owners of changed dependents).
    pub fn take_changed(&mut self) -> BTreeSet<Key> {
        std::mem::take(&mut self.changed)
    }

    /// The objects changed since the last [`Store::take_changed`], left in place.
    pub fn changed_so_far(&self) -> &BTreeSet<Key> {
        &self.changed
    }

    /// The object at `key`, borrowed.
    pub fn object_at(&self, key: &Key) -> Option<&Value> {
        self.objects.get(&key.0).and_then(|o| o.get(&key.1))
    }

    /// The node named `name`, borrowed.
    pub fn node(&self, name: &str) -> Option<&Value> {
        self.objects
            .get("nodes")
            .and_then(|o| o.get(&(String::new(), name.to_owned())))
    }

    /// Every object of a type, borrowed.
    pub fn iter(&self, id: &str) -> impl Iterator<Item = &Value> {
        self.objects.get(id).into_iter().flat_map(|o| o.values())
    }

    /// Every object of a type in one namespace, borrowed.
    pub fn iter_in<'a>(&'a self, id: &str, namespace: &'a str) -> impl Iterator<Item = &'a Value> {
        self.objects.get(id).into_iter().flat_map(move |o| {
            o.range((namespace.to_owned(), String::new())..)
                .take_while(move |((ns, _), _)| ns == namespace)
                .map(|(_, v)| v)
        })
    }

    /// The objects naming `uid` in their ownerReferences.
    pub fn dependents_of<'a>(&'a self, uid: &str) -> impl Iterator<Item = &'a Value> {
        self.owners
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|key| self.object_at(key))
    }

    /// The Pods bound to `node` ("" for the unbound ones).
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Value> {
        let pods = self.objects.get("pods");
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(move |slot| pods.and_then(|p| p.get(slot)))
    }

    /// How many Pods are bound to `node`.
    pub fn pod_count_on(&self, node: &str) -> usize {
        self.pods_by_node.get(node).map_or(0, BTreeSet::len)
    }

    /// Reads one object.
    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&rt.id())
            .and_then(|o| o.get(&(namespace.to_owned(), name.to_owned())))
            .cloned()
            .ok_or_else(|| not_found(rt, name))
    }

    /// Lists objects of a type, in a namespace or all, filtered by selectors.
    pub fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        labels: &Selector,
        fields: &Selector,
    ) -> Vec<Value> {
        self.list_page(rt, namespace, labels, fields, None, usize::MAX)
            .0
    }

    /// Up to `limit` matching objects in key order after `after`, and the key of the last
    /// one when more may follow (the API server's `limit` and `continue`). Pods selected by
    /// `spec.nodeName=` come from the by-node index, as a real API server's field index
    /// serves them, so draining one node does not scan every Pod.
    pub fn list_page(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        labels: &Selector,
        fields: &Selector,
        after: Option<&Slot>,
        limit: usize,
    ) -> (Vec<Value>, Option<Slot>) {
        let id = rt.id();
        let objects = self.objects.get(&id);
        let from = (after.map_or(Unbounded, Excluded), Unbounded);
        let candidates: Box<dyn Iterator<Item = (&Slot, &Value)>> =
            match fields.required_value("spec.nodeName") {
                Some(node) if id == "pods" => Box::new(
                    self.pods_by_node
                        .get(node)
                        .into_iter()
                        .flat_map(move |slots| slots.range::<Slot, _>(from))
                        .filter_map(move |slot| Some((slot, objects?.get(slot)?))),
                ),
                _ => Box::new(
                    objects
                        .into_iter()
                        .flat_map(move |o| o.range::<Slot, _>(from)),
                ),
            };
        let mut matching = candidates
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .filter(|(_, v)| labels.matches_labels(v) && fields.matches_fields(v));
        let items: Vec<(&Slot, &Value)> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        let last = items
            .last()
            .map(|(slot, _)| (*slot).clone())
            .filter(|_| more);
        (items.into_iter().map(|(_, v)| v.clone()).collect(), last)
    }

    /// Every object of a type, unfiltered.
    pub fn all(&self, id: &str) -> Vec<Value> {
        self.objects
            .get(id)
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The history since `rv` for a watch, or 410 Gone when it is older than the history.
    pub fn history_since(&self, rv: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        self.check_kept(rv)?;
        Ok(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    /// 410 Gone when a watch or a list continued from `rv` could miss changes no longer kept.
    pub fn check_kept(&self, rv: u64) -> Result<(), ApiError> {
        let oldest = self.history.front().map_or(self.rv, |c| c.rv);
        if rv + 1 < oldest && rv < self.rv {
            return Err(ApiError::Gone(format!(
                "{rv} (the oldest kept is {})",
                oldest.saturating_sub(1)
            )));
        }
        Ok(())
    }
}

/// An events.k8s.io/v1 Event as the core v1 API shows it.
fn core_event(event: &Value) -> Value {
    let first = event["deprecatedFirstTimestamp"]
        .as_str()
        .or(event["eventTime"].as_str())
        .map(|t| t.chars().take(19).collect::<String>() + "Z");
    let last = event["series"]["lastObservedTime"]
        .as_str()
        .or(event["deprecatedLastTimestamp"].as_str())
        .or(event["eventTime"].as_str())
        .map(|t| t.chars().take(19).collect::<String>() + "Z");
    json!({
        "apiVersion": "v1", "kind": "Event", "metadata": event["metadata"].clone(),
        "involvedObject": event["regarding"].clone(), "related": event["related"].clone(),
        "reason": event["reason"].clone(), "message": event["note"].clone(), "type": event["type"].clone(),
        "action": event["action"].clone(),
        "source": {"component": event["reportingController"].clone()},
        "reportingComponent": event["reportingController"].clone(), "reportingInstance": event["reportingInstance"].clone(),
        "count": event["series"]["count"].as_i64().or(event["deprecatedCount"].as_i64()).unwrap_or(1),
        "firstTimestamp": first, "lastTimestamp": last, "eventTime": event["eventTime"].clone(),
    })
}

/// What the API server does with a Secret's `stringData`: merged into `data`, encoded.
fn secret_string_data(mut secret: Value) -> Value {
    use base64::Engine;
    let Some(Value::Object(strings)) = secret.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return secret;
    };
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    for (key, value) in strings {
        let text = value.as_str().unwrap_or_default();
        secret["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
    secret
}

fn strip_nulls_in_metadata(object: &mut Value) {
    if let Some(m) = object["metadata"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
}

fn owner_uids(object: &Value) -> BTreeSet<String> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_owned))
        .collect()
}

fn patch_error(error: PatchError) -> ApiError {
    match error {
        PatchError::Invalid(message) => ApiError::BadRequest(message),
        conflict @ PatchError::Conflict(_) => ApiError::Conflict(conflict.to_string()),
    }
}

/// Five lowercase alphanumerics derived from a counter, like generateName suffixes.
fn suffix(mut n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    n = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize];
            n /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}
