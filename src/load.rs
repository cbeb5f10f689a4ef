//! Load generation against any msgd deployment over its public HTTP API: the
//! engine of `msgd load` and of the benchmarks in load/README.md.
//!
//! A run mints dev tokens for `users` synthetic users (the server must have
//! `auth.dev_tokens.enabled`), creates one conversation they all belong to,
//! and sends `count` messages from `concurrency` concurrent clients, one
//! message or one batch per request, measuring each request's ack latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::json;

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
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    /// The conversation the run created (for `msgd load history`).
    pub conversation_id: String,
    pub messages: usize,
    pub requests: usize,
    pub errors: usize,
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
    if plan.count == 0 || plan.concurrency == 0 || plan.batch == 0 || plan.users == 0 {
        bail!("count, concurrency, batch and users must all be at least 1");
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(plan.concurrency).build()?;
    let base = plan.base_url.trim_end_matches('/').to_string();

    let tokens = dev_tokens(&client, &base, &plan.admin_key, plan.users).await?;
    let conversation = create_conversation(&client, &base, &plan.admin_key, plan.users).await?;

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
            let mut latencies = Vec::new();
            let mut errors = 0;
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
                let sent_at = Instant::now();
                let ok = match request.header("x-api-key", &plan.admin_key).bearer_auth(&token).send().await {
                    Ok(reply) => reply.status().is_success() && reply.bytes().await.is_ok(),
                    Err(_) => false,
                };
                latencies.push(sent_at.elapsed());
                if ok {
                    progress(acked.fetch_add(size, Ordering::Relaxed) + size);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(requests);
    let mut errors = 0;
    for worker in workers {
        let (worker_latencies, worker_errors) = worker.await?;
        latencies.extend(worker_latencies);
        errors += worker_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: f64| percentile_ms(&latencies, p);
    let messages = acked.load(Ordering::Relaxed);
    Ok(SendReport {
        conversation_id: conversation.clone(),
        messages,
        requests,
        errors,
        elapsed_seconds: elapsed,
        messages_per_second: messages as f64 / elapsed,
        latency_ms_p50: percentile(0.50),
        latency_ms_p90: percentile(0.90),
        latency_ms_p99: percentile(0.99),
        latency_ms_max: percentile(1.0),
        concurrency: plan.concurrency,
        batch: plan.batch,
    })
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
        let reply = client
            .post(format!("{base}/v1/dev/token"))
            .header("x-api-key", admin_key)
            .json(&json!({"user_id": format!("load-{i}")}))
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
        tokens.push(body["access_token"].as_str().unwrap_or_default().to_string());
    }
    Ok(tokens)
}

/// A conversation of users `load-0..users`, created by the admin key.
async fn create_conversation(
    client: &reqwest::Client,
    base: &str,
    admin_key: &str,
    users: usize,
) -> anyhow::Result<String> {
    let members: Vec<String> = (0..users).map(|i| format!("load-{i}")).collect();
    let reply = client
        .post(format!("{base}/v1/conversations"))
        .header("x-api-key", admin_key)
        .json(&json!({"members": members, "title": "msgd load"}))
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
    let mut errors = 0;
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
        let ok = match reply {
            Ok(reply) => reply.status().is_success() && reply.bytes().await.is_ok(),
            Err(_) => false,
        };
        latencies.push(sent_at.elapsed());
        if !ok {
            errors += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok(HistoryReport {
        requests,
        errors,
        limit,
        after_seq_from: after_from,
        after_seq_to: after_to,
        latency_ms_p50: percentile_ms(&latencies, 0.5),
        latency_ms_p99: percentile_ms(&latencies, 0.99),
        pages_per_second: requests as f64 / elapsed,
    })
}

/// WebSocket fanout: delivery latency from send to frame received.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub clients: usize,
    pub conversations: usize,
    pub messages_sent: usize,
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
    let ws_base = base.replacen("http", "ws", 1);
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
        let mut socket = subscribed_socket(&ws_base, admin_key, &token, &ids[i % conversations], i).await?;
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
    for n in 0..messages {
        for id in &ids {
            next_at += interval;
            tokio::time::sleep_until(next_at.into()).await;
            let body = json!({"payload": {"n": n, "sent_us": epoch.elapsed().as_micros() as u64}});
            client
                .post(format!("{base}/v1/conversations/{id}/messages"))
                .header("x-api-key", admin_key)
                .json(&body)
                .send()
                .await?;
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
        messages_sent: messages * conversations,
        frames_received: frames,
        frames_per_second: frames as f64 / elapsed,
        latency_ms_p50: percentile_ms(&latencies, 0.5),
        latency_ms_p99: percentile_ms(&latencies, 0.99),
    })
}

/// Opens `connections` idle WebSockets, each subscribed to one of a few
/// conversations, and holds them for `hold` (measure the server's RSS then).
pub async fn idle(base_url: &str, admin_key: &str, connections: usize, hold: Duration) -> anyhow::Result<usize> {
    let client = reqwest::Client::new();
    let base = base_url.trim_end_matches('/').to_string();
    let ws_base = base.replacen("http", "ws", 1);
    let token = dev_tokens(&client, &base, admin_key, 1).await?.remove(0);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(create_conversation(&client, &base, admin_key, 1).await?);
    }
    let mut sockets = Vec::with_capacity(connections);
    for i in 0..connections {
        sockets.push(subscribed_socket(&ws_base, admin_key, &token, &ids[i % ids.len()], i).await?);
    }
    tokio::time::sleep(hold).await;
    Ok(sockets.len())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens WebSocket number `i` and subscribes it to `conversation`.
async fn subscribed_socket(
    ws_base: &str,
    api_key: &str,
    token: &str,
    conversation: &str,
    i: usize,
) -> anyhow::Result<Socket> {
    use futures::SinkExt;
    let url = format!("{ws_base}/v1/ws?api_key={api_key}&access_token={token}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.with_context(|| format!("websocket {i}"))?;
    let subscribe = json!({"op": "subscribe", "conversation_id": conversation}).to_string();
    socket.send(tokio_tungstenite::tungstenite::Message::Text(subscribe.into())).await?;
    Ok(socket)
}
