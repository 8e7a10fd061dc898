//! Objects in an S3-compatible service through aws-sdk-s3.
//!
//! Puts of unknown length are read one part at a time (bounded memory): a body that fits in one
//! part goes up as a single PutObject, a longer one as a multipart upload that is aborted on any
//! error, so a failed put never leaves a visible object. Gets stream the response body.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as AwsBody;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{
    ByteRange, ByteStream, Config, Error, Key, Multipart, Object, ObjectMeta, ObjectStore, Part,
    PutOptions,
};

/// S3's smallest allowed part (except the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// Connection settings for [`S3::connect`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`), may be empty.
    pub prefix: String,
    /// Custom endpoint (MinIO, s3s, R2); `None` for AWS.
    pub endpoint: Option<String>,
    /// Region name.
    pub region: String,
    /// Path-style addressing.
    pub path_style: bool,
    /// Multipart part size in bytes.
    pub part_size: u64,
    /// Static credentials; `None` uses the AWS default chain (environment, profile, …).
    pub credentials: Option<(String, String)>,
}

/// An S3 store.
#[derive(Debug, Clone)]
pub struct S3 {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
}

fn s3_err<E, R>(what: &str, key: &str, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            format!(
                "{} ({})",
                err.message().unwrap_or("no message"),
                err.code().unwrap_or("no code")
            )
        }
        other => format!("{other}: {:?}", std::error::Error::source(other)),
    };
    Error::S3(format!("{what} {key}: {detail}"))
}

fn to_ms(t: Option<&aws_sdk_s3::primitives::DateTime>) -> i64 {
    t.and_then(|t| t.to_millis().ok()).unwrap_or(0)
}

impl S3 {
    /// Builds a client from the `[storage]` config and the AWS environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, profiles, …).
    pub async fn from_env(config: &Config, bucket: &str, prefix: &str) -> Result<S3, Error> {
        let region = config
            .s3_region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string());
        S3::connect(Options {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: config.s3_endpoint.clone(),
            region,
            path_style: config.s3_path_style,
            part_size: config.s3_part_size,
            credentials: None,
        })
        .await
    }

    /// Builds a client from explicit options.
    pub async fn connect(options: Options) -> Result<S3, Error> {
        if options.part_size < MIN_PART_SIZE {
            return Err(Error::Config(format!(
                "s3_part_size {} is below S3's minimum part size of {MIN_PART_SIZE} bytes",
                options.part_size
            )));
        }
        let region = Region::new(options.region.clone());
        let shared = match &options.credentials {
            Some(_) => {
                aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(region.clone())
                    .no_credentials()
                    .load()
                    .await
            }
            None => {
                aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(region.clone())
                    .load()
                    .await
            }
        };
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .region(region)
            .force_path_style(options.path_style)
            // Plain Content-MD5/length semantics work with every S3-compatible server; the
            // newer default of streaming CRC trailers does not.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(ep) = &options.endpoint {
            b = b.endpoint_url(ep);
        }
        if let Some((id, secret)) = &options.credentials {
            b = b.credentials_provider(Credentials::new(id, secret, None, None, "moments-static"));
        }
        b = b.timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .build(),
        );
        Ok(S3 {
            client: Client::from_conf(b.build()),
            bucket: options.bucket,
            prefix: options.prefix,
            part_size: options.part_size as usize,
        })
    }

    /// The underlying client (tests create buckets with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.prefix, key)
        }
    }

    fn strip_prefix<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix)
                .and_then(|s| s.strip_prefix('/'))
                .unwrap_or(full)
        }
    }

    /// Reads from `body` until `buf` holds a full part or the stream ends.
    async fn fill(&self, body: &mut ByteStream, buf: &mut BytesMut) -> Result<bool, Error> {
        while buf.len() < self.part_size {
            match body.next().await {
                Some(chunk) => buf.extend_from_slice(&chunk?),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn put_multipart(
        &self,
        full: &str,
        key: &Key,
        first: Bytes,
        rest: BytesMut,
        body: &mut ByteStream,
        opts: &PutOptions,
    ) -> Result<(), Error> {
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full);
        if let Some(ct) = &opts.content_type {
            create = create.content_type(ct);
        }
        if let Some(cc) = &opts.cache_control {
            create = create.cache_control(cc);
        }
        let upload = create
            .send()
            .await
            .map_err(|e| s3_err("create multipart upload for", full, e))?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| Error::S3(format!("no upload id for {full}")))?
            .to_string();

        let result = async {
            let mut parts = Vec::new();
            let mut pending = Some(first);
            let mut buf = rest;
            let mut number = 1i32;
            loop {
                let Some(part) = pending.take() else { break };
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(AwsBody::from(part))
                    .send()
                    .await
                    .map_err(|e| s3_err("upload part of", full, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                );
                number += 1;
                let more = self.fill(body, &mut buf).await?;
                if more || !buf.is_empty() {
                    let take = buf.len().min(self.part_size);
                    pending = Some(buf.split_to(take).freeze());
                }
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| s3_err("complete multipart upload of", full, e))?;
            Ok::<_, Error>(())
        }
        .await;

        if let Err(e) = result {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
            tracing::warn!(key = %key, error = %e, "multipart upload aborted");
            return Err(e);
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for S3 {
    async fn put(
        &self,
        key: &Key,
        mut body: ByteStream,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, Error> {
        let full = self.full_key(key.as_str());
        let mut buf = BytesMut::with_capacity(self.part_size.min(1 << 20));
        let more = self.fill(&mut body, &mut buf).await?;
        // Look one chunk ahead: a body of exactly one part size still fits one PutObject.
        let mut rest = BytesMut::new();
        let more = more && self.fill_one(&mut body, &mut rest).await?;
        if !more && rest.is_empty() {
            let mut put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .body(AwsBody::from(buf.freeze()));
            if let Some(ct) = &opts.content_type {
                put = put.content_type(ct);
            }
            if let Some(cc) = &opts.cache_control {
                put = put.cache_control(cc);
            }
            put.send().await.map_err(|e| s3_err("put", &full, e))?;
        } else {
            let first = buf.split_to(buf.len().min(self.part_size)).freeze();
            buf.extend_from_slice(&rest);
            self.put_multipart(&full, key, first, buf, &mut body, opts)
                .await?;
        }
        self.head(key).await
    }

    async fn get(&self, key: &Key, range: Option<ByteRange>) -> Result<Object, Error> {
        let full = self.full_key(key.as_str());
        let mut req = self.client.get_object().bucket(&self.bucket).key(&full);
        if let Some(r) = range {
            req = req.range(r.header_value());
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                if let SdkError::ServiceError(se) = &e {
                    if se.err().is_no_such_key() {
                        return Err(Error::NotFound(key.to_string()));
                    }
                    if se.raw().status().as_u16() == 416 {
                        let size = self.head(key).await?.size;
                        return Err(Error::RangeNotSatisfiable { size });
                    }
                }
                return Err(s3_err("get", &full, e));
            }
        };
        let (range_out, size) = match out.content_range().and_then(parse_content_range) {
            Some((first, last, size)) => (Some((first, last)), size),
            None => (None, out.content_length().unwrap_or(0).max(0) as u64),
        };
        let meta = ObjectMeta {
            key: key.to_string(),
            size,
            content_type: out.content_type().map(str::to_string),
            cache_control: out.cache_control().map(str::to_string),
            etag: out.e_tag().map(str::to_string),
            modified_ms: to_ms(out.last_modified()),
        };
        // A server may ignore a range and send the whole object; report what was really sent.
        let range_out = if range.is_some() { range_out } else { None };
        let reader = out.body.into_async_read();
        Ok(Object {
            meta,
            range: range_out,
            body: Box::pin(tokio_util::io::ReaderStream::with_capacity(
                reader,
                64 * 1024,
            )),
        })
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta, Error> {
        let full = self.full_key(key.as_str());
        let out = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                if let SdkError::ServiceError(se) = &e
                    && (se.err().is_not_found() || se.raw().status().as_u16() == 404)
                {
                    return Err(Error::NotFound(key.to_string()));
                }
                return Err(s3_err("head", &full, e));
            }
        };
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            content_type: out.content_type().map(str::to_string),
            cache_control: out.cache_control().map(str::to_string),
            etag: out.e_tag().map(str::to_string),
            modified_ms: to_ms(out.last_modified()),
        })
    }

    async fn delete(&self, key: &Key) -> Result<(), Error> {
        let full = self.full_key(key.as_str());
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| s3_err("delete", &full, e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, Error> {
        let full_prefix = self.full_key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_err("list", &full_prefix, e))?;
            for obj in page.contents() {
                let Some(k) = obj.key() else { continue };
                out.push(ObjectMeta {
                    key: self.strip_prefix(k).to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    content_type: None,
                    cache_control: None,
                    etag: obj.e_tag().map(str::to_string),
                    modified_ms: to_ms(obj.last_modified()),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn check(&self) -> Result<(), Error> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| s3_err("head bucket", &self.bucket, e))?;
        Ok(())
    }

    fn multipart(&self) -> Option<&dyn Multipart> {
        Some(self)
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[async_trait]
impl Multipart for S3 {
    async fn create_multipart(&self, key: &Key, opts: &PutOptions) -> Result<String, Error> {
        let full = self.full_key(key.as_str());
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full);
        if let Some(ct) = &opts.content_type {
            req = req.content_type(ct);
        }
        if let Some(cc) = &opts.cache_control {
            req = req.cache_control(cc);
        }
        let out = req
            .send()
            .await
            .map_err(|e| s3_err("create multipart upload for", &full, e))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| Error::S3(format!("no upload id for {full}")))
    }

    async fn upload_part(
        &self,
        key: &Key,
        upload_id: &str,
        number: i32,
        data: Bytes,
    ) -> Result<Part, Error> {
        let full = self.full_key(key.as_str());
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload_id)
            .part_number(number)
            .body(AwsBody::from(data))
            .send()
            .await
            .map_err(|e| s3_err("upload part of", &full, e))?;
        Ok(Part {
            number,
            etag: out.e_tag().unwrap_or_default().to_string(),
        })
    }

    async fn upload_part_copy(
        &self,
        key: &Key,
        upload_id: &str,
        number: i32,
        source: &Key,
    ) -> Result<Part, Error> {
        let full = self.full_key(key.as_str());
        let src = format!(
            "{}/{}",
            self.bucket,
            copy_source_escape(&self.full_key(source.as_str()))
        );
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(src)
            .send()
            .await
            .map_err(|e| s3_err("copy a part into", &full, e))?;
        let etag = out
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string();
        Ok(Part { number, etag })
    }

    async fn complete_multipart(
        &self,
        key: &Key,
        upload_id: &str,
        parts: &[Part],
    ) -> Result<(), Error> {
        let full = self.full_key(key.as_str());
        let parts: Vec<CompletedPart> = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(&p.etag)
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_err("complete multipart upload of", &full, e))?;
        Ok(())
    }

    async fn abort_multipart(&self, key: &Key, upload_id: &str) -> Result<(), Error> {
        let full = self.full_key(key.as_str());
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| s3_err("abort multipart upload of", &full, e))?;
        Ok(())
    }
}

impl S3 {
    /// Reads at most one more chunk into `buf`; false when the stream has ended.
    async fn fill_one(&self, body: &mut ByteStream, buf: &mut BytesMut) -> Result<bool, Error> {
        loop {
            match body.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    if chunk.is_empty() {
                        continue;
                    }
                    buf.extend_from_slice(&chunk);
                    return Ok(true);
                }
                None => return Ok(false),
            }
        }
    }
}

/// Parses `bytes FIRST-LAST/SIZE`.
/// Percent-encodes a key for `x-amz-copy-source` (slashes stay).
fn copy_source_escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, size) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, size.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::{copy_source_escape, parse_content_range};

    #[test]
    fn copy_sources_are_escaped() {
        assert_eq!(
            copy_source_escape("p/uploads/ab.parts/00001"),
            "p/uploads/ab.parts/00001"
        );
        assert_eq!(copy_source_escape("a b+c"), "a%20b%2Bc");
    }

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("nonsense"), None);
    }
}
