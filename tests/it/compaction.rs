//! Compaction on both backends, the clock injected: a window of flushes
//! becomes one segment with one block per conversation (or a few, each within
//! `flush.block_bytes`) and reads back identically; a second run finds nothing;
//! reindex and recovery with a replaced object left behind index every message
//! once; SIGKILL of a real `msgd flush --compact` between its PUT and the swap
//! loses nothing, and recovery deletes its object only once it is an hour old;
//! an unreadable segment holds up only its own window; `serve`'s worker waits
//! for its first run and the lease, then takes a window a step.

use std::time::{Duration, SystemTime};

use msgd::clock::now_ms;
use msgd::envelope::Envelope;
use msgd::segment::{self, Kind};
use msgd::store::{BlockRow, ConvKey};
use msgd::telemetry::Metrics;
use msgd::timeline::Timeline;

use crate::support::history::{conversation, drop_index, object_path, History};
use crate::support::{backend_test, eventually, Backend, Msgd};

const HOUR: i64 = 3_600_000;
const BLOCK_BYTES: usize = 4096;

/// Eight flushes 15 minutes apart inside one 2-hour window (a busy, a
/// one-a-flush and a once-only conversation), then one flush in the next
/// window. Returns the conversations and the window's start.
async fn a_window_of_flushes(history: &mut History, now: i64) -> (Vec<String>, i64) {
    let start = (now - 10 * HOUR).div_euclid(2 * HOUR) * 2 * HOUR;
    let (busy, steady, once) = (conversation(), conversation(), conversation());
    for flush in 0..8 {
        let at = start + flush * 15 * 60_000;
        history.append(&busy, &(0..10).map(|n| at + n * 1000).collect::<Vec<_>>()).await;
        history.append(&steady, &[at + 500]).await;
        if flush == 0 {
            history.append(&once, &[at + 700, at + 800, at + 900]).await;
        }
        history.flush_at(at + 60_000).await;
    }
    history.append(&steady, &[start + 2 * HOUR + 1000]).await;
    history.flush_at(start + 2 * HOUR + 60_000).await;
    (vec![busy, steady, once], start)
}

/// Every message of each conversation, read through the timeline.
async fn read_all(history: &History, conversations: &[String]) -> Vec<Vec<Envelope>> {
    let timeline = Timeline::new(history.stores.clone(), Metrics::new("test"), 0, history.config.retention.period_ms());
    let mut all = Vec::new();
    for conversation in conversations {
        let last = history.sent[conversation].len() as u64;
        let read = timeline.read(&history.conv(conversation), 1, last, i64::MIN).await.unwrap();
        assert_eq!(read.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>());
        all.push(read);
    }
    all
}

async fn blocks_of(history: &History, conversations: &[String]) -> Vec<BlockRow> {
    let mut blocks = Vec::new();
    for conversation in conversations {
        let conv = ConvKey::new(&history.app_id, conversation.as_str());
        let found = history.stores.metadata.blocks_of_conversation(&conv).await.unwrap();
        let mut next = 1;
        for block in &found {
            assert_eq!(block.seq_start, next, "blocks of {conversation} overlap or leave a hole: {found:?}");
            next = block.seq_end + 1;
        }
        blocks.extend(found);
    }
    blocks
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_window_of_flushes_becomes_one_segment_that_reads_the_same(backend: Backend) {
        let now = now_ms();
        let block_bytes = BLOCK_BYTES.to_string();
        let vars = [("MSGD_FLUSH__BLOCK_BYTES", block_bytes.as_str()), ("MSGD_FLUSH__COMPACT_WINDOW", "2h")];
        let mut history = History::new(backend, &vars).await;
        let (conversations, start) = a_window_of_flushes(&mut history, now).await;
        let before = read_all(&history, &conversations).await;
        let rows_before = blocks_of(&history, &conversations).await;
        assert_eq!((history.segments().await.len(), rows_before.len()), (9, 18), "{backend:?}");
        for flushed in history.segments().await {
            let bytes = history.stores.objects.get(&flushed.object_key).await.unwrap();
            let order: Vec<String> =
                segment::Segment::parse(&bytes).unwrap().footer.blocks.into_iter().map(|b| b.conversation_id).collect();
            assert!(order.is_sorted(), "{backend:?}: a flush writes its blocks in conversation order: {order:?}");
        }
        // Kept to put back later: an object compaction replaces.
        let replaced = history.segments().await.into_iter().find(|s| s.created_at < start + HOUR).unwrap();
        let replaced_bytes = history.stores.objects.get(&replaced.object_key).await.unwrap();

        let flusher = history.flusher(history.config.flush.clone());
        let report = flusher.compact(now, 16).await.unwrap();
        assert_eq!((report.windows, report.segments_in, report.segments_out, report.conflicts), (1, 8, 1, 0), "{report:?}");
        assert_eq!((report.records, report.block_rows_in), (80 + 8 + 3, 17), "{backend:?}: {report:?}");
        assert_eq!(report.reads, 8, "{backend:?}: one GET per segment, its blocks end to end: {report:?}");
        let rows_after = blocks_of(&history, &conversations).await;
        assert_eq!(report.block_rows_out as usize, rows_after.len() - 1, "{report:?}");
        // busy: 80 messages split by the block size; steady: one block in the window and the next window's; once: one.
        let per_conversation: Vec<usize> =
            conversations.iter().map(|c| rows_after.iter().filter(|b| &b.conversation_id == c).count()).collect();
        assert!(per_conversation[0] > 1 && per_conversation[0] < 8, "{backend:?}: {per_conversation:?}");
        assert_eq!(per_conversation[1..], [2, 1], "{backend:?}");
        assert!(rows_after.iter().all(|b| b.raw_length as usize <= BLOCK_BYTES), "{rows_after:?}");
        assert_eq!(read_all(&history, &conversations).await, before, "{backend:?}: the same messages, in order");
        history.assert_index_matches_objects().await;

        let segments = history.segments().await;
        assert_eq!(segments.len(), 2);
        let compacted = segments.iter().find(|s| s.created_at == start).expect("the compacted segment, dated by its window");
        let bytes = history.stores.objects.get(&compacted.object_key).await.unwrap();
        assert_eq!(segment::Segment::parse(&bytes).unwrap().header.kind, Kind::Compaction);
        assert!(compacted.object_key.contains(&msgd::clock::format_ms(start)[..10].replace('-', "/")));

        let again = flusher.compact(now, 16).await.unwrap();
        assert_eq!((again.windows, again.segments_in), (0, 0), "{backend:?}: nothing left to merge");

        // Compaction committed but the replaced object stayed (a crash before its delete).
        history.stores.objects.put(&replaced.object_key, replaced_bytes).await.unwrap();
        drop_index(&history.env).await;
        let reindexed = flusher.reindex().await.unwrap();
        assert_eq!((reindexed.indexed, reindexed.superseded), (2, 1), "{backend:?}: {reindexed:?}");
        assert_eq!(blocks_of(&history, &conversations).await, rows_after, "{backend:?}: the same index");
        assert_eq!(read_all(&history, &conversations).await, before);
        let recovered = flusher.recover(now - 30 * 24 * HOUR).await.unwrap();
        assert_eq!((recovered.indexed, recovered.deleted), (0, 1), "{backend:?}: the replaced object is deleted");
        history.assert_index_matches_objects().await;
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_between_the_compaction_put_and_the_swap_loses_nothing(backend: Backend) {
        let now = now_ms();
        let mut history = History::new(backend, &[("MSGD_FLUSH__COMPACT_WINDOW", "2h")]).await;
        let (conversations, _) = a_window_of_flushes(&mut history, now).await;
        let before = read_all(&history, &conversations).await;

        let mut crashing = history.env.command(&["flush", "--compact"]);
        crashing.env("MSGD_FLUSH__FAILPOINT", "compact-after-put");
        let mut msgd = Msgd::spawn(crashing, history.env.dir.path());
        let stopped = eventually(Duration::from_secs(20), async || {
            msgd.log_lines().iter().any(|line| line["failpoint"] == "compact-after-put")
        })
        .await;
        assert!(stopped, "{backend:?}: {}", msgd.log_text());
        msgd.child.kill().unwrap();
        msgd.child.wait().unwrap();

        let objects = history.stores.objects.list("segments/").await.unwrap();
        assert_eq!((objects.len(), history.segments().await.len()), (10, 9), "{backend:?}: PUT, no swap");
        assert_eq!(read_all(&history, &conversations).await, before);
        let indexed: Vec<String> = history.segments().await.into_iter().map(|s| s.object_key).collect();
        let orphan = objects.iter().find(|key| !indexed.contains(key)).cloned().unwrap();

        // Recovery leaves a young compaction object alone: it may be a running compaction's.
        let flusher = history.flusher(history.config.flush.clone());
        let cutoff = now - 30 * 24 * HOUR;
        let recovered = flusher.recover(cutoff).await.unwrap();
        assert_eq!((recovered.pending, recovered.indexed, recovered.deleted), (1, 0, 0), "{backend:?}: {recovered:?}");

        let out = history.env.run(&["flush", "--compact", "--json"], "");
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!((out.json()["windows"].as_u64(), out.json()["segments_in"].as_u64()), (Some(1), Some(8)));
        assert_eq!(read_all(&history, &conversations).await, before, "{backend:?}");

        // An hour later it is nobody's: recovery deletes it, never indexes it.
        let hour_ago = SystemTime::now() - Duration::from_secs(3700);
        std::fs::File::options().write(true).open(object_path(&history.env, &orphan)).unwrap().set_modified(hour_ago).unwrap();
        let recovered = flusher.recover(cutoff).await.unwrap();
        assert_eq!((recovered.pending, recovered.indexed, recovered.deleted), (0, 0, 1), "{backend:?}: {recovered:?}");
        history.assert_index_matches_objects().await;
        assert_eq!(read_all(&history, &conversations).await, before);
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_segment_holds_up_only_its_own_window(backend: Backend) {
        let now = now_ms();
        let mut history = History::new(backend, &[("MSGD_FLUSH__COMPACT_WINDOW", "2h")]).await;
        let (conversations, start) = a_window_of_flushes(&mut history, now).await;
        // An earlier window of two flushes, one of them unreadable.
        let early = start - 4 * HOUR;
        let other = conversation();
        for at in [early, early + 30 * 60_000] {
            history.append(&other, &[at]).await;
            history.flush_at(at + 60_000).await;
        }
        let broken = history.segments().await.into_iter().find(|s| s.created_at < start).unwrap();
        history.stores.objects.put(&broken.object_key, b"not a segment".to_vec()).await.unwrap();

        let out = history.env.run(&["flush", "--compact", "--json"], "");
        assert_eq!(out.code, 1, "{backend:?}: {}", out.stderr);
        let report = out.json();
        assert_eq!((report["windows"].as_u64(), report["skipped"].as_u64()), (Some(1), Some(1)), "{report}");
        assert!(out.stderr.contains("left uncompacted"), "{}", out.stderr);
        assert_eq!(history.segments().await.len(), 2 + 1 + 1, "{backend:?}: the early window as it was");
        read_all(&history, &conversations).await;
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_compacts_a_window_a_step_under_its_lease(backend: Backend) {
        use msgd::worker::{Worker, WorkerState};
        let now = now_ms();
        let mut history = History::new(backend, &[("MSGD_FLUSH__COMPACT_WINDOW", "2h")]).await;
        let (conversations, _) = a_window_of_flushes(&mut history, now).await;
        let before = read_all(&history, &conversations).await;
        let flusher = || history.flusher(history.config.flush.clone());
        let mut waiting = msgd::flush::CompactionWorker::new(flusher(), Duration::from_secs(300));
        assert!(matches!(waiting.work().await.unwrap(), WorkerState::Idle), "{backend:?}: not before its first run");
        assert_eq!(history.segments().await.len(), 9, "{backend:?}: nothing compacted before the first run");
        let mut worker = msgd::flush::CompactionWorker::new(flusher(), Duration::ZERO);

        let coordination = &history.stores.coordination;
        assert!(coordination.acquire_lease("compaction", "another-instance", Duration::from_secs(60)).await.unwrap());
        assert!(matches!(worker.work().await.unwrap(), WorkerState::Idle), "{backend:?}: the lease is held");
        assert_eq!(history.segments().await.len(), 9, "{backend:?}: nothing compacted without the lease");
        coordination.release_lease("compaction", "another-instance").await.unwrap();

        assert!(matches!(worker.work().await.unwrap(), WorkerState::Busy), "{backend:?}: one window, maybe more");
        assert_eq!(history.segments().await.len(), 2);
        assert!(matches!(worker.work().await.unwrap(), WorkerState::Idle), "{backend:?}: none left");
        assert_eq!(read_all(&history, &conversations).await, before);
    }
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_window_compacted_into_several_objects_is_not_compacted_again(backend: Backend) {
        // A compaction closes an object at 16 MiB, so a busy window becomes several segments, all
        // dated at the window's start; only a flush's segment among them makes it a candidate again.
        let history = History::new(backend, &[("MSGD_FLUSH__COMPACT_WINDOW", "2h")]).await;
        let metadata = &history.stores.metadata;
        let start = (now_ms() - 10 * HOUR).div_euclid(2 * HOUR) * 2 * HOUR;
        let app_id = history.app_id.as_str();
        let index = |created_at: i64| async move {
            let block = segment::BlockMeta {
                conversation_id: conversation(),
                seq_start: 1,
                seq_end: 1,
                ts_start: start,
                ts_end: start,
                record_count: 1,
                offset: 16,
                length: 10,
                raw_bytes: 10,
                checksum: 0,
            };
            let footer = segment::Footer { app_id: app_id.to_string(), blocks: vec![block] };
            let id = uuid::Uuid::now_v7().to_string();
            let key = msgd::flush::segment_key(app_id, created_at, &id);
            let (row, blocks) = msgd::timeline::index_rows(app_id, &id, &key, 26, created_at, &footer);
            metadata.commit_segment(&row, &blocks, &[]).await.unwrap();
        };
        index(start).await;
        index(start).await;
        let windows = metadata.compaction_windows(2 * HOUR, now_ms(), 10).await.unwrap();
        assert_eq!(windows, vec![], "{backend:?}: a compaction's own objects");
        index(start + 60_000).await;
        let windows = metadata.compaction_windows(2 * HOUR, now_ms(), 10).await.unwrap();
        assert_eq!(windows, vec![(history.app_id.clone(), start)], "{backend:?}: a flush joined them");
    }
}
