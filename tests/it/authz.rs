//! The authorization matrix as data: key scope × user × membership × app ×
//! key state → status and code, on both backends.

use reqwest::Method;
use serde_json::json;

use crate::support::api::{create_app, Api};
use crate::support::{backend_test, Backend};

/// (name, key, user token, method, path, expected status, expected code)
type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Method, &'a str, u16, &'a str);

fn key_with_id(env: &crate::support::TestEnv, app_id: &str, scope: &str) -> (String, String) {
    let out = env.run(&["keys", "create", "--app", app_id, "--scope", scope, "--json"], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json = out.json();
    (json["key"].as_str().unwrap().to_string(), json["id"].as_str().unwrap().to_string())
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_authorization_matrix_holds(backend: Backend) {
        let api = Api::start(backend).await;
        let env = &api.env;
        let (alice, bob, carol) = (api.token("alice").await, api.token("bob").await, api.token("carol").await);
        let conversation = api.conversation(&alice, &["bob"]).await;
        let missing = uuid::Uuid::now_v7().to_string();

        let (revoked, revoked_id) = key_with_id(env, &api.app_id, "write");
        assert_eq!(env.run(&["keys", "revoke", &revoked_id], "").code, 0);
        let (in_grace, in_grace_id) = key_with_id(env, &api.app_id, "write");
        assert_eq!(env.run(&["keys", "rotate", &in_grace_id, "--grace", "1h"], "").code, 0);
        let (after_grace, after_grace_id) = key_with_id(env, &api.app_id, "write");
        assert_eq!(env.run(&["keys", "rotate", &after_grace_id, "--grace", "0s"], "").code, 0);
        let (other_app, other_admin) = create_app(env, "other");
        let (other_write, _) = key_with_id(env, &other_app, "write");

        let send = format!("/v1/conversations/{conversation}/messages");
        let get = format!("/v1/conversations/{conversation}");
        let get_missing = format!("/v1/conversations/{missing}");
        let send_missing = format!("/v1/conversations/{missing}/messages");
        let add_dave = format!("/v1/conversations/{conversation}/members/dave");
        let receipts = format!("/v1/conversations/{conversation}/receipts");
        // Sent by the cases below: 1 by the app, 2 by alice (the owner), 3 by bob.
        let message = |seq: u64| format!("/v1/conversations/{conversation}/messages/{seq}");
        let (by_app, by_alice, by_bob) = (message(1), message(2), message(3));
        let thumbs = format!("{by_app}/reactions/%F0%9F%91%8D");
        let thread = format!("{by_app}/thread");
        let mute = format!("{get}/mute");
        let presence = format!("{get}/presence");

        let cases: Vec<Case> = vec![
            ("no key", None, Some(&alice), Method::POST, &send, 401, "missing_api_key"),
            ("garbage key", Some("msgd_sk_nope"), Some(&alice), Method::POST, &send, 401, "invalid_api_key"),
            ("admin acts as the app", Some(&api.admin_key), None, Method::POST, &send, 201, ""),
            (
                "admin sees a missing conversation as missing",
                Some(&api.admin_key),
                None,
                Method::GET,
                &get_missing,
                404,
                "not_found",
            ),
            ("write key needs a user", Some(&api.write_key), None, Method::POST, &send, 401, "missing_token"),
            ("owner sends", Some(&api.write_key), Some(&alice), Method::POST, &send, 201, ""),
            ("member sends", Some(&api.write_key), Some(&bob), Method::POST, &send, 201, ""),
            ("non-member cannot send", Some(&api.write_key), Some(&carol), Method::POST, &send, 403, "not_member"),
            ("non-member cannot read", Some(&api.write_key), Some(&carol), Method::GET, &get, 403, "not_member"),
            (
                "missing looks like not a member",
                Some(&api.write_key),
                Some(&carol),
                Method::GET,
                &get_missing,
                403,
                "not_member",
            ),
            (
                "missing send looks the same",
                Some(&api.write_key),
                Some(&alice),
                Method::POST,
                &send_missing,
                403,
                "not_member",
            ),
            (
                "non-member cannot see receipts",
                Some(&api.read_key),
                Some(&carol),
                Method::GET,
                &receipts,
                403,
                "not_member",
            ),
            ("read key reads", Some(&api.read_key), Some(&bob), Method::GET, &get, 200, ""),
            ("a member reads one message", Some(&api.read_key), Some(&bob), Method::GET, &by_app, 200, ""),
            ("non-member cannot read one", Some(&api.read_key), Some(&carol), Method::GET, &by_app, 403, "not_member"),
            ("another app's admin, one message", Some(&other_admin), None, Method::GET, &by_app, 404, "not_found"),
            ("a member reads a thread", Some(&api.read_key), Some(&bob), Method::GET, &thread, 200, ""),
            ("non-member cannot read a thread", Some(&api.read_key), Some(&carol), Method::GET, &thread, 403, "not_member"),
            ("another app's admin, a thread", Some(&other_admin), None, Method::GET, &thread, 404, "not_found"),
            ("a member reacts", Some(&api.read_key), Some(&bob), Method::PUT, &thumbs, 201, ""),
            ("non-member cannot react", Some(&api.write_key), Some(&carol), Method::PUT, &thumbs, 403, "not_member"),
            ("the app cannot react", Some(&api.admin_key), None, Method::PUT, &thumbs, 400, "user_required"),
            ("another app's admin cannot react", Some(&other_admin), None, Method::PUT, &thumbs, 404, "not_found"),
            ("non-member cannot unreact", Some(&api.write_key), Some(&carol), Method::DELETE, &thumbs, 403, "not_member"),
            ("a member unreacts", Some(&api.read_key), Some(&bob), Method::DELETE, &thumbs, 200, ""),
            ("the owner cannot edit bob's", Some(&api.write_key), Some(&alice), Method::PATCH, &by_bob, 403, "not_sender"),
            ("the sender edits", Some(&api.read_key), Some(&bob), Method::PATCH, &by_bob, 200, ""),
            ("the app edits its own", Some(&api.admin_key), None, Method::PATCH, &by_app, 200, ""),
            ("the app cannot edit a user's", Some(&api.admin_key), None, Method::PATCH, &by_alice, 403, "not_sender"),
            ("non-member cannot edit", Some(&api.write_key), Some(&carol), Method::PATCH, &by_bob, 403, "not_member"),
            ("write key needs a user to edit", Some(&api.write_key), None, Method::PATCH, &by_bob, 401, "missing_token"),
            ("a member cannot delete another's", Some(&api.write_key), Some(&bob), Method::DELETE, &by_app, 403, "not_sender"),
            ("non-member cannot delete", Some(&api.write_key), Some(&carol), Method::DELETE, &by_bob, 403, "not_member"),
            ("another app's admin cannot delete", Some(&other_admin), None, Method::DELETE, &by_bob, 404, "not_found"),
            ("the sender deletes", Some(&api.read_key), Some(&alice), Method::DELETE, &by_alice, 204, ""),
            ("the owner deletes a member's", Some(&api.write_key), Some(&alice), Method::DELETE, &by_bob, 204, ""),
            ("the app deletes any", Some(&api.admin_key), None, Method::DELETE, &by_app, 204, ""),
            // A publishable key with a user token can do what the user's membership allows.
            ("publishable key sends as a member", Some(&api.read_key), Some(&bob), Method::POST, &send, 201, ""),
            (
                "publishable key cannot mint dev tokens",
                Some(&api.read_key),
                Some(&bob),
                Method::POST,
                "/v1/dev/token",
                403,
                "insufficient_scope",
            ),
            ("publishable key, non-member", Some(&api.read_key), Some(&carol), Method::POST, &send, 403, "not_member"),
            (
                "publishable key, a member is not an owner",
                Some(&api.read_key),
                Some(&bob),
                Method::PUT,
                &add_dave,
                403,
                "not_owner",
            ),
            ("member is not an owner", Some(&api.write_key), Some(&bob), Method::PUT, &add_dave, 403, "not_owner"),
            (
                "an admin key lends no owner powers to a user",
                Some(&api.admin_key),
                Some(&bob),
                Method::PUT,
                &add_dave,
                403,
                "not_owner",
            ),
            ("publishable key, the owner adds", Some(&api.read_key), Some(&alice), Method::PUT, &add_dave, 201, ""),
            ("owner adds a member again", Some(&api.write_key), Some(&alice), Method::PUT, &add_dave, 200, ""),
            ("admin manages members", Some(&api.admin_key), None, Method::PUT, &add_dave, 200, ""),
            ("a member cannot rename", Some(&api.write_key), Some(&bob), Method::PATCH, &get, 403, "not_owner"),
            ("a non-member cannot rename", Some(&api.write_key), Some(&carol), Method::PATCH, &get, 403, "not_member"),
            ("the owner renames", Some(&api.read_key), Some(&alice), Method::PATCH, &get, 200, ""),
            ("the app renames", Some(&api.admin_key), None, Method::PATCH, &get, 200, ""),
            ("a member mutes", Some(&api.read_key), Some(&bob), Method::PUT, &mute, 204, ""),
            ("a non-member cannot mute", Some(&api.read_key), Some(&carol), Method::PUT, &mute, 403, "not_member"),
            ("the app has nothing to mute", Some(&api.admin_key), None, Method::PUT, &mute, 400, "user_required"),
            ("a member sees presence", Some(&api.read_key), Some(&bob), Method::GET, &presence, 200, ""),
            ("a non-member sees no presence", Some(&api.read_key), Some(&carol), Method::GET, &presence, 403, "not_member"),
            ("the app sees presence", Some(&api.admin_key), None, Method::GET, &presence, 200, ""),
            ("a member cannot delete the conversation", Some(&api.write_key), Some(&bob), Method::DELETE, &get, 403, "not_owner"),
            ("a non-member cannot delete it", Some(&api.write_key), Some(&carol), Method::DELETE, &get, 403, "not_member"),
            ("a read key alone cannot delete it", Some(&api.read_key), None, Method::DELETE, &get, 401, "missing_token"),
            ("admin deletes a missing one", Some(&api.admin_key), None, Method::DELETE, &get_missing, 404, "not_found"),
            ("revoked key", Some(&revoked), Some(&alice), Method::POST, &send, 401, "key_revoked"),
            ("rotated key within its grace", Some(&in_grace), Some(&alice), Method::POST, &send, 201, ""),
            ("rotated key after its grace", Some(&after_grace), Some(&alice), Method::POST, &send, 401, "key_expired"),
            (
                "another app's key with this app's user token",
                Some(&other_write),
                Some(&alice),
                Method::POST,
                &send,
                401,
                "wrong_audience",
            ),
            (
                "another app's admin cannot see this app's conversation",
                Some(&other_admin),
                None,
                Method::GET,
                &get,
                404,
                "not_found",
            ),
            ("another app's admin cannot write to it", Some(&other_admin), None, Method::POST, &send, 404, "not_found"),
            (
                "a bearer that is not a token",
                Some(&api.write_key),
                Some("not-a-token"),
                Method::GET,
                "/v1/conversations",
                401,
                "invalid_token",
            ),
        ];
        let body = json!({"payload": {"text": "hi"}});
        let rename = json!({"title": "renamed"});
        let mut failures = Vec::new();
        for (name, key, token, method, path, status, code) in cases {
            let body = if path == get { &rename } else { &body };
            let body = (method == Method::POST || method == Method::PATCH).then_some(body);
            let reply = api.request(method, path, key, token, body, &[]).await;
            if reply.status != status || (!code.is_empty() && reply.code() != code) {
                failures.push(format!("{name}: expected {status} {code}, got {} {}", reply.status, reply.body));
            }
        }
        assert!(failures.is_empty(), "{backend:?}:\n{}", failures.join("\n"));

        // Refusals are counted by reason.
        let metrics = api.client.get(api.msgd.url("/metrics")).send().await.unwrap().text().await.unwrap();
        for reason in ["missing_api_key", "not_member", "insufficient_scope", "key_revoked", "key_expired"] {
            assert!(
                metrics.contains(&format!("msgd_auth_failures_total{{reason=\"{reason}\"}}")),
                "{reason} not counted"
            );
        }
        // Listing shows only the caller's conversations; an admin sees the app's.
        let listed = api.request(Method::GET, "/v1/conversations", Some(&api.read_key), Some(&carol), None, &[]).await;
        assert_eq!(listed.body["conversations"], json!([]));
        let listed = api.request(Method::GET, "/v1/conversations", Some(&api.read_key), Some(&bob), None, &[]).await;
        assert_eq!(listed.body["conversations"][0]["id"], conversation.as_str());
        let listed = api.request(Method::GET, "/v1/conversations", Some(&other_admin), None, None, &[]).await;
        assert_eq!(listed.body["conversations"], json!([]), "apps never see each other's conversations");
    }
}

#[tokio::test]
async fn dev_tokens_are_off_unless_enabled() {
    let env = crate::support::TestEnv::new(crate::support::Backend::Embedded).await;
    let (_, admin) = create_app(&env, "acme");
    let msgd = env.serve();
    let reply = reqwest::Client::new()
        .post(msgd.url("/v1/dev/token"))
        .header("x-api-key", admin)
        .json(&json!({"user_id": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 404);
}

backend_test! {
    /// A key in use (so cached by every instance) stops working everywhere within
    /// the key cache period after it is revoked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_key_is_refused_everywhere_within_the_cache_period(backend: Backend) {
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let (key, key_id) = key_with_id(&api.env, &api.app_id, "write");
        let other = (backend == crate::support::Backend::Services).then(|| api.second_instance());
        let instances: Vec<&crate::support::Msgd> = std::iter::once(&api.msgd).chain(other.as_ref()).collect();
        for msgd in &instances {
            let reply =
                api.request_to(msgd, Method::GET, "/v1/conversations", Some(&key), Some(&alice), None, &[]).await;
            assert_eq!(reply.status, 200, "the key works (and is now cached)");
        }
        assert_eq!(api.env.run(&["keys", "revoke", &key_id], "").code, 0);
        for msgd in &instances {
            let refused = crate::support::eventually(std::time::Duration::from_secs(7), async || {
                let reply =
                    api.request_to(msgd, Method::GET, "/v1/conversations", Some(&key), Some(&alice), None, &[]).await;
                reply.status == 401 && reply.code() == "key_revoked"
            })
            .await;
            assert!(refused, "{backend:?}: a revoked key still worked after the 5 s key cache period");
        }
    }
}
