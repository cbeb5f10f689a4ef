//! `msgd backup-r2` on both backends, with a second bucket on the test S3
//! server standing in for R2: a round trip through a destroyed deployment
//! (same ids, seqs and payloads; keys authenticate; the next send continues
//! the seq), incremental copies, verify catching a corrupted and a missing
//! object, restore refusing an incomplete backup, SIGKILL mid-run and a
//! resumed run that copies nothing twice, and retention holding inside
//! backups (a restore never brings back an expired message; prune deletes it).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::Api;
use crate::support::history::{conversation, History};
use crate::support::{backend_test, eventually, services_or_skip, unique, Backend, Msgd, Output, TestEnv};

/// The `MSGD_BACKUP__*` variables of a fresh target bucket on the test S3
/// server, and the bucket's directory; `None` when the run has no services.
fn backup_target() -> Option<(Vec<(String, String)>, PathBuf)> {
    let services = services_or_skip()?;
    let bucket = unique("b-");
    let dir = services.s3_root.join(&bucket);
    std::fs::create_dir_all(&dir).unwrap();
    let vars = vec![
        ("MSGD_BACKUP__ENDPOINT".to_string(), services.s3_endpoint.clone()),
        ("MSGD_BACKUP__BUCKET".into(), bucket),
        ("MSGD_BACKUP__ACCESS_KEY_ID".into(), services.s3_access_key_id.clone()),
        ("MSGD_BACKUP__SECRET_ACCESS_KEY".into(), services.s3_secret_access_key.clone()),
        // Small parts, so a multi-part upload would show with test-sized objects too.
        ("MSGD_BACKUP__MULTIPART_PART_SIZE".into(), (5 * 1024 * 1024).to_string()),
    ];
    Some((vars, dir))
}

/// A running deployment with a backup target.
async fn start(backend: Backend, target: &[(String, String)]) -> Api {
    let vars: Vec<(&str, &str)> = target.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Api::start_with(backend, &vars).await
}

/// `msgd backup-r2 <args> --json` on `env`.
fn backup(env: &TestEnv, args: &[&str]) -> Output {
    let mut all = vec!["backup-r2"];
    all.extend_from_slice(args);
    all.push("--json");
    env.run(&all, "")
}

fn backup_ok(env: &TestEnv, args: &[&str]) -> Value {
    let out = backup(env, args);
    assert_eq!(out.code, 0, "backup-r2 {args:?}: {}", out.stderr);
    out.json()
}

/// Sends `count` messages to `conversation`, then flushes them into a segment.
async fn send_and_flush(api: &Api, token: &str, conversation: &str, count: usize) {
    for n in 0..count {
        let reply = api.send(token, conversation, &json!({"payload": {"n": n, "text": format!("hello {n}")}})).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let out = api.env.run(&["flush", "--all"], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// Uploads `bytes` into `conversation` and sends a message referencing it; returns the attachment id.
async fn attach(api: &Api, token: &str, conversation: &str, bytes: &[u8]) -> String {
    use sha2::Digest;
    let sha256: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    let declared = json!({"content_type": "text/plain", "size": bytes.len(), "sha256": sha256});
    let path = format!("/v1/conversations/{conversation}/attachments");
    let target = api.request(Method::POST, &path, Some(&api.write_key), Some(token), Some(&declared), &[]).await;
    assert_eq!(target.status, 201, "{}", target.body);
    let url = target.body["upload"]["url"].as_str().unwrap();
    let url = if url.starts_with('/') { api.msgd.url(url) } else { url.to_string() };
    let put = reqwest::Client::new().put(url).header("content-type", "text/plain").body(bytes.to_vec()).send().await;
    assert!(put.unwrap().status().is_success());
    let reference =
        json!({"key": target.body["key"], "content_type": "text/plain", "size": bytes.len(), "sha256": sha256});
    let sent = api.send(token, conversation, &json!({"payload": "attached", "attachments": [reference]})).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    target.body["id"].as_str().unwrap().to_string()
}

/// Every message of `conversation` as (id, seq, payload), through `msgd` with `api`'s keys.
async fn messages(api: &Api, msgd: &Msgd, token: &str, conversation: &str) -> Vec<(String, u64, Value)> {
    let path = format!("/v1/conversations/{conversation}/messages?limit=500");
    let reply = api.request_to(msgd, Method::GET, &path, Some(&api.read_key), Some(token), None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().to_string(), m["seq"].as_u64().unwrap(), m["payload"].clone()))
        .collect()
}

/// A fresh, empty deployment of `backend` with `api`'s auth, limits and backup settings.
async fn fresh_like(like: &TestEnv, backend: Backend) -> TestEnv {
    let mut env = TestEnv::new(backend).await;
    for (name, value) in &like.vars {
        if ["MSGD_AUTH__", "MSGD_LIMITS__", "MSGD_BACKUP__"].iter().any(|prefix| name.starts_with(prefix)) {
            env.set(name, value);
        }
    }
    env
}

backend_test! {
    /// Back up, back up again (only the new segment is copied), destroy the
    /// deployment, restore into a fresh one: every message with the same id,
    /// seq and payload; the old keys and tokens work; the next send continues.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_brings_back_every_message_and_the_seq_continues(backend: Backend) {
        let Some((target, _)) = backup_target() else { return };
        let mut api = start(backend, &target).await;
        let alice = api.token("alice").await;
        let conversations =
            [api.conversation(&alice, &["bob"]).await, api.conversation(&alice, &[]).await, api.conversation(&alice, &[]).await];
        for conversation in &conversations {
            send_and_flush(&api, &alice, conversation, 5).await;
        }
        let attachment = attach(&api, &alice, &conversations[0], b"a file that must survive").await;
        // Not flushed by anyone but the backup run itself.
        api.send(&alice, &conversations[0], &json!({"payload": "unflushed"})).await;
        let metrics_file = api.env.dir.path().join("msgd_backup.prom");
        let first = backup_ok(&api.env, &["run", "--metrics-file", metrics_file.to_str().unwrap()]);
        // Four segments and the attachment.
        assert_eq!((first["objects"].as_u64(), first["objects_copied"].as_u64()), (Some(5), Some(5)), "{first}");
        let metrics = std::fs::read_to_string(&metrics_file).unwrap();
        assert!(metrics.contains("msgd_backup_objects_total 5"), "{metrics}");
        let last = metrics.lines().find_map(|l| l.strip_prefix("msgd_backup_last_success_timestamp_seconds "));
        assert!(last.and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 1.7e9), "{metrics}");
        assert!(!metrics.contains("msgd_http"), "only the backup's metrics: {metrics}");
        assert_eq!(first["tables"]["conversations"], 3);

        // A delete and an edit of flushed messages: both stay in force after the restore.
        let path = |seq: u64| format!("/v1/conversations/{}/messages/{seq}", conversations[1]);
        let deleted = api.request(Method::DELETE, &path(1), Some(&api.write_key), Some(&alice), None, &[]).await;
        assert_eq!(deleted.status, 204, "{}", deleted.body);
        let edit = json!({"payload": "edited before the backup"});
        let edited = api.request(Method::PATCH, &path(2), Some(&api.write_key), Some(&alice), Some(&edit), &[]).await;
        assert_eq!(edited.status, 200, "{}", edited.body);
        let thumbs = format!("{}/reactions/%F0%9F%91%8D", path(2));
        let reacted = api.request(Method::PUT, &thumbs, Some(&api.write_key), Some(&alice), None, &[]).await;
        assert_eq!(reacted.status, 201, "{}", reacted.body);
        send_and_flush(&api, &alice, &conversations[1], 2).await;
        let second = backup_ok(&api.env, &["run"]);
        assert_eq!((second["objects"].as_u64(), second["objects_copied"].as_u64()), (Some(6), Some(1)), "{second}");
        let listed = backup_ok(&api.env, &["list"]);
        assert!(listed.as_array().unwrap().iter().all(|b| b["complete"] == true), "{listed}");

        let mut before = Vec::new();
        for conversation in &conversations {
            before.push(messages(&api, &api.msgd, &alice, conversation).await);
        }
        assert_eq!(before[0].len(), 7);
        assert_eq!((&before[1][0].2, &before[1][1].2), (&Value::Null, &edit["payload"]), "{:?}", before[1]);
        // Destroyed: the old serve is gone; a fresh database, Redis prefix and bucket (or data dir) replace it.
        api.msgd.child.kill().unwrap();
        api.msgd.child.wait().unwrap();
        let fresh = fresh_like(&api.env, backend).await;
        let restored = backup_ok(&fresh, &["restore", "--latest"]);
        assert_eq!((restored["objects_restored"].as_u64(), restored["segments_indexed"].as_u64()), (Some(6), Some(5)));
        api.msgd = fresh.serve();
        for (conversation, expected) in conversations.iter().zip(&before) {
            assert_eq!(&messages(&api, &api.msgd, &alice, conversation).await, expected, "{backend:?}");
        }
        let one = api.request(Method::GET, &path(2), Some(&api.read_key), Some(&alice), None, &[]).await;
        assert_eq!(one.body["reactions"], json!([{"reaction": "👍", "count": 1, "mine": true}]), "{backend:?}");
        let next = api.send(&alice, &conversations[0], &json!({"payload": "after the restore"})).await;
        assert_eq!((next.status, next.body["seq"].as_u64()), (201, Some(8)), "{backend:?}: {}", next.body);
        let path = format!("/v1/conversations/{}/attachments/{attachment}", conversations[0]);
        let got = reqwest::Client::new()
            .get(api.msgd.url(&path))
            .header("x-api-key", &api.read_key)
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200, "{backend:?}: the attachment came back");
        assert_eq!(&got.bytes().await.unwrap()[..], b"a file that must survive");
        let out = backup(&fresh, &["restore", "--latest"]);
        assert_eq!(out.code, 1, "a non-empty deployment is refused: {}", out.stderr);
        assert!(out.stderr.contains("not empty"), "{}", out.stderr);
    }
}

backend_test! {
    /// verify finds a missing object (by size) and a corrupted one (by hash,
    /// with --full), naming each; restore refuses a backup without manifest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_names_bad_objects_and_restore_refuses_an_incomplete_backup(backend: Backend) {
        let Some((target, bucket)) = backup_target() else { return };
        let api = start(backend, &target).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        for _ in 0..3 {
            send_and_flush(&api, &alice, &conversation, 3).await;
        }
        let run = backup_ok(&api.env, &["run"]);
        let id = run["backup_id"].as_str().unwrap().to_string();
        assert_eq!(backup_ok(&api.env, &["verify", &id, "--full"])["problems"], json!([]));

        let copies = bucket.join("msgd-backups/objects/segments");
        let mut files: Vec<PathBuf> = walk(&copies);
        files.sort();
        assert_eq!(files.len(), 3);
        std::fs::remove_file(&files[0]).unwrap();
        let mut corrupted = std::fs::read(&files[1]).unwrap();
        corrupted[20] ^= 0xff;
        std::fs::write(&files[1], corrupted).unwrap();
        let name = |file: &PathBuf| file.strip_prefix(bucket.join("msgd-backups/objects")).unwrap().display().to_string();

        let quick = backup(&api.env, &["verify", "--latest"]);
        assert_eq!(quick.code, 1, "{}", quick.stderr);
        assert_eq!(quick.json()["problems"].as_array().unwrap().len(), 1, "sizes alone miss the corruption");
        let full = backup(&api.env, &["verify", &id, "--full"]);
        assert_eq!(full.code, 1);
        let problems = full.json()["problems"].clone();
        let keys: Vec<&str> = problems.as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap()).collect();
        assert_eq!(keys, vec![name(&files[0]), name(&files[1])], "{backend:?}: {problems}");
        assert!(full.stderr.contains(&name(&files[0])) && full.stderr.contains(&name(&files[1])), "{}", full.stderr);

        std::fs::remove_file(bucket.join(format!("msgd-backups/backups/{id}/manifest.json"))).unwrap();
        let fresh = fresh_like(&api.env, backend).await;
        let out = backup(&fresh, &["restore", &id]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains("incomplete"), "{}", out.stderr);
        assert_eq!(backup_ok(&api.env, &["list"])[0]["complete"], false);
    }
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

backend_test! {
    /// SIGKILL right after a run copied its first object; the next run
    /// completes, copies only the rest, and prunes the incomplete backup.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_run_resumes_without_copying_twice(backend: Backend) {
        let Some((target, _)) = backup_target() else { return };
        let api = start(backend, &target).await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        for _ in 0..3 {
            send_and_flush(&api, &alice, &conversation, 2).await;
        }
        let mut command = api.env.command(&["backup-r2", "run"]);
        command.env("MSGD_BACKUP__FAILPOINT", "after-first-copy");
        let mut crashing = Msgd::spawn(command, api.env.dir.path());
        let stopped = eventually(Duration::from_secs(20), async || {
            crashing.log_lines().iter().any(|line| line["failpoint"] == "after-first-copy")
        })
        .await;
        assert!(stopped, "{}", crashing.log_text());
        crashing.child.kill().unwrap();
        crashing.child.wait().unwrap();
        assert_eq!(backup_ok(&api.env, &["list"])[0]["complete"], false);

        let resumed = backup_ok(&api.env, &["run"]);
        assert_eq!((resumed["objects"].as_u64(), resumed["objects_copied"].as_u64()), (Some(3), Some(2)), "{resumed}");
        // The killed run's leftovers stay for a day (it could be a run still going elsewhere), never used.
        assert_eq!(resumed["pruned"]["backups_deleted"], 0, "{resumed}");
        let listed = backup_ok(&api.env, &["list"]);
        let complete: Vec<bool> = listed.as_array().unwrap().iter().map(|b| b["complete"] == true).collect();
        assert_eq!(complete, vec![false, true], "{listed}");
        assert_eq!(backup_ok(&api.env, &["verify", "--latest", "--full"])["problems"], json!([]));
    }
}

backend_test! {
    /// A segment ten days old, backed up under a 30-day window: a deployment
    /// with a 7-day window restores everything but it, and its prune deletes
    /// the copy; nothing older than the window comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_holds_inside_backups(backend: Backend) {
        use msgd::store::{AppendOutcome, AppendRequest};
        let Some((target, _)) = backup_target() else { return };
        let api = start(backend, &target).await;
        let alice = api.token("alice").await;
        let (old, new) = (api.conversation(&alice, &[]).await, api.conversation(&alice, &[]).await);
        let stores = api.stores().await;
        let conv = api.conv_key(&old);
        stores.tail.seed_seq(&conv, 0).await.unwrap();
        let ts = msgd::clock::now_ms() - 10 * 86_400_000;
        let envelope = json!({"v": 1, "id": uuid::Uuid::now_v7().to_string(), "conversation_id": old, "ts": ts,
                              "sender": {"kind": "user", "id": "alice"}, "payload": "ten days ago", "attachments": []});
        let request = AppendRequest { conv, ts_ms: ts, body: serde_json::to_vec(&envelope).unwrap(), idempotency: None };
        assert!(matches!(stores.tail.append(&request).await.unwrap(), AppendOutcome::Appended(_)));
        let out = api.env.run(&["flush", "--all"], "");
        assert_eq!(out.code, 0, "{}", out.stderr);
        send_and_flush(&api, &alice, &new, 2).await;
        assert_eq!(backup_ok(&api.env, &["run"])["objects"], 2);

        let mut week = fresh_like(&api.env, backend).await;
        week.set("MSGD_RETENTION__PERIOD", "7d");
        let restored = backup_ok(&week, &["restore", "--latest"]);
        assert_eq!((restored["objects_restored"].as_u64(), restored["objects_expired"].as_u64()), (Some(1), Some(1)));
        let stores = msgd::store::Stores::open(&week.config(), &msgd::telemetry::Metrics::new("test")).await.unwrap();
        let objects = stores.objects.list("segments/").await.unwrap();
        assert_eq!(objects.len(), 1, "{backend:?}: only the new segment is restored");
        assert!(stores.metadata.blocks_of_conversation(&api.conv_key(&old)).await.unwrap().is_empty());
        let verified = backup_ok(&week, &["verify", "--latest", "--full"]);
        assert_eq!((verified["objects_expired"].as_u64(), &verified["problems"]), (Some(1), &json!([])));
        let pruned = backup_ok(&week, &["prune"]);
        assert_eq!(pruned["objects_deleted"], 1, "{pruned}");
    }
}

backend_test! {
    /// Compaction between two backups: the second lists the compaction segment
    /// in place of the flush segments it replaced, and its restore reads every
    /// message once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_after_compaction_restores_every_message_once(backend: Backend) {
        const HOUR: i64 = 3_600_000;
        let Some((target, _)) = backup_target() else { return };
        let mut vars: Vec<(&str, &str)> = target.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        vars.push(("MSGD_FLUSH__COMPACT_WINDOW", "2h"));
        let mut history = History::new(backend, &vars).await;
        let now = msgd::clock::now_ms();
        let start = (now - 10 * HOUR).div_euclid(2 * HOUR) * 2 * HOUR;
        let talk = conversation();
        for flush in 0..8 {
            let at = start + flush * 15 * 60_000;
            history.append(&talk, &[at, at + 1000]).await;
            history.flush_at(at + 60_000).await;
        }
        let first = backup_ok(&history.env, &["run"]);
        assert_eq!(first["objects"].as_u64(), Some(8), "{first}");
        let compacted = history.flusher(history.config.flush.clone()).compact(now, 16).await.unwrap();
        assert_eq!((compacted.segments_in, compacted.segments_out), (8, 1), "{compacted:?}");
        let second = backup_ok(&history.env, &["run"]);
        assert_eq!((second["objects"].as_u64(), second["objects_copied"].as_u64()), (Some(1), Some(1)), "{second}");

        let fresh = fresh_like(&history.env, backend).await;
        let restored = backup_ok(&fresh, &["restore", "--latest"]);
        assert_eq!(restored["segments_indexed"].as_u64(), Some(1), "{restored}");
        let config = fresh.config();
        let stores = msgd::store::Stores::open(&config, &msgd::telemetry::Metrics::new("test")).await.unwrap();
        let timeline = msgd::timeline::Timeline::new(stores, msgd::telemetry::Metrics::new("test"), 0, config.retention.period_ms());
        let conv = msgd::store::ConvKey::new(&history.app_id, talk.as_str());
        let read = timeline.read(&conv, 1, 16, i64::MIN).await.unwrap();
        let read: Vec<(u64, i64)> = read.iter().map(|e| (e.seq, e.ts)).collect();
        let sent: Vec<(u64, i64)> = history.sent[&talk].iter().enumerate().map(|(i, ts)| (i as u64 + 1, *ts)).collect();
        assert_eq!(read, sent, "{backend:?}: every message once, in order");
    }
}
