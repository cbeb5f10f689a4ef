//! Segments end to end: the flush through `msgd flush` and the `serve`
//! ticker, an object store outage, a crash between PUT and commit, two
//! instances flushing at once, and `--reindex` — each ending with the same
//! check: every seq in exactly one block, blocks' ts ranges matching their
//! messages, no object left unindexed.

use std::collections::BTreeMap;
use std::time::Duration;

use msgd::store::ConvKey;
use serde_json::json;

use crate::support::api::Api;
use crate::support::history::drop_index;
use crate::support::servers::PrivateS3;
use crate::support::{backend_test, eventually, services_test, unique, Backend, ServicesEnv, TestEnv};

/// Checks the index and the objects of `api`'s deployment: for each
/// conversation, blocks cover exactly 1..=last seq; every block decodes to
/// the right envelopes with ts inside its range; every object is indexed.
async fn assert_history(api: &Api, expected: &BTreeMap<String, u64>) {
    let stores = api.stores().await;
    let meta = stores.metadata.as_ref();
    let keys = stores.objects.list("segments/").await.unwrap();
    let mut objects = BTreeMap::new();
    for key in &keys {
        let row = meta.segment_by_key(key).await.unwrap();
        let row = row.unwrap_or_else(|| panic!("object {key} has no index rows"));
        objects.insert(row.id.clone(), (key.clone(), stores.objects.get(key).await.unwrap()));
    }
    for (conversation, last) in expected {
        let blocks = meta.blocks_of_conversation(&ConvKey::new(&api.app_id, conversation.as_str())).await.unwrap();
        let mut next = 1;
        for block in &blocks {
            assert_eq!(block.seq_start as u64, next, "blocks of {conversation} overlap or leave a hole: {blocks:?}");
            next = block.seq_end as u64 + 1;
            let (key, bytes) = &objects[&block.segment_id];
            let segment = msgd::segment::Segment::parse(bytes).unwrap();
            let meta_block = segment
                .footer
                .blocks
                .iter()
                .find(|b| b.offset as i64 == block.byte_offset)
                .unwrap_or_else(|| panic!("{key} has no block at offset {}", block.byte_offset));
            let records = segment.block(meta_block).unwrap();
            assert_eq!(records.len() as i64, block.record_count);
            let mut ts = Vec::new();
            for (i, record) in records.iter().enumerate() {
                let seq = block.seq_start as u64 + i as u64;
                let envelope = msgd::envelope::decode_record(segment.header.codec, seq, record).unwrap();
                assert_eq!((envelope.seq, envelope.conversation_id.as_str()), (seq, conversation.as_str()));
                ts.push(envelope.ts);
            }
            assert_eq!(block.ts_start, *ts.iter().min().unwrap(), "ts_start of {conversation}@{}", block.seq_start);
            assert_eq!(block.ts_end, *ts.iter().max().unwrap(), "ts_end of {conversation}@{}", block.seq_start);
        }
        assert_eq!(next - 1, *last, "{conversation}: blocks end at {} not {last}", next - 1);
        assert_eq!(meta.flushed_seq(&ConvKey::new(&api.app_id, conversation.as_str())).await.unwrap(), *last);
    }
}

/// Sends `count` messages to each conversation (as its owner).
async fn send_many(api: &Api, token: &str, conversations: &[String], count: usize, sent: &mut BTreeMap<String, u64>) {
    for conversation in conversations {
        for n in 0..count {
            let reply = api.send(token, conversation, &json!({"payload": {"n": n}})).await;
            assert_eq!(reply.status, 201, "{}", reply.body);
            sent.insert(conversation.clone(), reply.body["seq"].as_u64().unwrap());
        }
    }
}

fn flush(api: &Api, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["flush", "--json"];
    full.extend_from_slice(args);
    let out = api.env.run(&full, "");
    assert_eq!(out.code, 0, "msgd flush {args:?}: {}", out.stderr);
    out.json()
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushing_indexes_every_seq_once_and_reindex_restores_the_index(backend: Backend) {
        // The ticker stays out of the way (1 h); `msgd flush` does the work.
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "10")]).await;
        let token = api.token("alice").await;
        let conversations = vec![
            api.conversation(&token, &[]).await,
            api.conversation(&token, &[]).await,
            api.conversation(&token, &[]).await,
        ];
        let mut sent = BTreeMap::new();
        send_many(&api, &token, &conversations, 50, &mut sent).await;

        let planned = flush(&api, &["--all", "--dry-run"]);
        assert_eq!(planned["segments"][0]["records"], 150, "{planned}");
        let stores = api.stores().await;
        assert!(stores.objects.list("segments/").await.unwrap().is_empty(), "{backend:?}: a dry run writes nothing");

        let report = flush(&api, &["--all"]);
        assert_eq!(report["segments"].as_array().unwrap().len(), 1, "one object per app per flush: {report}");
        assert_eq!(report["trimmed"], 3 * 40, "{backend:?}: the tail keeps the hot window of 10");
        let tail = stores.tail.read(&api.conv_key(&conversations[0]), 0, 100).await.unwrap();
        assert_eq!(tail.first().map(|e| e.seq), Some(41));

        send_many(&api, &token, &conversations[..1], 20, &mut sent).await;
        flush(&api, &["--all"]);
        assert_history(&api, &sent).await;
        let before: Vec<_> = {
            let mut all = Vec::new();
            for c in &conversations {
                all.extend(stores.metadata.blocks_of_conversation(&ConvKey::new(&api.app_id, c.as_str())).await.unwrap());
            }
            all
        };
        assert_eq!(before.len(), 4);

        // Metadata lost, objects kept: --reindex rebuilds the same index.
        drop_index(&api.env).await;
        assert!(stores.metadata.blocks_of_conversation(&ConvKey::new(&api.app_id, conversations[0].as_str())).await.unwrap().is_empty());
        let reindexed = flush(&api, &["--reindex"]);
        assert_eq!((reindexed["objects"].as_u64(), reindexed["indexed"].as_u64()), (Some(2), Some(2)), "{reindexed}");
        let mut after = Vec::new();
        for c in &conversations {
            after.extend(stores.metadata.blocks_of_conversation(&ConvKey::new(&api.app_id, c.as_str())).await.unwrap());
        }
        assert_eq!(after, before, "{backend:?}: reindexing restores identical block rows");
        assert_history(&api, &sent).await;

        let out = api
            .env
            .run(&["inspect-segment", &stores.objects.list("segments/").await.unwrap()[0], "--verify", "--json"], "");
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.json()["problems"].as_array().unwrap().is_empty());
    }
}

services_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_store_outage_fails_the_flush_trims_nothing_and_recovers(services: ServicesEnv) {
        let bucket = "outage";
        let mut s3 = PrivateS3::start(&services, bucket);
        let endpoint = s3.endpoint();
        let api = Api::start_with(
            Backend::Services,
            &[
                ("MSGD_S3__ENDPOINT", &endpoint),
                ("MSGD_S3__BUCKET", bucket),
                ("MSGD_FLUSH__INTERVAL", "200ms"),
                ("MSGD_FLUSH__MAX_AGE", "0s"),
                ("MSGD_FLUSH__HOT_WINDOW", "0"),
            ],
        )
        .await;
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &[]).await;
        let mut sent = BTreeMap::new();
        send_many(&api, &token, std::slice::from_ref(&conversation), 20, &mut sent).await;
        let stores = api.stores().await;
        let conv = api.conv_key(&conversation);
        let flushed = eventually(Duration::from_secs(15), async || {
            stores.metadata.flushed_seq(&ConvKey::new(&api.app_id, &conversation)).await.unwrap() == 20
        })
        .await;
        assert!(flushed, "{}", api.msgd.log_text());

        s3.stop();
        send_many(&api, &token, std::slice::from_ref(&conversation), 20, &mut sent).await;
        let failed = eventually(Duration::from_secs(15), async || {
            api.msgd
                .log_lines()
                .iter()
                .any(|l| l["message"] == "segment flush tick failed" && l["stage"] == "object-put")
        })
        .await;
        assert!(failed, "a failed object-put is logged with its stage:\n{}", api.msgd.log_text());
        assert_eq!(stores.tail.read(&conv, 20, 100).await.unwrap().len(), 20, "nothing unflushed was trimmed");
        assert_eq!(stores.metadata.flushed_seq(&ConvKey::new(&api.app_id, &conversation)).await.unwrap(), 20);

        s3.resume();
        let recovered = eventually(Duration::from_secs(30), async || {
            stores.metadata.flushed_seq(&ConvKey::new(&api.app_id, &conversation)).await.unwrap() == 40
        })
        .await;
        assert!(recovered, "the flush retries once the store is back:\n{}", api.msgd.log_text());
        assert_history(&api, &sent).await;
        let metrics = reqwest::get(api.msgd.url("/metrics")).await.unwrap().text().await.unwrap();
        assert!(
            metrics.contains(r#"msgd_flush_ticks_total{result="error"}"#)
                && metrics.contains(r#"msgd_flush_ticks_total{result="ok"}"#)
        );
        assert!(metrics.contains(r#"msgd_object_store_requests_total{op="put",result="error"}"#), "{metrics}");
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_between_put_and_commit_loses_nothing(backend: Backend) {
        let mut api = Api::start_with(
            backend,
            &[("MSGD_FLUSH__INTERVAL", "200ms"), ("MSGD_FLUSH__MAX_AGE", "0s"), ("MSGD_FLUSH__FAILPOINT", "after-put")],
        )
        .await;
        let token = api.token("alice").await;
        let conversations = vec![api.conversation(&token, &[]).await, api.conversation(&token, &[]).await];
        let mut sent = BTreeMap::new();
        send_many(&api, &token, &conversations, 30, &mut sent).await;
        let stopped = eventually(Duration::from_secs(15), async || {
            api.msgd.log_lines().iter().any(|l| l["failpoint"] == "after-put")
        })
        .await;
        assert!(stopped, "{}", api.msgd.log_text());
        // SIGKILL: no shutdown path runs.
        api.msgd.child.kill().unwrap();
        api.msgd.child.wait().unwrap();

        let stores = api.stores().await;
        let orphans = stores.objects.list("segments/").await.unwrap();
        assert_eq!(orphans.len(), 1, "{backend:?}: the PUT happened");
        assert!(stores.metadata.segment_by_key(&orphans[0]).await.unwrap().is_none(), "and the commit did not");

        // Restart without the failpoint: recovery indexes the orphan from its footer.
        api.env.vars.retain(|(k, _)| k != "MSGD_FLUSH__FAILPOINT");
        api.msgd = api.env.serve();
        let indexed = eventually(Duration::from_secs(15), async || {
            stores.metadata.segment_by_key(&orphans[0]).await.unwrap().is_some()
        })
        .await;
        assert!(indexed, "{}", api.msgd.log_text());
        send_many(&api, &token, &conversations, 10, &mut sent).await;
        // The crashed instance's shard leases lapse (15 s) before anyone flushes them again.
        let caught_up = eventually(Duration::from_secs(40), async || {
            for conversation in &conversations {
                if stores.metadata.flushed_seq(&ConvKey::new(&api.app_id, conversation)).await.unwrap() != 40 {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(caught_up, "{}", api.msgd.log_text());
        assert_history(&api, &sent).await;
    }
}

services_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_flushing_at_once_index_every_seq_once(_: ServicesEnv) {
        let vars = [("MSGD_FLUSH__INTERVAL", "50ms"), ("MSGD_FLUSH__MAX_AGE", "0s"), ("MSGD_FLUSH__HOT_WINDOW", "0")];
        let api = Api::start_with(Backend::Services, &vars).await;
        let second = api.second_instance();
        let token = api.token("alice").await;
        let mut conversations = Vec::new();
        for _ in 0..4 {
            conversations.push(api.conversation(&token, &[]).await);
        }
        let path = |c: &str| format!("/v1/conversations/{c}/messages");
        let mut sent = BTreeMap::new();
        for n in 0..100 {
            for conversation in &conversations {
                let instance = if n % 2 == 0 { &api.msgd } else { &second };
                let body = json!({"payload": {"n": n}});
                let reply = api
                    .request_to(
                        instance,
                        reqwest::Method::POST,
                        &path(conversation),
                        Some(&api.write_key),
                        Some(&token),
                        Some(&body),
                        &[],
                    )
                    .await;
                assert_eq!(reply.status, 201, "{}", reply.body);
                sent.insert(conversation.clone(), reply.body["seq"].as_u64().unwrap());
            }
        }
        let stores = api.stores().await;
        let done = eventually(Duration::from_secs(20), async || {
            let mut all = true;
            for c in &conversations {
                all &= stores.metadata.flushed_seq(&ConvKey::new(&api.app_id, c.as_str())).await.unwrap() == 100;
            }
            all
        })
        .await;
        assert!(done, "{}", api.msgd.log_text());
        assert_history(&api, &sent).await;
    }
}

backend_test! {
    #[tokio::test]
    async fn a_replay_after_the_tail_was_trimmed_answers_from_segments(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "0")]).await;
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &[]).await;
        let body = json!({"payload": {"text": "once"}, "client_msg_id": "k-1"});
        let first = api.send(&token, &conversation, &body).await;
        assert_eq!(first.status, 201);
        flush(&api, &["--all"]);
        let stores = api.stores().await;
        assert!(stores.tail.read(&api.conv_key(&conversation), 0, 10).await.unwrap().is_empty(), "trimmed");
        let again = api.send(&token, &conversation, &body).await;
        assert_eq!(
            (again.status, &again.body),
            (200, &first.body),
            "{backend:?}: the original, read back from its segment"
        );
    }
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/segment-v1.seg");

/// `msgd inspect-segment` with its address space capped at 2 GiB: reading a
/// larger object whole would fail to allocate.
fn inspect_capped(env: &TestEnv, args: &[&str]) -> crate::support::Output {
    let mut command = std::process::Command::new("bash");
    command.args(["-c", r#"ulimit -v 2097152 && exec "$0" inspect-segment "$@""#, crate::support::MSGD]).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("MSGD_") {
            command.env_remove(name);
        }
    }
    command.envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    crate::support::run_command(command, "")
}

backend_test! {
    #[tokio::test]
    async fn inspect_segment_reads_by_range_and_names_truncation(backend: Backend) {
        let golden = std::fs::read(GOLDEN).unwrap();
        let env = TestEnv::new(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let local = |name: &str, bytes: &[u8], len: u64| {
            let path = dir.path().join(name);
            let file = std::fs::File::create(&path).unwrap();
            std::io::Write::write_all(&mut &file, bytes).unwrap();
            file.set_len(len).unwrap();
            path.display().to_string()
        };
        // 8 GiB sparse files: not a segment at all, and a segment's header with nothing after it.
        const HUGE: u64 = 8 << 30;
        for (path, expected) in [
            (local("zeros.seg", &[], HUGE), "bad magic"),
            (local("header-only.seg", &golden[..16], HUGE), "truncated"),
            (local("short.seg", &golden[..30], 30), "truncated"),
            (local("cut.seg", &golden[..golden.len() - 10], golden.len() as u64 - 10), "truncated"),
        ] {
            let out = inspect_capped(&env, &[&path]);
            assert_eq!(out.code, 1, "{backend:?} {path}: {}", out.stderr);
            assert!(out.stderr.contains(expected), "{backend:?} {path}: expected `{expected}`: {}", out.stderr);
        }

        // The same through the object store, by ranged reads.
        let stores = msgd::store::Stores::open(&env.config(), &msgd::telemetry::Metrics::new("test")).await.unwrap();
        let (whole, cut) = ("segments/app_golden/whole.seg", "segments/app_golden/cut.seg");
        stores.objects.put(whole, golden.clone()).await.unwrap();
        stores.objects.put(cut, golden[..golden.len() - 10].to_vec()).await.unwrap();
        let out = env.run(&["inspect-segment", cut], "");
        assert_eq!(out.code, 1, "{backend:?}: {}", out.stderr);
        assert!(out.stderr.contains("truncated"), "{backend:?}: {}", out.stderr);
        let out = env.run(&["inspect-segment", whole, "--json"], "");
        assert_eq!(out.code, 0, "{backend:?}: {}", out.stderr);
        let report = out.json();
        assert_eq!(
            (report["bytes"].as_u64(), report["blocks"].as_array().unwrap().len()),
            (Some(golden.len() as u64), 2)
        );
        // Records are shown with the index's edits and deletes applied: the
        // database must be migrated, as any command but inspection does.
        assert_eq!(env.run(&["keys", "list"], "").code, 0);
        let records = env.run(&["inspect-segment", whole, "--records"], "");
        assert_eq!((records.code, records.stdout.lines().count()), (0, 3), "{}", records.stderr);

        // A conversation the segment does not hold is an error, not an empty table.
        for extra in [&[][..], &["--records"][..], &["--json"][..]] {
            let mut args = vec!["inspect-segment", whole, "--conversation", "nope"];
            args.extend_from_slice(extra);
            let out = env.run(&args, "");
            assert_eq!(out.code, 1, "{backend:?} {extra:?}: {}", out.stdout);
            assert!(out.stderr.contains("no block of conversation `nope`"), "{}", out.stderr);
        }
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inspect_segment_verify_gives_a_verdict_and_never_skips_the_index_silently(backend: Backend) {
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "0")]).await;
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &[]).await;
        send_many(&api, &token, std::slice::from_ref(&conversation), 5, &mut BTreeMap::new()).await;
        flush(&api, &["--all"]);
        let stores = api.stores().await;
        let key = stores.objects.list("segments/").await.unwrap().remove(0);

        let out = api.env.run(&["inspect-segment", &key, "--verify"], "");
        assert_eq!(out.code, 0, "{backend:?}: {}", out.stderr);
        assert!(out.stdout.contains("verified: 1 block(s)"), "{backend:?}: no verdict:\n{}", out.stdout);
        assert!(out.stdout.contains("┆ 1-5 "), "seqs as people write them:\n{}", out.stdout);
        let out = api.env.run(&["inspect-segment", &key, "--verify", "--json"], "");
        assert_eq!((out.code, &out.json()["verified"]), (0, &json!(true)), "{}", out.stderr);

        // A copy outside the object store has no index rows: --verify says so and fails.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.seg");
        std::fs::write(&copy, stores.objects.get(&key).await.unwrap()).unwrap();
        let copy = copy.display().to_string();
        let out = api.env.run(&["inspect-segment", &copy, "--verify"], "");
        assert_eq!(out.code, 1, "{backend:?}: {}", out.stdout);
        assert!(out.stderr.contains("index was not checked"), "{}", out.stderr);
        assert!(!out.stdout.contains("verified:"), "{}", out.stdout);
        let out = api.env.run(&["inspect-segment", &copy], "");
        assert_eq!(out.code, 0, "without --verify a copy's checksums are checked: {}", out.stderr);

        // In embedded mode the object's own file is its key: the index is checked.
        if backend == Backend::Embedded {
            let file = api.env.config().data_dir.join("objects").join(&key).display().to_string();
            let out = api.env.run(&["inspect-segment", &file, "--verify"], "");
            assert_eq!(out.code, 0, "{}", out.stderr);
            assert!(out.stdout.contains("verified:"), "{}", out.stdout);
        }
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_dry_run_shows_what_waits_and_what_would_be_trimmed(backend: Backend) {
        // Thresholds far away: nothing is due without --all.
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h"), ("MSGD_FLUSH__HOT_WINDOW", "10")]).await;
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &[]).await;
        send_many(&api, &token, std::slice::from_ref(&conversation), 35, &mut BTreeMap::new()).await;

        let waiting = flush(&api, &["--dry-run"]);
        let listed = &waiting["waiting"][0];
        assert_eq!(
            (listed["conversation_id"].as_str(), listed["messages"].as_u64(), listed["due"].as_bool()),
            (Some(conversation.as_str()), Some(35), Some(false)),
            "{backend:?}: {waiting}"
        );
        let out = api.env.run(&["flush", "--dry-run"], "");
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains(&conversation), "{backend:?}: the dry run shows what waits:\n{}", out.stdout);
        assert!(out.stdout.contains("waits"), "{}", out.stdout);

        let planned = flush(&api, &["--dry-run", "--all"]);
        assert_eq!((planned["would_trim"].as_u64(), planned["trimmed"].as_u64()), (Some(25), Some(0)), "{planned}");
        let out = api.env.run(&["flush", "--dry-run", "--all"], "");
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains("would trim 25 tail entries"), "{backend:?}:\n{}", out.stdout);
        assert!(!out.stdout.contains("trimmed") && !out.stdout.contains("..="), "{}", out.stdout);
        assert!(out.stdout.contains("┆ 1-35 "), "{}", out.stdout);

        let done = flush(&api, &["--all"]);
        assert_eq!(done["trimmed"], 25, "the dry run's count is what the flush trims: {done}");
    }
}

services_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_bucket_is_created_and_flushed_into(services: ServicesEnv) {
        let bucket = unique("fresh-");
        let api =
            Api::start_with(Backend::Services, &[("MSGD_S3__BUCKET", &bucket), ("MSGD_FLUSH__INTERVAL", "1h")]).await;
        let ready = eventually(Duration::from_secs(15), async || {
            reqwest::get(api.msgd.url("/readyz")).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        let readyz = reqwest::get(api.msgd.url("/readyz")).await.unwrap().text().await.unwrap();
        assert!(ready, "/readyz: {readyz}\n{}", api.msgd.log_text());
        assert!(services.s3_root.join(&bucket).is_dir(), "the bucket exists on the server");
        let token = api.token("alice").await;
        let conversation = api.conversation(&token, &[]).await;
        send_many(&api, &token, std::slice::from_ref(&conversation), 3, &mut BTreeMap::new()).await;
        flush(&api, &["--all"]);
        assert_eq!(api.stores().await.objects.list("segments/").await.unwrap().len(), 1);
    }
}
