//! The embedded endpoint's storage: s3s-fs's file system backend, with three of its operations
//! made cheaper for large objects. Every other operation is s3s-fs's own.
//!
//! - GetObject of a whole object streams the file in 256 KiB reads instead of s3s-fs's 4 KiB
//!   ones (each a trip through tokio's blocking pool).
//! - UploadPart writes a part straight into its place in the finished object. An upload's
//!   first part fixes a stride, its size; a part of at most that size is written at
//!   `(n − 1) × stride` of one file for the whole upload, the upload's assembly file, and an
//!   append-only log beside it records the part once it is written, before the part is
//!   acknowledged. CompleteMultipartUpload of parts that all lie there, every one but the last
//!   exactly a stride long (as every S3 client's parts are), cuts the file to the object's
//!   length and renames it: the object's bytes are written once, as a PutObject writes them.
//! - Any other CompleteMultipartUpload joins the parts with `std::io::copy`, which on Linux
//!   copies file to file inside the kernel (`copy_file_range`), and takes the multipart ETag
//!   from the part digests UploadPart already computed, instead of reading every byte back
//!   through a 64 KiB buffer and hashing it again.
//!
//! Parts that do not fit the stride (larger ones, a part uploaded again, a part uploaded
//! while another write of the same number is under way) go to s3s-fs's part files. Before
//! anything s3s-fs does with an upload's parts (ListParts, its own completion), the parts in
//! the assembly file are copied out into s3s-fs's part files, so s3s-fs sees the upload as if
//! it had stored every part itself. An endpoint that restarts reads the logs back: an
//! acknowledged part is not lost when the process dies.
//!
//! This writes s3s-fs's on-disk layout itself (the upload's files, the object's attribute
//! and ETag files), so `s3s-fs` is pinned to the exact version in Cargo.toml, and the tests
//! below check each file against what s3s-fs reads back. Where anything is not as the fast
//! paths expect (a conditional request, a part they did not see uploaded, a key that is not a
//! plain path), the request goes to s3s-fs unchanged.

use std::collections::{HashMap, HashSet};
use std::io::{Seek as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use futures::StreamExt as _;
use s3s::auth::Credentials;
use s3s::crypto::{Checksum, Md5};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use tokio_util::io::ReaderStream;

/// Bytes per read of a GetObject body.
const READ_BYTES: usize = 256 * 1024;
/// Bytes per write of a part into the assembly file.
const WRITE_BYTES: usize = 1024 * 1024;
/// S3's smallest part, but for the last.
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// Where a stored part's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// s3s-fs's part file, `.upload_id-<id>.part-<n>`.
    File,
    /// The upload's assembly file, at `(n − 1) × stride`.
    Assembly,
}

/// A part UploadPart stored: its MD5 (the part's ETag), size and place.
#[derive(Debug, Clone, Copy)]
struct StoredPart {
    md5: [u8; 16],
    size: u64,
    place: Place,
}

/// An upload's assembly file, open for writing parts, and its stride.
#[derive(Debug, Clone)]
struct Assembly {
    file: Arc<std::fs::File>,
    stride: u64,
}

/// What the backend knows of an open multipart upload.
#[derive(Debug, Default)]
struct Upload {
    parts: HashMap<i32, StoredPart>,
    /// Set by the first part written in place.
    assembly: Option<Assembly>,
    /// Parts being written into the assembly file now.
    writing: HashSet<i32>,
    /// Parts whose write into the assembly file was cut off (the request failed or went
    /// away); they never go there again, since a write of theirs may still land.
    abandoned: HashSet<i32>,
    /// No part goes into the assembly file any more: its parts were copied out, or a
    /// completion is renaming it.
    closed: bool,
}

impl Upload {
    /// The assembly file's bytes of part `number`: its offset there.
    fn offset(stride: u64, number: i32) -> u64 {
        u64::try_from(number - 1).unwrap_or_default() * stride
    }
}

/// What the fast paths did, counted from the endpoint's start.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Uploads completed by joining part files in the kernel.
    pub(super) joins: AtomicU64,
    /// Uploads completed by renaming their assembly file.
    pub(super) renames: AtomicU64,
    /// Parts written into an assembly file.
    pub(super) parts_in_place: AtomicU64,
}

/// s3s-fs over `root`, with the fast paths above.
#[derive(Debug)]
pub(super) struct Backend {
    inner: FileSystem,
    root: PathBuf,
    /// Open multipart uploads that had a part through this backend, by upload id. An upload
    /// leaves it when it completes or is aborted.
    uploads: Mutex<HashMap<String, Upload>>,
    counters: Arc<Counters>,
}

/// A part UploadPart writes into the assembly file.
struct Claim {
    upload_id: String,
    number: i32,
    offset: u64,
    len: u64,
    file: Arc<std::fs::File>,
}

/// Takes a part out of its upload's `writing` set when its write ends; a write that did not
/// end in [`Backend::record_in_place`] leaves the part abandoned.
struct WriteGuard<'a> {
    uploads: &'a Mutex<HashMap<String, Upload>>,
    upload_id: &'a str,
    number: i32,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut uploads) = self.uploads.lock()
            && let Some(upload) = uploads.get_mut(self.upload_id)
            && upload.writing.remove(&self.number)
        {
            upload.abandoned.insert(self.number);
        }
    }
}

impl Backend {
    pub(super) fn new(root: &Path) -> std::io::Result<Self> {
        let inner =
            FileSystem::new(root).map_err(|err| std::io::Error::other(format!("{err:?}")))?;
        // s3s-fs resolves its root the same way.
        let root = std::env::current_dir()?.join(root).canonicalize()?;
        let uploads = recover(&root)?;
        Ok(Self {
            inner,
            root,
            uploads: Mutex::new(uploads),
            counters: Arc::default(),
        })
    }

    /// What the fast paths did, counted from now on.
    pub(super) fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// The object's file, when bucket and key are plain relative paths (s3s-fs resolves
    /// anything else itself).
    fn object_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        let plain = |path: &str| {
            !path.is_empty()
                && Path::new(path)
                    .components()
                    .all(|part| matches!(part, Component::Normal(_)))
        };
        (plain(bucket) && plain(key)).then(|| self.root.join(bucket).join(key))
    }

    /// `.bucket-<b64>.object-<b64>[.upload-<id>].metadata.json`, as s3s-fs names it.
    fn attributes_path(&self, bucket: &str, key: &str, upload_id: Option<&str>) -> PathBuf {
        let upload = upload_id
            .map(|id| format!(".upload-{id}"))
            .unwrap_or_default();
        self.root.join(format!(
            ".bucket-{}.object-{}{upload}.metadata.json",
            encode(bucket),
            encode(key)
        ))
    }

    /// `.bucket-<b64>.object-<b64>.internal.json`: the ETag s3s-fs answers with.
    fn internal_info_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            encode(bucket),
            encode(key)
        ))
    }

    fn upload_info_path(&self, upload_id: &str) -> PathBuf {
        upload_info_path(&self.root, upload_id)
    }

    fn part_path(&self, upload_id: &str, part_number: i32) -> PathBuf {
        part_path(&self.root, upload_id, part_number)
    }

    /// Whether the upload was created with `credentials`' access key, as s3s-fs records its
    /// owner; `None` when there is no such upload.
    async fn owned_by(&self, upload_id: &str, credentials: Option<&Credentials>) -> Option<bool> {
        let bytes = tokio::fs::read(self.upload_info_path(upload_id))
            .await
            .ok()?;
        let owner = serde_json::from_slice::<Option<String>>(&bytes).ok()?;
        Some(owner.as_deref() == credentials.map(|c| c.access_key.as_str()))
    }

    fn lock_uploads(&self) -> S3Result<std::sync::MutexGuard<'_, HashMap<String, Upload>>> {
        self.uploads
            .lock()
            .map_err(|_| s3_error!(InternalError, "uploads lock"))
    }

    fn forget_upload(&self, upload_id: &str) {
        if let Ok(mut uploads) = self.uploads.lock() {
            uploads.remove(upload_id);
        }
    }

    /// Removes an ended upload's assembly file and log, where s3s-fs did not.
    async fn remove_assembly(&self, upload_id: &str) {
        for path in [
            assembly_path(&self.root, upload_id),
            assembly_log_path(&self.root, upload_id),
        ] {
            let _ = tokio::fs::remove_file(path).await;
        }
    }

    /// Where `req`'s part goes in its upload's assembly file, or `None` when s3s-fs should
    /// store it (see the module's documentation); creates the assembly file with the upload's
    /// first part.
    async fn claim(&self, req: &S3Request<UploadPartInput>) -> Option<Claim> {
        let input = &req.input;
        let len = u64::try_from(input.content_length?)
            .ok()
            .filter(|len| *len > 0)?;
        let number = input.part_number;
        if !(1..=10_000).contains(&number) || input.body.is_none() {
            return None;
        }
        let upload_id = uuid::Uuid::parse_str(&input.upload_id)
            .ok()?
            .hyphenated()
            .to_string();
        if !self.owned_by(&upload_id, req.credentials.as_ref()).await? {
            return None;
        }
        let mut uploads = self.uploads.lock().ok()?;
        let upload = uploads.entry(upload_id.clone()).or_default();
        if upload.closed
            || upload.parts.contains_key(&number)
            || upload.writing.contains(&number)
            || upload.abandoned.contains(&number)
        {
            return None;
        }
        let assembly = match &upload.assembly {
            Some(assembly) => assembly.clone(),
            None => {
                let assembly = create_assembly(&self.root, &upload_id, len)
                    .inspect_err(|err| tracing::warn!(error = %err, "assembly file"))
                    .ok()?;
                upload.assembly = Some(assembly.clone());
                assembly
            }
        };
        if len > assembly.stride {
            return None;
        }
        upload.writing.insert(number);
        Some(Claim {
            upload_id,
            number,
            offset: Upload::offset(assembly.stride, number),
            len,
            file: assembly.file,
        })
    }

    /// Records a part written in place, in the log and then in memory, and answers its ETag.
    /// Where the assembly file's parts were copied out while it was being written, copies
    /// this one out too.
    async fn record_in_place(&self, claim: &Claim, md5: [u8; 16]) -> S3Result<()> {
        let log = assembly_log_path(&self.root, &claim.upload_id);
        let line = format!("{} {} {}\n", claim.number, hex::encode(md5), claim.len);
        tokio::task::spawn_blocking(move || {
            // Appends only to a log that exists: an upload that ended meanwhile gets none.
            std::fs::OpenOptions::new()
                .append(true)
                .open(log)?
                .write_all(line.as_bytes())
        })
        .await
        .map_err(|err| s3_error!(InternalError, "log task: {err}"))?
        .map_err(|err| s3_error!(err, NoSuchUpload))?;
        let part = StoredPart {
            md5,
            size: claim.len,
            place: Place::Assembly,
        };
        {
            let mut uploads = self.lock_uploads()?;
            let Some(upload) = uploads.get_mut(&claim.upload_id) else {
                return Err(s3_error!(NoSuchUpload));
            };
            if !upload.closed {
                upload.writing.remove(&claim.number);
                upload.parts.insert(claim.number, part);
                return Ok(());
            }
        }
        let moves = vec![(claim.number, claim.offset, claim.len)];
        copy_out(self.root.clone(), claim.upload_id.clone(), moves).await?;
        let mut uploads = self.lock_uploads()?;
        let Some(upload) = uploads.get_mut(&claim.upload_id) else {
            return Err(s3_error!(NoSuchUpload));
        };
        upload.writing.remove(&claim.number);
        upload.parts.insert(
            claim.number,
            StoredPart {
                place: Place::File,
                ..part
            },
        );
        Ok(())
    }

    /// Copies the parts of `upload_id` that lie in its assembly file out into s3s-fs's part
    /// files; from then on every part of the upload goes to a part file.
    async fn materialize(&self, upload_id: &str) -> S3Result<()> {
        let moves: Vec<(i32, u64, u64)> = {
            let mut uploads = self.lock_uploads()?;
            let Some(upload) = uploads.get_mut(upload_id) else {
                return Ok(());
            };
            upload.closed = true;
            let Some(stride) = upload.assembly.as_ref().map(|a| a.stride) else {
                return Ok(());
            };
            upload
                .parts
                .iter()
                .filter(|(_, part)| part.place == Place::Assembly)
                .map(|(number, part)| (*number, Upload::offset(stride, *number), part.size))
                .collect()
        };
        if moves.is_empty() {
            return Ok(());
        }
        let numbers: Vec<i32> = moves.iter().map(|(number, _, _)| *number).collect();
        copy_out(self.root.clone(), upload_id.to_string(), moves).await?;
        if let Ok(mut uploads) = self.uploads.lock()
            && let Some(upload) = uploads.get_mut(upload_id)
        {
            for number in numbers {
                if let Some(part) = upload.parts.get_mut(&number) {
                    part.place = Place::File;
                }
            }
        }
        Ok(())
    }

    /// The parts of `upload_id` the request names, in order, when every one was uploaded
    /// through this backend with the ETag the request gives.
    fn known_parts(
        &self,
        upload_id: &str,
        named: &[CompletedPart],
    ) -> Option<Vec<(i32, StoredPart)>> {
        let uploads = self.uploads.lock().ok()?;
        let stored = &uploads.get(upload_id)?.parts;
        named
            .iter()
            .map(|part| {
                let number = part.part_number?;
                let found = *stored.get(&number)?;
                match part.e_tag.as_ref().map(ETag::value) {
                    Some(tag) if tag != hex::encode(found.md5) => None,
                    _ => Some((number, found)),
                }
            })
            .collect()
    }

    /// Where the object of a fast completion comes from: the assembly file, when every part
    /// named lies there in its place and nothing writes into it (the upload is closed to
    /// further writes in place, and reopened if the completion fails); the part files, when
    /// every part named is in one. `None` otherwise.
    fn source(&self, upload_id: &str, parts: &[(i32, StoredPart)]) -> Option<Source> {
        if parts.iter().all(|(_, part)| part.place == Place::File) {
            return Some(Source::Parts(
                parts
                    .iter()
                    .map(|(number, _)| self.part_path(upload_id, *number))
                    .collect(),
            ));
        }
        let mut uploads = self.uploads.lock().ok()?;
        let upload = uploads.get_mut(upload_id)?;
        let assembly = upload.assembly.as_ref()?;
        let (last, _) = parts.split_last()?;
        let in_place = parts.iter().all(|(_, part)| part.place == Place::Assembly);
        let strides = parts
            .iter()
            .take(parts.len() - 1)
            .all(|(_, part)| part.size == assembly.stride);
        // The map's handle is the only one: no write into the file is under way.
        let idle = upload.writing.is_empty() && Arc::strong_count(&assembly.file) == 1;
        if !(in_place && strides && idle && !upload.closed) {
            return None;
        }
        upload.closed = true;
        let len = Upload::offset(assembly.stride, last.0) + last.1.size;
        Some(Source::Assembly {
            path: assembly_path(&self.root, upload_id),
            len,
        })
    }

    /// Reopens an upload whose completion from its assembly file failed. The file was cut
    /// to the object's length, so parts beyond it are gone.
    fn reopen(&self, upload_id: &str, len: u64) {
        if let Ok(mut uploads) = self.uploads.lock()
            && let Some(upload) = uploads.get_mut(upload_id)
        {
            upload.closed = false;
            if let Some(stride) = upload.assembly.as_ref().map(|a| a.stride) {
                upload.parts.retain(|number, part| {
                    part.place == Place::File || Upload::offset(stride, *number) + part.size <= len
                });
            }
        }
    }

    /// What the fast CompleteMultipartUpload of `req` for `upload_id` does; `None` when the
    /// parts are not all in one place or s3s-fs should complete it (see the module's
    /// documentation). Refuses what s3s-fs would refuse: another access key's upload, a part
    /// under 5 MiB before the last.
    async fn plan_join(
        &self,
        req: &S3Request<CompleteMultipartUploadInput>,
        upload_id: &str,
    ) -> S3Result<Option<Join>> {
        let input = &req.input;
        let named = input
            .multipart_upload
            .as_ref()
            .and_then(|upload| upload.parts.as_deref())
            .unwrap_or_default();
        let in_order = named
            .iter()
            .enumerate()
            .all(|(index, part)| part.part_number == i32::try_from(index + 1).ok());
        let known = self.known_parts(upload_id, named);
        let object = self.object_path(&input.bucket, &input.key);
        let conditional = input.if_match.is_some() || input.if_none_match.is_some();
        let (Some(parts), Some(object), false, true, false) =
            (known, object, named.is_empty(), in_order, conditional)
        else {
            return Ok(None);
        };
        match self.owned_by(upload_id, req.credentials.as_ref()).await {
            None => return Ok(None),
            Some(false) => return Err(s3_error!(AccessDenied)),
            Some(true) => {}
        }
        if let Some((_, small)) = parts
            .split_last()
            .and_then(|(_, but_last)| but_last.iter().find(|(_, part)| part.size < MIN_PART_BYTES))
        {
            return Err(s3_error!(
                EntityTooSmall,
                "part of {} bytes, under the 5 MiB minimum",
                small.size
            ));
        }
        let Some(source) = self.source(upload_id, &parts) else {
            return Ok(None);
        };
        Ok(Some(Join {
            root: self.root.clone(),
            object,
            source,
            upload_info: self.upload_info_path(upload_id),
            upload_attributes: self.attributes_path(&input.bucket, &input.key, Some(upload_id)),
            attributes: self.attributes_path(&input.bucket, &input.key, None),
            internal_info: self.internal_info_path(&input.bucket, &input.key),
            leftovers: vec![
                assembly_path(&self.root, upload_id),
                assembly_log_path(&self.root, upload_id),
            ],
            e_tag: multipart_e_tag(&parts),
        }))
    }

    /// Runs a planned completion and answers it.
    async fn complete(
        &self,
        upload_id: &str,
        join: Join,
        input: CompleteMultipartUploadInput,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let e_tag = join.e_tag.clone();
        let renamed = match join.source {
            Source::Assembly { len, .. } => Some(len),
            Source::Parts(_) => None,
        };
        let done = tokio::task::spawn_blocking(move || join.run())
            .await
            .map_err(|err| s3_error!(InternalError, "join task: {err}"))
            .and_then(|done| done.map_err(|err| s3_error!(err, InternalError)));
        if let Err(err) = done {
            if let Some(len) = renamed {
                self.reopen(upload_id, len);
            }
            return Err(err);
        }
        self.forget_upload(upload_id);
        let counter = match renamed {
            Some(_) => &self.counters.renames,
            None => &self.counters.joins,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(e_tag)),
            ..Default::default()
        }))
    }
}

/// Writes a part's body at its place in the assembly file, hashing it on the way, and answers
/// its MD5. One write of up to [`WRITE_BYTES`] runs on a blocking thread while the next is
/// received; the body must be exactly the length the request declared.
async fn write_in_place(claim: &Claim, mut body: StreamingBlob) -> S3Result<[u8; 16]> {
    type Pending = tokio::task::JoinHandle<(std::io::Result<()>, Vec<u8>, Md5)>;
    async fn settle(pending: Pending) -> S3Result<(Vec<u8>, Md5)> {
        let (written, mut buffer, md5) = pending
            .await
            .map_err(|err| s3_error!(InternalError, "write task: {err}"))?;
        written.map_err(|err| s3_error!(err, InternalError))?;
        buffer.clear();
        Ok((buffer, md5))
    }
    let mut md5 = Some(Md5::new());
    let mut buffer = Vec::with_capacity(WRITE_BYTES);
    let mut spare = Some(Vec::with_capacity(WRITE_BYTES));
    let mut pending: Option<Pending> = None;
    let mut at = claim.offset;
    let mut received = 0u64;
    loop {
        let chunk = body
            .next()
            .await
            .transpose()
            .map_err(|err| s3_error!(IncompleteBody, "part body: {err}"))?;
        let end = chunk.is_none();
        if let Some(chunk) = chunk {
            received += chunk.len() as u64;
            if received > claim.len {
                return Err(s3_error!(IncompleteBody, "part body over its length"));
            }
            buffer.extend_from_slice(&chunk);
        }
        if buffer.len() >= WRITE_BYTES || (end && !buffer.is_empty()) {
            let (next, mut digest) = match pending.take() {
                Some(pending) => settle(pending).await?,
                None => (
                    spare.take().unwrap_or_default(),
                    md5.take().unwrap_or_default(),
                ),
            };
            let full = std::mem::replace(&mut buffer, next);
            let file = Arc::clone(&claim.file);
            let offset = at;
            at += full.len() as u64;
            pending = Some(tokio::task::spawn_blocking(move || {
                digest.update(&full);
                (file.write_all_at(&full, offset), full, digest)
            }));
        }
        if end {
            break;
        }
    }
    let digest = match pending.take() {
        Some(pending) => settle(pending).await?.1,
        None => md5.take().unwrap_or_default(),
    };
    if received != claim.len {
        return Err(s3_error!(
            IncompleteBody,
            "part body of {received} bytes, {} declared",
            claim.len
        ));
    }
    Ok(digest.finalize())
}

fn encode(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name)
}

fn upload_info_path(root: &Path, upload_id: &str) -> PathBuf {
    root.join(format!(".upload-{upload_id}.json"))
}

fn part_path(root: &Path, upload_id: &str, part_number: i32) -> PathBuf {
    root.join(format!(".upload_id-{upload_id}.part-{part_number}"))
}

/// `.upload_id-<id>.assembly`: s3s-fs's abort removes it with the upload's parts, and its
/// ListParts passes over it.
fn assembly_path(root: &Path, upload_id: &str) -> PathBuf {
    root.join(format!(".upload_id-{upload_id}.assembly"))
}

/// `.upload_id-<id>.assembly.log`: `stride <bytes>`, then a line `<part> <md5 hex> <bytes>`
/// for each part written in place.
fn assembly_log_path(root: &Path, upload_id: &str) -> PathBuf {
    root.join(format!(".upload_id-{upload_id}.assembly.log"))
}

fn create_assembly(root: &Path, upload_id: &str, stride: u64) -> std::io::Result<Assembly> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(assembly_path(root, upload_id))?;
    std::fs::write(
        assembly_log_path(root, upload_id),
        format!("stride {stride}\n"),
    )?;
    Ok(Assembly {
        file: Arc::new(file),
        stride,
    })
}

/// Copies parts `(number, offset, len)` out of the assembly file into s3s-fs's part files,
/// each through a temporary file and a rename (in the kernel, with `copy_file_range`).
async fn copy_out(root: PathBuf, upload_id: String, moves: Vec<(i32, u64, u64)>) -> S3Result<()> {
    tokio::task::spawn_blocking(move || {
        let source = std::fs::File::open(assembly_path(&root, &upload_id))?;
        for (number, offset, len) in moves {
            let temporary = root.join(temporary_name());
            let copied = (|| {
                let mut reader = &source;
                reader.seek(std::io::SeekFrom::Start(offset))?;
                let mut out = std::fs::File::create(&temporary)?;
                let copied = std::io::copy(&mut std::io::Read::take(reader, len), &mut out)?;
                if copied != len {
                    return Err(std::io::Error::other(
                        "assembly file shorter than its parts",
                    ));
                }
                std::fs::rename(&temporary, part_path(&root, &upload_id, number))
            })();
            if copied.is_err() {
                let _ = std::fs::remove_file(&temporary);
            }
            copied?;
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|err| s3_error!(InternalError, "copy task: {err}"))?
    .map_err(|err| s3_error!(err, InternalError))
}

/// The uploads whose parts an earlier run of the endpoint wrote in place, read back from
/// their logs. Assembly files of uploads that ended (or whose log is unreadable) are removed.
fn recover(root: &Path) -> std::io::Result<HashMap<String, Upload>> {
    let mut ids = HashSet::new();
    for entry in std::fs::read_dir(root)? {
        let name = entry?.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(".upload_id-")) else {
            continue;
        };
        let id = rest
            .strip_suffix(".assembly.log")
            .or_else(|| rest.strip_suffix(".assembly"));
        if let Some(id) = id.and_then(|id| uuid::Uuid::parse_str(id).ok()) {
            ids.insert(id.hyphenated().to_string());
        }
    }
    let mut uploads = HashMap::new();
    for id in ids {
        match recover_upload(root, &id) {
            Some(upload) => {
                uploads.insert(id, upload);
            }
            None => {
                let _ = std::fs::remove_file(assembly_path(root, &id));
                let _ = std::fs::remove_file(assembly_log_path(root, &id));
            }
        }
    }
    Ok(uploads)
}

fn recover_upload(root: &Path, upload_id: &str) -> Option<Upload> {
    if !upload_info_path(root, upload_id).exists() {
        return None;
    }
    let log = std::fs::read_to_string(assembly_log_path(root, upload_id)).ok()?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(assembly_path(root, upload_id))
        .ok()?;
    // A line cut off by the process's end is no record.
    let whole = log.rfind('\n').map_or("", |end| &log[..end]);
    let mut lines = whole.lines();
    let stride: u64 = lines.next()?.strip_prefix("stride ")?.parse().ok()?;
    let mut parts = HashMap::new();
    for line in lines {
        let mut fields = line.split(' ');
        let (Some(number), Some(md5), Some(size), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(number), Ok(md5), Ok(size)) = (
            number.parse::<i32>(),
            hex::decode(md5).map(<[u8; 16]>::try_from),
            size.parse::<u64>(),
        ) else {
            continue;
        };
        let Ok(md5) = md5 else { continue };
        // A part uploaded again went to a part file, which s3s-fs reads instead.
        if size > stride || part_path(root, upload_id, number).exists() {
            continue;
        }
        parts.insert(
            number,
            StoredPart {
                md5,
                size,
                place: Place::Assembly,
            },
        );
    }
    Some(Upload {
        parts,
        assembly: Some(Assembly {
            file: Arc::new(file),
            stride,
        }),
        ..Upload::default()
    })
}

/// A unique temporary file name of the kind s3s-fs removes at start-up.
fn temporary_name() -> String {
    format!(".tmp.{}.internal.part", uuid::Uuid::new_v4().simple())
}

/// The multipart ETag S3 gives: MD5 of the parts' MD5s, `-` their count.
fn multipart_e_tag(parts: &[(i32, StoredPart)]) -> String {
    let mut digest = Md5::new();
    for (_, part) in parts {
        digest.update(&part.md5);
    }
    format!("{}-{}", hex::encode(digest.finalize()), parts.len())
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomically(root: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = root.join(temporary_name());
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// Where a fast completion takes the object's bytes from.
enum Source {
    /// s3s-fs's part files, joined in order.
    Parts(Vec<PathBuf>),
    /// The upload's assembly file, cut to `len` bytes.
    Assembly { path: PathBuf, len: u64 },
}

/// What the fast CompleteMultipartUpload does on disk, on a blocking thread.
struct Join {
    root: PathBuf,
    object: PathBuf,
    source: Source,
    upload_info: PathBuf,
    upload_attributes: PathBuf,
    attributes: PathBuf,
    internal_info: PathBuf,
    /// The upload's assembly file and log, removed at the end where still there.
    leftovers: Vec<PathBuf>,
    e_tag: String,
}

impl Join {
    fn run(self) -> std::io::Result<()> {
        // The whole object first, under a name of its own: if this fails, the upload is as it
        // was and can be completed again or aborted.
        let whole = match &self.source {
            Source::Parts(parts) => {
                let temporary = self.root.join(temporary_name());
                let joined = (|| {
                    let mut out = std::fs::File::create(&temporary)?;
                    for part in parts {
                        std::io::copy(&mut std::fs::File::open(part)?, &mut out)?;
                    }
                    Ok::<_, std::io::Error>(())
                })();
                if let Err(err) = joined {
                    let _ = std::fs::remove_file(&temporary);
                    return Err(err);
                }
                temporary
            }
            Source::Assembly { path, len } => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(*len)?;
                path.clone()
            }
        };
        // Then what s3s-fs does, in its order: the upload ends, its attributes become the
        // object's, the object appears, its ETag is recorded, the parts go.
        std::fs::remove_file(&self.upload_info)?;
        if self.upload_attributes.exists() {
            std::fs::rename(&self.upload_attributes, &self.attributes)?;
        }
        if let Some(dir) = self.object.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(&whole, &self.object)?;
        let info = serde_json::json!({ "e_tag": self.e_tag });
        write_atomically(&self.root, &self.internal_info, info.to_string().as_bytes())?;
        if let Source::Parts(parts) = &self.source {
            for part in parts {
                std::fs::remove_file(part)?;
            }
        }
        for leftover in &self.leftovers {
            match std::fs::remove_file(leftover) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl S3 for Backend {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let whole = req.input.range.is_none() && req.input.part_number.is_none();
        let path = self.object_path(&req.input.bucket, &req.input.key);
        let mut response = self.inner.get_object(req).await?;
        let (Some(path), true) = (path, whole) else {
            return Ok(response);
        };
        // The same file s3s-fs answered from: same size, same modification time (objects are
        // replaced by rename, never written in place).
        let Ok(file) = tokio::fs::File::open(&path).await else {
            return Ok(response);
        };
        let Ok(metadata) = file.metadata().await else {
            return Ok(response);
        };
        let output = &mut response.output;
        let same_size = output.content_length == i64::try_from(metadata.len()).ok();
        let same_time = metadata
            .modified()
            .ok()
            .map(Timestamp::from)
            .is_some_and(|modified| output.last_modified.as_ref() == Some(&modified));
        if same_size && same_time {
            output.body = Some(StreamingBlob::wrap(ReaderStream::with_capacity(
                file, READ_BYTES,
            )));
        }
        Ok(response)
    }

    async fn upload_part(
        &self,
        mut req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        if let Some(claim) = self.claim(&req).await {
            let _guard = WriteGuard {
                uploads: &self.uploads,
                upload_id: &claim.upload_id,
                number: claim.number,
            };
            let body = req
                .input
                .body
                .take()
                .ok_or_else(|| s3_error!(IncompleteBody))?;
            let md5 = write_in_place(&claim, body).await?;
            self.record_in_place(&claim, md5).await?;
            self.counters.parts_in_place.fetch_add(1, Ordering::Relaxed);
            return Ok(S3Response::new(UploadPartOutput {
                e_tag: Some(ETag::Strong(hex::encode(md5))),
                ..Default::default()
            }));
        }
        let upload_id = req.input.upload_id.clone();
        let number = req.input.part_number;
        let path = self.part_path(&upload_id, number);
        let response = self.inner.upload_part(req).await?;
        // s3s-fs checked the upload id before writing the part; its ETag is the part's MD5.
        let md5 = response
            .output
            .e_tag
            .as_ref()
            .and_then(|tag| hex::decode(tag.value()).ok())
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok());
        let size = tokio::fs::metadata(&path).await.map(|m| m.len());
        if let (Some(md5), Ok(size), Ok(mut uploads)) = (md5, size, self.uploads.lock()) {
            uploads.entry(upload_id).or_default().parts.insert(
                number,
                StoredPart {
                    md5,
                    size,
                    place: Place::File,
                },
            );
        }
        Ok(response)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let Ok(upload_id) = uuid::Uuid::parse_str(&req.input.upload_id) else {
            return self.inner.complete_multipart_upload(req).await;
        };
        let upload_id = upload_id.hyphenated().to_string();
        if let Some(join) = self.plan_join(&req, &upload_id).await? {
            return self.complete(&upload_id, join, req.input).await;
        }
        // The parts are not all in one place, or s3s-fs completes this: every part into a
        // part file first.
        self.materialize(&upload_id).await?;
        if let Some(join) = self.plan_join(&req, &upload_id).await? {
            return self.complete(&upload_id, join, req.input).await;
        }
        let response = self.inner.complete_multipart_upload(req).await?;
        self.forget_upload(&upload_id);
        self.remove_assembly(&upload_id).await;
        Ok(response)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let upload_id = req.input.upload_id.clone();
        // s3s-fs removes every file of the upload, the assembly file and log among them.
        let response = self.inner.abort_multipart_upload(req).await?;
        self.forget_upload(&upload_id);
        Ok(response)
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        // s3s-fs lists part files.
        if let Ok(upload_id) = uuid::Uuid::parse_str(&req.input.upload_id) {
            self.materialize(&upload_id.hyphenated().to_string())
                .await?;
        }
        self.inner.list_parts(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        // A part this backend did not hash: the upload completes through s3s-fs.
        if let Ok(mut uploads) = self.uploads.lock()
            && let Some(upload) = uploads.get_mut(&req.input.upload_id)
        {
            upload.parts.remove(&req.input.part_number);
        }
        self.inner.upload_part_copy(req).await
    }

    // Everything else is s3s-fs's.

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.inner.create_bucket(req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.inner.copy_object(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.inner.delete_bucket(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.inner.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.inner.delete_objects(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.inner.get_bucket_location(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.inner.head_object(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.inner.list_buckets(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.inner.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.inner.put_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.inner.create_multipart_upload(req).await
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

    use super::super::TestEndpoint;
    use super::*;
    use crate::s3::ObjectStore;

    /// Deterministic bytes that differ from part to part.
    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
            .collect()
    }

    /// Uploads `parts` as one multipart object; `condition` makes the completion conditional
    /// (which s3s-fs answers itself). Returns the ETag CompleteMultipartUpload gave.
    async fn upload(
        store: &ObjectStore,
        bucket: &str,
        key: &str,
        parts: &[Vec<u8>],
        conditional: bool,
    ) -> Result<String, String> {
        let client = store.client();
        let created = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("text/csv")
            .send()
            .await
            .map_err(|err| format!("{err:?}"))?;
        let upload_id = created.upload_id().expect("upload id").to_string();
        let mut completed = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            let number = index as i32 + 1;
            let uploaded = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(part.clone()))
                .send()
                .await
                .map_err(|err| format!("{err:?}"))?;
            completed.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag().map(str::to_string))
                    .build(),
            );
        }
        let mut request = client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        if conditional {
            request = request.if_none_match("*");
        }
        match request.send().await {
            Ok(done) => Ok(done
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string()),
            Err(err) => {
                let message = format!("{:?}", err.into_service_error());
                client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await
                    .expect("abort");
                Err(message)
            }
        }
    }

    /// Files at the endpoint's root: s3s-fs's records of uploads, parts and temporaries.
    fn hidden_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("root")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// The fast CompleteMultipartUpload leaves the same object, ETag, attributes and files
    /// behind as s3s-fs's own (reached with a conditional request), and s3s-fs's GetObject,
    /// HeadObject and ranged reads serve it.
    #[tokio::test]
    async fn a_joined_upload_is_what_s3s_fs_would_have_written() {
        let TestEndpoint { dir, store, s3 } = TestEndpoint::start().await;
        let bucket = store.datasets_bucket.clone();
        let parts = vec![
            bytes(5 * 1024 * 1024, 1),
            bytes(5 * 1024 * 1024 + 17, 2),
            bytes(1000, 3),
        ];
        let whole = parts.concat();
        let fast = upload(&store, &bucket, "a/fast.csv", &parts, false)
            .await
            .expect("fast");
        // Part 2 is longer than part 1, so it went to a part file; the parts in place were
        // copied out and all three joined.
        assert_eq!(s3.parts_in_place(), 2);
        assert_eq!((s3.fast_joins(), s3.in_place_completions()), (1, 0));
        let slow = upload(&store, &bucket, "a/slow.csv", &parts, true)
            .await
            .expect("s3s-fs");
        assert_eq!(s3.fast_joins(), 1);
        let mut digest = Md5::new();
        for part in &parts {
            digest.update(&Md5::checksum(part));
        }
        assert_eq!(fast, format!("{}-3", hex::encode(digest.finalize())));
        assert_eq!(fast, slow);

        for key in ["a/fast.csv", "a/slow.csv"] {
            assert!(store.get_bytes(&bucket, key).await.expect("get") == whole);
            let head = store
                .client()
                .head_object()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .expect("head");
            assert_eq!(head.e_tag(), Some(format!("\"{fast}\"").as_str()));
            assert_eq!(head.content_type(), Some("text/csv"));
            assert_eq!(head.content_length(), Some(whole.len() as i64));
            let ranged = store
                .client()
                .get_object()
                .bucket(&bucket)
                .key(key)
                .range("bytes=5242870-5242889")
                .send()
                .await
                .expect("ranged get");
            let body = ranged.body.collect().await.expect("body").into_bytes();
            assert_eq!(body.as_ref(), &whole[5_242_870..5_242_890]);
        }
        assert_only_attributes_left(dir.path(), 2);
        let listed = store.list(&bucket, "a/").await.expect("list");
        assert_eq!(listed.len(), 2);
    }

    /// A part under 5 MiB before the last is refused as s3s-fs refuses it, and the upload
    /// stays open until aborted; an aborted upload leaves nothing.
    #[tokio::test]
    async fn small_parts_are_refused_and_aborts_leave_nothing() {
        let TestEndpoint { dir, store, s3 } = TestEndpoint::start().await;
        let bucket = store.datasets_bucket.clone();
        let parts = vec![bytes(1024, 1), bytes(1024, 2)];
        let refused = upload(&store, &bucket, "small.csv", &parts, false)
            .await
            .expect_err("too small");
        assert!(refused.contains("EntityTooSmall"), "{refused}");
        assert_eq!(s3.fast_joins(), 0);
        assert!(
            !store
                .object_exists(&bucket, "small.csv")
                .await
                .expect("exists")
        );
        assert_eq!(hidden_files(dir.path()), Vec::<String>::new());

        // One part, however small, is a whole object.
        let one = upload(&store, &bucket, "one.csv", &parts[..1], false)
            .await
            .expect("one part");
        assert_eq!(s3.in_place_completions(), 1);
        assert_eq!(
            one,
            format!(
                "{}-1",
                hex::encode(Md5::checksum(&Md5::checksum(&parts[0])))
            )
        );
        assert_eq!(
            store.get_bytes(&bucket, "one.csv").await.expect("get"),
            parts[0]
        );
    }

    /// The object writer's parts (unsigned payloads on this loopback endpoint, checked by
    /// their CRC32) are written in place and become the object written.
    #[tokio::test]
    async fn the_object_writer_round_trips_through_the_assembly_file() {
        let TestEndpoint { dir, store, s3 } = TestEndpoint::start().await;
        let bucket = store.datasets_bucket.clone();
        let data = bytes(2 * crate::s3::PART_SIZE + 12_345, 7);
        let mut writer = store.writer(&bucket, "w/examples.csv");
        for piece in data.chunks(300_000) {
            writer.write(piece).await.expect("write");
        }
        assert_eq!(writer.finish().await.expect("finish"), data.len() as u64);
        assert_eq!((s3.in_place_completions(), s3.parts_in_place()), (1, 3));
        assert_eq!(s3.fast_joins(), 0);
        assert!(
            store
                .get_bytes(&bucket, "w/examples.csv")
                .await
                .expect("get")
                == data
        );
        assert_only_attributes_left(dir.path(), 1);
    }

    /// Creates a multipart upload of `key`.
    async fn create(store: &ObjectStore, bucket: &str, key: &str) -> String {
        let created = store
            .client()
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("create");
        created.upload_id().expect("upload id").to_string()
    }

    /// Uploads part `number` of `upload_id` and answers it as CompleteMultipartUpload names it.
    async fn part(
        store: &ObjectStore,
        (bucket, key, upload_id): (&str, &str, &str),
        number: i32,
        bytes: &[u8],
    ) -> CompletedPart {
        let uploaded = store
            .client()
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .expect("upload part");
        assert_eq!(
            uploaded.e_tag(),
            Some(format!("\"{}\"", hex::encode(Md5::checksum(bytes))).as_str())
        );
        CompletedPart::builder()
            .part_number(number)
            .set_e_tag(uploaded.e_tag().map(str::to_string))
            .build()
    }

    async fn complete(
        store: &ObjectStore,
        (bucket, key, upload_id): (&str, &str, &str),
        mut parts: Vec<CompletedPart>,
    ) -> String {
        parts.sort_by_key(|part| part.part_number);
        let done = store
            .client()
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .expect("complete");
        done.e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    }

    /// Only `objects` objects' attribute and ETag files are left at the root: no upload,
    /// part, assembly or temporary file.
    fn assert_only_attributes_left(dir: &Path, objects: usize) {
        let hidden = hidden_files(dir);
        assert_eq!(hidden.len(), 2 * objects, "{hidden:?}");
        assert!(
            hidden
                .iter()
                .all(|name| name.ends_with(".metadata.json") || name.ends_with(".internal.json")),
            "{hidden:?}"
        );
    }

    fn e_tag_of(parts: &[&[u8]]) -> String {
        let mut digest = Md5::new();
        for part in parts {
            digest.update(&Md5::checksum(part));
        }
        format!("{}-{}", hex::encode(digest.finalize()), parts.len())
    }

    /// Parts of one stride and a shorter last part, in any order, become the object by a
    /// rename of the assembly file; the object, its ETag and the files left are what s3s-fs
    /// would have left.
    #[tokio::test]
    async fn parts_in_place_are_renamed_into_the_object() {
        let TestEndpoint { dir, store, s3 } = TestEndpoint::start().await;
        let bucket = store.datasets_bucket.clone();
        let parts = [
            bytes(5 * 1024 * 1024, 1),
            bytes(5 * 1024 * 1024, 2),
            bytes(5 * 1024 * 1024, 3),
            bytes(777, 4),
        ];
        let id = create(&store, &bucket, "b/in-place.csv").await;
        let upload = (bucket.as_str(), "b/in-place.csv", id.as_str());
        let mut completed = Vec::new();
        for number in [2, 1, 4, 3] {
            completed.push(part(&store, upload, number, &parts[number as usize - 1]).await);
        }
        let e_tag = complete(&store, upload, completed).await;
        assert_eq!((s3.in_place_completions(), s3.parts_in_place()), (1, 4));
        assert_eq!(s3.fast_joins(), 0);
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        assert_eq!(e_tag, e_tag_of(&refs));
        assert!(
            store
                .get_bytes(&bucket, "b/in-place.csv")
                .await
                .expect("get")
                == parts.concat()
        );
        let head = store
            .client()
            .head_object()
            .bucket(&bucket)
            .key("b/in-place.csv")
            .send()
            .await
            .expect("head");
        assert_eq!(head.e_tag(), Some(format!("\"{e_tag}\"").as_str()));
        assert_eq!(head.content_length(), Some(parts.concat().len() as i64));
        assert_only_attributes_left(dir.path(), 1);
    }

    /// A short last part uploaded first fixes a short stride: the longer parts go to part
    /// files, and the completion joins them with the one in place.
    #[tokio::test]
    async fn parts_longer_than_the_stride_go_to_part_files() {
        let TestEndpoint { dir, store, s3 } = TestEndpoint::start().await;
        let bucket = store.datasets_bucket.clone();
        let parts = [bytes(5 * 1024 * 1024, 5), bytes(4096, 6)];
        let id = create(&store, &bucket, "c.csv").await;
        let upload = (bucket.as_str(), "c.csv", id.as_str());
        let last = part(&store, upload, 2, &parts[1]).await;
        let first = part(&store, upload, 1, &parts[0]).await;
        let e_tag = complete(&store, upload, vec![first, last]).await;
        assert_eq!(s3.parts_in_place(), 1);
        assert_eq!((s3.fast_joins(), s3.in_place_completions()), (1, 0));
        assert_eq!(e_tag, e_tag_of(&[&parts[0], &parts[1]]));
        assert!(store.get_bytes(&bucket, "c.csv").await.expect("get") == parts.concat());
        assert_only_attributes_left(dir.path(), 1);
    }

    /// A part uploaded again replaces the one in place, ListParts sees the parts in place,
    /// and the object is made of the parts last uploaded.
    #[tokio::test]
    async fn parts_uploaded_again_and_listed_are_the_ones_completed() {
        let TestEndpoint { dir, store, s3 } = TestEndpoint::start().await;
        let bucket = store.datasets_bucket.clone();
        let parts = [
            bytes(5 * 1024 * 1024, 7),
            bytes(5 * 1024 * 1024, 8),
            bytes(10, 9),
        ];
        let again = bytes(5 * 1024 * 1024, 10);
        let id = create(&store, &bucket, "d.csv").await;
        let upload = (bucket.as_str(), "d.csv", id.as_str());
        let mut completed = Vec::new();
        for (index, bytes) in parts.iter().enumerate() {
            completed.push(part(&store, upload, index as i32 + 1, bytes).await);
        }
        completed[1] = part(&store, upload, 2, &again).await;
        let listed = store
            .client()
            .list_parts()
            .bucket(&bucket)
            .key("d.csv")
            .upload_id(&id)
            .send()
            .await
            .expect("list parts");
        let mut sizes: Vec<(i32, i64)> = listed
            .parts()
            .iter()
            .map(|p| {
                (
                    p.part_number().unwrap_or_default(),
                    p.size().unwrap_or_default(),
                )
            })
            .collect();
        sizes.sort_unstable();
        assert_eq!(
            sizes,
            vec![(1, 5 * 1024 * 1024), (2, 5 * 1024 * 1024), (3, 10)]
        );
        // Parts after the listing go to part files.
        let before = s3.parts_in_place();
        completed[2] = part(&store, upload, 3, &parts[2]).await;
        assert_eq!(s3.parts_in_place(), before);
        let e_tag = complete(&store, upload, completed).await;
        assert_eq!(e_tag, e_tag_of(&[&parts[0], &again, &parts[2]]));
        assert_eq!((s3.fast_joins(), s3.in_place_completions()), (1, 0));
        let whole = [parts[0].as_slice(), &again, &parts[2]].concat();
        assert!(store.get_bytes(&bucket, "d.csv").await.expect("get") == whole);
        assert_only_attributes_left(dir.path(), 1);
    }

    /// Parts acknowledged before the endpoint stops are there when it starts again: the
    /// upload completes from the assembly file its log describes.
    #[tokio::test]
    async fn parts_in_place_survive_a_restart() {
        let TestEndpoint { dir, store, s3 } = TestEndpoint::start().await;
        let bucket = store.datasets_bucket.clone();
        let parts = [
            bytes(5 * 1024 * 1024, 11),
            bytes(5 * 1024 * 1024, 12),
            bytes(3, 13),
        ];
        let id = create(&store, &bucket, "e.csv").await;
        let mut completed = Vec::new();
        for (index, bytes) in parts.iter().enumerate() {
            let upload = (bucket.as_str(), "e.csv", id.as_str());
            completed.push(part(&store, upload, index as i32 + 1, bytes).await);
        }
        // An upload that ended in the middle of the log leaves no trace either.
        let orphan = uuid::Uuid::new_v4().hyphenated().to_string();
        std::fs::write(assembly_path(dir.path(), &orphan), b"x").expect("orphan");
        std::fs::write(assembly_log_path(dir.path(), &orphan), b"stride 1\n").expect("orphan");
        drop(s3);
        drop(store);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let config = crate::config::S3Config::default();
        let s3 = super::super::EmbeddedS3::start(
            dir.path(),
            listener,
            &config.access_key,
            &config.secret_key,
        )
        .await
        .expect("restart");
        let store = ObjectStore::new(&config, &s3.endpoint());
        let upload = (bucket.as_str(), "e.csv", id.as_str());
        let e_tag = complete(&store, upload, completed).await;
        assert_eq!(s3.in_place_completions(), 1);
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        assert_eq!(e_tag, e_tag_of(&refs));
        assert!(store.get_bytes(&bucket, "e.csv").await.expect("get") == parts.concat());
        assert_only_attributes_left(dir.path(), 1);
    }
}
