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
use sha2::{Digest, Sha256};

use super::coordination::Coordination;
use super::live::{Live, LiveEvent, LiveHub, LiveSubscription, Upstream};
use super::state::TtlState;
use super::tail::{AppendOutcome, AppendRequest, ConvKey, DirtyConversation, Tail, TailEntry, TailMemory, TAIL_SHARDS};
use super::StoreError;
use crate::config::RedisConfig;
use crate::ratelimit::{Grant, RateCheck, RateDecision};
use crate::telemetry::Metrics;
use crate::worker::OwnedTask;

const DEPENDENCY: &str = "redis";

/// Idempotency checks, seq assignment, appends, dirty mark and publishes for
/// a batch of one conversation's messages in one round trip. KEYS: 1 seq,
/// 2 log, 3 dirty, 4 dirty-bytes, 5–7 the shard's filter of released keys of
/// this generation and the two before, then one idempotency key per message
/// (the seq key again for a message without one: every key must hash to the
/// same slot). ARGV: 1 dirty member, 2 channel, then ts, body, fingerprint
/// ('' = no key), claim TTL (ms) and filter offsets (comma-separated; '' =
/// do not check the filter) per message. Replies {code, seq} per message: 0
/// appended, 1 replay, 2 key reused, 3 needs a re-seed (the counter is
/// missing, or the log already holds the next seq: the counter regressed;
/// nothing from that message on was written), 4 check the durable record (no
/// claim, but the filter holds the key: its claim may have been released
/// after a flush), 5 not attempted (after a 4, nothing more is written; the
/// keyed messages the filter holds are marked 4 too, so one lookup serves).
const APPEND_LUA: &str = r#"
local n = #KEYS - 7
local reply = {}
local last = redis.call('GET', KEYS[1])
if not last then
  for i = 1, n do reply[2 * i - 1], reply[2 * i] = 3, 0 end
  return reply
end
local function filtered(bits)
  if bits == '' then return false end
  for g = 5, 7 do
    local all = true
    for bit in string.gmatch(bits, '%d+') do
      if redis.call('GETBIT', KEYS[g], bit) == 0 then all = false break end
    end
    if all then return true end
  end
  return false
end
local seq = tonumber(last)
local bytes, count, stopped, checking = 0, 0, false, false
for i = 1, n do
  local a = 5 * i - 2
  local ts, body, fingerprint, ttl, bits = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local code, at = 3, 0
  if checking then
    code = 5
    if fingerprint ~= '' and not redis.call('GET', KEYS[7 + i]) and filtered(bits) then code = 4 end
  elseif not stopped then
    local prior = false
    if fingerprint ~= '' then prior = redis.call('GET', KEYS[7 + i]) end
    if prior then
      local sep = string.find(prior, ':', 1, true)
      at = tonumber(string.sub(prior, 1, sep - 1))
      if string.sub(prior, sep + 1) == fingerprint then code = 1 else code = 2 end
    elseif fingerprint ~= '' and filtered(bits) then
      code, checking = 4, true
    else
      local added = redis.pcall('XADD', KEYS[2], (seq + 1) .. '-0', 'ts', ts, 'body', body)
      if type(added) == 'table' and added.err then
        stopped = true
      else
        seq = seq + 1
        code, at = 0, seq
        if fingerprint ~= '' then redis.call('SET', KEYS[7 + i], seq .. ':' .. fingerprint, 'PX', ttl) end
        redis.call('ZADD', KEYS[3], 'NX', ts, ARGV[1])
        bytes, count = bytes + #body, count + 1
        redis.call('PUBLISH', ARGV[2], 'm' .. seq .. ':' .. ts .. ':' .. body)
      end
    end
  end
  reply[2 * i - 1], reply[2 * i] = code, at
end
if count > 0 then
  redis.call('SET', KEYS[1], seq)
  redis.call('HINCRBY', KEYS[4], ARGV[1], bytes)
  redis.call('HINCRBY', KEYS[4], ARGV[1] .. '#n', count)
end
return reply
"#;

/// The filter's generations at one time: half the idempotency window each,
/// so the current one and the two before cover every key released within
/// the window.
struct Generations {
    start: i64,
    length_ms: i64,
}

impl Generations {
    fn at(window: Duration, now: i64) -> Generations {
        let length_ms = (window.as_millis() as i64 / 2).max(1);
        Generations { start: now.div_euclid(length_ms) * length_ms, length_ms }
    }

    /// The generations a check reads, newest first.
    fn checked(&self) -> [i64; 3] {
        [self.start, self.start - self.length_ms, self.start - 2 * self.length_ms]
    }

    /// When the current generation's filter is read for the last time.
    fn expires_at(&self) -> i64 {
        self.start + 3 * self.length_ms
    }
}

/// Claims released per `UNLINK`.
const RELEASE_CHUNK: usize = 512;

/// Bits set per key in the filter of released keys: a false "maybe" costs
/// one record lookup for ~0.5% of new keys at 12 bits a key (the default
/// size at the seed load) and ~6% at 6 (load/vps.toml's).
const FILTER_HASHES: u64 = 5;

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

/// Raises hash fields when lower, in order, and refreshes the key's TTL.
/// ARGV[1] is the TTL (ms), then field and value pairs; replies each field's
/// value afterwards.
const RAISE_LUA: &str = r#"
local reply = {}
for i = 2, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local value = tonumber(ARGV[i + 1])
  if value > current then
    redis.call('HSET', KEYS[1], ARGV[i], value)
    current = value
  end
  reply[#reply + 1] = current
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return reply
"#;

/// GCRA on Redis' own clock (so instances with skewed clocks agree), the
/// same arithmetic as `ratelimit::take`, for several checks in order (a
/// bucket named by two checks is one bucket). ARGV[1] is the number of
/// checks; then per check: how many are wanted, its number of buckets n, and
/// interval and burst per bucket, whose keys are the next n KEYS. Replies per
/// check: the grant, then remaining, retry_ms and reset_ms per bucket
/// (retry_ms 0: the bucket held all that was wanted).
const RATE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tats, touched, reply = {}, {}, {}
local k, a = 1, 2
for _ = 1, tonumber(ARGV[1]) do
  local wanted, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local granted, held, intervals, tolerances = wanted, {}, {}, {}
  for i = 0, n - 1 do
    local key = KEYS[k + i]
    if tats[key] == nil then tats[key] = tonumber(redis.call('GET', key) or now) end
    local tat = math.max(tats[key], now)
    intervals[i] = tonumber(ARGV[a + 2 * i])
    tolerances[i] = intervals[i] * (tonumber(ARGV[a + 2 * i + 1]) - 1)
    held[i] = 0
    if tat - now <= tolerances[i] then held[i] = math.floor((now + tolerances[i] - tat) / intervals[i]) + 1 end
    if held[i] < granted then granted = held[i] end
  end
  reply[#reply + 1] = granted
  for i = 0, n - 1 do
    local key = KEYS[k + i]
    local tat = math.max(tats[key], now) + granted * intervals[i]
    if granted > 0 then
      tats[key] = tat
      touched[key] = true
    end
    local retry = 0
    if held[i] < wanted then retry = math.max(1, math.ceil(tat - now - tolerances[i])) end
    reply[#reply + 1] = held[i] - granted
    reply[#reply + 1] = retry
    reply[#reply + 1] = math.ceil(tat - now)
  end
  k = k + n
  a = a + 2 * n
end
for key in pairs(touched) do
  redis.call('SET', key, tostring(tats[key]), 'PX', math.ceil(tats[key] - now) + 1000)
end
return reply
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

/// Releases idempotency claims whose messages are flushed and recorded: first
/// their keys into this generation's filter (created whole when missing, so
/// Redis allocates it exactly — a string grown by SETBIT takes twice its
/// size — and expiring three generations after its start), then the claims.
/// KEYS: 1 the filter, then the claims. ARGV: 1 the filter's expiry (Unix
/// ms), 2 its size in bytes, then each claim's comma-separated offsets.
/// Replies how many claims were held.
const RELEASE_CLAIMS_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], string.rep('\0', tonumber(ARGV[2])), 'PXAT', ARGV[1])
end
for i = 3, #ARGV do
  for bit in string.gmatch(ARGV[i], '%d+') do redis.call('SETBIT', KEYS[1], bit, 1) end
end
local held = 0
for i = 2, #KEYS do held = held + redis.call('UNLINK', KEYS[i]) end
return held
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
    release_claims_script: Script,
    /// The idempotency window: the filter's generations are half of it.
    window: Duration,
    /// Bits in one shard's filter of one generation.
    filter_bits: u64,
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
    /// The shard's filter of idempotency keys released in the generation
    /// starting at `start_ms`.
    fn idempotency_filter(&self, conv: &ConvKey, start_ms: i64) -> String {
        format!("{}:idem-filter:{start_ms}", self.tag(conv))
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
    /// Rate buckets are tagged by app, so one script can check several.
    fn rate(&self, app_id: &str, key: &str) -> String {
        format!("{}:{{a:{app_id}}}:rate:{key}", self.prefix)
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
/// local subscribers of its channel. When the connection drops it
/// reconnects (the manager alone gives up after a few tries, and nothing
/// else would use the connection again), then has every local subscriber
/// catch up from the timeline: what was published meanwhile never came.
async fn dispatch_pushes(
    hub: LiveHub,
    mut pubsub: ConnectionManager,
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    while let Some(push) = pushes.recv().await {
        if push.kind == PushKind::Disconnection {
            tracing::warn!(component = "live", "redis pub/sub connection lost; reconnecting");
            let mut delay = Duration::from_millis(250);
            // The manager re-subscribes every channel before the connection answers.
            while redis::cmd("PING").query_async::<()>(&mut pubsub).await.is_err() {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            tracing::info!(component = "live", "redis pub/sub reconnected; subscribers catch up from the timeline");
            hub.resync_all();
            continue;
        }
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
    /// `window` is the idempotency window (`limits.idempotency_ttl` at start),
    /// which sets the filter's generations.
    pub(crate) fn open(config: &RedisConfig, window: Duration, metrics: &Metrics) -> anyhow::Result<RedisTail> {
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

        let hub = LiveHub::new(Some(Box::new(RedisUpstream { connection: pubsub.clone() })));
        let dispatcher = OwnedTask::spawn(dispatch_pushes(hub.clone(), pubsub, pushes));

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
            release_claims_script: Script::new(RELEASE_CLAIMS_LUA),
            window,
            filter_bits: (config.idempotency_filter_bytes / (u64::from(TAIL_SHARDS) * 3)).max(8) * 8,
            metrics: metrics.clone(),
        })
    }

    /// The filter offsets of a claim's key, comma-separated: double hashing
    /// of a SHA-256 of the conversation and key.
    fn filter_offsets(&self, conv: &ConvKey, key: &str) -> String {
        let mut hasher = Sha256::new();
        for part in [conv.app_id.as_bytes(), &[0], conv.conversation_id.as_bytes(), &[0], key.as_bytes()] {
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let word = |at: usize| u64::from_le_bytes(digest[at..at + 8].try_into().expect("8 bytes"));
        let (first, step) = (word(0), word(8) | 1);
        let mut offsets = String::with_capacity(8 * FILTER_HASHES as usize);
        for i in 0..FILTER_HASHES {
            if i > 0 {
                offsets.push(',');
            }
            offsets.push_str(&(first.wrapping_add(i.wrapping_mul(step)) % self.filter_bits).to_string());
        }
        offsets
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

    async fn append_batch(&self, requests: &[AppendRequest]) -> Result<Vec<AppendOutcome>, StoreError> {
        let Some(first) = requests.first() else { return Ok(Vec::new()) };
        let conv = &first.conv;
        assert!(requests.iter().all(|r| r.conv == *conv), "a batch appends to one conversation");
        let shard = conv.shard();
        let generations = Generations::at(self.window, first.ts_ms);
        let mut invocation = self.append_script.prepare_invoke();
        invocation
            .key(self.keys.seq(conv))
            .key(self.keys.log(conv))
            .key(self.keys.dirty(shard))
            .key(self.keys.dirty_bytes(shard));
        for start in generations.checked() {
            invocation.key(self.keys.idempotency_filter(conv, start));
        }
        invocation.arg(dirty_member(conv)).arg(self.keys.channel(conv));
        for request in requests {
            match &request.idempotency {
                Some(claim) => invocation
                    .key(self.keys.idempotency(conv, &claim.key))
                    .arg(request.ts_ms)
                    .arg(&request.body[..])
                    .arg(&claim.fingerprint)
                    .arg(claim.ttl.as_millis().max(1) as u64)
                    .arg(if claim.record_checked { String::new() } else { self.filter_offsets(conv, &claim.key) }),
                None => {
                    invocation.key(self.keys.seq(conv)).arg(request.ts_ms).arg(&request.body[..]).arg("").arg(0).arg("")
                }
            };
        }
        let mut connection = self.connection();
        let reply: Vec<u64> = self.timed("append", invocation.invoke_async(&mut connection)).await?;
        if reply.len() != 2 * requests.len() {
            return Err(corrupt(format!(
                "append script answered {} values for {} messages",
                reply.len(),
                requests.len()
            )));
        }
        reply
            .chunks(2)
            .zip(requests)
            .map(|(fields, request)| {
                let seq = fields[1];
                Ok(match fields[0] {
                    0 => AppendOutcome::Appended(TailEntry { seq, ts_ms: request.ts_ms, body: request.body.clone() }),
                    1 => AppendOutcome::Replayed { seq },
                    2 => AppendOutcome::KeyReused { seq },
                    3 => AppendOutcome::NeedsSeed,
                    4 => AppendOutcome::CheckRecord,
                    5 => AppendOutcome::NotAttempted,
                    other => return Err(corrupt(format!("append script answered code {other}"))),
                })
            })
            .collect()
    }

    async fn idempotency_claims(
        &self,
        conv: &ConvKey,
        keys: &[&str],
    ) -> Result<Vec<Option<(u64, String)>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|key| self.keys.idempotency(conv, key)).collect();
        let mut command = redis::cmd("MGET");
        command.arg(&names);
        let mut connection = self.connection();
        let values: Vec<Option<String>> = self.timed("get", command.query_async(&mut connection)).await?;
        Ok(values
            .into_iter()
            .map(|value| {
                let value = value?;
                let (seq, fingerprint) = value.split_once(':')?;
                Some((seq.parse().ok()?, fingerprint.to_string()))
            })
            .collect())
    }

    fn releases_claims(&self) -> bool {
        true
    }

    async fn release_claims(&self, conv: &ConvKey, keys: &[String], now: i64) -> Result<u64, StoreError> {
        let generations = Generations::at(self.window, now);
        let mut released = 0;
        for chunk in keys.chunks(RELEASE_CHUNK) {
            let mut invocation = self.release_claims_script.prepare_invoke();
            invocation
                .key(self.keys.idempotency_filter(conv, generations.start))
                .arg(generations.expires_at())
                .arg(self.filter_bits / 8);
            for key in chunk {
                invocation.key(self.keys.idempotency(conv, key)).arg(self.filter_offsets(conv, key));
            }
            let mut connection = self.connection();
            let held: u64 = self.timed("release_claims", invocation.invoke_async(&mut connection)).await?;
            released += held;
        }
        Ok(released)
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

    async fn state_raise_many(
        &self,
        key: &str,
        raises: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<u64>, StoreError> {
        let mut connection = self.connection();
        let mut invocation = self.raise_script.prepare_invoke();
        invocation.key(self.keys.state(key)).arg(ttl.as_millis().max(1) as u64);
        for (field, value) in raises {
            invocation.arg(field).arg(*value);
        }
        let invocation = invocation.invoke_async(&mut connection);
        self.timed("state_raise", invocation).await
    }

    async fn state_remove(&self, key: &str, fields: &[String]) -> Result<(), StoreError> {
        if fields.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection();
        let _: () = self.timed("state_remove", connection.hdel(self.keys.state(key), fields)).await?;
        Ok(())
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
    async fn rate_limit_many(&self, app_id: &str, checks: &[RateCheck]) -> Result<Vec<Grant>, StoreError> {
        let mut connection = self.connection();
        let mut invocation = self.rate_script.prepare_invoke();
        invocation.arg(checks.len());
        for check in checks {
            invocation.arg(check.wanted).arg(check.buckets.len());
            for bucket in &check.buckets {
                invocation.key(self.keys.rate(app_id, &bucket.key)).arg(bucket.interval_ms()).arg(bucket.burst.max(1));
            }
        }
        let invocation = invocation.invoke_async(&mut connection);
        let reply: Vec<u64> = self.timed("rate_limit", invocation).await?;
        let expected: usize = checks.iter().map(|check| 1 + 3 * check.buckets.len()).sum();
        if reply.len() != expected {
            return Err(corrupt(format!("rate script answered {} values, not {expected}", reply.len())));
        }
        let mut values = reply.into_iter();
        Ok(checks
            .iter()
            .map(|check| {
                let granted = values.next().unwrap_or(0) as u32;
                let decisions = (0..check.buckets.len())
                    .map(|_| {
                        let (remaining, retry_after_ms, reset_ms) =
                            (values.next().unwrap_or(0), values.next().unwrap_or(0), values.next().unwrap_or(0));
                        RateDecision {
                            allowed: retry_after_ms == 0,
                            remaining: remaining as u32,
                            retry_after_ms,
                            reset_ms,
                        }
                    })
                    .collect();
                Grant { granted, decisions }
            })
            .collect())
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
