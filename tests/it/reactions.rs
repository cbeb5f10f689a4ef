//! Reactions on both backends: add and remove with their bounds and rules,
//! counts and `mine` on history pages and one message (from the tail and
//! from segments), live `reaction` frames, and none shown on a deleted message.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::{Api, Reply};
use crate::support::wsclient::Client;
use crate::support::{backend_test, Backend};

async fn react(api: &Api, method: Method, token: &str, conversation: &str, message: &str, reaction: &str) -> Reply {
    let reaction: String = reaction.bytes().map(|b| format!("%{b:02X}")).collect();
    let path = format!("/v1/conversations/{conversation}/messages/{message}/reactions/{reaction}");
    api.request(method, &path, Some(&api.write_key), Some(token), None, &[]).await
}

/// The reactions of message `seq` on a history page, as `token` sees them.
async fn page_reactions(api: &Api, token: &str, conversation: &str, seq: usize) -> Value {
    let path = format!("/v1/conversations/{conversation}/messages?limit=50");
    let reply = api.request(Method::GET, &path, Some(&api.read_key), Some(token), None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["messages"][seq - 1].get("reactions").cloned().unwrap_or(json!([]))
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reactions_are_counted_bounded_shown_and_published(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "0")]).await;
        let alice = api.token("alice").await;
        let bob = api.token("bob").await;
        let carol = api.token("carol").await;
        let conversation = api.conversation(&alice, &["bob"]).await;
        let mut live = Client::connect(&api.msgd.addr, &api.read_key, &bob).await;
        live.send(json!({"op": "subscribe", "conversation_id": conversation})).await;
        live.expect_op("subscribed").await;
        for n in 0..2 {
            assert_eq!(api.send(&alice, &conversation, &json!({"payload": {"n": n}})).await.status, 201);
        }

        let added = react(&api, Method::PUT, &bob, &conversation, "1", "👍").await;
        assert_eq!(added.status, 201, "{}", added.body);
        assert_eq!(added.body, json!({"seq": 1, "reaction": "👍", "changed": true, "count": 1}));
        let frame = live.expect_op("reaction").await;
        assert_eq!(
            (&frame["seq"], &frame["reaction"], &frame["user_id"], &frame["action"], &frame["count"]),
            (&json!(1), &json!("👍"), &json!("bob"), &json!("added"), &json!(1)),
            "{backend:?}: {frame}"
        );
        let again = react(&api, Method::PUT, &bob, &conversation, "1", "👍").await;
        assert_eq!((again.status, &again.body["changed"]), (200, &json!(false)), "adding twice is no change");
        assert_eq!(react(&api, Method::PUT, &alice, &conversation, "1", "👍").await.body["count"], 2);
        assert_eq!(react(&api, Method::PUT, &alice, &conversation, "1", "+1").await.status, 201);
        // NFC: the decomposed spelling is the same reaction.
        assert_eq!(react(&api, Method::PUT, &alice, &conversation, "1", "e\u{301}").await.body["reaction"], "é");
        assert_eq!(react(&api, Method::PUT, &alice, &conversation, "1", "\u{e9}").await.status, 200);

        // Counts, in the order first given, and `mine` per reader.
        let for_bob = json!([
            {"reaction": "👍", "count": 2, "mine": true},
            {"reaction": "+1", "count": 1, "mine": false},
            {"reaction": "é", "count": 1, "mine": false},
        ]);
        assert_eq!(page_reactions(&api, &bob, &conversation, 1).await, for_bob, "{backend:?}");
        let one = api
            .request(
                Method::GET,
                &format!("/v1/conversations/{conversation}/messages/1"),
                Some(&api.read_key),
                Some(&alice),
                None,
                &[],
            )
            .await;
        assert_eq!(one.body["reactions"][0], json!({"reaction": "👍", "count": 2, "mine": true}));
        assert_eq!(page_reactions(&api, &bob, &conversation, 2).await, json!([]));

        // Refusals.
        for (token, message, reaction, status, code) in [
            (&carol, "1", "👍", 403, "not_member"),
            (&bob, "9", "👍", 404, "message_not_found"),
            (&bob, "1", "a b", 400, "invalid_reaction"),
            (&bob, "1", "12345678901234567", 400, "invalid_reaction"),
        ] {
            let reply = react(&api, Method::PUT, token, &conversation, message, reaction).await;
            assert_eq!((reply.status, reply.code()), (status, code), "{reaction:?}: {}", reply.body);
        }
        let path = format!("/v1/conversations/{conversation}/messages/1/reactions/x");
        let app = api.request(Method::PUT, &path, Some(&api.admin_key), None, None, &[]).await;
        assert_eq!(app.code(), "user_required", "{}", app.body);
        // Bounds: 8 reactions from one user, 32 distinct on one message.
        for n in 0..5 {
            assert_eq!(react(&api, Method::PUT, &bob, &conversation, "2", &format!("r{n}")).await.status, 201);
        }
        for n in 5..8 {
            assert_eq!(react(&api, Method::PUT, &bob, &conversation, "2", &format!("r{n}")).await.status, 201);
        }
        let over = react(&api, Method::PUT, &bob, &conversation, "2", "r8").await;
        assert_eq!((over.status, over.code()), (409, "too_many_reactions"), "{}", over.body);
        assert_eq!(react(&api, Method::PUT, &bob, &conversation, "2", "r0").await.status, 200, "present stays fine");
        let mut others = Vec::new();
        for n in 0..4 {
            let user = format!("u{n}");
            let token = api.token(&user).await;
            let path = format!("/v1/conversations/{conversation}/members/{user}");
            api.request(Method::PUT, &path, Some(&api.write_key), Some(&alice), None, &[]).await;
            others.push(token);
        }
        for n in 8..32 {
            let token = &others[(n - 8) / 8];
            let reply = react(&api, Method::PUT, token, &conversation, "2", &format!("r{n}")).await;
            assert_eq!(reply.status, 201, "{n}: {}", reply.body);
        }
        let over = react(&api, Method::PUT, &others[3], &conversation, "2", "r32").await;
        assert_eq!(over.code(), "too_many_reactions", "{backend:?}: 33 distinct");
        assert_eq!(react(&api, Method::PUT, &others[3], &conversation, "2", "r0").await.status, 201, "an existing one");

        // Removal, published; removing again is no change.
        let removed = react(&api, Method::DELETE, &bob, &conversation, "1", "👍").await;
        assert_eq!((removed.status, &removed.body["changed"], &removed.body["count"]), (200, &json!(true), &json!(1)));
        let frame = loop {
            let frame = live.expect_op("reaction").await;
            if frame["action"] == "removed" {
                break frame;
            }
        };
        assert_eq!((&frame["reaction"], &frame["count"]), (&json!("👍"), &json!(1)), "{frame}");
        let removed = react(&api, Method::DELETE, &bob, &conversation, "1", "👍").await;
        assert_eq!((removed.status, &removed.body["changed"]), (200, &json!(false)));

        // From segments, the same; a deleted message shows none and takes none.
        let out = api.env.run(&["flush", "--all"], "");
        assert_eq!(out.code, 0, "{}", out.stderr);
        let reactions = page_reactions(&api, &bob, &conversation, 1).await;
        assert_eq!(reactions[0], json!({"reaction": "👍", "count": 1, "mine": false}), "{backend:?}");
        let path = format!("/v1/conversations/{conversation}/messages/1");
        let deleted = api.request(Method::DELETE, &path, Some(&api.write_key), Some(&alice), None, &[]).await;
        assert_eq!(deleted.status, 204);
        assert_eq!(page_reactions(&api, &bob, &conversation, 1).await, json!([]), "{backend:?}");
        let refused = react(&api, Method::PUT, &bob, &conversation, "1", "👍").await;
        assert_eq!(refused.code(), "message_deleted", "{}", refused.body);
        let metrics = crate::support::scrape(&api.msgd).await;
        for (action, changes) in [("add", 37.0), ("remove", 1.0)] {
            let series = format!("msgd_reactions_total{{action=\"{action}\"}}");
            assert_eq!(crate::support::sample(&metrics, &series), Some(changes), "{backend:?} {series}");
        }
    }
}
