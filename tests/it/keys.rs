//! API keys through the domain API (with an injected clock) and through the
//! CLI, on both backends.

use std::time::Duration;

use msgd::keys::{self, KeyError, KeyRejection, Scope};
use msgd::store::Stores;

use crate::support::{backend_test, Backend, Output, TestEnv};

const T0: i64 = 1_790_000_000_000;
const HOUR: i64 = 3_600_000;

fn rejected(result: Result<keys::AuthenticatedKey, KeyError>) -> KeyRejection {
    match result {
        Err(KeyError::Rejected(rejection)) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

backend_test! {
    #[tokio::test]
    async fn lifecycle_through_the_domain_api(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let meta = Stores::open_metadata(&env.config()).await.unwrap();
        let meta = meta.as_ref();

        let (app, admin) = keys::create_app(meta, "acme", T0).await.unwrap();
        let auth = keys::authenticate(meta, &admin.key, T0).await.unwrap();
        assert_eq!((auth.app_id.as_str(), auth.scope), (app.id.as_str(), Scope::Admin));

        let writer = keys::create_key(meta, &app.id, Scope::Write, Some("backend"), None, T0 + 1).await.unwrap();
        assert_eq!(keys::authenticate(meta, &writer.key, T0).await.unwrap().scope, Scope::Write);

        // Rotate with a 24 h grace: both keys work inside it, only the new one after.
        let (rotated, old_valid_until) =
            keys::rotate_key(meta, &writer.info.id, Duration::from_secs(24 * 3600), T0 + HOUR).await.unwrap();
        assert_eq!(old_valid_until, T0 + 25 * HOUR);
        assert_eq!(rotated.info.scope, Scope::Write);
        assert_eq!(rotated.info.name.as_deref(), Some("backend"));
        for at in [T0 + HOUR, T0 + 24 * HOUR] {
            keys::authenticate(meta, &writer.key, at).await.expect("old key works within the grace");
            keys::authenticate(meta, &rotated.key, at).await.expect("new key works");
        }
        assert_eq!(rejected(keys::authenticate(meta, &writer.key, T0 + 25 * HOUR).await), KeyRejection::Expired);
        keys::authenticate(meta, &rotated.key, T0 + 25 * HOUR).await.expect("new key works after the grace");
        assert!(matches!(
            keys::rotate_key(meta, &writer.info.id, Duration::ZERO, T0 + 2 * HOUR).await,
            Err(KeyError::AlreadyRotated { .. })
        ));

        keys::revoke_key(meta, &rotated.info.id, T0 + 26 * HOUR).await.unwrap();
        assert_eq!(rejected(keys::authenticate(meta, &rotated.key, T0 + 26 * HOUR).await), KeyRejection::Revoked);

        // One changed character fails the checksum before any lookup.
        let mut typo = admin.key.clone().into_bytes();
        let last = typo.len() - 10;
        typo[last] = if typo[last] == b'x' { b'y' } else { b'x' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(rejected(keys::authenticate(meta, &typo, T0).await), KeyRejection::BadChecksum);
        assert_eq!(rejected(keys::authenticate(meta, "Bearer something", T0).await), KeyRejection::Malformed);

        // Expiring keys.
        let temp =
            keys::create_key(meta, &app.id, Scope::Read, None, Some(Duration::from_secs(60)), T0 + 2).await.unwrap();
        assert!(temp.key.starts_with("msgd_pk_"));
        keys::authenticate(meta, &temp.key, T0 + 2 + 59_000).await.unwrap();
        assert_eq!(rejected(keys::authenticate(meta, &temp.key, T0 + 2 + 60_000).await), KeyRejection::Expired);

        // Listing shows state, never secrets.
        let listed = keys::list_keys(meta, Some(&app.id)).await.unwrap();
        assert_eq!(listed.len(), 4);
        let statuses: Vec<_> = listed.iter().map(|k| k.status(T0 + 2 * HOUR)).collect();
        // Oldest first: admin, writer (rotated), temp, the rotated successor.
        assert_eq!(statuses, ["active", "rotating", "expired", "revoked"], "{backend:?}");
        assert!(listed[0].last_used_at.is_some(), "use is recorded");
        let other_app = keys::create_app(meta, "other", T0).await.unwrap().0;
        assert!(keys::list_keys(meta, Some(&other_app.id)).await.unwrap().len() == 1);
        assert!(matches!(
            keys::create_key(meta, "app_missing", Scope::Read, None, None, T0).await,
            Err(KeyError::NoSuchApp(_))
        ));
    }
}

backend_test! {
    #[tokio::test]
    async fn lifecycle_through_the_cli(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let created = env.run(&["keys", "create-app", "acme", "--json"], "");
        assert_eq!(created.code, 0, "{backend:?}: {}", created.stderr);
        let created = created.json();
        let app_id = created["app"]["id"].as_str().unwrap().to_string();
        let admin_key = created["key"].as_str().unwrap().to_string();

        let verify = env.run(&["keys", "verify", "--json"], &admin_key);
        assert_eq!(verify.code, 0, "{}", verify.stderr);
        assert_eq!(verify.json()["scope"], "admin");

        let writer = env.run(&["keys", "create", "--app", &app_id, "--scope", "write", "--name", "ci", "--json"], "");
        assert_eq!(writer.code, 0, "{}", writer.stderr);
        let writer = writer.json();
        let (writer_id, writer_key) = (writer["id"].as_str().unwrap(), writer["key"].as_str().unwrap());

        let rotated = env.run(&["keys", "rotate", writer_id, "--grace", "1h", "--json"], "");
        assert_eq!(rotated.code, 0, "{}", rotated.stderr);
        let new_key = rotated.json()["key"].as_str().unwrap().to_string();
        assert_eq!(env.run(&["keys", "verify"], writer_key).code, 0, "old key works within the grace");
        assert_eq!(env.run(&["keys", "verify"], &new_key).code, 0);

        let revoked = env.run(&["keys", "revoke", writer_id], "");
        assert_eq!(revoked.code, 0, "{}", revoked.stderr);
        let refused = env.run(&["keys", "verify", "--json"], writer_key);
        assert_eq!(refused.code, 1);
        assert_eq!(refused.json()["error"]["code"], "key_revoked");

        let mut typo = new_key.clone();
        typo.replace_range(12..13, if &new_key[12..13] == "A" { "B" } else { "A" });
        let refused = env.run(&["keys", "verify"], &typo);
        assert_eq!(refused.code, 1);
        assert!(refused.stderr.contains("checksum"), "{}", refused.stderr);

        for args in [vec!["keys", "list"], vec!["keys", "list", "--json"], vec!["keys", "list", "--app", &app_id]] {
            let listed = env.run(&args, "");
            assert_eq!(listed.code, 0, "{}", listed.stderr);
            for secret in [&admin_key, &new_key, &writer_key.to_string()] {
                assert!(!listed.stdout.contains(secret.as_str()), "list printed a secret");
            }
        }
        let listed = env.run(&["keys", "list", "--json"], "").json();
        assert_eq!(listed["keys"].as_array().unwrap().len(), 3);

        let missing = env.run(&["keys", "revoke", "nosuchkey"], "");
        assert_eq!(missing.code, 1);
        assert!(missing.stderr.contains("nosuchkey"));
    }
}

fn ok(out: Output, what: &str) -> serde_json::Value {
    assert_eq!(out.code, 0, "{what}: {}", out.stderr);
    out.json()
}

backend_test! {
    #[tokio::test]
    async fn every_command_prints_and_accepts_one_key_id_form_and_one_issued_key_shape(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let created = ok(env.run(&["keys", "create-app", "acme", "--json"], ""), "create-app");
        let app_id = created["app"]["id"].as_str().unwrap().to_string();
        let writer = ok(env.run(&["keys", "create", "--app", &app_id, "--scope", "write", "--json"], ""), "create");
        let writer_id = writer["id"].as_str().unwrap().to_string();
        let rotated = ok(env.run(&["keys", "rotate", &writer_id, "--json"], ""), "rotate");
        assert_eq!(rotated["replaces"]["id"], writer_id.as_str(), "{rotated}");

        // One document for a newly issued key, whichever command issued it.
        let fields = |doc: &serde_json::Value| {
            let mut keys: Vec<String> = doc.as_object().unwrap().keys().cloned().collect();
            keys.retain(|k| k != "app" && k != "replaces");
            keys.sort();
            keys
        };
        for (what, doc) in [("create-app", &created), ("create", &writer), ("rotate", &rotated)] {
            assert_eq!(fields(doc), fields(&writer), "{backend:?}: {what} prints another shape: {doc}");
            assert!(doc["key"].as_str().unwrap().starts_with("msgd_sk_"), "{what}: {doc}");
            assert_eq!(doc["status"], "active", "{what}: {doc}");
            assert_eq!(doc["app_id"], app_id.as_str());
        }

        // `keys list` shows the ids the issuing commands printed, and nothing else.
        let listed = ok(env.run(&["keys", "list", "--json"], ""), "list --json");
        let ids: Vec<String> =
            listed["keys"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_string()).collect();
        for doc in [&created, &writer, &rotated] {
            assert!(ids.contains(&doc["id"].as_str().unwrap().to_string()), "{ids:?}");
        }
        let table = env.run(&["keys", "list"], "");
        assert_eq!(table.code, 0, "{}", table.stderr);
        for id in &ids {
            assert!(
                table.stdout.contains(&format!("│ {id} ")),
                "{backend:?}: the table does not show `{id}`:\n{}",
                table.stdout
            );
        }
        assert!(!table.stdout.contains("msgd_sk_"), "{}", table.stdout);

        // Every command accepts that id — and the prefixed form older listings printed.
        let rotated_id = rotated["id"].as_str().unwrap();
        let out = env.run(&["keys", "rotate", rotated_id, "--grace", "1h"], "");
        assert_eq!(out.code, 0, "{backend:?}: rotate by the listed id: {}", out.stderr);
        let admin_id = created["id"].as_str().unwrap();
        let out = env.run(&["keys", "revoke", &format!("msgd_sk_{admin_id}…")], "");
        assert_eq!(out.code, 0, "{backend:?}: revoke by the prefixed id: {}", out.stderr);

        // A whole key is refused, naming its id, without echoing the secret.
        let secret = writer["key"].as_str().unwrap();
        let out = env.run(&["keys", "revoke", secret], "");
        assert_eq!(out.code, 1);
        assert!(out.stderr.contains(&writer_id) && !out.stderr.contains(secret), "{}", out.stderr);
    }
}
