//! The `automl` binary as users run it: a real process, real sockets, the real grpcurl.
//! Storage scenarios run on SQLite and (with AUTOML_TEST_POSTGRES_URL) on Postgres.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automl_common::testing::{TestEnv, backends};
use automl_proto::data_management::FileInfo;
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use tonic::transport::Channel;

/// A running `automl serve` process; killed when dropped.
struct Automl {
    child: Child,
    /// `service name → host:port` as the process announced them.
    addrs: HashMap<String, String>,
}

impl Automl {
    /// Starts `automl serve all` in `cwd` with `env`, on free ports, and waits until every
    /// service has announced its address.
    fn spawn(cwd: &Path, env: &[(&str, String)]) -> Automl {
        let mut command = Command::new(env!("CARGO_BIN_EXE_automl"));
        command
            .args(["serve", "all"])
            .current_dir(cwd)
            .env("AUTOML__METADATA_STORE__HOST", "127.0.0.1")
            .env("AUTOML__METADATA_STORE__PORT", "0")
            .env("AUTOML__S3__EMBEDDED_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("automl starts");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = HashMap::new();
        tokio::task::block_in_place(|| {
            Self::await_announcements(&receiver, &mut addrs);
        });
        Automl { child, addrs }
    }

    fn await_announcements(
        receiver: &std::sync::mpsc::Receiver<String>,
        addrs: &mut HashMap<String, String>,
    ) {
        while !addrs.contains_key("metadata-store") {
            let line = receiver
                .recv_timeout(Duration::from_secs(60))
                .expect("automl announces its services within 60 s");
            let announced = line
                .strip_prefix("automl: ")
                .and_then(|rest| rest.split_once(" listening on "));
            if let Some((name, addr)) = announced {
                addrs.insert(name.to_string(), addr.to_string());
            }
        }
    }

    fn addr(&self, service: &str) -> String {
        self.addrs[service].clone()
    }

    async fn metadata_client(&self) -> MetadataStoreServiceClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            self.addr("metadata-store")
        ))
        .expect("url")
        .connect()
        .await
        .expect("connect");
        MetadataStoreServiceClient::new(channel)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGTERM, then waits for a clean exit.
    fn terminate(mut self) {
        self.signal("TERM");
        let status = tokio::task::block_in_place(|| self.child.wait()).expect("wait");
        assert!(status.success(), "graceful shutdown exits 0, got {status}");
    }

    /// SIGKILL, then reaps the process.
    fn kill9(mut self) {
        self.signal("KILL");
        let _ = tokio::task::block_in_place(|| self.child.wait());
    }
}

impl Drop for Automl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The grpcurl binary: `$GRPCURL`, else `grpcurl` on the PATH (scripts/test.sh installs it).
fn grpcurl() -> PathBuf {
    if let Ok(path) = std::env::var("GRPCURL") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("grpcurl"))
            .find(|candidate| candidate.is_file())
    });
    found.expect("grpcurl is needed: run scripts/test.sh, which installs it, or set GRPCURL")
}

/// Runs grpcurl and returns (success, stdout, stderr).
fn run_grpcurl(args: &[&str]) -> (bool, String, String) {
    let output = tokio::task::block_in_place(|| Command::new(grpcurl()).args(args).output())
        .expect("grpcurl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// grpcurl prints responses as protobuf JSON (lowerCamelCase names, defaults omitted).
fn grpcurl_json(addr: &str, method: &str, body: &str) -> serde_json::Value {
    let (ok, stdout, stderr) = run_grpcurl(&["-plaintext", "-d", body, addr, method]);
    assert!(ok, "grpcurl {method} failed: {stderr}");
    serde_json::from_str(&stdout).expect("grpcurl prints JSON")
}

fn process_env(env: &TestEnv, data_dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("AUTOML__DATA_DIR", data_dir.display().to_string()),
        ("AUTOML__DATABASE__URL", env.common.database.url.clone()),
        ("AUTOML__S3__ENDPOINT", env.common.s3.endpoint.clone()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_configuration_and_reports_serving() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let automl = Automl::spawn(cwd.path(), &[]);
    assert!(
        cwd.path().join("automl-data").is_dir(),
        "data directory created"
    );
    let addr = automl.addr("metadata-store");
    let health = grpcurl_json(&addr, "grpc.health.v1.Health/Check", "{}");
    assert_eq!(health["status"], "SERVING");
    let health = grpcurl_json(
        &addr,
        "grpc.health.v1.Health/Check",
        r#"{"service":"metadata_store.MetadataStoreService"}"#,
    );
    assert_eq!(health["status"], "SERVING");
    // The built-in health command agrees.
    let status = Command::new(env!("CARGO_BIN_EXE_automl"))
        .args(["health", "--addr", &addr])
        .output()
        .expect("automl health");
    assert!(status.status.success());
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "SERVING");
    automl.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_drives_the_metadata_store_contract() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let automl = Automl::spawn(cwd.path(), &[]);
    let addr = automl.addr("metadata-store");

    let (ok, listing, stderr) = run_grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "{stderr}");
    for service in [
        "metadata_store.MetadataStoreService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listing.lines().any(|l| l == service),
            "{service} in {listing}"
        );
    }
    let (ok, described, stderr) = run_grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "metadata_store.MetadataStoreService",
    ]);
    assert!(ok, "{stderr}");
    assert!(described.contains("WatchRun"));

    let started = grpcurl_json(
        &addr,
        "metadata_store.MetadataStoreService/LogRunStart",
        r#"{"start_time":"2021-08-01T00:00:00Z","run_id":"1","run_name":"demo-run","tracing":{"dataset_id":"1","version_hash":"hashBA==","code_version":"12a3bfd"}}"#,
    );
    let run_info = &started["runInfo"];
    assert_eq!(run_info["runId"], "1");
    assert_eq!(run_info["runName"], "demo-run");
    assert_eq!(run_info["message"], "Running");
    assert_eq!(run_info["tracing"]["versionHash"], "hashBA==");
    assert_eq!(started["path"], "run_1");
    assert_eq!(started["bucket"], "mini-automl-models");

    let epoch = grpcurl_json(
        &addr,
        "metadata_store.MetadataStoreService/LogEpoch",
        r#"{"epoch_info":{"start_time":"2021-08-01T01:00:00Z","end_time":"2021-08-01T01:30:00Z","run_id":"1","epoch_id":"1","metrics":{"accuracy":"0.5"}}}"#,
    );
    assert_eq!(epoch["epochInfo"]["metrics"]["accuracy"], "0.5");

    let status = grpcurl_json(
        &addr,
        "metadata_store.MetadataStoreService/GetRunStatus",
        r#"{"run_id":"1"}"#,
    );
    assert_eq!(
        status["runInfo"]["epochs"]["1"]["metrics"]["accuracy"],
        "0.5"
    );
    assert_eq!(status["runInfo"]["message"], "Running");

    let ended = grpcurl_json(
        &addr,
        "metadata_store.MetadataStoreService/LogRunEnd",
        r#"{"end_time":"2021-08-01T02:00:00Z","run_id":"1","success":true,"message":"done"}"#,
    );
    assert_eq!(ended["runInfo"]["success"], true);
    assert_eq!(ended["runInfo"]["message"], "done");

    // Errors come back with their codes through grpcurl too.
    let (ok, _, stderr) = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"run_id":"42"}"#,
        &addr,
        "metadata_store.MetadataStoreService/GetRunStatus",
    ]);
    assert!(!ok);
    assert!(stderr.contains("NotFound"), "{stderr}");
    automl.terminate();
}

async fn populate(client: &mut MetadataStoreServiceClient<Channel>, env: &TestEnv) {
    client
        .log_run_start(pb::LogRunStartRequest {
            start_time: "2021-08-01T00:00:00Z".into(),
            run_id: "1".into(),
            run_name: "durable".into(),
            tracing: None,
        })
        .await
        .expect("start");
    for epoch in 1..=3 {
        client
            .log_epoch(epoch_request("1", epoch))
            .await
            .expect("epoch");
    }
    env.objects
        .put_bytes(
            &env.objects.models_bucket,
            "run_1/model.safetensors",
            vec![1, 2, 3],
        )
        .await
        .expect("upload");
    client
        .create_artifact(pb::CreateArtifactRequest {
            artifact: Some(FileInfo {
                name: "intent".into(),
                bucket: String::new(),
                path: "run_1".into(),
            }),
            run_id: "1".into(),
            algorithm: "intent-classification".into(),
        })
        .await
        .expect("artifact");
}

fn epoch_request(run_id: &str, epoch: u32) -> pb::LogEpochRequest {
    pb::LogEpochRequest {
        epoch_info: Some(pb::EpochInfo {
            start_time: "2021-08-01T01:00:00Z".into(),
            end_time: "2021-08-01T01:30:00Z".into(),
            run_id: run_id.into(),
            epoch_id: epoch.to_string(),
            metrics: HashMap::from([("loss".to_string(), format!("{epoch}.0"))]),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_restart_keep_runs_epochs_and_artifacts() {
    for backend in backends() {
        let env = TestEnv::new(backend).await.expect("env");
        let data_dir = env.path().join("automl");
        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        populate(&mut automl.metadata_client().await, &env).await;
        automl.terminate();

        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        let mut client = automl.metadata_client().await;
        let run = client
            .get_run_status(pb::GetRunStatusRequest { run_id: "1".into() })
            .await
            .expect("run survives")
            .into_inner()
            .run_info
            .expect("run_info");
        assert_eq!(run.run_name, "durable");
        assert_eq!(run.epochs.len(), 3);
        let artifact = client
            .get_artifact(pb::GetArtifactRequest { run_id: "1".into() })
            .await
            .expect("artifact survives")
            .into_inner();
        assert_eq!(artifact.version, "1");
        automl.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_log_epoch_loses_no_acknowledged_epoch() {
    for backend in backends() {
        let env = TestEnv::new(backend).await.expect("env");
        let data_dir = env.path().join("automl");
        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        let client = automl.metadata_client().await;
        client
            .clone()
            .log_run_start(pb::LogRunStartRequest {
                run_id: "1".into(),
                run_name: "crash".into(),
                ..Default::default()
            })
            .await
            .expect("start");

        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for writer in 0..4u32 {
            let mut client = client.clone();
            let acknowledged = Arc::clone(&acknowledged);
            writers.push(tokio::spawn(async move {
                for n in 0..100_000u32 {
                    let epoch = writer * 1_000_000 + n;
                    match client.log_epoch(epoch_request("1", epoch)).await {
                        Ok(_) => acknowledged.lock().expect("lock").push(epoch),
                        Err(_) => break,
                    }
                }
            }));
        }
        // Kill while the writers are busy, after a fair number of acknowledgements.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while acknowledged.lock().expect("lock").len() < 300 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "writers make progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        automl.kill9();
        for writer in writers {
            let _ = writer.await;
        }
        let acknowledged = acknowledged.lock().expect("lock").clone();

        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        let run = automl
            .metadata_client()
            .await
            .get_run_status(pb::GetRunStatusRequest { run_id: "1".into() })
            .await
            .expect("status")
            .into_inner()
            .run_info
            .expect("run_info");
        for epoch in &acknowledged {
            assert!(
                run.epochs.contains_key(&epoch.to_string()),
                "acknowledged epoch {epoch} lost ({backend:?})"
            );
        }
        automl.terminate();
    }
}
