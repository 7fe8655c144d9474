//! Observability of `automl serve all`: the shared `/metrics` endpoint after a prediction flow
//! counts exactly the calls made, a request id sent by the caller comes back and reaches the
//! services it calls, and the id of a Train call follows the job through its trainer into the
//! metadata-store's JSON logs.

use std::path::Path;
use std::time::Duration;

use automl_common::metrics_server::{sample, scrape};
use automl_common::testing::{Poll, TestEnv};
use automl_proto::prediction as pb;
use automl_proto::prediction::prediction_service_client::PredictionServiceClient;
use automl_proto::training as tr;
use automl_proto::training::training_service_client::TrainingServiceClient;
use serde_json::Value;

use crate::prediction::{demo_model, publish_run_3};
use crate::support::{Automl, clinc_env, grpcurl_json, process_env, require_trainer};

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(key, _)| {
            key.split('{').next() == Some(name) && labels.iter().all(|l| key.contains(l))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_calls_of_a_prediction_flow() {
    let env = TestEnv::new(automl_common::db::Backend::Sqlite)
        .await
        .expect("env");
    let files = tokio::task::spawn_blocking(demo_model)
        .await
        .expect("training");
    let automl = Automl::spawn(env.path(), &process_env(&env, &env.path().join("automl")));
    let metrics_addr = automl.addr("metrics");
    let before = scrape(&metrics_addr).await.expect("scrape before");
    assert_eq!(sample(&before, "automl_training_queue_depth"), Some(0.0));

    publish_run_3(&automl, &env, &files).await;

    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        automl.addr("prediction-service")
    ))
    .expect("url")
    .connect()
    .await
    .expect("connect");
    let mut predict = PredictionServiceClient::new(channel);
    for (index, text) in ["hello there", "book a flight", "what time is it"]
        .iter()
        .enumerate()
    {
        let mut request = tonic::Request::new(pb::PredictRequest {
            run_id: "3".into(),
            document: (*text).into(),
        });
        let id = format!("test-request-{index}");
        automl_common::request_id::set(&mut request, &id);
        let response = predict.predict(request).await.expect("predict");
        let echoed = response
            .metadata()
            .get(automl_common::request_id::HEADER)
            .and_then(|v| v.to_str().ok());
        assert_eq!(echoed, Some(id.as_str()), "the request id comes back");
    }
    let missing = predict
        .predict(pb::PredictRequest {
            run_id: "99".into(),
            document: "hello".into(),
        })
        .await
        .expect_err("unknown run");
    let code = automl_common::rpc::code_name(missing.code());
    assert!(
        missing.metadata().get("x-request-id").is_some(),
        "a generated id comes back on errors too"
    );

    let text = scrape(&metrics_addr).await.expect("scrape after");
    let predict_labels = [
        "service=\"prediction.PredictionService\"",
        "method=\"Predict\"",
    ];
    assert_eq!(
        sum(&text, "automl_grpc_requests_total", &predict_labels),
        4.0
    );
    assert_eq!(
        sum(
            &text,
            "automl_grpc_request_duration_seconds_count",
            &predict_labels
        ),
        4.0
    );
    assert_eq!(
        sum(&text, "automl_grpc_errors_total", &predict_labels),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "automl_grpc_errors_total",
            &[&format!("code=\"{code}\"")]
        ),
        2.0,
        "Predict and the GetArtifact behind it both failed"
    );
    let metadata_labels =
        |method: &'static str| ["service=\"metadata_store.MetadataStoreService\"", method];
    assert_eq!(
        sum(
            &text,
            "automl_grpc_requests_total",
            &metadata_labels("method=\"LogRunStart\"")
        ),
        1.0
    );
    assert_eq!(
        sum(
            &text,
            "automl_grpc_requests_total",
            &metadata_labels("method=\"CreateArtifact\"")
        ),
        1.0
    );
    // Run 3 resolved once (then cached), run 99 asked once.
    assert_eq!(
        sum(
            &text,
            "automl_grpc_requests_total",
            &metadata_labels("method=\"GetArtifact\"")
        ),
        2.0
    );
    assert_eq!(sample(&text, "automl_model_loads_total"), Some(1.0));
    assert_eq!(sample(&text, "automl_model_cache_models"), Some(1.0));
    assert!(sample(&text, "automl_model_cache_bytes").is_some_and(|b| b > 0.0));
    assert_eq!(sample(&text, "automl_model_cache_misses_total"), Some(1.0));
    assert_eq!(sample(&text, "automl_model_cache_hits_total"), Some(2.0));
    assert_eq!(
        sample(&text, "automl_model_load_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "automl_training_queue_depth"), Some(0.0));
    assert_eq!(sample(&text, "automl_training_running_jobs"), Some(0.0));
    assert!(
        sum(
            &text,
            "automl_s3_request_duration_seconds_count",
            &["operation=\"get_object\""]
        ) >= 3.0,
        "the model files were downloaded"
    );
    assert!(
        sum(
            &text,
            "automl_sql_query_duration_seconds_count",
            &["statement=\"insert\""]
        ) >= 1.0,
        "sql statements are timed"
    );
    automl.terminate();
}

/// The JSON log lines of a `--log-format json` process, parsed; anything else on stderr (none
/// expected) is skipped.
fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("log file")
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The `rpc` span a log line was written in, if any.
fn rpc_span(line: &Value) -> Option<&Value> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|span| span["name"] == "rpc")
}

/// The lines written inside calls to `service`/`method`; asserts there is at least one.
fn rpc_lines<'a>(lines: &'a [Value], service: &str, method: &str) -> Vec<&'a Value> {
    let found: Vec<&Value> = lines
        .iter()
        .filter(|line| {
            rpc_span(line)
                .is_some_and(|span| span["service"] == service && span["method"] == method)
        })
        .collect();
    assert!(!found.is_empty(), "no log line inside {service}/{method}");
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_follows_train_through_the_trainer_to_log_run_end() {
    const ID: &str = "obs-train-7f3a";
    require_trainer();
    let env = clinc_env("clinc-intents-part1.csv", "upload/part1.csv").await;
    let data_dir = env.path().join("automl");
    let log_path = env.path().join("automl.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let mut process_env = process_env(&env, &data_dir);
    process_env.push(("AUTOML__TELEMETRY__LOG_FORMAT", "json".into()));
    process_env.push(("RUST_LOG", "info".into()));
    let automl = Automl::spawn_with_stderr(env.path(), &process_env, log_file.into());
    let dm = automl.addr("data-management");
    grpcurl_json(
        &dm,
        "data_management.DataManagementService/CreateDataset",
        r#"{"name":"clinc","dataset_type":"TEXT_INTENT","path":"upload/part1.csv"}"#,
    );
    grpcurl_json(
        &dm,
        "data_management.DataManagementService/PrepareTrainingDataset",
        r#"{"dataset_id":"1"}"#,
    );

    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        automl.addr("training-service")
    ))
    .expect("url")
    .connect()
    .await
    .expect("connect");
    let mut training = TrainingServiceClient::new(channel);
    let mut request = tonic::Request::new(tr::TrainRequest {
        metadata: Some(tr::TrainingJobMetadata {
            algorithm: "intent-classification".into(),
            dataset_id: "1".into(),
            name: "traced".into(),
            train_data_version_hash: "hashAg==".into(),
            parameters: [("EPOCHS", "1"), ("LR", "4")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            output_model_name: "intent".into(),
            ..Default::default()
        }),
    });
    request
        .metadata_mut()
        .insert("x-request-id", ID.parse().expect("metadata value"));
    let response = training.train(request).await.expect("train");
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(ID)
    );
    let job_id = response.into_inner().job_id;
    let mut poll =
        Poll::new("the job ends", Duration::from_secs(300)).every(Duration::from_millis(100));
    let last = loop {
        let status = training
            .get_training_status(tr::GetTrainingStatusRequest { job_id })
            .await
            .expect("status")
            .into_inner();
        if !matches!(
            status.status(),
            tr::TrainingStatus::Queuing | tr::TrainingStatus::Launch | tr::TrainingStatus::Running
        ) {
            break status;
        }
        poll.tick().await;
    };
    assert_eq!(
        last.status(),
        tr::TrainingStatus::Succeed,
        "{}",
        last.message
    );
    automl.terminate();

    let job_log = std::fs::read_to_string(
        data_dir
            .join("training-logs")
            .join(format!("job-{job_id}.log")),
    )
    .expect("job log");
    assert!(
        job_log
            .lines()
            .any(|line| line.trim() == format!("request_id {ID}")),
        "the trainer prints the id: {job_log}"
    );

    let lines = json_lines(&log_path);
    let ids = |found: Vec<&Value>| -> Vec<String> {
        found
            .iter()
            .map(|line| line["request_id"].as_str().unwrap_or("none").to_string())
            .collect()
    };
    let train = rpc_lines(&lines, "training.TrainingService", "Train");
    assert!(
        train.iter().any(|line| line["message"] == "job queued"),
        "{train:?}"
    );
    assert!(ids(train).iter().all(|id| id == ID));
    let started: Vec<&Value> = lines
        .iter()
        .filter(|line| line["message"] == "trainer started" && line["job_id"] == job_id)
        .collect();
    assert_eq!(
        ids(started),
        [ID],
        "the scheduler logs the id with the trainer's start"
    );
    let run_id = job_id.to_string();
    for (method, message) in [("LogRunStart", "run started"), ("LogRunEnd", "run ended")] {
        let store = rpc_lines(&lines, "metadata_store.MetadataStoreService", method);
        assert!(
            store
                .iter()
                .any(|line| line["message"] == message && line["run_id"] == run_id.as_str()),
            "{method}: {store:?}"
        );
        assert_eq!(
            ids(store).iter().filter(|id| *id != ID).count(),
            0,
            "{method} runs under the Train call's id"
        );
    }
}

/// A minimal OTLP/HTTP collector: answers 200 to every POST and keeps the JSON bodies.
fn collector() -> (String, std::sync::mpsc::Receiver<Value>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0usize;
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            if request_line.starts_with("POST /v1/traces")
                && let Ok(json) = serde_json::from_slice(&body)
                && sender.send(json).is_err()
            {
                return;
            }
        }
    });
    (format!("http://{addr}"), receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_one_request_reach_an_otlp_collector_as_one_trace() {
    let env = TestEnv::new(automl_common::db::Backend::Sqlite)
        .await
        .expect("env");
    let (endpoint, bodies) = collector();
    let mut vars = process_env(&env, &env.path().join("automl"));
    vars.push(("AUTOML__TELEMETRY__OTLP_ENDPOINT", endpoint));
    vars.push(("RUST_LOG", "info".into()));
    let automl = Automl::spawn(env.path(), &vars);
    let id = "otlp-trace-4711";
    for run_id in ["1", "2"] {
        let (ok, _, stderr) = crate::support::run_grpcurl(&[
            "-plaintext",
            "-H",
            &format!("x-request-id: {id}"),
            "-d",
            &format!(r#"{{"run_id":"{run_id}","run_name":"x"}}"#),
            &automl.addr("metadata-store"),
            "metadata_store.MetadataStoreService/LogRunStart",
        ]);
        assert!(ok, "{stderr}");
    }
    let trace_id = format!("{:032x}", automl_common::otlp::trace_id_of(id));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut spans: Vec<Value> = Vec::new();
    while spans.len() < 2 {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        let body = tokio::task::block_in_place(|| bodies.recv_timeout(remaining))
            .expect("the collector receives the spans within 20 s");
        for span in body["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let carries_id = span["attributes"].as_array().is_some_and(|attributes| {
                attributes
                    .iter()
                    .any(|a| a["key"] == "request_id" && a["value"]["stringValue"] == id)
            });
            if span["name"] == "rpc" && carries_id {
                spans.push(span);
            }
        }
    }
    // Both calls, one trace, each its own span with start and end.
    assert!(
        spans.iter().all(|s| s["traceId"] == trace_id.as_str()),
        "{spans:?}"
    );
    assert_ne!(spans[0]["spanId"], spans[1]["spanId"]);
    assert!(
        spans
            .iter()
            .all(|s| s["endTimeUnixNano"].as_str() >= s["startTimeUnixNano"].as_str())
    );
    automl.terminate();
}
