//! Streaming CSV: a record reader over any async byte stream that never holds more than one
//! (bounded) record in memory, and the quoting of the normalized files.
//!
//! The reader follows RFC 4180 (fields separated by `,`, optionally quoted with `"`, `""` for a
//! quote inside quotes, `\n` or `\r\n` line ends, quoted fields may span lines) and is lenient
//! about a stray `"` inside an unquoted field. Blank lines are skipped.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One record, or why it could not be read. Line numbers are 1-based and name the line the
/// record starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The fields, as bytes (not yet checked for UTF-8).
    Fields {
        /// First line of the record.
        line: u64,
        /// Its fields.
        fields: Vec<Vec<u8>>,
    },
    /// Longer than the limit; its content was skipped.
    TooLong {
        /// First line of the record.
        line: u64,
    },
    /// A quoted field was still open at the end of the input.
    UnclosedQuote {
        /// First line of the record.
        line: u64,
    },
}

/// Reads records from `input`, each at most `max_record_bytes` long.
pub struct RecordReader<R> {
    input: R,
    max_record_bytes: usize,
    line: u64,
    /// Total bytes consumed, for progress reports.
    consumed: u64,
    done: bool,
}

#[derive(Default)]
struct Partial {
    fields: Vec<Vec<u8>>,
    field: Vec<u8>,
    in_quotes: bool,
    quote_pending: bool,
    field_was_quoted: bool,
    len: usize,
    too_long: bool,
    start_line: u64,
    started: bool,
}

impl<R: AsyncBufRead + Unpin> RecordReader<R> {
    /// A reader of `input`.
    pub fn new(input: R, max_record_bytes: usize) -> Self {
        Self {
            input,
            max_record_bytes,
            line: 1,
            consumed: 0,
            done: false,
        }
    }

    /// Bytes read so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The next record, `None` at the end of the input.
    pub async fn next(&mut self) -> std::io::Result<Option<Record>> {
        loop {
            match self.next_raw().await? {
                Some(Record::Fields { fields, .. }) if is_blank(&fields) => continue,
                other => return Ok(other),
            }
        }
    }

    async fn next_raw(&mut self) -> std::io::Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let mut partial = Partial {
            start_line: self.line,
            ..Partial::default()
        };
        loop {
            let buffer = self.input.fill_buf().await?;
            if buffer.is_empty() {
                self.done = true;
                if !partial.started {
                    return Ok(None);
                }
                return Ok(Some(self.finish(partial, true)));
            }
            let mut used = 0;
            let mut finished = false;
            let mut line = self.line;
            for &byte in buffer {
                used += 1;
                partial.started = true;
                if push(&mut partial, byte, &mut line, self.max_record_bytes) {
                    finished = true;
                    break;
                }
            }
            self.line = line;
            self.input.consume(used);
            self.consumed += used as u64;
            if finished {
                return Ok(Some(self.finish(partial, false)));
            }
        }
    }

    fn finish(&self, mut partial: Partial, at_eof: bool) -> Record {
        let line = partial.start_line;
        if partial.too_long {
            return Record::TooLong { line };
        }
        if partial.in_quotes && !partial.quote_pending {
            return Record::UnclosedQuote { line };
        }
        if at_eof {
            end_field(&mut partial);
        }
        Record::Fields {
            line,
            fields: partial.fields,
        }
    }
}

/// Feeds one byte; true when it ended the record.
fn push(partial: &mut Partial, byte: u8, line: &mut u64, max: usize) -> bool {
    if partial.in_quotes {
        if partial.quote_pending {
            partial.quote_pending = false;
            if byte == b'"' {
                store(partial, max, b'"');
                return false;
            }
            partial.in_quotes = false;
            // Fall through: the byte after a closing quote is read unquoted.
        } else {
            match byte {
                b'"' => partial.quote_pending = true,
                b'\n' => {
                    *line += 1;
                    store(partial, max, byte);
                }
                _ => store(partial, max, byte),
            }
            return false;
        }
    }
    match byte {
        b',' => {
            end_field(partial);
            false
        }
        b'\n' => {
            *line += 1;
            end_field(partial);
            true
        }
        b'"' if partial.field.is_empty() && !partial.field_was_quoted => {
            partial.in_quotes = true;
            partial.field_was_quoted = true;
            false
        }
        _ => {
            store(partial, max, byte);
            false
        }
    }
}

/// Appends a byte to the field, unless the record is over the limit.
fn store(partial: &mut Partial, max: usize, byte: u8) {
    partial.len += 1;
    if partial.len > max {
        partial.too_long = true;
        return;
    }
    partial.field.push(byte);
}

fn end_field(partial: &mut Partial) {
    let mut field = std::mem::take(&mut partial.field);
    if !partial.field_was_quoted && field.last() == Some(&b'\r') {
        field.pop();
    }
    partial.fields.push(field);
    partial.field_was_quoted = false;
    partial.in_quotes = false;
    partial.quote_pending = false;
}

fn is_blank(fields: &[Vec<u8>]) -> bool {
    fields.len() == 1 && fields[0].iter().all(u8::is_ascii_whitespace)
}

/// Appends `field` double-quoted, with `"` doubled, to `out`.
pub fn push_quoted(out: &mut Vec<u8>, field: &str) {
    out.push(b'"');
    for byte in field.bytes() {
        if byte == b'"' {
            out.push(b'"');
        }
        out.push(byte);
    }
    out.push(b'"');
}

/// One normalized row: every field quoted, joined by `,`, ended by `\n`.
pub fn push_row(out: &mut Vec<u8>, fields: &[&str]) {
    for (index, field) in fields.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        push_quoted(out, field);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn records(input: &str, max: usize) -> Vec<Record> {
        let mut reader = RecordReader::new(input.as_bytes(), max);
        let mut out = Vec::new();
        while let Some(record) = reader.next().await.expect("read") {
            out.push(record);
        }
        out
    }

    fn fields(line: u64, values: &[&str]) -> Record {
        Record::Fields {
            line,
            fields: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
        }
    }

    #[tokio::test]
    async fn plain_and_quoted_fields() {
        let got = records("a,b\n\"c, d\",e\r\n\"say \"\"hi\"\"\",f", 100).await;
        assert_eq!(
            got,
            vec![
                fields(1, &["a", "b"]),
                fields(2, &["c, d", "e"]),
                fields(3, &["say \"hi\"", "f"]),
            ]
        );
    }

    #[tokio::test]
    async fn blank_lines_are_skipped_and_lines_counted() {
        let got = records("\na,b\n\n\nc,d\n", 100).await;
        assert_eq!(got, vec![fields(2, &["a", "b"]), fields(5, &["c", "d"])]);
    }

    #[tokio::test]
    async fn quoted_newlines_span_lines() {
        let got = records("\"a\nb\",c\nd,e\n", 100).await;
        assert_eq!(got, vec![fields(1, &["a\nb", "c"]), fields(3, &["d", "e"])]);
    }

    #[tokio::test]
    async fn long_records_and_open_quotes_are_reported() {
        let long = format!("{},x\nok,y\n\"open,z", "a".repeat(50));
        let got = records(&long, 10).await;
        assert_eq!(
            got,
            vec![
                Record::TooLong { line: 1 },
                fields(2, &["ok", "y"]),
                Record::UnclosedQuote { line: 3 },
            ]
        );
    }

    #[tokio::test]
    async fn one_column_and_stray_quotes() {
        let got = records("header\nit's 5\" tall,x\n", 100).await;
        assert_eq!(
            got,
            vec![fields(1, &["header"]), fields(2, &["it's 5\" tall", "x"])]
        );
    }

    #[test]
    fn quoting_round_trips() {
        let mut out = Vec::new();
        push_row(&mut out, &["say \"hi\", ok", "3;4"]);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "\"say \"\"hi\"\", ok\",\"3;4\"\n"
        );
    }
}
