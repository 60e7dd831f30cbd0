//! Writes: admission, create, update, patch (merge, strategic, JSON, server-side apply),
//! and the cluster's own writes.

use serde_json::{Value, json};

use super::{
    ApiError, ChangeType, MAX_OBJECT_BYTES, PatchType, Propagation, Store, meta, patch_error,
    secret_string_data, spec_part, strip_nulls_in_metadata, suffix,
};
use crate::patch::Ownership;
use crate::registry::ResourceType;
use crate::{admission, patch};

impl Store {
    /// Admission of a custom resource against its CRD's schema: defaults applied, OpenAPI
    /// constraints and CEL rules checked. Built-in types pass through.
    pub(super) fn admit(
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
    pub(super) fn check_declared(
        &self,
        rt: &ResourceType,
        applied: &Value,
    ) -> Result<(), ApiError> {
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
        let in_body = object["metadata"]["namespace"].as_str().unwrap_or_default();
        if rt.namespaced && !in_body.is_empty() && in_body != namespace {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .into(),
            ));
        }
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
    pub(super) fn write(
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
        // A Pod terminating gracefully goes when its kubelet says so, not at a write.
        let graceful = next["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_some_and(|grace| grace > 0);
        if deleting && !finalizers_left && !graceful {
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
