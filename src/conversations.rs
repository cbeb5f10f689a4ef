//! Conversations and their members (README, "Conversations and roles"):
//! create, list, get, change (title, metadata, archive), delete, add and
//! remove members and set their roles. Who may do what is decided by
//! [`crate::membership`]; a change is published to the conversation's live
//! subscribers.

use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::context::Context;
use crate::envelope::Envelope;
use crate::error::{Code, Error};
use crate::keys::Scope;
use crate::membership::{not_found, Access, Role};
use crate::store::{ConvKey, ConversationRow, ConversationUpdate, InboxRow, MemberChange, MemberOutcome, MemberRow};

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
    /// The owner of a conversation the app creates (an admin key without a
    /// user); a user who creates one owns it.
    pub owner: Option<String>,
}

/// `PATCH /v1/conversations/{id}`: each field present is changed; `null`
/// clears a title or metadata.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConversation {
    #[serde(default, deserialize_with = "present")]
    pub title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<Option<serde_json::Value>>,
    pub archived: Option<bool>,
}

/// A field that is present, even as `null` (`Some(None)`), as against absent (`None`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Serialize)]
pub struct ConversationView {
    pub id: String,
    pub title: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// The creating user; `null` when an admin key created it as the app.
    pub created_by: Option<String>,
    pub created_at: i64,
    /// When it was archived (read-only); `null` while active.
    pub archived_at: Option<i64>,
    /// The last change of title, metadata or archive state.
    pub updated_at: Option<i64>,
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
            archived_at: row.archived_at,
            updated_at: row.updated_at,
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
    check_title(request.title.as_deref())?;
    let metadata = request.metadata.as_ref().map(metadata_text).transpose()?;
    if request.members.len() > MAX_MEMBERS_AT_CREATION {
        return Err(Error::new(Code::TooManyMembers, format!("at most {MAX_MEMBERS_AT_CREATION} members at creation")));
    }
    let owner = match (&caller.user_id, &request.owner) {
        (Some(_), Some(_)) => {
            return Err(Error::new(
                Code::InvalidRequest,
                "owner is for the app; a user who creates a conversation owns it",
            ))
        }
        (Some(user), None) => Some(user.clone()),
        (None, owner) => owner.as_deref().map(crate::ids::user_id).transpose()?,
    };
    let mut members: Vec<MemberRow> = Vec::new();
    if let Some(user) = owner {
        members.push(MemberRow { user_id: user, role: Role::Owner.as_str().into(), joined_at: now });
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
        archived_at: None,
        deleted_at: None,
        updated_at: None,
        last_activity_at: None,
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

/// One conversation of the inbox: the conversation, its last activity,
/// last seq and last message, and for a user their role, read mark, unread
/// count and mute flag.
#[derive(Debug, Serialize)]
pub struct InboxEntry {
    #[serde(flatten)]
    pub conversation: ConversationView,
    /// The time of its newest message (its creation time before the first),
    /// as the activity worker last wrote it: up to a second behind.
    pub last_activity_at: i64,
    pub last_seq: u64,
    /// The newest message (not an edit or delete event) in its current state;
    /// `null` when there is none within the retention window.
    pub last_message: Option<Envelope>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muted: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Inbox {
    pub conversations: Vec<InboxEntry>,
    pub next_cursor: Option<String>,
}

/// Where an inbox page ends: the last entry's activity and id, bound to the caller.
#[derive(Debug, Serialize, Deserialize)]
struct InboxCursor {
    /// `inbox`, so no other cursor passes for one.
    k: String,
    /// The user, or empty for the app.
    u: String,
    a: i64,
    i: String,
}

/// Seqs read back from the last one to find the newest message that is not
/// an edit or delete event.
const LAST_MESSAGE_SCAN: u64 = 20;

/// The inbox: the caller's conversations (all of the app's for an admin key
/// acting as the app), by last activity, newest first, a page at a time.
pub async fn list(
    ctx: &Context,
    caller: &Caller,
    limit: Option<u32>,
    cursor: Option<&str>,
    now: i64,
) -> Result<Inbox, Error> {
    caller.require_scope(Scope::Read)?;
    let limit = limit.unwrap_or(DEFAULT_LIST);
    if limit == 0 || limit > MAX_LIST {
        return Err(Error::new(Code::InvalidRequest, format!("limit must be 1 to {MAX_LIST}")));
    }
    let key = ctx.cursor_key().await?;
    let user = caller.user_id.clone().unwrap_or_default();
    let after = match cursor {
        None => None,
        Some(cursor) => {
            let state = crate::mac::verify_json::<InboxCursor>(key, cursor)
                .filter(|state| state.k == "inbox" && state.u == user)
                .ok_or_else(|| Error::new(Code::InvalidCursor, "the cursor is not one of this caller's inbox pages"))?;
            Some((state.a, state.i))
        }
    };
    let after = after.as_ref().map(|(at, id)| (*at, id.as_str()));
    let mut rows = ctx.stores.metadata.inbox(&caller.app_id, caller.user_id.as_deref(), after, limit + 1).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|row| {
            let c = &row.conversation;
            let state = InboxCursor {
                k: "inbox".into(),
                u: user.clone(),
                a: c.last_activity_at.unwrap_or(c.created_at),
                i: c.id.clone(),
            };
            crate::mac::sign_json(key, &state)
        })
    } else {
        None
    };
    let mut conversations = Vec::with_capacity(rows.len());
    for row in rows {
        conversations.push(inbox_entry(ctx, caller, row, now).await?);
    }
    Ok(Inbox { conversations, next_cursor })
}

async fn inbox_entry(ctx: &Context, caller: &Caller, row: InboxRow, now: i64) -> Result<InboxEntry, Error> {
    let conv = ConvKey::new(&caller.app_id, &row.conversation.id);
    let last_seq = ctx.timeline.last_seq(&conv).await?;
    let cutoff = ctx.timeline.retention_cutoff(now);
    let mut recent =
        ctx.timeline.read(&conv, last_seq.saturating_sub(LAST_MESSAGE_SCAN - 1).max(1), last_seq, cutoff).await?;
    recent.retain(|message| message.kind.is_none());
    let mut last_message = recent.pop();
    if let Some(message) = &mut last_message {
        ctx.timeline.apply_changes(&conv, std::slice::from_mut(message)).await?;
    }
    let marks = match &caller.user_id {
        Some(user) => Some(crate::receipts::unread(ctx, &conv, user, last_seq).await?),
        None => None,
    };
    let c = &row.conversation;
    Ok(InboxEntry {
        last_activity_at: c.last_activity_at.unwrap_or(c.created_at),
        last_seq,
        last_message,
        role: row.role,
        read_seq: marks.map(|(read, _)| read),
        unread: marks.map(|(_, unread)| unread),
        muted: row.muted,
        conversation: ConversationView::from_row(row.conversation, None),
    })
}

/// Mutes or unmutes the conversation for the calling user: a flag the inbox
/// shows (apps use it to silence notifications); delivery is unchanged.
pub async fn set_muted(ctx: &Context, caller: &Caller, id: &str, muted: bool) -> Result<(), Error> {
    caller.require_participant()?;
    let user = caller
        .user_id
        .as_deref()
        .ok_or_else(|| Error::new(Code::UserRequired, "muting belongs to a user; send a user token"))?;
    let access = ctx.membership.require_access(caller, id).await?;
    let conv = ConvKey::new(&caller.app_id, &access.conversation_id);
    if !ctx.stores.metadata.set_muted(&conv, user, muted).await? {
        return Err(Error::not_member());
    }
    Ok(())
}

pub async fn get(ctx: &Context, caller: &Caller, id: &str) -> Result<ConversationView, Error> {
    caller.require_scope(Scope::Read)?;
    let conv = ConvKey::new(&caller.app_id, ctx.membership.require_access(caller, id).await?.conversation_id);
    let row = ctx.stores.metadata.get_conversation(&conv).await?.ok_or_else(Error::not_member)?;
    let members = ctx.stores.metadata.list_members(&conv).await?;
    Ok(ConversationView::from_row(row, Some(members)))
}

fn check_title(title: Option<&str>) -> Result<(), Error> {
    match title.and_then(|t| crate::ids::display_text_problem(t, MAX_TITLE_CHARS)) {
        Some(why) => Err(Error::new(Code::InvalidTitle, format!("a title {why}"))),
        None => Ok(()),
    }
}

/// Metadata as stored: a JSON object of at most [`MAX_METADATA_BYTES`].
fn metadata_text(value: &serde_json::Value) -> Result<String, Error> {
    if !value.is_object() {
        return Err(Error::new(Code::InvalidMetadata, "metadata must be a JSON object"));
    }
    let text = value.to_string();
    if text.len() > MAX_METADATA_BYTES {
        return Err(Error::new(Code::MetadataTooLarge, format!("metadata is at most {MAX_METADATA_BYTES} bytes")));
    }
    Ok(text)
}

/// Changes the title or metadata (owners, moderators, the app) or the
/// archive state (owners, the app); answers the conversation as it is now.
pub async fn update(
    ctx: &Context,
    caller: &Caller,
    id: &str,
    request: UpdateConversation,
    now: i64,
) -> Result<ConversationView, Error> {
    caller.require_participant()?;
    let access = ctx.membership.require_access(caller, id).await?;
    if request.title.is_some() || request.metadata.is_some() {
        access.require_role(caller, Role::Moderator, "change the title and metadata")?;
    }
    if request.archived.is_some() {
        access.require_role(caller, Role::Owner, "archive and unarchive")?;
    }
    if let Some(title) = &request.title {
        check_title(title.as_deref())?;
    }
    let update = ConversationUpdate {
        title: request.title,
        metadata: request.metadata.map(|value| value.as_ref().map(metadata_text).transpose()).transpose()?,
        archived: request.archived,
    };
    let conv = ConvKey::new(&caller.app_id, &access.conversation_id);
    let row = ctx.stores.metadata.update_conversation(&conv, &update, now).await?.ok_or_else(not_found)?;
    if update.archived.is_some() {
        ctx.membership.changed(&caller.app_id, &conv.conversation_id).await;
    }
    let view = ConversationView::from_row(row, None);
    let event = serde_json::json!({"op": "conversation.updated", "conversation_id": view.id, "conversation": view});
    ctx.stores.live.publish(&conv, event.to_string().as_bytes()).await?;
    tracing::info!(
        component = "conversations",
        "conversation-id" = %view.id,
        archived = view.archived_at.is_some(),
        "conversation updated"
    );
    Ok(view)
}

/// Deletes a conversation (owners, the app): its members are removed and it
/// is never answered again, so its messages are unreadable at once; the
/// bytes go with retention (README, "Conversations and roles").
pub async fn delete(ctx: &Context, caller: &Caller, id: &str, now: i64) -> Result<(), Error> {
    caller.require_participant()?;
    let access = ctx.membership.require_access(caller, id).await?;
    access.require_role(caller, Role::Owner, "delete a conversation")?;
    let conv = ConvKey::new(&caller.app_id, &access.conversation_id);
    if !ctx.stores.metadata.delete_conversation(&conv, now).await? {
        return Err(not_found());
    }
    ctx.membership.changed(&caller.app_id, &conv.conversation_id).await;
    let event = serde_json::json!({"op": "conversation.deleted", "conversation_id": conv.conversation_id});
    ctx.stores.live.publish(&conv, event.to_string().as_bytes()).await?;
    tracing::info!(component = "conversations", "conversation-id" = %conv.conversation_id, "conversation deleted");
    Ok(())
}

/// `PUT .../members/{user_id}`: the role to give; absent adds as a member
/// (or keeps an existing member's role).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutMember {
    pub role: Option<String>,
}

/// A member as a change left them.
#[derive(Debug, Serialize)]
pub struct MemberChanged {
    pub user_id: String,
    /// The member's role now.
    pub role: String,
    /// True when they were not a member before.
    pub added: bool,
}

/// Adds `user_id` or sets their role. Owners, moderators and the app add
/// members; only owners and the app give or take the moderator and owner
/// roles.
pub async fn put_member(
    ctx: &Context,
    caller: &Caller,
    id: &str,
    user_id: &str,
    request: PutMember,
    now: i64,
) -> Result<MemberChanged, Error> {
    caller.require_participant()?;
    let user_id = crate::ids::user_id(user_id)?;
    let role = request.role.as_deref().map(Role::from_request).transpose()?;
    let access = ctx.membership.require_access(caller, id).await?;
    access.require_role(caller, Role::Moderator, "add members")?;
    let owner = access.holds(caller, Role::Owner);
    // A moderator adds members and leaves roles as they are.
    let allowed = |before: Option<&str>| owner || role.is_none_or(|r| Some(r.as_str()) == before.or(Some("member")));
    let change = MemberChange::Put { role: role.map(Role::as_str), joined_at: now };
    let (before, after) = change_member(ctx, caller, &access, &user_id, change, &allowed, "give roles").await?;
    let role = after.unwrap_or_else(|| Role::Member.as_str().to_string());
    Ok(MemberChanged { user_id, role, added: before.is_none() })
}

/// Removes `user_id`; answers whether they were a member. Anyone may leave;
/// owners and the app remove anyone, moderators remove members.
pub async fn remove_member(ctx: &Context, caller: &Caller, id: &str, user_id: &str) -> Result<bool, Error> {
    caller.require_participant()?;
    let user_id = crate::ids::user_id(user_id)?;
    let access = ctx.membership.require_access(caller, id).await?;
    let leaving = caller.user_id.as_deref() == Some(user_id.as_str());
    if !leaving {
        access.require_role(caller, Role::Moderator, "remove members")?;
    }
    let owner = leaving || access.holds(caller, Role::Owner);
    let allowed = |before: Option<&str>| owner || matches!(before, None | Some("member"));
    let what = "remove owners and moderators";
    let (before, _) = change_member(ctx, caller, &access, &user_id, MemberChange::Remove, &allowed, what).await?;
    Ok(before.is_some())
}

/// Applies a member change the caller's rule allows; answers the member's
/// role before and after it.
async fn change_member(
    ctx: &Context,
    caller: &Caller,
    access: &Access,
    user_id: &str,
    change: MemberChange<'_>,
    allowed: &(dyn Fn(Option<&str>) -> bool + Sync),
    refused: &str,
) -> Result<(Option<String>, Option<String>), Error> {
    let conv = ConvKey::new(&caller.app_id, &access.conversation_id);
    match ctx.stores.metadata.change_member(&conv, user_id, change, allowed).await? {
        MemberOutcome::Done { before, after } => {
            if before != after {
                ctx.membership.changed(&caller.app_id, &conv.conversation_id).await;
                tracing::info!(
                    component = "conversations",
                    "conversation-id" = %conv.conversation_id,
                    before = before.as_deref().unwrap_or("none"),
                    after = after.as_deref().unwrap_or("none"),
                    "membership changed"
                );
            }
            Ok((before, after))
        }
        MemberOutcome::Refused { .. } => {
            Err(Error::new(Code::NotOwner, format!("only the conversation's owners and the app {refused}")))
        }
        MemberOutcome::LastOwner => Err(Error::new(
            Code::LastOwner,
            "the conversation's other members would have no owner: make another member an owner first",
        )),
        MemberOutcome::NoConversation => Err(not_found()),
    }
}
