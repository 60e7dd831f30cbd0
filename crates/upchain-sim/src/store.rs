//! The object store with the API server's semantics: one cluster-wide resourceVersion,
//! optimistic concurrency, the status subresource, finalizers, owner-reference garbage
//! collection, Eviction against PodDisruptionBudgets, and a bounded watch history.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::admission;
use crate::clock::Clock;
use crate::patch::{self, Ownership, PatchError};
use crate::registry::{Registry, ResourceType};
use crate::selector::{Selector, label_selector_matches, labels_of};

/// Watch events kept for clients that resume from an older resourceVersion.
pub const DEFAULT_HISTORY: usize = 10_000;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed.
    Deleted,
}

impl ChangeType {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One change, as watchers receive it.
#[derive(Clone, Debug)]
pub struct Change {
    /// The resourceVersion it was committed at.
    pub rv: u64,
    /// The type's store id (`plural` or `plural.group`).
    pub resource: String,
    /// What happened.
    pub kind: ChangeType,
    /// The object after the change (its last state, for a deletion).
    pub object: Value,
    /// For a modification, the object before it: a watch with a selector turns a change
    /// that leaves (or enters) the selection into DELETED (or ADDED), as a real server does.
    pub previous: Option<Value>,
}

/// etcd's default request size limit (1.5 MiB): a custom resource stored larger is refused.
pub const MAX_OBJECT_BYTES: usize = 1_572_864;

/// An API error, with the HTTP status and reason a real server would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404.
    #[error("{kind} \"{name}\" not found")]
    NotFound {
        /// Resource plural.
        kind: String,
        /// Object name.
        name: String,
    },
    /// 409 on create.
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists {
        /// Resource plural.
        kind: String,
        /// Object name.
        name: String,
    },
    /// 409 on a stale write or an apply conflict.
    #[error("{0}")]
    Conflict(String),
    /// 422.
    #[error("{0}")]
    Invalid(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 410: the resourceVersion is older than the watch history.
    #[error("too old resource version: {0}")]
    Gone(String),
    /// 429: eviction would break a PodDisruptionBudget.
    #[error("{0}")]
    TooManyRequests(String),
    /// 500, injected.
    #[error("{0}")]
    Internal(String),
    /// 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 415: protobuf bodies are not served; clients fall back to JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
}

impl ApiError {
    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict(_) => 409,
            ApiError::Invalid(_) => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Gone(_) => 410,
            ApiError::TooManyRequests(_) => 429,
            ApiError::Internal(_) => 500,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::UnsupportedMediaType(_) => 415,
        }
    }

    /// The Status reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Invalid(_) => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Gone(_) => "Expired",
            ApiError::TooManyRequests(_) => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
        }
    }

    /// A `Status` object, as the body of the error response.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.to_string(), "reason": self.reason(), "code": self.code(),
        });
        if let ApiError::NotFound { kind, name } | ApiError::AlreadyExists { kind, name } = self {
            status["details"] = json!({"name": name, "kind": kind});
        }
        if let ApiError::TooManyRequests(_) = self {
            status["details"] =
                json!({"causes": [{"reason": "DisruptionBudget", "message": self.to_string()}]});
        }
        status
    }
}

/// How a patch body is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// application/merge-patch+json
    Merge,
    /// application/strategic-merge-patch+json
    Strategic,
    /// application/json-patch+json
    Json,
    /// application/apply-patch+yaml (server-side apply)
    Apply,
}

/// How dependents are treated when their owner is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted after the owner (the default).
    #[default]
    Background,
    /// Dependents are deleted before the owner.
    Foreground,
    /// Dependents lose the owner reference and stay.
    Orphan,
}

/// Object coordinates within one type.
type Slot = (String, String);

/// An object's place in the store: its type's id and its slot.
pub type Key = (String, Slot);

/// Who owns whom, kept up to date on every commit so that garbage collection looks only
/// at the objects a change concerns instead of scanning the whole store.
#[derive(Debug, Default)]
struct OwnerIndex {
    /// Where each uid lives.
    by_uid: HashMap<String, Key>,
    /// The objects naming each uid in their ownerReferences.
    dependents: HashMap<String, BTreeSet<Key>>,
    /// Objects held by the foregroundDeletion finalizer.
    foreground: BTreeSet<Key>,
    /// Objects whose owners may be gone: checked by the next collection.
    suspects: BTreeSet<Key>,
}

impl OwnerIndex {
    fn forget(&mut self, key: &Key, object: &Value) {
        let uid = meta(object, "uid");
        if self.by_uid.get(uid) == Some(key) {
            self.by_uid.remove(uid);
        }
        for owner in owner_uids(object) {
            if let Some(set) = self.dependents.get_mut(&owner) {
                set.remove(key);
                if set.is_empty() {
                    self.dependents.remove(&owner);
                }
            }
        }
        self.foreground.remove(key);
    }

    fn learn(&mut self, key: &Key, object: &Value) {
        let uid = meta(object, "uid").to_owned();
        let owners = owner_uids(object);
        if !owners.is_empty() {
            self.suspects.insert(key.clone());
        }
        for owner in owners {
            self.dependents
                .entry(owner)
                .or_default()
                .insert(key.clone());
        }
        if held_in_foreground(object) {
            self.foreground.insert(key.clone());
            self.suspect_dependents_of(&uid);
        }
        self.by_uid.insert(uid, key.clone());
    }

    fn suspect_dependents_of(&mut self, uid: &str) {
        if let Some(dependents) = self.dependents.get(uid) {
            self.suspects.extend(dependents.iter().cloned());
        }
    }

    /// An owner counts as present unless it is gone or being deleted in the foreground.
    fn present(&self, uid: &str) -> bool {
        self.by_uid
            .get(uid)
            .is_some_and(|key| !self.foreground.contains(key))
    }

    fn has_dependents(&self, uid: &str) -> bool {
        self.dependents.get(uid).is_some_and(|d| !d.is_empty())
    }
}

fn held_in_foreground(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| f == "foregroundDeletion")
}

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

/// The cluster at the instant a node was cordoned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CordonMoment {
    /// When, on the cluster's clock.
    pub at: jiff::Timestamp,
    /// The node that became unschedulable.
    pub node: String,
    /// Every node then that was cordoned or not Ready (the cordoned one included); the
    /// others were Ready and schedulable.
    pub nodes: Vec<NodeState>,
}

/// One node's state in a [`CordonMoment`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// Name.
    pub name: String,
    /// Carries the control-plane role label.
    pub control_plane: bool,
    /// The Ready condition is True.
    pub ready: bool,
    /// spec.unschedulable.
    pub unschedulable: bool,
    /// status.nodeInfo.kubeletVersion.
    pub kubelet: String,
}

/// The node's Ready condition is True.
pub fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

impl NodeState {
    fn of(node: &Value) -> Self {
        Self {
            name: meta(node, "name").to_owned(),
            control_plane: !node["metadata"]["labels"][crate::seed::CONTROL_PLANE_LABEL].is_null(),
            ready: node_ready(node),
            unschedulable: node["spec"]["unschedulable"] == true,
            kubelet: node["status"]["nodeInfo"]["kubeletVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }
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
        let cordoned = rt.id() == "nodes"
            && object["spec"]["unschedulable"] == true
            && before
                .as_ref()
                .is_some_and(|b| b["spec"]["unschedulable"] != true);
        if cordoned {
            // Only the nodes out of service: a record of every node at every cordon
            // grows with the square of the cluster (25 million entries at 5,000 nodes).
            let nodes = self
                .iter("nodes")
                .filter(|n| n["spec"]["unschedulable"] == true || !node_ready(n))
                .map(NodeState::of)
                .collect();
            let at = self.clock.now();
            self.cordons.push(CordonMoment {
                at,
                node: meta(&object, "name").to_owned(),
                nodes,
            });
        }
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
        // One object, two API views: events.k8s.io Events are also core v1 Events.
        if let (Some(core), Some(events)) = (mirrored, self.type_by_id("events")) {
            let slot = (
                meta(&core, "namespace").to_owned(),
                meta(&core, "name").to_owned(),
            );
            let next = (kind != ChangeType::Deleted).then_some(core.clone());
            self.commit(&events, slot, next, kind, core);
        }
        if rt.id() == "customresourcedefinitions.apiextensions.k8s.io" {
            let crds: Vec<Value> = self
                .objects
                .get(&rt.id())
                .map(|o| o.values().cloned().collect())
                .unwrap_or_default();
            self.registry.set_custom(&crds);
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

    /// Admission of a custom resource against its CRD's schema: defaults applied, OpenAPI
    /// constraints and CEL rules checked. Built-in types pass through.
    fn admit(
        &self,
        rt: &ResourceType,
        object: Value,
        old: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let errors = crate::validation::builtin_errors(rt, &object, old);
        if !errors.is_empty() {
            return Err(crate::validation::refusal(
                rt,
                meta(&object, "name"),
                &errors,
            ));
        }
        let object = if rt.id() == "secrets" {
            secret_string_data(object)
        } else {
            object
        };
        let crd_name = format!("{}.{}", rt.plural, rt.group);
        let crd = self
            .objects
            .get("customresourcedefinitions.apiextensions.k8s.io")
            .and_then(|crds| crds.get(&(String::new(), crd_name)));
        let Some(schema) = crd.and_then(|crd| admission::version_schema(crd, &rt.version)) else {
            return Ok(object);
        };
        // etcd refuses a value over its request limit, and the API server passes that on.
        let size = serde_json::to_vec(&object).map_or(0, |bytes| bytes.len());
        if size > MAX_OBJECT_BYTES {
            return Err(ApiError::Internal(format!(
                "etcdserver: request is too large ({} \"{}\" is {size} bytes; the limit is {MAX_OBJECT_BYTES})",
                rt.kind,
                meta(&object, "name"),
            )));
        }
        admission::admit(schema, &object, old).map_err(|errors| {
            ApiError::Invalid(format!(
                "{} \"{}\" is invalid: {}",
                rt.kind,
                meta(&object, "name"),
                errors.join("; ")
            ))
        })
    }

    /// A server-side apply builds a typed object from the CRD's schema: a field the
    /// installed schema does not declare fails the whole apply with a 500, where other
    /// writes would have pruned it (a CRD older than its controller).
    fn check_declared(&self, rt: &ResourceType, applied: &Value) -> Result<(), ApiError> {
        let crd_name = format!("{}.{}", rt.plural, rt.group);
        let Some(schema) = self
            .objects
            .get("customresourcedefinitions.apiextensions.k8s.io")
            .and_then(|crds| crds.get(&(String::new(), crd_name)))
            .and_then(|crd| admission::version_schema(crd, &rt.version))
        else {
            return Ok(());
        };
        let mut undeclared = Vec::new();
        admission::undeclared_fields(schema, applied, "", &mut undeclared);
        undeclared.retain(|path| {
            !path.starts_with(".metadata")
                && !path.starts_with(".apiVersion")
                && !path.starts_with(".kind")
        });
        match undeclared.first() {
            None => Ok(()),
            Some(path) => Err(ApiError::Internal(format!(
                "failed to create typed patch object ({}.{}, Kind={}) {}: field not declared in schema",
                rt.group, rt.version, rt.kind, path
            ))),
        }
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

    /// Creates an object. `keep_status` is for the cluster's own controllers and seeding;
    /// clients cannot set the status of a type with a status subresource on create.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        mut object: Value,
        keep_status: bool,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        let namespace = if rt.namespaced { namespace } else { "" };
        if rt.namespaced && namespace.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{} must be created in a namespace",
                rt.plural
            )));
        }
        if rt.namespaced
            && !self
                .objects
                .get("namespaces")
                .is_some_and(|n| n.contains_key(&(String::new(), namespace.to_owned())))
        {
            return Err(ApiError::NotFound {
                kind: "namespaces".into(),
                name: namespace.to_owned(),
            });
        }
        let mut name = meta(&object, "name").to_owned();
        if name.is_empty() {
            let prefix = meta(&object, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::Invalid(
                    "metadata.name: Required value: name or generateName is required".into(),
                ));
            }
            self.uids += 1;
            name = format!("{prefix}{}", suffix(self.uids));
        }
        if name.len() > 253 {
            return Err(ApiError::Invalid(
                "metadata.name: Invalid value: must be no more than 253 characters".into(),
            ));
        }
        let slot = (namespace.to_owned(), name.clone());
        if self
            .objects
            .get(&rt.id())
            .is_some_and(|o| o.contains_key(&slot))
        {
            return Err(ApiError::AlreadyExists {
                kind: rt.plural.clone(),
                name,
            });
        }
        self.uids += 1;
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        let metadata = &mut object["metadata"];
        metadata["name"] = json!(name);
        if rt.namespaced {
            metadata["namespace"] = json!(namespace);
        } else if let Some(m) = metadata.as_object_mut() {
            m.remove("namespace");
        }
        metadata["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
        metadata["creationTimestamp"] = json!(self.clock.rfc3339());
        metadata["generation"] = json!(1);
        if let Some(m) = metadata.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("resourceVersion");
        }
        if rt.status
            && !keep_status
            && let Some(m) = object.as_object_mut()
        {
            m.remove("status");
        }
        match rt.kind.as_str() {
            "Namespace" => object["status"] = json!({"phase": "Active"}),
            "CustomResourceDefinition" => {
                object["status"] = json!({"conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": self.clock.rfc3339()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": self.clock.rfc3339()}
                ], "acceptedNames": object["spec"]["names"].clone(), "storedVersions": [object["spec"]["versions"][0]["name"].clone()]});
            }
            _ => {}
        }
        let object = self.admit(rt, object, None)?;
        self.commit(
            rt,
            slot.clone(),
            Some(object),
            ChangeType::Added,
            Value::Null,
        );
        self.get(rt, &slot.0, &slot.1)
    }

    /// Replaces an object (or, with `status_only`, its status). A resourceVersion in the
    /// body that is not the current one is a 409 Conflict.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        object: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let current = self.get(rt, namespace, name)?;
        let given_rv = meta(&object, "resourceVersion");
        if !given_rv.is_empty() && given_rv != meta(&current, "resourceVersion") {
            return Err(ApiError::Conflict(format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.plural
            )));
        }
        self.write(rt, namespace, name, current, object, status_only)
    }

    /// Writes `next` over `current`, keeping identity, status or spec as the endpoint
    /// allows, bumping generation, and completing a deletion whose finalizers are gone.
    fn write(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        current: Value,
        mut next: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        if !next.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        if status_only {
            let status = next["status"].clone();
            next = current.clone();
            next["status"] = status;
        } else {
            if rt.status {
                next["status"] = current["status"].clone();
            }
            for key in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "namespace",
                "name",
            ] {
                next["metadata"][key] = current["metadata"][key].clone();
            }
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
            let changed = spec_part(&current) != spec_part(&next);
            next["metadata"]["generation"] =
                json!(if changed { generation + 1 } else { generation });
        }
        next["apiVersion"] = json!(rt.api_version());
        next["kind"] = json!(rt.kind);
        strip_nulls_in_metadata(&mut next);
        if next.get("status").is_some_and(Value::is_null)
            && let Some(m) = next.as_object_mut()
        {
            m.remove("status");
        }
        let next = self.admit(rt, next, Some(&current))?;
        let slot = (namespace.to_owned(), name.to_owned());
        let deleting = !next["metadata"]["deletionTimestamp"].is_null();
        let finalizers_left = next["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers_left {
            self.commit(rt, slot, None, ChangeType::Deleted, next.clone());
            self.collect_garbage();
            return Ok(next);
        }
        // An unchanged object is not written again: no new resourceVersion, no event.
        let mut comparable = next.clone();
        comparable["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if comparable == current {
            return Ok(current);
        }
        self.commit(rt, slot, Some(next), ChangeType::Modified, Value::Null);
        self.collect_garbage();
        self.get(rt, namespace, name)
    }

    /// Patches an object; a server-side apply of a missing object creates it.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        patch_type: PatchType,
        body: &Value,
        status_only: bool,
        field_manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        let namespace = if rt.namespaced { namespace } else { "" };
        let current = match self.get(rt, namespace, name) {
            Ok(current) => current,
            Err(_) if patch_type == PatchType::Apply && !status_only => {
                let mut ownership = Ownership::new();
                let mut object = json!({"metadata": {"name": name}});
                patch::apply(&mut object, body, field_manager, force, &mut ownership)
                    .map_err(patch_error)?;
                let created = self.create(rt, namespace, object, false)?;
                self.ownership.insert(
                    (rt.id(), (namespace.to_owned(), name.to_owned())),
                    ownership,
                );
                return Ok(created);
            }
            Err(error) => return Err(error),
        };
        let given_rv = meta(body, "resourceVersion");
        if !given_rv.is_empty() && given_rv != meta(&current, "resourceVersion") {
            return Err(ApiError::Conflict(format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                rt.plural
            )));
        }
        let mut next = current.clone();
        match patch_type {
            PatchType::Merge => patch::merge_patch(&mut next, body),
            PatchType::Strategic => patch::strategic_merge_patch(&mut next, body),
            PatchType::Json => patch::json_patch(&mut next, body).map_err(patch_error)?,
            PatchType::Apply => {
                let key = (rt.id(), (namespace.to_owned(), name.to_owned()));
                let mut ownership = self.ownership.get(&key).cloned().unwrap_or_default();
                // Status and the rest are owned separately, as with real subresources.
                let manager = if status_only {
                    format!("{field_manager}/status")
                } else {
                    field_manager.to_owned()
                };
                let applied = if status_only {
                    json!({"status": body["status"].clone()})
                } else {
                    body.clone()
                };
                self.check_declared(rt, &applied)?;
                patch::apply(&mut next, &applied, &manager, force, &mut ownership)
                    .map_err(patch_error)?;
                // Ownership changes only with a write that is stored: a refused apply
                // leaves no trace.
                let written = self.write(rt, namespace, name, current, next, status_only)?;
                if self.object_at(&key).is_some() {
                    self.ownership.insert(key, ownership);
                }
                return Ok(written);
            }
        }
        self.write(rt, namespace, name, current, next, status_only)
    }

    /// Deletes an object: with finalizers it is only marked (deletionTimestamp); dependents
    /// follow by `propagation`.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        propagation: Propagation,
    ) -> Result<Value, ApiError> {
        let namespace = if rt.namespaced { namespace } else { "" };
        let mut object = self.get(rt, namespace, name)?;
        let uid = meta(&object, "uid").to_owned();
        if rt.id() == "namespaces" {
            self.empty_namespace(name);
        }
        if propagation == Propagation::Orphan {
            self.orphan_dependents(&uid);
        }
        if !object["metadata"]["deletionTimestamp"].is_null() {
            return Ok(object);
        }
        let mut finalizers: Vec<Value> = object["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if propagation == Propagation::Foreground && self.has_dependents(&uid) {
            finalizers.push(json!("foregroundDeletion"));
        }
        let slot = (namespace.to_owned(), name.to_owned());
        if finalizers.is_empty() {
            self.commit(rt, slot, None, ChangeType::Deleted, object.clone());
        } else {
            object["metadata"]["finalizers"] = json!(finalizers);
            object["metadata"]["deletionTimestamp"] = json!(self.clock.rfc3339());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            self.commit(
                rt,
                slot.clone(),
                Some(object),
                ChangeType::Modified,
                Value::Null,
            );
            object = self.get(rt, &slot.0, &slot.1)?;
        }
        self.collect_garbage();
        Ok(object)
    }

    /// What the namespace controller does on deletion: everything in the namespace goes.
    fn empty_namespace(&mut self, namespace: &str) {
        let contents: Vec<(ResourceType, Slot)> = self
            .objects
            .iter()
            .flat_map(|(id, objects)| {
                objects
                    .keys()
                    .filter(|(ns, _)| ns == namespace)
                    .map(move |slot| (id, slot.clone()))
            })
            .filter_map(|(id, slot)| self.type_by_id(id).map(|rt| (rt, slot)))
            .collect();
        for (rt, (ns, name)) in contents {
            let _ = self.delete(&rt, &ns, &name, Propagation::Background);
        }
    }

    fn has_dependents(&self, uid: &str) -> bool {
        self.owners.has_dependents(uid)
    }

    fn orphan_dependents(&mut self, uid: &str) {
        let dependents: Vec<Key> = self
            .owners
            .dependents
            .get(uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for (id, slot) in dependents {
            let Some(rt) = self.type_by_id(&id) else {
                continue;
            };
            if let Ok(mut object) = self.get(&rt, &slot.0, &slot.1) {
                if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"].as_str() != Some(uid));
                }
                self.commit(&rt, slot, Some(object), ChangeType::Modified, Value::Null);
            }
        }
    }

    /// The garbage collector: deletes dependents whose owners are all gone (or being
    /// deleted in the foreground), and finishes foreground deletions without dependents.
    /// Only the objects a commit marked as suspects are looked at.
    fn collect_garbage(&mut self) {
        for _ in 0..64 {
            let suspects = std::mem::take(&mut self.owners.suspects);
            let orphans: Vec<Key> = suspects
                .into_iter()
                .filter(|key| {
                    self.object_at(key).is_some_and(|o| {
                        let owners = owner_uids(o);
                        o["metadata"]["deletionTimestamp"].is_null()
                            && !owners.is_empty()
                            && owners.iter().all(|u| !self.owners.present(u))
                    })
                })
                .collect();
            let finished: Vec<Key> = self
                .owners
                .foreground
                .iter()
                .filter(|key| {
                    self.object_at(key)
                        .is_some_and(|o| !self.owners.has_dependents(meta(o, "uid")))
                })
                .cloned()
                .collect();
            if orphans.is_empty() && finished.is_empty() {
                return;
            }
            for (id, slot) in orphans {
                if let Some(rt) = self.type_by_id(&id) {
                    let _ = self.delete(&rt, &slot.0, &slot.1, Propagation::Background);
                }
            }
            for (id, slot) in finished {
                let Some(rt) = self.type_by_id(&id) else {
                    continue;
                };
                if let Ok(current) = self.get(&rt, &slot.0, &slot.1) {
                    let mut object = current.clone();
                    if let Some(f) = object["metadata"]["finalizers"].as_array_mut() {
                        f.retain(|f| f != "foregroundDeletion");
                    }
                    let _ = self.write(&rt, &slot.0, &slot.1, current, object, false);
                }
            }
        }
    }

    /// Evicts a Pod unless a PodDisruptionBudget covering it allows no disruption (429).
    pub fn evict(&mut self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let pods = self
            .type_by_id("pods")
            .ok_or_else(|| ApiError::Internal("pods are not served".into()))?;
        let pod = self.get(&pods, namespace, name)?;
        let healthy = pod["status"]["phase"].as_str() == Some("Running");
        let pdbs = self
            .type_by_id("poddisruptionbudgets.policy")
            .ok_or_else(|| ApiError::Internal("PDBs are not served".into()))?;
        let labels = labels_of(&pod);
        let covering: Vec<Value> = self
            .list(
                &pdbs,
                Some(namespace),
                &Selector::default(),
                &Selector::default(),
            )
            .into_iter()
            .filter(|pdb| label_selector_matches(&pdb["spec"]["selector"], &labels))
            .collect();
        if healthy {
            for pdb in &covering {
                let pdb_name = meta(pdb, "name");
                let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
                if allowed < 1
                    || self
                        .stubborn_pdbs
                        .contains(&format!("{namespace}/{pdb_name}"))
                {
                    return Err(ApiError::TooManyRequests(format!(
                        "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                        pdb["status"]["desiredHealthy"].as_i64().unwrap_or(0),
                        pdb["status"]["currentHealthy"].as_i64().unwrap_or(0)
                    )));
                }
            }
            for pdb in covering {
                let mut next = pdb.clone();
                let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
                next["status"]["disruptionsAllowed"] = json!(allowed - 1);
                let pdb_name = meta(&pdb, "name").to_owned();
                self.write(&pdbs, namespace, &pdb_name, pdb, next, true)?;
            }
        }
        self.delete(&pods, namespace, name, Propagation::Background)?;
        Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }

    /// Creates an object the cluster itself makes (a controller or seed), keeping its status.
    pub fn create_own(
        &mut self,
        api_version: &str,
        kind: &str,
        object: Value,
    ) -> Result<Value, ApiError> {
        let rt = self.type_of(api_version, kind)?;
        let namespace = meta(&object, "namespace").to_owned();
        self.create(&rt, &namespace, object, true)
    }

    /// Writes the spec and metadata (or, with `status_only`, the status) of an object the
    /// cluster itself changes. Unchanged objects are not written.
    pub fn write_own(&mut self, object: Value, status_only: bool) -> Result<Value, ApiError> {
        let rt = self.type_of(
            object["apiVersion"].as_str().unwrap_or_default(),
            object["kind"].as_str().unwrap_or_default(),
        )?;
        let namespace = meta(&object, "namespace").to_owned();
        let name = meta(&object, "name").to_owned();
        let current = self.get(&rt, &namespace, &name)?;
        self.write(&rt, &namespace, &name, current, object, status_only)
    }

    /// Deletes an object the cluster itself removes.
    pub fn delete_own(&mut self, object: &Value) -> Result<Value, ApiError> {
        let rt = self.type_of(
            object["apiVersion"].as_str().unwrap_or_default(),
            object["kind"].as_str().unwrap_or_default(),
        )?;
        self.delete(
            &rt,
            meta(object, "namespace"),
            meta(object, "name"),
            Propagation::Background,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        let mut store = Store::new(Clock::virtual_at(jiff::Timestamp::UNIX_EPOCH), 8);
        store
            .create_own("v1", "Namespace", json!({"metadata": {"name": "default"}}))
            .expect("ns");
        store
    }

    fn rt(store: &Store, id: &str) -> ResourceType {
        store.type_by_id(id).expect("served")
    }

    #[test]
    fn stale_updates_conflict_and_generation_tracks_spec() {
        let mut s = store();
        let deploys = rt(&s, "deployments.apps");
        let created = s
            .create(
                &deploys,
                "default",
                json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}}),
                false,
            )
            .expect("create");
        assert_eq!(created["metadata"]["generation"], 1);
        let mut stale = created.clone();
        let mut fresh = created.clone();
        fresh["spec"]["replicas"] = json!(2);
        let updated = s
            .update(&deploys, "default", "web", fresh, false)
            .expect("update");
        assert_eq!(updated["metadata"]["generation"], 2);
        stale["spec"]["replicas"] = json!(3);
        assert_eq!(
            s.update(&deploys, "default", "web", stale, false)
                .expect_err("stale")
                .code(),
            409
        );
        // Status writes do not move generation; spec writes do not touch status.
        let mut status = updated.clone();
        status["status"] = json!({"readyReplicas": 2});
        let with_status = s
            .update(&deploys, "default", "web", status, true)
            .expect("status");
        assert_eq!(with_status["metadata"]["generation"], 2);
        let mut spec = with_status.clone();
        spec["status"] = json!({"readyReplicas": 0});
        let after = s
            .update(&deploys, "default", "web", spec, false)
            .expect("spec");
        assert_eq!(after["status"]["readyReplicas"], 2);
        assert_eq!(
            s.create(
                &deploys,
                "default",
                json!({"metadata": {"name": "web"}}),
                false
            )
            .expect_err("dup")
            .code(),
            409
        );
        assert_eq!(
            s.create(
                &deploys,
                "nowhere",
                json!({"metadata": {"name": "x"}}),
                false
            )
            .expect_err("no ns")
            .code(),
            404
        );
    }

    #[test]
    fn finalizers_hold_deletion_and_garbage_collection_follows_owners() {
        let mut s = store();
        let jobs = rt(&s, "jobs.batch");
        let pods = rt(&s, "pods");
        let job = s
            .create(
                &jobs,
                "default",
                json!({"metadata": {"name": "j", "finalizers": ["x/y"]}, "spec": {"template": {"spec": {
                    "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
                false,
            )
            .expect("job");
        let uid = job["metadata"]["uid"].clone();
        s.create(&pods, "default", json!({"metadata": {"name": "j-1", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": uid}]}}), false).expect("pod");
        let marked = s
            .delete(&jobs, "default", "j", Propagation::Background)
            .expect("marked");
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(
            s.get(&pods, "default", "j-1").is_ok(),
            "the owner still exists"
        );
        let mut release = s.get(&jobs, "default", "j").expect("still there");
        release["metadata"]["finalizers"] = json!([]);
        s.update(&jobs, "default", "j", release, false)
            .expect("finalizer removed");
        assert_eq!(s.get(&jobs, "default", "j").expect_err("gone").code(), 404);
        assert_eq!(
            s.get(&pods, "default", "j-1")
                .expect_err("collected")
                .code(),
            404
        );
    }

    #[test]
    fn pod_logs_are_served_from_their_tail() {
        let mut s = store();
        let pods = rt(&s, "pods");
        s.create(
            &pods,
            "default",
            json!({"metadata": {"name": "job-pod"}}),
            true,
        )
        .expect("pod");
        s.append_log("default", "job-pod", "one\ntwo\nthree\n");
        let log = |tail, limit| {
            s.pod_log("default", "job-pod", None, tail, limit)
                .expect("log")
        };
        assert_eq!(log(None, None), "one\ntwo\nthree\n");
        assert_eq!(log(Some(2), None), "two\nthree\n");
        assert_eq!(log(Some(9), None), "one\ntwo\nthree\n");
        assert_eq!(log(Some(2), Some(7)), "\nthree\n");
        assert!(s.pod_log("default", "gone", None, None, None).is_err());
    }

    #[test]
    fn eviction_honours_disruption_budgets() {
        let mut s = store();
        let pods = rt(&s, "pods");
        for name in ["a", "b"] {
            s.create(&pods, "default", json!({"metadata": {"name": name, "labels": {"app": "db"}}, "status": {"phase": "Running"}}), true).expect("pod");
        }
        s.create_own(
            "policy/v1",
            "PodDisruptionBudget",
            json!({"metadata": {"name": "db", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "minAvailable": 1},
            "status": {"disruptionsAllowed": 1, "currentHealthy": 2, "desiredHealthy": 1}}),
        )
        .expect("pdb");
        s.evict("default", "a").expect("first eviction allowed");
        let refused = s.evict("default", "b").expect_err("budget spent");
        assert_eq!(refused.code(), 429);
        assert!(refused.to_string().contains("disruption budget db"));
        assert!(s.get(&pods, "default", "b").is_ok());
    }

    #[test]
    fn watch_history_is_bounded_and_older_versions_are_gone() {
        let mut s = store();
        let cms = rt(&s, "configmaps");
        let start = s.resource_version();
        for i in 0..20 {
            s.create(
                &cms,
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
                false,
            )
            .expect("cm");
        }
        assert_eq!(s.history_since(start).expect_err("too old").code(), 410);
        let recent = s.history_since(s.resource_version() - 3).expect("recent");
        assert_eq!(recent.len(), 3);
        assert!(
            s.history_since(s.resource_version())
                .expect("now")
                .is_empty()
        );
    }

    #[test]
    fn crds_register_their_types() {
        let mut s = store();
        let crds = rt(&s, "customresourcedefinitions.apiextensions.k8s.io");
        let crd = serde_json::to_value(upchain_api::crd()).expect("crd");
        let created = s.create(&crds, "", crd, false).expect("crd");
        assert_eq!(created["status"]["conditions"][1]["type"], "Established");
        let upgrades = rt(&s, "k8supgrades.upchain.dev");
        s.create(
            &upgrades,
            "",
            json!({"metadata": {"name": "to-1-35"}, "spec": {"targetVersion": "1.35.2"}}),
            false,
        )
        .expect("cr");
        let applied = s
            .patch(
                &upgrades,
                "",
                "to-1-35",
                PatchType::Apply,
                &json!({"status": {"phase": "Pending"}}),
                true,
                "upchain",
                true,
            )
            .expect("status apply");
        assert_eq!(applied["status"]["phase"], "Pending");
        assert_eq!(applied["metadata"]["generation"], 1);
    }
}
