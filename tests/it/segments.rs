//! Segments end to end: the flush through `msgd flush` and the `serve`
//! ticker, an object store outage, a crash between PUT and commit, two
//! instances flushing at once, and `--reindex` — each ending with the same
//! check: every seq in exactly one block, blocks' ts ranges matching their
//! messages, no object left unindexed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::api::Api;
use crate::support::{backends, eventually, services_env, Backend, PrivateS3};

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
        let blocks = meta.blocks_of_conversation(&api.app_id, conversation).await.unwrap();
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
                let envelope = msgd::messages::decode_record(segment.header.codec, seq, record).unwrap();
                assert_eq!((envelope.seq, envelope.conversation_id.as_str()), (seq, conversation.as_str()));
                ts.push(envelope.ts);
            }
            assert_eq!(block.ts_start, *ts.iter().min().unwrap(), "ts_start of {conversation}@{}", block.seq_start);
            assert_eq!(block.ts_end, *ts.iter().max().unwrap(), "ts_end of {conversation}@{}", block.seq_start);
        }
        assert_eq!(next - 1, *last, "{conversation}: blocks end at {} not {last}", next - 1);
        assert_eq!(meta.flushed_seq(&api.app_id, conversation).await.unwrap(), *last);
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

async fn drop_index(api: &Api) {
    match api.env.backend {
        Backend::Embedded => {
            let path = api.env.config().data_dir.join("msgd.sqlite");
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
            for table in ["segment_blocks", "segments", "flush_state"] {
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}"))).execute(&pool).await.unwrap();
            }
        }
        Backend::Services => {
            let pool = sqlx::PgPool::connect(api.env.var("MSGD_POSTGRES__URL").unwrap()).await.unwrap();
            sqlx::query("TRUNCATE segment_blocks, segments, flush_state").execute(&pool).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushing_indexes_every_seq_once_and_reindex_restores_the_index() {
    for backend in backends() {
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
                all.extend(stores.metadata.blocks_of_conversation(&api.app_id, c).await.unwrap());
            }
            all
        };
        assert_eq!(before.len(), 4);

        // Metadata lost, objects kept: --reindex rebuilds the same index.
        drop_index(&api).await;
        assert!(stores.metadata.blocks_of_conversation(&api.app_id, &conversations[0]).await.unwrap().is_empty());
        let reindexed = flush(&api, &["--reindex"]);
        assert_eq!((reindexed["objects"].as_u64(), reindexed["indexed"].as_u64()), (Some(2), Some(2)), "{reindexed}");
        let mut after = Vec::new();
        for c in &conversations {
            after.extend(stores.metadata.blocks_of_conversation(&api.app_id, c).await.unwrap());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_outage_fails_the_flush_trims_nothing_and_recovers() {
    let Some(services) = services_env().filter(|_| backends().contains(&Backend::Services)) else { return };
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
        stores.metadata.flushed_seq(&api.app_id, &conversation).await.unwrap() == 20
    })
    .await;
    assert!(flushed, "{}", api.msgd.log_text());

    s3.stop();
    send_many(&api, &token, std::slice::from_ref(&conversation), 20, &mut sent).await;
    let failed = eventually(Duration::from_secs(15), async || {
        api.msgd.log_lines().iter().any(|l| l["message"] == "segment flush tick failed" && l["stage"] == "object-put")
    })
    .await;
    assert!(failed, "a failed object-put is logged with its stage:\n{}", api.msgd.log_text());
    assert_eq!(stores.tail.read(&conv, 20, 100).await.unwrap().len(), 20, "nothing unflushed was trimmed");
    assert_eq!(stores.metadata.flushed_seq(&api.app_id, &conversation).await.unwrap(), 20);

    s3.resume();
    let recovered = eventually(Duration::from_secs(30), async || {
        stores.metadata.flushed_seq(&api.app_id, &conversation).await.unwrap() == 40
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_put_and_commit_loses_nothing() {
    for backend in backends() {
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
            stores.metadata.flushed_seq(&api.app_id, &conversations[1]).await.unwrap() == 40
        })
        .await;
        assert!(caught_up, "{}", api.msgd.log_text());
        assert_history(&api, &sent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_flushing_at_once_index_every_seq_once() {
    if !backends().contains(&Backend::Services) {
        return;
    }
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
            all &= stores.metadata.flushed_seq(&api.app_id, c).await.unwrap() == 100;
        }
        all
    })
    .await;
    assert!(done, "{}", api.msgd.log_text());
    assert_history(&api, &sent).await;
}

#[tokio::test]
async fn a_replay_after_the_tail_was_trimmed_answers_from_segments() {
    for backend in backends() {
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
