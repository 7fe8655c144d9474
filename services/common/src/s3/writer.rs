//! Streaming object writes: bytes are buffered into parts and sent as a multipart upload, so a
//! large object never sits in memory. Nothing is visible under the key until [`ObjectWriter::finish`]
//! completes; [`ObjectWriter::abort`] (or an error) discards the parts.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::S3Error;

/// Size of each uploaded part (S3's minimum is 5 MiB for all but the last part).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// A streaming writer of one object.
#[derive(Debug)]
pub struct ObjectWriter {
    client: Client,
    bucket: String,
    key: String,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    written: u64,
}

impl ObjectWriter {
    pub(super) fn new(client: Client, bucket: &str, key: &str) -> Self {
        Self {
            client,
            bucket: bucket.to_string(),
            key: key.to_string(),
            buffer: Vec::with_capacity(64 * 1024),
            upload_id: None,
            parts: Vec::new(),
            written: 0,
        }
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
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), S3Error> {
        self.buffer.extend_from_slice(bytes);
        self.written += bytes.len() as u64;
        while self.buffer.len() >= PART_SIZE {
            let rest = self.buffer.split_off(PART_SIZE);
            let part = std::mem::replace(&mut self.buffer, rest);
            self.upload_part(part).await?;
        }
        Ok(())
    }

    async fn upload_part(&mut self, part: Vec<u8>) -> Result<(), S3Error> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
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
                id
            }
        };
        let number = i32::try_from(self.parts.len() + 1)
            .map_err(|_| S3Error::Other("too many parts".into()))?;
        let uploaded = crate::metrics::timed_s3(
            "upload_part",
            self.client
                .upload_part()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(part))
                .send(),
        )
        .await
        .map_err(|err| S3Error::from_sdk("upload part", err))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
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
        if !self.buffer.is_empty() {
            let last = std::mem::take(&mut self.buffer);
            if let Err(err) = self.upload_part(last).await {
                self.abort_upload(&upload_id).await;
                return Err(err);
            }
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
    pub async fn abort(self) {
        if let Some(upload_id) = self.upload_id.clone() {
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
