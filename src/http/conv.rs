//! The conversation and member handlers of `/v1` (README, "Conversations
//! and roles"): parse, call [`crate::conversations`], answer.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::v1::json_body;
use super::AppState;
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::conversations;
use crate::error::{Code, Error};

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: conversations::CreateConversation = json_body(body)?;
    let view = conversations::create(&state.ctx, &caller, request, now_ms()).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let inbox = conversations::list(&state.ctx, &caller, query.limit, query.cursor.as_deref(), now_ms()).await?;
    Ok(Json(inbox).into_response())
}

pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(conversations::get(&state.ctx, &caller, &id).await?).into_response())
}

pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: conversations::UpdateConversation = json_body(body)?;
    Ok(Json(conversations::update(&state.ctx, &caller, &id, request, now_ms()).await?).into_response())
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    conversations::delete(&state.ctx, &caller, &id, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body is optional: `{"role": ...}` sets a role, nothing adds a member.
pub(super) async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = match &body {
        Ok(bytes) if bytes.is_empty() => conversations::PutMember::default(),
        _ => json_body(body)?,
    };
    let changed = conversations::put_member(&state.ctx, &caller, &id, &user_id, request, now_ms()).await?;
    let status = if changed.added { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(changed)).into_response())
}

pub(super) async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !conversations::remove_member(&state.ctx, &caller, &id, &user_id).await? {
        return Err(Error::new(Code::NotAMember, format!("{user_id} is not a member")).into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn mute(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    conversations::set_muted(&state.ctx, &caller, &id, true).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn unmute(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    conversations::set_muted(&state.ctx, &caller, &id, false).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
