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

/// Prepares a snapshot of `upload/part1.csv` as dataset 1 in `automl` and returns a client of its
/// training-service with a one-epoch Train request for it (metadata to be added by the test).
async fn clinc_training(
    automl: &Automl,
) -> (
    TrainingServiceClient<tonic::transport::Channel>,
    tonic::Request<tr::TrainRequest>,
) {
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
    let request = tonic::Request::new(tr::TrainRequest {
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
    (TrainingServiceClient::new(channel), request)
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
    let (mut training, mut request) = clinc_training(&automl).await;
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

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    /// The exporting process's `service.name`.
    process: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: std::collections::HashMap<String, String>,
}

/// An OTLP/HTTP collector on 127.0.0.1, over TLS with `tls` = (certificate, key): decodes every
/// `POST /v1/traces` (protobuf) and sends on its spans. Returns its base URL.
async fn collector(
    tls: Option<(&Path, &Path)>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<Received>) {
    use http_body_util::BodyExt;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    use prost::Message;
    use rustls::pki_types::pem::PemObject;

    let acceptor = tls.map(|(cert, key)| {
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
            .expect("certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let text = |value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>| match value
        .and_then(|v| v.value.as_ref())
    {
        Some(AnyValue::StringValue(text)) => text.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let sender = sender.clone();
            async move {
                let traces = request.uri().path() == "/v1/traces";
                let body = request.into_body().collect().await?.to_bytes();
                if traces && let Ok(export) = ExportTraceServiceRequest::decode(body) {
                    for resource_spans in export.resource_spans {
                        let process = resource_spans
                            .resource
                            .iter()
                            .flat_map(|resource| &resource.attributes)
                            .find(|a| a.key == "service.name")
                            .map(|a| text(a.value.as_ref()))
                            .unwrap_or_default();
                        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                            let _ = sender.send(Received {
                                process: process.clone(),
                                name: span.name.clone(),
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent: hex(&span.parent_span_id),
                                attributes: span
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(a.value.as_ref())))
                                    .collect(),
                            });
                        }
                    }
                }
                Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                    hyper::body::Bytes::new(),
                )))
            }
        });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move {
                let builder = hyper::server::conn::http1::Builder::new();
                let _ = match acceptor {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                    None => {
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                };
            });
        }
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    (format!("{scheme}://{addr}"), receiver)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Spans from `spans` until `done` holds for those received, within 60 s.
async fn receive_until(
    spans: &mut tokio::sync::mpsc::UnboundedReceiver<Received>,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&received) {
        match tokio::time::timeout_at(deadline, spans.recv()).await {
            Ok(Some(span)) => received.push(span),
            _ => panic!("the collector did not receive the spans within 60 s: {received:#?}"),
        }
    }
    received
}

/// The RPC spans of `method` among `spans`.
fn rpc_spans<'a>(spans: &'a [Received], method: &str) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|span| span.attributes.get("method").is_some_and(|m| m == method))
        .collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_join_the_callers_trace_and_a_request_id_starts_none() {
    let env = TestEnv::new(automl_common::db::Backend::Sqlite)
        .await
        .expect("env");
    let (endpoint, mut spans) = collector(None).await;
    let mut vars = process_env(&env, &env.path().join("automl"));
    vars.push(("AUTOML__TELEMETRY__OTLP_ENDPOINT", endpoint));
    vars.push(("RUST_LOG", "info".into()));
    let automl = Automl::spawn(env.path(), &vars);
    let id = "otlp-trace-4711";
    for (run_id, traceparent) in [
        (
            "1",
            Some(format!("traceparent: 00-{TRACE_ID}-{CALLER_SPAN}-01")),
        ),
        ("2", None),
    ] {
        let body = format!(r#"{{"run_id":"{run_id}","run_name":"x"}}"#);
        let request_id = format!("x-request-id: {id}");
        let mut args = vec!["-plaintext", "-H", &request_id, "-d", &body];
        if let Some(traceparent) = &traceparent {
            args.extend(["-H", traceparent]);
        }
        let addr = automl.addr("metadata-store");
        args.extend([
            addr.as_str(),
            "metadata_store.MetadataStoreService/LogRunStart",
        ]);
        let (ok, _, stderr) = crate::support::run_grpcurl(&args);
        assert!(ok, "{stderr}");
    }
    let received = receive_until(&mut spans, |spans| {
        rpc_spans(spans, "LogRunStart").len() >= 2
    })
    .await;
    let calls = rpc_spans(&received, "LogRunStart");
    // The call with a traceparent continues the caller's trace under the caller's span; the
    // one with the same request id and no traceparent is a trace of its own.
    let joined = calls
        .iter()
        .find(|span| span.trace_id == TRACE_ID)
        .expect("a span in the caller's trace");
    assert_eq!(joined.parent, CALLER_SPAN);
    assert_eq!(
        joined.name,
        "/metadata_store.MetadataStoreService/LogRunStart"
    );
    assert_eq!(joined.attributes["request_id"], id);
    let alone = calls
        .iter()
        .find(|span| span.trace_id != TRACE_ID)
        .expect("a span in another trace");
    assert_eq!(alone.attributes["request_id"], id);
    assert!(alone.parent.is_empty(), "a root span: {alone:?}");
    automl.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_train_through_the_trainer_to_an_https_collector() {
    require_trainer();
    let env = clinc_env("clinc-intents-part1.csv", "upload/part1.csv").await;
    let (ca, cert, key) = crate::auth::certificate(env.path());
    let (endpoint, mut spans) = collector(Some((&cert, &key))).await;
    assert!(endpoint.starts_with("https://127.0.0.1:"));
    let mut vars = process_env(&env, &env.path().join("automl"));
    vars.push(("AUTOML__TELEMETRY__OTLP_ENDPOINT", endpoint));
    vars.push(("AUTOML__TELEMETRY__OTLP_CA_FILE", ca.display().to_string()));
    vars.push(("RUST_LOG", "info".into()));
    let automl = Automl::spawn(env.path(), &vars);
    let (mut training, mut request) = clinc_training(&automl).await;
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
            .parse()
            .expect("metadata value"),
    );
    let job_id = training
        .train(request)
        .await
        .expect("train")
        .into_inner()
        .job_id;

    // Train in training-service, the trainer's job, LogRunStart and LogRunEnd in metadata-store:
    // one trace, each span the child of the one before it.
    let received = receive_until(&mut spans, |spans| {
        !rpc_spans(spans, "LogRunEnd").is_empty()
            && spans.iter().any(|span| span.process == "automl-train")
    })
    .await;
    let in_trace: Vec<&Received> = received
        .iter()
        .filter(|span| span.trace_id == TRACE_ID)
        .collect();
    let train = rpc_spans(&received, "Train");
    assert_eq!(train.len(), 1, "{received:#?}");
    assert_eq!(train[0].trace_id, TRACE_ID);
    assert_eq!(train[0].parent, CALLER_SPAN);
    assert_eq!(train[0].attributes["service"], "training.TrainingService");
    let trainer = in_trace
        .iter()
        .find(|span| span.process == "automl-train" && span.name == "train")
        .unwrap_or_else(|| panic!("the trainer's span in the trace: {received:#?}"));
    assert_eq!(
        trainer.parent, train[0].span_id,
        "the trainer continues Train"
    );
    for method in ["LogRunStart", "LogRunEnd"] {
        let calls = rpc_spans(&received, method);
        assert!(
            calls.iter().any(|span| span.trace_id == TRACE_ID
                && span.parent == trainer.span_id
                && span.attributes["service"] == "metadata_store.MetadataStoreService"),
            "{method} is a child of the trainer's span: {calls:#?}"
        );
    }
    let status = training
        .get_training_status(tr::GetTrainingStatusRequest { job_id })
        .await
        .expect("status")
        .into_inner();
    assert_ne!(
        status.status(),
        tr::TrainingStatus::Failure,
        "{}",
        status.message
    );
    automl.terminate();
}
