//! The object store: segments and attachments, on S3-compatible storage
//! (services) or the local filesystem (embedded), behind one small wrapper
//! that counts and times every request.
//!
//! `object_store` already abstracts S3 and the filesystem, so this is a
//! struct, not a trait: the two modes differ only in the store it wraps.
//!
//! A missing bucket is created on the first readiness probe that finds it
//! missing (`NoSuchBucket`): a fresh MinIO or s3s-fs works without a separate
//! tool. object_store has no create-bucket call, so that one request is a
//! SigV4-signed `PUT /<bucket>` (signed by object_store's own signer).

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredential};
use object_store::client::{HttpRequest, HttpRequestBody};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use reqwest::header::{HeaderValue, CONTENT_TYPE};

use super::StoreError;
use crate::config::S3Config;
use crate::telemetry::Metrics;

/// The key readiness lists under: cheap, and it proves the bucket exists and
/// the credentials are accepted.
const PROBE_PREFIX: &str = "msgd-readyz";

#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// Human description (`s3 bucket x at y`, `directory z`) for errors and logs.
    location: String,
    /// The bucket name, or `local` for the filesystem; for log fields.
    pub bucket: String,
    metrics: Metrics,
    dependency: &'static str,
    /// The S3 settings, to create the bucket when it is missing; `None` on the filesystem.
    s3: Option<Arc<S3Config>>,
    /// The S3 client again, as the signer of presigned URLs; `None` on the filesystem.
    signer: Option<Arc<object_store::aws::AmazonS3>>,
}

impl Objects {
    pub fn s3(config: &S3Config, metrics: &Metrics) -> anyhow::Result<Objects> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(config.secret_access_key.expose())
            .with_virtual_hosted_style_request(!config.path_style)
            .with_retry(RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(30), ..Default::default() })
            .with_client_options(
                ClientOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(60)),
            );
        let location = match &config.endpoint {
            Some(endpoint) => {
                builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
                format!("s3 bucket `{}` at {}", config.bucket, crate::config::redact_url(endpoint))
            }
            None => format!("s3 bucket `{}` in {}", config.bucket, config.region),
        };
        let store = Arc::new(builder.build().with_context(|| format!("cannot configure {location}"))?);
        Ok(Objects {
            signer: Some(store.clone()),
            store,
            location,
            bucket: config.bucket.clone(),
            metrics: metrics.clone(),
            dependency: "s3",
            s3: Some(Arc::new(config.clone())),
        })
    }

    pub(crate) fn local(dir: &FsPath, metrics: &Metrics) -> anyhow::Result<Objects> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the object directory {}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("cannot use {} as an object store", dir.display()))?
            .with_automatic_cleanup(true);
        Ok(Objects {
            store: Arc::new(store),
            location: format!("directory {}", dir.display()),
            bucket: "local".into(),
            metrics: metrics.clone(),
            dependency: "filesystem",
            s3: None,
            signer: None,
        })
    }

    /// Where the objects live, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Proves the store answers; an S3 bucket that does not exist is created
    /// (and the probe repeated).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let probe = self.probe().await;
        match (&probe, &self.s3) {
            (Err(StoreError::Unavailable { message, .. }), Some(s3)) if message.contains("NoSuchBucket") => {
                match create_bucket(s3).await {
                    Ok(()) => {
                        tracing::warn!(
                            component = "store",
                            dependency = "s3",
                            "storage.bucket" = %s3.bucket,
                            location = %self.location,
                            "the bucket did not exist: created it"
                        );
                        self.probe().await
                    }
                    Err(why) => Err(StoreError::Unavailable {
                        dependency: self.dependency,
                        message: format!("{message}; creating the bucket failed: {why}"),
                    }),
                }
            }
            _ => probe,
        }
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let prefix = Path::from(PROBE_PREFIX);
        self.timed("list", async {
            match self.store.list(Some(&prefix)).next().await {
                None | Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e),
            }
        })
        .await
    }

    /// An object's size in bytes (a HEAD request on S3).
    pub async fn size(&self, key: &str) -> Result<u64, StoreError> {
        let path = Path::from(key);
        self.timed("head", async { Ok(self.store.head(&path).await?.size) }).await
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = Path::from(key);
        self.timed("put", async { self.store.put(&path, PutPayload::from(bytes)).await.map(|_| ()) }).await
    }

    /// Uploads an object: in one request up to `part_size` bytes, above it in
    /// parts of exactly `part_size` but the last (as R2 requires).
    pub async fn put_object(&self, key: &str, bytes: Vec<u8>, part_size: usize) -> Result<(), StoreError> {
        if bytes.len() <= part_size {
            return self.put(key, bytes).await;
        }
        let path = Path::from(key);
        self.timed("put_multipart", async {
            let upload = self.store.put_multipart(&path).await?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, part_size);
            writer.write(&bytes);
            writer.finish().await.map(|_| ())
        })
        .await
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = Path::from(key);
        self.timed("get", async { Ok(self.store.get(&path).await?.bytes().await?.to_vec()) }).await
    }

    /// Bytes `[start, end)` of an object: how readers fetch one block.
    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Vec<u8>, StoreError> {
        let path = Path::from(key);
        self.timed("get_range", async { Ok(self.store.get_range(&path, start..end).await?.to_vec()) }).await
    }

    /// Deletes an object; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = Path::from(key);
        self.timed("delete", async {
            match self.store.delete(&path).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            }
        })
        .await
    }

    /// A URL that lets its holder PUT `content_type` bytes at `key` until
    /// `expires_in` has passed (S3 checks the signed content type; the size
    /// and hash are the caller's to check afterwards: a signer may not bind
    /// `content-length`); `None` on the filesystem, where msgd receives uploads itself.
    pub async fn presigned_put(
        &self,
        key: &str,
        content_type: &str,
        expires_in: Duration,
    ) -> Result<Option<String>, StoreError> {
        let Some(signer) = &self.signer else { return Ok(None) };
        let value = HeaderValue::from_str(content_type).map_err(|e| StoreError::unavailable(self.dependency, e))?;
        let options = SignedUrlOptions::new().with_signed_header(CONTENT_TYPE, value);
        let path = Path::from(key);
        let url =
            self.timed("presign", signer.signed_url_opts(reqwest::Method::PUT, &path, expires_in, &options)).await?;
        Ok(Some(url.to_string()))
    }

    /// A URL that lets its holder GET `key` until `expires_in` has passed,
    /// answered with `content_disposition`; `None` on the filesystem.
    pub async fn presigned_get(
        &self,
        key: &str,
        content_disposition: &str,
        expires_in: Duration,
    ) -> Result<Option<String>, StoreError> {
        let Some(signer) = &self.signer else { return Ok(None) };
        let options = SignedUrlOptions::new().with_query([("response-content-disposition", content_disposition)]);
        let path = Path::from(key);
        let url =
            self.timed("presign", signer.signed_url_opts(reqwest::Method::GET, &path, expires_in, &options)).await?;
        Ok(Some(url.to_string()))
    }

    /// Every object under `prefix` with its size and last-modified time (Unix ms), sorted by key.
    pub async fn list_detailed(&self, prefix: &str) -> Result<Vec<(String, u64, i64)>, StoreError> {
        let path = Path::from(prefix);
        let mut objects = self
            .timed("list", async {
                let metas: Vec<_> = self.store.list(Some(&path)).collect().await;
                metas
                    .into_iter()
                    .map(|m| m.map(|m| (m.location.to_string(), m.size, m.last_modified.timestamp_millis())))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        objects.sort();
        Ok(objects)
    }

    /// Every object key under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let path = Path::from(prefix);
        let mut keys = self
            .timed("list", async {
                let metas: Vec<_> = self.store.list(Some(&path)).collect().await;
                metas.into_iter().map(|m| m.map(|m| m.location.to_string())).collect::<Result<Vec<_>, _>>()
            })
            .await?;
        keys.sort();
        Ok(keys)
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = request.await;
        self.metrics
            .object_store_request_duration_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.object_store_requests_total.with_label_values(&[op, outcome]).inc();
        result.map_err(|e| StoreError::Unavailable {
            dependency: self.dependency,
            message: format!("{} failed on {}: {}", op, self.location, describe(&e)),
        })
    }
}

/// S3 `CreateBucket`. An existing bucket of ours (`BucketAlreadyOwnedByYou`,
/// 409) counts as success: another instance may have created it first.
async fn create_bucket(config: &S3Config) -> Result<(), String> {
    let url = bucket_url(config)?;
    // Outside us-east-1 AWS wants the region named in the body; R2's `auto` and
    // us-east-1 take an empty body.
    let body = if matches!(config.region.as_str(), "us-east-1" | "auto") {
        String::new()
    } else {
        format!(
            concat!(
                r#"<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#,
                "<LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
            ),
            config.region
        )
    };
    let mut request = HttpRequest::new(HttpRequestBody::from(body.clone()));
    *request.method_mut() = reqwest::Method::PUT;
    *request.uri_mut() = url.as_str().parse().map_err(|e| format!("bad bucket URL {url}: {e}"))?;
    let credential = AwsCredential {
        key_id: config.access_key_id.clone(),
        secret_key: config.secret_access_key.expose().to_string(),
        token: None,
    };
    AwsAuthorizer::new(&credential, "s3", &config.region)
        .try_authorize(&mut request, None)
        .map_err(|e| format!("cannot sign the request: {e}"))?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let reply = client
        .put(url.as_str())
        .headers(request.headers().clone())
        .body(body)
        .send()
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    let status = reply.status();
    let text = reply.text().await.unwrap_or_default();
    if status.is_success() || text.contains("BucketAlreadyOwnedByYou") {
        return Ok(());
    }
    let code = text.split("<Code>").nth(1).and_then(|rest| rest.split("</Code>").next()).unwrap_or("no error code");
    Err(format!("PUT {url} answered {status} ({code})"))
}

/// The URL of the bucket itself, addressed as the store addresses it.
fn bucket_url(config: &S3Config) -> Result<url::Url, String> {
    let endpoint = match &config.endpoint {
        Some(endpoint) => endpoint.clone(),
        None => format!("https://s3.{}.amazonaws.com", config.region),
    };
    let mut url = url::Url::parse(&endpoint).map_err(|e| format!("bad s3.endpoint {endpoint}: {e}"))?;
    if config.path_style {
        url.path_segments_mut()
            .map_err(|()| format!("bad s3.endpoint {endpoint}"))?
            .pop_if_empty()
            .push(&config.bucket);
    } else {
        let host = url.host_str().ok_or_else(|| format!("s3.endpoint {endpoint} has no host"))?.to_string();
        url.set_host(Some(&format!("{}.{host}", config.bucket))).map_err(|e| format!("bad bucket host: {e}"))?;
    }
    Ok(url)
}

/// The most useful line of an object_store error: S3 error codes (NoSuchBucket,
/// SignatureDoesNotMatch, InvalidAccessKeyId) sit in the innermost source.
fn describe(err: &object_store::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        let line = inner.to_string();
        if !text.contains(&line) {
            text = format!("{text}: {line}");
        }
        source = inner.source();
    }
    text
}
