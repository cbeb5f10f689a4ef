//! The write path through a real `msgd serve` on both backends: concurrent
//! senders, retry storms, seq re-seeding, validation, rate limits, receipts,
//! membership changes and live publication.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::Api;
use crate::support::{backend_test, sample, scrape, services_test, Backend, ServicesEnv};

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_senders_get_gap_free_seqs_in_their_send_order(backend: Backend) {
        const SENDERS: usize = 16;
        const EACH: usize = 500;
        // No flush may trim the tail before it is read back below.
        let api = Arc::new(Api::start_with(backend, &[("MSGD_FLUSH__MAX_BYTES", "1073741824")]).await);
        let users: Vec<String> = (0..SENDERS).map(|i| format!("user-{i}")).collect();
        let owner = api.token(&users[0]).await;
        let member_refs: Vec<&str> = users.iter().map(String::as_str).collect();
        let conversation = api.conversation(&owner, &member_refs).await;

        let mut tasks = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let api = api.clone();
            let token = api.token(user).await;
            let conversation = conversation.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::with_capacity(EACH);
                for n in 0..EACH {
                    let reply = api.send(&token, &conversation, &json!({"payload": {"sender": i, "n": n}})).await;
                    assert_eq!(reply.status, 201, "{}", reply.body);
                    seqs.push(reply.body["seq"].as_u64().unwrap());
                }
                seqs
            }));
        }
        let mut all = BTreeSet::new();
        for task in tasks {
            let seqs = task.await.unwrap();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{backend:?}: a sender's messages are in its send order");
            for seq in seqs {
                assert!(all.insert(seq), "{backend:?}: seq {seq} answered twice");
            }
        }
        assert_eq!(all, (1..=(SENDERS * EACH) as u64).collect(), "{backend:?}: exactly 1..=8000");

        // What the tail holds agrees: 8,000 entries, each sender's n rising with seq.
        let stores = api.stores().await;
        let entries = stores.tail.read(&api.conv_key(&conversation), 0, 10_000).await.unwrap();
        assert_eq!(entries.len(), SENDERS * EACH);
        let mut last_n: BTreeMap<u64, i64> = BTreeMap::new();
        for (expected, entry) in (1u64..).zip(&entries) {
            assert_eq!(entry.seq, expected);
            let envelope: Value = serde_json::from_slice(&entry.body).unwrap();
            let (sender, n) =
                (envelope["payload"]["sender"].as_u64().unwrap(), envelope["payload"]["n"].as_i64().unwrap());
            assert!(
                last_n.insert(sender, n).is_none_or(|previous| previous < n),
                "{backend:?}: sender {sender} out of order"
            );
        }
        // Sixteen senders at once: appends went in groups (group commit), and every message in one.
        let metrics = scrape(&api.msgd).await;
        let (groups, grouped) = (
            sample(&metrics, r#"msgd_store_group_items_count{op="append"}"#).unwrap(),
            sample(&metrics, r#"msgd_store_group_items_sum{op="append"}"#).unwrap(),
        );
        // (The first group finds no counter and goes again once it is seeded.)
        assert!(grouped >= (SENDERS * EACH) as f64, "{backend:?}: {grouped}");
        assert!(groups < (SENDERS * EACH) as f64, "{backend:?}: {groups} appends for {grouped} messages");
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_storm_writes_each_message_once(backend: Backend) {
        const MESSAGES: usize = 1000;
        let api = Arc::new(Api::start(backend).await);
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &[]).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(48));
        let mut tasks = Vec::new();
        for n in 0..MESSAGES {
            for _attempt in 0..3 {
                let (api, token, conversation, gate) = (api.clone(), token.clone(), conversation.clone(), gate.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire().await.unwrap();
                    let body = json!({"payload": {"n": n}, "client_msg_id": format!("m-{n}")});
                    let reply = api.send(&token, &conversation, &body).await;
                    (n, reply.status, reply.body)
                }));
            }
        }
        let mut envelopes: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
        let (mut created, mut replayed) = (0, 0);
        for task in tasks {
            let (n, status, body) = task.await.unwrap();
            match status {
                201 => created += 1,
                200 => replayed += 1,
                other => panic!("{backend:?}: unexpected {other}: {body}"),
            }
            envelopes.entry(n).or_default().push(body);
        }
        assert_eq!((created, replayed), (MESSAGES, 2 * MESSAGES), "{backend:?}");
        for (n, answers) in envelopes {
            assert!(
                answers.iter().all(|a| a == &answers[0]),
                "{backend:?}: message {n} answered with different envelopes"
            );
        }
        let stores = api.stores().await;
        assert_eq!(stores.tail.last_seq(&api.conv_key(&conversation)).await.unwrap(), Some(MESSAGES as u64));

        // The same key with another payload is refused, and the header works like client_msg_id.
        let reused = api.send(&token, &conversation, &json!({"payload": {"other": 1}, "client_msg_id": "m-0"})).await;
        assert_eq!((reused.status, reused.code()), (422, "idempotency_key_reused"));
        let path = format!("/v1/conversations/{conversation}/messages");
        let body = json!({"payload": {"via": "header"}});
        let with_header = || {
            api.request(
                Method::POST,
                &path,
                Some(&api.write_key),
                Some(&token),
                Some(&body),
                &[("idempotency-key", "h-1")],
            )
        };
        let first = with_header().await;
        let again = with_header().await;
        assert_eq!((first.status, again.status), (201, 200));
        assert_eq!(first.body, again.body);
    }
}

services_test! {
    #[tokio::test]
    async fn losing_the_redis_seq_counter_continues_after_the_last_seq(_: ServicesEnv) {
        let api = Api::start(Backend::Services).await;
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &[]).await;
        for n in 1..=5 {
            assert_eq!(api.send(&token, &conversation, &json!({"payload": n})).await.body["seq"], n);
        }
        let conv = api.conv_key(&conversation);
        let prefix = api.env.var("MSGD_REDIS__KEY_PREFIX").unwrap();
        let key = format!("{prefix}:{{s{}}}:seq:{}:{}", conv.shard(), conv.app_id, conv.conversation_id);
        let client = redis::Client::open(api.env.var("MSGD_REDIS__URL").unwrap()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let deleted: i64 = redis::cmd("DEL").arg(&key).query_async(&mut connection).await.unwrap();
        assert_eq!(deleted, 1);
        let reply = api.send(&token, &conversation, &json!({"payload": 6})).await;
        assert_eq!((reply.status, reply.body["seq"].as_u64()), (201, Some(6)), "{}", reply.body);
    }
}

backend_test! {
    #[tokio::test]
    async fn bad_bodies_are_refused_with_codes_and_nothing_is_written(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_LIMITS__MAX_PAYLOAD_BYTES", "1024")]).await;
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &[]).await;
        let path = format!("/v1/conversations/{conversation}/messages");
        let big = "x".repeat(2000);
        let cases: Vec<(&str, Value, u16, &str)> = vec![
            ("no payload", json!({}), 400, "invalid_payload"),
            ("null payload", json!({"payload": null}), 400, "invalid_payload"),
            (
                "both payloads",
                json!({"payload": 1, "payload_base64": "AA==", "content_type": "a/b"}),
                400,
                "invalid_payload",
            ),
            ("too large", json!({"payload": {"text": big}}), 413, "payload_too_large"),
            (
                "too large binary",
                json!({"payload_base64": base64_of(&[0u8; 2000]), "content_type": "application/octet-stream"}),
                413,
                "payload_too_large",
            ),
            ("not base64", json!({"payload_base64": "***", "content_type": "a/b"}), 400, "invalid_payload"),
            ("binary without type", json!({"payload_base64": "AA=="}), 400, "invalid_content_type"),
            ("unknown field", json!({"payload": 1, "colour": "red"}), 400, "invalid_request"),
            ("wrong type", json!({"payload": 1, "attachments": "none"}), 400, "invalid_request"),
            (
                "bad attachment",
                json!({"payload": 1, "attachments": [{"key": "k", "content_type": "image/png", "size": 3, "sha256": "nothex"}]}),
                400,
                "invalid_attachments",
            ),
            ("long client id", json!({"payload": 1, "client_msg_id": "c".repeat(256)}), 400, "invalid_client_msg_id"),
            ("control char id", json!({"payload": 1, "client_msg_id": "a\u{7}b"}), 400, "invalid_client_msg_id"),
            // serde would read `[payload]` as the struct's first field.
            ("an array", json!([{"text": "hi"}]), 400, "invalid_request"),
        ];
        for (name, body, status, code) in cases {
            let reply = api.request(Method::POST, &path, Some(&api.write_key), Some(&token), Some(&body), &[]).await;
            assert_eq!((reply.status, reply.code()), (status, code), "{backend:?} {name}: {}", reply.body);
        }
        let raw = api
            .client
            .post(api.msgd.url(&path))
            .header("x-api-key", &api.write_key)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status().as_u16(), 400);
        // Well formed, but no such upload in this conversation.
        let unknown = json!({"payload": 1, "attachments": [{"key": "attachments/x", "content_type": "image/png", "size": 3, "sha256": "a".repeat(64)}]});
        let reply = api.send(&token, &conversation, &unknown).await;
        assert_eq!((reply.status, reply.code()), (400, "invalid_attachments"), "{backend:?}: {}", reply.body);
        assert_eq!(api.send(&token, &conversation, &json!({"payload": 1})).await.status, 201);
        let stores = api.stores().await;
        assert_eq!(
            stores.tail.last_seq(&api.conv_key(&conversation)).await.unwrap(),
            Some(1),
            "{backend:?}: refusals wrote nothing"
        );

        let batch_path = format!("{path}/batch");
        let batch = json!({"messages": [{"payload": 2}, {"payload": {"text": big}}, {"nope": 1}, [9], {"payload": 3}]});
        let reply = api.request(Method::POST, &batch_path, Some(&api.write_key), Some(&token), Some(&batch), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let statuses: Vec<_> =
            reply.body["results"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
        assert_eq!(statuses, [201, 413, 400, 400, 201]);
        assert_eq!(reply.body["results"][4]["message"]["seq"], 3);
        let too_many = json!({"messages": vec![json!({"payload": 1}); 101]});
        let reply =
            api.request(Method::POST, &batch_path, Some(&api.write_key), Some(&token), Some(&too_many), &[]).await;
        assert_eq!((reply.status, reply.code()), (400, "invalid_batch"));
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

backend_test! {
    #[tokio::test]
    async fn rate_limits_answer_429_with_retry_after_and_ratelimit_fields(backend: Backend) {
        // One message per 10 s after a burst of 5: no refill can happen while the test runs.
        let api =
            Api::start_with(backend, &[("MSGD_LIMITS__USER_RATE", "0.1"), ("MSGD_LIMITS__USER_BURST", "5")]).await;
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &[]).await;
        let mut statuses = Vec::new();
        let mut refused = None;
        for n in 0..8 {
            let reply =
                api.send(&token, &conversation, &json!({"payload": n, "client_msg_id": format!("r-{n}")})).await;
            statuses.push(reply.status);
            if reply.status == 429 {
                refused.get_or_insert(reply);
            }
        }
        assert_eq!(&statuses[..5], &[201; 5], "{backend:?}: the burst passes");
        assert!(statuses[5..].iter().all(|s| *s == 429), "{backend:?}: {statuses:?}");
        let refused = refused.unwrap();
        assert_eq!(refused.code(), "rate_limited");
        for header in ["retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy"] {
            assert!(refused.headers.contains_key(header), "{backend:?}: no {header}");
        }
        assert_eq!(refused.headers["ratelimit-remaining"], "0");
        // A retry of an accepted send is a replay, not a rate-limited request.
        let retry = api.send(&token, &conversation, &json!({"payload": 0, "client_msg_id": "r-0"})).await;
        assert_eq!((retry.status, retry.body["seq"].as_u64()), (200, Some(1)), "{backend:?}: {}", retry.body);
        // Another user is not affected.
        let bob = api.token("bob").await;
        let other = api.conversation(&bob, &[]).await;
        assert_eq!(api.send(&bob, &other, &json!({"payload": 1})).await.status, 201);
        let metrics = api.client.get(api.msgd.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains(r#"msgd_rate_limited_total{scope="user"} 3"#), "{metrics}");
    }
}

backend_test! {
    #[tokio::test]
    async fn a_batch_is_one_append_with_each_message_idempotent_and_rate_limited(backend: Backend) {
        // A burst of 6 and no refill while the test runs.
        let api =
            Api::start_with(backend, &[("MSGD_LIMITS__USER_RATE", "0.1"), ("MSGD_LIMITS__USER_BURST", "6")]).await;
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &[]).await;
        // The first message seeds the conversation's counter (an append that finds none, then one that writes).
        assert_eq!(api.send(&token, &conversation, &json!({"payload": "first"})).await.status, 201);
        let batch = json!({"messages": [
            {"payload": 0, "client_msg_id": "a"},
            {"payload": 1},
            {"payload": 0, "client_msg_id": "a"},
            {"payload": "changed", "client_msg_id": "a"},
            {"payload": null},
            {"payload": 5},
            {"payload": 6},
            {"payload": 7},
            {"payload": 8},
        ]});
        let path = format!("/v1/conversations/{conversation}/messages/batch");
        let send = || api.request(Method::POST, &path, Some(&api.admin_key), Some(&token), Some(&batch), &[]);
        let statuses = |reply: &crate::support::api::Reply| -> Vec<u64> {
            reply.body["results"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect()
        };
        let before = scrape(&api.msgd).await;
        let first = send().await;
        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(statuses(&first), [201, 201, 200, 422, 400, 201, 429, 429, 429], "{backend:?}: {}", first.body);
        let results = first.body["results"].as_array().unwrap();
        let seqs: Vec<Option<u64>> = results.iter().map(|r| r["message"]["seq"].as_u64()).collect();
        assert_eq!(seqs[..3], [Some(2), Some(3), Some(2)], "{backend:?}: the in-batch duplicate replays seq 2");
        assert_eq!(seqs[5], Some(4), "{backend:?}: seqs stay gap-free around refused items");
        assert_eq!(results[3]["error"]["code"], "idempotency_key_reused");
        assert_eq!(results[6]["error"]["code"], "rate_limited");
        if backend == Backend::Services {
            // One script call appended the batch and one checked both rate-limit buckets; no
            // claim was read (the keyed messages were granted: the append answered their replay).
            let after = scrape(&api.msgd).await;
            for (command, expected) in [("append", 1.0), ("rate_limit", 1.0), ("get", 0.0)] {
                let series = format!("msgd_redis_command_duration_seconds_count{{command=\"{command}\"}}");
                let calls = sample(&after, &series).unwrap_or(0.0) - sample(&before, &series).unwrap_or(0.0);
                assert_eq!(calls, expected, "{command}: {after}");
            }
        }
        // Retried whole: the limit refuses everything, the keyed messages replay, the rest are refused.
        let again = send().await;
        assert_eq!(statuses(&again), [200, 429, 200, 422, 400, 429, 429, 429, 429], "{backend:?}: {}", again.body);
        assert_eq!(again.body["results"][0]["message"], first.body["results"][0]["message"]);
        let history = api
            .request(Method::GET, &format!("/v1/conversations/{conversation}/messages"), Some(&api.admin_key), Some(&token), None, &[])
            .await;
        let payloads: Vec<&Value> = history.body["messages"].as_array().unwrap().iter().map(|m| &m["payload"]).collect();
        assert_eq!(payloads, [&json!("first"), &json!(0), &json!(1), &json!(5)], "{backend:?}");
        let metrics = scrape(&api.msgd).await;
        assert_eq!(sample(&metrics, r#"msgd_rate_limited_total{scope="user"}"#), Some(8.0), "3 + 5 refused");
    }
}

backend_test! {
    #[tokio::test]
    async fn receipts_only_move_forward_and_count_unread(backend: Backend) {
        let api = Api::start(backend).await;
        let (alice, bob) = (api.token("alice").await, api.token("bob").await);
        let conversation = api.conversation(&alice, &["bob"]).await;
        for n in 0..10 {
            api.send(&alice, &conversation, &json!({"payload": n})).await;
        }
        let path = format!("/v1/conversations/{conversation}/receipts");
        let post = |token: String, body: Value| {
            let (api, path) = (&api, path.clone());
            async move { api.request(Method::POST, &path, Some(&api.write_key), Some(&token), Some(&body), &[]).await }
        };
        let reply = post(bob.clone(), json!({"seq": 7, "kind": "read"})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!((reply.body["read_seq"].as_u64(), reply.body["delivered_seq"].as_u64()), (Some(7), Some(7)));
        let reply = post(bob.clone(), json!({"seq": 3, "kind": "read"})).await;
        assert_eq!(reply.body["read_seq"], 7, "{backend:?}: a lower seq never moves the mark back");
        let reply = post(bob.clone(), json!({"seq": 9, "kind": "delivered"})).await;
        assert_eq!((reply.body["read_seq"].as_u64(), reply.body["delivered_seq"].as_u64()), (Some(7), Some(9)));
        let reply = post(bob.clone(), json!({"seq": 11, "kind": "read"})).await;
        assert_eq!((reply.status, reply.code()), (400, "seq_out_of_range"));
        let reply = post(bob.clone(), json!({"seq": 1, "kind": "seen"})).await;
        assert_eq!((reply.status, reply.code()), (400, "invalid_request"));

        let view = api.request(Method::GET, &path, Some(&api.read_key), Some(&bob), None, &[]).await;
        assert_eq!(view.status, 200, "{}", view.body);
        assert_eq!((view.body["last_seq"].as_u64(), view.body["unread"].as_u64()), (Some(10), Some(3)));
        assert_eq!(view.body["receipts"], json!([{"user_id": "bob", "delivered_seq": 9, "read_seq": 7}]));
        // Your own messages are never unread: alice sent all ten.
        let view = api.request(Method::GET, &path, Some(&api.read_key), Some(&alice), None, &[]).await;
        assert_eq!(view.body["unread"], 0, "{backend:?}: {}", view.body);
        for n in 0..2 {
            api.send(&bob, &conversation, &json!({"payload": n})).await;
        }
        let view = api.request(Method::GET, &path, Some(&api.read_key), Some(&alice), None, &[]).await;
        assert_eq!(view.body["unread"], 2, "{backend:?}: {}", view.body);
        let view = api.request(Method::GET, &path, Some(&api.read_key), Some(&bob), None, &[]).await;
        assert_eq!(view.body["unread"], 0, "{backend:?}: sending implies having read what came before");
        assert_eq!(view.body["receipts"], json!([{"user_id": "bob", "delivered_seq": 9, "read_seq": 7}]));
    }
}

services_test! {
    #[tokio::test]
    async fn messages_and_receipts_are_published_on_the_live_channel(_: ServicesEnv) {
        let api = Api::start(Backend::Services).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        // Subscribe independently, straight on Redis.
        let prefix = api.env.var("MSGD_REDIS__KEY_PREFIX").unwrap();
        let channel = format!("{prefix}:live:{}:{conversation}", api.app_id);
        let client = redis::Client::open(api.env.var("MSGD_REDIS__URL").unwrap()).unwrap();
        let (mut sink, mut stream) = client.get_async_pubsub().await.unwrap().split();
        sink.subscribe(&channel).await.unwrap();
        let sent = api.send(&alice, &conversation, &json!({"payload": {"text": "hello"}})).await;
        let path = format!("/v1/conversations/{conversation}/receipts");
        let receipt = json!({"seq": 1, "kind": "read"});
        api.request(Method::POST, &path, Some(&api.write_key), Some(&alice), Some(&receipt), &[]).await;
        use futures::StreamExt;
        let mut payloads = Vec::new();
        for _ in 0..2 {
            let message = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap();
            payloads.push(message.get_payload::<Vec<u8>>().unwrap());
        }
        match msgd::store::LiveEvent::decode(&payloads[0]).unwrap() {
            msgd::store::LiveEvent::Message(entry) => {
                assert_eq!(entry.seq, 1);
                let envelope: Value = serde_json::from_slice(&entry.body).unwrap();
                assert_eq!(envelope["id"], sent.body["id"]);
            }
            other => panic!("expected a message, got {other:?}"),
        }
        match msgd::store::LiveEvent::decode(&payloads[1]).unwrap() {
            msgd::store::LiveEvent::Event(bytes) => {
                let event: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!((event["op"].as_str(), event["read_seq"].as_u64()), (Some("receipt"), Some(1)));
            }
            other => panic!("expected a receipt event, got {other:?}"),
        }
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_member_is_refused_within_a_second_on_every_instance(backend: Backend) {
        let api = Api::start(backend).await;
        let (alice, bob) = (api.token("alice").await, api.token("bob").await);
        let conversation = api.conversation(&alice, &["bob"]).await;
        let other = (backend == Backend::Services).then(|| api.second_instance());
        let instance = other.as_ref().unwrap_or(&api.msgd);
        let path = format!("/v1/conversations/{conversation}/messages");
        let body = json!({"payload": "hi"});
        // Bob writes through the other instance, warming its membership cache.
        let reply =
            api.request_to(instance, Method::POST, &path, Some(&api.write_key), Some(&bob), Some(&body), &[]).await;
        assert_eq!(reply.status, 201, "{}", reply.body);

        let members = format!("/v1/conversations/{conversation}/members/bob");
        let removed = api.request(Method::DELETE, &members, Some(&api.write_key), Some(&alice), None, &[]).await;
        assert_eq!(removed.status, 204, "{}", removed.body);
        let refused = crate::support::eventually(Duration::from_secs(1), async || {
            let reply =
                api.request_to(instance, Method::POST, &path, Some(&api.write_key), Some(&bob), Some(&body), &[]).await;
            reply.status == 403 && reply.code() == "not_member"
        })
        .await;
        assert!(refused, "{backend:?}: the removed member still writes after 1 s");
        // Added back: allowed again, also through the other instance.
        let added = api.request(Method::PUT, &members, Some(&api.write_key), Some(&alice), None, &[]).await;
        assert_eq!(added.status, 201);
        let allowed = crate::support::eventually(Duration::from_secs(1), async || {
            api.request_to(instance, Method::POST, &path, Some(&api.write_key), Some(&bob), Some(&body), &[])
                .await
                .status
                == 201
        })
        .await;
        assert!(allowed, "{backend:?}");
    }
}
