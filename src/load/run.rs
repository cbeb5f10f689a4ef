//! `msgd load run`: a scenario at a set rate with live receivers.
//!
//! Senders (dev-token users over HTTP, or one WebSocket each) send into
//! `conversations` conversations at the rate of each phase, every message
//! keyed with a `client_msg_id` as SDKs send it; `receivers` WebSockets per
//! conversation check that every message arrives exactly once and in seq
//! order, reconnecting with `since_seq` where a phase says so. Latency is
//! measured from each message's scheduled time (so a server that falls behind
//! shows as latency, not as a lower offered rate).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::{
    conversation_of, dev_token, failure_key, round3, server_rss, server_sample, ws_url, Failures, Socket, NO_RESPONSE,
};

/// How senders reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Http,
    Ws,
}

/// One phase of a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    /// How long the phase lasts, e.g. `"30s"`.
    #[serde(deserialize_with = "human_duration")]
    pub duration: Duration,
    /// Messages per second at the start of the phase ...
    pub rate: f64,
    /// ... rising (or falling) linearly to this by its end; `rate` throughout when absent.
    #[serde(default)]
    pub rate_to: Option<f64>,
    /// Every receiver drops its socket at the start of the phase and comes
    /// back with `since_seq` (a reconnect storm).
    #[serde(default)]
    pub reconnect: bool,
}

fn human_duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

impl Phase {
    /// Messages due `elapsed` into the phase (the rate integrated).
    fn due(&self, elapsed: Duration) -> f64 {
        let t = elapsed.min(self.duration).as_secs_f64();
        let to = self.rate_to.unwrap_or(self.rate);
        let span = self.duration.as_secs_f64().max(f64::EPSILON);
        self.rate * t + (to - self.rate) * t * t / (2.0 * span)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub base_url: String,
    /// An admin key of the app to load (mints dev tokens, creates conversations).
    pub admin_key: String,
    pub phases: Vec<Phase>,
    pub users: usize,
    pub conversations: usize,
    /// Receiving WebSockets per conversation.
    pub receivers: usize,
    pub payload_bytes: usize,
    /// Messages per request (HTTP batches; WebSocket sends are single).
    pub batch: usize,
    pub via: Via,
    /// Requests in flight at most; a due send waits for a slot (and its
    /// latency shows it).
    pub in_flight: usize,
    /// Stop after this many messages whatever the phases say.
    pub max_messages: usize,
}

/// Live counts, for a progress display while the run goes on.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicUsize,
    pub acked: AtomicUsize,
    pub errors: AtomicUsize,
    pub received: AtomicUsize,
    pub phase: Mutex<String>,
    ack: Histogram,
    delivery: Histogram,
}

impl Counters {
    /// The ack latency's 99th percentile so far, in ms.
    pub fn ack_p99_ms(&self) -> f64 {
        self.ack.percentile_ms(0.99)
    }
}

/// Latencies in buckets 5% apart (1 µs to ~17 min): percentiles any time
/// without keeping every sample; a reported value is its bucket's upper bound.
#[derive(Debug)]
struct Histogram {
    buckets: Vec<AtomicU64>,
}

const BUCKETS: usize = 430;

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl Histogram {
    fn record(&self, latency: Duration) {
        let us = latency.as_secs_f64() * 1e6;
        let index = if us <= 1.0 { 0 } else { (us.ln() / 1.05f64.ln()).ceil() as usize };
        self.buckets[index.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64 * p).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return round3(1.05f64.powi(index as i32) / 1000.0);
            }
        }
        unreachable!("the rank is within the total")
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub phases: Vec<String>,
    pub via: Via,
    pub users: usize,
    pub conversations: usize,
    pub receivers: usize,
    pub batch: usize,
    /// True when stopped early (Ctrl-C): the counts are what happened so far.
    pub interrupted: bool,
    pub elapsed_seconds: f64,
    /// Messages sent and acknowledged.
    pub sent: usize,
    pub acked: usize,
    pub acked_per_second: f64,
    pub errors: usize,
    /// `errors` by HTTP status (or `ws`) and error code.
    pub failures: Failures,
    pub ack_ms_p50: f64,
    pub ack_ms_p99: f64,
    /// Message frames the receivers should have had (acked × receivers per conversation) ...
    pub expected_frames: usize,
    /// ... and had, and their send → frame latency.
    pub received_frames: usize,
    pub delivery_ms_p50: f64,
    pub delivery_ms_p99: f64,
    /// Seqs a receiver never saw (skipped over, or missing at the end).
    pub gaps: usize,
    /// Frames a receiver saw twice, or out of seq order.
    pub duplicates: usize,
    pub reconnects: usize,
    /// CPU the server process used while messages were sent, as a share of
    /// one core (its `/metrics`, which count whole CPU seconds: meaningful
    /// over runs of a minute or more; Redis and Postgres not included) ...
    pub server_cpu_share: Option<f64>,
    /// ... and its resident memory at the end; null when it does not report them.
    pub server_rss_bytes: Option<u64>,
}

/// One receiving socket's view of its conversation.
#[derive(Default)]
struct Seen {
    last_seq: u64,
    gaps: usize,
    duplicates: usize,
}

/// Runs `plan` until its phases end, `max_messages` are sent or `stop`
/// resolves; `counters` show progress meanwhile.
pub async fn run(
    plan: &RunPlan,
    counters: Arc<Counters>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RunReport> {
    if plan.phases.is_empty() || plan.users == 0 || plan.conversations == 0 || plan.batch == 0 || plan.in_flight == 0 {
        bail!("a run needs at least one phase, user, conversation, message per request and request in flight");
    }
    if plan.via == Via::Ws && plan.batch > 1 {
        bail!("--batch applies to HTTP sends; WebSocket sends carry one message each");
    }
    if plan.phases.iter().any(|p| !(p.rate >= 0.0 && p.rate_to.unwrap_or(0.0) >= 0.0)) {
        bail!("phase rates must be ≥ 0");
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(plan.in_flight).build()?;
    let base = plan.base_url.trim_end_matches('/').to_string();
    let run_id = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis());

    // Users: conversation c is sent into by the users u ≡ c (mod conversations), or by user
    // c mod users when there are fewer users than conversations.
    let senders_of = |c: usize| -> Vec<usize> {
        if plan.users >= plan.conversations {
            (c..plan.users).step_by(plan.conversations).collect()
        } else {
            vec![c % plan.users]
        }
    };
    let mut tokens = Vec::with_capacity(plan.users);
    for u in 0..plan.users {
        tokens.push(dev_token(&client, &base, &plan.admin_key, &format!("load-{u}")).await?);
    }
    let mut conversations = Vec::with_capacity(plan.conversations);
    for c in 0..plan.conversations {
        let mut members: Vec<String> = senders_of(c).iter().map(|u| format!("load-{u}")).collect();
        members.extend((0..plan.receivers).map(|r| format!("load-r{c}-{r}")));
        conversations.push(conversation_of(&client, &base, &plan.admin_key, &members, "msgd load run").await?);
    }

    // Receivers, subscribed before anything is sent.
    let epoch = Instant::now();
    let reconnect = Arc::new(tokio::sync::watch::channel(0usize).0);
    let finished = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for (c, id) in conversations.iter().enumerate() {
        for r in 0..plan.receivers {
            let token = dev_token(&client, &base, &plan.admin_key, &format!("load-r{c}-{r}")).await?;
            let url = ws_url(&base, &plan.admin_key, Some(&token));
            let socket = subscribe(&url, id, 0).await?;
            let (counters, mut storms, finished) = (counters.clone(), reconnect.subscribe(), finished.clone());
            let id = id.clone();
            receivers.push((
                c,
                tokio::spawn(async move { receive(socket, &url, &id, epoch, &counters, &mut storms, &finished).await }),
            ));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // subscriptions settle

    // Senders.
    let senders = match plan.via {
        Via::Http => {
            Senders::Http { client: client.clone(), tokens, base: base.clone(), admin_key: plan.admin_key.clone() }
        }
        Via::Ws => {
            let mut sockets = Vec::with_capacity(tokens.len());
            for token in &tokens {
                let url = ws_url(&base, &plan.admin_key, Some(token));
                let (socket, _) = tokio_tungstenite::connect_async(url).await.context("sender websocket")?;
                sockets.push(WsSender::start(socket));
            }
            Senders::Ws(sockets)
        }
    };
    let senders = Arc::new(senders);
    let slots = Arc::new(Semaphore::new(plan.in_flight));
    let acked_per_conversation: Arc<Vec<AtomicUsize>> =
        Arc::new((0..plan.conversations).map(|_| AtomicUsize::new(0)).collect());
    let failures: Arc<Mutex<Failures>> = Arc::default();
    let payload = "x".repeat(plan.payload_bytes);

    let cpu_series = "msgd_process_cpu_seconds_total";
    let cpu_before = server_sample(&client, &base, cpu_series).await;
    let started = Instant::now();
    let mut interrupted = false;
    let mut next = 0usize; // messages scheduled so far
    let mut turn = 0usize; // requests scheduled so far
    tokio::pin!(stop);
    'phases: for phase in &plan.phases {
        *counters.phase.lock().expect("phase lock") = phase.name.clone();
        if phase.reconnect {
            reconnect.send_modify(|storm| *storm += 1);
        }
        let phase_start = Instant::now();
        let phase_base = next;
        loop {
            let elapsed = phase_start.elapsed();
            let due = phase_base + phase.due(elapsed) as usize;
            if next >= plan.max_messages {
                break 'phases;
            }
            if next + plan.batch > due {
                if elapsed >= phase.duration {
                    break;
                }
                // Sleep until the next request is due (or the phase ends).
                let wait = time_until(phase, elapsed, (next + plan.batch - phase_base) as f64);
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(Duration::from_millis(50))) => continue,
                    _ = &mut stop => { interrupted = true; break 'phases; }
                }
            }
            // Latency counts from when the request was due, not from when a slot freed.
            let scheduled = phase_start + time_until(phase, Duration::ZERO, (next + plan.batch - phase_base) as f64);
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore stays open"),
                _ = &mut stop => { interrupted = true; break 'phases; }
            };
            let size = plan.batch.min(plan.max_messages - next);
            let c = turn % plan.conversations;
            let senders_of_c = senders_of(c);
            let user = senders_of_c[(turn / plan.conversations) % senders_of_c.len()];
            let messages: Vec<serde_json::Value> = (next..next + size)
                .map(|n| {
                    json!({
                        "payload": {"text": payload, "n": n, "sent_us": epoch.elapsed().as_micros() as u64},
                        "client_msg_id": format!("run-{run_id}-{n}"),
                    })
                })
                .collect();
            counters.sent.fetch_add(size, Ordering::Relaxed);
            let request = Request { conversation: conversations[c].clone(), index: c, user, messages, scheduled };
            let (senders, counters, acked, failures) =
                (senders.clone(), counters.clone(), acked_per_conversation.clone(), failures.clone());
            tokio::spawn(async move {
                let outcome = senders.send(&request).await;
                let latency = request.scheduled.elapsed();
                for result in outcome {
                    match result {
                        Ok(()) => {
                            counters.ack.record(latency);
                            counters.acked.fetch_add(1, Ordering::Relaxed);
                            acked[request.index].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(key) => {
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                            *failures.lock().expect("failures lock").entry(key).or_default() += 1;
                        }
                    }
                }
                drop(permit); // counted before the end of the run waits for every slot
            });
            next += size;
            turn += 1;
        }
    }
    // Every request in flight answered (or the wait is cut short by Ctrl-C).
    let drained = slots.acquire_many(plan.in_flight as u32);
    let _ =
        tokio::time::timeout(if interrupted { Duration::from_secs(2) } else { Duration::from_secs(30) }, drained).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = server_sample(&client, &base, cpu_series).await;
    let server_cpu_share = cpu_before.zip(cpu_after).map(|(before, after)| round3((after - before) / elapsed));

    // Receivers catch up to what was acknowledged, then report.
    let deadline = Instant::now() + if interrupted { Duration::from_secs(1) } else { Duration::from_secs(10) };
    let expected_per_conversation: Vec<usize> =
        acked_per_conversation.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    let expected_frames: usize = expected_per_conversation.iter().map(|n| n * plan.receivers).sum();
    while counters.received.load(Ordering::Relaxed) < expected_frames && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    finished.store(true, Ordering::Relaxed);
    let (mut gaps, mut duplicates, mut reconnects) = (0, 0, 0);
    for (c, receiver) in receivers {
        let (seen, count) = match tokio::time::timeout(Duration::from_secs(5), receiver).await {
            Ok(Ok(done)) => done,
            _ => (Seen::default(), 0),
        };
        gaps += seen.gaps + (expected_per_conversation[c] as u64).saturating_sub(seen.last_seq) as usize;
        duplicates += seen.duplicates;
        reconnects += count;
    }
    let acked = counters.acked.load(Ordering::Relaxed);
    let failures = failures.lock().expect("failures lock").clone();
    Ok(RunReport {
        phases: plan.phases.iter().map(|p| p.name.clone()).collect(),
        via: plan.via,
        users: plan.users,
        conversations: plan.conversations,
        receivers: plan.receivers,
        batch: plan.batch,
        interrupted,
        elapsed_seconds: round3(elapsed),
        sent: counters.sent.load(Ordering::Relaxed),
        acked,
        acked_per_second: round3(acked as f64 / elapsed.max(f64::EPSILON)),
        errors: failures.values().sum(),
        failures,
        ack_ms_p50: counters.ack.percentile_ms(0.5),
        ack_ms_p99: counters.ack.percentile_ms(0.99),
        expected_frames,
        received_frames: counters.received.load(Ordering::Relaxed),
        delivery_ms_p50: counters.delivery.percentile_ms(0.5),
        delivery_ms_p99: counters.delivery.percentile_ms(0.99),
        gaps,
        duplicates,
        reconnects,
        server_cpu_share,
        server_rss_bytes: server_rss(&client, &base).await,
    })
}

/// How long until `wanted` messages are due in `phase`, from `elapsed`.
fn time_until(phase: &Phase, elapsed: Duration, wanted: f64) -> Duration {
    let (mut low, mut high) = (elapsed.as_secs_f64(), phase.duration.as_secs_f64());
    if phase.due(phase.duration) < wanted {
        return phase.duration.saturating_sub(elapsed);
    }
    for _ in 0..40 {
        let mid = (low + high) / 2.0;
        if phase.due(Duration::from_secs_f64(mid)) >= wanted {
            high = mid;
        } else {
            low = mid;
        }
    }
    Duration::from_secs_f64(high).saturating_sub(elapsed)
}

/// One request: `messages` into conversation number `index` from user `user`.
struct Request {
    conversation: String,
    index: usize,
    user: usize,
    messages: Vec<serde_json::Value>,
    scheduled: Instant,
}

enum Senders {
    /// `base` is the server's URL, `admin_key` the app's key sent with every request.
    Http {
        client: reqwest::Client,
        tokens: Vec<String>,
        base: String,
        admin_key: String,
    },
    Ws(Vec<WsSender>),
}

impl Senders {
    /// Sends one request; a result per message (the failure key on error).
    async fn send(&self, request: &Request) -> Vec<Result<(), String>> {
        match self {
            Senders::Http { client, tokens, base, admin_key } => {
                http_send(client, base, admin_key, &tokens[request.user], request).await
            }
            Senders::Ws(sockets) => vec![sockets[request.user].send(request).await],
        }
    }
}

async fn http_send(
    client: &reqwest::Client,
    base: &str,
    admin_key: &str,
    token: &str,
    request: &Request,
) -> Vec<Result<(), String>> {
    let id = &request.conversation;
    let single = request.messages.len() == 1;
    let builder = if single {
        client.post(format!("{base}/v1/conversations/{id}/messages")).json(&request.messages[0])
    } else {
        client.post(format!("{base}/v1/conversations/{id}/messages/batch")).json(&json!({"messages": request.messages}))
    };
    let reply = builder.header("x-api-key", admin_key).bearer_auth(token).send().await;
    let every = |result: Result<(), String>| vec![result; request.messages.len()];
    let Ok(reply) = reply else { return every(Err(NO_RESPONSE.into())) };
    let status = reply.status();
    let Ok(body) = reply.bytes().await else { return every(Err(NO_RESPONSE.into())) };
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        return every(Err(failure_key(status.as_u16(), &value["error"])));
    }
    if single {
        return every(Ok(()));
    }
    let results = value["results"].as_array().cloned().unwrap_or_default();
    (0..request.messages.len())
        .map(|i| match results.get(i).and_then(|r| r["status"].as_u64()) {
            Some(200..=299) => Ok(()),
            Some(status) => Err(failure_key(status as u16, &results[i]["error"])),
            None => Err(NO_RESPONSE.into()),
        })
        .collect()
}

/// Sends waiting for their ack, by `client_msg_id`.
type Waiting = Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<Result<(), String>>>>>;

/// A sending WebSocket: frames go out as they are due, acks and errors come
/// back matched by `client_msg_id`.
struct WsSender {
    writer: tokio::sync::Mutex<futures::stream::SplitSink<Socket, Frame>>,
    waiting: Waiting,
    _reader: tokio::task::JoinHandle<()>,
}

impl WsSender {
    fn start(socket: Socket) -> WsSender {
        let (writer, mut reader) = socket.split();
        let waiting: Waiting = Arc::default();
        let pending = waiting.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = reader.next().await {
                let Frame::Text(text) = frame else { continue };
                let Ok(value) = serde_json::from_str::<serde_json::Value>(text.as_str()) else { continue };
                let Some(id) = value["client_msg_id"].as_str() else { continue };
                let result = match value["op"].as_str() {
                    Some("ack") => Ok(()),
                    Some("error") => Err(failure_key(0, &value).replacen("0 ", "ws ", 1)),
                    _ => continue,
                };
                if let Some(waiter) = pending.lock().expect("waiting lock").remove(id) {
                    let _ = waiter.send(result);
                }
            }
            // The socket closed: every send still waiting failed.
            for (_, waiter) in pending.lock().expect("waiting lock").drain() {
                let _ = waiter.send(Err(NO_RESPONSE.into()));
            }
        });
        WsSender { writer: tokio::sync::Mutex::new(writer), waiting, _reader: reader }
    }

    async fn send(&self, request: &Request) -> Result<(), String> {
        let message = &request.messages[0];
        let id = message["client_msg_id"].as_str().unwrap_or_default().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().expect("waiting lock").insert(id.clone(), tx);
        let frame = json!({
            "op": "send",
            "conversation_id": request.conversation,
            "payload": message["payload"],
            "client_msg_id": id,
        });
        if self.writer.lock().await.send(Frame::Text(frame.to_string().into())).await.is_err() {
            self.waiting.lock().expect("waiting lock").remove(&id);
            return Err(NO_RESPONSE.into());
        }
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(result)) => result,
            _ => {
                self.waiting.lock().expect("waiting lock").remove(&id);
                Err(NO_RESPONSE.into())
            }
        }
    }
}

/// Opens a WebSocket at `url` subscribed to `conversation` from `since_seq`.
async fn subscribe(url: &str, conversation: &str, since_seq: u64) -> anyhow::Result<Socket> {
    let connect = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url));
    let (mut socket, _) =
        connect.await.context("receiver websocket: no answer in 10 s")?.context("receiver websocket")?;
    let frame = json!({"op": "subscribe", "conversation_id": conversation, "since_seq": since_seq});
    socket.send(Frame::Text(frame.to_string().into())).await?;
    Ok(socket)
}

/// A receiver: checks seq order until `finished`; reconnects with
/// `since_seq` on every storm. Returns what it saw and how often it reconnected.
async fn receive(
    mut socket: Socket,
    url: &str,
    conversation: &str,
    epoch: Instant,
    counters: &Counters,
    storms: &mut tokio::sync::watch::Receiver<usize>,
    finished: &AtomicBool,
) -> (Seen, usize) {
    let mut seen = Seen::default();
    let mut reconnects = 0;
    storms.mark_unchanged();
    while !finished.load(Ordering::Relaxed) {
        let frame = tokio::select! {
            frame = tokio::time::timeout(Duration::from_millis(100), socket.next()) => frame,
            changed = storms.changed() => {
                if changed.is_err() {
                    break;
                }
                let _ = socket.close(None).await;
                let Ok(again) = subscribe(url, conversation, seen.last_seq).await else { break };
                (socket, reconnects) = (again, reconnects + 1);
                continue;
            }
        };
        let frame = match frame {
            Err(_) => continue, // nothing within 100 ms
            Ok(Some(Ok(frame))) => frame,
            Ok(_) => {
                // Dropped by the server: come back where we were.
                let Ok(again) = subscribe(url, conversation, seen.last_seq).await else { break };
                (socket, reconnects) = (again, reconnects + 1);
                continue;
            }
        };
        let Frame::Text(text) = frame else { continue };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text.as_str()) else { continue };
        if value["op"] != "message" {
            continue;
        }
        let seq = value["message"]["seq"].as_u64().unwrap_or(0);
        if seq <= seen.last_seq {
            seen.duplicates += 1;
            continue;
        }
        seen.gaps += (seq - seen.last_seq - 1) as usize;
        seen.last_seq = seq;
        counters.received.fetch_add(1, Ordering::Relaxed);
        if let Some(sent_us) = value["message"]["payload"]["sent_us"].as_u64() {
            let now_us = epoch.elapsed().as_micros() as u64;
            counters.delivery.record(Duration::from_micros(now_us.saturating_sub(sent_us)));
        }
    }
    (seen, reconnects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_is_the_rate_integrated() {
        let phase = Phase {
            name: "ramp".into(),
            duration: Duration::from_secs(10),
            rate: 0.0,
            rate_to: Some(100.0),
            reconnect: false,
        };
        assert_eq!(phase.due(Duration::from_secs(10)), 500.0);
        assert_eq!(phase.due(Duration::from_secs(5)), 125.0);
        assert_eq!(phase.due(Duration::from_secs(60)), 500.0, "nothing more after the phase");
        let wait = time_until(&phase, Duration::ZERO, 125.0);
        assert!((wait.as_secs_f64() - 5.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn percentiles_come_from_buckets_five_percent_apart() {
        let histogram = Histogram::default();
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        let p50 = histogram.percentile_ms(0.5);
        let p99 = histogram.percentile_ms(0.99);
        assert!((50.0..=52.5).contains(&p50), "{p50}");
        assert!((99.0..=104.0).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().percentile_ms(0.99), 0.0);
    }
}
