//! Attachments: files sent in conversations (README, "Attachments").
//!
//! A member asks for an upload target ([`create_upload`]) declaring the
//! content type, size and SHA-256; msgd records the upload and answers where
//! to PUT the bytes: a presigned S3 URL bound to that key and content type
//! (services), or msgd's own upload route with a signed token
//! (embedded, [`receive_upload`], which checks size and hash as it stores).
//! A message then names the upload in its `attachments`
//! ([`check_references`]): it must be this app's and conversation's, match
//! what was declared, and its bytes must match the declared SHA-256 —
//! checked once, on first reference, where S3 received them. Members fetch
//! the file by id ([`download`]). Retention deletes uploads no message
//! referenced within `attachments.orphan_ttl`, and the others with their
//! window; backups copy them.
//!
//! Keys: `attachments/<app>/<yyyy>/<mm>/<dd>/<conversation>/<id>`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::context::Context;
use crate::envelope::Attachment;
use crate::error::{Code, Error};
use crate::ratelimit::Bucket;
use crate::store::AttachmentRow;

/// Where embedded mode receives uploads: `PUT /v1/uploads/{token}`.
pub const UPLOAD_ROUTE: &str = "/v1/uploads/";
/// The longest file name kept, in characters.
const MAX_FILENAME_CHARS: usize = 255;
/// How long a download URL stays valid (services).
const DOWNLOAD_TTL: Duration = Duration::from_secs(5 * 60);

/// What a client declares before uploading.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUpload {
    pub content_type: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    pub filename: Option<String>,
}

/// Where and how to upload: the same shape in both deployments.
#[derive(Debug, Clone, Serialize)]
pub struct UploadTarget {
    pub id: String,
    pub key: String,
    pub upload: Upload,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Upload {
    pub method: &'static str,
    /// Absolute (S3) or relative to msgd's base URL (embedded).
    pub url: String,
    /// Headers the upload must carry, exactly.
    pub headers: BTreeMap<String, String>,
}

/// What an embedded upload token says.
#[derive(Serialize, Deserialize)]
struct UploadToken {
    /// Always `upload`: a cursor signed with the same key can never pass as one.
    kind: String,
    app: String,
    id: String,
    exp: i64,
}

/// A download: a URL to redirect to (S3), or the bytes (embedded).
pub enum Download {
    Redirect(String),
    Bytes { bytes: Vec<u8>, content_type: String, disposition: String },
}

/// Records an upload the caller may make to `conversation_id` and answers its target.
pub async fn create_upload(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    request: CreateUpload,
    now: i64,
) -> Result<UploadTarget, Error> {
    // As for sending: a browser's publishable key with its user's token may upload.
    caller.require_participant()?;
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.writable()?.conversation_id;
    validate(ctx, &request)?;
    rate_limit(ctx, caller).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let key = object_key(&caller.app_id, now, &conversation_id, &id);
    let ttl = ctx.config.attachments.upload_ttl;
    let expires_at = now + ttl.as_millis() as i64;
    let row = AttachmentRow {
        app_id: caller.app_id.clone(),
        conversation_id,
        id: id.clone(),
        object_key: key.clone(),
        content_type: request.content_type.clone(),
        size: request.size as i64,
        sha256: request.sha256,
        filename: request.filename,
        uploaded_by: caller.user_id.clone(),
        created_at: now,
        upload_expires_at: expires_at,
        verified_at: None,
        referenced_at: None,
    };
    ctx.stores.metadata.insert_attachment(&row).await?;
    let url = match ctx.stores.objects.presigned_put(&key, &row.content_type, ttl).await? {
        Some(url) => url,
        None => {
            let token = UploadToken { kind: "upload".into(), app: row.app_id.clone(), id: id.clone(), exp: expires_at };
            format!("{UPLOAD_ROUTE}{}", crate::mac::sign_json(ctx.cursor_key().await?, &token))
        }
    };
    ctx.metrics.attachment_uploads_total.with_label_values(&["created"]).inc();
    let headers = BTreeMap::from([("content-type".to_string(), row.content_type.clone())]);
    Ok(UploadTarget { id, key, upload: Upload { method: "PUT", url, headers }, expires_at })
}

fn validate(ctx: &Context, request: &CreateUpload) -> Result<(), Error> {
    let max = ctx.config.limits.max_attachment_bytes;
    if request.size == 0 || request.size > max {
        return Err(Error::new(Code::AttachmentTooLarge, format!("an attachment is 1 to {max} bytes")));
    }
    let content_type = &request.content_type;
    if !is_media_type(content_type) {
        return Err(Error::new(
            Code::InvalidContentType,
            "content_type is a media type without parameters, like `image/png` (at most 255 characters)",
        ));
    }
    if !ctx.config.attachments.allows(content_type) {
        return Err(Error::new(
            Code::ContentTypeNotAllowed,
            format!("attachments of type {content_type:?} are not allowed here (attachments.allowed_types)"),
        ));
    }
    if !is_sha256_hex(&request.sha256) {
        return Err(Error::new(Code::InvalidAttachments, "sha256 must be 64 lowercase hex characters"));
    }
    if let Some(name) = &request.filename {
        let path_like = name.contains(['/', '\\']) || name.trim().is_empty();
        match crate::ids::display_text_problem(name, MAX_FILENAME_CHARS) {
            Some(why) => return Err(Error::new(Code::InvalidAttachments, format!("a filename {why}"))),
            None if path_like => {
                return Err(Error::new(Code::InvalidAttachments, "a filename is a name, without `/` or `\\`"))
            }
            None => {}
        }
    }
    Ok(())
}

/// `type/subtype` of RFC 9110 token characters, without parameters: what
/// the upload's `content-type` header will carry verbatim.
fn is_media_type(text: &str) -> bool {
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b);
    let token = |part: &str| !part.is_empty() && part.bytes().all(token_char);
    text.len() <= 255 && text.split_once('/').is_some_and(|(kind, subtype)| token(kind) && token(subtype))
}

pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `attachments/<app>/<yyyy>/<mm>/<dd>/<conversation>/<id>`, dated by `now` (UTC).
fn object_key(app_id: &str, now: i64, conversation_id: &str, id: &str) -> String {
    let stamp = crate::clock::format_ms(now); // 2026-11-28T05:15:00.123Z
    let date = stamp.get(..10).unwrap_or("1970-01-01").replace('-', "/");
    format!("attachments/{app_id}/{date}/{conversation_id}/{id}")
}

/// Upload targets per user (or per key, for an app caller).
async fn rate_limit(ctx: &Context, caller: &Caller) -> Result<(), Error> {
    let config = &ctx.config.attachments;
    let bucket = match &caller.user_id {
        Some(user) => format!("upload:u:{user}"),
        None => format!("upload:k:{}", caller.key_id),
    };
    let bucket = Bucket::new(bucket, config.upload_rate, config.upload_burst);
    let grant = ctx.stores.coordination.rate_limit(&caller.app_id, &[bucket], 1).await?;
    let Some((_, decision)) = grant.refused() else { return Ok(()) };
    ctx.metrics.rate_limited_total.with_label_values(&["upload"]).inc();
    let mut error = Error::new(
        Code::RateLimited,
        format!("too many uploads: {}/s with a burst of {}", config.upload_rate, config.upload_burst),
    );
    let (limit, rate) = (config.upload_burst, config.upload_rate);
    error.rate = Some(crate::error::RateLimitInfo { limit, window_seconds: f64::from(limit) / rate, decision });
    Err(error)
}

/// Embedded mode's upload route: the bytes for the upload a signed token
/// names, stored once they match the declared content type, size and SHA-256.
pub async fn receive_upload(
    ctx: &Context,
    token: &str,
    content_type: Option<&str>,
    bytes: Vec<u8>,
    now: i64,
) -> Result<(), Error> {
    let invalid = || Error::new(Code::InvalidUploadUrl, "this upload URL is not valid (forged or expired)");
    let token: UploadToken = crate::mac::verify_json(ctx.cursor_key().await?, token).ok_or_else(invalid)?;
    if token.kind != "upload" || token.exp < now {
        return Err(invalid());
    }
    let row = ctx.stores.metadata.get_attachment(&token.app, &token.id).await?.ok_or_else(invalid)?;
    let refuse = |why: String| {
        ctx.metrics.attachment_uploads_total.with_label_values(&["refused"]).inc();
        Err(Error::new(Code::AttachmentMismatch, why))
    };
    if content_type.map(|t| t.trim().to_ascii_lowercase()) != Some(row.content_type.to_ascii_lowercase()) {
        return refuse(format!("the upload must be sent with content-type {:?}", row.content_type));
    }
    if bytes.len() as i64 != row.size {
        return refuse(format!("{} bytes arrived; the upload declared {}", bytes.len(), row.size));
    }
    if sha256_hex(&bytes) != row.sha256 {
        return refuse("the bytes do not have the declared SHA-256".into());
    }
    ctx.stores.objects.put(&row.object_key, bytes).await?;
    ctx.stores.metadata.mark_attachment_verified(&row.app_id, &row.id, now).await?;
    ctx.metrics.attachment_uploads_total.with_label_values(&["stored"]).inc();
    ctx.metrics.attachment_uploaded_bytes_total.inc_by(row.size as u64);
    Ok(())
}

/// Checks the attachments a message names: each an upload of this app and
/// conversation, declared as the message says, with its bytes in place and
/// matching (checked on first reference); then records the reference.
pub async fn check_references(
    ctx: &Context,
    app_id: &str,
    conversation_id: &str,
    attachments: &[Attachment],
    now: i64,
) -> Result<(), Error> {
    let mut rows = Vec::with_capacity(attachments.len());
    for (i, attachment) in attachments.iter().enumerate() {
        let bad = |why: &str| Error::new(Code::InvalidAttachments, format!("attachments[{i}]: {why}"));
        let row = ctx.stores.metadata.attachment_by_key(&attachment.key).await?;
        let row = row
            .filter(|row| row.app_id == app_id && row.conversation_id == conversation_id)
            .ok_or_else(|| bad("no upload with this key in this conversation"))?;
        let declared = (row.content_type.as_str(), row.size as u64, row.sha256.as_str());
        if declared != (attachment.content_type.as_str(), attachment.size, attachment.sha256.as_str()) {
            return Err(bad("content_type, size or sha256 differ from what the upload declared"));
        }
        if row.verified_at.is_none() {
            verify_stored(ctx, &row, now).await.map_err(|why| bad(&why))?;
        }
        rows.push(row);
    }
    for row in rows {
        ctx.stores.metadata.mark_attachment_referenced(&row.app_id, &row.id, now).await?;
    }
    Ok(())
}

/// Reads an upload that S3 received and checks it against what was declared.
async fn verify_stored(ctx: &Context, row: &AttachmentRow, now: i64) -> Result<(), String> {
    let bytes = match ctx.stores.objects.get(&row.object_key).await {
        Ok(bytes) => bytes,
        Err(_) => return Err("not uploaded (yet)".into()),
    };
    if bytes.len() as i64 != row.size || sha256_hex(&bytes) != row.sha256 {
        ctx.metrics.attachment_uploads_total.with_label_values(&["refused"]).inc();
        return Err("the uploaded bytes do not match the declared size and sha256".into());
    }
    ctx.stores.metadata.mark_attachment_verified(&row.app_id, &row.id, now).await.map_err(|e| e.to_string())?;
    ctx.metrics.attachment_uploads_total.with_label_values(&["stored"]).inc();
    ctx.metrics.attachment_uploaded_bytes_total.inc_by(row.size as u64);
    Ok(())
}

/// A member's download of attachment `attachment_id` of `conversation_id`.
pub async fn download(
    ctx: &Context,
    caller: &Caller,
    conversation_id: &str,
    attachment_id: &str,
    now: i64,
) -> Result<Download, Error> {
    let conversation_id = ctx.membership.require_access(caller, conversation_id).await?.conversation_id;
    let missing = || Error::new(Code::AttachmentNotFound, "no such attachment in this conversation");
    let row = ctx.stores.metadata.get_attachment(&caller.app_id, attachment_id).await?;
    let row = row.filter(|row| row.conversation_id == conversation_id).ok_or_else(missing)?;
    if row.verified_at.is_none() {
        verify_stored(ctx, &row, now).await.map_err(|_| missing())?;
    }
    let disposition = content_disposition(row.filename.as_deref().unwrap_or(&row.id));
    if let Some(url) = ctx.stores.objects.presigned_get(&row.object_key, &disposition, DOWNLOAD_TTL).await? {
        return Ok(Download::Redirect(url));
    }
    let bytes = ctx.stores.objects.get(&row.object_key).await.map_err(|_| missing())?;
    Ok(Download::Bytes { bytes, content_type: row.content_type, disposition })
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266): an ASCII
/// fallback with quotes and non-ASCII replaced, and the exact name encoded.
fn content_disposition(name: &str) -> String {
    let fallback: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dated_and_names_are_safe_in_headers() {
        let key = object_key("app_1", 1_795_838_999_929, "c1", "a1");
        assert!(key.starts_with("attachments/app_1/2026/") && key.ends_with("/c1/a1"), "{key}");
        assert_eq!(
            content_disposition("plan \"final\".pdf"),
            "attachment; filename=\"plan _final_.pdf\"; filename*=UTF-8''plan%20%22final%22.pdf"
        );
        let accented = content_disposition("été.txt");
        assert_eq!(accented, "attachment; filename=\"_t_.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt");
        assert!(is_sha256_hex(&"a".repeat(64)) && !is_sha256_hex(&"A".repeat(64)) && !is_sha256_hex("abc"));
        assert!(is_media_type("image/png") && is_media_type("application/vnd.api+json"));
        for bad in ["image", "image/", "/png", "a/b/c", "text/plain; charset=utf-8", "é/x", "a b/c"] {
            assert!(!is_media_type(bad), "{bad}");
        }
    }
}
