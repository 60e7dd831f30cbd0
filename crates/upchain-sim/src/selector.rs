//! Label and field selectors in the URL syntax the API server accepts.

use std::collections::BTreeMap;

use serde_json::Value;

/// A parse failure, reported to the client as 400 Bad Request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unable to parse requirement `{0}`: expected key, !key, key=value, key!=value, key in (a,b) or key notin (a,b)"
)]
pub struct SelectorError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// The keys its requirements name.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| match r {
            Requirement::Exists(k)
            | Requirement::NotExists(k)
            | Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _) => k.as_str(),
        })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn set_values(rest: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError(whole.to_owned()))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

impl Selector {
    /// Parses `a=b,c!=d,e in (f,g),!h`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_top_level(input)
            .into_iter()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(key.trim().to_owned(), set_values(rest, part)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                Requirement::In(key.trim().to_owned(), set_values(rest, part)?)
            } else if part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Requirement::Exists(part.to_owned())
            } else {
                return Err(SelectorError(part.to_owned()));
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// True when `lookup` (a key -> value function) satisfies every requirement.
    pub fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::NotExists(k) => lookup(k).is_none(),
            Requirement::Equals(k, v) => lookup(k).as_deref() == Some(v),
            Requirement::NotEquals(k, v) => lookup(k).as_deref() != Some(v),
            Requirement::In(k, vs) => lookup(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => lookup(k).is_none_or(|x| !vs.contains(&x)),
        })
    }

    /// The value `key` must equal, when the selector requires one (`key=value`).
    pub fn required_value(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|r| match r {
            Requirement::Equals(k, v) if k == key => Some(v.as_str()),
            _ => None,
        })
    }

    /// Matches an object's labels.
    pub fn matches_labels(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.matches(|k| labels[k].as_str().map(str::to_owned))
    }

    /// Matches an object's fields, as field selectors name them (`metadata.name`,
    /// `spec.nodeName`, `status.phase`, ...). A missing field reads as the empty string,
    /// as it does on a real API server.
    pub fn matches_fields(&self, object: &Value) -> bool {
        self.matches(|path| {
            let value = path.split('.').fold(object, |v, key| &v[key]);
            Some(match value {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            })
        })
    }
}

/// Whether `actual` (a label's value, or None when absent) meets a selector requirement's
/// operator and values: In, NotIn, Exists, DoesNotExist, and node affinity's Gt and Lt.
/// An unknown operator matches nothing.
pub fn requirement_matches(requirement: &Value, actual: Option<&str>) -> bool {
    let values: Vec<&str> = requirement["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let number = |s: &str| s.parse::<i64>().ok();
    let compare = |ordering: std::cmp::Ordering| {
        actual
            .and_then(number)
            .zip(values.first().and_then(|v| number(v)))
            .is_some_and(|(a, v)| a.cmp(&v) == ordering)
    };
    match requirement["operator"].as_str().unwrap_or_default() {
        "In" => actual.is_some_and(|a| values.contains(&a)),
        "NotIn" => actual.is_none_or(|a| !values.contains(&a)),
        "Exists" => actual.is_some(),
        "DoesNotExist" => actual.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

/// Converts a `LabelSelector` object (matchLabels, matchExpressions) into a matcher on
/// label maps. An invalid operator matches nothing.
pub fn label_selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let match_labels_ok = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let expressions_ok = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            requirement_matches(
                e,
                labels
                    .get(e["key"].as_str().unwrap_or_default())
                    .map(String::as_str),
            )
        });
    match_labels_ok && expressions_ok
}

/// An object's labels as a map.
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (selector, want) in [
            ("", true),
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (web,api)", true),
            ("app notin (web)", false),
            ("missing", false),
            ("!missing", true),
            ("tier,app in (api, web)", true),
        ] {
            assert_eq!(
                Selector::parse(selector)
                    .expect(selector)
                    .matches_labels(&pod),
                want,
                "{selector}"
            );
        }
        assert!(Selector::parse("app in web").is_err());
        assert!(Selector::parse("a b").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "w-1"}, "status": {"phase": "Running"}});
        let sel = |s| Selector::parse(s).expect(s);
        assert!(sel("spec.nodeName=w-1,status.phase!=Succeeded").matches_fields(&pod));
        assert!(!sel("metadata.name=q").matches_fields(&pod));
        assert!(sel("spec.unschedulable!=true").matches_fields(&pod));
    }

    #[test]
    fn label_selector_objects() {
        let labels: BTreeMap<String, String> = [("app".into(), "web".into())].into();
        assert!(label_selector_matches(
            &json!({"matchLabels": {"app": "web"}}),
            &labels
        ));
        assert!(label_selector_matches(&json!({}), &labels));
        assert!(!label_selector_matches(
            &json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}),
            &labels
        ));
    }
}
