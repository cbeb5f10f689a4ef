//! Conversation lifecycle and roles on both backends: who may change what
//! (owner, moderator, member, the app), the last-owner rule under concurrent
//! demotions, archived conversations refusing writes over HTTP and
//! WebSocket, and a deleted conversation unreadable at once (history,
//! catch-up, lists, a second instance) with its row gone by retention.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::{Api, Reply};
use crate::support::wsclient::Client;
use crate::support::{backend_test, Backend};

/// `method path` as the user behind `token` (with the write key).
async fn call(api: &Api, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
    api.request(method, path, Some(&api.write_key), Some(token), body.as_ref(), &[]).await
}

fn assert_reply(reply: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    if !code.is_empty() {
        assert_eq!(reply.code(), code, "{what}: {}", reply.body);
    }
}

/// The members of a conversation as (user, role), as `token` sees them.
async fn roles(api: &Api, token: &str, conversation: &str) -> Vec<(String, String)> {
    let reply = call(api, Method::GET, &format!("/v1/conversations/{conversation}"), token, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let members = reply.body["members"].as_array().unwrap();
    let mut roles: Vec<_> = members
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap().to_string(), m["role"].as_str().unwrap().to_string()))
        .collect();
    roles.sort();
    roles
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(user, role)| (user.to_string(), role.to_string())).collect()
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roles_decide_who_manages_a_conversation(backend: Backend) {
        let api = Api::start(backend).await;
        let (alice, bob, carol) = (api.token("alice").await, api.token("bob").await, api.token("carol").await);
        let conversation = api.conversation(&alice, &["bob", "carol"]).await;
        let path = format!("/v1/conversations/{conversation}");
        let member = |user: &str| format!("{path}/members/{user}");

        // A member manages nothing; the owner makes bob a moderator.
        assert_reply(&call(&api, Method::PUT, &member("dave"), &carol, None).await, 403, "not_owner", "member adds");
        let promoted = call(&api, Method::PUT, &member("bob"), &alice, Some(json!({"role": "moderator"}))).await;
        assert_reply(&promoted, 200, "", "owner promotes");
        assert_eq!(promoted.body, json!({"user_id": "bob", "role": "moderator", "added": false}));

        // A moderator adds and removes members, renames, deletes anyone's message...
        let added = call(&api, Method::PUT, &member("dave"), &bob, None).await;
        assert_reply(&added, 201, "", "moderator adds");
        assert_eq!(added.body["role"], "member");
        assert_reply(&call(&api, Method::PUT, &member("dave"), &bob, Some(json!({"role": "member"}))).await, 200, "", "no change");
        let renamed = call(&api, Method::PATCH, &path, &bob, Some(json!({"title": "renamed", "metadata": {"k": 1}}))).await;
        assert_reply(&renamed, 200, "", "moderator renames");
        assert_eq!((&renamed.body["title"], &renamed.body["metadata"]), (&json!("renamed"), &json!({"k": 1})));
        assert!(renamed.body["updated_at"].as_i64().is_some(), "{}", renamed.body);
        let cleared = call(&api, Method::PATCH, &path, &bob, Some(json!({"metadata": null}))).await;
        assert_eq!((&cleared.body["title"], &cleared.body["metadata"]), (&json!("renamed"), &Value::Null), "only metadata");
        assert_eq!(api.send(&carol, &conversation, &json!({"payload": "spam"})).await.status, 201);
        let message = format!("{path}/messages/1");
        assert_reply(&call(&api, Method::DELETE, &message, &bob, None).await, 204, "", "moderator deletes carol's");
        assert_reply(&call(&api, Method::DELETE, &member("dave"), &bob, None).await, 204, "", "moderator removes");

        // ...but gives no roles, removes no owner, archives nothing, deletes nothing.
        for (method, target, body, what) in [
            (Method::PUT, member("dave"), Some(json!({"role": "moderator"})), "moderator promotes"),
            (Method::PUT, member("erin"), Some(json!({"role": "owner"})), "moderator adds an owner"),
            (Method::PUT, member("carol"), Some(json!({"role": "moderator"})), "moderator promotes a member"),
            (Method::DELETE, member("alice"), None, "moderator removes the owner"),
            (Method::PATCH, path.clone(), Some(json!({"archived": true})), "moderator archives"),
            (Method::DELETE, path.clone(), None, "moderator deletes"),
        ] {
            assert_reply(&call(&api, method, &target, &bob, body).await, 403, "not_owner", what);
        }
        assert_reply(&call(&api, Method::PATCH, &path, &carol, Some(json!({"title": "x"}))).await, 403, "not_owner", "member renames");
        let bad_role = call(&api, Method::PUT, &member("carol"), &alice, Some(json!({"role": "admin"}))).await;
        assert_reply(&bad_role, 400, "invalid_role", "unknown role");
        let unknown = call(&api, Method::PATCH, &path, &alice, Some(json!({"name": "x"}))).await;
        assert_reply(&unknown, 400, "invalid_request", "unknown field");
        let bad_title = call(&api, Method::PATCH, &path, &alice, Some(json!({"title": "a\u{7}b"}))).await;
        assert_reply(&bad_title, 400, "invalid_title", "control character");
        assert_eq!(roles(&api, &carol, &conversation).await, pairs(&[("alice", "owner"), ("bob", "moderator"), ("carol", "member")]));

        // The last owner stays until another member is one.
        let demote = call(&api, Method::PUT, &member("alice"), &alice, Some(json!({"role": "member"}))).await;
        assert_reply(&demote, 409, "last_owner", "demoting the last owner");
        assert_reply(&call(&api, Method::DELETE, &member("alice"), &alice, None).await, 409, "last_owner", "leaving");
        let by_app = api.request(Method::DELETE, &member("alice"), Some(&api.admin_key), None, None, &[]).await;
        assert_reply(&by_app, 409, "last_owner", "the app removing the last owner");
        assert_reply(&call(&api, Method::PUT, &member("carol"), &alice, Some(json!({"role": "owner"}))).await, 200, "", "a second owner");
        assert_reply(&call(&api, Method::DELETE, &member("alice"), &alice, None).await, 204, "", "an owner leaves");
        assert_eq!(roles(&api, &carol, &conversation).await, pairs(&[("bob", "moderator"), ("carol", "owner")]));

        // Two owners demoting themselves at once: exactly one wins.
        assert_reply(&call(&api, Method::PUT, &member("bob"), &carol, Some(json!({"role": "owner"}))).await, 200, "", "bob owner");
        for round in 0..5 {
            let (bob_path, carol_path) = (member("bob"), member("carol"));
            let (demote_bob, demote_carol) = tokio::join!(
                call(&api, Method::PUT, &bob_path, &bob, Some(json!({"role": "member"}))),
                call(&api, Method::PUT, &carol_path, &carol, Some(json!({"role": "member"}))),
            );
            let mut statuses = [demote_bob.status, demote_carol.status];
            statuses.sort();
            assert_eq!(statuses, [200, 409], "{backend:?} round {round}: {} / {}", demote_bob.body, demote_carol.body);
            let (winner, loser) = if demote_bob.status == 200 { (&carol, "bob") } else { (&bob, "carol") };
            let back = call(&api, Method::PUT, &member(loser), winner, Some(json!({"role": "owner"}))).await;
            assert_reply(&back, 200, "", "promote back");
        }

        // The app names the owner of a conversation it creates; a user cannot.
        let body = json!({"members": ["yan"], "owner": "zed"});
        let created = api.request(Method::POST, "/v1/conversations", Some(&api.admin_key), None, Some(&body), &[]).await;
        assert_reply(&created, 201, "", "app creates with an owner");
        let roles_of: Vec<_> = created.body["members"].as_array().unwrap().iter().map(|m| (m["user_id"].clone(), m["role"].clone())).collect();
        assert_eq!(roles_of, vec![(json!("zed"), json!("owner")), (json!("yan"), json!("member"))]);
        let refused = call(&api, Method::POST, "/v1/conversations", &alice, Some(body)).await;
        assert_reply(&refused, 400, "invalid_request", "a user names an owner");
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn archived_is_read_only_and_deleted_is_gone_at_once(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "0")]).await;
        let (alice, bob) = (api.token("alice").await, api.token("bob").await);
        let conversation = api.conversation(&alice, &["bob"]).await;
        let path = format!("/v1/conversations/{conversation}");
        for n in 0..2 {
            assert_eq!(api.send(&alice, &conversation, &json!({"payload": {"n": n}})).await.status, 201);
        }
        assert_eq!(api.env.run(&["flush", "--all"], "").code, 0, "seqs 1-2 in a segment");
        assert_eq!(api.send(&bob, &conversation, &json!({"payload": {"n": 2}})).await.status, 201);
        let mut live = Client::connect(&api.msgd.addr, &api.read_key, &bob).await;
        live.send(json!({"op": "subscribe", "conversation_id": conversation})).await;
        live.expect_op("subscribed").await;

        // Archived: readable, moderated, not written to.
        let archived = call(&api, Method::PATCH, &path, &alice, Some(json!({"archived": true}))).await;
        assert_reply(&archived, 200, "", "archive");
        let archived_at = archived.body["archived_at"].as_i64().expect("archived_at");
        let frame = live.expect_op("conversation.updated").await;
        assert_eq!(frame["conversation"]["archived_at"], archived_at, "{frame}");
        let batch = json!({"messages": [{"payload": 1}]});
        for (method, target, body, what) in [
            (Method::POST, format!("{path}/messages"), json!({"payload": "x"}), "send"),
            (Method::POST, format!("{path}/messages/batch"), batch, "batch"),
            (Method::PATCH, format!("{path}/messages/3"), json!({"payload": "edited"}), "edit"),
            (Method::PUT, format!("{path}/messages/3/reactions/ok"), Value::Null, "react"),
        ] {
            let body = (!body.is_null()).then_some(body);
            assert_reply(&call(&api, method, &target, &bob, body).await, 409, "conversation_archived", what);
        }
        live.send(json!({"op": "send", "conversation_id": conversation, "payload": "ws"})).await;
        let error = live.expect_op("error").await;
        assert_eq!(error["code"], "conversation_archived", "{error}");
        let history = call(&api, Method::GET, &format!("{path}/messages"), &bob, None).await;
        assert_eq!(history.body["messages"].as_array().map(Vec::len), Some(3), "{}", history.body);
        assert_reply(&call(&api, Method::DELETE, &format!("{path}/messages/3"), &alice, None).await, 204, "", "moderation");
        let again = call(&api, Method::PATCH, &path, &alice, Some(json!({"archived": true}))).await;
        assert_eq!(again.body["archived_at"], archived_at, "archiving again keeps the first time");
        let unarchived = call(&api, Method::PATCH, &path, &alice, Some(json!({"archived": false}))).await;
        assert_eq!(unarchived.body["archived_at"], Value::Null);
        assert_eq!(api.send(&bob, &conversation, &json!({"payload": "back"})).await.status, 201);

        // Deleted: unreadable at once, here and (services) on another instance,
        // for members and the app.
        let second = (backend == Backend::Services).then(|| api.second_instance());
        let read_there = |token: String| {
            let url = second.as_ref().map(|second| second.url(&format!("{path}/messages")));
            let request = url.map(|url| api.client.get(url).header("x-api-key", &api.read_key).bearer_auth(token));
            async move {
                match request {
                    Some(request) => request.send().await.unwrap().status().as_u16(),
                    None => 403,
                }
            }
        };
        if second.is_some() {
            assert_eq!(read_there(bob.clone()).await, 200, "the second instance has it cached");
        }
        assert_reply(&call(&api, Method::DELETE, &path, &bob, None).await, 403, "not_owner", "a member deletes");
        assert_reply(&call(&api, Method::DELETE, &path, &alice, None).await, 204, "", "the owner deletes");
        let frame = live.expect_op("conversation.deleted").await;
        assert_eq!(frame["conversation_id"], conversation.as_str());
        let refused = crate::support::eventually(std::time::Duration::from_secs(5), async || {
            read_there(bob.clone()).await == 403
        });
        assert!(refused.await, "{backend:?}: the other instance still serves the deleted conversation");
        for (token, target) in [(&bob, format!("{path}/messages")), (&alice, path.clone()), (&bob, format!("{path}/messages/1"))] {
            assert_reply(&call(&api, Method::GET, &target, token, None).await, 403, "not_member", &target);
        }
        let as_app = api.request(Method::GET, &format!("{path}/messages"), Some(&api.admin_key), None, None, &[]).await;
        assert_reply(&as_app, 404, "not_found", "the app reads");
        let twice = api.request(Method::DELETE, &path, Some(&api.admin_key), None, None, &[]).await;
        assert_reply(&twice, 404, "not_found", "deleting twice");
        let listed = api.request(Method::GET, "/v1/conversations", Some(&api.admin_key), None, None, &[]).await;
        assert_eq!(listed.body["conversations"], json!([]), "{backend:?}");
        let mut late = Client::connect(&api.msgd.addr, &api.read_key, &bob).await;
        late.send(json!({"op": "subscribe", "conversation_id": conversation, "since_seq": 0})).await;
        assert_eq!(late.expect_op("error").await["code"], "not_member", "no catch-up from a deleted conversation");

        // Retention removes the row a history window after the deletion, not before.
        let stores = api.stores().await;
        let retention = msgd::retention::Retention::new(stores, msgd::telemetry::Metrics::new("test"), &api.env.config());
        let options = msgd::retention::RetentionOptions::default();
        let now = msgd::clock::now_ms();
        assert_eq!(retention.run(&options, now).await.unwrap().conversations, 0, "{backend:?}: too early");
        let later = now + 31 * 86_400_000;
        assert_eq!(retention.run(&options, later).await.unwrap().conversations, 1, "{backend:?}");
    }
}
