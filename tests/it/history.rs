//! History across the tail/segment boundary, through the HTTP API on both
//! backends: cursor walks in both directions at several page sizes, seq and
//! time ranges, and refusals (non-member, tampered or foreign cursors).

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::Api;
use crate::support::{backend_test, Backend};

const TOTAL: u64 = 10_000;

async fn history(api: &Api, token: &str, conversation: &str, query: &str) -> crate::support::api::Reply {
    api.request(
        Method::GET,
        &format!("/v1/conversations/{conversation}/messages?{query}"),
        Some(&api.read_key),
        Some(token),
        None,
        &[],
    )
    .await
}

/// Walks every page of a query; returns the seqs in the order received.
async fn walk(api: &Api, token: &str, conversation: &str, query: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut reply = history(api, token, conversation, query).await;
    loop {
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        seqs.extend(reply.body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()));
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => reply = history(api, token, conversation, &format!("cursor={cursor}")).await,
            None => return seqs,
        }
    }
}

async fn send_batches(api: &Api, token: &str, conversation: &str, count: u64) {
    for start in (0..count).step_by(100) {
        let messages: Vec<Value> = (start..(start + 100).min(count)).map(|n| json!({"payload": {"n": n}})).collect();
        let path = format!("/v1/conversations/{conversation}/messages/batch");
        let reply = api
            .request(Method::POST, &path, Some(&api.write_key), Some(token), Some(&json!({"messages": messages})), &[])
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

fn flush_all(api: &Api) {
    let out = api.env.run(&["flush", "--all", "--json"], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_walks_across_the_tail_and_segments_exactly_once(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "1000")]).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        // Three flushes: blocks 1–3000, 3001–6000, 6001–10000; the tail keeps 9001–10000.
        for count in [3000, 3000, 4000] {
            send_batches(&api, &alice, &conversation, count).await;
            flush_all(&api);
        }
        let stores = api.stores().await;
        let conv = api.conv_key(&conversation);
        assert_eq!(
            stores.tail.read(&conv, 0, 1).await.unwrap()[0].seq,
            9001,
            "{backend:?}: seqs up to 9000 live only in segments"
        );

        let all: Vec<u64> = (1..=TOTAL).collect();
        for limit in [37, 200, 500] {
            assert_eq!(
                walk(&api, &alice, &conversation, &format!("limit={limit}")).await,
                all,
                "{backend:?} asc limit {limit}"
            );
            let mut desc = all.clone();
            desc.reverse();
            assert_eq!(
                walk(&api, &alice, &conversation, &format!("limit={limit}&order=desc")).await,
                desc,
                "{backend:?} desc limit {limit}"
            );
        }

        // Seq ranges across the boundary, both directions.
        let page = history(&api, &alice, &conversation, "after_seq=8990&limit=20").await;
        let seqs: Vec<u64> =
            page.body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (8991..=9010).collect::<Vec<_>>());
        let seqs = walk(&api, &alice, &conversation, "after_seq=2990&before_seq=3012&limit=7").await;
        assert_eq!(seqs, (2991..=3011).collect::<Vec<_>>(), "{backend:?}: bounded walk across a block boundary");
        let page = history(&api, &alice, &conversation, "before_seq=9005&order=desc&limit=10").await;
        let seqs: Vec<u64> =
            page.body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (8995..=9004).rev().collect::<Vec<_>>());
        assert_eq!(page.body["messages"][0]["payload"]["n"], 9003 - 6000, "envelopes come back whole");

        // Time ranges: exactly the messages whose ts is inside, from segments and tail alike.
        let every = walk_envelopes(&api, &alice, &conversation).await;
        for (from_seq, to_seq) in [(4000, 4100), (8950, 9050)] {
            let (from_ts, to_ts) =
                (every[from_seq - 1]["ts"].as_i64().unwrap(), every[to_seq - 1]["ts"].as_i64().unwrap());
            let expected: Vec<u64> = every
                .iter()
                .filter(|m| (from_ts..=to_ts).contains(&m["ts"].as_i64().unwrap()))
                .map(|m| m["seq"].as_u64().unwrap())
                .collect();
            let got = walk(&api, &alice, &conversation, &format!("from_ts={from_ts}&to_ts={to_ts}&limit=64")).await;
            assert_eq!(got, expected, "{backend:?}: ts range {from_ts}..={to_ts}");
            let mut reversed = expected.clone();
            reversed.reverse();
            let got =
                walk(&api, &alice, &conversation, &format!("from_ts={from_ts}&to_ts={to_ts}&limit=64&order=desc"))
                    .await;
            assert_eq!(got, reversed);
        }

        // Refusals.
        let carol = api.token("carol").await;
        let refused = history(&api, &carol, &conversation, "limit=5").await;
        assert_eq!((refused.status, refused.code()), (403, "not_member"));
        let missing = history(&api, &carol, &uuid::Uuid::now_v7().to_string(), "limit=5").await;
        assert_eq!((missing.status, missing.code()), (403, "not_member"), "a missing conversation looks the same");
        let cursor =
            history(&api, &alice, &conversation, "limit=5").await.body["next_cursor"].as_str().unwrap().to_string();
        let mut tampered = cursor.clone().into_bytes();
        tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        for bad in [tampered.as_str(), "garbage", "e30.AAAAAAAAAAAAAAAAAAAAAA"] {
            let reply = history(&api, &alice, &conversation, &format!("cursor={bad}")).await;
            assert_eq!((reply.status, reply.code()), (400, "invalid_cursor"), "{bad}");
        }
        let other = api.conversation(&alice, &[]).await;
        let foreign = history(&api, &alice, &other, &format!("cursor={cursor}")).await;
        assert_eq!((foreign.status, foreign.code()), (400, "invalid_cursor"), "a cursor is bound to its conversation");
        let changed = history(&api, &alice, &conversation, &format!("cursor={cursor}&order=desc")).await;
        assert_eq!((changed.status, changed.code()), (400, "invalid_cursor"), "and to its query");
        let bad = history(&api, &alice, &conversation, "limit=501").await;
        assert_eq!((bad.status, bad.code()), (400, "invalid_request"));

        let metrics = reqwest::get(api.msgd.url("/metrics")).await.unwrap().text().await.unwrap();
        for name in [
            r#"msgd_history_requests_total{source="segments"}"#,
            r#"msgd_history_requests_total{source="tail"}"#,
            "msgd_block_cache_hits_total",
            "msgd_history_duration_seconds_count",
        ] {
            assert!(metrics.contains(name), "{name} missing");
        }
    }
}

async fn walk_envelopes(api: &Api, token: &str, conversation: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut reply = history(api, token, conversation, "limit=500").await;
    loop {
        all.extend(reply.body["messages"].as_array().unwrap().iter().cloned());
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => reply = history(api, token, conversation, &format!("cursor={cursor}")).await,
            None => return all,
        }
    }
}

backend_test! {
    /// Messages older than the retention window are never returned — not by
    /// history, not by WebSocket catch-up — even while they still exist physically.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_past_retention_are_never_returned(backend: Backend) {
        use msgd::store::{AppendOutcome, AppendRequest};
        let api = Api::start_with(backend, &[("MSGD_RETENTION__PERIOD", "30d")]).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        // Five messages received 40 days ago, written straight into the tail.
        let stores = api.stores().await;
        let conv = api.conv_key(&conversation);
        let old_ts = msgd::clock::now_ms() - 40 * 86_400_000;
        stores.tail.seed_seq(&conv, 0).await.unwrap();
        for n in 0..5 {
            let envelope = json!({"v": 1, "id": uuid::Uuid::now_v7().to_string(), "conversation_id": conversation, "ts": old_ts + n,
                                  "sender": {"kind": "user", "id": "alice"}, "payload": {"old": n}, "attachments": []});
            let request = AppendRequest {
                conv: conv.clone(),
                ts_ms: old_ts + n,
                body: serde_json::to_vec(&envelope).unwrap(),
                idempotency: None,
            };
            assert!(matches!(stores.tail.append(&request).await.unwrap(), AppendOutcome::Appended(_)));
        }
        for n in 0..3 {
            assert_eq!(api.send(&alice, &conversation, &json!({"payload": {"new": n}})).await.body["seq"], 6 + n);
        }
        assert_eq!(walk(&api, &alice, &conversation, "limit=2").await, vec![6, 7, 8], "{backend:?}");
        assert_eq!(walk(&api, &alice, &conversation, "limit=2&order=desc").await, vec![8, 7, 6]);
        let page = history(&api, &alice, &conversation, "after_seq=0&before_seq=6").await;
        assert_eq!(page.body["messages"], json!([]));

        let mut client = crate::support::wsclient::Client::connect(&api.msgd.addr, &api.read_key, &alice).await;
        client.send(json!({"op": "subscribe", "conversation_id": conversation, "since_seq": 2})).await;
        let error = client.expect_op("error").await;
        assert_eq!(error["code"], "since_seq_expired", "{backend:?}: {error}");
        client.send(json!({"op": "subscribe", "conversation_id": conversation, "since_seq": 5})).await;
        for seq in 6..=8 {
            assert_eq!(client.expect_op("message").await["message"]["seq"], seq);
        }
    }
}
