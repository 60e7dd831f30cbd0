//! Pods leaving: graceful deletion and eviction against PodDisruptionBudgets, as the API
//! server does them.

use serde_json::{Value, json};

use super::{ApiError, ChangeType, Propagation, Store, meta};
use crate::selector::{Selector, label_selector_matches, labels_of};

/// The seconds a Pod gets to stop when nobody says otherwise (the API's default).
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The Pod's Ready condition is True.
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

impl Store {
    /// Deletes a Pod as the API server does: a Pod bound to a node and not finished stays,
    /// terminating, with a deletion timestamp `grace` seconds (or its own
    /// terminationGracePeriodSeconds) ahead, until its kubelet deletes it again with a
    /// grace of 0; a second deletion may only shorten the grace. Other Pods go at once.
    pub fn delete_pod(
        &mut self,
        namespace: &str,
        name: &str,
        grace: Option<i64>,
        propagation: Propagation,
    ) -> Result<Value, ApiError> {
        let pods = self
            .type_by_id("pods")
            .ok_or_else(|| ApiError::Internal("pods are not served".into()))?;
        let mut pod = self.get(&pods, namespace, name)?;
        let bound = !text(&pod["spec"]["nodeName"]).is_empty();
        let finished = matches!(text(&pod["status"]["phase"]), "Succeeded" | "Failed");
        let grace = if bound && !finished {
            grace
                .or(pod["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(DEFAULT_GRACE_SECONDS)
                .max(0)
        } else {
            0
        };
        let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
        if !deleting && grace == 0 {
            return self.delete(&pods, namespace, name, propagation);
        }
        let current_grace = pod["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if deleting && current_grace.is_some_and(|current| current <= grace) {
            return Ok(pod);
        }
        let slot = (namespace.to_owned(), name.to_owned());
        let finalizers_left = pod["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if grace == 0 && !finalizers_left {
            self.commit(&pods, slot, None, ChangeType::Deleted, pod.clone());
            self.collect_garbage();
            return Ok(pod);
        }
        let deadline = self
            .clock
            .now()
            .saturating_add(jiff::SignedDuration::from_secs(grace))
            .unwrap_or_else(|_| self.clock.now());
        pod["metadata"]["deletionTimestamp"] =
            json!(jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", deadline).unwrap_or_default());
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        self.commit(&pods, slot, Some(pod), ChangeType::Modified, Value::Null);
        self.get(&pods, namespace, name)
    }

    /// Binds a Pod to a node, as a scheduler does through `pods/binding`: once only (409
    /// for a Pod already bound).
    pub fn bind(&mut self, namespace: &str, name: &str, node: &str) -> Result<Value, ApiError> {
        let pods = self
            .type_by_id("pods")
            .ok_or_else(|| ApiError::Internal("pods are not served".into()))?;
        let pod = self.get(&pods, namespace, name)?;
        let bound_to = text(&pod["spec"]["nodeName"]);
        if !bound_to.is_empty() {
            return Err(ApiError::Conflict(format!(
                "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{bound_to}\""
            )));
        }
        if node.is_empty() {
            return Err(ApiError::Invalid(
                "Binding is invalid: target.name: Required value".into(),
            ));
        }
        let mut next = pod.clone();
        next["spec"]["nodeName"] = json!(node);
        self.write(&pods, namespace, name, pod, next, false)?;
        Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }

    /// Evicts a Pod as the eviction subresource does: a Pod that is pending, finished or
    /// already terminating goes without asking its budgets; a Ready one needs every budget
    /// covering it to allow a disruption (429 otherwise) and spends one; a Running one that
    /// is not Ready goes only while each budget has its desired healthy Pods (the default
    /// unhealthyPodEvictionPolicy, IfHealthyBudget).
    pub fn evict(
        &mut self,
        namespace: &str,
        name: &str,
        grace: Option<i64>,
    ) -> Result<Value, ApiError> {
        let pods = self
            .type_by_id("pods")
            .ok_or_else(|| ApiError::Internal("pods are not served".into()))?;
        let pod = self.get(&pods, namespace, name)?;
        let ignores_budgets = !pod["metadata"]["deletionTimestamp"].is_null()
            || matches!(
                text(&pod["status"]["phase"]),
                "" | "Pending" | "Succeeded" | "Failed"
            );
        if !ignores_budgets {
            self.spend_disruption(namespace, &pod)?;
        }
        self.delete_pod(namespace, name, grace, Propagation::Background)?;
        Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }

    /// Checks the budgets covering a Running `pod` and, for a Ready one, spends a
    /// disruption of each.
    fn spend_disruption(&mut self, namespace: &str, pod: &Value) -> Result<(), ApiError> {
        let pdbs = self
            .type_by_id("poddisruptionbudgets.policy")
            .ok_or_else(|| ApiError::Internal("PDBs are not served".into()))?;
        let labels = labels_of(pod);
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
        let ready = pod_ready(pod);
        for pdb in &covering {
            let pdb_name = meta(pdb, "name");
            let status = &pdb["status"];
            let healthy = status["currentHealthy"].as_i64().unwrap_or(0);
            let desired = status["desiredHealthy"].as_i64().unwrap_or(0);
            let refuses = if ready {
                status["disruptionsAllowed"].as_i64().unwrap_or(0) < 1
            } else {
                healthy < desired
            };
            if refuses
                || self
                    .stubborn_pdbs
                    .contains(&format!("{namespace}/{pdb_name}"))
            {
                return Err(ApiError::TooManyRequests(format!(
                    "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"
                )));
            }
        }
        if !ready {
            return Ok(());
        }
        for pdb in covering {
            let mut next = pdb.clone();
            let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
            next["status"]["disruptionsAllowed"] = json!(allowed - 1);
            let pdb_name = meta(&pdb, "name").to_owned();
            self.write(&pdbs, namespace, &pdb_name, pdb, next, true)?;
        }
        Ok(())
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}
