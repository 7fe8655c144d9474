//! Trace export with OpenTelemetry: `tracing` spans become OpenTelemetry spans
//! (`tracing-opentelemetry`), batched by the SDK and sent to a collector over OTLP/HTTP
//! (protobuf, `POST <endpoint>/v1/traces`, `http://` or `https://` with `telemetry.otlp_ca_file`).
//! Off unless `telemetry.otlp_endpoint` is set.
//!
//! One request is one trace across processes through the W3C trace context: a server takes the
//! parent of its call's span from the `traceparent` header ([`set_parent_from_headers`]), every
//! outgoing call carries the current span's ([`inject`]), and a trainer gets the `Train` call's as
//! the `TRACEPARENT` environment variable ([`current_traceparent`], [`set_parent_from_env`]). A
//! trace id therefore comes from the caller's trace context or is new, never from the
//! `x-request-id` a client chose, which stays a log field and response header.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The environment variable carrying a trace context into a child process (the trainer).
pub const TRACEPARENT_ENV: &str = "TRACEPARENT";

/// The header (and metadata key) of the W3C trace context.
const TRACEPARENT: &str = "traceparent";

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The standard variable naming a child process's collector (the trainer's).
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The standard variable naming the CA file of a child process's `https://` collector.
pub const CERTIFICATE_ENV: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";

/// Export, once on: the provider, and where it sends (handed on to trainers).
struct Export {
    provider: SdkTracerProvider,
    endpoint: String,
    ca_file: String,
}

static EXPORT: OnceLock<Export> = OnceLock::new();

/// Whether this process exports spans.
pub fn exporting() -> bool {
    EXPORT.get().is_some()
}

/// The environment of a trainer whose job was submitted in the trace context `traceparent`
/// ([`current_traceparent`] then): the collector and that context, when exporting.
pub fn child_env(traceparent: &str) -> Vec<(String, String)> {
    let Some(export) = EXPORT.get() else {
        return Vec::new();
    };
    let mut env = vec![(ENDPOINT_ENV.to_string(), export.endpoint.clone())];
    if !export.ca_file.is_empty() {
        env.push((CERTIFICATE_ENV.to_string(), export.ca_file.clone()));
    }
    if !traceparent.is_empty() {
        env.push((TRACEPARENT_ENV.to_string(), traceparent.to_string()));
    }
    env
}

/// The runtime export requests run on: the caller's, or outside any (a program that sets up
/// logging before its runtime) one thread of its own.
fn runtime() -> anyhow::Result<tokio::runtime::Handle> {
    static OWN: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        return Ok(handle);
    }
    if OWN.get().is_none() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .context("a runtime for trace export")?;
        let _ = OWN.set(runtime);
    }
    OWN.get()
        .map(|runtime| runtime.handle().clone())
        .context("a runtime for trace export")
}

/// The exporter's HTTP client. The SDK's batch processor sends from a thread of its own, outside
/// any async runtime, so each request runs as a task on the runtime that installed the exporter.
#[derive(Debug, Clone)]
struct RuntimeClient {
    runtime: tokio::runtime::Handle,
    inner: HyperClient<crate::tls::HttpsConnector>,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await?
    }
}

/// The `tracing` layer exporting spans to `endpoint` as `service`, installed as the process's
/// provider, with the W3C trace context as the propagator.
pub fn layer<S>(
    endpoint: &str,
    ca_file: Option<&std::path::Path>,
    service: &str,
) -> anyhow::Result<impl Layer<S> + use<S>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let runtime = runtime()?;
    let connector = crate::tls::https_connector(ca_file)?;
    let client = RuntimeClient {
        runtime,
        inner: HyperClient::new(connector, EXPORT_TIMEOUT, None),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("the OTLP exporter for {endpoint}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    let tracer = provider.tracer("automl");
    let export = Export {
        provider,
        endpoint: endpoint.to_string(),
        ca_file: ca_file
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
    };
    if EXPORT.set(export).is_err() {
        anyhow::bail!("trace export is already set up in this process");
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false))
}

/// Sends the spans batched so far and waits for the collector (before a short-lived process
/// such as the trainer exits). Runs the wait off the async threads.
pub async fn flush() {
    if let Some(export) = EXPORT.get() {
        let provider = export.provider.clone();
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        if let Ok(Err(err)) = flushed {
            tracing::warn!(%err, "sending the last spans failed");
        }
    }
}

/// `traceparent` of the current span, when exporting: for a job whose trainer starts later.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Puts the current span's trace context on an outgoing request, when exporting.
pub fn inject<T>(request: &mut tonic::Request<T>) {
    if !exporting() {
        return;
    }
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut Metadata(request.metadata_mut()));
}

/// Makes the trace context of incoming `headers` (a `traceparent`) the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let context =
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    set_parent(span, context);
}

/// Makes the trace context in `TRACEPARENT` (a trainer's environment) the parent of `span`.
pub fn set_parent_from_env(span: &tracing::Span) {
    let Ok(traceparent) = std::env::var(TRACEPARENT_ENV) else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent)]);
    set_parent(span, TraceContextPropagator::new().extract(&carrier));
}

fn set_parent(span: &tracing::Span, context: opentelemetry::Context) {
    if context.span().span_context().is_valid() {
        // Fails only for a span that is not recorded (filtered out): nothing to join.
        let _ = span.set_parent(context);
    }
}

/// gRPC metadata as the propagator's carrier.
struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_through_metadata() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
        let context = TraceContextPropagator::new().extract(&carrier);
        assert!(context.span().span_context().is_valid());
        let mut request = tonic::Request::new(());
        TraceContextPropagator::new()
            .inject_context(&context, &mut Metadata(request.metadata_mut()));
        assert_eq!(
            request
                .metadata()
                .get(TRACEPARENT)
                .and_then(|v| v.to_str().ok()),
            Some(traceparent)
        );
    }
}
