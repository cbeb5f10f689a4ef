//! Membership and the access rules every read and write consults: who may
//! see a conversation, who manages its members, and the per-instance
//! membership cache. A shared domain primitive under every use case.
//!
//! Who may do what: a user sees and writes only conversations they are a
//! member of, and what else they may do follows their [`Role`] (README,
//! "Conversations and roles"); an admin key acting as the app may do
//! everything; a member may remove themselves. An archived conversation is
//! read-only; a deleted one has no members and is not found. A non-member
//! gets the same `not_member` answer whether the conversation exists or not.
//! Membership and archive answers are cached per instance and invalidated
//! on change through the tail's live channel `_msgd/membership` (Redis
//! Pub/Sub in services mode), so a removed member is refused
//! everywhere within a second; the cache TTL bounds staleness if an
//! invalidation is ever missed. A subscription asks again only when its
//! conversation's [`Membership::version`] moved, or a minute passed, not
//! for every event it delivers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;

use crate::auth::Caller;
use crate::error::{Code, Error};
use crate::store::{ConvKey, LiveEvent, LiveSubscription, Stores};
use crate::worker::{Worker, WorkerState};

const MEMBERSHIP_TTL: Duration = Duration::from_secs(10);
const MEMBERSHIP_CACHE_MAX: usize = 100_000;
/// Conversations share this many change counters (by hash): a change to one
/// makes the subscriptions of the others in its slot check again, no more.
const CHANGE_SLOTS: usize = 1024;

/// A member's role in a conversation, in increasing powers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    /// Adds and removes members, edits the title and metadata, deletes anyone's message.
    Moderator,
    /// All of a moderator's powers, plus roles, archiving and deleting the conversation.
    Owner,
}

impl Role {
    /// The role as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Moderator => "moderator",
            Role::Member => "member",
        }
    }

    /// A stored role; anything unknown grants no more than a member's rights.
    pub fn parse(text: &str) -> Role {
        Role::from_request(text).unwrap_or(Role::Member)
    }

    /// A role a client asks for: exactly one of the three names.
    pub fn from_request(text: &str) -> Result<Role, Error> {
        match text {
            "owner" => Ok(Role::Owner),
            "moderator" => Ok(Role::Moderator),
            "member" => Ok(Role::Member),
            _ => Err(Error::new(Code::InvalidRole, "role must be owner, moderator or member")),
        }
    }

    /// Who holds `self` or more, for messages.
    fn holders(self) -> &'static str {
        match self {
            Role::Owner => "owners",
            Role::Moderator => "owners and moderators",
            Role::Member => "members",
        }
    }
}

/// A conversation the caller may access.
#[derive(Debug, Clone)]
pub struct Access {
    /// The canonical conversation id.
    pub conversation_id: String,
    /// The caller's role; `None` for an admin key acting as the app.
    pub role: Option<Role>,
    /// Archived: readable, but nothing new is written to it.
    pub archived: bool,
}

impl Access {
    /// Whether the caller acts with `role`'s powers or more: an admin key
    /// acting as the app has every power; when a user token is present the
    /// user's role decides, whatever the key's scope (an admin key lends no
    /// powers to a user).
    pub fn holds(&self, caller: &Caller, role: Role) -> bool {
        caller.is_app() || self.role.is_some_and(|mine| mine >= role)
    }

    /// [`Access::holds`], or `not_owner` naming who may `what`.
    pub fn require_role(&self, caller: &Caller, role: Role, what: &str) -> Result<(), Error> {
        if self.holds(caller, role) {
            return Ok(());
        }
        Err(Error::new(Code::NotOwner, format!("only the conversation's {} and the app {what}", role.holders())))
    }

    /// The access, when the conversation takes new writes (it is not archived).
    pub fn writable(self) -> Result<Access, Error> {
        if self.archived {
            return Err(Error::new(Code::ConversationArchived, "the conversation is archived: it is read-only"));
        }
        Ok(self)
    }
}

/// A conversation that does not exist, as the app is told (a user is told `not_member`).
pub fn not_found() -> Error {
    Error::new(Code::NotFound, "no such conversation")
}

/// (app, conversation, user).
type MemberKey = (String, String, String);
/// (app, conversation).
type ConversationKey = (String, String);

/// Answers read from the metadata store, each usable for [`MEMBERSHIP_TTL`].
struct TtlCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
}

impl<K: std::hash::Hash + Eq, V: Copy> TtlCache<K, V> {
    fn get(&self, key: &K) -> Option<V> {
        self.entries.get(key).filter(|(_, at)| at.elapsed() < MEMBERSHIP_TTL).map(|(value, _)| *value)
    }

    fn insert(&mut self, key: K, value: V) {
        if self.entries.len() >= MEMBERSHIP_CACHE_MAX {
            self.entries.clear();
        }
        self.entries.insert(key, (value, Instant::now()));
    }
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        TtlCache { entries: HashMap::new() }
    }
}

/// The per-instance membership cache.
pub struct Membership {
    stores: Stores,
    /// (app, conversation, user) → role (`None`: not a member).
    roles: Mutex<TtlCache<MemberKey, Option<Role>>>,
    /// (app, conversation) → whether it is archived (`None`: no such conversation).
    conversations: Mutex<TtlCache<ConversationKey, Option<bool>>>,
    /// Bumped by every invalidation: an answer read from the database while an
    /// invalidation happened is not cached (it may predate the change).
    generation: std::sync::atomic::AtomicU64,
    /// Per slot of conversations, bumped when one of them may have changed
    /// (its invalidation, or a clear of the whole cache): [`Membership::version`].
    changes: Box<[std::sync::atomic::AtomicU64]>,
}

fn change_slot(app_id: &str, conversation_id: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (app_id, conversation_id).hash(&mut hasher);
    (hasher.finish() % CHANGE_SLOTS as u64) as usize
}

/// The pseudo-conversation whose live channel carries membership changes.
fn invalidation_channel() -> ConvKey {
    ConvKey::new("_msgd", "membership")
}

impl Membership {
    pub fn new(stores: Stores) -> Membership {
        let changes = (0..CHANGE_SLOTS).map(|_| Default::default()).collect();
        Membership {
            stores,
            roles: Mutex::default(),
            conversations: Mutex::default(),
            generation: Default::default(),
            changes,
        }
    }

    /// A number that moves whenever the conversation's membership may have
    /// changed, here or (through the invalidation channel) on another
    /// instance: an answer read while it stood still still holds.
    pub fn version(&self, app_id: &str, conversation_id: &str) -> u64 {
        self.changes[change_slot(app_id, conversation_id)].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves a conversation the caller may access: its canonical id, the
    /// caller's role and whether it is archived. A deleted conversation has
    /// no members and is not found.
    pub async fn require_access(&self, caller: &Caller, id: &str) -> Result<Access, Error> {
        let refused = || if caller.is_app() { not_found() } else { Error::not_member() };
        let Some(id) = crate::ids::conversation_id(id) else { return Err(refused()) };
        let role = match &caller.user_id {
            None => None,
            Some(user) => Some(self.role(&caller.app_id, &id, user).await?.ok_or_else(Error::not_member)?),
        };
        let Some(archived) = self.archived(&caller.app_id, &id).await? else { return Err(refused()) };
        Ok(Access { conversation_id: id, role, archived })
    }

    /// The user's role in the conversation, `None` when not a member.
    pub async fn role(&self, app_id: &str, conversation_id: &str, user_id: &str) -> Result<Option<Role>, Error> {
        let key = (app_id.to_string(), conversation_id.to_string(), user_id.to_string());
        let conv = ConvKey::new(app_id, conversation_id);
        self.cached(&self.roles, key, async {
            Ok(self.stores.metadata.get_member(&conv, user_id).await?.map(|m| Role::parse(&m.role)))
        })
        .await
    }

    /// Whether the conversation is archived, `None` when it does not exist.
    async fn archived(&self, app_id: &str, conversation_id: &str) -> Result<Option<bool>, Error> {
        let key = (app_id.to_string(), conversation_id.to_string());
        let conv = ConvKey::new(app_id, conversation_id);
        self.cached(&self.conversations, key, async {
            Ok(self.stores.metadata.get_conversation(&conv).await?.map(|row| row.archived_at.is_some()))
        })
        .await
    }

    /// The cached answer for `key`, else `load`'s, cached unless an
    /// invalidation happened while it was read.
    async fn cached<K: std::hash::Hash + Eq, V: Copy>(
        &self,
        cache: &Mutex<TtlCache<K, V>>,
        key: K,
        load: impl std::future::Future<Output = Result<V, Error>>,
    ) -> Result<V, Error> {
        if let Some(value) = cache.lock().expect("membership lock").get(&key) {
            return Ok(value);
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let value = load.await?;
        let mut cache = cache.lock().expect("membership lock");
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            cache.insert(key, value);
        }
        Ok(value)
    }

    /// The version moves after the cached answers are gone, so an answer
    /// read under the new version is never a cached old one.
    fn forget(&self, app_id: &str, conversation_id: &str) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mine = |app: &String, conv: &String| app == app_id && conv == conversation_id;
        self.roles.lock().expect("membership lock").entries.retain(|(app, conv, _), _| !mine(app, conv));
        self.conversations.lock().expect("membership lock").entries.retain(|(app, conv), _| !mine(app, conv));
        self.changes[change_slot(app_id, conversation_id)].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Forgets the conversation here and tells every other instance to.
    pub async fn changed(&self, app_id: &str, conversation_id: &str) {
        self.forget(app_id, conversation_id);
        let event = format!("{app_id}/{conversation_id}");
        if let Err(e) = self.stores.live.publish(&invalidation_channel(), event.as_bytes()).await {
            tracing::warn!(
                component = "conversations",
                error = %e,
                "membership invalidation not published; other instances rely on the cache TTL"
            );
        }
    }

    /// Clears the whole cache: invalidations may have been missed.
    fn forget_all(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.roles.lock().expect("membership lock").entries.clear();
        self.conversations.lock().expect("membership lock").entries.clear();
        for slot in &self.changes {
            slot.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The worker that applies other instances' invalidations: it subscribes to
/// the invalidation channel (resubscribing after a failure) and clears the
/// whole cache whenever events may have been missed.
pub struct MembershipListener {
    membership: Arc<Membership>,
    subscription: Option<LiveSubscription>,
    /// The event [`Worker::wait_for_work`] received, for the next step.
    received: Option<Result<LiveEvent, RecvError>>,
}

impl MembershipListener {
    pub fn new(membership: Arc<Membership>) -> MembershipListener {
        MembershipListener { membership, subscription: None, received: None }
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
        let membership = &self.membership;
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
            self.subscription = Some(self.membership.stores.live.subscribe(&invalidation_channel()).await?);
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        if let Some(subscription) = &mut self.subscription {
            self.received = Some(subscription.recv().await);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_conversations_version_moves_with_its_changes_and_a_clear_only() {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!("data_dir = {:?}", dir.path().display().to_string());
        let config = crate::config::from_toml(&toml, Vec::new()).unwrap();
        let stores = Stores::open(&config, &crate::telemetry::Metrics::new("embedded")).await.unwrap();
        let membership = Membership::new(stores);
        let (a, b) = ("0190c0de-0000-7000-8000-00000000000a", "0190c0de-0000-7000-8000-00000000000b");
        // Two conversations in different slots.
        let b = if change_slot("app", a) == change_slot("app", b) { "0190c0de-0000-7000-8000-00000000000c" } else { b };
        let (va, vb) = (membership.version("app", a), membership.version("app", b));
        membership.forget("app", a);
        assert_eq!((membership.version("app", a), membership.version("app", b)), (va + 1, vb), "only a's moved");
        assert_eq!(membership.version("app", a), va + 1, "reading it moves nothing");
        membership.forget_all();
        assert_eq!((membership.version("app", a), membership.version("app", b)), (va + 2, vb + 1));
    }
}
