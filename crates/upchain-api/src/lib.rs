//! The `K8sUpgrade` custom resource (`upchain.dev/v1alpha1`).
//!
//! Doc comments on fields are what `kubectl explain` shows, so they are written for the
//! person operating a cluster. Validation that the API server can enforce lives in the
//! schema (OpenAPI bounds and CEL rules) so a bad object is refused at `kubectl apply`.
#![forbid(unsafe_code)]

mod reference;
mod safety;
mod spec;
mod status;

pub use reference::api_reference;
pub use safety::*;
pub use spec::*;
pub use status::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Field manager used for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "upchain";
/// Finalizer that keeps a K8sUpgrade until the nodes it cordoned are released.
pub const FINALIZER: &str = "upchain.dev/cleanup";
/// Annotation that approves a plan (spec.approval Manual): its value is the plan's hash.
pub const APPROVE_ANNOTATION: &str = "upchain.dev/approve";
/// Annotation whose new value retries a Failed run.
pub const RETRY_ANNOTATION: &str = "upchain.dev/retry";
/// Label naming the K8sUpgrade that owns a Job.
pub const UPGRADE_LABEL: &str = "upchain.dev/upgrade";
/// Annotation carrying the full name of the K8sUpgrade a Job belongs to. Jobs carry no
/// owner reference: a foreground deletion of the K8sUpgrade would make the garbage
/// collector delete a Job in the middle of upgrading its node.
pub const UPGRADE_ANNOTATION: &str = "upchain.dev/upgrade";
/// Annotation carrying the uid of the K8sUpgrade a Job belongs to, so that a Job left by
/// an earlier object of the same name is never taken for this one's.
pub const UPGRADE_UID_ANNOTATION: &str = "upchain.dev/upgrade-uid";
/// Annotation on a Node that passed a run's prepare check, naming the run
/// (`<K8sUpgrade>/<target>/<run start>`): the record of thousands of passed checks lives on
/// the nodes rather than in one status.
pub const PREPARED_ANNOTATION: &str = "upchain.dev/prepared";
/// Label carrying the (possibly shortened) name of the node a Job upgrades.
pub const NODE_LABEL: &str = "upchain.dev/node";
/// Annotation carrying the full name of the node a Job upgrades.
pub const NODE_ANNOTATION: &str = "upchain.dev/node";
/// Label carrying the attempt number of a node Job.
pub const ATTEMPT_LABEL: &str = "upchain.dev/attempt";
/// Label carrying the Kubernetes version a node Job installs.
pub const TARGET_LABEL: &str = "upchain.dev/target-version";

/// The CustomResourceDefinition for `K8sUpgrade`, as the operator generates it.
pub fn crd() -> CustomResourceDefinition {
    K8sUpgrade::crd()
}

/// What the installed CRD lacks of the one this build generates: the fields (such as
/// `status.nodes[].jobResult`) its schema does not declare, or that it serves no version
/// this build reads. Empty when the installed CRD is this one or a newer one. A server-side
/// apply of a field the schema lacks fails whole, so the operator checks this at start-up.
pub fn crd_fields_missing(installed: &CustomResourceDefinition) -> Vec<String> {
    let generated = crd();
    let Some(ours) = generated.spec.versions.first() else {
        return Vec::new();
    };
    let served = installed
        .spec
        .versions
        .iter()
        .find(|v| v.name == ours.name && v.served);
    let Some(theirs) = served else {
        return vec![format!(
            "the version {}/{} (not served)",
            generated.spec.group, ours.name
        )];
    };
    let schema = |v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion| {
        v.schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or_default()
    };
    let mut missing = Vec::new();
    missing_properties(&schema(ours), &schema(theirs), "", &mut missing);
    missing
}

/// Property paths declared in `ours` and not in `theirs`, stopping at the first missing
/// level (the fields under a missing one are missing with it).
fn missing_properties(
    ours: &serde_json::Value,
    theirs: &serde_json::Value,
    path: &str,
    missing: &mut Vec<String>,
) {
    if theirs.get("x-kubernetes-preserve-unknown-fields") == Some(&serde_json::Value::Bool(true)) {
        return;
    }
    if let (Some(items), Some(their_items)) = (ours.get("items"), theirs.get("items")) {
        missing_properties(items, their_items, &format!("{path}[]"), missing);
    }
    let Some(properties) = ours
        .get("properties")
        .and_then(serde_json::Value::as_object)
    else {
        return;
    };
    for (name, schema) in properties {
        let child = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        match theirs.get("properties").and_then(|p| p.get(name)) {
            Some(their_schema) => missing_properties(schema, their_schema, &child, missing),
            None => missing.push(child),
        }
    }
}

/// The CRD as YAML, exactly as `upchain crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}
