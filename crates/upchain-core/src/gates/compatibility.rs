//! Compatibility before a minor upgrade: deprecated APIs the target removes, containerd
//! below the target's floor, addons above their supported ceiling.

use std::collections::BTreeMap;

use serde::Deserialize;
use upchain_api::DEFAULT_CONTAINERD_FLOORS;

use super::{Source, Verdict, image_tag, unreachable, verdict};
use crate::observe::ObservedNode;
use crate::version::KubeVersion;

/// The `apiserver_requested_deprecated_apis` series on one line of the API server's
/// Prometheus text exposition, when it has a positive value. Line by line, so the
/// exposition (megabytes on a busy server) is never held whole.
pub fn deprecated_api_series(line: &str) -> Option<DeprecatedApi> {
    let rest = line.strip_prefix("apiserver_requested_deprecated_apis{")?;
    let (labels, value) = rest.rsplit_once('}')?;
    if value.trim().parse::<f64>().ok()? <= 0.0 {
        return None;
    }
    let label = |key: &str| {
        labels
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    Some(DeprecatedApi {
        group: label("group"),
        version: label("version"),
        resource: label("resource"),
        removed_release: label("removed_release"),
    })
}

/// One `apiserver_requested_deprecated_apis` series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeprecatedApi {
    /// API group (empty for the core group).
    pub group: String,
    /// Version.
    pub version: String,
    /// Resource.
    pub resource: String,
    /// The Kubernetes minor that removes it, such as `1.35`.
    pub removed_release: String,
}

/// The addon matrix and what each addon runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddonObservation {
    /// The matrix, as parsed from the ConfigMap.
    pub matrix: AddonMatrix,
    /// Each addon's running image, by addon name.
    pub images: BTreeMap<String, Source<String>>,
}

/// The user-kept addon matrix (YAML in a ConfigMap key).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AddonMatrix {
    /// The addons.
    pub addons: Vec<Addon>,
}

/// One addon of the matrix.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Addon {
    /// The addon's name, as reasons name it.
    pub name: String,
    /// Kind of the workload whose image tag is the addon's version: Deployment,
    /// DaemonSet or StatefulSet.
    pub kind: String,
    /// Namespace of the workload.
    pub namespace: String,
    /// Name of the workload.
    pub workload: String,
    /// Container whose image is read; the first container when unset.
    #[serde(default)]
    pub container: Option<String>,
    /// From each addon version on, the highest Kubernetes minor it supports.
    pub supports: Vec<AddonSupport>,
}

/// From an addon version on, the highest Kubernetes minor it supports.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddonSupport {
    /// The addon version this row starts at, such as `1.12`.
    pub version: String,
    /// The highest Kubernetes minor it supports, such as `1.34`.
    pub max_kubernetes: String,
}

impl AddonMatrix {
    /// Parses the matrix, saying what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let matrix: Self = serde_yaml::from_str(text)
            .map_err(|e| format!("the addon matrix is not valid: {e}"))?;
        for addon in &matrix.addons {
            if !["Deployment", "DaemonSet", "StatefulSet"].contains(&addon.kind.as_str()) {
                return Err(format!(
                    "addon {}: kind must be Deployment, DaemonSet or StatefulSet, not {}",
                    addon.name, addon.kind
                ));
            }
            for row in &addon.supports {
                if numbers(&row.version).is_empty() || minor_of(&row.max_kubernetes).is_none() {
                    return Err(format!(
                        "addon {}: supports rows need a version such as 1.12 and a \
                         maxKubernetes such as 1.34",
                        addon.name
                    ));
                }
            }
        }
        Ok(matrix)
    }
}

/// The leading numeric components of a version or image tag (`v1.12.3-rc1` -> 1, 12, 3).
pub(super) fn numbers(version: &str) -> Vec<u64> {
    version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .map_while(|part| part.parse().ok())
        .collect()
}

pub(super) fn target_minor(target: KubeVersion) -> (u64, u64) {
    (u64::from(target.major), u64::from(target.minor))
}

pub(super) fn minor_of(version: &str) -> Option<(u64, u64)> {
    match numbers(version).as_slice() {
        [major, minor, ..] => Some((*major, *minor)),
        _ => None,
    }
}

/// No API that the target removes is still requested.
pub fn deprecated_apis_gate(apis: &Source<Vec<DeprecatedApi>>, target: KubeVersion) -> Verdict {
    let apis = match apis {
        Ok(apis) => apis,
        Err(error) => {
            return unreachable(
                "deprecated APIs",
                "the API server's apiserver_requested_deprecated_apis metric",
                error,
            );
        }
    };
    let removed: Vec<&DeprecatedApi> = apis
        .iter()
        .filter(|api| minor_of(&api.removed_release).is_some_and(|r| r <= target_minor(target)))
        .collect();
    let reasons = removed
        .iter()
        .map(|api| {
            let group_version = if api.group.is_empty() {
                api.version.clone()
            } else {
                format!("{}/{}", api.group, api.version)
            };
            format!(
                "{} {group_version} is still requested and is removed in {}: migrate its \
                 clients to a served version (kubectl get --raw /metrics | grep \
                 apiserver_requested_deprecated_apis shows it; the API server's audit log \
                 names the caller)",
                api.resource, api.removed_release
            )
        })
        .collect();
    verdict(
        "deprecated APIs",
        format!(
            "{} deprecated API(s) requested, {} removed by {target}",
            apis.len(),
            removed.len()
        ),
        reasons,
    )
}

/// Every node's containerd is at least the floor the target minor needs.
pub fn containerd_gate(
    nodes: &[ObservedNode],
    floors: &BTreeMap<String, String>,
    target: KubeVersion,
) -> Verdict {
    let key = format!("{}.{}", target.major, target.minor);
    let floor = if floors.is_empty() {
        DEFAULT_CONTAINERD_FLOORS
            .iter()
            .find(|(minor, _)| *minor == key)
            .map(|(_, floor)| (*floor).to_owned())
    } else {
        floors.get(&key).cloned()
    };
    let Some(floor) = floor else {
        return verdict(
            "containerd",
            format!("no containerd floor is known for {key}"),
            Vec::new(),
        );
    };
    let wanted = numbers(&floor);
    let mut reasons = Vec::new();
    for node in nodes {
        let Some(version) = node.container_runtime.strip_prefix("containerd://") else {
            continue; // another runtime: no containerd floor applies
        };
        if numbers(version) < wanted {
            reasons.push(format!(
                "node {} runs containerd {version}, below {floor} that Kubernetes {key} needs: \
                 upgrade containerd on it first",
                node.name
            ));
        }
    }
    verdict(
        "containerd",
        format!("every node's containerd at least {floor} (Kubernetes {key})"),
        reasons,
    )
}

/// Every addon in the matrix supports the target minor at its running version.
pub fn addons_gate(addons: &Source<AddonObservation>, target: KubeVersion) -> Verdict {
    let observation = match addons {
        Ok(observation) => observation,
        Err(error) => return unreachable("addons", "the addon matrix", error),
    };
    let wanted = target_minor(target);
    let mut reasons = Vec::new();
    for addon in &observation.matrix.addons {
        let image = match observation.images.get(&addon.name) {
            Some(Ok(image)) => image,
            Some(Err(error)) => {
                reasons.push(format!(
                    "addon {}: its version could not be read from {} {}/{} ({error}); fix \
                     the matrix entry",
                    addon.name, addon.kind, addon.namespace, addon.workload
                ));
                continue;
            }
            None => continue,
        };
        let running = image_tag(image).map(numbers).unwrap_or_default();
        if running.is_empty() {
            reasons.push(format!(
                "addon {}: the image {image} has no version tag to compare",
                addon.name
            ));
            continue;
        }
        let row = addon
            .supports
            .iter()
            .filter(|row| numbers(&row.version) <= running)
            .max_by_key(|row| numbers(&row.version));
        match row.and_then(|row| Some((row, minor_of(&row.max_kubernetes)?))) {
            Some((_, max)) if max >= wanted => {}
            Some((row, _)) => reasons.push(format!(
                "addon {} runs {} ({image}), which supports Kubernetes up to {}: upgrade it to \
                 a version that supports {}.{} first",
                addon.name,
                image_tag(image).unwrap_or_default(),
                row.max_kubernetes,
                target.major,
                target.minor
            )),
            None => reasons.push(format!(
                "addon {} runs {}, older than every version in the matrix: add a row for it \
                 or upgrade it",
                addon.name,
                image_tag(image).unwrap_or_default()
            )),
        }
    }
    verdict(
        "addons",
        format!(
            "{} addon(s) in the matrix checked against {}.{}",
            observation.matrix.addons.len(),
            target.major,
            target.minor
        ),
        reasons,
    )
}
