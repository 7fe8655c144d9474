//! Tracing setup: logs on stderr, human-readable ([`LogFormat::Text`]) or one JSON object per
//! line ([`LogFormat::Json`]), filtered by `RUST_LOG` or the configured filter; plus a layer that
//! turns sqlx's per-statement events into the SQL latency histogram, whatever the log filter.
//!
//! [`instrumented`] says whether servers add the per-RPC layer ([`crate::rpc::RpcLayer`]);
//! `telemetry.instrument = false` turns it off to measure its cost.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};
use crate::metrics::metrics;

static INSTRUMENT: AtomicBool = AtomicBool::new(true);

/// Whether servers started from now on wrap their calls in [`crate::rpc::RpcLayer`].
pub fn instrumented() -> bool {
    INSTRUMENT.load(Ordering::Relaxed)
}

/// Installs the global subscriber and applies `telemetry.instrument`. Calling it twice is
/// harmless (the second subscriber is not installed), so tests and the binary share code paths.
pub fn init(config: &TelemetryConfig) {
    init_as(config, "automl");
}

/// [`init`] for a process that exports its spans (OTLP) as `service_name`.
pub fn init_as(config: &TelemetryConfig, service_name: &str) {
    INSTRUMENT.store(config.instrument, Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .fmt_fields(JsonFields)
            .event_format(JsonFormat)
            .with_filter(filter)
            .boxed(),
    };
    let sql = config
        .instrument
        .then(|| SqlMetrics.with_filter(Targets::new().with_target("sqlx::query", Level::DEBUG)));
    let otlp = (!config.otlp_endpoint.is_empty())
        .then(|| crate::otlp::OtlpLayer::start(&config.otlp_endpoint, service_name))
        .flatten()
        .map(|layer| layer.with_filter(tracing_subscriber::filter::LevelFilter::INFO));
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(sql)
        .with(otlp)
        .try_init();
}

/// Records `elapsed_secs` of every `sqlx::query` event into
/// `automl_sql_query_duration_seconds{statement}`.
struct SqlMetrics;

impl<S: Subscriber> Layer<S> for SqlMetrics {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = SqlVisitor::default();
        event.record(&mut visitor);
        if let Some(seconds) = visitor.elapsed {
            metrics()
                .storage
                .sql_duration
                .with(&[statement_verb(&visitor.summary)])
                .observe(seconds);
        }
    }
}

#[derive(Default)]
struct SqlVisitor {
    summary: String,
    elapsed: Option<f64>,
}

impl Visit for SqlVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed = Some(value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "summary" {
            self.summary = value.chars().take(16).collect();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.summary = format!("{value:?}").chars().take(16).collect();
        }
    }
}

/// The statement's verb as a bounded label value.
fn statement_verb(summary: &str) -> &'static str {
    let word = summary
        .trim_start_matches('"')
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match word.as_str() {
        "select" | "with" => "select",
        "insert" => "insert",
        "update" => "update",
        "delete" => "delete",
        "begin" | "commit" | "rollback" | "savepoint" | "release" => "transaction",
        _ => "other",
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

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn statement_verbs_are_bounded() {
        assert_eq!(statement_verb("SELECT id FROM runs"), "select");
        assert_eq!(statement_verb("insert into runs …"), "insert");
        assert_eq!(statement_verb("BEGIN"), "transaction");
        assert_eq!(statement_verb("PRAGMA foo"), "other");
        assert_eq!(statement_verb(""), "other");
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
