//! The services-mode tail in Redis (key schema in ARCHITECTURE.md).
//!
//! Every key one append touches carries the conversation's flush-shard hash
//! tag `{sN}`, so the append script runs on Redis Cluster. Commands go through
//! a lazily connecting, self-reconnecting `ConnectionManager`; live messages
//! arrive on a second, RESP3 connection that re-subscribes after reconnects.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushKind, Script, Value};

use super::coordination::Coordination;
use super::live::{Live, LiveEvent, LiveHub, LiveSubscription, Upstream};
use super::state::TtlState;
use super::tail::{AppendOutcome, AppendRequest, ConvKey, DirtyConversation, Tail, TailEntry, TailMemory};
use super::StoreError;
use crate::config::RedisConfig;
use crate::ratelimit::RateDecision;
use crate::telemetry::Metrics;
use crate::worker::OwnedTask;

const DEPENDENCY: &str = "redis";

/// Idempotency check, seq assignment, append, dirty mark and publish in one
/// round trip. Replies `{code, seq}`: 0 appended, 1 replay, 2 key reused,
/// 3 counter missing, 4 the log already holds this seq (counter regressed).
const APPEND_LUA: &str = r#"
if ARGV[5] ~= '' then
  local prior = redis.call('GET', KEYS[5])
  if prior then
    local sep = string.find(prior, ':', 1, true)
    local seq = tonumber(string.sub(prior, 1, sep - 1))
    if string.sub(prior, sep + 1) == ARGV[5] then return {1, seq} end
    return {2, seq}
  end
end
local last = redis.call('GET', KEYS[1])
if not last then return {3, 0} end
local seq = tonumber(last) + 1
local added = redis.pcall('XADD', KEYS[2], seq .. '-0', 'ts', ARGV[1], 'body', ARGV[2])
if type(added) == 'table' and added.err then return {4, seq} end
redis.call('SET', KEYS[1], seq)
if ARGV[5] ~= '' then redis.call('SET', KEYS[5], seq .. ':' .. ARGV[5], 'PX', ARGV[6]) end
redis.call('ZADD', KEYS[3], 'NX', ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[4], ARGV[3], #ARGV[2])
redis.call('HINCRBY', KEYS[4], ARGV[3] .. '#n', 1)
redis.call('PUBLISH', ARGV[4], 'm' .. seq .. ':' .. ARGV[1] .. ':' .. ARGV[2])
return {0, seq}
"#;

/// Raises the counter to max(counter, floor, newest log entry): the log's top
/// id is the seq, so a lost counter is re-seeded past anything still held.
const SEED_LUA: &str = r#"
local floor = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if top[1] then
  local id = top[1][1]
  local logged = tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
  if logged > floor then floor = logged end
end
if current > floor then floor = current end
redis.call('SET', KEYS[1], floor)
return floor
"#;

/// Clears a dirty mark only if nothing was appended since it was read.
const CLEAR_DIRTY_LUA: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local bytes = redis.call('HGET', KEYS[2], ARGV[1]) or '0'
if score and tonumber(score) == tonumber(ARGV[2]) and tonumber(bytes) == tonumber(ARGV[3]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1], ARGV[1] .. '#n')
  return 1
end
return 0
"#;

/// Raises a hash field to ARGV[2] when lower and refreshes the key's TTL.
const RAISE_LUA: &str = r#"
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local value = tonumber(ARGV[2])
if value > current then
  redis.call('HSET', KEYS[1], ARGV[1], value)
  current = value
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return current
"#;

/// GCRA on Redis' own clock (so instances with skewed clocks agree); the
/// same arithmetic as `tail::gcra`. Replies {allowed, remaining, retry_ms, reset_ms}.
const RATE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, 0, math.max(1, math.ceil(tat - now - tolerance)), math.ceil(tat - now)}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {1, math.floor((now + tolerance - tat) / interval), 0, math.ceil(new_tat - now)}
"#;

/// Takes a free lease, or renews one the caller holds.
const LEASE_LUA: &str = r#"
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Releases a lease only if the caller still holds it.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"#;

pub(crate) struct RedisTail {
    commands: ConnectionManager,
    keys: KeySchema,
    hub: LiveHub,
    /// Hands pushed live messages to the hub; owned by the tail, so it ends
    /// with it (it keeps a handle on the hub, which keeps the pub/sub
    /// connection, whose pushes it reads: it would never end by itself).
    _dispatcher: OwnedTask,
    append_script: Script,
    seed_script: Script,
    clear_dirty_script: Script,
    raise_script: Script,
    rate_script: Script,
    lease_script: Script,
    release_script: Script,
    metrics: Metrics,
}

/// Builds every key and channel name; the one place the schema is spelled out.
#[derive(Clone)]
struct KeySchema {
    prefix: String,
}

impl KeySchema {
    fn tag(&self, conv: &ConvKey) -> String {
        format!("{}:{{s{}}}", self.prefix, conv.shard())
    }
    fn seq(&self, conv: &ConvKey) -> String {
        format!("{}:seq:{}:{}", self.tag(conv), conv.app_id, conv.conversation_id)
    }
    fn log(&self, conv: &ConvKey) -> String {
        format!("{}:log:{}:{}", self.tag(conv), conv.app_id, conv.conversation_id)
    }
    fn idempotency(&self, conv: &ConvKey, key: &str) -> String {
        format!("{}:idem:{}:{}:{}", self.tag(conv), conv.app_id, conv.conversation_id, key)
    }
    fn dirty(&self, shard: u32) -> String {
        format!("{}:{{s{shard}}}:dirty", self.prefix)
    }
    fn dirty_bytes(&self, shard: u32) -> String {
        format!("{}:{{s{shard}}}:dirty-bytes", self.prefix)
    }
    fn channel(&self, conv: &ConvKey) -> String {
        format!("{}:live:{}:{}", self.prefix, conv.app_id, conv.conversation_id)
    }
    fn state(&self, key: &str) -> String {
        format!("{}:state:{key}", self.prefix)
    }
    fn rate(&self, key: &str) -> String {
        format!("{}:rate:{key}", self.prefix)
    }
    fn lease(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.prefix)
    }
}

fn dirty_member(conv: &ConvKey) -> String {
    format!("{}/{}", conv.app_id, conv.conversation_id)
}

fn parse_dirty_member(member: &str) -> Option<ConvKey> {
    let (app, conv) = member.split_once('/')?;
    Some(ConvKey::new(app, conv))
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::unavailable(DEPENDENCY, err)
}

fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt { dependency: DEPENDENCY, message: message.into() }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

/// The dispatch loop: each pushed pub/sub message, decoded, to the hub's
/// local subscribers of its channel.
async fn dispatch_pushes(hub: LiveHub, mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>) {
    while let Some(push) = pushes.recv().await {
        if push.kind != PushKind::Message {
            continue;
        }
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (push.data.first(), push.data.get(1))
        else {
            continue;
        };
        match LiveEvent::decode(payload) {
            Some(event) => hub.deliver(&String::from_utf8_lossy(channel), event),
            None => tracing::warn!(component = "live", "undecodable live payload dropped"),
        }
    }
}

struct RedisUpstream {
    connection: ConnectionManager,
}

#[async_trait]
impl Upstream for RedisUpstream {
    async fn subscribe(&self, channel: &str) -> Result<(), StoreError> {
        self.connection.clone().subscribe(channel).await.map_err(unavailable)
    }
    async fn unsubscribe(&self, channel: &str) -> Result<(), StoreError> {
        self.connection.clone().unsubscribe(channel).await.map_err(unavailable)
    }
}

impl RedisTail {
    /// Builds the clients without dialling; the first command connects.
    pub(crate) fn open(config: &RedisConfig, metrics: &Metrics) -> anyhow::Result<RedisTail> {
        let shown = config.url.redacted();
        let client = redis::Client::open(config.url.expose())
            .map_err(|e| anyhow::anyhow!("redis.url {shown} is not usable: {e}"))?;
        let commands = ConnectionManager::new_lazy_with_config(client, manager_config())
            .map_err(|e| anyhow::anyhow!("cannot set up the redis connection to {shown}: {e}"))?;

        // Live messages use RESP3 push frames so the manager can re-subscribe by
        // itself after a reconnect.
        let mut pubsub_url = url::Url::parse(config.url.expose())?;
        pubsub_url.query_pairs_mut().append_pair("protocol", "resp3");
        let pubsub_client = redis::Client::open(pubsub_url.as_str())
            .map_err(|e| anyhow::anyhow!("redis.url {shown} is not usable: {e}"))?;
        let (push_sender, pushes) = tokio::sync::mpsc::unbounded_channel();
        let pubsub = ConnectionManager::new_lazy_with_config(
            pubsub_client,
            manager_config().set_push_sender(push_sender).set_automatic_resubscription(),
        )
        .map_err(|e| anyhow::anyhow!("cannot set up the redis pub/sub connection to {shown}: {e}"))?;

        let hub = LiveHub::new(Some(Box::new(RedisUpstream { connection: pubsub })));
        let dispatcher = OwnedTask::spawn(dispatch_pushes(hub.clone(), pushes));

        Ok(RedisTail {
            commands,
            keys: KeySchema { prefix: config.key_prefix.clone() },
            hub,
            _dispatcher: dispatcher,
            append_script: Script::new(APPEND_LUA),
            seed_script: Script::new(SEED_LUA),
            clear_dirty_script: Script::new(CLEAR_DIRTY_LUA),
            raise_script: Script::new(RAISE_LUA),
            rate_script: Script::new(RATE_LUA),
            lease_script: Script::new(LEASE_LUA),
            release_script: Script::new(RELEASE_LUA),
            metrics: metrics.clone(),
        })
    }

    fn connection(&self) -> ConnectionManager {
        self.commands.clone()
    }

    /// Runs one logical Redis command (a script counts as one), timing it and
    /// counting failures under `command`.
    async fn timed<T>(
        &self,
        command: &'static str,
        request: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = request.await;
        self.metrics
            .redis_command_duration_seconds
            .with_label_values(&[command])
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.redis_errors_total.with_label_values(&[command]).inc();
        }
        result.map_err(unavailable)
    }
}

#[async_trait]
impl Tail for RedisTail {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let _: String = self.timed("ping", redis::cmd("PING").query_async(&mut connection)).await?;
        Ok(())
    }

    async fn memory(&self) -> Result<Option<TailMemory>, StoreError> {
        let mut connection = self.connection();
        let info: String = self.timed("info", redis::cmd("INFO").arg("memory").query_async(&mut connection)).await?;
        Ok(Some(TailMemory::from_info(&info)))
    }

    async fn append(&self, request: &AppendRequest) -> Result<AppendOutcome, StoreError> {
        let conv = &request.conv;
        let shard = conv.shard();
        let (idempotency_key, fingerprint, ttl_ms) = match &request.idempotency {
            Some(claim) => (
                self.keys.idempotency(conv, &claim.key),
                claim.fingerprint.clone(),
                claim.ttl.as_millis().max(1) as u64,
            ),
            // Unused by the script, but every key must hash to the same slot.
            None => (self.keys.seq(conv), String::new(), 0),
        };
        let mut connection = self.connection();
        let mut invocation = self.append_script.prepare_invoke();
        invocation
            .key(self.keys.seq(conv))
            .key(self.keys.log(conv))
            .key(self.keys.dirty(shard))
            .key(self.keys.dirty_bytes(shard))
            .key(idempotency_key)
            .arg(request.ts_ms)
            .arg(&request.body[..])
            .arg(dirty_member(conv))
            .arg(self.keys.channel(conv))
            .arg(fingerprint)
            .arg(ttl_ms);
        let invocation = invocation.invoke_async(&mut connection);
        let (code, seq): (u8, u64) = self.timed("append", invocation).await?;
        Ok(match code {
            0 => AppendOutcome::Appended(TailEntry { seq, ts_ms: request.ts_ms, body: request.body.clone() }),
            1 => AppendOutcome::Replayed { seq },
            2 => AppendOutcome::KeyReused { seq },
            3 | 4 => AppendOutcome::NeedsSeed,
            other => return Err(corrupt(format!("append script answered code {other}"))),
        })
    }

    async fn idempotency_claim(&self, conv: &ConvKey, key: &str) -> Result<Option<(u64, String)>, StoreError> {
        let mut connection = self.connection();
        let value: Option<String> = self.timed("get", connection.get(self.keys.idempotency(conv, key))).await?;
        Ok(value.and_then(|v| {
            let (seq, fingerprint) = v.split_once(':')?;
            Some((seq.parse().ok()?, fingerprint.to_string()))
        }))
    }

    async fn seed_seq(&self, conv: &ConvKey, last_seq: u64) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let mut invocation = self.seed_script.prepare_invoke();
        invocation.key(self.keys.seq(conv)).key(self.keys.log(conv)).arg(last_seq);
        let _: u64 = self.timed("seed", invocation.invoke_async(&mut connection)).await?;
        Ok(())
    }

    async fn last_seq(&self, conv: &ConvKey) -> Result<Option<u64>, StoreError> {
        let mut connection = self.connection();
        self.timed("get", connection.get(self.keys.seq(conv))).await
    }

    async fn read(&self, conv: &ConvKey, after_seq: u64, limit: usize) -> Result<Vec<TailEntry>, StoreError> {
        let mut connection = self.connection();
        let reply: redis::streams::StreamRangeReply = self
            .timed("xrange", connection.xrange_count(self.keys.log(conv), format!("{}-0", after_seq + 1), "+", limit))
            .await?;
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let seq = entry
                    .id
                    .split_once('-')
                    .and_then(|(seq, _)| seq.parse().ok())
                    .ok_or_else(|| corrupt(format!("tail entry id {} is not <seq>-0", entry.id)))?;
                let ts_ms = match entry.map.get("ts") {
                    Some(value) => redis::from_redis_value::<i64>(value.clone()).map_err(|e| corrupt(e.to_string()))?,
                    None => return Err(corrupt(format!("tail entry {} has no ts", entry.id))),
                };
                let body = match entry.map.get("body") {
                    Some(value) => {
                        redis::from_redis_value::<Vec<u8>>(value.clone()).map_err(|e| corrupt(e.to_string()))?
                    }
                    None => return Err(corrupt(format!("tail entry {} has no body", entry.id))),
                };
                Ok(TailEntry { seq, ts_ms, body })
            })
            .collect()
    }

    async fn trim(&self, conv: &ConvKey, through_seq: u64) -> Result<u64, StoreError> {
        let mut connection = self.connection();
        let mut command = redis::cmd("XTRIM");
        command.arg(self.keys.log(conv)).arg("MINID").arg(format!("{}-0", through_seq + 1));
        self.timed("xtrim", command.query_async(&mut connection)).await
    }

    async fn dirty(&self, shard: u32) -> Result<Vec<DirtyConversation>, StoreError> {
        let mut connection = self.connection();
        let mut pipe = redis::pipe();
        pipe.zrange_withscores(self.keys.dirty(shard), 0, -1).hgetall(self.keys.dirty_bytes(shard));
        let (marks, bytes): (Vec<(String, f64)>, std::collections::HashMap<String, u64>) =
            self.timed("dirty", pipe.query_async(&mut connection)).await?;
        Ok(marks
            .into_iter()
            .filter_map(|(member, first_ts)| {
                let conv = parse_dirty_member(&member)?;
                let messages = bytes.get(&format!("{member}#n")).copied().unwrap_or(0);
                let bytes = bytes.get(&member).copied().unwrap_or(0);
                Some(DirtyConversation { conv, first_ts_ms: first_ts as i64, bytes, messages })
            })
            .collect())
    }

    async fn clear_dirty(&self, seen: &DirtyConversation) -> Result<bool, StoreError> {
        let shard = seen.conv.shard();
        let mut connection = self.connection();
        let mut invocation = self.clear_dirty_script.prepare_invoke();
        invocation
            .key(self.keys.dirty(shard))
            .key(self.keys.dirty_bytes(shard))
            .arg(dirty_member(&seen.conv))
            .arg(seen.first_ts_ms)
            .arg(seen.bytes);
        let cleared: u8 = self.timed("clear_dirty", invocation.invoke_async(&mut connection)).await?;
        Ok(cleared == 1)
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(0) // keys carry their own TTLs
    }
}

#[async_trait]
impl Live for RedisTail {
    async fn publish(&self, conv: &ConvKey, event: &[u8]) -> Result<(), StoreError> {
        let payload = LiveEvent::Event(event.to_vec()).encode();
        let mut connection = self.connection();
        let _: i64 = self.timed("publish", connection.publish(self.keys.channel(conv), payload)).await?;
        Ok(())
    }

    async fn subscribe(&self, conv: &ConvKey) -> Result<LiveSubscription, StoreError> {
        self.hub.subscribe(self.keys.channel(conv)).await
    }
}

#[async_trait]
impl TtlState for RedisTail {
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(0) // keys carry their own TTLs
    }

    async fn state_set(&self, key: &str, field: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let key = self.keys.state(key);
        let mut connection = self.connection();
        let mut pipe = redis::pipe();
        pipe.atomic().hset(&key, field, value).ignore().pexpire(&key, ttl.as_millis().max(1) as i64).ignore();
        let _: () = self.timed("state_set", pipe.query_async(&mut connection)).await?;
        Ok(())
    }

    async fn state_raise(&self, key: &str, field: &str, value: u64, ttl: Duration) -> Result<u64, StoreError> {
        let mut connection = self.connection();
        let mut invocation = self.raise_script.prepare_invoke();
        invocation.key(self.keys.state(key)).arg(field).arg(value).arg(ttl.as_millis().max(1) as u64);
        let invocation = invocation.invoke_async(&mut connection);
        self.timed("state_raise", invocation).await
    }

    async fn state_get(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut connection = self.connection();
        let fields: std::collections::BTreeMap<String, Vec<u8>> =
            self.timed("state_get", connection.hgetall(self.keys.state(key))).await?;
        Ok(fields.into_iter().collect())
    }
}

#[async_trait]
impl Coordination for RedisTail {
    async fn rate_limit(&self, key: &str, rate_per_second: f64, burst: u32) -> Result<RateDecision, StoreError> {
        let mut connection = self.connection();
        let mut invocation = self.rate_script.prepare_invoke();
        invocation.key(self.keys.rate(key)).arg(1000.0 / rate_per_second).arg(burst.max(1));
        let invocation = invocation.invoke_async(&mut connection);
        let (allowed, remaining, retry_after_ms, reset_ms): (u8, u32, u64, u64) =
            self.timed("rate_limit", invocation).await?;
        Ok(RateDecision { allowed: allowed == 1, remaining, retry_after_ms, reset_ms })
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut connection = self.connection();
        let mut invocation = self.lease_script.prepare_invoke();
        invocation.key(self.keys.lease(name)).arg(holder).arg(ttl.as_millis().max(1) as u64);
        let taken: u8 = self.timed("lease", invocation.invoke_async(&mut connection)).await?;
        Ok(taken == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let mut invocation = self.release_script.prepare_invoke();
        invocation.key(self.keys.lease(name)).arg(holder);
        let _: u8 = self.timed("lease", invocation.invoke_async(&mut connection)).await?;
        Ok(())
    }
}
