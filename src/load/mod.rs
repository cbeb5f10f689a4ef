//! Load generation against any msgd deployment over its public HTTP API: the
//! engine of `msgd load` and of the benchmarks in load/README.md.
//!
//! A run mints dev tokens for `users` synthetic users (the server must have
//! `auth.dev_tokens.enabled`), creates one conversation they all belong to,
//! and sends `count` messages from `concurrency` concurrent clients, one
//! message or one batch per request, measuring each request's ack latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as Frame;

mod run;
pub use run::{run, Counters, Phase, RunPlan, RunReport, Via};

/// What to run.
#[derive(Debug, Clone)]
pub struct SendPlan {
    pub base_url: String,
    /// An admin key of the app to load.
    pub admin_key: String,
    pub count: usize,
    pub concurrency: usize,
    /// Messages per request: 1 sends singly, more uses the batch endpoint.
    pub batch: usize,
    pub users: usize,
    pub payload_bytes: usize,
    /// Send into this conversation instead of a new one (as `token`'s user,
    /// or as the app when no token is given).
    pub conversation_id: Option<String>,
    /// Send as this user token instead of minting dev tokens.
    pub token: Option<String>,
    /// Each client pauses this long after each request.
    pub delay: Duration,
    /// HTTP requests, or `send` frames over one WebSocket per client.
    pub via: Via,
    /// Over WebSocket: frames a client keeps in flight (sent, not yet acked).
    pub window: usize,
}

/// The error codes msgd's API answers with (README, "HTTP API"): a failure's
/// key in a report names one of these, or `other`, so the breakdown stays a
/// small fixed set whatever a server sends.
const KNOWN_CODES: &[&str] = &[
    "attachment_not_found",
    "attachment_too_large",
    "content_type_not_allowed",
    "attachment_mismatch",
    "invalid_upload_url",
    "missing_api_key",
    "invalid_api_key",
    "key_revoked",
    "key_expired",
    "missing_token",
    "invalid_token",
    "token_expired",
    "wrong_issuer",
    "wrong_audience",
    "invalid_operator_token",
    "insufficient_scope",
    "not_member",
    "not_owner",
    "not_sender",
    "message_not_found",
    "message_deleted",
    "not_editable",
    "invalid_reaction",
    "invalid_reply_to",
    "too_many_reactions",
    "invalid_role",
    "conversation_archived",
    "last_owner",
    "key_not_rotatable",
    "not_found",
    "not_a_member",
    "invalid_request",
    "invalid_payload",
    "invalid_content_type",
    "invalid_attachments",
    "invalid_client_msg_id",
    "invalid_batch",
    "invalid_user_id",
    "user_required",
    "seq_out_of_range",
    "invalid_cursor",
    "idempotency_original_unavailable",
    "payload_too_large",
    "idempotency_key_reused",
    "rate_limited",
    "internal",
    "corrupt_segment",
    "dependency_unavailable",
    "seq_unavailable",
    "invalid_title",
    "invalid_metadata",
    "too_many_members",
    "metadata_too_large",
    "websocket_required",
    "idempotency_key_not_supported",
    "method_not_allowed",
    "request_timeout",
    "unsupported_media_type",
    "headers_too_large",
    "too_many_connections",
    "too_many_websockets",
    "invalid_frame",
    "unknown_op",
    "too_many_subscriptions",
    "invalid_since_seq",
    "since_seq_expired",
];

/// Failed requests (and failed batch items) by `<status> <error code>`, or
/// `no response` when the request got no HTTP answer.
pub type Failures = BTreeMap<String, usize>;

/// The key of one failure: its HTTP status and the `error.code` of its body.
fn failure_key(status: u16, error: &serde_json::Value) -> String {
    let code = error["code"].as_str().filter(|code| KNOWN_CODES.contains(code)).unwrap_or("other");
    format!("{status} {code}")
}

const NO_RESPONSE: &str = "no response";

/// One line about failures for people: counts by status and code, and what
/// to do about the usual one.
pub fn describe_failures(failures: &Failures) -> String {
    let total: usize = failures.values().sum();
    let mut parts: Vec<(usize, &String)> = failures.iter().map(|(k, n)| (*n, k)).collect();
    parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let listed: Vec<String> = parts.iter().map(|(n, k)| format!("{n}× {k}")).collect();
    let mut line = format!("{total} request(s) failed: {}", listed.join(", "));
    if failures.keys().any(|k| k.ends_with(" rate_limited")) {
        line += "; the server's rate limits refused them: for a load test raise limits.user_rate, \
                 limits.user_burst, limits.key_rate and limits.key_burst (MSGD_LIMITS__USER_RATE=1000000 …, \
                 see load/README.md)";
    }
    line
}

/// Rounds a measure to 3 decimals (µs for milliseconds): reports carry what was measured, not float noise.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    /// The conversation the run created (for `msgd load history`).
    pub conversation_id: String,
    /// Messages acknowledged.
    pub messages: usize,
    pub requests: usize,
    /// Failed requests plus failed batch items.
    pub errors: usize,
    /// `errors` by HTTP status and error code.
    pub failures: Failures,
    pub elapsed_seconds: f64,
    pub messages_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    pub concurrency: usize,
    pub batch: usize,
}

/// Runs a send load; `progress` is called with the number of messages acknowledged so far.
pub async fn send(plan: &SendPlan, progress: impl Fn(usize) + Send + Sync + 'static) -> anyhow::Result<SendReport> {
    if plan.count == 0 || plan.concurrency == 0 || plan.batch == 0 || plan.users == 0 || plan.window == 0 {
        bail!("count, concurrency, batch, users and window must all be at least 1");
    }
    if plan.via == Via::Ws && (plan.batch > 1 || !plan.delay.is_zero()) {
        bail!("over WebSocket every frame is one message, sent as the window allows: no --batch or --delay");
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(plan.concurrency).build()?;
    let base = plan.base_url.trim_end_matches('/').to_string();

    let tokens: Vec<Option<String>> = match (&plan.token, &plan.conversation_id) {
        (Some(token), _) => vec![Some(token.clone())],
        (None, Some(_)) => vec![None], // the app itself sends
        (None, None) => dev_tokens(&client, &base, &plan.admin_key, plan.users).await?.into_iter().map(Some).collect(),
    };
    let conversation = match &plan.conversation_id {
        Some(id) => id.clone(),
        None => create_conversation(&client, &base, &plan.admin_key, plan.users).await?,
    };

    let payload = "x".repeat(plan.payload_bytes);
    let requests = plan.count.div_ceil(plan.batch);
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(progress);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(plan.concurrency);
    for worker in 0..plan.concurrency {
        let (client, next, acked, progress) = (client.clone(), next.clone(), acked.clone(), progress.clone());
        let token = tokens[worker % tokens.len()].clone();
        let (base, conversation, payload, plan) = (base.clone(), conversation.clone(), payload.clone(), plan.clone());
        workers.push(tokio::spawn(async move {
            if plan.via == Via::Ws {
                let url = ws_url(&base, &plan.admin_key, token.as_deref());
                let sending = WsSending { conversation: &conversation, payload: &payload, count: plan.count };
                return sending.run(&url, plan.window, &next, &acked, &*progress).await;
            }
            let mut latencies = Vec::new();
            let mut failures = Failures::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= requests {
                    break;
                }
                let size = plan.batch.min(plan.count - index * plan.batch);
                let message = json!({"payload": {"text": payload}});
                let request = if plan.batch == 1 {
                    client.post(format!("{base}/v1/conversations/{conversation}/messages")).json(&message)
                } else {
                    client
                        .post(format!("{base}/v1/conversations/{conversation}/messages/batch"))
                        .json(&json!({"messages": vec![message; size]}))
                };
                let mut request = request.header("x-api-key", &plan.admin_key);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let sent_at = Instant::now();
                let reply = request.send().await;
                let body = match reply {
                    Ok(reply) => {
                        let status = reply.status();
                        reply.bytes().await.map(|body| (status, body))
                    }
                    Err(e) => Err(e),
                };
                latencies.push(sent_at.elapsed());
                let ok = match body {
                    Err(_) => {
                        *failures.entry(NO_RESPONSE.to_string()).or_default() += 1;
                        0
                    }
                    Ok((status, body)) => {
                        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        if !status.is_success() {
                            *failures.entry(failure_key(status.as_u16(), &value["error"])).or_default() += 1;
                            0
                        } else if plan.batch == 1 {
                            1
                        } else {
                            // A batch answers 200 with a status per item: count each.
                            let mut ok = 0;
                            for item in value["results"].as_array().into_iter().flatten() {
                                match item["status"].as_u64().unwrap_or(0) as u16 {
                                    200..=299 => ok += 1,
                                    status => *failures.entry(failure_key(status, &item["error"])).or_default() += 1,
                                }
                            }
                            ok
                        }
                    }
                };
                if ok > 0 {
                    progress(acked.fetch_add(ok, Ordering::Relaxed) + ok);
                }
                if !plan.delay.is_zero() {
                    tokio::time::sleep(plan.delay).await;
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(requests);
    let mut failures = Failures::new();
    for worker in workers {
        let (worker_latencies, worker_failures) = worker.await?;
        latencies.extend(worker_latencies);
        for (key, n) in worker_failures {
            *failures.entry(key).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: f64| percentile_ms(&latencies, p);
    let messages = acked.load(Ordering::Relaxed);
    Ok(SendReport {
        conversation_id: conversation.clone(),
        messages,
        requests,
        errors: failures.values().sum(),
        failures,
        elapsed_seconds: round3(elapsed),
        messages_per_second: round3(messages as f64 / elapsed),
        latency_ms_p50: round3(percentile(0.50)),
        latency_ms_p90: round3(percentile(0.90)),
        latency_ms_p99: round3(percentile(0.99)),
        latency_ms_max: round3(percentile(1.0)),
        concurrency: plan.concurrency,
        batch: plan.batch,
    })
}

/// One client's `send` frames over its own WebSocket.
struct WsSending<'a> {
    conversation: &'a str,
    payload: &'a str,
    /// Messages in the whole run (clients take the next index until this).
    count: usize,
}

impl WsSending<'_> {
    /// Sends frames while fewer than `window` await their reply, and reads the
    /// replies (one `ack` or `error` per frame, in the order sent: the server
    /// answers a connection's frames in order). Latency is send to reply.
    async fn run(
        &self,
        url: &str,
        window: usize,
        next: &AtomicUsize,
        acked: &AtomicUsize,
        progress: &(dyn Fn(usize) + Send + Sync),
    ) -> (Vec<Duration>, Failures) {
        use futures::{SinkExt, StreamExt};
        let mut latencies = Vec::new();
        let mut failures = Failures::new();
        let Ok((socket, _)) = tokio_tungstenite::connect_async(url).await else {
            *failures.entry(NO_RESPONSE.to_string()).or_default() += 1;
            return (latencies, failures);
        };
        let (mut writer, mut reader) = socket.split();
        let room = tokio::sync::Semaphore::new(window);
        let (sent, mut in_flight) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
        let write = async {
            loop {
                let Ok(permit) = room.acquire().await else { break };
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= self.count {
                    break;
                }
                permit.forget();
                let frame = json!({
                    "op": "send",
                    "conversation_id": self.conversation,
                    "client_msg_id": format!("w{index}"),
                    "payload": {"text": self.payload},
                });
                let _ = sent.send((index, Instant::now()));
                if writer.send(Frame::Text(frame.to_string().into())).await.is_err() {
                    break;
                }
            }
            drop(sent); // the reader stops after the last reply
        };
        let read = async {
            while let Some((index, at)) = in_flight.recv().await {
                let reply = loop {
                    match tokio::time::timeout(Duration::from_secs(30), reader.next()).await {
                        Ok(Some(Ok(Frame::Text(text)))) => break serde_json::from_str(text.as_str()).ok(),
                        Ok(Some(Ok(_))) => continue,
                        _ => break None,
                    }
                };
                let Some(reply): Option<serde_json::Value> = reply else {
                    // No reply: this frame and every one still in flight failed.
                    let lost = 1 + std::iter::from_fn(|| in_flight.try_recv().ok()).count();
                    *failures.entry(NO_RESPONSE.to_string()).or_default() += lost;
                    room.close();
                    break;
                };
                latencies.push(at.elapsed());
                room.add_permits(1);
                if reply["client_msg_id"].as_str() != Some(format!("w{index}").as_str()) {
                    *failures.entry("ws reply out of order".to_string()).or_default() += 1;
                } else if reply["op"] == "ack" {
                    progress(acked.fetch_add(1, Ordering::Relaxed) + 1);
                } else {
                    *failures.entry(failure_key(0, &reply).replacen("0 ", "ws ", 1)).or_default() += 1;
                }
            }
        };
        tokio::join!(write, read);
        (latencies, failures)
    }
}

/// The WebSocket URL for an app key and, when given, a user token.
fn ws_url(base: &str, api_key: &str, token: Option<&str>) -> String {
    let ws_base = base.replacen("http", "ws", 1);
    match token {
        Some(token) => format!("{ws_base}/v1/ws?api_key={api_key}&access_token={token}"),
        None => format!("{ws_base}/v1/ws?api_key={api_key}"),
    }
}

/// The `p` quantile (0..=1) of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// Dev tokens for users `load-0..users`.
async fn dev_tokens(
    client: &reqwest::Client,
    base: &str,
    admin_key: &str,
    users: usize,
) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(users);
    for i in 0..users {
        tokens.push(dev_token(client, base, admin_key, &format!("load-{i}")).await?);
    }
    Ok(tokens)
}

/// A dev token for `user` (the server must have `auth.dev_tokens.enabled`).
pub async fn dev_token(client: &reqwest::Client, base: &str, admin_key: &str, user: &str) -> anyhow::Result<String> {
    let reply = client
        .post(format!("{base}/v1/dev/token"))
        .header("x-api-key", admin_key)
        .json(&json!({"user_id": user}))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    if !reply.status().is_success() {
        bail!(
            "minting a dev token failed ({}): is auth.dev_tokens.enabled on? {}",
            reply.status(),
            reply.text().await?
        );
    }
    let body: serde_json::Value = reply.json().await?;
    Ok(body["access_token"].as_str().unwrap_or_default().to_string())
}

/// A conversation of users `load-0..users`, created by the admin key.
async fn create_conversation(
    client: &reqwest::Client,
    base: &str,
    admin_key: &str,
    users: usize,
) -> anyhow::Result<String> {
    let members: Vec<String> = (0..users).map(|i| format!("load-{i}")).collect();
    conversation_of(client, base, admin_key, &members, "msgd load").await
}

/// A new conversation of `members`, created by the admin key; its id.
pub async fn conversation_of(
    client: &reqwest::Client,
    base: &str,
    admin_key: &str,
    members: &[String],
    title: &str,
) -> anyhow::Result<String> {
    let reply = client
        .post(format!("{base}/v1/conversations"))
        .header("x-api-key", admin_key)
        .json(&json!({"members": members, "title": title}))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    if !reply.status().is_success() {
        bail!("creating the conversation failed ({}): {}", reply.status(), reply.text().await?);
    }
    Ok(reply.json::<serde_json::Value>().await?["id"].as_str().unwrap_or_default().to_string())
}

/// Page latencies of `GET …/messages` over a seq window.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    pub requests: usize,
    pub errors: usize,
    /// `errors` by HTTP status and error code.
    pub failures: Failures,
    pub limit: u32,
    pub after_seq_from: u64,
    pub after_seq_to: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub pages_per_second: f64,
}

/// Reads `requests` pages of `limit` messages starting at random seqs in
/// `after_from..after_to` of `conversation` (created by `msgd load send`, so
/// user `load-0` is a member), one request at a time.
pub async fn history(
    base_url: &str,
    admin_key: &str,
    conversation: &str,
    requests: usize,
    limit: u32,
    after_from: u64,
    after_to: u64,
) -> anyhow::Result<HistoryReport> {
    let client = reqwest::Client::new();
    let base = base_url.trim_end_matches('/');
    let token = dev_tokens(&client, base, admin_key, 1).await?.remove(0);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut latencies = Vec::with_capacity(requests);
    let mut failures = Failures::new();
    let started = Instant::now();
    for _ in 0..requests {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let after = after_from + state % (after_to.saturating_sub(after_from).max(1));
        let sent_at = Instant::now();
        let reply = client
            .get(format!("{base}/v1/conversations/{conversation}/messages?after_seq={after}&limit={limit}"))
            .header("x-api-key", admin_key)
            .bearer_auth(&token)
            .send()
            .await;
        let failure = classify(reply).await;
        latencies.push(sent_at.elapsed());
        if let Some(key) = failure {
            *failures.entry(key).or_default() += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok(HistoryReport {
        requests,
        errors: failures.values().sum(),
        failures,
        limit,
        after_seq_from: after_from,
        after_seq_to: after_to,
        latency_ms_p50: round3(percentile_ms(&latencies, 0.5)),
        latency_ms_p99: round3(percentile_ms(&latencies, 0.99)),
        pages_per_second: round3(requests as f64 / elapsed),
    })
}

/// The failure key of a whole-request reply, or `None` when it succeeded.
async fn classify(reply: reqwest::Result<reqwest::Response>) -> Option<String> {
    let reply = match reply {
        Ok(reply) => reply,
        Err(_) => return Some(NO_RESPONSE.into()),
    };
    let status = reply.status();
    let Ok(body) = reply.bytes().await else { return Some(NO_RESPONSE.into()) };
    if status.is_success() {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Some(failure_key(status.as_u16(), &value["error"]))
}

/// WebSocket fanout: delivery latency from send to frame received.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub clients: usize,
    pub conversations: usize,
    pub messages_sent: usize,
    /// Sends that failed, by HTTP status and error code.
    pub failures: Failures,
    pub frames_received: usize,
    pub frames_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

/// `clients` WebSockets spread over `conversations` conversations (one
/// subscription each); `messages` sends per conversation at `rate` per
/// second in all; measures send → frame received for every frame.
pub async fn fanout(
    base_url: &str,
    admin_key: &str,
    clients: usize,
    conversations: usize,
    messages: usize,
    rate: f64,
) -> anyhow::Result<FanoutReport> {
    use futures::StreamExt;
    if clients == 0 || conversations == 0 || rate <= 0.0 {
        bail!("clients, conversations and rate must be positive");
    }
    let client = reqwest::Client::new();
    let base = base_url.trim_end_matches('/').to_string();
    let token = dev_tokens(&client, &base, admin_key, 1).await?.remove(0);
    let mut ids = Vec::with_capacity(conversations);
    for _ in 0..conversations {
        ids.push(create_conversation(&client, &base, admin_key, 1).await?);
    }
    let expected = clients.div_ceil(conversations).max(1) * messages; // upper bound per client
    let received = Arc::new(AtomicUsize::new(0));
    let (latency_tx, mut latency_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let epoch = Instant::now();
    let mut readers = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut socket = subscribed_socket(&base, admin_key, &token, &ids[i % conversations], i).await?;
        let (received, latency_tx) = (received.clone(), latency_tx.clone());
        let per_client = messages;
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < per_client {
                let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(30), socket.next()).await else {
                    break;
                };
                let tokio_tungstenite::tungstenite::Message::Text(text) = frame else { continue };
                let Ok(value) = serde_json::from_str::<serde_json::Value>(text.as_str()) else { continue };
                if value["op"] != "message" {
                    continue;
                }
                if let Some(sent_us) = value["message"]["payload"]["sent_us"].as_u64() {
                    let now_us = epoch.elapsed().as_micros() as u64;
                    let _ = latency_tx.send(Duration::from_micros(now_us.saturating_sub(sent_us)));
                }
                got += 1;
                received.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    drop(latency_tx);
    tokio::time::sleep(Duration::from_millis(500)).await; // let every subscription settle
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next_at = Instant::now();
    let mut failures = Failures::new();
    for n in 0..messages {
        for id in &ids {
            next_at += interval;
            tokio::time::sleep_until(next_at.into()).await;
            let body = json!({"payload": {"n": n, "sent_us": epoch.elapsed().as_micros() as u64}});
            let reply = client
                .post(format!("{base}/v1/conversations/{id}/messages"))
                .header("x-api-key", admin_key)
                .json(&body)
                .send()
                .await;
            if let Some(key) = classify(reply).await {
                *failures.entry(key).or_default() += 1;
            }
        }
    }
    for reader in readers {
        let _ = reader.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(expected * clients);
    while let Some(latency) = latency_rx.recv().await {
        latencies.push(latency);
    }
    latencies.sort();
    let frames = received.load(Ordering::Relaxed);
    Ok(FanoutReport {
        clients,
        conversations,
        messages_sent: messages * conversations - failures.values().sum::<usize>(),
        failures,
        frames_received: frames,
        frames_per_second: round3(frames as f64 / elapsed),
        latency_ms_p50: round3(percentile_ms(&latencies, 0.5)),
        latency_ms_p99: round3(percentile_ms(&latencies, 0.99)),
    })
}

/// What holding idle WebSockets cost the server.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub connections: usize,
    /// The server's resident memory before the sockets opened and while they
    /// were held (its `/metrics`, `msgd_process_resident_memory_bytes`); null
    /// when the server does not report it.
    pub server_rss_bytes_before: Option<u64>,
    pub server_rss_bytes_held: Option<u64>,
    /// (held − before) / connections.
    pub rss_bytes_per_connection: Option<u64>,
    pub hold_seconds: f64,
}

/// The server's resident memory, read from its Prometheus metrics.
async fn server_rss(client: &reqwest::Client, base: &str) -> Option<u64> {
    server_sample(client, base, "msgd_process_resident_memory_bytes").await.map(|bytes| bytes as u64)
}

/// One unlabelled series of the server's `/metrics`, if it reports it.
async fn server_sample(client: &reqwest::Client, base: &str, series: &str) -> Option<f64> {
    let text = client.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
}

/// Opens `connections` idle WebSockets, each subscribed to one of a few
/// conversations, holds them for `hold`, and reports the server's RSS before
/// and at the end of the hold.
pub async fn idle(base_url: &str, admin_key: &str, connections: usize, hold: Duration) -> anyhow::Result<IdleReport> {
    let client = reqwest::Client::new();
    let base = base_url.trim_end_matches('/').to_string();
    let token = dev_tokens(&client, &base, admin_key, 1).await?.remove(0);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(create_conversation(&client, &base, admin_key, 1).await?);
    }
    let before = server_rss(&client, &base).await;
    let mut sockets = Vec::with_capacity(connections);
    for i in 0..connections {
        sockets.push(subscribed_socket(&base, admin_key, &token, &ids[i % ids.len()], i).await?);
    }
    tokio::time::sleep(hold).await;
    let held = server_rss(&client, &base).await;
    let per_connection = match (before, held) {
        (Some(before), Some(held)) if !sockets.is_empty() => Some(held.saturating_sub(before) / sockets.len() as u64),
        _ => None,
    };
    Ok(IdleReport {
        connections: sockets.len(),
        server_rss_bytes_before: before,
        server_rss_bytes_held: held,
        rss_bytes_per_connection: per_connection,
        hold_seconds: round3(hold.as_secs_f64()),
    })
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens WebSocket number `i` and subscribes it to `conversation`.
async fn subscribed_socket(
    base: &str,
    api_key: &str,
    token: &str,
    conversation: &str,
    i: usize,
) -> anyhow::Result<Socket> {
    use futures::SinkExt;
    let url = ws_url(base, api_key, Some(token));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.with_context(|| format!("websocket {i}"))?;
    let subscribe = json!({"op": "subscribe", "conversation_id": conversation}).to_string();
    socket.send(tokio_tungstenite::tungstenite::Message::Text(subscribe.into())).await?;
    Ok(socket)
}
