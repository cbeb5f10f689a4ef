//! One message by seq, edits and deletes on both backends: the rules of who
//! may change what, the latest state on every read path (one message,
//! history, WebSocket catch-up) whether the message is in the tail or only in
//! segments, the change events in the log with their own seqs, and live
//! `message.updated` / `message.deleted` frames.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::{Api, Reply};
use crate::support::wsclient::{Client, Next};
use crate::support::{backend_test, Backend};

const SECRET: &str = "the words that must never be read again";

async fn get(api: &Api, token: &str, conversation: &str, seq: &str) -> Reply {
    let path = format!("/v1/conversations/{conversation}/messages/{seq}");
    api.request(Method::GET, &path, Some(&api.read_key), Some(token), None, &[]).await
}

async fn edit(api: &Api, token: &str, conversation: &str, seq: u64, body: &Value) -> Reply {
    let path = format!("/v1/conversations/{conversation}/messages/{seq}");
    api.request(Method::PATCH, &path, Some(&api.write_key), Some(token), Some(body), &[]).await
}

async fn delete(api: &Api, token: &str, conversation: &str, seq: u64) -> Reply {
    let path = format!("/v1/conversations/{conversation}/messages/{seq}");
    api.request(Method::DELETE, &path, Some(&api.write_key), Some(token), None, &[]).await
}

/// Every message and event of the conversation, in seq order.
async fn history(api: &Api, token: &str, conversation: &str) -> Vec<Value> {
    let path = format!("/v1/conversations/{conversation}/messages?limit=500");
    let reply = api.request(Method::GET, &path, Some(&api.read_key), Some(token), None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let messages = reply.body["messages"].as_array().unwrap().clone();
    let seqs: Vec<u64> = messages.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gap-free, events included");
    messages
}

fn flush(api: &Api) {
    let out = api.env.run(&["flush", "--all"], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// Asserts what every read path shows after the changes below: 1 edited
/// twice (events 5 and 6), 4 and 2 deleted (events 7 and 8), 3 and 9 untouched.
async fn assert_changed(api: &Api, token: &str, conversation: &str, backend: Backend, at: &str) {
    let messages = history(api, token, conversation).await;
    let text = serde_json::to_string(&messages).unwrap();
    assert!(!text.contains(SECRET), "{backend:?} {at}: a deleted payload was returned: {text}");
    for old in ["first draft", "\"edited\""] {
        assert!(!text.contains(old), "{backend:?} {at}: an old version was returned: {text}");
    }
    assert_eq!(messages.len(), 9, "{backend:?} {at}");
    assert_eq!(messages[0]["payload"], json!({"text": "final"}), "{backend:?} {at}");
    assert!(messages[0]["edited_at"].as_i64().is_some(), "{backend:?} {at}");
    for seq in [2, 4] {
        let message = &messages[seq - 1];
        assert_eq!(message["deleted"], true, "{backend:?} {at}: {message}");
        assert!(message.get("payload").is_none(), "{backend:?} {at}: {message}");
    }
    assert_eq!(messages[2]["payload"], json!({"text": "three"}));
    assert_eq!((messages[4]["kind"].as_str(), messages[4]["target_seq"].as_u64()), (Some("edit"), Some(1)));
    // An edit event shows its target's current content, not the version it set.
    assert_eq!(messages[4]["payload"], json!({"text": "final"}), "{backend:?} {at}");
    assert_eq!((messages[5]["kind"].as_str(), messages[5]["target_seq"].as_u64()), (Some("edit"), Some(1)));
    for (index, target) in [(6, 4), (7, 2)] {
        let event = &messages[index];
        assert_eq!((event["kind"].as_str(), event["target_seq"].as_u64()), (Some("delete"), Some(target)), "{at}");
    }
    assert_eq!((messages[8].get("kind"), &messages[8]["payload"]), (None, &json!({"text": "nine"})));
    // One message by seq, the same state.
    let one = get(api, token, conversation, "2").await;
    assert_eq!((one.status, &one.body["deleted"]), (200, &json!(true)), "{backend:?} {at}: {}", one.body);
    assert!(one.body.get("payload").is_none());
    let one = get(api, token, conversation, "1").await;
    assert_eq!(one.body, messages[0], "{backend:?} {at}");
}

backend_test! {
    /// Edits and deletes with their rules, read back from the tail and then
    /// from segments only, by one message, history and WebSocket catch-up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn edits_and_deletes_read_back_the_same_from_the_tail_and_from_segments(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "0")]).await;
        let alice = api.token("alice").await;
        let bob = api.token("bob").await;
        let carol = api.token("carol").await;
        let conversation = api.conversation(&alice, &["bob"]).await;
        let mut ids = Vec::new();
        for (token, payload) in [
            (&alice, json!({"text": "first draft"})),
            (&alice, json!({"text": SECRET})),
            (&alice, json!({"text": "three"})),
            (&bob, json!({"text": SECRET})),
        ] {
            let sent = api.send(token, &conversation, &json!({"payload": payload})).await;
            assert_eq!(sent.status, 201, "{}", sent.body);
            ids.push(sent.body["id"].as_str().unwrap().to_string());
        }
        let by_id = get(&api, &bob, &conversation, &ids[2]).await;
        assert_eq!((by_id.status, &by_id.body["seq"]), (200, &json!(3)), "{backend:?}: {}", by_id.body);
        let one = get(&api, &bob, &conversation, "3").await;
        assert_eq!((one.status, &one.body["payload"]), (200, &json!({"text": "three"})), "{}", one.body);
        for (seq, status, code) in [
            ("99", 404, "message_not_found"),
            ("9223372036854775808", 404, "message_not_found"),
            ("0", 400, "invalid_request"),
            ("03", 400, "invalid_request"),
            ("x", 400, "invalid_request"),
            ("3a", 400, "invalid_request"),
            ("7b1c3f00-0000-4000-8000-000000000000", 400, "invalid_request"),
            ("0190c0de-0000-7000-8000-000000000001", 404, "message_not_found"),
        ] {
            let reply = get(&api, &bob, &conversation, seq).await;
            assert_eq!((reply.status, reply.code()), (status, code), "{seq}: {}", reply.body);
        }
        assert_eq!(get(&api, &carol, &conversation, "1").await.code(), "not_member");

        // Who may change what.
        let edited = json!({"payload": {"text": "edited"}});
        assert_eq!(edit(&api, &bob, &conversation, 1, &edited).await.code(), "not_sender");
        assert_eq!(edit(&api, &carol, &conversation, 1, &edited).await.code(), "not_member");
        assert_eq!(delete(&api, &bob, &conversation, 1).await.code(), "not_sender", "a member deletes only their own");
        assert_eq!(edit(&api, &alice, &conversation, 1, &json!({"payload": null})).await.code(), "invalid_payload");
        assert_eq!(edit(&api, &alice, &conversation, 1, &json!({"text": "x"})).await.code(), "invalid_request");

        let reply = edit(&api, &alice, &conversation, 1, &edited).await;
        assert_eq!((reply.status, &reply.body["payload"]), (200, &edited["payload"]), "{}", reply.body);
        assert_eq!(reply.body["seq"], 1);
        assert!(reply.body["edited_at"].as_i64().is_some());
        // By id, as by seq.
        let path = format!("/v1/conversations/{conversation}/messages/{}", ids[0]);
        let body = json!({"payload": {"text": "final"}});
        let reply = api.request(Method::PATCH, &path, Some(&api.write_key), Some(&alice), Some(&body), &[]).await;
        assert_eq!((reply.status, &reply.body["seq"]), (200, &json!(1)), "{}", reply.body);
        assert_eq!(edit(&api, &alice, &conversation, 5, &edited).await.code(), "not_editable");
        assert_eq!(delete(&api, &bob, &conversation, 4).await.status, 204, "the sender deletes their own");
        assert_eq!(delete(&api, &alice, &conversation, 2).await.status, 204);
        assert_eq!(edit(&api, &alice, &conversation, 2, &edited).await.code(), "message_deleted");
        assert_eq!(delete(&api, &alice, &conversation, 7).await.code(), "not_editable");
        // A repeated delete succeeds; its event is appended once more only if missing.
        assert_eq!(delete(&api, &alice, &conversation, 2).await.status, 204);
        let path = format!("/v1/conversations/{conversation}/messages/2");
        let admin = api.request(Method::DELETE, &path, Some(&api.admin_key), None, None, &[]).await;
        assert_eq!(admin.status, 204, "an admin key may delete: {}", admin.body);
        // The owner deleting a member's message: bob's 4 was deleted already; delete it again as alice.
        assert_eq!(delete(&api, &alice, &conversation, 4).await.status, 204);
        let sent = api.send(&bob, &conversation, &json!({"payload": {"text": "nine"}})).await;
        assert_eq!(sent.body["seq"], 9, "events took seqs 5–8, repeated deletes none: {}", sent.body);

        assert_changed(&api, &bob, &conversation, backend, "in the tail").await;
        flush(&api);
        let stores = api.stores().await;
        assert!(stores.tail.read(&api.conv_key(&conversation), 0, 1).await.unwrap().is_empty(), "{backend:?}");
        assert_changed(&api, &bob, &conversation, backend, "in segments").await;
        let by_id = get(&api, &bob, &conversation, &ids[1]).await;
        assert_eq!((by_id.status, &by_id.body["seq"], &by_id.body["deleted"]), (200, &json!(2), &json!(true)));
        // Inspection prints records as reads show them.
        let mut printed = String::new();
        for key in stores.objects.list("segments/").await.unwrap() {
            let out = api.env.run(&["inspect-segment", &key, "--records"], "");
            assert_eq!(out.code, 0, "{}", out.stderr);
            printed.push_str(&out.stdout);
        }
        assert!(printed.contains("\"final\"") && printed.contains("\"deleted\":true"), "{backend:?}: {printed}");
        assert!(!printed.contains(SECRET), "{backend:?}: inspect-segment printed a deleted payload: {printed}");

        // WebSocket catch-up from the start sees the same state and ops.
        let mut client = Client::connect(&api.msgd.addr, &api.read_key, &bob).await;
        client.send(json!({"op": "subscribe", "conversation_id": conversation, "since_seq": 0})).await;
        client.expect_op("subscribed").await;
        let mut frames = Vec::new();
        while frames.len() < 9 {
            match client.next(Duration::from_secs(10)).await {
                Next::Frame(frame) if frame.get("message").is_some() => frames.push(frame),
                Next::Frame(frame) => assert_ne!(frame["op"], "error", "{frame}"),
                other => panic!("{other:?}"),
            }
        }
        let ops: Vec<&str> = frames.iter().map(|f| f["op"].as_str().unwrap()).collect();
        let expected = ["message", "message", "message", "message", "message.updated", "message.updated"];
        assert_eq!(&ops[..6], expected, "{backend:?}");
        assert_eq!(&ops[6..], ["message.deleted", "message.deleted", "message"], "{backend:?}");
        assert!(!serde_json::to_string(&frames).unwrap().contains(SECRET), "{backend:?}");
        assert_eq!(frames[1]["message"]["deleted"], true);
    }
}

backend_test! {
    /// A subscriber sees an edit and a delete as they happen, as
    /// `message.updated` and `message.deleted` frames with their own seqs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_subscribers_get_updated_and_deleted_frames(backend: Backend) {
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let bob = api.token("bob").await;
        let conversation = api.conversation(&alice, &["bob"]).await;
        let mut client = Client::connect(&api.msgd.addr, &api.read_key, &bob).await;
        client.send(json!({"op": "subscribe", "conversation_id": conversation})).await;
        client.expect_op("subscribed").await;
        api.send(&alice, &conversation, &json!({"payload": "hello"})).await;
        assert_eq!(client.expect_op("message").await["message"]["seq"], 1);

        let reply = edit(&api, &alice, &conversation, 1, &json!({"payload": "hello, edited"})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let updated = client.expect_op("message.updated").await;
        assert_eq!(
            (&updated["message"]["seq"], &updated["message"]["target_seq"], &updated["message"]["payload"]),
            (&json!(2), &json!(1), &json!("hello, edited")),
            "{backend:?}: {updated}"
        );
        assert_eq!(delete(&api, &alice, &conversation, 1).await.status, 204);
        let deleted = client.expect_op("message.deleted").await;
        assert_eq!(
            (&deleted["message"]["seq"], &deleted["message"]["target_seq"], deleted["message"].get("payload")),
            (&json!(3), &json!(1), None),
            "{backend:?}: {deleted}"
        );
        let metrics = crate::support::scrape(&api.msgd).await;
        for kind in ["edit", "delete"] {
            let series = format!("msgd_message_changes_total{{kind=\"{kind}\"}}");
            assert_eq!(crate::support::sample(&metrics, &series), Some(1.0), "{series}");
        }
    }
}
