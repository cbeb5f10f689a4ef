//! Conversations and their members (README, "HTTP API"), and the per-instance
//! membership cache every read and write consults.
//!
//! Who may do what: a user sees and writes only conversations they are a
//! member of; owners and admin keys manage members; a member may remove
//! themselves. A non-member gets the same `not_member` answer whether the
//! conversation exists or not. Membership answers are cached per instance and
//! invalidated on change through the tail's live channel `_msgd/membership`
//! (Redis Pub/Sub in services mode), so a removed member is refused
//! everywhere within a second; the cache TTL bounds staleness if an
//! invalidation is ever missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::Caller;
use crate::context::Context;
use crate::error::{Error, Kind};
use crate::keys::Scope;
use crate::store::{ConvKey, ConversationRow, LiveEvent, LiveSubscription, MemberRow, Stores};
use crate::worker::{Worker, WorkerState};

/// How long a cached membership answer may be used without an invalidation.
const MEMBERSHIP_TTL: Duration = Duration::from_secs(10);
const MEMBERSHIP_CACHE_MAX: usize = 100_000;
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
    if request.title.as_ref().is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS) {
        return Err(Error::invalid("invalid_title", format!("a title is at most {MAX_TITLE_CHARS} characters")));
    }
    let metadata = match &request.metadata {
        None => None,
        Some(value) if !value.is_object() => {
            return Err(Error::invalid("invalid_metadata", "metadata must be a JSON object"));
        }
        Some(value) => {
            let text = value.to_string();
            if text.len() > MAX_METADATA_BYTES {
                return Err(Error::new(
                    Kind::TooLarge,
                    "metadata_too_large",
                    format!("metadata is at most {MAX_METADATA_BYTES} bytes"),
                ));
            }
            Some(text)
        }
    };
    if request.members.len() > MAX_MEMBERS_AT_CREATION {
        return Err(Error::invalid(
            "too_many_members",
            format!("at most {MAX_MEMBERS_AT_CREATION} members at creation"),
        ));
    }
    let mut members: Vec<MemberRow> = Vec::new();
    if let Some(user) = &caller.user_id {
        members.push(MemberRow { user_id: user.clone(), role: "owner".into(), joined_at: now });
    }
    for user in &request.members {
        let user = crate::ids::user_id(user)?;
        if !members.iter().any(|m| m.user_id == user) {
            members.push(MemberRow { user_id: user, role: "member".into(), joined_at: now });
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
    tracing::info!(component = "conversations", "conversation-id" = %row.id, members = members.len(), "conversation created");
    Ok(ConversationView::from_row(row, Some(members)))
}

/// The caller's conversations (all of the app's for an admin key acting as the app), newest first.
pub async fn list(ctx: &Context, caller: &Caller, limit: Option<u32>) -> Result<Vec<ConversationView>, Error> {
    caller.require_scope(Scope::Read)?;
    let limit = limit.unwrap_or(DEFAULT_LIST);
    if limit == 0 || limit > MAX_LIST {
        return Err(Error::invalid("invalid_request", format!("limit must be 1 to {MAX_LIST}")));
    }
    let rows = ctx.stores.metadata.list_conversations(&caller.app_id, caller.user_id.as_deref(), limit).await?;
    Ok(rows.into_iter().map(|row| ConversationView::from_row(row, None)).collect())
}

pub async fn get(ctx: &Context, caller: &Caller, id: &str) -> Result<ConversationView, Error> {
    caller.require_scope(Scope::Read)?;
    let id = require_access(ctx, caller, id).await?.0;
    let row = ctx.stores.metadata.get_conversation(&caller.app_id, &id).await?.ok_or_else(Error::not_member)?;
    let members = ctx.stores.metadata.list_members(&caller.app_id, &id).await?;
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
    let (id, role) = require_access(ctx, caller, id).await?;
    require_manager(caller, role.as_deref(), None)?;
    let member = MemberRow { user_id: user_id.clone(), role: "member".into(), joined_at: now };
    let added = ctx.stores.metadata.add_member(&caller.app_id, &id, &member).await?;
    if added {
        ctx.membership.changed(&caller.app_id, &id).await;
    }
    Ok((user_id, added))
}

/// Removes `user_id`; answers whether they were a member.
pub async fn remove_member(ctx: &Context, caller: &Caller, id: &str, user_id: &str) -> Result<bool, Error> {
    caller.require_participant()?;
    let user_id = crate::ids::user_id(user_id)?;
    let (id, role) = require_access(ctx, caller, id).await?;
    require_manager(caller, role.as_deref(), Some(&user_id))?;
    let removed = ctx.stores.metadata.remove_member(&caller.app_id, &id, &user_id).await?;
    if removed {
        ctx.membership.changed(&caller.app_id, &id).await;
    }
    Ok(removed)
}

/// Resolves a conversation the caller may access: its canonical id and the
/// caller's role (`None` for an admin key acting as the app).
pub async fn require_access(ctx: &Context, caller: &Caller, id: &str) -> Result<(String, Option<String>), Error> {
    let Some(id) = crate::ids::conversation_id(id) else {
        return Err(if caller.is_app() { not_found() } else { Error::not_member() });
    };
    match &caller.user_id {
        None => match ctx.stores.metadata.get_conversation(&caller.app_id, &id).await? {
            Some(_) => Ok((id, None)),
            None => Err(not_found()),
        },
        Some(user) => match ctx.membership.role(&caller.app_id, &id, user).await? {
            Some(role) => Ok((id, Some(role))),
            None => Err(Error::not_member()),
        },
    }
}

fn not_found() -> Error {
    Error::new(Kind::NotFound, "not_found", "no such conversation")
}

/// Owners and admin keys acting as the app manage members; anyone may
/// remove themselves. When a user token is present the user's role decides,
/// whatever the key's scope: an admin key lends no powers to a user.
fn require_manager(caller: &Caller, role: Option<&str>, removing: Option<&str>) -> Result<(), Error> {
    let is_self = removing.is_some() && removing == caller.user_id.as_deref();
    if caller.is_app() || role == Some("owner") || is_self {
        return Ok(());
    }
    Err(Error::new(Kind::Forbidden, "not_owner", "only the conversation's owners and admin keys manage members"))
}

/// (app, conversation, user).
type MemberKey = (String, String, String);

/// The per-instance membership cache.
pub struct Membership {
    stores: Stores,
    /// (app, conversation, user) → role (`None`: not a member), and when it was read.
    cache: Mutex<HashMap<MemberKey, (Option<String>, Instant)>>,
    /// Bumped by every invalidation: an answer read from the database while an
    /// invalidation happened is not cached (it may predate the change).
    generation: std::sync::atomic::AtomicU64,
}

/// The pseudo-conversation whose live channel carries membership changes.
fn invalidation_channel() -> ConvKey {
    ConvKey::new("_msgd", "membership")
}

impl Membership {
    pub fn new(stores: Stores) -> Membership {
        Membership { stores, cache: Mutex::default(), generation: Default::default() }
    }

    /// The user's role in the conversation, `None` when not a member.
    pub async fn role(&self, app_id: &str, conversation_id: &str, user_id: &str) -> Result<Option<String>, Error> {
        let key = (app_id.to_string(), conversation_id.to_string(), user_id.to_string());
        if let Some((role, at)) = self.cache.lock().expect("membership lock").get(&key) {
            if at.elapsed() < MEMBERSHIP_TTL {
                return Ok(role.clone());
            }
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let role = self.stores.metadata.get_member(app_id, conversation_id, user_id).await?.map(|m| m.role);
        let mut cache = self.cache.lock().expect("membership lock");
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            return Ok(role);
        }
        if cache.len() >= MEMBERSHIP_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (role.clone(), Instant::now()));
        Ok(role)
    }

    fn forget(&self, app_id: &str, conversation_id: &str) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache
            .lock()
            .expect("membership lock")
            .retain(|(app, conv, _), _| !(app == app_id && conv == conversation_id));
    }

    /// Forgets the conversation here and tells every other instance to.
    pub async fn changed(&self, app_id: &str, conversation_id: &str) {
        self.forget(app_id, conversation_id);
        let event = format!("{app_id}/{conversation_id}");
        if let Err(e) = self.stores.tail.publish(&invalidation_channel(), event.as_bytes()).await {
            tracing::warn!(component = "conversations", error = %e, "membership invalidation not published; other instances rely on the cache TTL");
        }
    }

    /// Clears the whole cache: invalidations may have been missed.
    fn forget_all(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache.lock().expect("membership lock").clear();
    }
}

/// The worker that applies other instances' invalidations: it subscribes to
/// the invalidation channel (resubscribing after a failure) and clears the
/// whole cache whenever events may have been missed.
pub struct MembershipListener {
    ctx: Arc<Context>,
    subscription: Option<LiveSubscription>,
    /// The event [`Worker::wait_for_work`] received, for the next step.
    received: Option<Result<LiveEvent, RecvError>>,
}

impl MembershipListener {
    pub fn new(ctx: Arc<Context>) -> MembershipListener {
        MembershipListener { ctx, subscription: None, received: None }
    }
}

#[async_trait::async_trait]
impl Worker for MembershipListener {
    fn name(&self) -> &'static str {
        "membership-invalidation"
    }

    fn component(&self) -> &'static str {
        "conversations"
    }

    /// Resubscribing is retried every second.
    fn backoff(&self, _failures: u32) -> Duration {
        Duration::from_secs(1)
    }

    async fn work(&mut self) -> anyhow::Result<WorkerState> {
        let membership = &self.ctx.membership;
        match self.received.take() {
            Some(Ok(LiveEvent::Event(bytes))) => {
                if let Some((app, conv)) = std::str::from_utf8(&bytes).ok().and_then(|t| t.split_once('/')) {
                    membership.forget(app, conv);
                }
            }
            Some(Ok(LiveEvent::Message(_))) | None => {}
            Some(Err(_)) => {
                membership.forget_all();
                self.subscription = None;
            }
        }
        if self.subscription.is_none() {
            self.subscription = Some(self.ctx.stores.tail.subscribe(&invalidation_channel()).await?);
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        if let Some(subscription) = &mut self.subscription {
            self.received = Some(subscription.recv().await);
        }
    }
}
