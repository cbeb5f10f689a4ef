//! Conversations and their members (README, "HTTP API"): create, list, get,
//! add and remove members. Who may do what is decided by [`crate::membership`].

use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::context::Context;
use crate::error::{Code, Error};
use crate::keys::Scope;
use crate::membership::Role;
use crate::store::{ConvKey, ConversationRow, MemberRow};

/// How long a cached membership answer may be used without an invalidation.
const MAX_MEMBERS_AT_CREATION: usize = 1000;
const MAX_TITLE_CHARS: usize = 200;
const MAX_METADATA_BYTES: usize = 8 * 1024;
const DEFAULT_LIST: u32 = 100;
const MAX_LIST: u32 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    #[serde(default)]
    pub members: Vec<String>,
    pub title: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct ConversationView {
    pub id: String,
    pub title: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// The creating user; `null` when an admin key created it as the app.
    pub created_by: Option<String>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<MemberView>>,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub user_id: String,
    pub role: String,
    pub joined_at: i64,
}

impl ConversationView {
    fn from_row(row: ConversationRow, members: Option<Vec<MemberRow>>) -> Self {
        ConversationView {
            id: row.id,
            title: row.title,
            metadata: row.metadata.and_then(|text| serde_json::from_str(&text).ok()),
            created_by: row.created_by,
            created_at: row.created_at,
            members: members.map(|rows| {
                rows.into_iter()
                    .map(|m| MemberView { user_id: m.user_id, role: m.role, joined_at: m.joined_at })
                    .collect()
            }),
        }
    }
}

pub async fn create(
    ctx: &Context,
    caller: &Caller,
    request: CreateConversation,
    now: i64,
) -> Result<ConversationView, Error> {
    caller.require_scope(Scope::Write)?;
    if let Some(why) = request.title.as_deref().and_then(|t| crate::ids::display_text_problem(t, MAX_TITLE_CHARS)) {
        return Err(Error::new(Code::InvalidTitle, format!("a title {why}")));
    }
    let metadata = match &request.metadata {
        None => None,
        Some(value) if !value.is_object() => {
            return Err(Error::new(Code::InvalidMetadata, "metadata must be a JSON object"));
        }
        Some(value) => {
            let text = value.to_string();
            if text.len() > MAX_METADATA_BYTES {
                return Err(Error::new(
                    Code::MetadataTooLarge,
                    format!("metadata is at most {MAX_METADATA_BYTES} bytes"),
                ));
            }
            Some(text)
        }
    };
    if request.members.len() > MAX_MEMBERS_AT_CREATION {
        return Err(Error::new(Code::TooManyMembers, format!("at most {MAX_MEMBERS_AT_CREATION} members at creation")));
    }
    let mut members: Vec<MemberRow> = Vec::new();
    if let Some(user) = &caller.user_id {
        members.push(MemberRow { user_id: user.clone(), role: Role::Owner.as_str().into(), joined_at: now });
    }
    for user in &request.members {
        let user = crate::ids::user_id(user)?;
        if !members.iter().any(|m| m.user_id == user) {
            members.push(MemberRow { user_id: user, role: Role::Member.as_str().into(), joined_at: now });
        }
    }
    let row = ConversationRow {
        app_id: caller.app_id.clone(),
        id: uuid::Uuid::now_v7().to_string(),
        title: request.title,
        metadata,
        created_by: caller.user_id.clone(),
        created_at: now,
    };
    ctx.stores.metadata.insert_conversation(&row, &members).await?;
    tracing::info!(
        component = "conversations",
        "conversation-id" = %row.id,
        members = members.len(),
        "conversation created"
    );
    Ok(ConversationView::from_row(row, Some(members)))
}

/// The caller's conversations (all of the app's for an admin key acting as the app), newest first.
pub async fn list(ctx: &Context, caller: &Caller, limit: Option<u32>) -> Result<Vec<ConversationView>, Error> {
    caller.require_scope(Scope::Read)?;
    let limit = limit.unwrap_or(DEFAULT_LIST);
    if limit == 0 || limit > MAX_LIST {
        return Err(Error::new(Code::InvalidRequest, format!("limit must be 1 to {MAX_LIST}")));
    }
    let rows = ctx.stores.metadata.list_conversations(&caller.app_id, caller.user_id.as_deref(), limit).await?;
    Ok(rows.into_iter().map(|row| ConversationView::from_row(row, None)).collect())
}

pub async fn get(ctx: &Context, caller: &Caller, id: &str) -> Result<ConversationView, Error> {
    caller.require_scope(Scope::Read)?;
    let conv = ConvKey::new(&caller.app_id, ctx.membership.require_access(caller, id).await?.conversation_id);
    let row = ctx.stores.metadata.get_conversation(&conv).await?.ok_or_else(Error::not_member)?;
    let members = ctx.stores.metadata.list_members(&conv).await?;
    Ok(ConversationView::from_row(row, Some(members)))
}

/// Adds `user_id` (answered in its canonical form); says whether they were
/// added (false: already a member).
pub async fn add_member(
    ctx: &Context,
    caller: &Caller,
    id: &str,
    user_id: &str,
    now: i64,
) -> Result<(String, bool), Error> {
    caller.require_participant()?;
    let user_id = crate::ids::user_id(user_id)?;
    let access = ctx.membership.require_access(caller, id).await?;
    access.require_manager(caller, None)?;
    let id = access.conversation_id;
    let member = MemberRow { user_id: user_id.clone(), role: Role::Member.as_str().into(), joined_at: now };
    let added = ctx.stores.metadata.add_member(&ConvKey::new(&caller.app_id, &id), &member).await?;
    if added {
        ctx.membership.changed(&caller.app_id, &id).await;
    }
    Ok((user_id, added))
}

/// Removes `user_id`; answers whether they were a member.
pub async fn remove_member(ctx: &Context, caller: &Caller, id: &str, user_id: &str) -> Result<bool, Error> {
    caller.require_participant()?;
    let user_id = crate::ids::user_id(user_id)?;
    let access = ctx.membership.require_access(caller, id).await?;
    access.require_manager(caller, Some(&user_id))?;
    let id = access.conversation_id;
    let removed = ctx.stores.metadata.remove_member(&ConvKey::new(&caller.app_id, &id), &user_id).await?;
    if removed {
        ctx.membership.changed(&caller.app_id, &id).await;
    }
    Ok(removed)
}
