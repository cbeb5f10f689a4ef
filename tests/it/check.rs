//! The consistency check (`msgd flush --check`, and serve's recovery worker)
//! on both backends, against damage done to the real stores: a lost counter
//! is seeded (the next message does not reuse a seq), lost index rows are
//! rebuilt from the objects, and seqs in neither the tail nor the segments
//! are reported as lost, by the CLI (exit 1) and by serve's metric, until an
//! operator accepts the loss.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::api::Api;
use crate::support::{backend_test, sample, scrape, Backend, Output};
use msgd::store::ConvKey;

/// Sends `count` messages; returns the last seq.
async fn send(api: &Api, token: &str, conversation: &str, count: u64) -> u64 {
    let mut seq = 0;
    for n in 0..count {
        let reply = api.send(token, conversation, &json!({"payload": n})).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        seq = reply.body["seq"].as_u64().unwrap();
    }
    seq
}

fn flush_all(api: &Api) {
    let out = api.env.run(&["flush", "--all"], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
}

fn check(api: &Api, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["flush", "--check", "--json"];
    args.extend_from_slice(extra);
    let out = api.env.run(&args, "");
    let report = out.json();
    (out, report)
}

/// The lost ranges of a report as (conversation, from, to, lost_in), sorted.
fn lost(report: &Value) -> Vec<(String, u64, u64, String)> {
    let mut ranges: Vec<_> = report["lost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap().to_string();
            (text("conversation_id"), r["from"].as_u64().unwrap(), r["to"].as_u64().unwrap(), text("lost_in"))
        })
        .collect();
    ranges.sort();
    ranges
}

/// Damages the tail as a failing Redis (or disk) would: one statement for
/// SQLite, one command for Redis.
async fn damage_tail(api: &Api, conv: &ConvKey, sqlite: &str, redis_args: &[&str]) {
    match api.env.backend {
        Backend::Embedded => {
            let path = api.env.config().data_dir.join(msgd::store::SQLITE_FILE);
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
            let done = sqlx::query(sqlx::AssertSqlSafe(sqlite.to_string()))
                .bind(&conv.app_id)
                .bind(&conv.conversation_id)
                .execute(&pool)
                .await
                .unwrap();
            assert!(done.rows_affected() > 0, "{sqlite}");
            pool.close().await;
        }
        Backend::Services => {
            let prefix = api.env.var("MSGD_REDIS__KEY_PREFIX").unwrap();
            let tag = format!("{prefix}:{{s{}}}", conv.shard());
            let client = redis::Client::open(api.env.var("MSGD_REDIS__URL").unwrap()).unwrap();
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            let mut command = redis::cmd(redis_args[0]);
            for arg in &redis_args[1..] {
                command.arg(
                    arg.replace("{tag}", &tag).replace("{conv}", &format!("{}:{}", conv.app_id, conv.conversation_id)),
                );
            }
            let changed: i64 = command.query_async(&mut connection).await.unwrap();
            assert!(changed > 0, "{redis_args:?}");
        }
    }
}

/// The id and object key of the segment holding `conv`'s block that starts at `seq_start`.
async fn segment_of(stores: &msgd::store::Stores, conv: &ConvKey, seq_start: i64) -> (String, String) {
    let blocks = stores.metadata.blocks_of_conversation(conv).await.unwrap();
    let block = blocks.iter().find(|b| b.seq_start == seq_start).expect("a block starting there");
    let keys = stores.objects.list("segments/").await.unwrap();
    let key = keys.into_iter().find(|k| k.contains(&block.segment_id)).expect("its object");
    (block.segment_id.clone(), key)
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_check_repairs_what_it_can_and_reports_lost_history(backend: Backend) {
        // serve flushes nothing by itself: the test decides what is in segments.
        let api = Api::start_with(backend, &[("MSGD_FLUSH__INTERVAL", "1h")]).await;
        let token = api.token("alice").await;
        // E: three segments of its own, 1-5, 6-10, 11-12.
        let e = api.conversation(&token, &[]).await;
        for count in [5, 5, 2] {
            send(&api, &token, &e, count).await;
            flush_all(&api);
        }
        // A, B, C, D: 1-5 flushed together; D also 6-10 alone; A, B, C 6-8 in the tail.
        let mut convs = Vec::new();
        for _ in 0..4 {
            let conversation = api.conversation(&token, &[]).await;
            send(&api, &token, &conversation, 5).await;
            convs.push(conversation);
        }
        flush_all(&api);
        let (a, b, c, d) = (&convs[0], &convs[1], &convs[2], &convs[3]);
        send(&api, &token, d, 5).await;
        flush_all(&api);
        for conversation in [a, b, c] {
            assert_eq!(send(&api, &token, conversation, 3).await, 8);
        }

        let (out, healthy) = check(&api, &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(healthy["conversations"], 5);
        assert!(lost(&healthy).is_empty() && healthy["counters_behind"] == 0 && healthy["index_incomplete"] == 0);

        // The damage.
        let (ka, kb, kc) = (api.conv_key(a), api.conv_key(b), api.conv_key(c));
        let where_conv = "WHERE app_id = $1 AND conversation_id = $2";
        // A: the counter is gone.
        damage_tail(&api, &ka, &format!("DELETE FROM tail_counters {where_conv}"), &["DEL", "{tag}:seq:{conv}"]).await;
        // B: seq 7 is gone from the tail (a hole the flush refuses).
        damage_tail(&api, &kb, &format!("DELETE FROM tail_entries {where_conv} AND seq = 7"), &["XDEL", "{tag}:log:{conv}", "7-0"])
            .await;
        // C: its newest, 7 and 8, are gone; the counter still says 8.
        damage_tail(&api, &kc, &format!("DELETE FROM tail_entries {where_conv} AND seq > 6"), &["XDEL", "{tag}:log:{conv}", "7-0", "8-0"])
            .await;
        let stores = api.stores().await;
        // D: the index rows of 6-10 are gone, the object is not.
        let (d_segment, _) = segment_of(&stores, &api.conv_key(d), 6).await;
        stores.metadata.delete_segments(&[d_segment]).await.unwrap();
        // E: 6-10 are gone, rows and object.
        let (e_segment, e_key) = segment_of(&stores, &api.conv_key(&e), 6).await;
        stores.metadata.delete_segments(&[e_segment]).await.unwrap();
        stores.objects.delete(&e_key).await.unwrap();

        let tail_losses = vec![(b.clone(), 7, 7, "tail".to_string()), (c.clone(), 7, 8, "tail".to_string())];
        let (out, dry) = check(&api, &["--dry-run"]);
        assert_eq!(out.code, 1, "lost history fails the run");
        assert_eq!(lost(&dry), sorted(tail_losses.clone()), "a dry run cannot tell what a reindex restores");
        assert_eq!((dry["counters_behind"].as_u64(), dry["index_incomplete"].as_u64()), (Some(1), Some(2)));
        assert_eq!(dry["reindexed"], false);

        let (out, repaired) = check(&api, &[]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        let mut expected = tail_losses;
        expected.push((e.clone(), 6, 10, "segments".to_string()));
        assert_eq!(lost(&repaired), sorted(expected));
        assert_eq!(repaired["reindexed"], true);
        assert!(out.stderr.contains("8 acknowledged seq(s)"), "{}", out.stderr);

        // Repaired: A continues after its last seq; D reads whole again.
        assert_eq!(send(&api, &token, a, 1).await, 9, "the seeded counter does not reuse a seq");
        let history = api
            .request(reqwest::Method::GET, &format!("/v1/conversations/{d}/messages?limit=50"), Some(&api.write_key), Some(&token), None, &[])
            .await;
        let seqs: Vec<u64> = history.body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        let (out, again) = check(&api, &[]);
        assert_eq!((out.code, again["counters_behind"].as_u64(), again["index_incomplete"].as_u64()), (1, Some(0), Some(1)));

        // serve's recovery worker checks (one check interval after start) and exports what is lost.
        let mut env = crate::support::TestEnv { backend, dir: tempfile::tempdir().unwrap(), vars: api.env.vars.clone() };
        env.set("MSGD_FLUSH__CHECK_INTERVAL", "1s");
        env.set("MSGD_FLUSH__INTERVAL", "1s");
        let other = env.serve();
        let mut exported = None;
        for _ in 0..300 {
            exported = sample(&scrape(&other).await, "msgd_recovery_lost_seqs");
            if exported == Some(8.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(exported, Some(8.0));
        let logged = other.log_lines().into_iter().filter(|l| l["message"] == "acknowledged messages lost: in neither the tail nor the segments");
        assert_eq!(logged.count(), 3);

        // Accepted, the loss is no longer reported.
        let accept = api.env.run(&["flush", "--check", "--accept-loss"], "");
        assert_eq!(accept.code, 0, "{}", accept.stderr);
        let (out, accepted) = check(&api, &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!((lost(&accepted).len(), accepted["accepted"].as_u64()), (0, Some(3)));
        assert_eq!(accepted["reindexed"], false, "an accepted gap costs no reindex");
    }
}

fn sorted(mut ranges: Vec<(String, u64, u64, String)>) -> Vec<(String, u64, u64, String)> {
    ranges.sort();
    ranges
}
