//! Helpers shared by the system tests: the `automl` process, grpcurl.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use automl_common::metrics_server::{sample, scrape};
use automl_common::testing::{Poll, TestEnv, grpcurl};
use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use tonic::transport::Channel;

/// What `automl serve all` starts, as it announces them.
pub const SERVICES: [&str; 4] = [
    "data-management",
    "metadata-store",
    "prediction-service",
    "training-service",
];

/// A running `automl serve` process; killed when dropped.
pub struct Automl {
    pub child: Child,
    /// `service name → host:port` as the process announced them.
    pub addrs: HashMap<String, String>,
}

impl Automl {
    /// Starts `automl serve all` in `cwd` with `env`, on free ports, and waits until every
    /// service has announced its address.
    pub fn spawn(cwd: &Path, env: &[(&str, String)]) -> Automl {
        Self::spawn_with_stderr(cwd, env, Stdio::inherit())
    }

    /// [`Automl::spawn`] with the process's stderr (its logs) sent to `stderr`, e.g. a file
    /// that a test reads back.
    pub fn spawn_with_stderr(cwd: &Path, env: &[(&str, String)], stderr: Stdio) -> Automl {
        Self::spawn_program(Path::new(env!("CARGO_BIN_EXE_automl")), cwd, env, stderr)
    }

    /// [`Automl::spawn_with_stderr`] of the `automl` binary at `program` (e.g. a copy).
    pub fn spawn_program(
        program: &Path,
        cwd: &Path,
        env: &[(&str, String)],
        stderr: Stdio,
    ) -> Automl {
        Self::spawn_serving(program, "all", &SERVICES, cwd, env, stderr)
    }

    /// `program serve <service>` (one service, or `all`); waits until each of `expected` has
    /// announced its address.
    pub fn spawn_serving(
        program: &Path,
        service: &str,
        expected: &[&str],
        cwd: &Path,
        env: &[(&str, String)],
        stderr: Stdio,
    ) -> Automl {
        let mut command = Command::new(program);
        command
            .args(["serve", service])
            .current_dir(cwd)
            .env("AUTOML__DATA_MANAGEMENT__HOST", "127.0.0.1")
            .env("AUTOML__DATA_MANAGEMENT__PORT", "0")
            .env("AUTOML__TRAINING_SERVICE__HOST", "127.0.0.1")
            .env("AUTOML__TRAINING_SERVICE__PORT", "0")
            .env("AUTOML__PREDICTION_SERVICE__HOST", "127.0.0.1")
            .env("AUTOML__PREDICTION_SERVICE__PORT", "0")
            .env("AUTOML__METADATA_STORE__HOST", "127.0.0.1")
            .env("AUTOML__METADATA_STORE__PORT", "0")
            .env("AUTOML__S3__EMBEDDED_BIND", "127.0.0.1:0")
            .env("AUTOML__TELEMETRY__METRICS_HOST", "127.0.0.1")
            .env("AUTOML__TELEMETRY__METRICS_PORT", "0")
            .env("AUTOML__WEB__HOST", "127.0.0.1")
            .env("AUTOML__WEB__PORT", "0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
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
            Self::await_announcements(&receiver, expected, &mut addrs);
        });
        Automl { child, addrs }
    }

    fn await_announcements(
        receiver: &std::sync::mpsc::Receiver<String>,
        expected: &[&str],
        addrs: &mut HashMap<String, String>,
    ) {
        while !expected.iter().all(|name| addrs.contains_key(*name)) {
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

    pub fn addr(&self, service: &str) -> String {
        self.addrs[service].clone()
    }

    async fn channel(&self, service: &str) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(service)))
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn metadata_client(&self) -> MetadataStoreServiceClient<Channel> {
        MetadataStoreServiceClient::new(self.channel("metadata-store").await)
    }

    pub async fn data_client(&self) -> DataManagementServiceClient<Channel> {
        DataManagementServiceClient::new(self.channel("data-management").await)
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// The value of `series` on the process's `/metrics` endpoint; 0 while it is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = scrape(&self.addr("metrics"))
            .await
            .expect("scrape /metrics");
        sample(&text, series).unwrap_or(0.0)
    }

    /// Waits until `series` on `/metrics` is above `floor`: an observable sign that the work a
    /// test wants to interrupt is under way.
    pub async fn wait_for_metric_above(&self, series: &str, floor: f64) {
        let mut poll = Poll::new(format!("{series} above {floor}"), Duration::from_secs(120));
        loop {
            let value = self.metric(series).await;
            if value > floor {
                return;
            }
            poll.tick_with(value).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) {
        self.signal("TERM");
        let status = tokio::task::block_in_place(|| self.child.wait()).expect("wait");
        assert!(status.success(), "graceful shutdown exits 0, got {status}");
    }

    /// SIGKILL, then reaps the process.
    pub fn kill9(mut self) {
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

/// Runs grpcurl and returns (success, stdout, stderr).
pub fn run_grpcurl(args: &[&str]) -> (bool, String, String) {
    let output = tokio::task::block_in_place(|| Command::new(grpcurl()).args(args).output())
        .expect("grpcurl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// grpcurl prints responses as protobuf JSON (lowerCamelCase names, defaults omitted).
pub fn grpcurl_json(addr: &str, method: &str, body: &str) -> serde_json::Value {
    let (ok, stdout, stderr) = run_grpcurl(&["-plaintext", "-d", body, addr, method]);
    assert!(ok, "grpcurl {method} failed: {stderr}");
    serde_json::from_str(&stdout).expect("grpcurl prints JSON")
}

/// Follows job `job_id` of the training-service at `training` (grpcurl's GetTrainingStatus)
/// until it ends, within `timeout`; its last status.
pub async fn job_end(training: &str, job_id: i64, timeout: Duration) -> serde_json::Value {
    let job = format!(r#"{{"job_id":{job_id}}}"#);
    let mut poll =
        Poll::new(format!("job {job_id} ends"), timeout).every(Duration::from_millis(100));
    loop {
        let status = grpcurl_json(training, "training.TrainingService/GetTrainingStatus", &job);
        if matches!(
            status["status"].as_str(),
            Some("succeed" | "failure" | "canceled")
        ) {
            return status;
        }
        poll.tick().await;
    }
}

pub fn process_env(env: &TestEnv, data_dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("AUTOML__DATA_DIR", data_dir.display().to_string()),
        ("AUTOML__DATABASE__URL", env.common.database.url.clone()),
        ("AUTOML__S3__ENDPOINT", env.common.s3.endpoint.clone()),
    ]
}

/// The bytes of a CLINC150 file of `data/clinc`.
pub fn clinc_data(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/clinc")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{} is needed: {err}", path.display()))
}

/// A SQLite environment with the CLINC150 file `name` of `data/clinc` uploaded at `key` of the
/// datasets bucket.
pub async fn clinc_env(name: &str, key: &str) -> TestEnv {
    let env = TestEnv::new(automl_common::db::Backend::Sqlite)
        .await
        .expect("env");
    env.objects
        .put_bytes(&env.objects.datasets_bucket, key, clinc_data(name))
        .await
        .expect("upload");
    env
}

/// Asserts that this build's `automl-train` is beside `automl`, where `automl serve` runs it.
pub fn require_trainer() {
    let trainer = PathBuf::from(env!("CARGO_BIN_EXE_automl")).with_file_name("automl-train");
    assert!(
        trainer.is_file(),
        "{} is needed beside automl: cargo test --workspace builds it",
        trainer.display()
    );
}

/// A copy of this build's `automl` alone in `<dir>/bin`: with no `automl-train` beside it,
/// training-service runs `automl trainer`, this build's trainer.
pub fn lone_automl(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let program = bin.join("automl");
    std::fs::copy(env!("CARGO_BIN_EXE_automl"), &program).expect("copy automl");
    program
}
