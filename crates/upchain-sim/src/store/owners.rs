//! Deletion: finalizers, propagation, and owner-reference garbage collection.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};

use super::{ApiError, ChangeType, Key, Propagation, Slot, Store, meta, owner_uids};
use crate::registry::ResourceType;

/// Who owns whom, kept up to date on every commit so that garbage collection looks only
/// at the objects a change concerns instead of scanning the whole store.
#[derive(Debug, Default)]
pub(super) struct OwnerIndex {
    /// Where each uid lives.
    pub(super) by_uid: HashMap<String, Key>,
    /// The objects naming each uid in their ownerReferences.
    pub(super) dependents: HashMap<String, BTreeSet<Key>>,
    /// Objects held by the foregroundDeletion finalizer.
    foreground: BTreeSet<Key>,
    /// Objects whose owners may be gone: checked by the next collection.
    suspects: BTreeSet<Key>,
}

impl OwnerIndex {
    pub(super) fn forget(&mut self, key: &Key, object: &Value) {
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

    pub(super) fn learn(&mut self, key: &Key, object: &Value) {
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

    pub(super) fn suspect_dependents_of(&mut self, uid: &str) {
        if let Some(dependents) = self.dependents.get(uid) {
            self.suspects.extend(dependents.iter().cloned());
        }
    }

    /// An owner counts as present unless it is gone or being deleted in the foreground.
    pub(super) fn present(&self, uid: &str) -> bool {
        self.by_uid
            .get(uid)
            .is_some_and(|key| !self.foreground.contains(key))
    }

    pub(super) fn has_dependents(&self, uid: &str) -> bool {
        self.dependents.get(uid).is_some_and(|d| !d.is_empty())
    }
}

pub(super) fn held_in_foreground(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| f == "foregroundDeletion")
}

impl Store {
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
    pub(super) fn empty_namespace(&mut self, namespace: &str) {
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

    pub(super) fn has_dependents(&self, uid: &str) -> bool {
        self.owners.has_dependents(uid)
    }

    pub(super) fn orphan_dependents(&mut self, uid: &str) {
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
    pub(super) fn collect_garbage(&mut self) {
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
}
