//! Records per second of the CSV parser ([`automl_common::csv::Parser`]) against the same
//! parser reading every record through csv-core (its state machine, a byte at a time), on
//! generated TEXT_INTENT rows: bare, as users upload them, and quoted, as ingest writes them for
//! snapshots and the trainer. Alternating rounds; the load average before and after.
//!
//! Usage: `cargo bench -p automl-common --bench csv [-- --megabytes 200 --rounds 3]`

use std::time::Instant;

use automl_common::csv::{MAX_RECORD_BYTES, Parser, Record, push_row};

/// ~`megabytes` MB of `utterance,label` rows over 150 labels (the ingest bench's rows).
fn bare_rows(megabytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(megabytes << 20);
    let mut row = 0usize;
    while out.len() < megabytes << 20 {
        row += 1;
        out.extend_from_slice(
            format!(
                "could you please tell me about item {row} and if possible the next one,intent_{}\n",
                row % 150
            )
            .as_bytes(),
        );
    }
    out
}

/// The same rows as ingest normalizes them: both fields quoted, the label an id.
fn quoted_rows(bare: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bare.len() + bare.len() / 8);
    let mut parser = Parser::new(MAX_RECORD_BYTES);
    let mut rest = bare;
    while let Some(Record::Fields { fields, .. }) = parser.next_in(&mut rest) {
        let utterance = std::str::from_utf8(fields.get(0).unwrap_or_default()).unwrap_or("");
        push_row(&mut out, &[utterance, "17"]);
    }
    out
}

/// Reads `input` whole; returns the records and the seconds taken.
fn read(parser: Parser, input: &[u8]) -> (usize, f64) {
    let mut parser = parser;
    let mut rest = input;
    // (`next_in` over the whole input; the services read the same records in reads of a few
    // hundred KiB, where a record split between two reads goes through csv-core.)
    let mut records = 0;
    let started = Instant::now();
    while let Some(record) = parser.next_in(&mut rest) {
        if let Record::Fields { fields, .. } = record {
            records += usize::from(!fields.is_empty());
        }
    }
    (records, started.elapsed().as_secs_f64())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let mut megabytes = 200;
    let mut rounds = 3;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse::<usize>().ok());
        match arg.as_str() {
            "--megabytes" => megabytes = value.unwrap_or(megabytes),
            "--rounds" => rounds = value.unwrap_or(rounds).max(1),
            _ => {}
        }
    }
    let bare = bare_rows(megabytes);
    let quoted = quoted_rows(&bare);
    println!("load average before: {}", load_average());
    for (name, input) in [("bare", &bare), ("quoted", &quoted)] {
        let (mut direct, mut csv_core) = (0.0, 0.0);
        let mut counts = (0, 0);
        for round in 0..rounds {
            // Alternate which goes first.
            for first in [round % 2 == 0, round % 2 != 0] {
                if first {
                    let (records, seconds) = read(Parser::new(MAX_RECORD_BYTES), input);
                    counts.0 = records;
                    direct += seconds;
                } else {
                    let parser = Parser::new(MAX_RECORD_BYTES).csv_core_only();
                    let (records, seconds) = read(parser, input);
                    counts.1 = records;
                    csv_core += seconds;
                }
            }
        }
        assert_eq!(counts.0, counts.1, "both read the same records");
        let rate = |seconds: f64| input.len() as f64 * rounds as f64 / seconds / 1_048_576.0;
        println!(
            "{name:>6} rows ({:.0} MiB, {} records): parser {:.0} MiB/s, csv-core alone {:.0} MiB/s (ratio {:.2})",
            input.len() as f64 / 1_048_576.0,
            counts.0,
            rate(direct),
            rate(csv_core),
            csv_core / direct,
        );
    }
    println!("load average after: {}", load_average());
}
