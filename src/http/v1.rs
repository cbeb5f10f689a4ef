//! The `/v1` API handlers: take the authenticated [`Caller`] (the extractor
//! in `super`), parse the request, call the domain, answer. Authorization
//! decisions are explicit calls in the domain functions, not hidden in
//! extractors.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::{error_body, status_of, ApiError};
use super::AppState;
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::error::{Code, Error};
use crate::keys::Scope;
use crate::{attachments, edits, history, messages, presence, reactions, receipts};

/// Parses a JSON body; a body over the size limit is a 413, anything else
/// malformed a 400, both in the API's error shape. Every body of this API is
/// a JSON object: serde would read a struct from an array too (`[]` as a
/// struct of defaults), so anything but an object is refused first.
pub(super) fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::new(Code::PayloadTooLarge, "the request body is too large")
        } else {
            Error::new(Code::InvalidRequest, rejection.body_text())
        }
    })?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError(Error::new(Code::InvalidRequest, "the request body must be a JSON object")));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError(Error::new(Code::InvalidRequest, format!("invalid JSON body: {e}"))))
}

pub(super) async fn send_message(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: messages::SendRequest = json_body(body)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Error::new(Code::InvalidClientMsgId, "Idempotency-Key must be printable ASCII"))?,
        ),
    };
    let sent = messages::send(&state.ctx, &caller, &id, request, idempotency_key, now_ms()).await?;
    let status = if sent.replayed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(sent.envelope)).into_response())
}

pub(super) async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<history::HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| Error::new(Code::InvalidRequest, e.body_text()))?;
    Ok(Json(history::page(&state.ctx, &caller, &id, query, now_ms()).await?).into_response())
}

pub(super) async fn message(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(history::message(&state.ctx, &caller, &id, &message, now_ms()).await?).into_response())
}

pub(super) async fn thread(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message)): Path<(String, String)>,
    query: Result<Query<history::ThreadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| Error::new(Code::InvalidRequest, e.body_text()))?;
    Ok(Json(history::thread(&state.ctx, &caller, &id, &message, query, now_ms()).await?).into_response())
}

pub(super) async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: edits::EditRequest = json_body(body)?;
    Ok(Json(edits::edit(&state.ctx, &caller, &id, &message, request, now_ms()).await?).into_response())
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    edits::delete(&state.ctx, &caller, &id, &message, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn react(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message, reaction)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let change = reactions::add(&state.ctx, &caller, &id, &message, &reaction).await?;
    let status = if change.changed { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(change)).into_response())
}

pub(super) async fn unreact(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message, reaction)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(reactions::remove(&state.ctx, &caller, &id, &message, &reaction).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    messages: Vec<serde_json::Value>,
}

pub(super) async fn send_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if headers.contains_key("idempotency-key") {
        return Err(Error::new(
            Code::IdempotencyKeyNotSupported,
            "Idempotency-Key applies to single sends; give each batch item its own client_msg_id",
        )
        .into());
    }
    let request: BatchRequest = json_body(body)?;
    let results = messages::send_batch(&state.ctx, &caller, &id, request.messages, now_ms()).await?;
    let results: Vec<_> = results
        .into_iter()
        .map(|result| match result {
            Ok(sent) => serde_json::json!({
                "status": if sent.replayed { 200 } else { 201 },
                "message": sent.envelope,
            }),
            Err(e) => serde_json::json!({"status": status_of(e.kind()).as_u16(), "error": error_body(&e)}),
        })
        .collect();
    Ok(Json(serde_json::json!({"results": results})).into_response())
}

pub(super) async fn post_receipt(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: receipts::ReceiptRequest = json_body(body)?;
    Ok(Json(receipts::mark(&state.ctx, &caller, &id, request).await?).into_response())
}

pub(super) async fn get_receipts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(receipts::list(&state.ctx, &caller, &id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DevTokenRequest {
    user_id: String,
}

/// Mints a dev user token (admin key; 404 unless `auth.dev_tokens.enabled`).
pub(super) async fn dev_token(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A disabled issuer is a 404 to anyone, authenticated or not.
    let Some(issuer) = state.ctx.auth.dev_issuer() else {
        return Err(Error::new(Code::NotFound, "the dev token issuer is disabled").into());
    };
    let caller = caller?;
    caller.require_scope(Scope::Admin)?;
    let request: DevTokenRequest = json_body(body)?;
    let user_id = crate::ids::user_id(&request.user_id)?;
    let (token, expires_in) = issuer.mint(&caller.app_id, &user_id, now_ms()).await?;
    Ok(Json(serde_json::json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}))
        .into_response())
}

pub(super) async fn create_upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: attachments::CreateUpload = json_body(body)?;
    let target = attachments::create_upload(&state.ctx, &caller, &id, request, now_ms()).await?;
    Ok((StatusCode::CREATED, Json(target)).into_response())
}

/// Embedded mode's upload route; services mode hands out S3 URLs instead, so
/// a token for it never exists there.
pub(super) async fn receive_upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::new(Code::AttachmentTooLarge, "the upload is larger than limits.max_attachment_bytes")
        } else {
            Error::new(Code::InvalidRequest, rejection.body_text())
        }
    })?;
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    attachments::receive_upload(&state.ctx, &token, content_type, bytes.to_vec(), now_ms()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, attachment_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    use axum::http::header;
    match attachments::download(&state.ctx, &caller, &id, &attachment_id, now_ms()).await? {
        attachments::Download::Redirect(url) => {
            Ok((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, url)]).into_response())
        }
        attachments::Download::Bytes { bytes, content_type, disposition } => Ok((
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_DISPOSITION, disposition),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            ],
            bytes,
        )
            .into_response()),
    }
}

pub(super) async fn presence(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(presence::list(&state.ctx, &caller, &id).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Default, Debug)]
    struct Defaulted {
        #[serde(default)]
        n: Option<u64>,
    }

    fn parse(body: &'static str) -> Result<Defaulted, ApiError> {
        json_body(Ok(Bytes::from_static(body.as_bytes())))
    }

    #[test]
    fn only_objects_are_bodies() {
        for refused in ["[]", "[7]", " [ ]", "7", "null", "\"x\"", ""] {
            let ApiError(e) = parse(refused).unwrap_err();
            assert_eq!(e.code, Code::InvalidRequest, "{refused}");
        }
        assert_eq!(parse(" \n{}").unwrap().n, None);
        assert_eq!(parse(r#"{"n": 7}"#).unwrap().n, Some(7));
    }
}
