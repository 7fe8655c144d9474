//! Teams: API tokens, tenant isolation, job tokens, path confinement, TLS and secrets in logs,
//! through `automl serve all` with authentication on, the real grpcurl and the real
//! automl-train.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use automl_common::auth::{AuthConfig, Authenticator, Scope};
use automl_common::db::Backend;
use automl_common::testing::{Poll, TestEnv, grpcurl};
use base64::Engine;

use crate::support::{Automl, process_env};

const SECRET: &str = "internal-secret-for-tests-0123456789";

/// Runs the automl binary (a client or token command) and returns its stdout.
fn automl(args: &[&str], env: &[(&str, String)]) -> String {
    let output = tokio::task::block_in_place(|| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_automl"));
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output()
    })
    .expect("automl runs");
    assert!(
        output.status.success(),
        "automl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn token(data_dir: &Path, tenant: &str) -> String {
    automl(
        &[
            "token",
            "--data-dir",
            &data_dir.display().to_string(),
            "create",
            "--tenant",
            tenant,
        ],
        &[],
    )
}

/// How grpcurl talks to the servers.
#[derive(Clone)]
struct Grpc {
    /// `-plaintext`, or `-cacert FILE`.
    transport: Vec<String>,
}

impl Grpc {
    /// One call: Ok(stdout) or Err(the status code name grpcurl reports).
    fn call(
        &self,
        token: Option<&str>,
        addr: &str,
        method: &str,
        body: &str,
    ) -> Result<String, String> {
        let mut args: Vec<String> = self.transport.clone();
        if let Some(token) = token {
            args.extend(["-H".into(), format!("authorization: Bearer {token}")]);
        }
        args.extend([
            "-max-time".into(),
            "20".into(),
            "-d".into(),
            "@".into(),
            addr.into(),
            method.into(),
        ]);
        let output = tokio::task::block_in_place(|| {
            let mut child = Command::new(grpcurl())
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(body.as_bytes())?;
            }
            child.wait_with_output()
        })
        .expect("grpcurl runs");
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr
            .lines()
            .find_map(|line| line.trim().strip_prefix("Code: "))
            .unwrap_or(&stderr)
            .to_string())
    }

    /// The `Code: …` and `Message: …` grpcurl printed for a failed call.
    fn error(&self, token: &str, addr: &str, method: &str, body: &str) -> String {
        let mut args: Vec<String> = self.transport.clone();
        args.extend([
            "-H".into(),
            format!("authorization: Bearer {token}"),
            "-d".into(),
            body.into(),
            addr.into(),
            method.into(),
        ]);
        let output = tokio::task::block_in_place(|| Command::new(grpcurl()).args(&args).output())
            .expect("grpcurl runs");
        assert!(!output.status.success(), "{method} {body} succeeded");
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("Code: ") || line.starts_with("Message: "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn json(&self, token: &str, addr: &str, method: &str, body: &str) -> serde_json::Value {
        let out = self
            .call(Some(token), addr, method, body)
            .unwrap_or_else(|code| panic!("{method}: {code}"));
        serde_json::from_str(&out).expect("json")
    }
}

struct Deployment {
    env: TestEnv,
    data_dir: PathBuf,
    automl: Automl,
    grpc: Grpc,
    team_a: String,
    team_b: String,
    revoked: String,
}

impl Deployment {
    async fn start(tls: bool) -> Self {
        let env = TestEnv::new(Backend::Sqlite).await.expect("env");
        let data_dir = env.path().join("automl");
        std::fs::create_dir_all(&data_dir).expect("dir");
        let team_a = token(&data_dir, "team-a");
        let team_b = token(&data_dir, "team-b");
        let revoked = token(&data_dir, "team-a");
        let listed = automl(
            &[
                "token",
                "--data-dir",
                &data_dir.display().to_string(),
                "list",
            ],
            &[],
        );
        assert!(!listed.contains(&team_a), "list never shows tokens");
        let revoked_id = listed
            .lines()
            .filter(|line| line.contains("team-a"))
            .nth(1)
            .and_then(|line| line.split_whitespace().next())
            .expect("second team-a token")
            .to_string();
        automl(
            &[
                "token",
                "--data-dir",
                &data_dir.display().to_string(),
                "revoke",
                &revoked_id,
            ],
            &[],
        );
        let mut vars = process_env(&env, &data_dir);
        vars.push(("AUTOML__AUTH__ENABLED", "true".into()));
        vars.push(("AUTOML__AUTH__INTERNAL_SECRET", SECRET.into()));
        vars.push(("RUST_LOG", "info".into()));
        let mut transport = vec!["-plaintext".to_string()];
        if tls {
            let (ca, cert, key) = certificate(env.path());
            vars.push(("AUTOML__TLS__CERT_FILE", cert.display().to_string()));
            vars.push(("AUTOML__TLS__KEY_FILE", key.display().to_string()));
            vars.push(("AUTOML__TLS__CA_FILE", ca.display().to_string()));
            transport = vec!["-cacert".into(), ca.display().to_string()];
        }
        let log = std::fs::File::create(env.path().join("automl.log")).expect("log");
        let automl = Automl::spawn_with_stderr(env.path(), &vars, Stdio::from(log));
        Self {
            env,
            data_dir,
            automl,
            grpc: Grpc { transport },
            team_a,
            team_b,
            revoked,
        }
    }

    fn addr(&self, service: &str) -> String {
        self.automl.addr(service)
    }

    /// Uploads `file` as `token`'s tenant with UploadData (client streaming); returns the path.
    fn upload(&self, token: &str, path: &str, file: &Path) -> Result<String, String> {
        let bytes = std::fs::read(file).expect("demo data");
        let body = serde_json::json!({
            "path": path,
            "chunk": base64::engine::general_purpose::STANDARD.encode(bytes),
        })
        .to_string();
        let out = self.grpc.call(
            Some(token),
            &self.addr("data-management"),
            "data_management.DataManagementService/UploadData",
            &body,
        )?;
        let info: serde_json::Value = serde_json::from_str(&out).expect("json");
        Ok(info["path"].as_str().expect("path").to_string())
    }

    /// Team A's dataset 1, its READY snapshot and a succeeded training job (run 1) through
    /// the real trainer, which authenticates with its job token.
    fn team_a_trains(&self) -> String {
        let demo =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/intents-part1.csv");
        let path = self.upload(&self.team_a, "", &demo).expect("upload");
        assert!(path.starts_with("team-a/upload/"), "{path}");
        let dm = self.addr("data-management");
        let created = self.grpc.json(
            &self.team_a,
            &dm,
            "data_management.DataManagementService/CreateDataset",
            &format!(r#"{{"name":"a","dataset_type":"TEXT_INTENT","path":"{path}"}}"#),
        );
        assert_eq!(created["datasetId"], "1");
        let version = self.grpc.json(
            &self.team_a,
            &dm,
            "data_management.DataManagementService/PrepareTrainingDataset",
            r#"{"dataset_id":"1"}"#,
        );
        assert_eq!(version["versionHash"], "hashAg==");
        let mut poll =
            Poll::new("snapshot READY", Duration::from_secs(60)).every(Duration::from_millis(100));
        loop {
            let snapshot = self.grpc.json(
                &self.team_a,
                &dm,
                "data_management.DataManagementService/FetchTrainingDataset",
                r#"{"dataset_id":"1","version_hash":"hashAg=="}"#,
            );
            if snapshot["state"] == "READY" {
                assert!(
                    snapshot["root"]["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("team-a/versionedDatasets/1/")),
                    "{snapshot}"
                );
                break;
            }
            poll.tick_blocking();
        }
        let ts = self.addr("training-service");
        let job = self.grpc.json(
            &self.team_a,
            &ts,
            "training.TrainingService/Train",
            r#"{"metadata":{"algorithm":"intent-classification","dataset_id":"1","name":"a","train_data_version_hash":"hashAg==","output_model_name":"intent","parameters":{"EPOCHS":"2","BATCH_SIZE":"16"}}}"#,
        );
        assert_eq!(job["jobId"], 1);
        let mut poll =
            Poll::new("job 1 ends", Duration::from_secs(120)).every(Duration::from_millis(200));
        loop {
            let status = self.grpc.json(
                &self.team_a,
                &ts,
                "training.TrainingService/GetTrainingStatus",
                r#"{"job_id":1}"#,
            );
            match status["status"].as_str() {
                Some("succeed") => break,
                Some("failure" | "canceled") => {
                    let log =
                        std::fs::read_to_string(self.data_dir.join("training-logs/job-1.log"))
                            .unwrap_or_default();
                    panic!("job 1 ended {status}: {log}");
                }
                _ => {}
            }
            poll.tick_blocking();
        }
        path
    }
}

/// A CA and a server certificate for localhost and 127.0.0.1, made by scripts/dev-certs.sh:
/// (ca, cert, key).
pub(crate) fn certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let certs = dir.join("certs");
    let status = Command::new("bash")
        .arg(root.join("scripts/dev-certs.sh"))
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .expect("dev-certs.sh runs");
    assert!(status.success());
    (
        certs.join("ca.crt"),
        certs.join("server.crt"),
        certs.join("server.key"),
    )
}

/// Every RPC of every service with team A's ids: (service, method, body, reads or writes a
/// resource by id).
fn every_rpc(upload_path: &str) -> Vec<(&'static str, &'static str, String, bool)> {
    vec![
        ("data-management", "data_management.DataManagementService/GetDatasetSummary", r#"{"dataset_id":"1"}"#.into(), true),
        ("data-management", "data_management.DataManagementService/ListDatasets", "{}".into(), false),
        ("data-management", "data_management.DataManagementService/CreateDataset", format!(r#"{{"name":"x","dataset_type":"TEXT_INTENT","path":"{upload_path}"}}"#), false),
        ("data-management", "data_management.DataManagementService/UpdateDataset", format!(r#"{{"dataset_id":"1","path":"{upload_path}"}}"#), true),
        ("data-management", "data_management.DataManagementService/PrepareTrainingDataset", r#"{"dataset_id":"1"}"#.into(), true),
        ("data-management", "data_management.DataManagementService/FetchTrainingDataset", r#"{"dataset_id":"1","version_hash":"hashAg=="}"#.into(), true),
        ("data-management", "data_management.DataManagementService/DeleteDataset", r#"{"dataset_id":"1"}"#.into(), true),
        ("data-management", "data_management.DataManagementService/UploadData", r#"{"path":"x.csv","chunk":"YQ=="}"#.into(), false),
        ("metadata-store", "metadata_store.MetadataStoreService/LogEpoch", r#"{"epoch_info":{"run_id":"1","epoch_id":"99","metrics":{"loss":"1"}}}"#.into(), true),
        ("metadata-store", "metadata_store.MetadataStoreService/LogRunEnd", r#"{"run_id":"1","success":false,"message":"x"}"#.into(), true),
        ("metadata-store", "metadata_store.MetadataStoreService/GetRunStatus", r#"{"run_id":"1"}"#.into(), true),
        ("metadata-store", "metadata_store.MetadataStoreService/CreateArtifact", r#"{"run_id":"1","artifact":{"name":"m","path":"team-b/run_1/x"},"algorithm":"intent-classification"}"#.into(), true),
        ("metadata-store", "metadata_store.MetadataStoreService/GetArtifact", r#"{"run_id":"1"}"#.into(), true),
        ("metadata-store", "metadata_store.MetadataStoreService/ListRuns", "{}".into(), false),
        ("metadata-store", "metadata_store.MetadataStoreService/WatchRun", r#"{"run_id":"1"}"#.into(), true),
        ("training-service", "training.TrainingService/Train", r#"{"metadata":{"algorithm":"intent-classification","dataset_id":"1","train_data_version_hash":"hashAg==","output_model_name":"m"}}"#.into(), true),
        ("training-service", "training.TrainingService/GetTrainingStatus", r#"{"job_id":1}"#.into(), true),
        ("training-service", "training.TrainingService/WatchTrainingStatus", r#"{"job_id":1}"#.into(), true),
        ("training-service", "training.TrainingService/CancelTrainingJob", r#"{"job_id":1}"#.into(), true),
        ("training-service", "training.TrainingService/ListTrainingJobs", "{}".into(), false),
        ("training-service", "training.TrainingService/GetTrainingLogs", r#"{"job_id":1}"#.into(), true),
        ("training-service", "training.TrainingService/ListAlgorithms", "{}".into(), false),
        ("prediction-service", "prediction.PredictionService/Predict", r#"{"runId":"1","document":"play some rock"}"#.into(), true),
        ("metadata-store", "metadata_store.MetadataStoreService/LogRunStart", r#"{"run_id":"1","run_name":"x"}"#.into(), false),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_every_rpc() {
    let deployment = Deployment::start(false).await;
    let upload_path = deployment.team_a_trains();
    let grpc = &deployment.grpc;
    let rpcs = every_rpc(&upload_path);
    assert_eq!(rpcs.len(), 24, "every RPC of the four services");

    // No token, and a revoked one: UNAUTHENTICATED everywhere; health and reflection stay open.
    for (service, method, body, _) in &rpcs {
        let addr = deployment.addr(service);
        assert_eq!(
            grpc.call(None, &addr, method, body).err().as_deref(),
            Some("Unauthenticated"),
            "{method} without a token"
        );
        assert_eq!(
            grpc.call(Some(&deployment.revoked), &addr, method, body)
                .err()
                .as_deref(),
            Some("Unauthenticated"),
            "{method} with a revoked token"
        );
        assert_eq!(
            grpc.call(Some("aml_0000_forged"), &addr, method, body)
                .err()
                .as_deref(),
            Some("Unauthenticated"),
            "{method} with an unknown token"
        );
        grpc.call(None, &addr, "grpc.health.v1.Health/Check", "{}")
            .expect("health is open");
    }
    let (ok, listed, _) =
        crate::support::run_grpcurl(&["-plaintext", &deployment.addr("metadata-store"), "list"]);
    assert!(
        ok && listed.contains("metadata_store.MetadataStoreService"),
        "reflection is open"
    );

    // Team B on team A's ids: NOT_FOUND, exactly as for ids that do not exist; B's lists and
    // watches never show A's resources; B's writes never reach A's.
    for (service, method, body, by_id) in &rpcs {
        let addr = deployment.addr(service);
        // A path B may name, so that the answer is about A's dataset id alone.
        let body = if method.ends_with("/UpdateDataset") {
            body.replace(&upload_path, "team-b/x.csv")
        } else {
            body.clone()
        };
        let answer = grpc.call(Some(&deployment.team_b), &addr, method, &body);
        if *by_id {
            assert_eq!(
                answer.err().as_deref(),
                Some("NotFound"),
                "{method} as team B"
            );
        } else {
            match *method {
                m if m.ends_with("/CreateDataset") => {
                    // A's upload path is outside B's prefix: refused, nothing created.
                    assert_eq!(answer.err().as_deref(), Some("InvalidArgument"), "{method}");
                }
                m if m.ends_with("/UploadData") => {
                    let out = answer.expect("B uploads into its own prefix");
                    assert!(out.contains("team-b/x.csv"), "{out}");
                }
                m if m.ends_with("/LogRunStart") => {
                    // Run ids are per tenant: B starts its own run 1, A's stays as it was.
                    answer.expect("B's own run 1");
                }
                _ => {
                    let out = answer.expect("B's list works");
                    let json: serde_json::Value =
                        serde_json::from_str(if out.trim().is_empty() { "{}" } else { &out })
                            .expect("json");
                    assert!(
                        json.get("datasetId").is_none()
                            && json.get("total").is_none()
                            && json.get("jobs").is_none()
                            && json.get("runs").is_none(),
                        "{method} as team B shows: {out}"
                    );
                }
            }
        }
    }
    // Indistinguishable: B's answer about A's id is the answer about an id nobody has.
    for (service, method, theirs, nobodys) in [
        (
            "data-management",
            "data_management.DataManagementService/GetDatasetSummary",
            r#"{"dataset_id":"1"}"#,
            r#"{"dataset_id":"99"}"#,
        ),
        (
            "data-management",
            "data_management.DataManagementService/FetchTrainingDataset",
            r#"{"dataset_id":"1","version_hash":"hashAg=="}"#,
            r#"{"dataset_id":"99","version_hash":"hashAg=="}"#,
        ),
        (
            "metadata-store",
            "metadata_store.MetadataStoreService/GetArtifact",
            r#"{"run_id":"1"}"#,
            r#"{"run_id":"99"}"#,
        ),
        (
            "training-service",
            "training.TrainingService/GetTrainingStatus",
            r#"{"job_id":1}"#,
            r#"{"job_id":99}"#,
        ),
        (
            "prediction-service",
            "prediction.PredictionService/Predict",
            r#"{"runId":"1","document":"x"}"#,
            r#"{"runId":"99","document":"x"}"#,
        ),
    ] {
        let addr = deployment.addr(service);
        let about_theirs = grpc.error(&deployment.team_b, &addr, method, theirs);
        let about_nobodys = grpc
            .error(&deployment.team_b, &addr, method, nobodys)
            .replace("99", "1");
        assert_eq!(about_theirs, about_nobodys, "{method}");
    }

    // A's run is untouched by B's calls, and A still sees everything.
    let ms = deployment.addr("metadata-store");
    let run = grpc.json(
        &deployment.team_a,
        &ms,
        "metadata_store.MetadataStoreService/GetRunStatus",
        r#"{"run_id":"1"}"#,
    );
    assert_eq!(run["runInfo"]["success"], true, "{run}");
    assert!(
        run["runInfo"]["epochs"]
            .as_object()
            .is_some_and(|e| e.len() == 2),
        "{run}"
    );
    let runs = grpc.json(
        &deployment.team_a,
        &ms,
        "metadata_store.MetadataStoreService/ListRuns",
        "{}",
    );
    assert_eq!(runs["total"], 1, "{runs}");
    let artifact = grpc.json(
        &deployment.team_a,
        &ms,
        "metadata_store.MetadataStoreService/GetArtifact",
        r#"{"run_id":"1"}"#,
    );
    assert!(
        artifact["artifact"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("team-a/run_1")),
        "{artifact}"
    );
    let prediction = grpc.json(
        &deployment.team_a,
        &deployment.addr("prediction-service"),
        "prediction.PredictionService/Predict",
        r#"{"runId":"1","document":"play some rock"}"#,
    );
    assert!(
        prediction["response"]
            .as_str()
            .is_some_and(|r| r.contains("result")),
        "{prediction}"
    );
    // B's own run 1 (started above) with files of its own: B's prediction comes from B's
    // files (broken ones here, so it fails), never from A's run 1 that is loaded already.
    let objects = &deployment.env.objects;
    for name in ["manifest.json", "model.safetensors", "vocab.json"] {
        objects
            .put_bytes(
                &objects.models_bucket,
                &format!("team-b/run_1/{name}"),
                b"not a model".to_vec(),
            )
            .await
            .expect("B's files");
    }
    grpc.json(
        &deployment.team_b,
        &ms,
        "metadata_store.MetadataStoreService/CreateArtifact",
        r#"{"run_id":"1","artifact":{"name":"intent","path":"team-b/run_1"},"algorithm":"intent-classification"}"#,
    );
    let b_predicts = grpc.call(
        Some(&deployment.team_b),
        &deployment.addr("prediction-service"),
        "prediction.PredictionService/Predict",
        r#"{"runId":"1","document":"play some rock"}"#,
    );
    assert!(
        b_predicts.is_err(),
        "B's run 1 answered with A's model: {b_predicts:?}"
    );

    // A token revoked while the services run is refused from then on.
    let dir = deployment.data_dir.display().to_string();
    let team_c = token(&deployment.data_dir, "team-c");
    let dm = deployment.addr("data-management");
    let list = "data_management.DataManagementService/ListDatasets";
    grpc.call(Some(&team_c), &dm, list, "{}")
        .expect("a new token works at once");
    let listed = automl(
        &["token", "--data-dir", &dir, "list", "--tenant", "team-c"],
        &[],
    );
    let id = listed
        .lines()
        .find(|line| line.contains("team-c"))
        .and_then(|line| line.split_whitespace().next())
        .expect("team-c's token")
        .to_string();
    automl(&["token", "--data-dir", &dir, "revoke", &id], &[]);
    assert_eq!(
        grpc.call(Some(&team_c), &dm, list, "{}").err().as_deref(),
        Some("Unauthenticated"),
        "revoked while running"
    );

    let a_sees = grpc
        .call(
            Some(&deployment.team_a),
            &deployment.addr("data-management"),
            "data_management.DataManagementService/ListDatasets",
            "{}",
        )
        .expect("list");
    assert!(a_sees.contains("\"datasetId\": \"1\""), "{a_sees}");

    // A job token (what training-service hands a trainer) reaches its own run only.
    let auth = Authenticator::from_config(
        &AuthConfig {
            enabled: true,
            tokens_file: String::new(),
            internal_secret: SECRET.into(),
        },
        &deployment.data_dir,
    )
    .expect("auth");
    let job = auth.mint(
        "team-a",
        "job-1",
        Scope::Run {
            run_id: "1".into(),
            dataset_id: "1".into(),
            version_hash: "hashAg==".into(),
            base_run_id: String::new(),
        },
        automl_common::auth::JOB_TOKEN_TTL,
    );
    grpc.call(
        Some(&job),
        &ms,
        "metadata_store.MetadataStoreService/GetRunStatus",
        r#"{"run_id":"1"}"#,
    )
    .expect("own run");
    grpc.call(
        Some(&job),
        &deployment.addr("data-management"),
        "data_management.DataManagementService/FetchTrainingDataset",
        r#"{"dataset_id":"1","version_hash":"hashAg=="}"#,
    )
    .expect("own snapshot");
    for (service, method, body, expected) in [
        (
            "metadata-store",
            "metadata_store.MetadataStoreService/LogRunStart",
            r#"{"run_id":"2"}"#,
            "PermissionDenied",
        ),
        (
            "metadata-store",
            "metadata_store.MetadataStoreService/LogEpoch",
            r#"{"epoch_info":{"run_id":"2","epoch_id":"1"}}"#,
            "PermissionDenied",
        ),
        (
            "metadata-store",
            "metadata_store.MetadataStoreService/CreateArtifact",
            r#"{"run_id":"2","artifact":{"name":"m","path":"team-a/run_2/x"}}"#,
            "PermissionDenied",
        ),
        (
            "metadata-store",
            "metadata_store.MetadataStoreService/LogRunEnd",
            r#"{"run_id":"2"}"#,
            "PermissionDenied",
        ),
        (
            "metadata-store",
            "metadata_store.MetadataStoreService/GetRunStatus",
            r#"{"run_id":"2"}"#,
            "NotFound",
        ),
        (
            "metadata-store",
            "metadata_store.MetadataStoreService/ListRuns",
            "{}",
            "PermissionDenied",
        ),
        (
            "data-management",
            "data_management.DataManagementService/FetchTrainingDataset",
            r#"{"dataset_id":"1","version_hash":"hashAQ=="}"#,
            "NotFound",
        ),
        (
            "data-management",
            "data_management.DataManagementService/CreateDataset",
            r#"{"name":"x","path":"team-a/x"}"#,
            "PermissionDenied",
        ),
        (
            "training-service",
            "training.TrainingService/ListTrainingJobs",
            "{}",
            "PermissionDenied",
        ),
        (
            "prediction-service",
            "prediction.PredictionService/Predict",
            r#"{"runId":"1","document":"x"}"#,
            "PermissionDenied",
        ),
    ] {
        assert_eq!(
            grpc.call(Some(&job), &deployment.addr(service), method, body)
                .err()
                .as_deref(),
            Some(expected),
            "{method} with a job token"
        );
    }

    // No secret in the logs of the whole run: API tokens, the S3 key, the internal secret,
    // the job's token.
    let mut logs = std::fs::read_to_string(deployment.env.path().join("automl.log")).expect("log");
    logs.push_str(
        &std::fs::read_to_string(deployment.data_dir.join("training-logs/job-1.log"))
            .expect("job log"),
    );
    assert!(
        logs.contains("job 1") || logs.contains("job_id"),
        "the logs were captured"
    );
    for secret in [
        deployment.team_a.as_str(),
        deployment.team_b.as_str(),
        deployment.revoked.as_str(),
        SECRET,
        deployment.env.common.s3.secret_key.as_str(),
        "amls.",
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
    let tokens_file =
        std::fs::read_to_string(deployment.data_dir.join("tokens.json")).expect("tokens");
    assert!(
        !tokens_file.contains(&deployment.team_a),
        "tokens are stored hashed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_cannot_leave_the_tenant_prefix_or_bucket() {
    let deployment = Deployment::start(false).await;
    let grpc = &deployment.grpc;
    let dm = deployment.addr("data-management");
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/intents-part1.csv");
    let own = deployment
        .upload(&deployment.team_a, "mine.csv", &demo)
        .expect("upload");
    assert_eq!(own, "team-a/mine.csv");
    let objects = &deployment.env.objects;
    let before = objects
        .list(&objects.datasets_bucket, "")
        .await
        .expect("list");
    let models_before = objects
        .list(&objects.models_bucket, "")
        .await
        .expect("list");

    for (method, body) in [
        (
            "CreateDataset",
            r#"{"name":"x","dataset_type":"TEXT_INTENT","path":"../team-b/a.csv"}"#,
        ),
        (
            "CreateDataset",
            r#"{"name":"x","dataset_type":"TEXT_INTENT","path":"/etc/passwd"}"#,
        ),
        (
            "CreateDataset",
            r#"{"name":"x","dataset_type":"TEXT_INTENT","path":"team-a/../team-b/a.csv"}"#,
        ),
        (
            "CreateDataset",
            r#"{"name":"x","dataset_type":"TEXT_INTENT","path":"team-b/a.csv"}"#,
        ),
        (
            "CreateDataset",
            r#"{"name":"x","dataset_type":"TEXT_INTENT","bucket":"mini-automl-models","path":"team-a/mine.csv"}"#,
        ),
        (
            "CreateDataset",
            r#"{"name":"x","dataset_type":"TEXT_INTENT","path":"mine.csv"}"#,
        ),
        ("UpdateDataset", r#"{"dataset_id":"1","path":"../x"}"#),
    ] {
        assert_eq!(
            grpc.call(
                Some(&deployment.team_a),
                &dm,
                &format!("data_management.DataManagementService/{method}"),
                body
            )
            .err()
            .as_deref(),
            Some("InvalidArgument"),
            "{method} {body}"
        );
    }
    for (path, bucket) in [
        ("../escape.csv", ""),
        ("/abs.csv", ""),
        ("a/../../b.csv", ""),
        ("x.csv", "mini-automl-models"),
    ] {
        let body = serde_json::json!({"bucket": bucket, "path": path, "chunk": "YQ=="}).to_string();
        assert_eq!(
            grpc.call(
                Some(&deployment.team_a),
                &dm,
                "data_management.DataManagementService/UploadData",
                &body
            )
            .err()
            .as_deref(),
            Some("InvalidArgument"),
            "UploadData {path} in {bucket:?}"
        );
    }
    let ms = deployment.addr("metadata-store");
    grpc.call(
        Some(&deployment.team_a),
        &ms,
        "metadata_store.MetadataStoreService/LogRunStart",
        r#"{"run_id":"5"}"#,
    )
    .expect("run 5");
    for body in [
        r#"{"run_id":"5","artifact":{"name":"m","bucket":"mini-automl-dm","path":"team-a/run_5"}}"#,
        r#"{"run_id":"5","artifact":{"name":"m","path":"run_5"}}"#,
        r#"{"run_id":"5","artifact":{"name":"m","path":"team-a/run_5/../run_6"}}"#,
        r#"{"run_id":"5","artifact":{"name":"m","path":"team-b/run_5"}}"#,
    ] {
        assert_eq!(
            grpc.call(
                Some(&deployment.team_a),
                &ms,
                "metadata_store.MetadataStoreService/CreateArtifact",
                body
            )
            .err()
            .as_deref(),
            Some("InvalidArgument"),
            "CreateArtifact {body}"
        );
    }
    // Nothing was written anywhere, and no dataset exists.
    assert_eq!(
        objects
            .list(&objects.datasets_bucket, "")
            .await
            .expect("list"),
        before
    );
    assert_eq!(
        objects
            .list(&objects.models_bucket, "")
            .await
            .expect("list"),
        models_before
    );
    let listed = grpc
        .call(
            Some(&deployment.team_a),
            &dm,
            "data_management.DataManagementService/ListDatasets",
            "{}",
        )
        .expect("list");
    assert!(listed.trim().is_empty(), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_works_over_tls_with_a_token() {
    let deployment = Deployment::start(true).await;
    // The whole flow, trainer included, over TLS; grpcurl verifies with -cacert.
    deployment.team_a_trains();
    let prediction = deployment.grpc.json(
        &deployment.team_a,
        &deployment.addr("prediction-service"),
        "prediction.PredictionService/Predict",
        r#"{"runId":"1","document":"play some rock"}"#,
    );
    assert!(
        prediction["response"]
            .as_str()
            .is_some_and(|r| r.contains("result"))
    );
    // Plaintext is refused by a TLS server.
    let (ok, _, _) = crate::support::run_grpcurl(&[
        "-plaintext",
        "-max-time",
        "5",
        &deployment.addr("metadata-store"),
        "list",
    ]);
    assert!(!ok, "a TLS server does not answer plaintext");
    // The CLI with --ca-file and AUTOML_TOKEN.
    let out = automl(
        &[
            "runs",
            "--server",
            &deployment.addr("metadata-store"),
            "list",
        ],
        &[
            ("AUTOML_TOKEN", deployment.team_a.clone()),
            (
                "AUTOML_CA_FILE",
                deployment
                    .env
                    .path()
                    .join("certs/ca.crt")
                    .display()
                    .to_string(),
            ),
        ],
    );
    assert!(out.contains('1'), "{out}");

    // The console serves HTTPS with the same certificate; its session cookie is Secure.
    let ca = deployment.env.path().join("certs/ca.crt");
    let web = format!("https://{}", deployment.addr("web"));
    let curl = |args: &[&str]| -> String {
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "--cacert",
                &ca.display().to_string(),
            ])
            .args(args)
            .output()
            .expect("curl runs");
        assert!(
            output.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let page = curl(&[&format!("{web}/signin")]);
    assert!(page.contains("name=\"token\""), "{page}");
    let signed_in = curl(&[
        "-i",
        "--data-urlencode",
        &format!("token={}", deployment.team_a),
        &format!("{web}/signin"),
    ]);
    let cookie = signed_in
        .lines()
        .find(|line| {
            line.to_ascii_lowercase()
                .starts_with("set-cookie: automl_session=")
        })
        .unwrap_or_else(|| panic!("no session cookie: {signed_in}"));
    for flag in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let session = cookie
        .split_once(':')
        .map(|(_, v)| v.trim().split(';').next().unwrap_or_default().to_string())
        .expect("cookie value");
    let runs = curl(&["-H", &format!("cookie: {session}"), &format!("{web}/runs")]);
    assert!(runs.contains("data-run=\"1\""), "{runs}");

    // `automl health` checks the four services and the console over TLS.
    let port = |service: &str| {
        deployment
            .addr(service)
            .rsplit(':')
            .next()
            .expect("port")
            .to_string()
    };
    let health = automl(
        &["--ca-file", &ca.display().to_string(), "health"],
        &[
            ("AUTOML__DATA_MANAGEMENT__PORT", port("data-management")),
            ("AUTOML__METADATA_STORE__PORT", port("metadata-store")),
            (
                "AUTOML__PREDICTION_SERVICE__PORT",
                port("prediction-service"),
            ),
            ("AUTOML__TRAINING_SERVICE__PORT", port("training-service")),
            ("AUTOML__WEB__PORT", port("web")),
        ],
    );
    assert_eq!(health.matches("SERVING").count(), 5, "{health}");
    assert!(health.contains("web 127.0.0.1"), "{health}");
}

/// Signs `browser` in to the console at `web` with `token`.
async fn console_sign_in(browser: &crate::browser::Browser, web: &str, token: &str) {
    browser.goto(&format!("{web}/signin")).await;
    browser.fill("#token", token).await;
    browser.submit_form("form[action=\"/signin\"]").await;
    browser
        .wait_for_js("location.pathname !== '/signin'", Duration::from_secs(30))
        .await;
}

/// The console with authentication: no page without signing in, each tenant sees only its
/// own datasets, runs, jobs and models (also by typed URLs: 404), the token stays out of pages,
/// URLs, scripts and logs, and a state-changing request without the cross-site token fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_requires_sign_in_and_shows_only_the_tenants_work() {
    let deployment = Deployment::start(false).await;
    deployment.team_a_trains();
    let web = format!("http://{}", deployment.addr("web"));
    let wait = Duration::from_secs(30);
    let browser = crate::browser::Browser::start().await;

    for path in [
        "/runs",
        "/runs/1",
        "/datasets/1",
        "/models",
        "/jobs/1",
        "/experiments",
    ] {
        browser.goto(&format!("{web}{path}")).await;
        browser
            .wait_for_js("location.pathname === '/signin'", wait)
            .await;
        assert_eq!(browser.count("#token").await, 1, "{path} asks for a token");
    }
    // Scripted requests without a session are refused, not redirected.
    let events = browser.fetch("GET", "/runs/1/events", None, &[]).await;
    assert_eq!(events.status, 401);

    // Wrong and revoked tokens are refused.
    for bad in ["aml_nope_0123", deployment.revoked.as_str()] {
        browser.goto(&format!("{web}/signin")).await;
        browser.fill("#token", bad).await;
        browser.submit_form("form[action=\"/signin\"]").await;
        browser.wait_for_css("#signin-error", wait).await;
    }

    // Team A sees its dataset, run, job and model.
    console_sign_in(&browser, &web, &deployment.team_a).await;
    browser.goto(&format!("{web}/runs")).await;
    browser.wait_for_css("tr.run[data-run=\"1\"]", wait).await;
    browser.goto(&format!("{web}/datasets")).await;
    browser.wait_for_css("tr[data-dataset=\"1\"]", wait).await;
    browser.goto(&format!("{web}/models")).await;
    browser
        .wait_for_css("#artifacts tr[data-run=\"1\"]", wait)
        .await;
    browser.goto(&format!("{web}/runs/1")).await;
    browser
        .wait_for_css(".chart[data-metric=\"loss\"]", wait)
        .await;
    assert!(!browser.source().await.contains(&deployment.team_a));
    assert!(!browser.url().await.contains(&deployment.team_a));
    let cookies = browser.eval("return document.cookie;").await;
    assert!(
        !cookies.to_string().contains("automl_session"),
        "the session cookie is HttpOnly: {cookies}"
    );

    // Cross-site checks: without the token a POST is refused, with it the form works.
    let csrf = browser
        .eval("return document.querySelector('meta[name=\"csrf-token\"]').content;")
        .await
        .as_str()
        .expect("csrf token")
        .to_string();
    let refused = browser.post_form("/datasets/1/prepare", &[]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let wrong = browser
        .post_form("/datasets/1/prepare", &[("csrf", "0123456789abcdef")])
        .await;
    assert_eq!(wrong.status, 403);
    let predict = browser
        .fetch(
            "POST",
            "/predict",
            Some(r#"{"run_id":"1","document":"play some rock"}"#),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(predict.status, 403, "{}", predict.body);
    let accepted = browser
        .post_form("/datasets/1/prepare", &[("csrf", &csrf)])
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert!(accepted.url.contains("/datasets/1"), "{}", accepted.url);
    let predicted = browser
        .fetch(
            "POST",
            "/predict",
            Some(r#"{"run_id":"1","document":"play some rock"}"#),
            &[
                ("content-type", "application/json"),
                ("x-csrf-token", &csrf),
            ],
        )
        .await;
    assert_eq!(predicted.status, 200, "{}", predicted.body);

    // Sign out, then team B: none of team A's work, also by typing its URLs.
    browser.click("form.signout button").await;
    browser
        .wait_for_js("location.pathname === '/signin'", wait)
        .await;
    console_sign_in(&browser, &web, &deployment.team_b).await;
    browser.goto(&format!("{web}/runs")).await;
    browser.wait_for_css("#runs-table", wait).await;
    assert_eq!(browser.count("tr.run").await, 0);
    browser.goto(&format!("{web}/datasets")).await;
    browser.wait_for_css("#datasets", wait).await;
    assert_eq!(browser.count("tr[data-dataset]").await, 0);
    browser.goto(&format!("{web}/models")).await;
    browser.wait_for_css("#artifacts", wait).await;
    assert_eq!(browser.count("#artifacts tbody tr").await, 0);
    for path in [
        "/runs/1",
        "/datasets/1",
        "/jobs/1",
        "/runs/1/events",
        "/jobs/1/events",
    ] {
        let answer = browser.fetch("GET", path, None, &[]).await;
        assert_eq!(answer.status, 404, "{path}: {}", answer.body);
    }
    browser.goto(&format!("{web}/runs/1")).await;
    browser.wait_for_text("h1", "404", wait).await;
    browser.close().await;

    let log = std::fs::read_to_string(deployment.env.path().join("automl.log")).expect("log");
    for token in [&deployment.team_a, &deployment.team_b] {
        assert!(!log.contains(token.as_str()), "a token in the log");
    }
}
