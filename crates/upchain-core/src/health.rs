//! Health checks of the user's own: a CEL expression over objects of any kind, evaluated
//! with kube-rs's `kube-cel` (the `cel` crate plus the functions Kubernetes adds to CEL). Pure: the operator reads the objects, this judges them.

use std::collections::BTreeMap;

use kube_cel::KubeCelExt;
use kube_cel::cel::{self, Context, Program, Value};
use upchain_api::HealthCheck;

use crate::gates::{Source, Verdict};

/// Failing objects a verdict names before it counts the rest.
const NAMED_FAILURES: usize = 5;

/// Most objects one check judges: each is held in memory and evaluated on every reconcile
/// of a run. The operator reads one more than this, to know there are more.
pub const MAX_OBJECTS: usize = 1000;

/// Most comprehensions (`all`, `exists`, `exists_one`, `map`, `filter`) one expression may
/// hold. The CEL interpreter has no runtime cost budget as the API server's has, so the
/// cost is bounded by what the expression may do per object and by [`MAX_OBJECTS`].
const MAX_COMPREHENSIONS: usize = 3;

/// The objects each check selected, by check name, or why they could not be read.
pub type HealthInputs = BTreeMap<String, Source<Vec<serde_json::Value>>>;

/// The name a check's verdict carries in status.gates.
pub fn gate_name(check: &HealthCheck) -> String {
    format!("healthCheck/{}", check.name)
}

fn compile(index: usize, check: &HealthCheck) -> Result<Program, String> {
    compile_bounded(
        &format!("spec.gates.healthChecks[{index}] ({})", check.name),
        &check.expression,
    )
}

/// Compiles a CEL expression of the spec's (`field` names where it is), refusing one with
/// more comprehensions than [`MAX_COMPREHENSIONS`].
pub(crate) fn compile_bounded(field: &str, expression: &str) -> Result<Program, String> {
    let comprehensions = ["all(", "exists(", "exists_one(", "map(", "filter("]
        .iter()
        .map(|macro_call| expression.matches(&format!(".{macro_call}")).count())
        .sum::<usize>();
    if comprehensions > MAX_COMPREHENSIONS {
        return Err(format!(
            "{field}: the expression holds {comprehensions} comprehensions (all, exists, \
             exists_one, map, filter); at most {MAX_COMPREHENSIONS} are allowed, so that a \
             check's cost stays bounded: split it into several checks"
        ));
    }
    Program::compile(expression).map_err(|error| {
        format!(
            "{field}: the expression {expression:?} does not parse: {}",
            error.to_string().trim()
        )
    })
}

/// Refuses a spec with an expression that does not parse, naming the check and the error.
pub fn validate(checks: &[HealthCheck]) -> Result<(), String> {
    checks
        .iter()
        .enumerate()
        .try_for_each(|(i, check)| compile(i, check).map(drop))
}

/// `namespace/name` of an object, or its name when cluster-scoped.
fn object_name(object: &serde_json::Value) -> String {
    let metadata = &object["metadata"];
    let name = metadata["name"].as_str().unwrap_or("?");
    match metadata["namespace"].as_str() {
        Some(namespace) if !namespace.is_empty() => format!("{namespace}/{name}"),
        _ => name.to_owned(),
    }
}

/// Why `object` fails the check, or None when the expression is true for it.
fn judge(program: &Program, object: &serde_json::Value) -> Option<String> {
    let value = match cel::to_value(object) {
        Ok(value) => value,
        Err(error) => return Some(format!("could not be read as CEL ({error})")),
    };
    // The functions Kubernetes adds to CEL (quantity, semver, regex, url, ...), as in CRD
    // validation rules, so an expression written for one works here.
    let mut context = Context::default().with_all();
    context.add_variable_from_value("self", value);
    match program.execute(&context) {
        Ok(Value::Bool(true)) => None,
        Ok(Value::Bool(false)) => Some("is false".to_owned()),
        Ok(other) => Some(format!("returned {other:?}, not a bool")),
        Err(error) => Some(format!("failed: {error}")),
    }
}

/// The verdict of the `index`th check on the objects it selected.
pub fn verdict(
    index: usize,
    check: &HealthCheck,
    objects: &Source<Vec<serde_json::Value>>,
) -> Verdict {
    let gate = gate_name(check);
    let what = format!("{} {}", check.api_version, check.kind);
    let fail = |evidence: String, reasons: Vec<String>| Verdict {
        gate: gate.clone(),
        evidence,
        reasons,
    };
    let program = match compile(index, check) {
        Ok(program) => program,
        Err(error) => return fail("the expression does not parse".to_owned(), vec![error]),
    };
    let objects = match objects {
        Ok(objects) => objects,
        Err(error) => {
            return fail(
                format!("{what} could not be read"),
                vec![format!(
                    "health check {}: {what} could not be read ({error}); the check refuses \
                     rather than pass unchecked (the operator needs get/list on it)",
                    check.name
                )],
            );
        }
    };
    if objects.len() > MAX_OBJECTS {
        return fail(
            format!("more than {MAX_OBJECTS} {what} matched"),
            vec![format!(
                "health check {}: more than {MAX_OBJECTS} {what} matched; at most \
                 {MAX_OBJECTS} are judged per check: narrow it with a namespace, objectName or \
                 selector",
                check.name
            )],
        );
    }
    if objects.is_empty() {
        return fail(
            format!("no {what} matched"),
            vec![format!(
                "health check {}: no {what} matched{}; fix its namespace, objectName or \
                 selector",
                check.name,
                check
                    .namespace
                    .as_deref()
                    .map(|ns| format!(" in namespace {ns}"))
                    .unwrap_or_default()
            )],
        );
    }
    let failures: Vec<String> = objects
        .iter()
        .filter_map(|object| Some((object_name(object), judge(&program, object)?)))
        .map(|(name, why)| format!("{} {name}: `{}` {why}", check.kind, check.expression))
        .collect();
    let evidence = format!(
        "{} of {} {what} pass `{}`",
        objects.len() - failures.len(),
        objects.len(),
        check.expression
    );
    if failures.is_empty() {
        return fail(evidence, Vec::new());
    }
    let more = failures.len().saturating_sub(NAMED_FAILURES);
    let mut named = failures
        .into_iter()
        .take(NAMED_FAILURES)
        .collect::<Vec<_>>()
        .join("; ");
    if more > 0 {
        named.push_str(&format!("; and {more} more"));
    }
    fail(
        evidence,
        vec![format!("health check {}: {named}", check.name)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(expression: &str) -> HealthCheck {
        serde_json::from_value(json!({"name": "ceph", "apiVersion": "ceph.rook.io/v1",
            "kind": "CephCluster", "namespace": "rook-ceph", "expression": expression}))
        .expect("check")
    }

    fn ceph(health: &str) -> serde_json::Value {
        json!({"metadata": {"name": "rook-ceph", "namespace": "rook-ceph"},
            "status": {"ceph": {"health": health}}})
    }

    fn judged(check: &HealthCheck, objects: Source<Vec<serde_json::Value>>) -> Verdict {
        verdict(0, check, &objects)
    }

    #[test]
    fn a_passing_check_lets_the_run_through_and_a_failing_one_names_the_object() {
        let ok = check("self.status.ceph.health == 'HEALTH_OK'");
        let pass = judged(&ok, Ok(vec![ceph("HEALTH_OK")]));
        assert!(pass.passed(), "{pass:?}");
        assert_eq!(pass.gate, "healthCheck/ceph");
        let fail = judged(&ok, Ok(vec![ceph("HEALTH_WARN")]));
        assert_eq!(
            fail.reasons,
            ["health check ceph: CephCluster rook-ceph/rook-ceph: \
              `self.status.ceph.health == 'HEALTH_OK'` is false"]
        );
    }

    #[test]
    fn a_check_that_selects_too_many_objects_asks_for_a_narrower_selection() {
        let ok = check("self.status.ceph.health == 'HEALTH_OK'");
        let many = vec![ceph("HEALTH_OK"); MAX_OBJECTS + 1];
        let refused = judged(&ok, Ok(many));
        assert!(
            refused.reasons[0].contains("more than 1000 ceph.rook.io/v1 CephCluster matched"),
            "{refused:?}"
        );
        assert!(judged(&ok, Ok(vec![ceph("HEALTH_OK"); MAX_OBJECTS])).passed());
    }

    #[test]
    fn every_selected_object_must_pass_and_none_selected_fails() {
        let ready =
            check("self.status.conditions.exists(c, c.type == 'Ready' && c.status == 'True')");
        let node = |name: &str, status: &str| {
            json!({"metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": status}]}})
        };
        let nodes: Vec<_> = (0..8)
            .map(|i| node(&format!("n{i}"), if i < 2 { "True" } else { "False" }))
            .collect();
        let verdict = judged(&ready, Ok(nodes));
        assert!(
            verdict.reasons[0].contains("CephCluster n2:"),
            "{verdict:?}"
        );
        assert!(verdict.reasons[0].ends_with("and 1 more"), "{verdict:?}");
        assert_eq!(
            verdict.evidence.split(' ').take(3).collect::<Vec<_>>(),
            ["2", "of", "8"]
        );
        let none = judged(&ready, Ok(Vec::new()));
        assert!(
            none.reasons[0]
                .contains("no ceph.rook.io/v1 CephCluster matched in namespace rook-ceph")
        );
        let unread = judged(&ready, Err("403 forbidden".into()));
        assert!(unread.reasons[0].contains("403 forbidden") && !unread.passed());
    }

    #[test]
    fn a_result_that_is_not_a_bool_or_an_error_fails_with_what_it_was() {
        let number = judged(
            &check("self.status.ceph.health.size()"),
            Ok(vec![ceph("HEALTH_OK")]),
        );
        assert!(
            number.reasons[0].contains("returned Int(9), not a bool"),
            "{number:?}"
        );
        let missing = judged(&check("self.status.nope == 1"), Ok(vec![ceph("HEALTH_OK")]));
        assert!(missing.reasons[0].contains("failed:"), "{missing:?}");
    }

    #[test]
    fn kubernetes_cel_functions_are_available() {
        let volume = json!({"metadata": {"name": "data"},
            "status": {"capacity": {"storage": "20Gi"}}});
        let bigger =
            check("quantity(self.status.capacity.storage).isGreaterThan(quantity('10Gi'))");
        assert!(judged(&bigger, Ok(vec![volume])).passed());
    }

    #[test]
    fn a_malformed_expression_is_refused_with_the_parse_error() {
        let error = validate(&[check("self.status.ceph.health == ")]).expect_err("refused");
        assert!(
            error.starts_with("spec.gates.healthChecks[0] (ceph): the expression"),
            "{error}"
        );
        assert!(error.contains("does not parse"), "{error}");
        assert!(validate(&[check("has(self.status)")]).is_ok());
        let costly = validate(&[check(
            "self.a.all(x, x.b.all(y, y.c.exists(z, z.d.map(w, w) == [])))",
        )])
        .expect_err("refused");
        assert!(costly.contains("4 comprehensions"), "{costly}");
    }
}
