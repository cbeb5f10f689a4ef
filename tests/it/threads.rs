//! Replies and threads on both backends: `reply_to` validated on send
//! (single and batch), the thread paged with cursors from the tail and from
//! segments, reply counts on history pages and one message, and a keyed
//! replay answered with the original reply.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::{Api, Reply};
use crate::support::{backend_test, Backend};

async fn thread(api: &Api, token: &str, conversation: &str, parent: u64, query: &str) -> Reply {
    let path = format!("/v1/conversations/{conversation}/messages/{parent}/thread?{query}");
    api.request(Method::GET, &path, Some(&api.read_key), Some(token), None, &[]).await
}

/// Every reply seq of `parent`'s thread, walking the cursor at `limit` a page.
async fn walk(api: &Api, token: &str, conversation: &str, parent: u64, limit: u32) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut reply = thread(api, token, conversation, parent, &format!("limit={limit}")).await;
    loop {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["parent"]["seq"], parent);
        let page = reply.body["replies"].as_array().unwrap();
        assert!(page.len() <= limit as usize);
        seqs.extend(page.iter().map(|m| m["seq"].as_u64().unwrap()));
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => reply = thread(api, token, conversation, parent, &format!("cursor={cursor}")).await,
            None => return seqs,
        }
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_form_threads_paged_across_the_tail_and_segments(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "0")]).await;
        let alice = api.token("alice").await;
        let bob = api.token("bob").await;
        let conversation = api.conversation(&alice, &["bob"]).await;
        let other = api.conversation(&alice, &[]).await;
        assert_eq!(api.send(&alice, &conversation, &json!({"payload": "parent"})).await.status, 201);
        assert_eq!(api.send(&alice, &conversation, &json!({"payload": "second"})).await.status, 201);
        assert_eq!(api.send(&alice, &other, &json!({"payload": "elsewhere"})).await.status, 201);

        // reply_to must name a message of this conversation.
        for reply_to in [json!(0), json!(99), json!(-1)] {
            let reply = api.send(&bob, &conversation, &json!({"payload": "r", "reply_to": reply_to})).await;
            let expected = if reply_to == json!(-1) { "invalid_request" } else { "invalid_reply_to" };
            assert_eq!((reply.status, reply.code()), (400, expected), "{reply_to}: {}", reply.body);
        }
        // Replies: 3 and 4 singly (4 keyed), 5–7 in a batch around a refused item (no seq), 8 to the
        // second message.
        let mut expected = Vec::new();
        for (n, key) in [(0, None), (1, Some("reply-key"))] {
            let mut body = json!({"payload": {"reply": n}, "reply_to": 1});
            if let Some(key) = key {
                body["client_msg_id"] = json!(key);
            }
            let reply = api.send(&bob, &conversation, &body).await;
            assert_eq!((reply.status, &reply.body["reply_to"]), (201, &json!(1)), "{}", reply.body);
            expected.push(reply.body["seq"].as_u64().unwrap());
        }
        let batch = json!({"messages": [
            {"payload": {"reply": 2}, "reply_to": 1},
            {"payload": "bad", "reply_to": 50},
            {"payload": {"reply": 3}, "reply_to": 1},
            {"payload": {"reply": 4}, "reply_to": 1},
        ]});
        let path = format!("/v1/conversations/{conversation}/messages/batch");
        let reply = api.request(Method::POST, &path, Some(&api.write_key), Some(&alice), Some(&batch), &[]).await;
        let results = reply.body["results"].as_array().unwrap();
        assert_eq!(results[1]["error"]["code"], "invalid_reply_to", "{}", reply.body);
        for index in [0, 2, 3] {
            assert_eq!(results[index]["status"], 201, "{}", reply.body);
            expected.push(results[index]["message"]["seq"].as_u64().unwrap());
        }
        let to_second = api.send(&alice, &conversation, &json!({"payload": "r", "reply_to": 2})).await;
        assert_eq!(to_second.status, 201);
        // A keyed retry is the original, and the thread does not grow.
        let retry = api
            .send(&bob, &conversation, &json!({"payload": {"reply": 1}, "reply_to": 1, "client_msg_id": "reply-key"}))
            .await;
        assert_eq!((retry.status, &retry.body["seq"]), (200, &json!(expected[1])), "{}", retry.body);
        let moved = api
            .send(&bob, &conversation, &json!({"payload": {"reply": 1}, "reply_to": 2, "client_msg_id": "reply-key"}))
            .await;
        assert_eq!(moved.code(), "idempotency_key_reused", "another parent is another message");
        assert_eq!(expected, vec![3, 4, 5, 6, 7]);

        for at in ["in the tail", "in segments"] {
            for limit in [1, 2, 50] {
                assert_eq!(walk(&api, &bob, &conversation, 1, limit).await, expected, "{backend:?} {at} limit {limit}");
            }
            assert_eq!(walk(&api, &bob, &conversation, 2, 10).await, vec![8], "{backend:?} {at}");
            let page = thread(&api, &bob, &conversation, 1, "limit=2").await;
            assert_eq!(page.body["parent"]["reply_count"], 5, "{backend:?} {at}");
            assert_eq!(page.body["replies"][0]["payload"], json!({"reply": 0}));
            let path = format!("/v1/conversations/{conversation}/messages?limit=50");
            let history = api.request(Method::GET, &path, Some(&api.read_key), Some(&bob), None, &[]).await;
            let counts: Vec<u64> = history.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m: &Value| m.get("reply_count").and_then(Value::as_u64).unwrap_or(0))
                .collect();
            assert_eq!(counts[..3], [5, 1, 0], "{backend:?} {at}");
            let out = api.env.run(&["flush", "--all"], "");
            assert_eq!(out.code, 0, "{}", out.stderr);
        }

        // Cursors belong to their thread; a history cursor is not a thread's, nor the reverse.
        let page = thread(&api, &bob, &conversation, 1, "limit=1").await;
        let cursor = page.body["next_cursor"].as_str().unwrap().to_string();
        assert_eq!(thread(&api, &bob, &conversation, 2, &format!("cursor={cursor}")).await.code(), "invalid_cursor");
        assert_eq!(thread(&api, &bob, &conversation, 1, &format!("cursor={cursor}&limit=2")).await.code(), "invalid_cursor");
        let path = format!("/v1/conversations/{conversation}/messages?cursor={cursor}");
        let history = api.request(Method::GET, &path, Some(&api.read_key), Some(&bob), None, &[]).await;
        assert_eq!(history.code(), "invalid_cursor");
        assert_eq!(thread(&api, &bob, &conversation, 99, "").await.code(), "message_not_found");
        assert_eq!(thread(&api, &bob, &conversation, 1, "limit=0").await.code(), "invalid_request");
    }
}
