//! CSV records with line numbers and a bounded size, read with `csv-core`'s push parser from
//! bytes that arrive in chunks: data-management's ingest and snapshots stream objects through
//! [`RecordReader`], the trainer reads a snapshot file in memory through [`Parser::next_in`].
//! Also the quoting of the normalized files ([`push_row`]).
//!
//! The dialect is RFC 4180 as `csv-core` reads it: fields separated by `,`, optionally quoted
//! with `"` (`""` is a quote inside quotes, and quoted fields may span lines), records ended by
//! `\n` or `\r\n`; a stray `"` inside an unquoted field is data, a UTF-8 byte-order mark at the
//! start is dropped, and blank lines are skipped. Nothing is allocated per record: the fields
//! are slices of one buffer the parser reuses, which grows up to the record limit and no more.
//!
//! Most records are one line whose fields are either bare or wholly quoted with no `"` inside;
//! such a line is split with `memchr` instead of going through csv-core's state machine a byte
//! at a time, with the same result (the tests compare the two on generated input). Anything
//! else (a quote inside a field, a quoted line end, a record split between two reads, the
//! first record with its possible byte-order mark) is csv-core's.

use csv_core::{ReadRecordResult, ReaderBuilder, Terminator};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest record accepted (bytes of field data), by ingest and by the readers of what it wrote.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Field bytes and field ends the parser starts with; both grow on demand up to the limit.
const INITIAL_RECORD_BYTES: usize = 1024;
const INITIAL_FIELDS: usize = 8;

/// One record, or why it could not be read. Line numbers are 1-based and name the line the
/// record starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'r> {
    /// The fields, as bytes (not yet checked for UTF-8).
    Fields {
        /// First line of the record.
        line: u64,
        /// Its fields, borrowed from the parser until the next record is read.
        fields: Fields<'r>,
    },
    /// More than the limit of field bytes (or more fields than that); its content was skipped.
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

impl Record<'_> {
    /// The line the record starts on.
    pub fn line(&self) -> u64 {
        match self {
            Record::Fields { line, .. }
            | Record::TooLong { line }
            | Record::UnclosedQuote { line } => *line,
        }
    }
}

/// The fields of one record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fields<'r> {
    /// Every field's bytes, one after the other.
    data: &'r [u8],
    /// Where each field ends in `data`.
    ends: &'r [usize],
}

impl<'r> Fields<'r> {
    /// How many fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none (never, for a record a parser returns).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `index`, unquoted.
    pub fn get(&self, index: usize) -> Option<&'r [u8]> {
        let end = *self.ends.get(index)?;
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1],
        };
        Some(&self.data[start..end])
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = &'r [u8]> + use<'r> {
        let data = self.data;
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(move |(start, end)| &data[start..end])
    }
}

impl std::fmt::Debug for Fields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// What one step of the parser produced; the record itself stays in the parser's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Fields,
    TooLong,
    UnclosedQuote,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between records: blank lines are skipped here, so the next byte starts a record.
    Start,
    /// Inside a record that fits so far.
    InRecord,
    /// Inside a record over the limit: its bytes are parsed and dropped.
    Skipping,
    /// The input ended.
    Done,
}

/// The CSV parser without I/O: fed bytes, it hands out one record at a time.
pub struct Parser {
    csv: csv_core::Reader,
    /// The current record's field bytes (`filled` of them).
    record: Vec<u8>,
    filled: usize,
    /// Where its fields end in `record` (`fields` of them).
    ends: Vec<usize>,
    fields: usize,
    max_record_bytes: usize,
    /// The line the current record starts on.
    line: u64,
    state: State,
    /// Whether csv-core has read a record yet (it drops a byte-order mark at its first one).
    csv_started: bool,
    /// Whether simple lines skip csv-core (always, but for the tests that compare the two).
    split_simple_lines: bool,
}

impl Parser {
    /// A parser of records of at most `max_record_bytes` bytes of field data.
    pub fn new(max_record_bytes: usize) -> Self {
        Self {
            csv: ReaderBuilder::new()
                .terminator(Terminator::Any(b'\n'))
                .build(),
            record: vec![0; INITIAL_RECORD_BYTES.min(max_record_bytes + 2)],
            filled: 0,
            ends: vec![0; INITIAL_FIELDS],
            fields: 0,
            max_record_bytes,
            line: 1,
            state: State::Start,
            csv_started: false,
            split_simple_lines: true,
        }
    }

    /// The same parser reading every record through csv-core, as it did before simple lines
    /// were split directly: the baseline of `cargo bench -p automl-common --bench csv`.
    #[doc(hidden)]
    pub fn csv_core_only(mut self) -> Self {
        self.split_simple_lines = false;
        self
    }

    /// The next record of an input held in memory, advancing `input` past it; `None` at the
    /// end. Blank records (one field of white space) are skipped.
    pub fn next_in(&mut self, input: &mut &[u8]) -> Option<Record<'_>> {
        let outcome = loop {
            let (used, outcome) = self.step(input);
            *input = &input[used..];
            match outcome {
                Some(outcome) if !self.is_blank(outcome) => break outcome,
                _ => {}
            }
        };
        self.view(outcome)
    }

    /// Feeds `input` (empty: the input has ended); returns how many bytes were used, and what
    /// was read once a record is complete. Empty input always completes something.
    fn step(&mut self, input: &[u8]) -> (usize, Option<Outcome>) {
        match self.state {
            State::Done => (0, Some(Outcome::End)),
            State::Start => {
                // csv-core skips blank lines itself, but then the record's first line is lost.
                let blank = input.iter().take_while(|&&byte| byte == b'\n').count();
                self.csv.set_line(self.csv.line() + blank as u64);
                if blank == input.len() {
                    if input.is_empty() {
                        self.state = State::Done;
                        return (0, Some(Outcome::End));
                    }
                    return (blank, None);
                }
                self.line = self.csv.line();
                if let Some(used) = self.simple_line(&input[blank..]) {
                    self.csv.set_line(self.line + 1);
                    return (blank + used, Some(self.complete()));
                }
                self.filled = 0;
                self.fields = 0;
                self.state = State::InRecord;
                let (used, outcome) = self.parse(&input[blank..]);
                (blank + used, outcome)
            }
            State::InRecord | State::Skipping if input.is_empty() => (0, Some(self.finish())),
            State::InRecord | State::Skipping => self.parse(input),
        }
    }

    /// Ends the last record at the end of the input. csv-core would return a record whose
    /// quoted field never closed as if it had; a line end tells the two apart, since it only
    /// ends a record outside quotes.
    fn finish(&mut self) -> Outcome {
        let (_, outcome) = self.parse(b"\n");
        let skipping = self.state == State::Skipping;
        self.state = State::Done;
        match outcome {
            Some(outcome) => outcome,
            None if skipping => Outcome::TooLong,
            None => Outcome::UnclosedQuote,
        }
    }

    /// Reads a record that is one whole line of `input` with only bare fields (no `"`) and
    /// fields quoted from start to end with no `"` inside, as csv-core would; the bytes used,
    /// or `None` (with the buffers' content undefined, and the record's counts untouched) when
    /// csv-core must read it.
    fn simple_line(&mut self, input: &[u8]) -> Option<usize> {
        if !self.split_simple_lines || !self.csv_started {
            return None;
        }
        let end = memchr::memchr(b'\n', input)?;
        let mut rest = &input[..end];
        // Well inside the limit, so the record is never too long and the buffers can grow.
        if rest.len() > self.max_record_bytes / 2 {
            return None;
        }
        if self.record.len() < rest.len() {
            self.record.resize(rest.len(), 0);
        }
        let (mut filled, mut fields) = (0, 0);
        loop {
            let (field, next) = if let Some(quoted) = rest.strip_prefix(b"\"") {
                let close = memchr::memchr(b'"', quoted)?;
                match quoted.get(close + 1) {
                    None => (&quoted[..close], None),
                    Some(b',') => (&quoted[..close], Some(&quoted[close + 2..])),
                    Some(_) => return None,
                }
            } else {
                match memchr::memchr2(b',', b'"', rest) {
                    None => (rest, None),
                    Some(at) if rest[at] == b',' => (&rest[..at], Some(&rest[at + 1..])),
                    Some(_) => return None,
                }
            };
            self.record[filled..filled + field.len()].copy_from_slice(field);
            filled += field.len();
            if fields == self.ends.len() {
                self.ends.resize(self.ends.len() * 2, 0);
            }
            self.ends[fields] = filled;
            fields += 1;
            if let Some(next) = next {
                rest = next;
                continue;
            }
            self.filled = filled;
            self.fields = fields;
            return Some(end + 1);
        }
    }

    /// Parses within a record until it ends or `input` does.
    fn parse(&mut self, input: &[u8]) -> (usize, Option<Outcome>) {
        self.csv_started = true;
        let mut used = 0;
        loop {
            let skipping = self.state == State::Skipping;
            let (result, read, wrote, ended) = if skipping {
                self.csv
                    .read_record(&input[used..], &mut self.record, &mut self.ends)
            } else {
                self.csv.read_record(
                    &input[used..],
                    &mut self.record[self.filled..],
                    &mut self.ends[self.fields..],
                )
            };
            used += read;
            if !skipping {
                self.filled += wrote;
                self.fields += ended;
            }
            match result {
                ReadRecordResult::InputEmpty => return (used, None),
                ReadRecordResult::OutputFull if !skipping => self.grow_record(),
                ReadRecordResult::OutputEndsFull if !skipping => self.grow_fields(),
                // Skipping reuses the buffers from their start: nothing to keep.
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
                ReadRecordResult::Record => {
                    self.state = State::Start;
                    if skipping {
                        return (used, Some(Outcome::TooLong));
                    }
                    return (used, Some(self.complete()));
                }
                ReadRecordResult::End => {
                    self.state = State::Done;
                    return (used, Some(Outcome::End));
                }
            }
        }
    }

    /// Room for more field bytes, or skipping once the record holds more than the limit (and
    /// the `\r` of a line end, which is not part of the record).
    fn grow_record(&mut self) {
        if self.record.len() > self.max_record_bytes + 1 {
            self.state = State::Skipping;
            return;
        }
        let size = (self.record.len() * 2).min(self.max_record_bytes + 2);
        self.record.resize(size, 0);
    }

    /// Room for more fields; more fields than the limit allows bytes is a record too long.
    fn grow_fields(&mut self) {
        if self.ends.len() > self.max_record_bytes {
            self.state = State::Skipping;
            return;
        }
        let size = (self.ends.len() * 2).min(self.max_record_bytes + 1);
        self.ends.resize(size, 0);
    }

    /// A record read whole: its fields, or too long once the `\r` of a line end is dropped.
    fn complete(&mut self) -> Outcome {
        self.drop_carriage_return();
        match self.fields.checked_sub(1).map(|last| self.ends[last]) {
            Some(bytes) if bytes > self.max_record_bytes => Outcome::TooLong,
            _ => Outcome::Fields,
        }
    }

    /// The `\r` of a `\r\n` line end is the last byte of the last field.
    fn drop_carriage_return(&mut self) {
        let Some(last) = self.fields.checked_sub(1) else {
            return;
        };
        let start = match last {
            0 => 0,
            _ => self.ends[last - 1],
        };
        let end = self.ends[last];
        if end > start && self.record[end - 1] == b'\r' {
            self.ends[last] = end - 1;
        }
    }

    fn is_blank(&self, outcome: Outcome) -> bool {
        outcome == Outcome::Fields
            && self.fields == 1
            && self.record[..self.ends[0]]
                .iter()
                .all(u8::is_ascii_whitespace)
    }

    fn view(&self, outcome: Outcome) -> Option<Record<'_>> {
        let line = self.line;
        match outcome {
            Outcome::Fields => Some(Record::Fields {
                line,
                fields: Fields {
                    data: &self.record[..self.filled],
                    ends: &self.ends[..self.fields],
                },
            }),
            Outcome::TooLong => Some(Record::TooLong { line }),
            Outcome::UnclosedQuote => Some(Record::UnclosedQuote { line }),
            Outcome::End => None,
        }
    }
}

/// Reads records from an async byte stream, never holding more than one (bounded) record.
pub struct RecordReader<R> {
    input: R,
    parser: Parser,
    /// Total bytes consumed, for progress reports.
    consumed: u64,
}

impl<R: AsyncBufRead + Unpin> RecordReader<R> {
    /// A reader of `input` whose records have at most `max_record_bytes` bytes of field data.
    pub fn new(input: R, max_record_bytes: usize) -> Self {
        Self {
            input,
            parser: Parser::new(max_record_bytes),
            consumed: 0,
        }
    }

    /// Bytes read so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The next record, `None` at the end of the input. Blank records are skipped.
    pub async fn next(&mut self) -> std::io::Result<Option<Record<'_>>> {
        let outcome = loop {
            let buffer = self.input.fill_buf().await?;
            let (used, outcome) = self.parser.step(buffer);
            self.input.consume(used);
            self.consumed += used as u64;
            match outcome {
                Some(outcome) if !self.parser.is_blank(outcome) => break outcome,
                _ => {}
            }
        };
        Ok(self.parser.view(outcome))
    }
}

/// Appends `field` double-quoted, with `"` doubled, to `out`.
pub fn push_quoted(out: &mut Vec<u8>, field: &str) {
    out.push(b'"');
    let mut rest = field.as_bytes();
    while let Some(quote) = memchr::memchr(b'"', rest) {
        out.extend_from_slice(&rest[..=quote]);
        out.push(b'"');
        rest = &rest[quote + 1..];
    }
    out.extend_from_slice(rest);
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

    /// What a parser reads from `input`, as owned values.
    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Fields(u64, Vec<String>),
        TooLong(u64),
        UnclosedQuote(u64),
    }

    fn owned(record: Record<'_>) -> Owned {
        match record {
            Record::Fields { line, fields } => Owned::Fields(
                line,
                fields
                    .iter()
                    .map(|field| String::from_utf8_lossy(field).into_owned())
                    .collect(),
            ),
            Record::TooLong { line } => Owned::TooLong(line),
            Record::UnclosedQuote { line } => Owned::UnclosedQuote(line),
        }
    }

    fn parsed(input: &str, max: usize) -> Vec<Owned> {
        let mut parser = Parser::new(max);
        let mut rest = input.as_bytes();
        let mut out = Vec::new();
        while let Some(record) = parser.next_in(&mut rest) {
            out.push(owned(record));
        }
        assert!(parser.next_in(&mut rest).is_none(), "stays at the end");
        out
    }

    /// The same input through the async reader, one byte per read.
    async fn streamed(input: &str, max: usize) -> Vec<Owned> {
        let bytes = tokio::io::BufReader::with_capacity(1, input.as_bytes());
        let mut reader = RecordReader::new(bytes, max);
        let mut out = Vec::new();
        while let Some(record) = reader.next().await.expect("read") {
            out.push(owned(record));
        }
        assert_eq!(reader.consumed(), input.len() as u64);
        out
    }

    fn fields(line: u64, values: &[&str]) -> Owned {
        Owned::Fields(line, values.iter().map(|v| v.to_string()).collect())
    }

    async fn both(input: &str, max: usize) -> Vec<Owned> {
        let whole = parsed(input, max);
        assert_eq!(whole, streamed(input, max).await, "byte by byte: {input:?}");
        whole
    }

    #[tokio::test]
    async fn plain_and_quoted_fields() {
        let got = both("a,b\n\"c, d\",e\r\n\"say \"\"hi\"\"\",f", 100).await;
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
        let got = both("\na,b\n\n\r\n  \nc,d\n\n", 100).await;
        assert_eq!(got, vec![fields(2, &["a", "b"]), fields(6, &["c", "d"])]);
        assert!(both("", 100).await.is_empty());
        assert!(both("\n\n", 100).await.is_empty());
    }

    #[tokio::test]
    async fn quoted_line_ends_span_lines_and_stay_data() {
        let got = both("\"a\nb\",c\nd,\"e\r\n\"\r\nf,g", 100).await;
        assert_eq!(
            got,
            vec![
                fields(1, &["a\nb", "c"]),
                fields(3, &["d", "e\r\n"]),
                fields(5, &["f", "g"]),
            ]
        );
    }

    #[tokio::test]
    async fn long_records_and_open_quotes_are_reported() {
        let long = format!("{},x\nok,y\n\"open,z\nm", "a".repeat(50));
        let got = both(&long, 10).await;
        assert_eq!(
            got,
            vec![
                Owned::TooLong(1),
                fields(2, &["ok", "y"]),
                Owned::UnclosedQuote(3),
            ]
        );
        assert_eq!(both("ok,\"", 10).await, vec![Owned::UnclosedQuote(1)]);
        assert_eq!(
            both(&format!("\"{}", "a".repeat(50)), 10).await,
            vec![Owned::TooLong(1)]
        );
    }

    #[tokio::test]
    async fn the_limit_counts_field_bytes_and_fields() {
        let exact = format!("{},{}\r\nb,c\n", "a".repeat(6), "a".repeat(4));
        assert_eq!(
            both(&exact, 10).await,
            vec![fields(1, &["aaaaaa", "aaaa"]), fields(2, &["b", "c"])]
        );
        let over = format!("{},{}\r\nb,c\n", "a".repeat(6), "a".repeat(5));
        assert_eq!(
            both(&over, 10).await,
            vec![Owned::TooLong(1), fields(2, &["b", "c"])]
        );
        assert_eq!(
            both("aaaaaaaaaaa\nb,c", 10).await,
            vec![Owned::TooLong(1), fields(2, &["b", "c"])]
        );
        let commas = format!("{}\nb,c\n", ",".repeat(50));
        assert_eq!(
            both(&commas, 10).await,
            vec![Owned::TooLong(1), fields(2, &["b", "c"])]
        );
    }

    #[tokio::test]
    async fn one_column_stray_quotes_and_a_byte_order_mark() {
        let got = both("header\nit's 5\" tall,x\n", 100).await;
        assert_eq!(
            got,
            vec![fields(1, &["header"]), fields(2, &["it's 5\" tall", "x"])]
        );
        // csv-core drops the mark when the first bytes it sees hold all three of its bytes.
        let got = parsed("\u{feff}header\nit's 5\" tall,x\n", 100);
        assert_eq!(
            got,
            vec![fields(1, &["header"]), fields(2, &["it's 5\" tall", "x"])]
        );
    }

    /// Every record of `input` read by csv-core alone, and by the parser as it runs, whole and
    /// through the async reader in reads of `chunk` bytes.
    async fn split_both_ways(input: &[u8], max: usize, chunk: usize) {
        let read_all = |split: bool| {
            let parser = Parser::new(max);
            let mut parser = if split {
                parser
            } else {
                parser.csv_core_only()
            };
            let mut rest = input;
            let mut out = Vec::new();
            while let Some(record) = parser.next_in(&mut rest) {
                out.push(owned(record));
            }
            out
        };
        let reference = read_all(false);
        let shown = String::from_utf8_lossy(input);
        assert_eq!(read_all(true), reference, "whole: {shown:?}");
        let mut reader = RecordReader::new(tokio::io::BufReader::with_capacity(chunk, input), max);
        let mut streamed = Vec::new();
        while let Some(record) = reader.next().await.expect("read") {
            streamed.push(owned(record));
        }
        assert_eq!(streamed, reference, "in reads of {chunk}: {shown:?}");
    }

    #[tokio::test]
    async fn simple_lines_split_as_csv_core_reads_them() {
        for input in [
            "a,b\nc,d\n",
            "x\n\"a\",\"b\"\n\"\",\n,\"\"\n\"a\",\n",
            "x\n\"a\"b,c\n\"a\"\"b\",c\n a,\"b\"\r\n\"a\r\",b\r\n",
            "x\n\"a\nb\",c\na\"b,\"c\n\"open,d\n",
            "x\n\u{feff}a,b\n  \r\n\r\n,,,\n",
        ] {
            for chunk in [1, 3, 64] {
                split_both_ways(input.as_bytes(), 100, chunk).await;
            }
        }
        // Generated lines over the bytes that matter, some longer than the limit.
        let alphabet = b"ab ,,\"\"\n\n\r;";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let length = (next() % 60) as usize;
            let input: Vec<u8> = (0..length)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let chunk = 1 + (next() % 16) as usize;
            split_both_ways(&input, 12, chunk).await;
        }
    }

    #[test]
    fn fields_are_indexed() {
        let mut parser = Parser::new(100);
        let mut input: &[u8] = b"a,,bc\n";
        let Some(Record::Fields { fields, .. }) = parser.next_in(&mut input) else {
            panic!("a record");
        };
        assert_eq!(fields.len(), 3);
        assert_eq!(fields.get(1), Some(&b""[..]));
        assert_eq!(fields.get(2), Some(&b"bc"[..]));
        assert_eq!(fields.get(3), None);
    }

    #[test]
    fn quoting_round_trips() {
        let mut out = Vec::new();
        push_row(&mut out, &["say \"hi\", ok", "3;4"]);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "\"say \"\"hi\"\", ok\",\"3;4\"\n"
        );
        let mut parser = Parser::new(100);
        let mut input = &b"\"say \"\"hi\"\", ok\",\"3;4\"\n"[..];
        let record = parser.next_in(&mut input).map(owned);
        assert_eq!(record, Some(fields(1, &["say \"hi\", ok", "3;4"])));
    }
}
