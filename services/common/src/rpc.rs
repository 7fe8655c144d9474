//! The tower layer every automl server runs each call through: an `rpc` span carrying the
//! request id ([`crate::request_id`]) and the method, the id answered in the response headers,
//! and the per-RPC metrics ([`crate::metrics::RpcMetrics`]).
//!
//! The span is a `tracing` span where spans are consumed ([`crate::telemetry::rpc_spans`]);
//! otherwise it is the call's task-local [`Scope`], which the log formatters write as the same
//! `rpc{…}` span. When spans are exported ([`crate::otlp`]), the span continues the trace of the
//! caller's `traceparent` header.
//!
//! The status code is read from the response headers, where tonic puts it for a call that fails
//! before its first response message (every unary error); a stream that fails later counts as
//! OK here, its error is in its trailers.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::metrics::{Counter, Histogram, metrics};
use crate::request_id::{self, RpcName, Scope};

/// Adds the span, the request id and the metrics to every call of the wrapped routes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLayer;

/// How many distinct paths get their own series.
const MAX_PATHS: usize = 512;

/// The request counter and latency histogram of one path. Created once per path and never
/// freed (at most [`MAX_PATHS`] of them, plus one shared by the paths beyond), so a call holds
/// a plain reference: no reference count to touch.
#[derive(Debug)]
struct PathSeries {
    name: RpcName,
    requests: Counter,
    duration: Histogram,
}

/// The series of `path`. Each thread keeps the paths it has seen, so a call takes no lock and
/// writes no memory that other threads read; a path new to the thread looks in the process's
/// list, which creates it when new to the process.
fn series(path: &str) -> &'static PathSeries {
    thread_local! {
        static SEEN: RefCell<Vec<(Box<str>, &'static PathSeries)>> = const { RefCell::new(Vec::new()) };
    }
    SEEN.with(|seen| {
        if let Ok(seen) = seen.try_borrow()
            && let Some((_, found)) = seen.iter().find(|(key, _)| **key == *path)
        {
            return *found;
        }
        let found = shared_series(path);
        if let Ok(mut seen) = seen.try_borrow_mut()
            && seen.len() < MAX_PATHS
        {
            seen.push((path.into(), found));
        }
        found
    })
}

fn shared_series(path: &str) -> &'static PathSeries {
    static KNOWN: Mutex<Vec<(String, &'static PathSeries)>> = Mutex::new(Vec::new());
    static OTHER: OnceLock<&'static PathSeries> = OnceLock::new();
    let mut known = match KNOWN.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some((_, found)) = known.iter().find(|(key, _)| key == path) {
        return found;
    }
    // Unknown paths (scanners, typos) beyond the cap share one series instead of growing the
    // registry.
    if known.len() >= MAX_PATHS {
        return OTHER.get_or_init(|| create_series("other", "other"));
    }
    let (service, method) = split_path(path);
    let created = create_series(service, method);
    known.push((path.to_string(), created));
    created
}

fn create_series(service: &str, method: &str) -> &'static PathSeries {
    let rpc = &metrics().rpc;
    Box::leak(Box::new(PathSeries {
        requests: rpc.requests.with(&[service, method]),
        duration: rpc.duration.with(&[service, method]),
        name: RpcName {
            service: service.to_string(),
            method: method.to_string(),
        },
    }))
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`); anything else → (`unknown`, `unknown`).
fn split_path(path: &str) -> (&str, &str) {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .filter(|(service, method)| {
            !service.is_empty() && !method.is_empty() && !method.contains('/')
        })
        .unwrap_or(("unknown", "unknown"))
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner }
    }
}

/// The service [`RpcLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = request_id::Scoped<Instrumented<RpcFuture<S::Future>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let series = series(request.uri().path());
        series.requests.inc();
        let id = incoming_id(&request).unwrap_or_else(request_id::generate);
        // Sensitive: HPACK then sends the value as a literal never indexed. Every id is new,
        // so indexing would only churn both ends' header tables (searched on every header).
        let header = http::HeaderValue::from_str(&id).ok().map(|mut value| {
            value.set_sensitive(true);
            value
        });
        let (span, rpc) = if crate::otlp::exporting() {
            // Exported: named after the RPC, a child of the caller's trace context.
            let span = tracing::info_span!(
                "rpc",
                otel.name = request.uri().path(),
                otel.kind = "server",
                request_id = id.as_str(),
                method = series.name.method.as_str(),
                service = series.name.service.as_str(),
            );
            crate::otlp::set_parent_from_headers(&span, request.headers());
            (span, None)
        } else if crate::telemetry::rpc_spans() {
            let span = tracing::info_span!(
                "rpc",
                request_id = id.as_str(),
                method = series.name.method.as_str(),
                service = series.name.service.as_str(),
            );
            (span, None)
        } else {
            (tracing::Span::none(), Some(&series.name))
        };
        let call = RpcFuture {
            call: self.inner.call(request),
            series,
            header,
            start: Instant::now(),
        };
        request_id::scoped(Scope { id, rpc }, call.instrument(span))
    }
}

pin_project_lite::pin_project! {
    /// A call through [`RpcService`] (in its span and its request id's scope): the inner call,
    /// then its latency and status recorded and the id added to the response headers. (A named
    /// future rather than a boxed one: one allocation less per call.)
    pub struct RpcFuture<F> {
        #[pin]
        call: F,
        series: &'static PathSeries,
        header: Option<http::HeaderValue>,
        start: Instant,
    }
}

impl<F, R, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Poll::Ready(mut result) = this.call.poll(cx) else {
            return Poll::Pending;
        };
        this.series
            .duration
            .observe(this.start.elapsed().as_secs_f64());
        match &mut result {
            Ok(response) => {
                record_status(this.series, response.headers());
                if let Some(header) = this.header.take() {
                    response.headers_mut().insert(REQUEST_ID_HEADER, header);
                }
            }
            Err(_) => {
                metrics()
                    .rpc
                    .errors
                    .with(&[
                        &this.series.name.service,
                        &this.series.name.method,
                        code_name(tonic::Code::Unknown),
                    ])
                    .inc();
            }
        }
        Poll::Ready(result)
    }
}

/// The request id's header, parsed once.
const REQUEST_ID_HEADER: http::HeaderName = http::HeaderName::from_static(request_id::HEADER);
/// The status header of a trailers-only response, parsed once.
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn incoming_id<B>(request: &http::Request<B>) -> Option<String> {
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| request_id::is_valid(id))
        .map(str::to_string)
}

/// Counts a non-OK `grpc-status` in the headers, and logs it at debug level (in the call's
/// span).
fn record_status(series: &PathSeries, headers: &http::HeaderMap) {
    let Some(code) = headers
        .get(GRPC_STATUS)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
    else {
        return;
    };
    let code = tonic::Code::from_i32(code);
    if code == tonic::Code::Ok {
        return;
    }
    let name = code_name(code);
    metrics()
        .rpc
        .errors
        .with(&[&series.name.service, &series.name.method, name])
        .inc();
    tracing::debug!(code = name, "call failed");
}

/// The code's name as in the gRPC spec (`NOT_FOUND`), the label value of the error counter.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/metadata_store.MetadataStoreService/LogEpoch"),
            ("metadata_store.MetadataStoreService", "LogEpoch")
        );
        assert_eq!(split_path("/"), ("unknown", "unknown"));
        assert_eq!(split_path("/a/b/c"), ("unknown", "unknown"));
        assert_eq!(split_path("nope"), ("unknown", "unknown"));
    }
}
