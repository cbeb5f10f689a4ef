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

    let mut tokens = Vec::with_capacity(plan.users);
    for i in 0..plan.users {
        let reply = client
            .post(format!("{base}/v1/dev/token"))
            .header("x-api-key", &plan.admin_key)
            .json(&json!({"user_id": format!("load-{i}")}))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        if !reply.status().is_success() {
            bail!("minting a dev token failed ({}): is auth.dev_tokens.enabled on? {}", reply.status(), reply.text().await?);
        }
        let body: serde_json::Value = reply.json().await?;
        tokens.push(body["access_token"].as_str().unwrap_or_default().to_string());
    }
    let members: Vec<String> = (0..plan.users).map(|i| format!("load-{i}")).collect();
    let reply = client
        .post(format!("{base}/v1/conversations"))
        .header("x-api-key", &plan.admin_key)
        .json(&json!({"members": members, "title": "msgd load"}))
        .send()
        .await?;
    if !reply.status().is_success() {
        bail!("creating the conversation failed ({}): {}", reply.status(), reply.text().await?);
    }
    let conversation = reply.json::<serde_json::Value>().await?["id"].as_str().unwrap_or_default().to_string();

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
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    let messages = acked.load(Ordering::Relaxed);
    Ok(SendReport {
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
