//! The configuration the deployment files give automl is configuration automl accepts: the
//! `AUTOML__…` variables of docker-compose.yml and the files of the Kubernetes ConfigMap (base and
//! GPU overlay), each loaded by `automl config` as the containers would load them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `automl config` with `args` and `env` only (nothing inherited that could change it).
fn automl_config(args: &[&str], env: &[(String, String)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_automl"))
        .arg("config")
        .args(args)
        .current_dir(repo_root())
        .env_clear()
        .envs(env.iter().map(|(key, value)| (key, value)))
        .output()
        .expect("automl config runs");
    assert!(
        output.status.success(),
        "automl config {args:?} refused the configuration: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `${NAME:-default}` → `default`, as compose interpolates with nothing set.
fn interpolate_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, default)| default));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Every distinct `AUTOML__KEY: value` line of docker-compose.yml.
fn compose_environment() -> Vec<(String, String)> {
    let compose =
        std::fs::read_to_string(repo_root().join("docker-compose.yml")).expect("compose file");
    let mut env: Vec<(String, String)> = compose
        .lines()
        .filter_map(|line| line.trim().split_once(": "))
        .filter(|(key, _)| key.starts_with("AUTOML__"))
        .map(|(key, value)| {
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (key.to_string(), interpolate_defaults(unquoted))
        })
        .collect();
    env.sort();
    env.dedup();
    env
}

#[test]
fn docker_compose_environment_is_accepted() {
    let env = compose_environment();
    assert!(env.len() >= 8, "{env:?}");
    let config = automl_config(&[], &env);
    for expected in [
        "url = \"postgres://automl:<redacted>@postgres:5432/automl\"",
        "endpoint = \"http://minio:9000\"",
        "metadata_store = \"http://metadata-store:6002\"",
        "data_management = \"http://data-management:6000\"",
        "trainer_minio_server = \"minio:9000\"",
        "enabled = true",
        // The web console's [web] section: the only keys naming these two services.
        "prediction_service = \"http://prediction-service:6001\"",
        "training_service = \"http://training-service:6003\"",
    ] {
        assert!(config.contains(expected), "{expected} in:\n{config}");
    }
}

#[test]
fn kubernetes_config_files_are_accepted_alone_and_layered() {
    let base = "k8s/base/automl.toml";
    // What every Deployment sets from the automl-auth Secret.
    let secret = [(
        "AUTOML__AUTH__INTERNAL_SECRET".to_string(),
        "change-me-automl-internal-secret".to_string(),
    )];
    let config = automl_config(&["--config", base], &secret);
    assert!(config.contains("enabled = true"), "{config}");
    assert!(config.contains("backend = \"kubernetes\""), "{config}");
    assert!(
        config.contains("service_account = \"automl-trainer\""),
        "{config}"
    );
    assert!(config.contains("image = \"automl:latest\""), "{config}");
    // The web console (web.yaml) reaches the services by their Service names.
    for expected in [
        "data_management = \"http://data-management:6000\"",
        "metadata_store = \"http://metadata-store:6002\"",
        "prediction_service = \"http://prediction-service:6001\"",
        "training_service = \"http://training-service:6003\"",
    ] {
        assert!(config.contains(expected), "{expected} in:\n{config}");
    }

    let layered = automl_config(
        &["--config", base, "--config", "k8s/overlays/gpu/gpu.toml"],
        &secret,
    );
    assert!(layered.contains("backend = \"kubernetes\""), "{layered}");
    assert!(layered.contains("gpu_image = \"automl:cuda\""), "{layered}");
    assert!(layered.contains("nvidia.com/gpu.present"), "{layered}");
}
