//! Optional trace export: spans (each RPC's `rpc` span and what runs inside it) sent to an
//! OpenTelemetry collector with OTLP/HTTP in its JSON encoding (`POST <endpoint>/v1/traces`).
//! Off unless `telemetry.otlp_endpoint` is set.
//!
//! The trace id of a span without a parent is derived from its `request_id` field, so the spans
//! of one request in every service (and the trainer's calls, which carry the same id) form one
//! trace; spans inside it inherit the trace id and name their parent.
//!
//! Export never blocks a call: spans go through a bounded queue and are dropped when the
//! collector falls behind; a batch is sent every second or every 512 spans.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Spans waiting for export before new ones are dropped.
const QUEUE: usize = 8192;
/// Spans per request to the collector.
const BATCH: usize = 512;

/// One finished span.
#[derive(Debug, Clone)]
struct Finished {
    trace_id: u128,
    span_id: u64,
    parent: Option<u64>,
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<(String, String)>,
}

/// What a live span carries until it closes.
#[derive(Debug)]
struct Live {
    trace_id: Option<u128>,
    span_id: u64,
    parent: Option<u64>,
    start: SystemTime,
    attributes: Vec<(String, String)>,
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
}

fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish().max(1)
}

/// The trace id of a request id: the same in every process (SHA-256, first 16 bytes).
pub fn trace_id_of(request_id: &str) -> u128 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(request_id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes)
}

/// The tracing layer collecting spans for export.
pub struct OtlpLayer {
    queue: mpsc::Sender<Finished>,
}

impl OtlpLayer {
    /// A layer exporting to `endpoint` (`http://host:port`), with its exporter task started on
    /// the current tokio runtime; `None` outside a runtime or for a URL it cannot use.
    /// Give it a level filter (INFO: the spans a log at INFO shows).
    pub fn start(endpoint: &str, service: &str) -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let target = Target::parse(endpoint)?;
        let (queue, receiver) = mpsc::channel(QUEUE);
        handle.spawn(export(target, service.to_string(), receiver));
        Some(Self { queue })
    }
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut attributes = Vec::new();
        attrs.record(&mut Fields(&mut attributes));
        let parent = span.parent().and_then(|parent| {
            parent
                .extensions()
                .get::<Live>()
                .map(|live| (live.trace_id, live.span_id))
        });
        let trace_id = match parent {
            Some((Some(trace_id), _)) => Some(trace_id),
            _ => attributes
                .iter()
                .find(|(k, _)| k == "request_id")
                .map(|(_, v)| trace_id_of(v)),
        };
        span.extensions_mut().insert(Live {
            trace_id,
            span_id: random_u64(),
            parent: parent.map(|(_, span_id)| span_id),
            start: SystemTime::now(),
            attributes,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(live) = extensions.get_mut::<Live>() {
            let mut fields = Vec::new();
            values.record(&mut Fields(&mut fields));
            if live.trace_id.is_none()
                && let Some((_, request_id)) = fields.iter().find(|(k, _)| k == "request_id")
            {
                live.trace_id = Some(trace_id_of(request_id));
            }
            live.attributes.extend(fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let name = span.name();
        let Some(live) = span.extensions_mut().remove::<Live>() else {
            return;
        };
        let finished = Finished {
            trace_id: live
                .trace_id
                .unwrap_or_else(|| u128::from(random_u64()) << 64 | u128::from(random_u64())),
            span_id: live.span_id,
            parent: live.parent,
            name,
            start: live.start,
            end: SystemTime::now(),
            attributes: live.attributes,
        };
        // A full queue drops the span: export must never slow a call down.
        let _ = self.queue.try_send(finished);
    }
}

/// Where the collector listens.
#[derive(Debug, Clone)]
struct Target {
    authority: String,
    path: String,
}

impl Target {
    fn parse(endpoint: &str) -> Option<Self> {
        let rest = endpoint.strip_prefix("http://")?;
        let (authority, base) = rest.split_once('/').unwrap_or((rest, ""));
        let base = base.trim_end_matches('/');
        let path = if base.is_empty() {
            "/v1/traces".to_string()
        } else {
            format!("/{base}/v1/traces")
        };
        (!authority.is_empty()).then(|| Self {
            authority: authority.to_string(),
            path,
        })
    }
}

fn nanos(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
        .to_string()
}

/// The OTLP/JSON body of a batch.
fn body(service: &str, spans: &[Finished]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let mut value = json!({
                "traceId": format!("{:032x}", span.trace_id),
                "spanId": format!("{:016x}", span.span_id),
                "name": span.name,
                // SPAN_KIND_SERVER for a received call, SPAN_KIND_INTERNAL for work inside it.
                "kind": if span.name == "rpc" { 2 } else { 1 },
                "startTimeUnixNano": nanos(span.start),
                "endTimeUnixNano": nanos(span.end),
                "attributes": span.attributes.iter().map(|(key, value)| json!({
                    "key": key,
                    "value": {"stringValue": value},
                })).collect::<Vec<_>>(),
            });
            if let Some(parent) = span.parent {
                value["parentSpanId"] = json!(format!("{parent:016x}"));
            }
            value
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service}},
            ]},
            "scopeSpans": [{"scope": {"name": "automl"}, "spans": spans}],
        }]
    })
}

async fn export(target: Target, service: String, mut receiver: mpsc::Receiver<Finished>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let deadline = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                received = receiver.recv() => match received {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            break;
                        }
                    }
                    None => {
                        if !batch.is_empty() {
                            let _ = post(&target, &body(&service, &batch)).await;
                        }
                        return;
                    }
                },
                () = &mut deadline => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(err) = post(&target, &body(&service, &batch)).await {
            // Not through tracing: that would feed this exporter with its own failures.
            eprintln!("automl: trace export to {} failed: {err}", target.authority);
        }
        batch.clear();
    }
}

/// One HTTP/1.1 POST; an error unless the collector answers 2xx.
async fn post(target: &Target, body: &Value) -> std::io::Result<()> {
    let payload = serde_json::to_vec(body).map_err(std::io::Error::other)?;
    let connect = tokio::net::TcpStream::connect(&target.authority);
    let mut stream = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority,
        payload.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&payload).await?;
    let mut status = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut status))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    if status.starts_with(b"HTTP/1.1 2") || status.starts_with(b"HTTP/1.0 2") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "collector answered {}",
            String::from_utf8_lossy(&status)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_trace_ids() {
        let target = Target::parse("http://collector:4318").expect("target");
        assert_eq!(target.authority, "collector:4318");
        assert_eq!(target.path, "/v1/traces");
        let target = Target::parse("http://c:4318/otlp/").expect("target");
        assert_eq!(target.path, "/otlp/v1/traces");
        assert!(Target::parse("https://c:4318").is_none());
        assert_eq!(trace_id_of("abc"), trace_id_of("abc"));
        assert_ne!(trace_id_of("abc"), trace_id_of("abd"));
    }

    #[test]
    fn the_body_is_otlp_json() {
        let now = SystemTime::now();
        let body = body(
            "automl",
            &[Finished {
                trace_id: 1,
                span_id: 2,
                parent: Some(3),
                name: "rpc",
                start: now,
                end: now,
                attributes: vec![("request_id".into(), "x".into())],
            }],
        );
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], format!("{:032x}", 1));
        assert_eq!(span["parentSpanId"], "0000000000000003");
        assert_eq!(span["attributes"][0]["value"]["stringValue"], "x");
    }
}
