//! Ingestion of one commit: raw objects → normalized files under the commit's prefix.
//!
//! TEXT_INTENT streams the source CSV record by record (a large file never sits in memory),
//! validates every row and writes `examples.csv` (`"<utterance>","<id>[;<id>]"`) and
//! `labels.csv` (`"<id>","<label>"`, ids 1-based in order of first appearance); the labels it
//! holds in memory are bounded by `data_management.max_labels`. GENERIC copies every object
//! under the source location. Both compute statistics and a content digest.

use std::borrow::Cow;
use std::collections::BTreeMap;

use automl_common::csv::{Fields, Record, RecordReader, push_row};
use automl_common::metrics::metrics;
use automl_common::s3::{ObjectStore, ObjectWriter, S3Error};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::DataError;

/// Longest raw record accepted (bytes of field data).
pub const MAX_RECORD_BYTES: usize = automl_common::csv::MAX_RECORD_BYTES;
/// Longest utterance accepted (bytes).
pub const MAX_UTTERANCE_BYTES: usize = 16 * 1024;
/// Longest label accepted (bytes).
pub const MAX_LABEL_BYTES: usize = 256;
/// How many bad lines an error message names before the scan stops.
const MAX_REPORTED_ERRORS: usize = 5;
/// Flush the output buffer to the object writer at this size.
const FLUSH_BYTES: usize = 256 * 1024;

/// What an ingest produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// `numExamples`/`numLabels` or `numFiles`/`numBytes`.
    pub statistics: BTreeMap<String, String>,
    /// sha256 over the files (see [`content_digest`]).
    pub content_digest: String,
}

/// The digest of a set of files: sha256 of the lines `"<sha256 hex>  <name>\n"` in name order,
/// the same text `sha256sum` prints for the files, so users can verify it.
pub fn content_digest(files: &BTreeMap<String, String>) -> String {
    let mut manifest = Sha256::new();
    for (name, digest) in files {
        manifest.update(format!("{digest}  {name}\n").as_bytes());
    }
    hex::encode(manifest.finalize())
}

/// A streaming writer that also hashes what it writes. The caller fills [`HashingWriter::buffer`];
/// full buffers go to a task of their own that hashes them (one sha256 pass) and hands them to
/// the object writer, whose parts upload concurrently: producing the rows, hashing and uploading
/// overlap instead of taking turns.
pub struct HashingWriter {
    blocks: mpsc::Sender<Block>,
    /// Blocks the hashing task is done with, to be filled again: a block's pages are touched
    /// once, not once per use.
    spent: mpsc::UnboundedReceiver<Vec<u8>>,
    task: tokio::task::JoinHandle<Result<(u64, String), S3Error>>,
    buffer: Vec<u8>,
}

/// What the hashing task receives.
enum Block {
    Bytes(Vec<u8>),
    /// Complete the object.
    Finish,
}

/// Full buffers queued for the hashing task.
const QUEUED_BLOCKS: usize = 8;

impl HashingWriter {
    /// Writes `bucket/key`.
    pub fn new(objects: &ObjectStore, bucket: &str, key: &str) -> Self {
        let (blocks, queue) = mpsc::channel(QUEUED_BLOCKS);
        let (give_back, spent) = mpsc::unbounded_channel();
        let task = tokio::spawn(hash_and_write(
            objects.writer(bucket, key),
            queue,
            give_back,
        ));
        Self {
            blocks,
            spent,
            task,
            buffer: new_block(),
        }
    }

    /// The buffer to append to; send it on with [`HashingWriter::flush`] once
    /// [`HashingWriter::is_full`].
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    /// Whether the buffer is large enough to send on. Checked before calling `flush`, a writer
    /// of rows makes no future per row.
    pub fn is_full(&self) -> bool {
        self.buffer.len() >= FLUSH_BYTES
    }

    /// Sends the buffer on, and takes an empty block to fill.
    pub async fn flush(&mut self) -> Result<(), S3Error> {
        let next = match self.spent.try_recv() {
            Ok(mut block) => {
                block.clear();
                block
            }
            Err(_) => new_block(),
        };
        let full = std::mem::replace(&mut self.buffer, next);
        if self.blocks.send(Block::Bytes(full)).await.is_err() {
            // The task stopped: an upload failed. Its error says why.
            return Err(self.stopped().await);
        }
        Ok(())
    }

    /// The error of a task that stopped early.
    async fn stopped(&mut self) -> S3Error {
        match (&mut self.task).await {
            Ok(Err(err)) => err,
            Ok(Ok(_)) => S3Error::Other("the object writer stopped early".into()),
            Err(err) => S3Error::Other(format!("object writer task: {err}")),
        }
    }

    /// Completes the object; returns its size and sha256 hex.
    pub async fn finish(mut self) -> Result<(u64, String), S3Error> {
        let last = std::mem::take(&mut self.buffer);
        let sent = self.blocks.send(Block::Bytes(last)).await.is_ok()
            && self.blocks.send(Block::Finish).await.is_ok();
        if !sent {
            return Err(self.stopped().await);
        }
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(S3Error::Other(format!("object writer task: {err}"))),
        }
    }

    /// Discards the object (and waits until it is discarded).
    pub async fn abort(self) {
        let Self { blocks, task, .. } = self;
        drop(blocks);
        let _ = task.await;
    }
}

/// An empty block: room for a flush's worth of rows and the longest row after it.
fn new_block() -> Vec<u8> {
    Vec::with_capacity(FLUSH_BYTES * 2)
}

/// The hashing task: hashes and writes each block, then gives it back; completes the object on
/// `Finish`, discards it when the queue closes without one (the producer aborted or went away).
/// At most `QUEUED_BLOCKS` + 2 blocks exist at once: those queued, this one, the one filling.
async fn hash_and_write(
    mut writer: ObjectWriter,
    mut queue: mpsc::Receiver<Block>,
    give_back: mpsc::UnboundedSender<Vec<u8>>,
) -> Result<(u64, String), S3Error> {
    let mut hasher = Sha256::new();
    loop {
        match queue.recv().await {
            Some(Block::Bytes(bytes)) => {
                hasher.update(&bytes);
                if let Err(err) = writer.write(&bytes).await {
                    writer.abort().await;
                    return Err(err);
                }
                // (The producer may be gone; the block is then dropped here.)
                let _ = give_back.send(bytes);
            }
            Some(Block::Finish) => {
                let size = writer.finish().await?;
                return Ok((size, hex::encode(hasher.finalize())));
            }
            None => {
                writer.abort().await;
                return Err(S3Error::Other("aborted".into()));
            }
        }
    }
}

/// Label names in order of first appearance, with their 1-based ids.
#[derive(Debug, Default)]
pub struct LabelIds {
    names: Vec<String>,
    ids: foldhash::HashMap<String, usize>,
}

impl LabelIds {
    /// The id of `label`, assigning the next one on first sight.
    pub fn id(&mut self, label: &str) -> usize {
        match self.ids.get(label) {
            Some(id) => *id,
            None => self.insert(label),
        }
    }

    /// The id of `label` as [`LabelIds::id`] gives it, or `None` (storing nothing) when it is
    /// new and there are already `limit` labels.
    pub fn id_within(&mut self, label: &str, limit: usize) -> Option<usize> {
        match self.ids.get(label) {
            Some(id) => Some(*id),
            None if self.names.len() >= limit => None,
            None => Some(self.insert(label)),
        }
    }

    fn insert(&mut self, label: &str) -> usize {
        self.names.push(label.to_string());
        let id = self.names.len();
        self.ids.insert(label.to_string(), id);
        id
    }

    /// How many labels.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// `labels.csv`: `"<id>","<label>"` rows in id order.
    pub fn to_csv(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (index, name) in self.names.iter().enumerate() {
            push_row(&mut out, &[&(index + 1).to_string(), name]);
        }
        out
    }
}

/// Checks one raw record and returns its utterance, borrowed from the record where it can be;
/// `Err` names what is wrong with it. Each of its `;`-separated labels, trimmed, goes to `label`
/// in order as it is checked: one pass over the labels checks them and looks up their ids. A
/// record found wrong may already have handed some of its labels over.
fn validate<'r>(
    fields: Fields<'r>,
    mut label: impl FnMut(&'r str),
) -> Result<Cow<'r, str>, String> {
    let (2, Some(utterance), Some(labels)) = (fields.len(), fields.get(0), fields.get(1)) else {
        return Err(format!(
            "expected 2 columns (utterance,label), found {}",
            fields.len()
        ));
    };
    let utterance = std::str::from_utf8(utterance).map_err(|_| "invalid UTF-8".to_string())?;
    let labels = std::str::from_utf8(labels).map_err(|_| "invalid UTF-8".to_string())?;
    // Normalized files hold one example per line.
    let utterance = if memchr::memchr2(b'\r', b'\n', utterance.as_bytes()).is_some() {
        Cow::Owned(utterance.replace(['\r', '\n'], " ").trim().to_string())
    } else {
        Cow::Borrowed(utterance.trim())
    };
    if utterance.is_empty() {
        return Err("empty utterance".into());
    }
    if utterance.len() > MAX_UTTERANCE_BYTES {
        return Err(format!("utterance longer than {MAX_UTTERANCE_BYTES} bytes"));
    }
    // Every label is looked at, so an empty one is named first wherever it stands.
    let (mut empty, mut long) = (false, false);
    for name in labels.split(';') {
        let name = name.trim();
        empty |= name.is_empty();
        // (Labels are short: a loop, not a search routine's setup.)
        long |=
            name.len() > MAX_LABEL_BYTES || name.bytes().any(|byte| byte == b'\r' || byte == b'\n');
        label(name);
    }
    if empty {
        return Err("empty label".into());
    }
    if long {
        return Err(format!(
            "label longer than {MAX_LABEL_BYTES} bytes or spanning lines"
        ));
    }
    Ok(utterance)
}

/// Ingests a TEXT_INTENT CSV from `source_bucket/source_key` into `dest_prefix` of the datasets
/// bucket. A file with more than `max_labels` distinct labels is refused at the row that brings
/// one more, without reading further. On any error nothing is left under `dest_prefix`.
pub async fn text_intent(
    objects: &ObjectStore,
    source_bucket: &str,
    source_key: &str,
    dest_prefix: &str,
    max_labels: usize,
) -> Result<Ingested, DataError> {
    let reader = objects
        .reader(source_bucket, source_key)
        .await
        .map_err(|err| source_error(err, source_bucket, source_key))?;
    let mut records = RecordReader::new(reader, MAX_RECORD_BYTES);
    let bucket = objects.datasets_bucket.clone();
    let mut examples = HashingWriter::new(objects, &bucket, &format!("{dest_prefix}/examples.csv"));
    let mut labels = LabelIds::default();
    let mut errors: Vec<String> = Vec::new();
    // The line whose label would have been one more than `max_labels`.
    let mut over_limit: Option<u64> = None;
    let mut count: u64 = 0;
    let mut ids = String::new();
    loop {
        let record = match records.next().await {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(err) => {
                examples.abort().await;
                return Err(DataError::InvalidData(format!(
                    "{source_bucket}/{source_key} could not be read: {err}"
                )));
            }
        };
        // Labels get ids while the first bad line is yet to be found; `over` is set by a label
        // that would be one more than `max_labels`, and no ids are given after it.
        let assign = errors.is_empty();
        let mut over = false;
        ids.clear();
        let checked = match record {
            Record::Fields { line, fields } => validate(fields, |name| {
                if !assign || over {
                    return;
                }
                let Some(id) = labels.id_within(name, max_labels) else {
                    over = true;
                    return;
                };
                if !ids.is_empty() {
                    ids.push(';');
                }
                ids.push_str(itoa::Buffer::new().format(id));
            })
            .map(|utterance| (line, utterance))
            .map_err(|why| (line, why)),
            Record::TooLong { line } => {
                Err((line, format!("longer than {MAX_RECORD_BYTES} bytes")))
            }
            Record::UnclosedQuote { line } => Err((line, "unclosed quote".to_string())),
        };
        match checked {
            Ok((line, _)) if assign && over => {
                over_limit = Some(line);
                break;
            }
            Ok((_, utterance)) if assign => {
                push_row(examples.buffer(), &[&utterance, &ids]);
                count += 1;
                if examples.is_full()
                    && let Err(err) = examples.flush().await
                {
                    examples.abort().await;
                    return Err(err.into());
                }
                if count.is_multiple_of(1_000_000) {
                    tracing::info!(rows = count, bytes = records.consumed(), "ingesting");
                }
            }
            Ok(_) => {}
            Err((line, why)) => {
                errors.push(format!("line {line}: {why}"));
                if errors.len() >= MAX_REPORTED_ERRORS {
                    break;
                }
            }
        }
    }
    metrics().data.ingest_bytes.inc_by(records.consumed());
    if let Some(line) = over_limit {
        examples.abort().await;
        return Err(DataError::InvalidData(format!(
            "{source_bucket}/{source_key} has more than {max_labels} distinct labels in one commit \
             (data_management.max_labels): line {line} brings label number {}",
            max_labels + 1
        )));
    }
    if !errors.is_empty() {
        examples.abort().await;
        return Err(DataError::InvalidData(format!(
            "{source_bucket}/{source_key} is not valid TEXT_INTENT data (utterance,label per line): {}",
            errors.join("; ")
        )));
    }
    if count == 0 {
        examples.abort().await;
        return Err(DataError::InvalidData(format!(
            "{source_bucket}/{source_key} is empty: TEXT_INTENT data needs at least one utterance,label line"
        )));
    }
    let (_, examples_digest) = examples.finish().await?;
    let labels_csv = labels.to_csv();
    let labels_digest = hex::encode(Sha256::digest(&labels_csv));
    let labels_key = format!("{dest_prefix}/labels.csv");
    if let Err(err) = objects.put_bytes(&bucket, &labels_key, labels_csv).await {
        let _ = objects
            .delete_prefix(&bucket, &format!("{dest_prefix}/"))
            .await;
        return Err(err.into());
    }
    let digests = BTreeMap::from([
        ("examples.csv".to_string(), examples_digest),
        ("labels.csv".to_string(), labels_digest),
    ]);
    Ok(Ingested {
        statistics: BTreeMap::from([
            ("numExamples".to_string(), count.to_string()),
            ("numLabels".to_string(), labels.len().to_string()),
        ]),
        content_digest: content_digest(&digests),
    })
}

/// Copies `source_bucket/source_key` to `dest_bucket/dest_key`, streaming and hashing; returns
/// the size and sha256 hex.
pub async fn copy_hashed(
    objects: &ObjectStore,
    source_bucket: &str,
    source_key: &str,
    dest_bucket: &str,
    dest_key: &str,
) -> Result<(u64, String), DataError> {
    use tokio::io::AsyncReadExt;
    let mut reader = objects
        .reader(source_bucket, source_key)
        .await
        .map_err(|err| source_error(err, source_bucket, source_key))?;
    let mut writer = HashingWriter::new(objects, dest_bucket, dest_key);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(read) => read,
            Err(err) => {
                writer.abort().await;
                return Err(err.into());
            }
        };
        if read == 0 {
            break;
        }
        writer.buffer().extend_from_slice(&chunk[..read]);
        if writer.is_full()
            && let Err(err) = writer.flush().await
        {
            writer.abort().await;
            return Err(err.into());
        }
    }
    Ok(writer.finish().await?)
}

/// Copies every object at `source_bucket/source_key` (the object itself, or everything under it
/// as a folder) into `dest_prefix`, keeping relative paths.
pub async fn generic(
    objects: &ObjectStore,
    source_bucket: &str,
    source_key: &str,
    dest_prefix: &str,
) -> Result<Ingested, DataError> {
    let entries = objects
        .resolve_location(source_bucket, source_key)
        .await
        .map_err(|err| source_error(err, source_bucket, source_key))?;
    if entries.is_empty() {
        return Err(DataError::SourceNotFound(format!(
            "{source_bucket}/{source_key}"
        )));
    }
    let folder = format!("{}/", source_key.trim_end_matches('/'));
    let bucket = objects.datasets_bucket.clone();
    let mut digests = BTreeMap::new();
    let mut total: u64 = 0;
    for entry in &entries {
        let relative = entry
            .key
            .strip_prefix(&folder)
            .unwrap_or_else(|| entry.key.rsplit('/').next().unwrap_or(&entry.key));
        let copied = copy_hashed(
            objects,
            source_bucket,
            &entry.key,
            &bucket,
            &format!("{dest_prefix}/{relative}"),
        )
        .await;
        if let Ok((size, _)) = &copied {
            metrics().data.ingest_bytes.inc_by(*size);
        }
        match copied {
            Ok((size, digest)) => {
                total += size;
                digests.insert(relative.to_string(), digest);
            }
            Err(err) => {
                let _ = objects
                    .delete_prefix(&bucket, &format!("{dest_prefix}/"))
                    .await;
                return Err(err);
            }
        }
    }
    Ok(Ingested {
        statistics: BTreeMap::from([
            ("numFiles".to_string(), digests.len().to_string()),
            ("numBytes".to_string(), total.to_string()),
        ]),
        content_digest: content_digest(&digests),
    })
}

/// A missing source object is NOT_FOUND naming it; other failures keep their kind.
fn source_error(err: S3Error, bucket: &str, key: &str) -> DataError {
    match err {
        S3Error::NotFound(_) => DataError::SourceNotFound(format!("{bucket}/{key}")),
        other => DataError::ObjectStore(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use automl_common::csv::Parser;

    /// `validate` of the one record in `line`: the utterance and the labels.
    fn validate_line(line: &[u8]) -> Result<(String, Vec<String>), String> {
        let mut parser = Parser::new(MAX_RECORD_BYTES);
        let mut input = line;
        match parser.next_in(&mut input) {
            Some(Record::Fields { fields, .. }) => {
                let mut labels = Vec::new();
                validate(fields, |label| labels.push(label.to_string()))
                    .map(|utterance| (utterance.into_owned(), labels))
            }
            other => panic!("one record expected, got {other:?}"),
        }
    }

    #[test]
    fn rows_are_validated() {
        let (utterance, labels) =
            validate_line(b"  book a flight ,travel; booking").expect("valid");
        assert_eq!(utterance, "book a flight");
        assert_eq!(labels, ["travel", "booking"]);
        let (utterance, _) = validate_line(b"\"two\nlines \",x").expect("valid");
        assert_eq!(utterance, "two lines");
        let err = validate_line(b"only one column").err();
        assert_eq!(
            err.as_deref(),
            Some("expected 2 columns (utterance,label), found 1")
        );
        assert!(validate_line(b"a,b,c").is_err());
        assert!(validate_line(b"\"\",label").is_err());
        assert!(validate_line(b"text,").is_err());
        assert!(validate_line(b"text,a;;b").is_err());
        let err = validate_line(b"\xff\xfe,x").err();
        assert_eq!(err.as_deref(), Some("invalid UTF-8"));
    }

    #[test]
    fn label_ids_follow_first_appearance() {
        let mut labels = LabelIds::default();
        assert_eq!(labels.id("b"), 1);
        assert_eq!(labels.id("a"), 2);
        assert_eq!(labels.id("b"), 1);
        assert_eq!(
            String::from_utf8(labels.to_csv()).expect("utf8"),
            "\"1\",\"b\"\n\"2\",\"a\"\n"
        );
    }

    #[test]
    fn label_ids_within_a_limit_refuse_one_more() {
        let mut labels = LabelIds::default();
        assert_eq!(labels.id_within("a", 2), Some(1));
        assert_eq!(labels.id_within("b", 2), Some(2));
        assert_eq!(labels.id_within("a", 2), Some(1));
        assert_eq!(labels.id_within("c", 2), None);
        assert_eq!(labels.len(), 2);
        assert_eq!(labels.id_within("b", 2), Some(2));
    }

    #[test]
    fn digest_is_sha256sum_of_the_manifest() {
        let files = BTreeMap::from([("a".to_string(), "00".to_string())]);
        assert_eq!(
            content_digest(&files),
            hex::encode(Sha256::digest(b"00  a\n"))
        );
    }
}
