//! Attachments on both backends (a real S3 server in services mode): upload
//! to the target msgd hands out with a plain HTTP client, send, download as
//! another member; and each refusal with its stable code — a non-member, a
//! wrong checksum, an oversize file, an expired URL, a key from another
//! conversation, a denied content type. Retention deletes orphans and keeps
//! referenced uploads.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::api::{Api, Reply};
use crate::support::{backend_test, Backend};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Asks for an upload target in `conversation` as `token`.
async fn create_upload(api: &Api, token: &str, conversation: &str, body: &Value) -> Reply {
    let path = format!("/v1/conversations/{conversation}/attachments");
    api.request(Method::POST, &path, Some(&api.write_key), Some(token), Some(body), &[]).await
}

/// PUTs `bytes` where `target` says, with the headers it names: a plain
/// HTTP client, no msgd credentials.
async fn upload(api: &Api, target: &Value, bytes: Vec<u8>) -> reqwest::Response {
    let url = target["upload"]["url"].as_str().unwrap();
    let url = if url.starts_with('/') { api.msgd.url(url) } else { url.to_string() };
    assert_eq!(target["upload"]["method"], "PUT");
    let mut request = reqwest::Client::new().put(url).body(bytes);
    for (name, value) in target["upload"]["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    request.send().await.unwrap()
}

/// A text file's declaration.
fn declare(bytes: &[u8], filename: &str) -> Value {
    json!({"content_type": "text/plain", "size": bytes.len(), "sha256": sha256_hex(bytes), "filename": filename})
}

/// A message referencing the upload `target` declared as `declared`.
fn message_with(target: &Value, declared: &Value) -> Value {
    json!({"payload": {"text": "see attached"}, "attachments": [{
        "key": target["key"], "content_type": declared["content_type"],
        "size": declared["size"], "sha256": declared["sha256"]}]})
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attachment_goes_up_is_sent_and_comes_back_whole(backend: Backend) {
        let api = Api::start(backend).await;
        let (alice, bob, carol) = (api.token("alice").await, api.token("bob").await, api.token("carol").await);
        let conversation = api.conversation(&alice, &["bob"]).await;
        let bytes: Vec<u8> = (0..200_000u32).flat_map(|n| n.to_le_bytes()).collect();
        let declared = json!({"content_type": "application/octet-stream", "size": bytes.len(),
                              "sha256": sha256_hex(&bytes), "filename": "données.bin"});
        let target = create_upload(&api, &alice, &conversation, &declared).await;
        assert_eq!(target.status, 201, "{backend:?}: {}\n{}", target.body, api.msgd.log_text());
        let key = target.body["key"].as_str().unwrap();
        assert!(key.starts_with(&format!("attachments/{}/", api.app_id)) && key.contains(&conversation), "{key}");
        let uploaded = upload(&api, &target.body, bytes.clone()).await;
        assert!(uploaded.status().is_success(), "{backend:?}: {}", uploaded.text().await.unwrap());

        let sent = api.send(&alice, &conversation, &message_with(&target.body, &declared)).await;
        assert_eq!(sent.status, 201, "{backend:?}: {}", sent.body);
        assert_eq!(sent.body["attachments"][0]["key"], key);

        let id = target.body["id"].as_str().unwrap();
        let url = api.msgd.url(&format!("/v1/conversations/{conversation}/attachments/{id}"));
        let download = |token: String| {
            let url = url.clone();
            let read_key = api.read_key.clone();
            async move {
                reqwest::Client::new().get(url).header("x-api-key", read_key).bearer_auth(token).send().await.unwrap()
            }
        };
        let got = download(bob.clone()).await;
        assert_eq!(got.status(), 200, "{backend:?}");
        if backend == Backend::Embedded {
            let disposition = got.headers()["content-disposition"].to_str().unwrap().to_string();
            assert!(disposition.contains("filename*=UTF-8''donn%C3%A9es.bin"), "{disposition}");
        }
        let body = got.bytes().await.unwrap();
        assert_eq!((body.len(), sha256_hex(&body)), (bytes.len(), sha256_hex(&bytes)), "{backend:?}");

        let refused = download(carol.clone()).await;
        assert_eq!(refused.status(), 403);
        assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "not_member");
        // A browser's publishable key with its user's token may upload, as it may send.
        let path = format!("/v1/conversations/{conversation}/attachments");
        let declared_by_bob = declare(b"from a browser", "b.txt");
        let by_browser =
            api.request(Method::POST, &path, Some(&api.read_key), Some(&bob), Some(&declared_by_bob), &[]).await;
        assert_eq!(by_browser.status, 201, "{backend:?}: {}", by_browser.body);
        let not_member = create_upload(&api, &carol, &conversation, &declare(b"x", "x.txt")).await;
        assert_eq!((not_member.status, not_member.code()), (403, "not_member"), "{backend:?}");
        let missing = download(bob).await;
        assert_eq!(missing.status(), 200, "downloads stay repeatable");
        let other = reqwest::Client::new()
            .get(api.msgd.url(&format!("/v1/conversations/{conversation}/attachments/{}", uuid::Uuid::now_v7())))
            .header("x-api-key", &api.read_key)
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 404);
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_uploads_are_refused_with_stable_codes(backend: Backend) {
        let api = Api::start_with(
            backend,
            &[("MSGD_LIMITS__MAX_ATTACHMENT_BYTES", "1024"), ("MSGD_ATTACHMENTS__UPLOAD_TTL", "1s")],
        )
        .await;
        let alice = api.token("alice").await;
        let (here, elsewhere) = (api.conversation(&alice, &[]).await, api.conversation(&alice, &[]).await);

        let oversize = create_upload(&api, &alice, &here, &declare(&[b'x'; 1025], "big.txt")).await;
        assert_eq!((oversize.status, oversize.code()), (413, "attachment_too_large"), "{backend:?}");
        let exe = json!({"content_type": "application/x-msdownload", "size": 10, "sha256": "a".repeat(64)});
        let denied = create_upload(&api, &alice, &here, &exe).await;
        assert_eq!((denied.status, denied.code()), (415, "content_type_not_allowed"), "{backend:?}");
        for bad in [json!({"content_type": "text/plain", "size": 3, "sha256": "XYZ"}),
                    json!({"content_type": "text/plain", "size": 3, "sha256": "a".repeat(64), "filename": "../etc/passwd"})] {
            let reply = create_upload(&api, &alice, &here, &bad).await;
            assert_eq!((reply.status, reply.code()), (400, "invalid_attachments"), "{backend:?} {bad}");
        }

        // Bytes that do not match the declared checksum: never accepted into a message.
        let declared = declare(b"the right bytes", "a.txt");
        let target = create_upload(&api, &alice, &here, &declared).await;
        let wrong = upload(&api, &target.body, b"the wrong bytes".to_vec()).await;
        if backend == Backend::Embedded {
            assert_eq!(wrong.status(), 422);
            assert_eq!(wrong.json::<Value>().await.unwrap()["error"]["code"], "attachment_mismatch");
        }
        let sent = api.send(&alice, &here, &message_with(&target.body, &declared)).await;
        assert_eq!((sent.status, sent.code()), (400, "invalid_attachments"), "{backend:?}: {}", sent.body);

        // A good upload, referenced from another conversation, or with another declaration.
        let declared = declare(b"hello", "b.txt");
        let target = create_upload(&api, &alice, &here, &declared).await;
        assert!(upload(&api, &target.body, b"hello".to_vec()).await.status().is_success());
        let stolen = api.send(&alice, &elsewhere, &message_with(&target.body, &declared)).await;
        assert_eq!((stolen.status, stolen.code()), (400, "invalid_attachments"), "{backend:?}");
        let mut lied = message_with(&target.body, &declared);
        lied["attachments"][0]["size"] = json!(4);
        let lied = api.send(&alice, &here, &lied).await;
        assert_eq!((lied.status, lied.code()), (400, "invalid_attachments"), "{backend:?}");
        assert_eq!(api.send(&alice, &here, &message_with(&target.body, &declared)).await.status, 201);

        // An upload URL past its expiry.
        let late = create_upload(&api, &alice, &here, &declare(b"late", "c.txt")).await;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let expired = upload(&api, &late.body, b"late".to_vec()).await;
        assert_eq!(expired.status(), 403, "{backend:?}");
        if backend == Backend::Embedded {
            assert_eq!(expired.json::<Value>().await.unwrap()["error"]["code"], "invalid_upload_url");
        }
    }
}

backend_test! {
    /// Retention deletes an upload no message referenced within
    /// `attachments.orphan_ttl`, and keeps a referenced one inside the window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_deletes_orphan_uploads(backend: Backend) {
        let api = Api::start(backend).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        let mut targets = Vec::new();
        for (n, text) in ["kept", "orphan"].iter().enumerate() {
            let declared = declare(text.as_bytes(), &format!("{n}.txt"));
            let target = create_upload(&api, &alice, &conversation, &declared).await;
            assert!(upload(&api, &target.body, text.as_bytes().to_vec()).await.status().is_success());
            targets.push((target.body, declared));
        }
        assert_eq!(api.send(&alice, &conversation, &message_with(&targets[0].0, &targets[0].1)).await.status, 201);
        let stores = api.stores().await;
        let config = api.env.config();
        let retention = msgd::retention::Retention::new(stores.clone(), msgd::telemetry::Metrics::new("test"), &config);
        let later = msgd::clock::now_ms() + 25 * 3600 * 1000;
        let report = retention.run(&msgd::retention::RetentionOptions::default(), later).await.unwrap();
        assert_eq!(report.attachments, 1, "{backend:?}: {report:?}");
        let (kept, orphan) = (targets[0].0["key"].as_str().unwrap(), targets[1].0["key"].as_str().unwrap());
        assert!(stores.objects.size(kept).await.is_ok(), "{backend:?}: the referenced upload stays");
        assert!(stores.objects.size(orphan).await.is_err(), "{backend:?}: the orphan's object is gone");
        assert!(stores.metadata.attachment_by_key(orphan).await.unwrap().is_none());
    }
}
