//! The pages, one module per family, and what they share.

pub mod datasets;
pub mod experiments;
pub mod jobs;
pub mod layout;
pub mod models;
pub mod runs;

use std::collections::BTreeMap;

use axum::response::Redirect;
use maud::{Markup, PreEscaped, html};

/// GET /: the runs table is the front page.
pub async fn home() -> Redirect {
    Redirect::to("/runs")
}

/// `k=v` pairs, sorted, as small tags.
pub fn parameters<'a>(params: impl IntoIterator<Item = (&'a String, &'a String)>) -> Markup {
    let sorted: BTreeMap<_, _> = params.into_iter().collect();
    html! {
        @for (key, value) in sorted {
            span.param { (key) "=" (value) } " "
        }
    }
}

/// Data for the page's script, safe inside `<script type="application/json">`.
pub fn script_json(value: &serde_json::Value) -> PreEscaped<String> {
    PreEscaped(value.to_string().replace('<', "\\u003c"))
}

/// A metric value as people read it: 4 significant digits.
pub fn number(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    if !(-4..6).contains(&magnitude) {
        return format!("{value:.3e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    format!("{value:.decimals$}")
}

/// Seconds between two RFC 3339 times, when both parse.
pub fn seconds_between(start: &str, end: &str) -> Option<f64> {
    let start = chrono::DateTime::parse_from_rfc3339(start).ok()?;
    let end = chrono::DateTime::parse_from_rfc3339(end).ok()?;
    Some((end - start).num_milliseconds() as f64 / 1000.0)
}

/// `1h 02m`, `3m 05s`, `4.2 s`.
pub fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds as u64;
    if whole < 3600 {
        format!("{}m {:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h {:02}m", whole / 3600, (whole % 3600) / 60)
    }
}

/// A time without its fractional seconds.
pub fn time(rfc3339: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => rfc3339.to_string(),
    }
}

/// Previous/next links for a table page.
pub fn pager(base: &str, page: u32, page_size: u32, total: i32) -> Markup {
    let pages = (total.max(0) as u32).div_ceil(page_size).max(1);
    let sep = if base.contains('?') { '&' } else { '?' };
    html! {
        nav.pager {
            @if page > 0 { a rel="prev" href={(base) (sep) "page=" (page - 1)} { "← previous" } }
            span { "page " (page + 1) " of " (pages) " · " (total) " in all" }
            @if page + 1 < pages { a rel="next" href={(base) (sep) "page=" (page + 1)} { "next →" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(number(0.868421), "0.8684");
        assert_eq!(number(12.34567), "12.35");
        assert_eq!(number(1234.6), "1235");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.00001234), "1.234e-5");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(4.25), "4.2 s");
        assert_eq!(duration(185.0), "3m 05s");
        assert_eq!(duration(3720.0), "1h 02m");
        assert_eq!(
            seconds_between("2026-01-01T00:00:00Z", "2026-01-01T00:01:30.500Z"),
            Some(90.5)
        );
    }
}
