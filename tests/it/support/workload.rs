//! Live load for the fault suite: senders over HTTP and over WebSocket that
//! retry each message under its `client_msg_id` until it is acknowledged (as
//! a real client does), and receivers that reconnect with `since_seq`. They
//! keep going through whatever the test breaks; afterwards [`Workload::verify`]
//! holds msgd to its promise: every acknowledged message is in history exactly
//! once at its seq, seqs are gap-free, and every receiver saw each exactly
//! once, in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::api::Api;
use super::wsclient::Socket;

/// Error codes a client retries (the same message, same `client_msg_id`).
const TRANSIENT: [&str; 4] = ["dependency_unavailable", "seq_unavailable", "internal_error", "too_many_connections"];

/// How long one attempt (a request, an ack, a connect) may take.
const ATTEMPT: Duration = Duration::from_secs(3);

/// How long a sender retries its last message after the load is stopped.
const DRAIN: Duration = Duration::from_secs(30);

/// What the clients share.
struct Shared {
    /// Instances' `host:port`; clients move to the next one when one fails.
    addrs: Vec<String>,
    key: String,
    token: String,
    conversation: String,
    stop: AtomicBool,
    /// `client_msg_id` → acknowledged seq.
    acked: Mutex<HashMap<String, u64>>,
    /// Acks so far, and when the latest came (ms since `started`).
    acks: AtomicU64,
    last_ack_ms: AtomicU64,
    started: Instant,
    /// Answers no client should ever get (a 4xx on a valid send, a mismatch).
    wrong: Mutex<Vec<String>>,
}

impl Shared {
    fn addr(&self, attempt: usize) -> &str {
        &self.addrs[attempt % self.addrs.len()]
    }

    fn ack(&self, client_msg_id: &str, seq: u64) {
        let previous = self.acked.lock().unwrap().insert(client_msg_id.to_string(), seq);
        if previous.is_some_and(|p| p != seq) {
            self.wrong(format!("{client_msg_id} acknowledged as {previous:?} and as {seq}"));
        }
        self.acks.fetch_add(1, Ordering::SeqCst);
        self.last_ack_ms.store(self.started.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    fn wrong(&self, what: String) {
        self.wrong.lock().unwrap().push(what);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// What one receiver saw.
#[derive(Default)]
struct Seen {
    seqs: Vec<u64>,
    duplicates: u64,
    /// (last seq held, seq that arrived) for each jump forward.
    gaps: Vec<(u64, u64)>,
    reconnects: u64,
}

pub struct Workload {
    shared: Arc<Shared>,
    receivers: Vec<Arc<Mutex<Seen>>>,
    tasks: JoinSet<()>,
}

impl Workload {
    /// Starts `http` + `ws` senders and `receivers` receivers on one
    /// conversation of `api`'s app, spread over `addrs`.
    pub async fn start(api: &Api, addrs: Vec<String>, http: usize, ws: usize, receivers: usize) -> Workload {
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &["bob"]).await;
        let shared = Arc::new(Shared {
            addrs,
            key: api.write_key.clone(),
            token,
            conversation,
            stop: AtomicBool::new(false),
            acked: Mutex::default(),
            acks: AtomicU64::new(0),
            last_ack_ms: AtomicU64::new(0),
            started: Instant::now(),
            wrong: Mutex::default(),
        });
        let mut tasks = JoinSet::new();
        let mut seen = Vec::new();
        for n in 0..receivers {
            let receiver = Arc::new(Mutex::new(Seen::default()));
            seen.push(receiver.clone());
            tasks.spawn(receive(shared.clone(), receiver, n));
        }
        for n in 0..http {
            tasks.spawn(send_http(shared.clone(), format!("h{n}"), n));
        }
        for n in 0..ws {
            tasks.spawn(send_ws(shared.clone(), format!("w{n}"), n + 1));
        }
        Workload { shared, receivers: seen, tasks }
    }

    pub fn conversation(&self) -> &str {
        &self.shared.conversation
    }

    pub fn acks(&self) -> u64 {
        self.shared.acks.load(Ordering::SeqCst)
    }

    /// Waits until `more` acks arrive after now; how long that took, or None after `timeout`.
    pub async fn next_acks(&self, more: u64, timeout: Duration) -> Option<Duration> {
        let (start, from) = (Instant::now(), self.acks());
        while start.elapsed() < timeout {
            if self.acks() >= from + more {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Stops the senders (each finishes the message it holds, within
    /// [`DRAIN`]) and returns what was acknowledged: `client_msg_id` → seq.
    pub async fn stop_senders(&mut self) -> HashMap<String, u64> {
        self.shared.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + DRAIN + ATTEMPT * 2;
        while self.tasks.len() > self.receivers.len() && Instant::now() < deadline {
            tokio::select! {
                _ = self.tasks.join_next() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        self.shared.acked.lock().unwrap().clone()
    }

    /// What was acknowledged so far: `client_msg_id` → seq.
    pub fn acked(&self) -> HashMap<String, u64> {
        self.shared.acked.lock().unwrap().clone()
    }

    /// Every message of the conversation as (seq, client_msg_id), oldest first, read from `from`.
    pub async fn history(&self, api: &Api, from: &super::Msgd) -> Vec<(u64, String)> {
        read_history(api, from, &self.shared).await
    }

    /// Stops the senders, waits for the receivers to hold the last
    /// acknowledged seq, and checks everything against history read from
    /// `history_from`. Returns the number of messages.
    pub async fn verify(mut self, api: &Api, history_from: &super::Msgd) -> u64 {
        let acked = self.stop_senders().await;
        let wrong = self.shared.wrong.lock().unwrap().clone();
        assert!(wrong.is_empty(), "answers no client should get: {wrong:#?}");
        let top = acked.values().copied().max().unwrap_or(0);
        let caught_up = super::eventually(Duration::from_secs(30), async || {
            self.receivers.iter().all(|r| r.lock().unwrap().seqs.last().copied().unwrap_or(0) >= top)
        })
        .await;
        self.tasks.abort_all();

        let history = self.history(api, history_from).await;
        let seqs: Vec<u64> = history.iter().map(|(seq, _)| *seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "history's seqs are 1..=n, each once, in order");
        let mut in_history = HashMap::new();
        for (seq, id) in &history {
            let earlier = in_history.insert(id.clone(), *seq);
            assert!(earlier.is_none(), "{id} is in history twice: at {earlier:?} and {seq}");
        }
        for (id, seq) in &acked {
            assert_eq!(in_history.get(id), Some(seq), "acknowledged {id} at {seq}: history has it at");
        }
        let unacknowledged: Vec<_> = in_history.keys().filter(|id| !acked.contains_key(*id)).collect();
        assert!(unacknowledged.is_empty(), "in history but never acknowledged (a sender gave up): {unacknowledged:?}");
        let states: Vec<String> = (self.receivers.iter())
            .map(|r| {
                let r = r.lock().unwrap();
                format!("last {:?}, gaps {:?}, reconnects {}", r.seqs.last(), r.gaps, r.reconnects)
            })
            .collect();
        assert!(caught_up, "a receiver never reached seq {top}: {states:?}");
        for (n, receiver) in self.receivers.iter().enumerate() {
            let seen = receiver.lock().unwrap();
            assert_eq!((seen.duplicates, &seen.gaps), (0, &vec![]), "receiver {n}: duplicates, gaps");
            assert_eq!(seen.seqs, expected, "receiver {n} saw every message once, in order");
        }
        let reconnects: Vec<u64> = self.receivers.iter().map(|r| r.lock().unwrap().reconnects).collect();
        eprintln!("workload: {} messages; the receivers reconnected {reconnects:?} times", seqs.len());
        seqs.len() as u64
    }
}

/// Every message of the conversation, as (seq, client_msg_id), oldest first.
async fn read_history(api: &Api, from: &super::Msgd, shared: &Shared) -> Vec<(u64, String)> {
    let path = format!("/v1/conversations/{}/messages", shared.conversation);
    let mut query = "order=asc&limit=500".to_string();
    let mut messages = Vec::new();
    loop {
        let reply = api
            .request_to(
                from,
                Method::GET,
                &format!("{path}?{query}"),
                Some(&shared.key),
                Some(&shared.token),
                None,
                &[],
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        for message in reply.body["messages"].as_array().unwrap() {
            let id = message["client_msg_id"].as_str().unwrap_or_default().to_string();
            messages.push((message["seq"].as_u64().unwrap(), id));
        }
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => query = format!("cursor={cursor}"),
            None => break,
        }
    }
    messages.sort_by_key(|(seq, _)| *seq);
    messages
}

/// What one attempt to send a message came to.
enum Attempt {
    Acked(u64),
    /// Failed the way a client retries (a transient error, no answer).
    Retry,
    /// An answer no valid send should get.
    Wrong(String),
}

/// One kind of sender: makes one attempt to send message `n` under `id`, on
/// `shared.addr(attempt)`.
trait Sender: Send {
    fn shared(&self) -> &Shared;
    fn attempt(&mut self, attempt: usize, id: &str, n: u64) -> impl std::future::Future<Output = Attempt> + Send;
}

/// Sends message after message, each retried every 100 ms under its
/// `client_msg_id` until acknowledged, moving to the next instance after each
/// failure; once stopped, finishes the message it holds (within [`DRAIN`]).
async fn keep_sending(mut sender: impl Sender, tag: String, mut attempt: usize) {
    for n in 0.. {
        if sender.shared().stopped() {
            return;
        }
        let id = format!("{tag}-{n}");
        let mut drain_until = None;
        loop {
            if sender.shared().stopped() && drain_until.is_none() {
                drain_until = Some(Instant::now() + DRAIN);
            }
            if drain_until.is_some_and(|until| Instant::now() > until) {
                return;
            }
            match sender.attempt(attempt, &id, n).await {
                Attempt::Acked(seq) => {
                    sender.shared().ack(&id, seq);
                    break;
                }
                Attempt::Retry => {}
                Attempt::Wrong(what) => sender.shared().wrong(format!("{id}: {what}")),
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends over HTTP.
struct HttpSender {
    shared: Arc<Shared>,
    client: reqwest::Client,
}

impl Sender for HttpSender {
    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn attempt(&mut self, attempt: usize, id: &str, n: u64) -> Attempt {
        let shared = &self.shared;
        let url = format!("http://{}/v1/conversations/{}/messages", shared.addr(attempt), shared.conversation);
        let sent = (self.client.post(url))
            .header("x-api-key", &shared.key)
            .header("authorization", format!("Bearer {}", shared.token))
            .json(&json!({"payload": {"n": n}, "client_msg_id": id}))
            .send()
            .await;
        let Ok(response) = sent else { return Attempt::Retry };
        let status = response.status().as_u16();
        let reply = response.json::<Value>().await.unwrap_or_default();
        match status {
            200 | 201 => Attempt::Acked(reply["seq"].as_u64().unwrap()),
            429 => Attempt::Retry,
            500.. if TRANSIENT.contains(&reply["error"]["code"].as_str().unwrap_or_default()) => Attempt::Retry,
            _ => Attempt::Wrong(format!("{status} {reply}")),
        }
    }
}

async fn send_http(shared: Arc<Shared>, tag: String, attempt: usize) {
    let client = reqwest::Client::builder().timeout(ATTEMPT).build().unwrap();
    keep_sending(HttpSender { shared, client }, tag, attempt).await;
}

/// Sends `send` frames over one WebSocket at a time, each retried (on the same
/// or a new socket) until its `ack` arrives.
struct WsSender {
    shared: Arc<Shared>,
    socket: Option<Socket>,
}

impl Sender for WsSender {
    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn attempt(&mut self, attempt: usize, id: &str, n: u64) -> Attempt {
        if self.socket.is_none() {
            self.socket = connect(&self.shared, attempt).await;
        }
        let Some(ws) = self.socket.as_mut() else { return Attempt::Retry };
        let conversation = &self.shared.conversation;
        let frame = json!({"op": "send", "conversation_id": conversation, "payload": {"n": n}, "client_msg_id": id});
        match send_and_wait(ws, &frame.to_string(), id).await {
            Ok(Some(seq)) => Attempt::Acked(seq),
            Ok(None) => Attempt::Retry,
            Err(Some(error)) => Attempt::Wrong(error.to_string()),
            Err(None) => {
                self.socket = None;
                Attempt::Retry
            }
        }
    }
}

async fn send_ws(shared: Arc<Shared>, tag: String, attempt: usize) {
    keep_sending(WsSender { shared, socket: None }, tag, attempt).await;
}

/// Ok(Some(seq)) acked; Ok(None) a transient error (retry); Err(None) the
/// socket failed; Err(Some(frame)) an answer no valid send should get.
async fn send_and_wait(ws: &mut Socket, frame: &str, id: &str) -> Result<Option<u64>, Option<Value>> {
    ws.send(Message::Text(frame.into())).await.map_err(|_| None)?;
    loop {
        let frame = match tokio::time::timeout(ATTEMPT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Value>(text.as_str()).map_err(|_| None)?,
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => return Err(None),
            Ok(Some(Ok(_))) => continue,
        };
        if frame["client_msg_id"] != id {
            continue;
        }
        match frame["op"].as_str() {
            Some("ack") => return Ok(frame["seq"].as_u64()),
            Some("error") if TRANSIENT.contains(&frame["code"].as_str().unwrap_or_default()) => return Ok(None),
            _ => return Err(Some(frame)),
        }
    }
}

async fn connect(shared: &Shared, attempt: usize) -> Option<Socket> {
    let url = format!("ws://{}/v1/ws?api_key={}&access_token={}", shared.addr(attempt), shared.key, shared.token);
    match tokio::time::timeout(ATTEMPT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((socket, _))) => Some(socket),
        _ => None,
    }
}

/// Subscribes with `since_seq` = the last seq held, reconnecting whenever the
/// socket fails, and checks each message continues the sequence.
async fn receive(shared: Arc<Shared>, seen: Arc<Mutex<Seen>>, n: usize) {
    let mut attempt = n;
    loop {
        let Some(mut ws) = connect(&shared, attempt).await else {
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let since = seen.lock().unwrap().seqs.last().copied().unwrap_or(0);
        let subscribe = json!({"op": "subscribe", "conversation_id": shared.conversation, "since_seq": since});
        if ws.send(Message::Text(subscribe.to_string().into())).await.is_ok() {
            // Quiet for a while is fine (senders may be stalled by the fault); a failed socket is not.
            while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                let Message::Text(text) = message else { continue };
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                match frame["op"].as_str() {
                    Some("message") => {
                        let seq = frame["message"]["seq"].as_u64().unwrap_or(0);
                        let mut seen = seen.lock().unwrap();
                        let last = seen.seqs.last().copied().unwrap_or(0);
                        if seq <= last {
                            seen.duplicates += 1;
                        } else {
                            if seq != last + 1 {
                                seen.gaps.push((last, seq));
                            }
                            seen.seqs.push(seq);
                        }
                    }
                    // A refused subscribe (the dependency it reads is down): subscribe again.
                    Some("error") => break,
                    _ => {}
                }
            }
        }
        seen.lock().unwrap().reconnects += 1;
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
