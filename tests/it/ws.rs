//! The WebSocket API against a real `msgd serve`: reconnect catch-up with no
//! gap and no duplicate while flushes trim the tail, slow consumers, delivery
//! across instances, and malformed frames.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use reqwest::Method;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::api::Api;
use crate::support::wsclient::{Client, Next};
use crate::support::{backend_test, sample, scrape, services_test, Backend, ServicesEnv};

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnecting_clients_receive_every_message_once_in_order(backend: Backend) {
        const MESSAGES: u64 = 1500;
        let api = Arc::new(
            Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "5")]).await,
        );
        let alice = api.token("alice").await;
        let bob = api.token("bob").await;
        let conversation = api.conversation(&alice, &["bob"]).await;

        let sent = Arc::new(AtomicU64::new(0));
        let sender = {
            let (api, conversation, sent) = (api.clone(), conversation.clone(), sent.clone());
            tokio::spawn(async move {
                for n in 0..MESSAGES {
                    let reply = api.send(&alice, &conversation, &json!({"payload": {"n": n}})).await;
                    assert_eq!(reply.status, 201, "{}", reply.body);
                    sent.store(n + 1, Ordering::SeqCst);
                    if n % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        };

        let mut received: Vec<u64> = Vec::new();
        let mut round = 0u64;
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        while received.last().copied().unwrap_or(0) < MESSAGES {
            round += 1;
            let mut client = Client::connect(&api.msgd.addr, &api.read_key, &bob).await;
            let since = received.last().copied().unwrap_or(0);
            client.send(json!({"op": "subscribe", "conversation_id": conversation, "since_seq": since})).await;
            client.expect_op("subscribed").await;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let take = 1 + rng % 150;
            for _ in 0..take {
                match client.next(Duration::from_secs(10)).await {
                    Next::Frame(frame) if frame["op"] == "message" => {
                        received.push(frame["message"]["seq"].as_u64().unwrap())
                    }
                    Next::Frame(frame) => assert_ne!(frame["op"], "error", "{frame}"),
                    other => panic!("round {round}: {other:?}"),
                }
                if received.last() == Some(&MESSAGES) {
                    break;
                }
            }
            drop(client); // disconnect abruptly, mid-stream
            if round % 4 == 0 {
                // A flush and trim between reconnects: catch-up must cross into segments.
                let out = api.env.run(&["flush", "--all"], "");
                assert_eq!(out.code, 0, "{}", out.stderr);
            }
        }
        sender.await.unwrap();
        assert_eq!(
            received,
            (1..=MESSAGES).collect::<Vec<_>>(),
            "{backend:?}: every message once, in order, over {round} connections"
        );
        assert!(round > 10, "the test reconnected many times");
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_consumer_is_cut_off_while_a_fast_one_keeps_up(backend: Backend) {
        // A queue of 64 frames absorbs a burst of pub/sub deliveries on a busy
        // machine (8 did not, in CI); the 300 frames of 60 KB (18 MB) the slow
        // one never reads overflow it plus the socket's buffers (~4 MB).
        let api =
            Api::start_with(backend, &[("MSGD_WS__SEND_QUEUE", "64"), ("MSGD_LIMITS__MAX_PAYLOAD_BYTES", "65536")])
                .await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        let mut fast = Client::connect(&api.msgd.addr, &api.read_key, &alice).await;
        let mut slow = Client::connect(&api.msgd.addr, &api.read_key, &alice).await;
        for client in [&mut fast, &mut slow] {
            client.send(json!({"op": "subscribe", "conversation_id": conversation})).await;
            client.expect_op("subscribed").await;
        }
        let big = "x".repeat(60_000);
        let reader = tokio::spawn(async move {
            let mut seqs = Vec::new();
            while seqs.len() < 300 {
                match fast.next(Duration::from_secs(20)).await {
                    Next::Frame(frame) if frame["op"] == "message" => {
                        seqs.push(frame["message"]["seq"].as_u64().unwrap())
                    }
                    Next::Frame(_) => {}
                    other => panic!("the fast consumer was disturbed: {other:?}"),
                }
            }
            seqs
        });
        for n in 0..300 {
            let reply = api.send(&alice, &conversation, &json!({"payload": {"n": n, "pad": big}})).await;
            assert_eq!(reply.status, 201, "{}", reply.body);
        }
        assert_eq!(reader.await.unwrap(), (1..=300).collect::<Vec<_>>(), "{backend:?}");
        // The slow one, which never read, finds a 4008 close after what was buffered.
        let closed = loop {
            match slow.next(Duration::from_secs(20)).await {
                Next::Frame(_) => continue,
                Next::Closed(code) => break code,
                Next::Timeout => panic!("{backend:?}: the slow consumer was never cut off"),
            }
        };
        assert_eq!(closed, Some(4008), "{backend:?}");
        let metrics = reqwest::get(api.msgd.url("/metrics")).await.unwrap().text().await.unwrap();
        assert!(metrics.contains("msgd_ws_slow_consumer_disconnects_total 1"), "{metrics}");
    }
}

services_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_receipts_and_typing_cross_instances(_: ServicesEnv) {
        let api = Api::start(Backend::Services).await;
        let other = api.second_instance();
        let (alice, bob) = (api.token("alice").await, api.token("bob").await);
        let conversation = api.conversation(&alice, &["bob"]).await;
        // Bob listens on the second instance; Alice acts on the first.
        let mut listener = Client::connect(&other.addr, &api.read_key, &bob).await;
        listener.send(json!({"op": "subscribe", "conversation_id": conversation})).await;
        listener.expect_op("subscribed").await;
        let mut actor = Client::connect(&api.msgd.addr, &api.write_key, &alice).await;

        let sent = api.send(&alice, &conversation, &json!({"payload": {"text": "over HTTP"}})).await;
        let frame = listener.expect_op("message").await;
        assert_eq!(frame["message"]["id"], sent.body["id"]);
        let send = json!({
            "op": "send", "conversation_id": conversation, "payload": {"text": "over ws"}, "client_msg_id": "w-1"
        });
        actor.send(send).await;
        let ack = actor.expect_op("ack").await;
        assert_eq!((ack["seq"].as_u64(), ack["client_msg_id"].as_str()), (Some(2), Some("w-1")));
        assert_eq!(listener.expect_op("message").await["message"]["seq"], 2);

        actor.send(json!({"op": "receipt", "conversation_id": conversation, "seq": 2, "kind": "read"})).await;
        let receipt = listener.expect_op("receipt").await;
        assert_eq!((receipt["user_id"].as_str(), receipt["read_seq"].as_u64()), (Some("alice"), Some(2)));
        actor.send(json!({"op": "typing", "conversation_id": conversation})).await;
        let typing = listener.expect_op("typing").await;
        assert_eq!(typing["user_id"], "alice");

        // Removed from the conversation: the stream stops with an error.
        let path = format!("/v1/conversations/{conversation}/members/bob");
        assert_eq!(api.request(Method::DELETE, &path, Some(&api.write_key), Some(&alice), None, &[]).await.status, 204);
        api.send(&alice, &conversation, &json!({"payload": 3})).await;
        let error = listener.expect_op("error").await;
        assert_eq!(error["code"], "not_member");
    }
}

backend_test! {
    #[tokio::test]
    async fn malformed_frames_get_error_frames_and_auth_happens_at_upgrade(backend: Backend) {
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let carol = api.token("carol").await;
        let conversation = api.conversation(&alice, &[]).await;
        let mut client = Client::connect(&api.msgd.addr, &api.read_key, &carol).await;
        let cases: Vec<(Message, &str)> = vec![
            (Message::Text("not json".into()), "invalid_frame"),
            (Message::Text(json!({"op": "dance"}).to_string().into()), "unknown_op"),
            (Message::Text(json!({"op": "subscribe"}).to_string().into()), "invalid_frame"),
            (Message::Text(json!({"no": "op"}).to_string().into()), "invalid_frame"),
            (Message::Binary(vec![1, 2, 3].into()), "invalid_frame"),
            (
                Message::Text(json!({"op": "subscribe", "conversation_id": conversation}).to_string().into()),
                "not_member",
            ),
            (
                Message::Text(json!({"op": "send", "conversation_id": conversation, "payload": 1}).to_string().into()),
                "not_member",
            ),
            (
                Message::Text(json!({"op": "receipt", "conversation_id": conversation, "seq": 1}).to_string().into()),
                "invalid_frame",
            ),
        ];
        for (message, code) in cases {
            client.send_raw(message).await;
            let error = client.expect_op("error").await;
            assert_eq!(error["code"], code, "{backend:?}: {error}");
        }
        client.send(json!({"op": "ping"})).await;
        client.expect_op("pong").await;

        // Refused before the upgrade, with the API's JSON error.
        let refused = reqwest::get(format!("http://{}/v1/ws?api_key={}", api.msgd.addr, api.read_key)).await.unwrap();
        assert_eq!(refused.status().as_u16(), 401);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "missing_token");
        assert!(tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", api.msgd.addr)).await.is_err());
    }
}

backend_test! {
    #[tokio::test]
    async fn a_revoked_key_closes_its_open_websockets(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_AUTH__KEY_CACHE_TTL", "1s")]).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        let out = api.env.run(&["keys", "create", "--app", &api.app_id, "--scope", "read", "--json"], "");
        let (key, key_id) =
            (out.json()["key"].as_str().unwrap().to_string(), out.json()["id"].as_str().unwrap().to_string());
        let mut client = Client::connect(&api.msgd.addr, &key, &alice).await;
        client.send(json!({"op": "subscribe", "conversation_id": conversation})).await;
        client.expect_op("subscribed").await;
        assert_eq!(api.env.run(&["keys", "revoke", &key_id], "").code, 0);
        let closed = loop {
            match client.next(Duration::from_secs(10)).await {
                // Alice's own presence may come first; then only the error explaining the close.
                Next::Frame(frame) if frame["op"] == "presence" => {}
                Next::Frame(frame) => assert_eq!(frame["op"], "error", "{frame}"),
                Next::Closed(code) => break code,
                Next::Timeout => panic!("{backend:?}: still open after the key was revoked"),
            }
        };
        assert_eq!(closed, Some(4001), "{backend:?}");
    }
}

backend_test! {
    #[tokio::test]
    async fn frames_that_arrive_together_are_appended_together_and_answered_one_by_one(backend: Backend) {
        const BURST: usize = 200;
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let bob = api.token("bob").await;
        let (a, b) = (api.conversation(&alice, &[]).await, api.conversation(&alice, &[]).await);
        let bobs = api.conversation(&bob, &[]).await;
        let send = |conversation: &str, id: &str, payload: serde_json::Value| {
            json!({"op": "send", "conversation_id": conversation, "client_msg_id": id, "payload": payload})
        };
        // Every kind of neighbour a send can have in one read: the same key twice, a frame that
        // is not JSON, another conversation, one the sender may not write to, an invalid payload.
        let mut frames = vec![
            send(&a, "k0", json!({"n": 0})).to_string(),
            send(&a, "k1", json!({"n": 1})).to_string(),
            send(&a, "k0", json!({"n": 0})).to_string(),
            "not json".to_string(),
            send(&a, "k2", json!({"n": 2})).to_string(),
            send(&b, "b0", json!({"n": 0})).to_string(),
            send(&bobs, "c0", json!({"n": 0})).to_string(),
            send(&a, "k3", serde_json::Value::Null).to_string(),
        ];
        frames.extend((0..BURST).map(|i| send(&a, &format!("m{i}"), json!({"n": i})).to_string()));
        frames.push(json!({"op": "ping"}).to_string());

        let mut client = Client::connect(&api.msgd.addr, &api.write_key, &alice).await;
        for frame in &frames {
            client.socket.feed(Message::Text(frame.clone().into())).await.unwrap();
        }
        client.socket.flush().await.unwrap();

        let mut replies = Vec::new();
        for _ in &frames {
            match client.next(Duration::from_secs(10)).await {
                Next::Frame(frame) => replies.push(frame),
                other => panic!("{backend:?}: {other:?} after {} replies", replies.len()),
            }
        }
        let summary = |r: &serde_json::Value| {
            (r["op"].as_str().unwrap().to_string(), r["client_msg_id"].as_str().map(str::to_string), r["code"].clone())
        };
        let head: Vec<_> = replies[..8].iter().map(summary).collect();
        let ack = |id: &str| ("ack".to_string(), Some(id.to_string()), serde_json::Value::Null);
        let error = |id: Option<&str>, code: &str| ("error".to_string(), id.map(str::to_string), json!(code));
        assert_eq!(
            head,
            vec![
                ack("k0"),
                ack("k1"),
                ack("k0"),
                error(None, "invalid_frame"),
                ack("k2"),
                ack("b0"),
                error(Some("c0"), "not_member"),
                error(Some("k3"), "invalid_payload"),
            ],
            "{backend:?}: one reply per frame, in frame order"
        );
        let seqs: Vec<u64> = replies[..3].iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 1], "{backend:?}: the repeated key is the first message again");
        assert_eq!((replies[2]["replayed"].as_bool(), replies[4]["seq"].as_u64()), (Some(true), Some(3)));
        assert_eq!(replies[5]["seq"], 1, "{backend:?}: the other conversation counts on its own");
        for (i, reply) in replies[8..8 + BURST].iter().enumerate() {
            assert_eq!((reply["op"].as_str(), reply["seq"].as_u64()), (Some("ack"), Some(4 + i as u64)), "{backend:?}");
        }
        assert_eq!(replies.last().unwrap()["op"], "pong");

        // What history holds: k0, k1, k2 and the burst, once each, in frame order.
        let stores = api.stores().await;
        let entries = stores.tail.read(&api.conv_key(&a), 0, 1000).await.unwrap();
        assert_eq!(entries.len(), 3 + BURST, "{backend:?}");
        // The burst went to the tail in batches: fewer appends than messages.
        let metrics = scrape(&api.msgd).await;
        let appends = sample(&metrics, r#"msgd_store_group_items_count{op="append"}"#).unwrap();
        assert!(appends < BURST as f64, "{backend:?}: {appends} appends for {} messages", BURST + 4);
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_member_stops_receiving_on_every_instance(backend: Backend) {
        let api = Api::start(backend).await;
        let (alice, bob) = (api.token("alice").await, api.token("bob").await);
        let conversation = api.conversation(&alice, &["bob"]).await;
        let other = (backend == Backend::Services).then(|| api.second_instance());
        let instance = other.as_ref().unwrap_or(&api.msgd);
        let mut listener = Client::connect(&instance.addr, &api.read_key, &bob).await;
        listener.send(json!({"op": "subscribe", "conversation_id": conversation})).await;
        listener.expect_op("subscribed").await;
        for n in 1..=3 {
            api.send(&alice, &conversation, &json!({"payload": {"n": n}})).await;
            assert_eq!(listener.expect_op("message").await["message"]["seq"], n, "{backend:?}");
        }

        let members = format!("/v1/conversations/{conversation}/members/bob");
        let removed = api.request(Method::DELETE, &members, Some(&api.write_key), Some(&alice), None, &[]).await;
        assert_eq!(removed.status, 204, "{}", removed.body);
        // Once Bob's instance has heard of it (it refuses his writes), the next message ends
        // his subscription instead of reaching him.
        let path = format!("/v1/conversations/{conversation}/messages");
        let heard = crate::support::eventually(Duration::from_secs(2), async || {
            let body = json!({"payload": "still here?"});
            let reply =
                api.request_to(instance, Method::POST, &path, Some(&api.write_key), Some(&bob), Some(&body), &[]).await;
            reply.status == 403
        })
        .await;
        assert!(heard, "{backend:?}");
        api.send(&alice, &conversation, &json!({"payload": {"n": 4}})).await;
        let ended = listener.expect_op("error").await;
        assert_eq!((ended["code"].as_str(), ended["conversation_id"].as_str()), (Some("not_member"), Some(&*conversation)));
        match listener.next(Duration::from_millis(500)).await {
            Next::Frame(frame) => assert_ne!(frame["op"], "message", "{backend:?}: {frame}"),
            Next::Timeout | Next::Closed(_) => {}
        }
    }
}
