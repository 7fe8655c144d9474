//! Training data: the snapshot files data-management writes, parsed into labeled texts, and the
//! seeded test/validation/train split.
//!
//! `examples.csv` rows are `"<utterance>","<id>[;<id>]"` and `labels.csv` rows `"<id>","<label>"`
//! with 1-based ids; a row with several labels trains on its first. They are read with the CSV
//! reader of data-management's ingest, with its bound on a record's size.

use automl_common::csv::{MAX_RECORD_BYTES, Parser, Record};

use crate::error::{Error, Result};
use crate::rng::{SplitMix64, Stream};

/// Share of all examples held out for the final test.
pub const TEST_SHARE: f64 = 0.10;
/// Share of the remaining examples held out for validation (learning-rate decay).
pub const VALIDATION_SHARE: f64 = 0.05;

/// One utterance and the index of its label in [`Dataset::labels`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The utterance.
    pub text: String,
    /// 0-based label index (the file's id minus one).
    pub label: usize,
}

/// A parsed snapshot: label names in id order and the examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Label names; label id `i + 1` in the files is `labels[i]`.
    pub labels: Vec<String>,
    /// Every example, in file order.
    pub examples: Vec<Example>,
}

/// The three parts a run uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// What the model is fitted on.
    pub train: Vec<Example>,
    /// What decides learning-rate decay.
    pub validation: Vec<Example>,
    /// What the final accuracy is reported on.
    pub test: Vec<Example>,
}

impl Dataset {
    /// Parses the contents of `examples.csv` and `labels.csv`.
    pub fn parse(examples_csv: &str, labels_csv: &str) -> Result<Self> {
        let labels = parse_labels(labels_csv)?;
        let mut examples = Vec::new();
        for_each_row(examples_csv, "examples.csv", |[text, ids], bad| {
            let first = ids.split(';').next().unwrap_or_default().trim();
            let id: usize = first
                .parse()
                .map_err(|_| bad(format!("label id {first:?} is not a number")))?;
            if id == 0 || id > labels.len() {
                return Err(bad(format!("label id {id} is not in labels.csv")));
            }
            examples.push(Example {
                text: text.to_string(),
                label: id - 1,
            });
            Ok(())
        })?;
        if examples.is_empty() {
            return Err(Error::Dataset("examples.csv has no rows".into()));
        }
        Ok(Self { labels, examples })
    }

    /// Splits the examples: a seeded shuffle, then [`TEST_SHARE`] for test, [`VALIDATION_SHARE`]
    /// of the rest for validation (each at least one example when there are at least three).
    pub fn split(&self, seed: u64) -> Result<Split> {
        let [test, validation, train] = self.split_indices(seed)?;
        let pick = |range: &[usize]| -> Vec<Example> {
            range.iter().map(|&i| self.examples[i].clone()).collect()
        };
        Ok(Split {
            test: pick(&test),
            validation: pick(&validation),
            train: pick(&train),
        })
    }

    /// The indices into `examples` of [`Dataset::split`]'s test, validation and train sets.
    pub fn split_indices(&self, seed: u64) -> Result<[Vec<usize>; 3]> {
        let n = self.examples.len();
        if n < 3 {
            return Err(Error::Dataset(format!(
                "need at least 3 examples to split, found {n}"
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        SplitMix64::new(seed, Stream::Split).shuffle(&mut order);
        let n_test = ((n as f64 * TEST_SHARE).round() as usize).max(1);
        let n_val = (((n - n_test) as f64 * VALIDATION_SHARE).round() as usize).max(1);
        Ok([
            order[..n_test].to_vec(),
            order[n_test..n_test + n_val].to_vec(),
            order[n_test + n_val..].to_vec(),
        ])
    }
}

fn parse_labels(labels_csv: &str) -> Result<Vec<String>> {
    let mut labels = Vec::new();
    for_each_row(labels_csv, "labels.csv", |[id, name], bad| {
        let expected = labels.len() + 1;
        if id.trim().parse::<usize>().ok() != Some(expected) {
            return Err(bad(format!("expected label id {expected}, found {id:?}")));
        }
        if name.is_empty() {
            return Err(bad("empty label".into()));
        }
        labels.push(name.to_string());
        Ok(())
    })?;
    if labels.is_empty() {
        return Err(Error::Dataset("labels.csv has no rows".into()));
    }
    Ok(labels)
}

/// Calls `row` with the two fields of every record of `text` and a maker of errors naming
/// `file` and the record's line; a record that is not two fields of text is such an error.
fn for_each_row(
    text: &str,
    file: &str,
    mut row: impl FnMut([&str; 2], &dyn Fn(String) -> Error) -> Result<()>,
) -> Result<()> {
    let mut parser = Parser::new(MAX_RECORD_BYTES);
    let mut input = text.as_bytes();
    while let Some(record) = parser.next_in(&mut input) {
        let line = record.line();
        let bad = |reason: String| Error::Data {
            file: file.to_string(),
            line,
            reason,
        };
        let fields = match record {
            Record::Fields { fields, .. } => fields,
            Record::TooLong { .. } => {
                return Err(bad(format!("longer than {MAX_RECORD_BYTES} bytes")));
            }
            Record::UnclosedQuote { .. } => return Err(bad("unterminated quoted field".into())),
        };
        let (2, Some(first), Some(second)) = (fields.len(), fields.get(0), fields.get(1)) else {
            return Err(bad(format!("expected 2 fields, found {}", fields.len())));
        };
        // Fields split valid UTF-8 at ASCII bytes, so they are valid UTF-8 themselves.
        let text = |field| std::str::from_utf8(field).map_err(|_| bad("invalid UTF-8".into()));
        row([text(first)?, text(second)?], &bad)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: &str = "\"1\",\"greet\"\n\"2\",\"bye\"\n";

    #[test]
    fn parses_snapshot_files_and_takes_the_first_label() {
        let examples = "\"hello there\",\"1\"\n\"see you, \"\"friend\"\"\",\"2;1\"\n";
        let data = Dataset::parse(examples, LABELS).expect("parses");
        assert_eq!(data.labels, ["greet", "bye"]);
        assert_eq!(data.examples[1].text, "see you, \"friend\"");
        assert_eq!(data.examples[1].label, 1);
    }

    #[test]
    fn rejects_unknown_ids_and_bad_rows() {
        let err = Dataset::parse("\"a\",\"1\"\n\"b\",\"3\"\n", LABELS).expect_err("bad id");
        assert!(err.to_string().contains("examples.csv line 2"), "{err}");
        assert!(Dataset::parse("\"a\"\n", LABELS).is_err());
        assert!(Dataset::parse("\"a\",\"x\"\n", LABELS).is_err());
        assert!(Dataset::parse("\"a\",\"1\"\n", "\"2\",\"x\"\n").is_err());
        assert!(Dataset::parse("", LABELS).is_err());
    }

    #[test]
    fn malformed_quoting_is_an_error_with_a_line() {
        let err = Dataset::parse("\"a\",\"1\"\n\"open,1\n", LABELS).expect_err("fails");
        assert!(
            err.to_string()
                .contains("examples.csv line 2: unterminated quoted field"),
            "{err}"
        );
        let long = format!("\"{}\",\"1\"\n", "a".repeat(MAX_RECORD_BYTES));
        let err = Dataset::parse(&long, LABELS).expect_err("fails");
        assert!(err.to_string().contains("line 1: longer than"), "{err}");
        let crlf = Dataset::parse("\"a\",\"1\"\r\n\r\n\"b\",\"2\"\r\n", LABELS).expect("parses");
        assert_eq!(crlf.examples[1].label, 1);
    }

    #[test]
    fn split_is_seeded_disjoint_and_sized() {
        let examples: String = (0..200).map(|i| format!("\"text {i}\",\"1\"\n")).collect();
        let data = Dataset::parse(&examples, LABELS).expect("parses");
        let split = data.split(42).expect("splits");
        assert_eq!(split.test.len(), 20);
        assert_eq!(split.validation.len(), 9);
        assert_eq!(split.train.len(), 171);
        assert_eq!(split, data.split(42).expect("splits"));
        assert_ne!(split, data.split(43).expect("splits"));
        let mut all: Vec<&str> = [&split.train, &split.validation, &split.test]
            .into_iter()
            .flatten()
            .map(|e| e.text.as_str())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 200);
    }
}
