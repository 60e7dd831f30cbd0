//! The alert gate: no firing Prometheus alert outside the ignore pattern.

use super::{Source, Verdict, unreachable, verdict};

/// An alert from Prometheus's `/api/v1/alerts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// `alertname`.
    pub name: String,
    /// `firing` or `pending`.
    pub state: String,
    /// A short description of where it fires (its labels other than alertname).
    pub labels: String,
}

/// No firing alert outside the ignore pattern.
pub fn alerts_gate(alerts: &Source<Vec<Alert>>, ignore: &str) -> Verdict {
    let alerts = match alerts {
        Ok(alerts) => alerts,
        Err(error) => return unreachable("alerts", "Prometheus alerts", error),
    };
    let ignore = match regex::Regex::new(ignore) {
        Ok(ignore) => ignore,
        Err(error) => {
            return verdict(
                "alerts",
                "the ignore pattern is invalid".to_owned(),
                vec![format!(
                    "spec.gates.prometheus.ignoreAlerts is not a valid regular expression: \
                     {error}"
                )],
            );
        }
    };
    let firing: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.state == "firing" && !ignore.is_match(&a.name))
        .collect();
    let reasons = firing
        .iter()
        .map(|a| {
            format!(
                "alert {} is firing{}: resolve it, or add it to \
                 spec.gates.prometheus.ignoreAlerts if it is harmless",
                a.name,
                if a.labels.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", a.labels)
                }
            )
        })
        .collect();
    verdict(
        "alerts",
        format!(
            "{} alert(s) from Prometheus, {} firing outside the ignore pattern",
            alerts.len(),
            firing.len()
        ),
        reasons,
    )
}
