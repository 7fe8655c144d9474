//! Streaming object writes: bytes are buffered into parts and sent as a multipart upload, so a
//! large object never sits in memory. Up to [`PARTS_IN_FLIGHT`] parts upload in the background while
//! the writer fills the next one, so the producer is not stopped for each part's round trip.
//! Nothing is visible under the key until [`ObjectWriter::finish`] completes;
//! [`ObjectWriter::abort`] (or an error) discards the parts.

use std::collections::VecDeque;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::S3Error;

/// Size of each uploaded part (S3's minimum is 5 MiB for all but the last part).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts uploading at once; memory held is about `(PARTS_IN_FLIGHT + 1) × PART_SIZE`. Two: an
/// endpoint hashes (MD5) each part as it arrives, and with one at a time the writer waited on it.
pub const PARTS_IN_FLIGHT: usize = 2;

type PartUpload = tokio::task::JoinHandle<Result<CompletedPart, S3Error>>;

/// A streaming writer of one object.
#[derive(Debug)]
pub struct ObjectWriter {
    client: Client,
    bucket: String,
    key: String,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    /// Parts sent so far (the next part's number is one more).
    sent: i32,
    /// Uploads under way, oldest first.
    in_flight: VecDeque<PartUpload>,
    parts: Vec<CompletedPart>,
    written: u64,
    /// Whether each part's request signs its payload's sha256 (see [`ObjectWriter::sign_payloads`]).
    sign_payloads: bool,
}

impl ObjectWriter {
    pub(super) fn new(client: Client, bucket: &str, key: &str) -> Self {
        Self {
            client,
            bucket: bucket.to_string(),
            key: key.to_string(),
            buffer: Vec::with_capacity(64 * 1024),
            upload_id: None,
            sent: 0,
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            written: 0,
            sign_payloads: true,
        }
    }

    /// Whether the parts' requests carry their payload's sha256 in the signature (SigV4's
    /// default) or `UNSIGNED-PAYLOAD`. Unsigned, nothing hashes each part twice more (once to
    /// sign, once to check the signature); the parts still carry the SDK's CRC32 checksum,
    /// which S3 and MinIO verify. Only for endpoints where nothing can change a request on the
    /// way.
    pub(super) fn sign_payloads(mut self, sign: bool) -> Self {
        self.sign_payloads = sign;
        self
    }

    /// The key being written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes, uploading a part whenever a full one has accumulated.
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), S3Error> {
        self.written += bytes.len() as u64;
        // The buffer is filled to exactly a part, never past it: growing it past PART_SIZE
        // would double its capacity (and copy it) once per part.
        while !bytes.is_empty() {
            let room = PART_SIZE - self.buffer.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = later;
            if self.buffer.len() == PART_SIZE {
                // A large object: the next parts get their size at once, not by doubling.
                let part = std::mem::replace(&mut self.buffer, Vec::with_capacity(PART_SIZE));
                self.upload_part(part).await?;
            }
        }
        Ok(())
    }

    /// Starts uploading `part` (creating the multipart upload first if need be), after waiting
    /// for the oldest upload when [`PARTS_IN_FLIGHT`] are under way.
    async fn upload_part(&mut self, part: Vec<u8>) -> Result<(), S3Error> {
        let upload_id = self.upload_id().await?;
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_oldest().await?;
        }
        self.sent = self
            .sent
            .checked_add(1)
            .ok_or_else(|| S3Error::Other("too many parts".into()))?;
        let number = self.sent;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(part));
        let sign = self.sign_payloads;
        self.in_flight.push_back(tokio::spawn(async move {
            let request = request.customize();
            let request = if sign {
                request
            } else {
                request.disable_payload_signing()
            };
            let uploaded = crate::metrics::timed_s3("upload_part", request.send())
                .await
                .map_err(|err| S3Error::from_sdk("upload part", err))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag().map(str::to_string))
                .build())
        }));
        Ok(())
    }

    /// The multipart upload's id, created on first use.
    async fn upload_id(&mut self) -> Result<String, S3Error> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let created = crate::metrics::timed_s3(
            "create_multipart_upload",
            self.client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .send(),
        )
        .await
        .map_err(|err| S3Error::from_sdk("create multipart upload", err))?;
        let id = created
            .upload_id()
            .ok_or_else(|| S3Error::Other("multipart upload without an id".into()))?
            .to_string();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    /// Waits for the oldest upload under way and records its part.
    async fn wait_oldest(&mut self) -> Result<(), S3Error> {
        let Some(upload) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let part = upload
            .await
            .map_err(|err| S3Error::Other(format!("upload part task: {err}")))??;
        self.parts.push(part);
        Ok(())
    }

    /// Waits for every upload under way (all of them, even after one failed); the first error.
    async fn wait_all(&mut self) -> Result<(), S3Error> {
        let mut outcome = Ok(());
        while !self.in_flight.is_empty() {
            let waited = self.wait_oldest().await;
            outcome = outcome.and(waited);
        }
        outcome
    }

    /// Uploads what is left and makes the object visible; returns its size.
    pub async fn finish(mut self) -> Result<u64, S3Error> {
        let Some(upload_id) = self.upload_id.clone() else {
            // Small object: one PUT.
            let body = std::mem::take(&mut self.buffer);
            crate::metrics::timed_s3(
                "put_object",
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .body(ByteStream::from(body))
                    .send(),
            )
            .await
            .map_err(|err| S3Error::from_sdk("put object", err))?;
            return Ok(self.written);
        };
        let last = std::mem::take(&mut self.buffer);
        let sent = if last.is_empty() {
            Ok(())
        } else {
            self.upload_part(last).await
        };
        if let Err(err) = sent.and(self.wait_all().await) {
            self.abort_upload(&upload_id).await;
            return Err(err);
        }
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(std::mem::take(&mut self.parts)))
            .build();
        let result = crate::metrics::timed_s3(
            "complete_multipart_upload",
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&upload_id)
                .multipart_upload(completed)
                .send(),
        )
        .await;
        if let Err(err) = result {
            self.abort_upload(&upload_id).await;
            return Err(S3Error::from_sdk("complete multipart upload", err));
        }
        Ok(self.written)
    }

    /// Discards everything written; the key is left as it was.
    pub async fn abort(mut self) {
        if let Some(upload_id) = self.upload_id.clone() {
            // A part still uploading after the abort could recreate it on some stores.
            let _ = self.wait_all().await;
            self.abort_upload(&upload_id).await;
        }
    }

    async fn abort_upload(&self, upload_id: &str) {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(err) = result {
            tracing::warn!(key = %self.key, error = %S3Error::from_sdk("abort multipart upload", err), "abort failed");
        }
    }
}
