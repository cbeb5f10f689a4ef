//! Presence on both backends (services: across two instances): a member's
//! subscription makes them present, their first session publishes `online`
//! and only their last one leaving publishes `offline`; `GET .../presence`
//! lists who is online, for members and the app only.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::Api;
use crate::support::wsclient::{Client, Next};
use crate::support::{backend_test, Backend};

async fn present(api: &Api, token: &str, conversation: &str) -> Value {
    let path = format!("/v1/conversations/{conversation}/presence");
    let reply = api.request(Method::GET, &path, Some(&api.read_key), Some(token), None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["users"].clone()
}

async fn subscribed(addr: &str, api: &Api, token: &str, conversation: &str) -> Client {
    let mut client = Client::connect(addr, &api.read_key, token).await;
    client.send(json!({"op": "subscribe", "conversation_id": conversation})).await;
    client.expect_op("subscribed").await;
    client
}

/// The next presence frame about `user` (the subscriber's own come too).
async fn presence_of(client: &mut Client, user: &str) -> Value {
    loop {
        let frame = client.expect_op("presence").await;
        if frame["user_id"] == user {
            return frame;
        }
    }
}

/// Reads up to a pong, failing on any presence frame about alice before it.
async fn no_news_of_alice(client: &mut Client, why: &str) {
    client.send(json!({"op": "ping"})).await;
    loop {
        match client.next(Duration::from_secs(10)).await {
            Next::Frame(frame) if frame["op"] == "pong" => return,
            Next::Frame(frame) => {
                assert!(frame["op"] != "presence" || frame["user_id"] != "alice", "{why}: {frame}");
            }
            other => panic!("{why}: {other:?}"),
        }
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn presence_follows_sessions_across_instances(backend: Backend) {
        let api = Api::start(backend).await;
        let (alice, bob, carol) = (api.token("alice").await, api.token("bob").await, api.token("carol").await);
        let conversation = api.conversation(&alice, &["bob"]).await;
        let other = (backend == Backend::Services).then(|| api.second_instance());
        let there = other.as_ref().map_or(api.msgd.addr.as_str(), |other| other.addr.as_str());

        let mut bob_socket = subscribed(&api.msgd.addr, &api, &bob, &conversation).await;
        assert_eq!(present(&api, &alice, &conversation).await, json!(["bob"]), "{backend:?}");

        // Alice's first session (on the other instance) is news; her second is not.
        let first = subscribed(there, &api, &alice, &conversation).await;
        let frame = presence_of(&mut bob_socket, "alice").await;
        assert_eq!((&frame["user_id"], &frame["status"]), (&json!("alice"), &json!("online")), "{frame}");
        let second = subscribed(there, &api, &alice, &conversation).await;
        no_news_of_alice(&mut bob_socket, "a second session of an online user").await;
        assert_eq!(present(&api, &bob, &conversation).await, json!(["alice", "bob"]), "{backend:?}");

        // Closing one of two sessions leaves her online; closing the last does not.
        drop(first);
        tokio::time::sleep(Duration::from_millis(300)).await;
        no_news_of_alice(&mut bob_socket, "one of two sessions closed").await;
        assert_eq!(present(&api, &bob, &conversation).await, json!(["alice", "bob"]));
        drop(second);
        let frame = presence_of(&mut bob_socket, "alice").await;
        assert_eq!((&frame["user_id"], &frame["status"]), (&json!("alice"), &json!("offline")), "{frame}");
        assert_eq!(present(&api, &bob, &conversation).await, json!(["bob"]), "{backend:?}");

        // Unsubscribing leaves too; only members and the app may look.
        bob_socket.send(json!({"op": "unsubscribe", "conversation_id": conversation})).await;
        bob_socket.expect_op("unsubscribed").await;
        assert_eq!(present(&api, &alice, &conversation).await, json!([]), "{backend:?}");
        let path = format!("/v1/conversations/{conversation}/presence");
        let stranger = api.request(Method::GET, &path, Some(&api.read_key), Some(&carol), None, &[]).await;
        assert_eq!((stranger.status, stranger.code()), (403, "not_member"), "{}", stranger.body);
        let app = api.request(Method::GET, &path, Some(&api.admin_key), None, None, &[]).await;
        assert_eq!((app.status, &app.body["users"]), (200, &json!([])), "{}", app.body);
    }
}
