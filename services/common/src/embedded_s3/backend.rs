//! The embedded endpoint's storage: s3s-fs's file system backend, with two of its operations
//! made cheaper for large objects. Every other operation is s3s-fs's own.
//!
//! - GetObject of a whole object streams the file in 256 KiB reads instead of s3s-fs's 4 KiB
//!   ones (each a trip through tokio's blocking pool).
//! - CompleteMultipartUpload joins the parts with `std::io::copy`, which on Linux copies file
//!   to file inside the kernel (`copy_file_range`), and takes the multipart ETag from the part
//!   digests UploadPart already computed, instead of reading every byte back through a 64 KiB
//!   buffer and hashing it again.
//!
//! The second writes s3s-fs's on-disk layout itself (the upload's files, the object's
//! attribute and ETag files), so `s3s-fs` is pinned to the exact version in Cargo.toml, and
//! the tests below check each file against what s3s-fs reads back. Where anything is not as
//! the fast path expects (a conditional request, a part it did not see uploaded, a key that is
//! not a plain path), the request goes to s3s-fs unchanged.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use s3s::crypto::{Checksum, Md5};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use tokio_util::io::ReaderStream;

/// Bytes per read of a GetObject body.
const READ_BYTES: usize = 256 * 1024;
/// S3's smallest part, but for the last.
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// A part UploadPart stored: its MD5 (the part's ETag) and size.
#[derive(Debug, Clone, Copy)]
struct StoredPart {
    md5: [u8; 16],
    size: u64,
}

/// s3s-fs over `root`, with the fast paths above.
#[derive(Debug)]
pub(super) struct Backend {
    inner: FileSystem,
    root: PathBuf,
    /// The parts of open multipart uploads, by upload id and part number. An upload leaves it
    /// when it completes or is aborted.
    parts: Mutex<HashMap<String, HashMap<i32, StoredPart>>>,
    /// Uploads completed by the fast path.
    joins: Arc<AtomicU64>,
}

impl Backend {
    pub(super) fn new(root: &Path) -> std::io::Result<Self> {
        let inner =
            FileSystem::new(root).map_err(|err| std::io::Error::other(format!("{err:?}")))?;
        // s3s-fs resolves its root the same way.
        let root = std::env::current_dir()?.join(root).canonicalize()?;
        Ok(Self {
            inner,
            root,
            parts: Mutex::new(HashMap::new()),
            joins: Arc::default(),
        })
    }

    /// How many uploads the fast path completed, counted from now on.
    pub(super) fn joins(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.joins)
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
        self.root.join(format!(".upload-{upload_id}.json"))
    }

    fn part_path(&self, upload_id: &str, part_number: i32) -> PathBuf {
        self.root
            .join(format!(".upload_id-{upload_id}.part-{part_number}"))
    }

    fn forget_upload(&self, upload_id: &str) {
        if let Ok(mut parts) = self.parts.lock() {
            parts.remove(upload_id);
        }
    }

    /// The parts of `upload_id` the request names, in order, when every one was uploaded
    /// through this backend with the ETag the request gives.
    fn known_parts(
        &self,
        upload_id: &str,
        named: &[CompletedPart],
    ) -> Option<Vec<(i32, StoredPart)>> {
        let parts = self.parts.lock().ok()?;
        let stored = parts.get(upload_id)?;
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

    /// What the fast CompleteMultipartUpload of `req` does, with the upload's id; `None` when
    /// s3s-fs should complete it (see the module's documentation). Refuses what s3s-fs would
    /// refuse: another access key's upload, a part under 5 MiB before the last.
    async fn plan_join(
        &self,
        req: &S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<Option<(String, Join)>> {
        let input = &req.input;
        let Ok(upload_id) = uuid::Uuid::parse_str(&input.upload_id) else {
            return Ok(None);
        };
        let upload_id = upload_id.hyphenated().to_string();
        let named = input
            .multipart_upload
            .as_ref()
            .and_then(|upload| upload.parts.as_deref())
            .unwrap_or_default();
        let in_order = named
            .iter()
            .enumerate()
            .all(|(index, part)| part.part_number == i32::try_from(index + 1).ok());
        let known = self.known_parts(&upload_id, named);
        let object = self.object_path(&input.bucket, &input.key);
        let conditional = input.if_match.is_some() || input.if_none_match.is_some();
        let (Some(parts), Some(object), false, true, false) =
            (known, object, named.is_empty(), in_order, conditional)
        else {
            return Ok(None);
        };
        // The upload's owner, as s3s-fs records it: the access key that created it.
        let upload_info = self.upload_info_path(&upload_id);
        let owner = tokio::fs::read(&upload_info)
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Option<String>>(&bytes).ok());
        let Some(owner) = owner else {
            return Ok(None);
        };
        if owner.as_deref() != req.credentials.as_ref().map(|c| c.access_key.as_str()) {
            return Err(s3_error!(AccessDenied));
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
        let join = Join {
            root: self.root.clone(),
            object,
            parts: parts
                .iter()
                .map(|(number, _)| self.part_path(&upload_id, *number))
                .collect(),
            upload_info,
            upload_attributes: self.attributes_path(&input.bucket, &input.key, Some(&upload_id)),
            attributes: self.attributes_path(&input.bucket, &input.key, None),
            internal_info: self.internal_info_path(&input.bucket, &input.key),
            e_tag: multipart_e_tag(&parts),
        };
        Ok(Some((upload_id, join)))
    }
}

fn encode(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name)
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

/// What the fast CompleteMultipartUpload does on disk, on a blocking thread.
struct Join {
    root: PathBuf,
    object: PathBuf,
    parts: Vec<PathBuf>,
    upload_info: PathBuf,
    upload_attributes: PathBuf,
    attributes: PathBuf,
    internal_info: PathBuf,
    e_tag: String,
}

impl Join {
    fn run(self) -> std::io::Result<()> {
        // The whole object first, under a temporary name: if this fails, the upload is as it
        // was and can be completed again or aborted.
        let temporary = self.root.join(temporary_name());
        let joined = (|| {
            let mut out = std::fs::File::create(&temporary)?;
            for part in &self.parts {
                std::io::copy(&mut std::fs::File::open(part)?, &mut out)?;
            }
            Ok::<_, std::io::Error>(())
        })();
        if let Err(err) = joined {
            let _ = std::fs::remove_file(&temporary);
            return Err(err);
        }
        // Then what s3s-fs does, in its order: the upload ends, its attributes become the
        // object's, the object appears, its ETag is recorded, the parts go.
        std::fs::remove_file(&self.upload_info)?;
        if self.upload_attributes.exists() {
            std::fs::rename(&self.upload_attributes, &self.attributes)?;
        }
        if let Some(dir) = self.object.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(&temporary, &self.object)?;
        let info = serde_json::json!({ "e_tag": self.e_tag });
        write_atomically(&self.root, &self.internal_info, info.to_string().as_bytes())?;
        for part in &self.parts {
            std::fs::remove_file(part)?;
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
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
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
        if let (Some(md5), Ok(size), Ok(mut parts)) = (md5, size, self.parts.lock()) {
            parts
                .entry(upload_id)
                .or_default()
                .insert(number, StoredPart { md5, size });
        }
        Ok(response)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let Some((upload_id, join)) = self.plan_join(&req).await? else {
            return self.inner.complete_multipart_upload(req).await;
        };
        let e_tag = join.e_tag.clone();
        tokio::task::spawn_blocking(move || join.run())
            .await
            .map_err(|err| s3_error!(InternalError, "join task: {err}"))?
            .map_err(|err| s3_error!(err, InternalError))?;
        self.forget_upload(&upload_id);
        self.joins.fetch_add(1, Ordering::Relaxed);
        let input = req.input;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(e_tag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let upload_id = req.input.upload_id.clone();
        let response = self.inner.abort_multipart_upload(req).await?;
        self.forget_upload(&upload_id);
        Ok(response)
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

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        // A part this backend did not hash: the upload completes through s3s-fs.
        if let Ok(mut parts) = self.parts.lock()
            && let Some(upload) = parts.get_mut(&req.input.upload_id)
        {
            upload.remove(&req.input.part_number);
        }
        self.inner.upload_part_copy(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.inner.list_parts(req).await
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
        assert_eq!(s3.fast_joins(), 1);
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
        // Only the two objects' attribute and ETag files are left: no upload, part or
        // temporary file.
        let hidden = hidden_files(dir.path());
        assert_eq!(hidden.len(), 4, "{hidden:?}");
        assert!(
            hidden
                .iter()
                .all(|name| name.ends_with(".metadata.json") || name.ends_with(".internal.json")),
            "{hidden:?}"
        );
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
        assert_eq!(s3.fast_joins(), 1);
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
    /// their CRC32) join into the object written.
    #[tokio::test]
    async fn the_object_writer_round_trips_through_the_fast_join() {
        let TestEndpoint { dir, store, s3 } = TestEndpoint::start().await;
        let bucket = store.datasets_bucket.clone();
        let data = bytes(2 * crate::s3::PART_SIZE + 12_345, 7);
        let mut writer = store.writer(&bucket, "w/examples.csv");
        for piece in data.chunks(300_000) {
            writer.write(piece).await.expect("write");
        }
        assert_eq!(writer.finish().await.expect("finish"), data.len() as u64);
        assert_eq!(s3.fast_joins(), 1);
        assert!(
            store
                .get_bytes(&bucket, "w/examples.csv")
                .await
                .expect("get")
                == data
        );
        assert_eq!(hidden_files(dir.path()).len(), 2);
    }
}
