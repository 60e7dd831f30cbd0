//! The Dockerfiles cannot be built here (no container engine); what can be checked
//! without one is: every base image pinned to a version, and a non-root final user.

// Test helpers fail loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used)]

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
