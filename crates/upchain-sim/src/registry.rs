//! The resource types the simulated API server serves: built-in ones, plus whatever
//! CustomResourceDefinitions have been created, exactly as a real server does.

use serde_json::{Value, json};

/// One served resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Version served.
    pub version: String,
    /// Kind of the objects.
    pub kind: String,
    /// Plural name used in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a `status` subresource (status writes go there only).
    pub status: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        status: bool,
        short_names: &[&str],
    ) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            singular: kind.to_ascii_lowercase(),
            namespaced,
            status,
            short_names: short_names.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`: what identifies the type in the store.
    pub fn id(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The entry of an APIResourceList.
    fn discovery(&self) -> Vec<Value> {
        let mut entries = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "shortNames": self.short_names,
        })];
        if self.status {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if self.group.is_empty() && self.plural == "pods" {
            entries.push(json!({
                "name": "pods/eviction",
                "singularName": "",
                "namespaced": true,
                "group": "policy",
                "version": "v1",
                "kind": "Eviction",
                "verbs": ["create"],
            }));
            entries.push(json!({
                "name": "pods/binding", "singularName": "", "namespaced": true,
                "kind": "Binding", "verbs": ["create"],
            }));
            entries.push(json!({
                "name": "pods/log", "singularName": "", "namespaced": true,
                "kind": "Pod", "verbs": ["get"],
            }));
        }
        entries
    }
}

/// The built-in resource types.
pub fn builtins() -> Vec<ResourceType> {
    let r = ResourceType::builtin;
    vec![
        r("", "v1", "Namespace", "namespaces", false, true, &["ns"]),
        r("", "v1", "Node", "nodes", false, true, &["no"]),
        r("", "v1", "Pod", "pods", true, true, &["po"]),
        r("", "v1", "Event", "events", true, false, &["ev"]),
        r("", "v1", "Secret", "secrets", true, false, &[]),
        r("", "v1", "ConfigMap", "configmaps", true, false, &["cm"]),
        r(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
            false,
            &["pvc"],
        ),
        r(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            false,
            &["sa"],
        ),
        r(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            true,
            &["deploy"],
        ),
        r(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            true,
            true,
            &["sts"],
        ),
        r("apps", "v1", "DaemonSet", "daemonsets", true, true, &["ds"]),
        r("batch", "v1", "Job", "jobs", true, true, &[]),
        r("batch", "v1", "CronJob", "cronjobs", true, true, &["cj"]),
        r(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            true,
            &["pdb"],
        ),
        r(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            false,
            &["ev"],
        ),
        r(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            false,
            &[],
        ),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            false,
            &[],
        ),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            false,
            &[],
        ),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            false,
            &[],
        ),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            false,
            &[],
        ),
        // Answered, never stored: the simulator allows everything (see serve).
        r(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            false,
            false,
            &[],
        ),
        r(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            true,
            &["crd", "crds"],
        ),
    ]
}

/// The resource types a CustomResourceDefinition object declares (one per served version).
pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let kind = text(&names["kind"]);
    let plural = text(&names["plural"]);
    if kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let singular = match text(&names["singular"]) {
        s if s.is_empty() => kind.to_ascii_lowercase(),
        s => s,
    };
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .map(|v| ResourceType {
            group: text(&spec["group"]),
            version: text(&v["name"]),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            status: v["subresources"]["status"].is_object(),
            short_names: names["shortNames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
        })
        .collect()
}

/// The served types, built-in and custom.
#[derive(Clone, Debug)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Self { types: builtins() }
    }
}

impl Registry {
    /// Replaces the custom types by those the given CRD objects declare.
    pub fn set_custom(&mut self, crds: &[Value]) {
        self.types = builtins();
        self.types.extend(crds.iter().flat_map(from_crd));
    }

    /// Every served type.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// The type served at `group/version` under `plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The type of a kind in an apiVersion.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// `/openapi/v3`: where each group version's document is.
    pub fn openapi_index(&self) -> Value {
        let mut paths = serde_json::Map::new();
        for t in &self.types {
            let root = if t.group.is_empty() {
                format!("api/{}", t.version)
            } else {
                format!("apis/{}/{}", t.group, t.version)
            };
            let url = format!("/openapi/v3/{root}?hash={}", self.types.len());
            paths.insert(root, json!({"serverRelativeURL": url}));
        }
        json!({"paths": paths})
    }

    /// `/openapi/v3/<group version>`: the write operations of each type with the query
    /// parameters they accept, which tells kubectl that the server validates fields itself.
    /// Schemas are not published.
    pub fn openapi_document(&self, group: &str, version: &str) -> Option<Value> {
        let mut paths = serde_json::Map::new();
        for t in self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
        {
            let prefix = if group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{group}/{version}")
            };
            let scope = if t.namespaced {
                "/namespaces/{namespace}"
            } else {
                ""
            };
            let parameters: Vec<Value> = ["fieldValidation", "fieldManager", "force", "dryRun"]
                .iter()
                .map(|name| json!({"name": name, "in": "query", "schema": {"type": "string"}}))
                .collect();
            let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
            let operation = |action: &str| {
                json!({"parameters": parameters, "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
                       "responses": {"200": {"description": "OK"}}})
            };
            paths.insert(
                format!("{prefix}{scope}/{}", t.plural),
                json!({"post": operation("post")}),
            );
            paths.insert(
                format!("{prefix}{scope}/{}/{{name}}", t.plural),
                json!({"put": operation("put"), "patch": operation("patch")}),
            );
        }
        (!paths.is_empty()).then(|| {
            json!({"openapi": "3.0.0", "info": {"title": "Kubernetes (simulated)", "version": "v1"}, "paths": paths, "components": {"schemas": {}}})
        })
    }

    /// `/api`: the core group's versions.
    pub fn core_versions(&self) -> Value {
        json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}
        ]})
    }

    /// `/apis`: every named group with its versions.
    pub fn groups(&self) -> Value {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => {
                    versions.push(t.version.clone())
                }
                Some(_) => {}
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(group, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                    .collect();
                json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// The APIResourceList of one group version, or None when nothing is served there.
    pub fn resources(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(ResourceType::discovery)
            .collect();
        let group_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        (!resources.is_empty()).then(|| {
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_add_types_and_discovery_lists_them() {
        let mut registry = Registry::default();
        assert!(
            registry
                .find("upchain.dev", "v1alpha1", "k8supgrades")
                .is_none()
        );
        let crd = serde_json::to_value(upchain_api::crd()).expect("crd");
        registry.set_custom(&[crd]);
        let t = registry
            .find("upchain.dev", "v1alpha1", "k8supgrades")
            .expect("served");
        assert!(!t.namespaced && t.status);
        assert_eq!(t.short_names, ["k8su"]);
        let list = registry
            .resources("upchain.dev", "v1alpha1")
            .expect("listed");
        assert_eq!(list["resources"][1]["name"], "k8supgrades/status");
        assert!(
            registry.groups()["groups"]
                .to_string()
                .contains("upchain.dev/v1alpha1")
        );
        assert!(
            registry
                .resources("", "v1")
                .expect("core")
                .to_string()
                .contains("pods/eviction")
        );
    }
}
