//! Retention on both backends: forty simulated days (the clock injected into
//! flush and retention) of which exactly the window survives, to the second
//! at the boundary; SIGKILL of a real `msgd retention` at each failpoint;
//! the CLI's dry run and report; the `serve` worker deleting while the same
//! conversation flushes; two instances sharing the work. Every case ends with
//! the same physical check: every index row has its object, every object its
//! rows, and what is inside the window reads back whole and in order.

use std::time::Duration;

use msgd::clock::now_ms;
use msgd::flush::FlushOptions;
use msgd::retention::RetentionOptions;
use msgd::store::{AppendOutcome, AppendRequest};
use serde_json::json;

use crate::support::api::{create_app, Api};
use crate::support::history::{conversation, History};
use crate::support::{backend_test, eventually, sample, services_test, Backend, Msgd, ServicesEnv};

const DAY: i64 = 86_400_000;

/// (segments, their bytes, their block rows) with the newest message before `cutoff`.
async fn expired(history: &History, cutoff: i64) -> (u64, u64, u64) {
    let totals = history.stores.metadata.expired_totals(cutoff, None).await.unwrap();
    (totals.segments, totals.bytes, totals.block_rows)
}

backend_test! {
    /// Forty days, one segment a day: a run at `now` with a 30-day period
    /// deletes exactly the segments, block rows and tail entries past the
    /// window; the window reads back whole; a segment whose newest message is
    /// a second past the cutoff goes, one a second inside stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forty_days_keep_exactly_the_window(backend: Backend) {
        let now = now_ms();
        let mut history =
            History::new(backend, &[("MSGD_RETENTION__PERIOD", "30d"), ("MSGD_RETENTION__BATCH", "4")]).await;
        let cutoff = now - 30 * DAY;
        let (busy, daily, quiet, edge) = (conversation(), conversation(), conversation(), conversation());
        for day in (0..=40).rev() {
            let at = now - day * DAY;
            history.append(&busy, &[at, at + 1000, at + 2000]).await;
            history.append(&daily, &[at + 500]).await;
            if day == 40 {
                history.append(&quiet, &[at, at + 1, at + 2]).await;
            }
            history.flush_at(at + 60_000).await;
        }
        history.append(&edge, &[cutoff - 1000]).await;
        history.flush_at(now).await;
        history.append(&edge, &[cutoff + 1000]).await;
        history.flush_at(now).await;
        assert_eq!(history.segments().await.len(), 43);
        // Days 31–40 (a block each of busy and daily, and quiet's on day 40) and edge's first message.
        let (segments, bytes, block_rows) = expired(&history, cutoff).await;
        assert_eq!((segments, block_rows), (11, 22), "{backend:?}");
        let retention = history.retention();

        let dry = retention.run(&RetentionOptions { dry_run: true, ..Default::default() }, now).await.unwrap();
        // Quiet's three (all past the window, kept as its hot window) and edge's first.
        assert_eq!((dry.objects, dry.bytes, dry.block_rows, dry.tail_entries), (11, bytes, 22, 4), "{backend:?}");
        let (other_app, _) = create_app(&history.env, "other");
        let other = retention.run(&RetentionOptions { app_id: Some(other_app), ..Default::default() }, now).await.unwrap();
        assert_eq!((other.objects, other.tail_entries), (0, 0));
        assert_eq!(history.segments().await.len(), 43, "{backend:?}: a dry run or another app's run deleted");

        // A worker's run yields to the instance holding the lease; `msgd retention` (not exclusive) does not.
        let coordination = &history.stores.coordination;
        assert!(coordination.acquire_lease("retention", "another-instance", Duration::from_secs(60)).await.unwrap());
        let exclusive = RetentionOptions { exclusive: true, ..Default::default() };
        let yielded = retention.run(&exclusive, now).await.unwrap();
        assert!(yielded.skipped && yielded.objects == 0, "{backend:?}: {yielded:?}");
        coordination.release_lease("retention", "another-instance").await.unwrap();

        // A delete of busy's first message (day 40) and an edit of one inside the window.
        let (metadata, busy_conv) = (&history.stores.metadata, history.conv(&busy));
        metadata.record_delete(&busy_conv, 1, now - 40 * DAY, now).await.unwrap();
        metadata.record_edit(&busy_conv, 120, now - DAY, 124, now, "{}").await.unwrap();
        for (seq, ts) in [(1, now - 40 * DAY), (120, now - DAY)] {
            let row = msgd::store::ReactionRow {
                app_id: busy_conv.app_id.clone(),
                conversation_id: busy_conv.conversation_id.clone(),
                seq,
                reaction: "👍".into(),
                user_id: "u".into(),
                ts,
                created_at: now,
            };
            assert_eq!(metadata.add_reaction(&row, 32, 8).await.unwrap(), Some(true));
        }
        let stored_before = history.assert_index_matches_objects().await;
        let report = retention.run(&RetentionOptions::default(), now).await.unwrap();
        assert_eq!((report.message_changes, report.reactions), (1, 1), "{backend:?}");
        let reactions = metadata.reaction_counts(&busy_conv, &[1, 120], "u").await.unwrap();
        assert_eq!(reactions.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![120], "{backend:?}");
        let kept = metadata.message_changes(&busy_conv, &[1, 120]).await.unwrap();
        assert_eq!(kept.iter().map(|row| row.seq).collect::<Vec<_>>(), vec![120], "{backend:?}");
        assert_eq!((report.objects, report.bytes, report.block_rows, report.tail_entries), (11, bytes, 22, 4));
        assert!(!report.skipped);
        let segments = history.segments().await;
        assert_eq!(segments.len(), 32, "{backend:?}");
        assert!(segments.iter().all(|s| s.max_ts >= cutoff), "{backend:?}: an expired segment survived");
        assert_eq!(history.assert_index_matches_objects().await, stored_before - bytes, "{backend:?}: storage shrank");
        for conversation in [&busy, &daily, &quiet, &edge] {
            history.assert_window(conversation, cutoff).await;
        }
        assert!(history.stores.tail.read(&history.conv(&quiet), 0, 10).await.unwrap().is_empty());
        let edge_tail = history.stores.tail.read(&history.conv(&edge), 0, 10).await.unwrap();
        assert_eq!(edge_tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2], "{backend:?}");

        let again = retention.run(&RetentionOptions::default(), now).await.unwrap();
        let repeated = (again.objects, again.block_rows, again.tail_entries, again.message_changes, again.reactions);
        assert_eq!(repeated, (0, 0, 0, 0, 0), "{backend:?}: not idempotent");
        if backend == Backend::Embedded {
            assert_sqlite_returns_free_pages(&history).await;
        }
    }
}

/// The embedded file runs in incremental auto-vacuum mode and retention left
/// no free page in it.
async fn assert_sqlite_returns_free_pages(history: &History) {
    let path = history.config.data_dir.join(msgd::store::SQLITE_FILE);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&pool).await.unwrap();
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count").fetch_one(&pool).await.unwrap();
    assert_eq!((mode, free), (2, 0), "auto_vacuum incremental, no free pages");
    pool.close().await;
}

/// Days `from..=to` ago of one conversation, a segment a day (three messages
/// each, half a day after the day's start: the run's own clock, a few seconds
/// later than `now`, sees the same days past a 30-day window).
async fn days_of(history: &mut History, conversation: &str, now: i64, days: std::ops::RangeInclusive<i64>) {
    for day in days.rev() {
        let at = now - day * DAY + DAY / 2;
        history.append(conversation, &[at, at + 1000, at + 2000]).await;
        history.flush_at(at + 60_000).await;
    }
}

/// A flush that dies between its PUT and its commit: the object of messages
/// received 40 days ago stays behind unindexed, while its ranges would still
/// continue the (empty) index, so recovery could index it.
async fn leave_an_expired_orphan(history: &mut History, now: i64) {
    history.append(&conversation(), &[now - 40 * DAY]).await;
    let mut config = history.config.flush.clone();
    config.failpoint = Some("after-put".into());
    let flusher = history.flusher(config);
    let tick = flusher.tick(FlushOptions { all: true, dry_run: false }, now);
    assert!(tokio::time::timeout(Duration::from_secs(10), tick).await.is_err(), "the failpoint holds the flush");
}

backend_test! {
    /// SIGKILL of `msgd retention` between a batch's object deletes and its
    /// row deletes, and right after the rows: the next run leaves no dangling
    /// row and no orphan, touches nothing inside the window, and recovery
    /// deletes an expired orphan instead of indexing it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_inside_retention_leaves_nothing_dangling(backend: Backend) {
        for failpoint in ["after-objects", "after-rows"] {
            let now = now_ms();
            let cutoff = now - 30 * DAY;
            let mut history =
                History::new(backend, &[("MSGD_RETENTION__PERIOD", "30d"), ("MSGD_RETENTION__BATCH", "2")]).await;
            let kept = conversation();
            days_of(&mut history, &kept, now, 25..=35).await;
            leave_an_expired_orphan(&mut history, now).await;
            assert_eq!(expired(&history, cutoff).await.0, 5);

            let mut crashing = history.env.command(&["retention"]);
            crashing.env("MSGD_RETENTION__FAILPOINT", failpoint);
            let mut msgd = Msgd::spawn(crashing, history.env.dir.path());
            let stopped = eventually(Duration::from_secs(20), async || {
                msgd.log_lines().iter().any(|line| line["failpoint"] == failpoint)
            })
            .await;
            assert!(stopped, "{backend:?} {failpoint}: {}", msgd.log_text());
            msgd.child.kill().unwrap();
            msgd.child.wait().unwrap();

            let dangling = dangling_rows(&history).await;
            match failpoint {
                "after-objects" => assert_eq!(dangling, 2, "{backend:?}: the batch's objects went, its rows did not"),
                _ => assert_eq!((dangling, expired(&history, cutoff).await.0), (0, 3), "{backend:?}: one batch done"),
            }
            let recovered = history.flusher(history.config.flush.clone()).recover(cutoff).await.unwrap();
            assert_eq!((recovered.indexed, recovered.deleted), (0, 1), "{backend:?}: the expired orphan is deleted");

            let out = history.env.run(&["retention", "--json"], "");
            assert_eq!(out.code, 0, "{}", out.stderr);
            assert_eq!(expired(&history, cutoff).await, (0, 0, 0), "{backend:?} {failpoint}");
            history.assert_index_matches_objects().await;
            assert_eq!(history.segments().await.len(), 6, "{backend:?}: days 25–30 stay");
            history.assert_window(&kept, cutoff).await;
        }
    }
}

/// Index rows whose object is gone.
async fn dangling_rows(history: &History) -> usize {
    let objects = history.stores.objects.list("segments/").await.unwrap();
    history.segments().await.iter().filter(|s| !objects.contains(&s.object_key)).count()
}

backend_test! {
    /// `msgd retention`: a dry run reports and deletes nothing, a run deletes
    /// what the dry run said, `--app` must name an app, and the table names
    /// what it counts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cli_dry_runs_then_deletes_what_it_said(backend: Backend) {
        let now = now_ms();
        let mut history = History::new(backend, &[]).await;
        days_of(&mut history, &conversation(), now, 29..=32).await;

        let dry = history.env.run(&["retention", "--dry-run", "--json"], "");
        assert_eq!(dry.code, 0, "{}", dry.stderr);
        let dry = dry.json();
        assert_eq!((dry["dry_run"].as_bool(), dry["objects"].as_u64()), (Some(true), Some(2)), "{backend:?}: {dry}");
        assert_eq!(history.segments().await.len(), 4, "{backend:?}: the dry run deleted");
        let table = history.env.run(&["retention", "--dry-run"], "");
        assert!(table.stdout.contains("would delete") && table.stdout.contains("segment objects"), "{}", table.stdout);

        let unknown = history.env.run(&["retention", "--app", "app_nope"], "");
        assert_eq!(unknown.code, 2, "{}", unknown.stderr);
        assert!(unknown.stderr.contains("app_nope"), "{}", unknown.stderr);

        let run = history.env.run(&["retention", "--json"], "");
        assert_eq!(run.code, 0, "{}", run.stderr);
        let run = run.json();
        for field in ["objects", "bytes", "block_rows", "tail_entries"] {
            assert_eq!(run[field], dry[field], "{backend:?}: {field}");
        }
        assert_eq!(history.segments().await.len(), 2, "{backend:?}");
        let table = history.env.run(&["retention"], "");
        assert!(table.stdout.contains("deleted") && table.stdout.contains("cutoff"), "{}", table.stdout);
    }
}

backend_test! {
    /// `serve` with a 75-second period: messages received ten minutes ago are
    /// flushed by the flush worker and deleted by the retention worker while
    /// the same conversation keeps receiving and flushing new ones; history
    /// answers every new message, the metrics and the logs show the runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_deletes_past_the_window_while_the_conversation_flushes(backend: Backend) {
        let api = Api::start_with(
            backend,
            &[
                ("MSGD_RETENTION__PERIOD", "75s"),
                ("MSGD_RETENTION__INTERVAL", "1s"),
                ("MSGD_FLUSH__INTERVAL", "200ms"),
                ("MSGD_FLUSH__MAX_AGE", "0s"),
                // The old messages stay in the tail after their flush: retention must remove them.
                ("MSGD_FLUSH__HOT_WINDOW", "1000"),
            ],
        )
        .await;
        let alice = api.token("alice").await;
        let conversation = api.conversation(&alice, &[]).await;
        let stores = api.stores().await;
        let conv = api.conv_key(&conversation);
        stores.tail.seed_seq(&conv, 0).await.unwrap();
        let old = now_ms() - 10 * 60_000;
        for n in 0..5 {
            let envelope = json!({"v": 1, "id": uuid::Uuid::now_v7().to_string(), "conversation_id": conversation,
                                  "ts": old + n, "sender": {"kind": "user", "id": "alice"}, "payload": {"old": n},
                                  "attachments": []});
            let request =
                AppendRequest { conv: conv.clone(), ts_ms: old + n, body: serde_json::to_vec(&envelope).unwrap(), idempotency: None };
            assert!(matches!(stores.tail.append(&request).await.unwrap(), AppendOutcome::Appended(_)));
        }
        // Flushed on their own first, so their segment holds nothing newer.
        let flushed = eventually(Duration::from_secs(15), async || {
            stores.metadata.flushed_seq(&conv).await.unwrap() == 5
        })
        .await;
        assert!(flushed, "{backend:?}: {}", api.msgd.log_text());
        let mut next = 6;
        let gone = eventually(Duration::from_secs(30), async || {
            assert_eq!(api.send(&alice, &conversation, &json!({"payload": {"new": next}})).await.body["seq"], next);
            next += 1;
            let cutoff = now_ms() - 75_000;
            let in_segments = stores.metadata.blocks_of_conversation(&conv).await.unwrap();
            let tail = stores.tail.read(&conv, 0, 1000).await.unwrap();
            !in_segments.is_empty()
                && in_segments.iter().all(|b| b.ts_start >= cutoff)
                && tail.iter().all(|e| e.ts_ms >= cutoff)
        })
        .await;
        assert!(gone, "{backend:?}: old messages still stored:\n{}", api.msgd.log_text());
        let flushed = stores.metadata.flushed_seq(&conv).await.unwrap();
        assert!(flushed > 5, "{backend:?}: new messages were flushed meanwhile ({flushed})");
        let reply = api
            .request(
                reqwest::Method::GET,
                &format!("/v1/conversations/{conversation}/messages?limit=500"),
                Some(&api.read_key),
                Some(&alice),
                None,
                &[],
            )
            .await;
        let seqs: Vec<u64> = reply.body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (6..next).collect::<Vec<_>>(), "{backend:?}");

        let metrics = reqwest::get(api.msgd.url("/metrics")).await.unwrap().text().await.unwrap();
        assert!(metric(&metrics, "msgd_retention_deleted_total{kind=\"objects\"}") >= 1.0, "{metrics}");
        assert!(metric(&metrics, "msgd_retention_deleted_total{kind=\"tail_entries\"}") >= 1.0, "{metrics}");
        assert!(metric(&metrics, "msgd_retention_last_success_timestamp_seconds") > 0.0);
        let logs = api.msgd.log_lines();
        let run = logs.iter().find(|l| l["message"] == "retention run complete" && l["objects"].as_u64() > Some(0));
        let run = run.unwrap_or_else(|| panic!("{backend:?}: no retention run logged deleting:\n{}", api.msgd.log_text()));
        assert_eq!((run["component"].as_str(), run["worker"].as_str()), (Some("retention"), Some("retention")));
        assert!(run["tick-id"].is_string() && run["duration-ms"].is_u64() && run["success"] == true, "{run}");
    }
}

/// The value of one sample line of a Prometheus text exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}

services_test! {
    /// Two `serve` instances, each with the worker running every second, over
    /// twenty expired segments: every one is deleted exactly once between
    /// them (the deleted counts add up), and no run fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_delete_each_segment_once(_: ServicesEnv) {
        let now = now_ms();
        let mut history = History::new(
            Backend::Services,
            &[("MSGD_RETENTION__INTERVAL", "1s"), ("MSGD_RETENTION__BATCH", "3")],
        )
        .await;
        let kept = conversation();
        days_of(&mut history, &kept, now, 20..=49).await;
        let cutoff = now - 30 * DAY;
        assert_eq!(expired(&history, cutoff).await.0, 19);
        let instances = [history.env.serve(), history.env.serve()];
        let done = eventually(Duration::from_secs(30), async || expired(&history, now_ms() - 30 * DAY).await.0 == 0).await;
        assert!(done, "{}", instances[0].log_text());
        let mut deleted = 0.0;
        for instance in &instances {
            let metrics = reqwest::get(instance.url("/metrics")).await.unwrap().text().await.unwrap();
            deleted += metric(&metrics, "msgd_retention_deleted_total{kind=\"objects\"}");
            assert_eq!(metric(&metrics, "msgd_retention_runs_total{result=\"error\"}"), 0.0, "{metrics}");
        }
        assert_eq!(deleted, 19.0, "each expired segment counted once across the two instances");
        history.assert_index_matches_objects().await;
        history.assert_window(&kept, cutoff).await;
    }
}
