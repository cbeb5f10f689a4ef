//! The inbox on both backends: conversations ordered by last activity (as
//! the activity worker writes it), each with its last seq and last message
//! (also from segments, and redacted once deleted), the caller's role, read
//! mark, unread count and mute flag; cursor paging bound to the caller; the
//! app's own listing.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::{Api, Reply};
use crate::support::{backend_test, eventually, Backend};

async fn inbox(api: &Api, token: Option<&str>, query: &str) -> Reply {
    let key = if token.is_some() { &api.read_key } else { &api.admin_key };
    api.request(Method::GET, &format!("/v1/conversations{query}"), Some(key), token, None, &[]).await
}

/// The conversation ids of the caller's first inbox page, in order.
async fn order(api: &Api, token: &str) -> Vec<String> {
    let reply = inbox(api, Some(token), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["conversations"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()).collect()
}

fn entry<'a>(page: &'a Reply, conversation: &str) -> &'a Value {
    page.body["conversations"].as_array().unwrap().iter().find(|c| c["id"] == conversation).expect("listed")
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_inbox_orders_by_activity_with_last_message_unread_and_mute(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "0")]).await;
        let (alice, bob, carol) = (api.token("alice").await, api.token("bob").await, api.token("carol").await);
        let mut created = Vec::new();
        for _ in 0..3 {
            created.push(api.conversation(&alice, &["bob"]).await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (a, b, c) = (created[0].clone(), created[1].clone(), created[2].clone());
        assert_eq!(order(&api, &alice).await, [c.as_str(), b.as_str(), a.as_str()], "{backend:?}: by creation before any message");

        // Bob writes in A: it moves to the top once the activity worker wrote it.
        for n in 1..=2 {
            assert_eq!(api.send(&bob, &a, &json!({"payload": {"text": format!("hi {n}")}})).await.status, 201);
        }
        let moved = eventually(Duration::from_secs(5), async || order(&api, &alice).await == [a.as_str(), c.as_str(), b.as_str()]).await;
        assert!(moved, "{backend:?}: A is not first: {:?}", order(&api, &alice).await);
        let page = inbox(&api, Some(&alice), "").await;
        let first = entry(&page, &a);
        assert_eq!((&first["last_seq"], &first["last_message"]["payload"]), (&json!(2), &json!({"text": "hi 2"})));
        assert_eq!(
            (&first["role"], &first["read_seq"], &first["unread"], &first["muted"]),
            (&json!("owner"), &json!(0), &json!(2), &json!(false)),
            "{backend:?}: {first}"
        );
        assert!(first["last_activity_at"].as_i64().unwrap() >= first["last_message"]["ts"].as_i64().unwrap());
        let empty = entry(&page, &b);
        assert_eq!((&empty["last_seq"], &empty["last_message"], &empty["unread"]), (&json!(0), &Value::Null, &json!(0)));

        // Reading clears unread; one's own messages are never unread; the
        // last message is read from segments too, and redacted when deleted.
        let receipt = json!({"seq": 2, "kind": "read"});
        let path = format!("/v1/conversations/{a}/receipts");
        assert_eq!(api.request(Method::POST, &path, Some(&api.write_key), Some(&alice), Some(&receipt), &[]).await.status, 200);
        assert_eq!(api.send(&alice, &b, &json!({"payload": {"text": "mine"}})).await.status, 201);
        let moved = eventually(Duration::from_secs(5), async || order(&api, &alice).await == [b.as_str(), a.as_str(), c.as_str()]).await;
        assert!(moved, "{backend:?}: B is not first");
        assert_eq!(api.env.run(&["flush", "--all"], "").code, 0);
        let page = inbox(&api, Some(&alice), "").await;
        assert_eq!((&entry(&page, &a)["unread"], &entry(&page, &a)["read_seq"]), (&json!(0), &json!(2)));
        assert_eq!(entry(&page, &b)["unread"], 0, "own message");
        assert_eq!(entry(&page, &b)["last_message"]["payload"], json!({"text": "mine"}), "{backend:?}: from a segment");
        assert_eq!(entry(&inbox(&api, Some(&bob), "").await, &b)["unread"], 1, "bob has not read it");
        let deleted = api.request(Method::DELETE, &format!("/v1/conversations/{b}/messages/1"), Some(&api.write_key), Some(&alice), None, &[]).await;
        assert_eq!(deleted.status, 204);
        let page = inbox(&api, Some(&alice), "").await;
        let last = &entry(&page, &b)["last_message"];
        assert_eq!((&last["seq"], &last["deleted"], last.get("payload")), (&json!(1), &json!(true), None), "{last}");

        // Pages of one, with a cursor bound to the caller.
        let mut seen = Vec::new();
        let mut query = "?limit=1".to_string();
        loop {
            let reply = inbox(&api, Some(&alice), &query).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            seen.extend(reply.body["conversations"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()));
            match reply.body["next_cursor"].as_str() {
                Some(cursor) => query = format!("?limit=1&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(seen, [b.as_str(), a.as_str(), c.as_str()], "{backend:?}: every conversation once, in order");
        let cursor = inbox(&api, Some(&alice), "?limit=1").await.body["next_cursor"].as_str().unwrap().to_string();
        for (token, cursor) in [(&bob, cursor.as_str()), (&alice, "garbage")] {
            let reply = inbox(&api, Some(token), &format!("?cursor={cursor}")).await;
            assert_eq!((reply.status, reply.code()), (400, "invalid_cursor"), "{}", reply.body);
        }

        // Mute is the caller's flag.
        let mute = format!("/v1/conversations/{a}/mute");
        assert_eq!(api.request(Method::PUT, &mute, Some(&api.write_key), Some(&alice), None, &[]).await.status, 204);
        assert_eq!(entry(&inbox(&api, Some(&alice), "").await, &a)["muted"], true);
        assert_eq!(entry(&inbox(&api, Some(&bob), "").await, &a)["muted"], false, "only alice's");
        assert_eq!(api.request(Method::DELETE, &mute, Some(&api.write_key), Some(&alice), None, &[]).await.status, 204);
        assert_eq!(entry(&inbox(&api, Some(&alice), "").await, &a)["muted"], false);
        let stranger = api.request(Method::PUT, &mute, Some(&api.write_key), Some(&carol), None, &[]).await;
        assert_eq!(stranger.code(), "not_member", "{}", stranger.body);
        let app = api.request(Method::PUT, &mute, Some(&api.admin_key), None, None, &[]).await;
        assert_eq!(app.code(), "user_required", "{}", app.body);

        // The app lists all of its conversations, without per-user fields.
        let page = inbox(&api, None, "").await;
        assert_eq!(page.body["conversations"].as_array().map(Vec::len), Some(3), "{}", page.body);
        let listed = entry(&page, &a);
        assert_eq!(listed["last_seq"], 2);
        assert!(listed.get("unread").is_none() && listed.get("role").is_none(), "{listed}");
        assert_eq!(inbox(&api, Some(&carol), "").await.body["conversations"], json!([]));
    }
}
