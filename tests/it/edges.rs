//! The edge as an attacker and a careless client meet it: bounded metric
//! labels, header and idle timeouts, the connection cap, unreadable
//! credentials, the JSON shape of every error, one spelling per identifier,
//! idempotency scoped per sender — on both backends where behaviour is
//! backend-specific.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::api::Api;
use crate::support::wsclient::{Client, Next};
use crate::support::{backend_test, eventually, Backend, TestEnv};

async fn metrics(api: &Api) -> String {
    reqwest::get(api.msgd.url("/metrics")).await.unwrap().text().await.unwrap()
}

/// Sends raw bytes on a fresh connection and reads the answer until the
/// server closes (or `timeout`).
async fn raw_exchange(addr: &str, request: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_never_grow_the_metric_series() {
    let api = Api::start(Backend::Embedded).await;
    let series = |text: &str| text.lines().filter(|l| l.starts_with("msgd_http_request")).count();
    // Warm up the series the loop below can legitimately create.
    raw_exchange(
        &api.msgd.addr,
        b"BREW0 /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    metrics(&api).await; // the scrape's own series
    let before = series(&metrics(&api).await);
    for n in 0..200 {
        let method = format!("M{n}{}", "X".repeat(1000));
        let request = format!("{method} /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        raw_exchange(&api.msgd.addr, request.as_bytes(), Duration::from_secs(5)).await;
    }
    let text = metrics(&api).await;
    assert_eq!(series(&text), before, "made-up methods added series");
    assert!(text.contains(r#"method="other""#), "unknown methods are counted as `other`");
    assert!(text.len() < 200_000, "/metrics stays small: {} bytes", text.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_silent_sockets_are_closed() {
    let mut env = TestEnv::new(Backend::Embedded).await;
    env.set("MSGD_HTTP__HEADER_READ_TIMEOUT", "1s");
    let msgd = env.serve();
    // A silent socket, and one trickling header lines: both closed by the timeout.
    let mut silent = TcpStream::connect(&msgd.addr).await.unwrap();
    let mut trickle = TcpStream::connect(&msgd.addr).await.unwrap();
    trickle.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let trickling = tokio::spawn(async move {
        for n in 0..20 {
            if trickle.write_all(format!("x-slow-{n}: 1\r\n").as_bytes()).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(1), trickle.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    });
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "the silent socket was not closed: {closed:?}");
    assert!(trickling.await.unwrap(), "the trickling socket was not closed");
    // A kept-alive connection that goes quiet after a response is closed too.
    let mut kept = TcpStream::connect(&msgd.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), kept.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the idle kept-alive connection was never closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_answers_503_and_service_returns() {
    let mut env = TestEnv::new(Backend::Embedded).await;
    env.set("MSGD_HTTP__MAX_CONNECTIONS", "20");
    env.set("MSGD_HTTP__HEADER_READ_TIMEOUT", "2s");
    let msgd = env.serve();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(&msgd.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = raw_exchange(&msgd.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"too_many_connections""#), "{answer}");
    // The silent ones time out, and the server serves again without help.
    let back = eventually(
        Duration::from_secs(10),
        async || matches!(reqwest::get(msgd.url("/healthz")).await, Ok(r) if r.status() == 200),
    )
    .await;
    assert!(back, "service did not return after the silent sockets timed out");
    let text = reqwest::get(msgd.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"msgd_connections_refused_total{reason="max_connections"}"#), "{text}");
}

/// A low file limit: msgd caps its connections to fit, so a flood of idle
/// sockets never leaves it unable to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_file_limit_never_leaves_msgd_unable_to_answer() {
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new(Backend::Embedded).await;
    let mut command = env.command(&["serve"]);
    // SAFETY: only setrlimit runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let msgd = crate::support::Msgd::start(command, env.dir.path());
    let mut flood = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(&msgd.addr).await {
            Ok(stream) => flood.push(stream),
            Err(_) => break,
        }
    }
    let healthz = tokio::time::timeout(Duration::from_secs(5), reqwest::get(msgd.url("/healthz"))).await;
    let status = healthz.expect("/healthz answered within 5 s").expect("/healthz answered").status().as_u16();
    assert!(status == 200 || status == 503, "{status}");
    let boot = msgd.log_lines().into_iter().find(|l| l["step"] == "limits").expect("a limits boot line");
    assert!(boot["max-connections"].as_u64().unwrap() <= 256 - 64, "{boot}");
    drop(flood);
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreadable_credentials_are_refused_never_ignored(backend: Backend) {
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        let path = api.msgd.url(&format!("/v1/conversations/{conversation}/messages"));
        let mut bad = b"Bearer \xe9".to_vec();
        bad.extend_from_slice(api.token("carol").await.as_bytes());
        let reply = api
            .client
            .get(&path)
            .header("x-api-key", &api.admin_key)
            .header("authorization", reqwest::header::HeaderValue::from_bytes(&bad).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 401, "{backend:?}");
        let body: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token", "{backend:?}: {body}");
        // The same at the WebSocket upgrade.
        let reply = api
            .client
            .get(api.msgd.url("/v1/ws"))
            .header("x-api-key", &api.admin_key)
            .header("authorization", reqwest::header::HeaderValue::from_bytes(&bad).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 401, "{backend:?}");
        // With only dev tokens on, garbage is called what it is.
        let reply =
            api.request(Method::GET, "/v1/conversations", Some(&api.write_key), Some("garbage"), None, &[]).await;
        assert_eq!(reply.code(), "invalid_token");
        assert!(!reply.body.to_string().contains("keycloak"), "{}", reply.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_the_json_shape_and_a_code() {
    let api = Api::start(Backend::Embedded).await;
    let alice = api.token("alice").await;
    let cases: Vec<(Method, &str, u16, &str)> = vec![
        (Method::GET, "/v1/conversations/%FF/messages", 400, "invalid_request"),
        (Method::GET, "/v1/conversations?limit=-1", 400, "invalid_request"),
        (Method::GET, "/v1/conversations?limit=0", 400, "invalid_request"),
        (Method::GET, "/v1/conversations?limit=501", 400, "invalid_request"),
        (Method::DELETE, "/v1/conversations", 405, "method_not_allowed"),
        (Method::PATCH, "/healthz", 405, "method_not_allowed"),
        (Method::GET, "/nope", 404, "not_found"),
    ];
    for (method, path, status, code) in cases {
        let reply = api.request(method.clone(), path, Some(&api.write_key), Some(&alice), None, &[]).await;
        assert_eq!((reply.status, reply.code()), (status, code), "{method} {path}: {}", reply.body);
        assert!(reply.body["error"]["message"].is_string(), "{method} {path}: {}", reply.body);
    }
    let reply =
        api.request(Method::GET, "/v1/conversations?limit=500", Some(&api.write_key), Some(&alice), None, &[]).await;
    assert_eq!(reply.status, 200);
    let reply = api.request(Method::DELETE, "/v1/conversations", Some(&api.write_key), None, None, &[]).await;
    assert!(reply.headers.get("allow").is_some(), "a 405 keeps its Allow header");
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn user_ids_have_one_spelling_everywhere(backend: Backend) {
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &["caf\u{e9}"]).await;
        let member = |user: &str| {
            let path = format!("/v1/conversations/{conversation}/members/{}", urlencode(user));
            let api = &api;
            async move { api.request(Method::PUT, &path, Some(&api.admin_key), None, None, &[]).await }
        };
        // NFD spelling of a member already there: the same user.
        let reply = member("cafe\u{301}").await;
        assert_eq!((reply.status, reply.body["added"].as_bool()), (200, Some(false)), "{backend:?}: {}", reply.body);
        assert_eq!(reply.body["user_id"], "caf\u{e9}");
        for bad in ["alice\u{200b}", "\u{202e}alice", " alice"] {
            let reply = member(bad).await;
            assert_eq!((reply.status, reply.code()), (400, "invalid_user_id"), "{backend:?} {bad:?}: {}", reply.body);
        }
        for bad in ["a\u{0}b", &"x".repeat(10_000)] {
            let reply = api
                .request(Method::POST, "/v1/dev/token", Some(&api.admin_key), None, Some(&json!({"user_id": bad})), &[])
                .await;
            assert_eq!(reply.code(), "invalid_user_id", "{backend:?}");
        }
    }
}

backend_test! {
    /// A title is one line: U+0000 (which Postgres text cannot hold) and every
    /// other control character get `invalid_title` on both backends, not a 503.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_title_with_control_characters_is_refused_alike(backend: Backend) {
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let create = |title: String| {
            let api = &api;
            let alice = &alice;
            async move {
                let body = json!({"members": [], "title": title, "metadata": {"k\u{0}": "v\u{0}"}});
                api.request(Method::POST, "/v1/conversations", Some(&api.write_key), Some(alice), Some(&body), &[]).await
            }
        };
        for bad in ["G\u{0}\u{8f}", "line\nbreak", "\u{1b}[2J", &"t".repeat(201)] {
            let reply = create(bad.to_string()).await;
            assert_eq!((reply.status, reply.code()), (400, "invalid_title"), "{backend:?} {bad:?}: {}", reply.body);
        }
        // NUL inside metadata is JSON text (escaped), stored and returned as sent.
        let reply = create("caf\u{e9} \u{1f4ac}".to_string()).await;
        assert_eq!(reply.status, 201, "{backend:?}: {}", reply.body);
        assert_eq!(reply.body["metadata"]["k\u{0}"], "v\u{0}");
        let id = reply.body["id"].as_str().unwrap();
        let read = api.request(Method::GET, &format!("/v1/conversations/{id}"), Some(&api.read_key), Some(&alice), None, &[]).await;
        assert_eq!((read.status, &read.body["title"]), (200, &json!("caf\u{e9} \u{1f4ac}")), "{backend:?}");
        assert_eq!(read.body["metadata"]["k\u{0}"], "v\u{0}", "{backend:?}");
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Dev tokens are checked like any other: `nbf`, and a subject that is a valid user id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_honour_nbf_and_the_user_id_rule() {
    let api = Api::start(Backend::Embedded).await;
    let now = msgd::clock::now_ms() / 1000;
    let sign = |claims: serde_json::Value| {
        let header = jsonwebtoken::Header {
            kid: Some("msgd-dev".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        };
        let key = jsonwebtoken::EncodingKey::from_secret(b"test-signing-key-0123456789abcdef0123");
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let claims = |sub: &str, nbf: i64| json!({"iss": "msgd-dev", "aud": api.app_id, "sub": sub, "iat": now, "nbf": nbf, "exp": now + 600});
    for (name, token, code) in [
        ("nbf in the future", sign(claims("alice", now + 300)), "invalid_token"),
        ("NUL in the subject", sign(claims("a\u{0}b", now)), "invalid_token"),
        ("a 10,000-character subject", sign(claims(&"x".repeat(10_000), now)), "invalid_token"),
    ] {
        let reply = api.request(Method::GET, "/v1/conversations", Some(&api.write_key), Some(&token), None, &[]).await;
        assert_eq!((reply.status, reply.code()), (401, code), "{name}: {}", reply.body);
    }
    let ok = sign(claims("alice", now - 1));
    let reply = api.request(Method::GET, "/v1/conversations", Some(&api.write_key), Some(&ok), None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotency_keys_belong_to_their_sender(backend: Backend) {
        let api = Api::start(backend).await;
        let (alice, bob) = (api.token("alice").await, api.token("bob").await);
        let conversation = api.conversation(&alice, &["bob"]).await;
        let path = format!("/v1/conversations/{conversation}/messages");
        let send = |token: &str, text: &str| {
            let (api, path, token, body) = (&api, path.clone(), token.to_string(), json!({"payload": {"text": text}}));
            async move {
                api.request(
                    Method::POST,
                    &path,
                    Some(&api.write_key),
                    Some(&token),
                    Some(&body),
                    &[("idempotency-key", "k1")],
                )
                .await
            }
        };
        let first = send(&alice, "from alice").await;
        assert_eq!(first.status, 201, "{}", first.body);
        let other = send(&bob, "from bob").await;
        assert_eq!(other.status, 201, "{backend:?}: bob's k1 is his own: {}", other.body);
        assert_ne!(other.body["seq"], first.body["seq"]);
        let replay = send(&alice, "from alice").await;
        assert_eq!((replay.status, &replay.body["seq"]), (200, &first.body["seq"]), "{backend:?}");
        // A batch refuses the header instead of ignoring it.
        let batch = json!({"messages": [{"payload": 1}]});
        let reply = api
            .request(
                Method::POST,
                &format!("{path}/batch"),
                Some(&api.write_key),
                Some(&alice),
                Some(&batch),
                &[("idempotency-key", "b1")],
            )
            .await;
        assert_eq!((reply.status, reply.code()), (400, "idempotency_key_not_supported"), "{}", reply.body);
    }
}

/// The value of the sample whose line starts with `series` (name, labels and a space) in a scrape; 0 when absent.
fn sample_value(text: &str, series: &str) -> u64 {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).unwrap_or(0)
}

backend_test! {
    /// A descending page ending at a very old `to_ts` starts from the index,
    /// without reading every block down to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_old_to_ts_does_not_walk_all_history(backend: Backend) {
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        let path = format!("/v1/conversations/{conversation}/messages");
        // Four flushes of 500: four blocks, each a history chunk of its own.
        for round in 0..4 {
            api.send_batches(&alice, &conversation, (0..500).map(|n| json!({"round": round, "n": n}))).await;
            let out = api.env.run(&["flush", "--all"], "");
            assert_eq!(out.code, 0, "{}", out.stderr);
        }
        let segment_reads = |text: &str| sample_value(text, r#"msgd_history_requests_total{source="segments"} "#);
        let before = segment_reads(&metrics(&api).await);
        let query = format!("{path}?order=desc&to_ts=1&limit=10");
        let reply = api.request(Method::GET, &query, Some(&api.write_key), Some(&alice), None, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["messages"], json!([]));
        let reads = segment_reads(&metrics(&api).await) - before;
        assert!(reads <= 1, "{backend:?}: {reads} segment reads for a page before all history");
    }
}

backend_test! {
    /// A page of history from segments fetches the one or two blocks that
    /// hold it, not every block of a wider window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cold_page_fetches_only_the_blocks_it_needs(backend: Backend) {
        let vars = [("MSGD_FLUSH__BLOCK_BYTES", "4096"), ("MSGD_FLUSH__HOT_WINDOW", "0")];
        let api = Api::start_with(backend, &vars).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        api.send_batches(&alice, &conversation, (0..1000).map(|n| json!({"n": n}))).await;
        let out = api.env.run(&["flush", "--all", "--json"], "");
        assert_eq!(out.code, 0, "{}", out.stderr);
        let blocks = out.json()["segments"][0]["blocks"].as_array().unwrap().len();
        assert!(blocks > 20, "{backend:?}: blocks of at most 4 KiB: {blocks}");
        let misses = |text: &str| sample_value(text, "msgd_block_cache_misses_total ");
        let before = misses(&metrics(&api).await);
        let query = format!("/v1/conversations/{conversation}/messages?after_seq=500&limit=10");
        let reply = api.request(Method::GET, &query, Some(&api.write_key), Some(&alice), None, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let seqs: Vec<u64> = reply.body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (501..=510).collect::<Vec<_>>());
        let fetched = misses(&metrics(&api).await) - before;
        assert!((1..=2).contains(&fetched), "{backend:?}: {fetched} blocks fetched for a page of 10");
    }
}

backend_test! {
    /// Catch-up of 10,000 messages from segments reaches a fast reader whole:
    /// the replay waits for room in the send queue instead of overflowing it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_catch_up_from_segments_arrives_whole(backend: Backend) {
        const TOTAL: u64 = 10_000;
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        api.send_batches(&alice, &conversation, (0..TOTAL).map(|n| json!({"n": n}))).await;
        let out = api.env.run(&["flush", "--all"], "");
        assert_eq!(out.code, 0, "{}", out.stderr);
        let mut client = Client::connect(&api.msgd.addr, &api.read_key, &alice).await;
        client.send(json!({"op": "subscribe", "conversation_id": conversation, "since_seq": 0})).await;
        let mut next_seq = 1;
        while next_seq <= TOTAL {
            match client.next(Duration::from_secs(20)).await {
                Next::Frame(frame) if frame["op"] == "message" => {
                    assert_eq!(frame["message"]["seq"], next_seq, "{backend:?}");
                    next_seq += 1;
                }
                Next::Frame(frame) if frame["op"] == "subscribed" => {}
                other => panic!("{backend:?}: at seq {next_seq}: {other:?}"),
            }
        }
        // Still open and live afterwards.
        client.send(json!({"op": "ping"})).await;
        client.expect_op("pong").await;
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsubscribe_by_any_spelling_of_the_id_stops_delivery(backend: Backend) {
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        let mut client = Client::connect(&api.msgd.addr, &api.read_key, &alice).await;
        client.send(json!({"op": "subscribe", "conversation_id": conversation})).await;
        client.expect_op("subscribed").await;
        let spelled = format!("{{{}}}", conversation.to_uppercase());
        client.send(json!({"op": "unsubscribe", "conversation_id": spelled})).await;
        let answer = client.expect_op("unsubscribed").await;
        assert_eq!(answer["conversation_id"], conversation.as_str());
        api.send(&alice, &conversation, &json!({"payload": "after"})).await;
        client.send(json!({"op": "ping"})).await;
        loop {
            match client.next(Duration::from_secs(5)).await {
                Next::Frame(frame) if frame["op"] == "pong" => break,
                Next::Frame(frame) => assert_ne!(frame["op"], "message", "{backend:?}: delivered after unsubscribe"),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_with_1009() {
    let api = Api::start(Backend::Embedded).await;
    let alice = api.token("alice").await;
    let mut client = Client::connect(&api.msgd.addr, &api.read_key, &alice).await;
    let big = json!({"op": "ping", "pad": "x".repeat(300 * 1024)}).to_string();
    let _ = client.socket.send(tokio_tungstenite::tungstenite::Message::Text(big.into())).await;
    let closed = loop {
        match client.next(Duration::from_secs(10)).await {
            Next::Frame(_) => continue,
            Next::Closed(code) => break code,
            Next::Timeout => panic!("not closed"),
        }
    };
    assert_eq!(closed, Some(1009));
}

/// The heartbeat and the credential re-check each run at their own interval
/// (they once waited for a second tick of a shared timer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_comes_at_its_interval() {
    let api = Api::start_with(
        Backend::Embedded,
        &[("MSGD_WS__HEARTBEAT_INTERVAL", "2s"), ("MSGD_AUTH__KEY_CACHE_TTL", "5s")],
    )
    .await;
    let alice = api.token("alice").await;
    let mut client = Client::connect(&api.msgd.addr, &api.read_key, &alice).await;
    let started = std::time::Instant::now();
    let pinged = loop {
        match tokio::time::timeout(Duration::from_secs(10), client.socket.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_)))) => break started.elapsed(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no ping: {other:?}"),
        }
    };
    assert!(pinged < Duration::from_millis(3500), "first ping after {pinged:?} for a 2 s heartbeat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_capped_per_user_and_per_address() {
    let api = Api::start_with(Backend::Embedded, &[("MSGD_WS__MAX_PER_USER", "2"), ("MSGD_WS__MAX_PER_IP", "3")]).await;
    let (alice, bob) = (api.token("alice").await, api.token("bob").await);
    let upgrade = |token: &str| {
        let url = format!("ws://{}/v1/ws?api_key={}&access_token={token}", api.msgd.addr, api.read_key);
        async move { tokio_tungstenite::connect_async(url).await }
    };
    let refused_status = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{other}"),
        Ok(_) => 101,
    };
    let a1 = upgrade(&alice).await.unwrap();
    let a2 = upgrade(&alice).await.unwrap();
    assert_eq!(refused_status(upgrade(&alice).await), 429, "a third socket for alice");
    let _b1 = upgrade(&bob).await.unwrap();
    assert_eq!(refused_status(upgrade(&bob).await), 429, "a fourth socket from one address");
    drop((a1, a2));
    let again = eventually(Duration::from_secs(5), async || upgrade(&alice).await.is_ok()).await;
    assert!(again, "closing sockets frees their places");
    let text = metrics(&api).await;
    for reason in ["ws_per_user", "ws_per_ip"] {
        assert!(text.contains(&format!(r#"msgd_connections_refused_total{{reason="{reason}"}}"#)), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_off_by_default_and_names_the_route_and_app() {
    let quiet = Api::start(Backend::Embedded).await;
    let alice = quiet.token("alice").await;
    quiet.request(Method::GET, "/v1/conversations", Some(&quiet.write_key), Some(&alice), None, &[]).await;
    assert!(!quiet.msgd.log_lines().iter().any(|l| l["component"] == "access" && l["message"] == "request"));

    let api = Api::start_with(Backend::Embedded, &[("MSGD_OBSERVABILITY__LOGGING__ACCESS", "true")]).await;
    let alice = api.token("alice").await;
    let conversation = api.conversation(&alice, &[]).await;
    let reply = api
        .request(
            Method::GET,
            &format!("/v1/conversations/{conversation}"),
            Some(&api.write_key),
            Some(&alice),
            None,
            &[],
        )
        .await;
    assert_eq!(reply.status, 200);
    let logged = eventually(Duration::from_secs(5), async || {
        api.msgd.log_lines().iter().any(|l| {
            l["component"] == "access"
                && l["message"] == "request"
                && l["route"] == "/v1/conversations/{id}"
                && l["status"] == 200
                && l["app-id"] == api.app_id.as_str()
                && l["method"] == "GET"
                && l["duration-ms"].is_number()
        })
    })
    .await;
    assert!(logged, "{}", api.msgd.log_text());
    let access: Vec<_> = api.msgd.log_lines().into_iter().filter(|l| l["message"] == "request").collect();
    assert!(!access.iter().any(|l| l.to_string().contains(&conversation)), "the access log never carries path ids");
}

/// A payload's numbers are stored as the client wrote them: JSON numbers are
/// parsed with correct rounding (the client-frame fuzz target once saw
/// 22.5222…2 come back one unit off in the last place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_numbers_round_trip_exactly() {
    let api = Api::start(Backend::Embedded).await;
    let alice = api.token("alice").await;
    let conversation = api.conversation(&alice, &[]).await;
    let written = "22.5222222222222222222222222222222222222222222222";
    let body = format!(r#"{{"payload": {{"n": {written}}}}}"#);
    let reply = api
        .client
        .post(api.msgd.url(&format!("/v1/conversations/{conversation}/messages")))
        .header("x-api-key", &api.write_key)
        .header("authorization", format!("Bearer {alice}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 201);
    let expected = format!(r#""n":{}"#, written.parse::<f64>().unwrap());
    let text = reply.text().await.unwrap();
    assert!(text.contains(&expected), "{text} does not hold {expected}");
    // Read back from the tail (stored text, parsed again), and again after a flush, from a segment.
    let history = api.msgd.url(&format!("/v1/conversations/{conversation}/messages"));
    for _ in 0..2 {
        let text = api
            .client
            .get(&history)
            .header("x-api-key", &api.write_key)
            .header("authorization", format!("Bearer {alice}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains(&expected), "{text} does not hold {expected}");
        assert_eq!(api.env.run(&["flush", "--all"], "").code, 0);
    }
}

backend_test! {
    #[tokio::test]
    async fn browsers_on_listed_origins_may_call_the_api(backend: Backend) {
        let app = "https://app.example.com";
        let api = Api::start_with(backend, &[("MSGD_HTTP__CORS_ORIGINS", &format!("{app}, http://localhost:5173"))]).await;
        let token = api.token("alice").await;
        let client = reqwest::Client::new();
        let preflight = |origin: &str, path: &str| {
            client
                .request(Method::OPTIONS, api.msgd.url(path))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "x-api-key, authorization, content-type")
                .send()
        };
        let allowed = |response: &reqwest::Response| {
            response.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_string())
        };

        let answer = preflight(app, "/v1/conversations").await.unwrap();
        assert_eq!((answer.status().as_u16(), allowed(&answer).as_deref()), (204, Some(app)));
        let allow_headers = answer.headers()["access-control-allow-headers"].to_str().unwrap().to_lowercase();
        assert!(allow_headers.contains("x-api-key") && allow_headers.contains("authorization"), "{allow_headers}");

        // Answers, errors included, name the origin and expose what clients act on.
        let listed = client
            .get(api.msgd.url("/v1/conversations"))
            .header("origin", app)
            .header("x-api-key", &api.read_key)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!((listed.status().as_u16(), allowed(&listed).as_deref()), (200, Some(app)));
        assert!(listed.headers()["access-control-expose-headers"].to_str().unwrap().contains("Retry-After"));
        let refused = client.get(api.msgd.url("/v1/conversations")).header("origin", app).send().await.unwrap();
        assert_eq!((refused.status().as_u16(), allowed(&refused).as_deref()), (401, Some(app)));

        // Not listed, or the operator's API: no CORS, so the browser refuses the answer.
        let other = preflight("https://evil.example.com", "/v1/conversations").await.unwrap();
        assert_eq!((other.status().as_u16(), allowed(&other)), (405, None));
        let admin = preflight(app, "/v1/admin/apps").await.unwrap();
        assert_eq!(allowed(&admin), None);

        // Off by default.
        let plain = Api::start(backend).await;
        let answer = client.get(plain.msgd.url("/healthz")).header("origin", app).send().await.unwrap();
        assert_eq!(allowed(&answer), None);

        // An origin is scheme, host and port, nothing more.
        let mut env = TestEnv::new(backend).await;
        env.set("MSGD_HTTP__CORS_ORIGINS", "https://app.example.com/chat");
        let check = env.run(&["config", "--check"], "");
        assert_eq!(check.code, 2, "{}", check.stderr);
        assert!(check.stderr.contains("http.cors_origins"), "{}", check.stderr);
    }
}
