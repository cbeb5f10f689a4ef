//! The admin HTTP API (`/v1/admin`) on both backends: only the operator
//! token gets in (app keys and user tokens grant nothing), apps and keys are
//! managed with the same effects and documents as `msgd keys`, every call is
//! audited and counted, and the API is a 404 while `auth.operator_token` is unset.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::{Api, Reply};
use crate::support::{backend_test, sample, scrape, Backend, TestEnv};

/// (what, API key, bearer token, other headers): credentials that are not the operator's.
type Presented<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [(&'a str, &'a str)]);

const OPERATOR: &str = "operator-token-0123456789abcdef-0123456789";

async fn admin(api: &Api, method: Method, path: &str, body: Option<&Value>) -> Reply {
    api.request(method, path, None, Some(OPERATOR), body, &[]).await
}

/// Whether `key` may create a conversation as its app (an admin key) or is refused with `code`.
async fn acts_as_app(api: &Api, key: &str) -> Result<(), String> {
    let body = json!({"members": ["zed"]});
    let reply = api.request(Method::POST, "/v1/conversations", Some(key), None, Some(&body), &[]).await;
    match reply.status {
        201 => Ok(()),
        _ => Err(reply.code().to_string()),
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_operator_token_gets_in(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_AUTH__OPERATOR_TOKEN", OPERATOR)]).await;
        let alice = api.token("alice").await;
        let wrong = "operator-token-0123456789abcdef-0123456780";
        let basic = [("authorization", "Basic b3BlcmF0b3I6c2VjcmV0")];
        let no_headers: &[(&str, &str)] = &[];
        let refused: [Presented; 6] = [
            ("nothing", None, None, no_headers),
            ("a wrong token", None, Some(wrong), no_headers),
            ("the token as an API key", Some(OPERATOR), None, no_headers),
            ("the app's admin key", Some(&api.admin_key), None, no_headers),
            ("the admin key with a user token", Some(&api.admin_key), Some(&alice), no_headers),
            ("Basic credentials", None, None, &basic),
        ];
        for (what, key, bearer, headers) in refused {
            for (method, path) in [(Method::GET, "/v1/admin/apps"), (Method::DELETE, "/v1/admin/keys/AAAAAAAAAAAA")] {
                let reply = api.request(method.clone(), path, key, bearer, None, headers).await;
                assert_eq!((reply.status, reply.code()), (401, "invalid_operator_token"), "{what}: {method} {path}");
            }
        }
        assert_eq!(admin(&api, Method::GET, "/v1/admin/apps", None).await.status, 200);

        let metrics = scrape(&api.msgd).await;
        let count = |action: &str, outcome: &str| {
            let series = format!("msgd_admin_requests_total{{action=\"{action}\",outcome=\"{outcome}\"}}");
            sample(&metrics, &series).unwrap_or_else(|| panic!("no {series}"))
        };
        assert_eq!((count("list_apps", "unauthenticated"), count("list_apps", "ok")), (6.0, 1.0));
        assert_eq!(count("revoke_key", "unauthenticated"), 6.0);
        assert_eq!(
            sample(&metrics, "msgd_auth_failures_total{reason=\"invalid_operator_token\"}"),
            Some(12.0)
        );

        // Audited, refusals included, and never a secret in the log.
        let lines = api.msgd.log_lines();
        let audits: Vec<_> = lines.iter().filter(|l| l["component"] == "admin").collect();
        assert_eq!(audits.len(), 13, "one audit line per call");
        let refusal = audits.iter().find(|l| l["outcome"] == "unauthenticated").unwrap();
        assert_eq!((refusal["level"].as_str(), refusal["code"].as_str()), (Some("warn"), Some("invalid_operator_token")));
        assert_eq!(refusal["peer"], "127.0.0.1");
        let text = api.msgd.log_text();
        for secret in [OPERATOR, wrong, api.admin_key.as_str()] {
            assert!(!text.contains(secret), "a secret reached the log");
        }
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apps_and_keys_are_managed_as_msgd_keys_does(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_AUTH__OPERATOR_TOKEN", OPERATOR)]).await;

        // A new app and its first admin key, which works at once.
        let created = admin(&api, Method::POST, "/v1/admin/apps", Some(&json!({"name": "  globex "}))).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let app = created.body["app"]["id"].as_str().unwrap().to_string();
        assert_eq!(created.body["app"]["name"], "globex");
        assert_eq!((created.body["scope"].as_str(), created.body["status"].as_str()), (Some("admin"), Some("active")));
        let app_admin = created.body["key"].as_str().unwrap().to_string();
        acts_as_app(&api, &app_admin).await.expect("the new admin key works");
        let apps = admin(&api, Method::GET, "/v1/admin/apps", None).await.body["apps"].clone();
        let ids: Vec<_> = apps.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [api.app_id.as_str(), app.as_str()], "oldest first");

        // Issue keys; refusals keep their codes.
        let body = json!({"app_id": app, "scope": "write", "name": "backend", "expires_in": 3600});
        let write = admin(&api, Method::POST, "/v1/admin/keys", Some(&body)).await;
        assert_eq!(write.status, 201, "{}", write.body);
        let write_id = write.body["id"].as_str().unwrap().to_string();
        assert_eq!(write.body["prefix"], "msgd_sk_");
        assert_eq!(write.body["expires_at"].as_i64().unwrap() - write.body["created_at"].as_i64().unwrap(), 3_600_000);
        let bad_requests = [
            (json!({"app_id": "app_nope", "scope": "read"}), 404, "not_found"),
            (json!({"app_id": app, "scope": "root"}), 400, "invalid_request"),
            (json!({"app_id": app, "scope": "read", "owner": "x"}), 400, "invalid_request"),
            (json!({"app_id": app, "scope": "read", "expires_in": 400_000_000u64}), 400, "invalid_request"),
            (json!({"app_id": app, "scope": "read", "name": "tab\there"}), 400, "invalid_request"),
            (json!({"app_id": app, "scope": "read", "expires_in": null}), 400, "invalid_request"),
            (json!({"app_id": app, "scope": "read", "expires_in": 1.5}), 400, "invalid_request"),
            (json!({"app_id": app, "scope": "read", "expires_in": 0}), 400, "invalid_request"),
        ];
        for (body, status, code) in bad_requests {
            let reply = admin(&api, Method::POST, "/v1/admin/keys", Some(&body)).await;
            assert_eq!((reply.status, reply.code()), (status, code), "{body}");
        }
        let blank = admin(&api, Method::POST, "/v1/admin/apps", Some(&json!({"name": "  "}))).await;
        assert_eq!((blank.status, blank.code()), (400, "invalid_request"));

        // Lists show what `msgd keys list --json` shows, never a secret.
        let listed = admin(&api, Method::GET, &format!("/v1/admin/keys?app_id={app}"), None).await;
        assert_eq!(listed.status, 200);
        let cli = api.env.run(&["keys", "list", "--app", &app, "--json"], "");
        assert_eq!(cli.code, 0, "{}", cli.stderr);
        let strip_use = |keys: &Value| -> Vec<Value> {
            let mut keys = keys.as_array().unwrap().clone();
            keys.iter_mut().for_each(|k| k["last_used_at"] = Value::Null);
            keys
        };
        assert_eq!(strip_use(&listed.body["keys"]), strip_use(&cli.json()["keys"]));
        assert_eq!(listed.body["keys"].as_array().unwrap().len(), 2);
        for key in listed.body["keys"].as_array().unwrap() {
            assert!(key.get("key").is_none() && key.get("secret_hash").is_none(), "{key}");
        }
        let cli_apps = api.env.run(&["keys", "list-apps", "--json"], "");
        assert_eq!(cli_apps.json()["apps"], apps);
        let missing = admin(&api, Method::GET, "/v1/admin/keys?app_id=app_nope", None).await;
        assert_eq!((missing.status, missing.code()), (404, "not_found"));
        // An id no app can have never reaches the database (Postgres refuses a NUL in text: a 503).
        for app_id in ["\u{0}app", "app_\u{0}bcdefghijk", &"a".repeat(1000)] {
            let body = json!({"app_id": app_id, "scope": "read"});
            let odd = admin(&api, Method::POST, "/v1/admin/keys", Some(&body)).await;
            assert_eq!((odd.status, odd.code()), (404, "not_found"), "{backend:?}: {}", odd.body);
        }

        // A body that is not an object rotates nothing (serde would read `[]` as "all defaults").
        let array = admin(&api, Method::POST, &format!("/v1/admin/keys/{write_id}/rotate"), Some(&json!([]))).await;
        assert_eq!((array.status, array.code()), (400, "invalid_request"), "{}", array.body);
        // Rotate with a grace period: both keys work; the old one cannot be rotated again.
        // 3600.0 is the integer 3600 to JSON.
        let rotated = admin(&api, Method::POST, &format!("/v1/admin/keys/{write_id}/rotate"), Some(&json!({"grace": 3600.0})))
            .await;
        assert_eq!(rotated.status, 201, "{}", rotated.body);
        assert_eq!(rotated.body["replaces"]["id"], write_id.as_str());
        assert_eq!(rotated.body["name"], "backend");
        let again = admin(&api, Method::POST, &format!("/v1/admin/keys/{write_id}/rotate"), None).await;
        assert_eq!((again.status, again.code()), (409, "key_not_rotatable"));
        let statuses = admin(&api, Method::GET, &format!("/v1/admin/keys?app_id={app}"), None).await;
        let status_of = |id: &str| {
            statuses.body["keys"].as_array().unwrap().iter().find(|k| k["id"] == id).unwrap()["status"].clone()
        };
        assert_eq!(status_of(&write_id), "rotating");

        // A rotation without grace and a revocation take effect at once on
        // this instance, although it had just accepted (and cached) the key.
        let admin_id = created.body["id"].as_str().unwrap().to_string();
        let rotated_admin = admin(&api, Method::POST, &format!("/v1/admin/keys/{admin_id}/rotate"), Some(&json!({"grace": 0})))
            .await;
        assert_eq!(rotated_admin.status, 201, "{}", rotated_admin.body);
        assert_eq!(acts_as_app(&api, &app_admin).await, Err("key_expired".into()));
        let successor = rotated_admin.body["key"].as_str().unwrap().to_string();
        acts_as_app(&api, &successor).await.expect("the successor works");
        let successor_id = rotated_admin.body["id"].as_str().unwrap();
        let revoked = admin(&api, Method::DELETE, &format!("/v1/admin/keys/{successor_id}"), None).await;
        assert_eq!((revoked.status, revoked.body["status"].as_str()), (200, Some("revoked")));
        assert_eq!(acts_as_app(&api, &successor).await, Err("key_revoked".into()));
        let twice = admin(&api, Method::DELETE, &format!("/v1/admin/keys/{successor_id}"), None).await;
        assert_eq!(twice.status, 200, "revoking again changes nothing");
        let revoked_rotation = admin(&api, Method::POST, &format!("/v1/admin/keys/{successor_id}/rotate"), None).await;
        assert_eq!((revoked_rotation.status, revoked_rotation.code()), (409, "key_not_rotatable"));

        // Keys are named by id; a whole key in a URL is refused, naming its id.
        let whole = admin(&api, Method::DELETE, &format!("/v1/admin/keys/{successor}"), None).await;
        assert_eq!((whole.status, whole.code()), (400, "invalid_request"));
        assert!(whole.body["error"]["message"].as_str().unwrap().contains(successor_id));
        let unknown = admin(&api, Method::DELETE, "/v1/admin/keys/AAAAAAAAAAAA", None).await;
        assert_eq!((unknown.status, unknown.code()), (404, "not_found"));

        // The audit trail names what each call acted on.
        let lines = api.msgd.log_lines();
        let audit = |action: &str| {
            lines
                .iter()
                .filter(|l| l["component"] == "admin" && l["action"] == action && l["outcome"] == "ok")
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(audit("create_app")[0]["app-id"], app.as_str());
        assert_eq!(audit("create_key")[0]["key-id"], write_id.as_str());
        assert_eq!(audit("revoke_key")[0]["key-id"], successor_id);
        assert_eq!(audit("rotate_key").len(), 2);
        let text = api.msgd.log_text();
        for secret in [OPERATOR, app_admin.as_str(), successor.as_str(), write.body["key"].as_str().unwrap()] {
            assert!(!text.contains(secret), "a secret reached the log");
        }
    }
}

backend_test! {
    #[tokio::test]
    async fn the_admin_api_is_off_without_an_operator_token(backend: Backend) {
        let api = Api::start(backend).await;
        for (method, path) in [(Method::GET, "/v1/admin/apps"), (Method::POST, "/v1/admin/keys")] {
            let reply = api.request(method.clone(), path, None, Some(OPERATOR), Some(&json!({})), &[]).await;
            assert_eq!((reply.status, reply.code()), (404, "not_found"), "{method} {path}");
        }
        assert!(!api.msgd.log_lines().iter().any(|l| l["component"] == "admin"));

        // A short token is refused at start, named but never shown.
        let mut env = TestEnv::new(backend).await;
        env.set("MSGD_AUTH__OPERATOR_TOKEN", "short-secret");
        let check = env.run(&["config", "--check"], "");
        assert_eq!(check.code, 2, "{}", check.stderr);
        assert!(check.stderr.contains("auth.operator_token") && !check.stderr.contains("short-secret"), "{}", check.stderr);
        env.set("MSGD_AUTH__OPERATOR_TOKEN", OPERATOR);
        let shown = env.run(&["config"], "");
        assert_eq!(shown.code, 0, "{}", shown.stderr);
        assert!(shown.stdout.contains("operator_token") && !shown.stdout.contains(OPERATOR), "{}", shown.stdout);
    }
}
