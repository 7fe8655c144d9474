//! Tracing setup: logs on stderr, human-readable ([`LogFormat::Text`]) or one JSON object per
//! line ([`LogFormat::Json`]), filtered by `RUST_LOG` or the configured filter. (SQL latency is
//! timed at each call, [`crate::db::Timed`], not from sqlx's statement events.)
//!
//! [`instrumented`] says whether servers add the per-RPC layer ([`crate::rpc::RpcLayer`]);
//! `telemetry.instrument = false` turns it off to measure its cost.
//!
//! A call's `rpc` span is a `tracing` span only where something consumes spans: an OTLP
//! exporter, a filter on span fields, or a subscriber other than the one [`init`] installs.
//! Otherwise the call's request id, service and method stay in its task-local
//! [`crate::request_id::Scope`], and both formatters here write them as the outermost
//! `rpc{…}` span of every line logged in the call: the same lines, without creating, entering
//! and closing a span on every call, logged or not ([`rpc_spans`]).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};
use crate::request_id::RpcName;

static INSTRUMENT: AtomicBool = AtomicBool::new(true);

/// Whether the installed subscriber writes the task-local RPC scope as the `rpc` span.
static SCOPE_LOGGED: AtomicBool = AtomicBool::new(false);

/// Whether servers started from now on wrap their calls in [`crate::rpc::RpcLayer`].
pub fn instrumented() -> bool {
    INSTRUMENT.load(Ordering::Relaxed)
}

/// Whether each call needs a `tracing` span of its own: true unless [`init`] installed its
/// subscriber with nothing that consumes spans (see the module docs).
pub fn rpc_spans() -> bool {
    !SCOPE_LOGGED.load(Ordering::Relaxed)
}

/// Installs the global subscriber and applies `telemetry.instrument`. Calling it twice is
/// harmless (the second subscriber is not installed), so tests and the binary share code paths.
pub fn init(config: &TelemetryConfig) {
    init_as(config, "automl");
}

/// [`init`] for a process that exports its spans (OTLP) as `service_name`.
///
/// One global filter decides what is recorded at all, which costs less per span and per poll
/// than a filter per layer.
pub fn init_as(config: &TelemetryConfig, service_name: &str) {
    INSTRUMENT.store(config.instrument, Ordering::Relaxed);
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|filter| !filter.trim().is_empty())
        .unwrap_or_else(|| config.log_filter.clone());
    // Static directives (the usual `info,automl=debug`) need no per-span bookkeeping: Targets.
    // Span-field directives need EnvFilter.
    let (filter, span_filter) = match directives.parse::<Targets>() {
        Ok(targets) => (targets.boxed(), false),
        Err(_) => (
            EnvFilter::try_new(&directives)
                .unwrap_or_else(|_| EnvFilter::new("info"))
                .boxed(),
            true,
        ),
    };
    let ansi = std::io::stderr().is_terminal();
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .fmt_fields(TextFields)
            .event_format(TextFormat)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .fmt_fields(JsonFields)
            .event_format(JsonFormat)
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry().with(filter).with(logs);
    // Without an exporter the stack has no layer for it at all: every span operation passes
    // through each layer of the stack.
    let otlp = if config.otlp_endpoint.is_empty() {
        None
    } else {
        let ca_file = std::path::Path::new(&config.otlp_ca_file);
        match crate::otlp::layer(&config.otlp_endpoint, Some(ca_file), service_name) {
            Ok(layer) => Some(layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO)),
            Err(err) => {
                eprintln!("automl: trace export is off: {err:#}");
                None
            }
        }
    };
    let exporting = otlp.is_some();
    let installed = match otlp {
        Some(otlp) => subscriber.with(otlp).try_init(),
        None => subscriber.try_init(),
    };
    if installed.is_ok() {
        SCOPE_LOGGED.store(!exporting && !span_filter, Ordering::Relaxed);
    }
}

/// `f` of the call's request id and RPC from the task-local scope, when the call keeps its
/// `rpc` span there instead of in `tracing`; `None` otherwise.
fn scope_span<T>(f: impl FnOnce(&str, &RpcName) -> T) -> Option<T> {
    crate::request_id::with_scope(|scope| scope.rpc.map(|rpc| f(&scope.id, rpc))).flatten()
}

/// `2026-12-02T11:34:33.123456Z  INFO rpc{request_id=… method=… service=…}:job{…}: target:
/// message key=value`: tracing-subscriber's full format, with the call's scope as its
/// outermost span ([`scope_span`]).
struct TextFormat;

/// ANSI styles, when the writer takes them.
const BOLD: &str = "\x1b[1m";
const DIMMED: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let ansi = writer.has_ansi_escapes();
        let style = |style: &'static str| if ansi { style } else { "" };
        let (bold, dimmed, reset) = (style(BOLD), style(DIMMED), style(RESET));
        let meta = event.metadata();
        write!(writer, "{dimmed}")?;
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
        let level = *meta.level();
        let colour = match level {
            tracing::Level::TRACE => "\x1b[35m",
            tracing::Level::DEBUG => "\x1b[34m",
            tracing::Level::INFO => "\x1b[32m",
            tracing::Level::WARN => "\x1b[33m",
            tracing::Level::ERROR => "\x1b[31m",
        };
        write!(writer, "{reset} {}{level:>5}{reset} ", style(colour))?;
        let mut seen = scope_span(|id, rpc| {
            write!(
                writer,
                "{bold}rpc{{{reset}request_id={id} method={} service={}{bold}}}{reset}{dimmed}:{reset}",
                rpc.method, rpc.service
            )
        })
        .transpose()?
        .is_some();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{bold}{}{reset}", span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{bold}{{{reset}{fields}{bold}}}{reset}")?;
                }
                write!(writer, "{dimmed}:{reset}")?;
                seen = true;
            }
        }
        if seen {
            writer.write_char(' ')?;
        }
        write!(writer, "{dimmed}{}:{reset} ", meta.target())?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Formats fields as `key=value` (strings and Display values as they are, others with
/// Debug), without the escape codes and the allocations of the default field formatter: span
/// fields are formatted once per RPC.
struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = TextVisitor {
            out: Staging::new(),
            first: true,
        };
        fields.record(&mut visitor);
        writer.write_str(visitor.out.as_str())
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut visitor = TextVisitor {
            out: Staging::new(),
            first: current.fields.is_empty(),
        };
        fields.record(&mut visitor);
        current.fields.push_str(visitor.out.as_str());
        Ok(())
    }
}

/// Text built on the stack and handed on in one piece (one allocation where the span's fields
/// are kept, instead of one per growth); longer text spills to the heap.
struct Staging {
    bytes: [u8; 256],
    len: usize,
    spill: String,
}

impl Staging {
    fn new() -> Self {
        Self {
            bytes: [0; 256],
            len: 0,
            spill: String::new(),
        }
    }

    fn as_str(&self) -> &str {
        if self.spill.is_empty() {
            // Only whole `str`s were copied in: always UTF-8.
            std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
        } else {
            &self.spill
        }
    }
}

impl std::fmt::Write for Staging {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        if self.spill.is_empty() && self.len + text.len() <= self.bytes.len() {
            self.bytes[self.len..self.len + text.len()].copy_from_slice(text.as_bytes());
            self.len += text.len();
            return Ok(());
        }
        if self.spill.is_empty() {
            let staged = std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default();
            self.spill.reserve(staged.len() + text.len());
            self.spill.push_str(staged);
        }
        self.spill.push_str(text);
        Ok(())
    }
}

struct TextVisitor {
    out: Staging,
    first: bool,
}

impl TextVisitor {
    fn separator(&mut self, field: &Field) {
        if !self.first {
            let _ = self.out.write_char(' ');
        }
        if field.name() != "message" {
            let _ = self.out.write_str(field.name());
            let _ = self.out.write_char('=');
        }
        self.first = false;
    }
}

impl Visit for TextVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.separator(field);
        let _ = self.out.write_str(value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let chain = crate::error::error_chain(value);
        self.record_str(field, &chain);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.separator(field);
        let _ = write!(self.out, "{value:?}");
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, the event's fields (`message`
/// among them), and `spans`, outermost first, each with its name and fields; the innermost
/// `request_id` is repeated at the top level so a log search needs no nesting.
struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let mut spans = String::new();
        let mut request_id = None;
        scope_span(|id, rpc| {
            spans.push_str("{\"name\":\"rpc\",\"request_id\":");
            push_json_string(&mut spans, id);
            spans.push_str(",\"method\":");
            push_json_string(&mut spans, &rpc.method);
            spans.push_str(",\"service\":");
            push_json_string(&mut spans, &rpc.service);
            spans.push('}');
            request_id = Some(id.to_string());
        });
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if !spans.is_empty() {
                    spans.push(',');
                }
                spans.push_str("{\"name\":");
                push_json_string(&mut spans, span.name());
                let extensions = span.extensions();
                if let Some(formatted) = extensions.get::<FormattedFields<N>>()
                    && !formatted.is_empty()
                {
                    spans.push(',');
                    spans.push_str(formatted.as_str());
                    if let Some(id) = find_request_id(formatted.as_str()) {
                        request_id = Some(id);
                    }
                }
                spans.push('}');
            }
        }
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        push_json_string(&mut line, &crate::time::now_iso());
        line.push_str(",\"level\":");
        push_json_string(&mut line, meta.level().as_str());
        line.push_str(",\"target\":");
        push_json_string(&mut line, meta.target());
        if let Some(id) = request_id {
            line.push_str(",\"request_id\":");
            push_json_string(&mut line, &id);
        }
        if !fields.out.is_empty() {
            line.push(',');
            line.push_str(&fields.out);
        }
        line.push_str(",\"spans\":[");
        line.push_str(&spans);
        line.push_str("]}");
        writeln!(writer, "{line}")
    }
}

/// The value of `"request_id":"…"` in a span's JSON fields.
fn find_request_id(fields: &str) -> Option<String> {
    let start = fields.find("\"request_id\":\"")? + "\"request_id\":\"".len();
    let rest = &fields[start..];
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// Formats span fields as JSON members (`"key":value,…`), for [`JsonFormat`].
struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = JsonVisitor::default();
        fields.record(&mut visitor);
        writer.write_str(&visitor.out)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut visitor = JsonVisitor::default();
        fields.record(&mut visitor);
        if visitor.out.is_empty() {
            return Ok(());
        }
        if !current.fields.is_empty() {
            current.fields.push(',');
        }
        current.fields.push_str(&visitor.out);
        Ok(())
    }
}

/// Collects fields as JSON members.
#[derive(Default)]
struct JsonVisitor {
    out: String,
}

impl JsonVisitor {
    fn key(&mut self, field: &Field) {
        if !self.out.is_empty() {
            self.out.push(',');
        }
        push_json_string(&mut self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            push_json_string(&mut self.out, &value.to_string());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_string(&mut self.out, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        push_json_string(&mut self.out, &crate::error::error_chain(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        push_json_string(&mut self.out, &format!("{value:?}"));
    }
}

/// Appends `value` as a JSON string literal.
fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_id::Scope;
    use std::sync::{Arc, Mutex};

    /// A writer collecting what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
        }
    }

    /// One event inside a `job` span inside a call whose RPC is kept in its scope, and one
    /// outside any call, logged through `subscriber`.
    fn log_in_scope(subscriber: impl Subscriber + Send + Sync + 'static) {
        let rpc: &'static RpcName = Box::leak(Box::new(RpcName {
            service: "training.TrainingService".into(),
            method: "Train".into(),
        }));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(crate::request_id::scoped(
                Scope {
                    id: "req-1".into(),
                    rpc: Some(rpc),
                },
                async {
                    let span = tracing::info_span!("job", job_id = 7);
                    span.in_scope(|| tracing::info!(dataset = "1", "job queued"));
                },
            ));
            tracing::info!("outside");
        });
    }

    #[test]
    fn text_lines_show_the_scope_as_the_outermost_span() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .fmt_fields(TextFields)
                .event_format(TextFormat),
        );
        log_in_scope(subscriber);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let (_, rest) = lines[0].split_once(' ').expect("timestamp");
        assert_eq!(
            rest,
            " INFO rpc{request_id=req-1 method=Train service=training.TrainingService}:\
             job{job_id=7}: automl_common::telemetry::tests: job queued dataset=1"
        );
        let (_, rest) = lines[1].split_once(' ').expect("timestamp");
        assert_eq!(rest, " INFO automl_common::telemetry::tests: outside");
    }

    #[test]
    fn json_lines_show_the_scope_as_the_outermost_span() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .fmt_fields(JsonFields)
                .event_format(JsonFormat),
        );
        log_in_scope(subscriber);
        let text = out.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("json"))
            .collect();
        assert_eq!(lines[0]["request_id"], "req-1");
        assert_eq!(lines[0]["message"], "job queued");
        assert_eq!(
            lines[0]["spans"],
            serde_json::json!([
                {"name": "rpc", "request_id": "req-1", "method": "Train",
                 "service": "training.TrainingService"},
                {"name": "job", "job_id": 7},
            ])
        );
        assert_eq!(lines[1]["spans"], serde_json::json!([]));
        assert!(lines[1].get("request_id").is_none());
    }

    #[test]
    fn staged_text_spills_to_the_heap_whole() {
        let mut staging = Staging::new();
        let long = "é".repeat(200);
        staging.write_str("start ").expect("write");
        staging.write_str(&long).expect("write");
        staging.write_str(" end").expect("write");
        assert_eq!(staging.as_str(), format!("start {long} end"));
        let mut short = Staging::new();
        write!(short, "a={} b={:?}", 1, "x").expect("write");
        assert_eq!(short.as_str(), "a=1 b=\"x\"");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn request_id_is_found_in_span_fields() {
        assert_eq!(
            find_request_id("\"request_id\":\"abc\",\"method\":\"Train\"").as_deref(),
            Some("abc")
        );
        assert_eq!(find_request_id("\"method\":\"Train\""), None);
    }
}
