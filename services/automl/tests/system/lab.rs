//! The lab as users run it: the commands of the README's lab section, in order, each through
//! bash from the repository root with the real grpcurl and jq. lab-001 starts this build's
//! `automl serve all` (AUTOML_BIN) on free ports with a temporary data directory; after lab-999
//! no process of the lab may be left.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use automl_common::testing::grpcurl;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The command lines of the first `sh` block of the README's "The lab" section.
fn readme_lab_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## The lab")
        .nth(1)
        .expect("README has a section \"## The lab\"");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the lab section has a sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect()
}

/// `count` free ports for the lab's fixed-port services, all below the kernel's ephemeral range:
/// a port chosen by binding port 0 and then released can be handed to any other socket (another
/// test's listener, an outgoing connection's local port) before `automl serve all` binds it.
/// The ports are distinct from those given to the other lab test running beside this one.
fn lab_ports(count: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let seed = RandomState::new().hash_one(std::process::id());
    let span = u64::from(high - low);
    let mut ports = Vec::with_capacity(count);
    for step in 0..span {
        let port = low + ((seed.wrapping_add(step)) % span) as u16;
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            ports.push(port);
            if ports.len() == count {
                return ports;
            }
        }
    }
    panic!("no {count} free ports in {low}..{high}");
}

/// The top-level JSON objects grpcurl printed (each from a line `{` to a line `}`), in order.
fn json_objects(output: &str) -> Vec<Value> {
    let mut objects = Vec::new();
    let mut current: Option<String> = None;
    for line in output.lines() {
        if line == "{" {
            current = Some(String::new());
        }
        if let Some(text) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
            if line == "}" {
                let parsed = serde_json::from_str(text)
                    .unwrap_or_else(|err| panic!("grpcurl printed bad JSON ({err}): {text}"));
                objects.push(parsed);
                current = None;
            }
        }
    }
    objects
}

/// The object with `key` printed last.
fn last_with<'a>(objects: &'a [Value], key: &str, output: &str) -> &'a Value {
    objects
        .iter()
        .rev()
        .find(|object| object.get(key).is_some())
        .unwrap_or_else(|| panic!("no JSON object with {key} in:\n{output}"))
}

/// Ids of the running processes whose process group is `group`.
fn group_members(group: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name: state ppid pgrp …
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == group.to_string() {
            members.push(pid);
        }
    }
    members
}

/// The lab's environment; stops what lab-001 started should the test fail half way.
struct Lab {
    root: PathBuf,
    data_dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
    ports: Vec<u16>,
    /// The TLS certificates of a secure lab.
    _certs: Option<tempfile::TempDir>,
}

impl Lab {
    /// The lab on embedded defaults; `secure`: with authentication (a team-a token in
    /// AUTOML_TOKEN) and TLS (AUTOML_CA_FILE), as the README's variant shows.
    fn new(secure: bool) -> Lab {
        let automl = PathBuf::from(env!("CARGO_BIN_EXE_automl"));
        assert!(
            automl.with_file_name("automl-train").is_file(),
            "automl-train is needed beside {}: cargo test --workspace builds it",
            automl.display()
        );
        let data_dir = tempfile::tempdir().expect("tempdir");
        let ports = lab_ports(6);
        let grpcurl_dir = grpcurl().parent().expect("grpcurl dir").to_path_buf();
        let path = format!(
            "{}:{}",
            grpcurl_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let env = vec![
            ("AUTOML_BIN", automl.display().to_string()),
            ("AUTOML__DATA_DIR", data_dir.path().display().to_string()),
            ("DM_PORT", ports[0].to_string()),
            ("PS_PORT", ports[1].to_string()),
            ("MS_PORT", ports[2].to_string()),
            ("TS_PORT", ports[3].to_string()),
            ("MINIO_PORT", ports[4].to_string()),
            ("WEB_PORT", ports[5].to_string()),
            ("AUTOML__WEB__HOST", "127.0.0.1".to_string()),
            ("LAB_HOST", "127.0.0.1".to_string()),
            ("AUTOML__DATA_MANAGEMENT__HOST", "127.0.0.1".to_string()),
            ("AUTOML__PREDICTION_SERVICE__HOST", "127.0.0.1".to_string()),
            ("AUTOML__METADATA_STORE__HOST", "127.0.0.1".to_string()),
            ("AUTOML__TRAINING_SERVICE__HOST", "127.0.0.1".to_string()),
            // Other tests' processes run at the same time: no fixed /metrics port.
            ("AUTOML__TELEMETRY__METRICS_PORT", "0".to_string()),
            ("PATH", path),
        ];
        let mut env = env;
        let mut certs = None;
        if secure {
            let dir = tempfile::tempdir().expect("tempdir");
            let status = Command::new("bash")
                .arg(repo_root().join("scripts/dev-certs.sh"))
                .arg(dir.path())
                .stdout(std::process::Stdio::null())
                .status()
                .expect("dev-certs.sh runs");
            assert!(status.success());
            let output = Command::new(&automl)
                .args(["token", "--data-dir"])
                .arg(data_dir.path())
                .args(["create", "--tenant", "team-a"])
                .output()
                .expect("automl token create");
            assert!(output.status.success());
            let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
            let file = |name: &str| dir.path().join(name).display().to_string();
            env.extend([
                ("AUTOML__AUTH__ENABLED", "true".to_string()),
                (
                    "AUTOML__AUTH__INTERNAL_SECRET",
                    "lab-internal-secret-0123456789".to_string(),
                ),
                ("AUTOML__TLS__CERT_FILE", file("server.crt")),
                ("AUTOML__TLS__KEY_FILE", file("server.key")),
                ("AUTOML__TLS__CA_FILE", file("ca.crt")),
                ("AUTOML_CA_FILE", file("ca.crt")),
                ("AUTOML_TOKEN", token),
            ]);
            certs = Some(dir);
        }
        Lab {
            root: repo_root(),
            data_dir,
            env,
            ports,
            _certs: certs,
        }
    }

    /// Runs one README line through bash from the repository root; returns its stdout.
    fn run(&self, line: &str) -> String {
        let started = Instant::now();
        let output = Command::new("bash")
            .args(["-c", line])
            .current_dir(&self.root)
            .envs(self.env.iter().map(|(key, value)| (*key, value)))
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!(
            "$ {line}    ({:.1} s)\n{stdout}{stderr}",
            started.elapsed().as_secs_f64()
        );
        assert!(
            output.status.success(),
            "`{line}` failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
            output.status,
            std::fs::read_to_string(self.pid_file().with_file_name("lab.log")).unwrap_or_default()
        );
        stdout
    }

    fn pid_file(&self) -> PathBuf {
        self.data_dir.path().join("lab.pid")
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|text| text.trim().parse().ok())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

fn check_dataset(stdout: &str) {
    let objects = json_objects(stdout);
    let summary = last_with(&objects, "datasetId", stdout);
    assert_eq!(summary["datasetId"], "1", "{summary}");
    assert_eq!(summary["datasetType"], "TEXT_INTENT", "{summary}");
    let commits = summary["commits"].as_array().expect("commits");
    assert_eq!(commits.len(), 1, "{summary}");
    assert_eq!(commits[0]["statistics"]["numExamples"], "320", "{summary}");
    assert_eq!(commits[0]["statistics"]["numLabels"], "8", "{summary}");
}

/// The run printed last succeeded with `epochs` epochs; returns its test accuracy.
fn check_run(stdout: &str, run_id: &str, epochs: usize) -> f64 {
    let objects = json_objects(stdout);
    let job = last_with(&objects, "status", stdout);
    assert_eq!(job["status"], "succeed", "{job}");
    let run = &last_with(&objects, "runInfo", stdout)["runInfo"];
    assert_eq!(run["runId"], run_id, "{run}");
    assert_eq!(run["success"], true, "{run}");
    assert_eq!(
        run["epochs"].as_object().expect("epochs").len(),
        epochs,
        "{run}"
    );
    let message = run["message"].as_str().expect("message");
    message
        .strip_prefix("test accuracy ")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("run message `{message}` names the test accuracy"))
}

/// The prediction printed last answers `{"result": label}` with that label.
fn check_prediction(stdout: &str) -> String {
    let objects = json_objects(stdout);
    let answer = last_with(&objects, "response", stdout);
    let response: Value =
        serde_json::from_str(answer["response"].as_str().expect("response")).expect("json");
    let label = answer["label"].as_str().expect("label").to_string();
    assert_eq!(response["result"], label.as_str(), "{answer}");
    label
}

impl Lab {
    /// The address `automl serve all` printed for its `/metrics` endpoint.
    fn metrics_addr(&self) -> String {
        let log =
            std::fs::read_to_string(self.pid_file().with_file_name("lab.log")).expect("lab.log");
        log.lines()
            .find_map(|line| line.strip_prefix("automl: metrics listening on "))
            .unwrap_or_else(|| panic!("no metrics address in lab.log:\n{log}"))
            .to_string()
    }
}

/// The value of one series (`name{labels}` exactly as exposed), or 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

fn requests(text: &str, service: &str, method: &str) -> f64 {
    series(
        text,
        &format!("automl_grpc_requests_total{{service=\"{service}\",method=\"{method}\"}}"),
    )
}

/// After lab-001 … lab-005: the counters and histograms of the one `/metrics` endpoint of
/// `serve all` say what the lab did.
fn check_metrics_after_the_lab(lab: &Lab) {
    let addr = lab.metrics_addr();
    let text = get_metrics(&addr);
    let dm = "data_management.DataManagementService";
    let ms = "metadata_store.MetadataStoreService";
    let ts = "training.TrainingService";
    let ps = "prediction.PredictionService";
    // Exactly the calls the lab scripts make.
    for (service, method, calls) in [
        (dm, "CreateDataset", 1.0),
        (dm, "UpdateDataset", 1.0),
        (ts, "Train", 2.0),
        (ms, "LogRunStart", 2.0),
        (ms, "LogEpoch", 30.0),
        (ms, "CreateArtifact", 2.0),
        (ms, "LogRunEnd", 2.0),
        // lab-003 (run 1), lab-004 (run 1), lab-005 (runs 1 and 2).
        (ps, "Predict", 4.0),
    ] {
        assert_eq!(
            requests(&text, service, method),
            calls,
            "{service}/{method} requests in:\n{text}"
        );
    }
    let histogram_count = |name: &str| series(&text, &format!("{name}_count"));
    assert_eq!(
        series(
            &text,
            &format!(
                "automl_grpc_request_duration_seconds_count{{service=\"{ts}\",method=\"Train\"}}"
            )
        ),
        2.0
    );
    // The training queue drained; both jobs succeeded and were timed.
    assert_eq!(series(&text, "automl_training_queue_depth"), 0.0);
    assert_eq!(series(&text, "automl_training_running_jobs"), 0.0);
    assert_eq!(
        series(&text, "automl_training_jobs_total{status=\"succeed\"}"),
        2.0
    );
    assert_eq!(
        series(
            &text,
            "automl_training_job_duration_seconds_count{status=\"succeed\"}"
        ),
        2.0
    );
    // Two runs' models, each loaded once; the other two predictions were cache hits.
    assert_eq!(series(&text, "automl_model_loads_total"), 2.0);
    assert_eq!(series(&text, "automl_model_cache_misses_total"), 2.0);
    assert_eq!(series(&text, "automl_model_cache_hits_total"), 2.0);
    assert_eq!(series(&text, "automl_model_cache_models"), 2.0);
    assert_eq!(histogram_count("automl_model_load_duration_seconds"), 2.0);
    // What was ingested: the demo files uploaded and read back by two commits.
    let part1 = std::fs::metadata(repo_root().join("data/demo/intents-part1.csv"))
        .expect("demo data")
        .len() as f64;
    let part2 = std::fs::metadata(repo_root().join("data/demo/intents-part2.csv"))
        .expect("demo data")
        .len() as f64;
    assert_eq!(series(&text, "automl_ingest_bytes_total"), part1 + part2);
    assert!(series(&text, "automl_upload_bytes_total") >= part1 + part2);
    assert_eq!(
        series(
            &text,
            "automl_snapshot_build_duration_seconds_count{outcome=\"ready\"}"
        ),
        2.0,
        "{text}"
    );
    // Storage calls were timed.
    assert!(
        series(
            &text,
            "automl_s3_request_duration_seconds_count{operation=\"get_object\"}"
        ) >= 2.0
    );
    assert!(
        series(
            &text,
            "automl_sql_query_duration_seconds_count{statement=\"insert\"}"
        ) >= 30.0
    );
}

/// `automl status` against the lab: every service SERVING, the drained queue, both runs with
/// their accuracy, both models loaded.
fn check_status_after_the_lab(lab: &Lab) {
    let port = |name: &str| {
        lab.env
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
            .expect("port")
    };
    let output = Command::new(env!("CARGO_BIN_EXE_automl"))
        .args(["status", "--metrics", &lab.metrics_addr()])
        .env("AUTOML__DATA_MANAGEMENT__PORT", port("DM_PORT"))
        .env("AUTOML__PREDICTION_SERVICE__PORT", port("PS_PORT"))
        .env("AUTOML__METADATA_STORE__PORT", port("MS_PORT"))
        .env("AUTOML__TRAINING_SERVICE__PORT", port("TS_PORT"))
        .output()
        .expect("automl status runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("$ automl status\n{stdout}");
    assert!(output.status.success(), "{stdout}");
    assert_eq!(stdout.matches(" SERVING").count(), 4, "{stdout}");
    assert!(
        stdout.contains("training queue: 0 queued, 0 running"),
        "{stdout}"
    );
    assert!(stdout.contains("2 succeed"), "{stdout}");
    for run in ["1", "2"] {
        let row = stdout
            .lines()
            .find(|line| line.starts_with(&format!("{run} ")) && line.contains("succeeded"))
            .unwrap_or_else(|| panic!("run {run} in:\n{stdout}"));
        let accuracy: f64 = row
            .split_whitespace()
            .nth(3)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("an accuracy in `{row}`"));
        assert!(accuracy > 0.5, "{row}");
    }
    assert!(stdout.contains("loaded models: 2 "), "{stdout}");
}

/// GET /metrics over a plain TCP connection (HTTP/1.0, the body until the server closes).
fn get_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: automl\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_string()
}

#[test]
fn the_readme_lab_runs_in_order_and_leaves_nothing_behind() {
    run_lab(false);
}

#[test]
fn the_lab_runs_with_a_token_over_tls() {
    run_lab(true);
}

fn run_lab(secure: bool) {
    let commands = readme_lab_commands();
    let scripts: Vec<&str> = commands
        .iter()
        .map(|line| line.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(
        scripts,
        [
            "scripts/lab-001-start-all.sh",
            "scripts/lab-002-upload-data.sh",
            "scripts/lab-003-first-training.sh",
            "scripts/lab-004-model-serving.sh",
            "scripts/lab-005-second-training.sh",
            "scripts/lab-006-encoder-training.sh",
            "scripts/lab-999-tear-down.sh",
        ],
        "the README's lab commands"
    );
    let lab = Lab::new(secure);
    let started = Instant::now();

    let stdout = lab.run(&commands[0]);
    for service in [
        "data-management",
        "prediction-service",
        "metadata-store",
        "training-service",
    ] {
        assert!(
            stdout.contains(&format!("{service} is SERVING")),
            "{stdout}"
        );
    }
    let pid = lab.pid().expect("lab-001 records the process id");

    check_dataset(&lab.run(&commands[1]));

    let stdout = lab.run(&commands[2]);
    let first = check_run(&stdout, "1", 15);
    assert!(first >= 0.6, "first run's test accuracy {first}");
    assert_eq!(check_prediction(&stdout), "weather");

    let stdout = lab.run(&commands[3]);
    assert_eq!(check_prediction(&stdout), "alarm");

    let stdout = lab.run(&commands[4]);
    let second = check_run(&stdout, "2", 15);
    assert!(second >= 0.6, "second run's test accuracy {second}");
    // The comparison: both runs, on their own snapshots; only the second knows `translate`.
    let row = |run: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(&format!("{run} ")))
            .unwrap_or_else(|| panic!("a comparison row for run {run}:\n{stdout}"))
            .to_string()
    };
    assert!(row("1").contains("hashAg==") && row("1").contains("test accuracy"));
    assert!(row("2").contains("hashBg==") && row("2").contains("OPTIMIZER=adamw"));
    assert!(stdout.contains("run 2: translate"), "{stdout}");

    if !secure {
        check_metrics_after_the_lab(&lab);
        check_status_after_the_lab(&lab);
    }

    // lab-006: the real all-MiniLM-L6-v2 (AUTOML_ENCODER_DIR, fetched by scripts/test.sh),
    // imported, trained with its defaults on every commit, compared with runs 1 and 2.
    let stdout = lab.run(&commands[5]);
    let third = check_run(&stdout, "3", 40);
    assert!(third >= 0.6, "the encoder run's test accuracy {third}");
    let row = |run: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(&format!("{run} ")))
            .unwrap_or_else(|| panic!("a comparison row for run {run}:\n{stdout}"))
            .to_string()
    };
    assert!(row("1").contains("intent-classification "), "{stdout}");
    assert!(
        row("3").contains("intent-classification-encoder"),
        "{stdout}"
    );
    assert!(row("3").contains("all-minilm-l6-v2@"), "{stdout}");
    assert!(stdout.contains("run 3: alarm"), "{stdout}");

    let stdout = lab.run(&commands[6]);
    assert!(stdout.contains("stopped"), "{stdout}");
    assert!(!lab.pid_file().exists(), "lab-999 removes the pid file");
    let alive = Path::new(&format!("/proc/{pid}/stat"))
        .exists()
        .then(|| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
        .filter(|stat| !stat.contains(") Z "));
    assert!(alive.is_none(), "automl (pid {pid}) still runs: {alive:?}");
    assert_eq!(group_members(pid), Vec::<u32>::new(), "lab processes left");
    for port in &lab.ports {
        TcpListener::bind(("127.0.0.1", *port))
            .unwrap_or_else(|err| panic!("port {port} is still taken after lab-999: {err}"));
    }
    eprintln!("the lab took {:.1} s", started.elapsed().as_secs_f64());
}
