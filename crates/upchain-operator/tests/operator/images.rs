//! What is shipped to a cluster, checked without one. The Dockerfiles cannot be built here
//! (no container engine): every base image pinned to a version, and a non-root final user.
//! The chart, rendered by helm: what its defaults grant, and its probes.

#[test]
fn images_pin_their_bases_and_run_as_non_root() {
    for name in ["operator", "runner"] {
        let path = format!(
            "{}/../../images/{name}.Dockerfile",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("Dockerfile");
        let instructions: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        for from in instructions.iter().filter(|l| l.starts_with("FROM ")) {
            let image = from.split_whitespace().nth(1).expect("image");
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
            assert!(
                !tag.is_empty() && tag != "latest" && !tag.contains('/'),
                "{name}: {image} is not pinned"
            );
        }
        let user = instructions
            .iter()
            .rev()
            .find(|l| l.starts_with("USER "))
            .expect("a USER instruction");
        let uid = user[5..].split(':').next().unwrap().trim();
        assert!(
            uid.parse::<u32>().is_ok_and(|u| u != 0),
            "{name}: the final user must be a non-root uid, not {uid}"
        );
        assert_eq!(
            instructions.last().map(|l| l.starts_with("USER ")),
            Some(false),
            "{name}: USER comes before the entrypoint"
        );
    }
}

/// The chart rendered with its defaults, as `helm template` prints it.
fn default_chart() -> Vec<serde_json::Value> {
    let tools = std::env::var("HOME").unwrap_or_default() + "/.cache/upchain/tools/bin/helm";
    let helm = if std::path::Path::new(&tools).exists() {
        tools
    } else {
        "helm".to_owned()
    };
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/upchain");
    let output = std::process::Command::new(helm)
        .args([
            "template",
            "upchain",
            chart,
            "--namespace",
            "upchain-system",
        ])
        .output()
        .expect("helm is installed by scripts/install-test-tools");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

#[test]
fn the_default_chart_grants_what_documented_features_read_and_probes_time_out() {
    let objects = default_chart();
    let grants = |kind: &str, namespace: Option<&str>, resource: &str, verb: &str| {
        objects.iter().any(|o| {
            o["kind"] == kind
                && namespace.is_none_or(|n| o["metadata"]["namespace"] == n)
                && o["rules"].as_array().into_iter().flatten().any(|r| {
                    r["resources"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x == resource))
                        && r["verbs"]
                            .as_array()
                            .is_some_and(|v| v.iter().any(|x| x == verb))
                })
        })
    };
    // spec.snapshot's CronJob, where kubeadm clusters keep it.
    assert!(grants("Role", Some("kube-system"), "cronjobs", "get"));
    // The start-up check of the installed CRD.
    assert!(grants(
        "ClusterRole",
        None,
        "customresourcedefinitions",
        "get"
    ));
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        assert!(
            container[probe]["timeoutSeconds"]
                .as_i64()
                .is_some_and(|t| t >= 3),
            "{probe}: {}",
            container[probe]
        );
    }
}
