//! The storage contracts on both backends: migrations, the tail (seq,
//! idempotency, reads, trim, re-seeding, live fanout, TTL state, dirty
//! marks) and the object store.

use std::collections::BTreeSet;
use std::time::Duration;

use msgd::store::{AppendOutcome, AppendRequest, ConvKey, IdempotencyClaim, LiveEvent, Stores, Tail};
use msgd::telemetry::Metrics;

use crate::support::{backend_test, services_test, Backend, ServicesEnv, TestEnv};

const TABLES: &[&str] =
    &["apps", "api_keys", "conversations", "members", "segments", "segment_blocks", "flush_state", "accepted_losses"];

backend_test! {
    #[tokio::test]
    async fn migrations_apply_to_a_fresh_database_and_again_idempotently(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let config = env.config();
        for _ in 0..2 {
            Stores::open_metadata(&config).await.expect("migrations apply");
        }
        let (tables, migrations): (Vec<String>, i64) = match backend {
            Backend::Embedded => {
                let path = config.data_dir.join("msgd.sqlite");
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
                let tables = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                let count = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap();
                (tables, count)
            }
            Backend::Services => {
                let pool = sqlx::PgPool::connect(env.var("MSGD_POSTGRES__URL").unwrap()).await.unwrap();
                let tables = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                let count = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap();
                (tables, count)
            }
        };
        for table in TABLES {
            assert!(tables.iter().any(|t| t == table), "{backend:?}: table {table} missing from {tables:?}");
        }
        let files = std::fs::read_dir(format!(
            "migrations/{}",
            if backend == Backend::Embedded { "sqlite" } else { "postgres" }
        ))
        .unwrap()
        .count() as i64;
        assert_eq!(migrations, files, "{backend:?}: each migration applied exactly once");
    }
}

async fn open(env: &TestEnv) -> Stores {
    Stores::open(&env.config(), &Metrics::new("test")).await.expect("open stores")
}

/// Appends, seeding the counter on first use as the write path will.
async fn append(tail: &dyn Tail, request: &AppendRequest) -> AppendOutcome {
    loop {
        match tail.append(request).await.expect("append") {
            AppendOutcome::NeedsSeed => tail.seed_seq(&request.conv, 0).await.expect("seed"),
            outcome => return outcome,
        }
    }
}

fn message(conv: &ConvKey, n: u64) -> AppendRequest {
    AppendRequest {
        conv: conv.clone(),
        ts_ms: 1_790_000_000_000 + n as i64,
        body: format!("{{\"n\":{n}}}").into_bytes(),
        idempotency: None,
    }
}

backend_test! {
    #[tokio::test]
    async fn concurrent_appends_get_gap_free_seqs_in_order(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let stores = open(&env).await;
        let conv = ConvKey::new("app_t", uuid::Uuid::now_v7().to_string());
        let mut live = stores.live.subscribe(&conv).await.unwrap();
        let mut tasks = Vec::new();
        for worker in 0..4u64 {
            let tail = stores.tail.clone();
            let conv = conv.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..25 {
                    match append(tail.as_ref(), &message(&conv, worker * 100 + i)).await {
                        AppendOutcome::Appended(entry) => seqs.push(entry.seq),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                seqs
            }));
        }
        let mut all = BTreeSet::new();
        for task in tasks {
            for seq in task.await.unwrap() {
                assert!(all.insert(seq), "{backend:?}: seq {seq} assigned twice");
            }
        }
        assert_eq!(all, (1..=100).collect(), "{backend:?}: seqs are gap-free from 1");
        assert_eq!(stores.tail.last_seq(&conv).await.unwrap(), Some(100));

        let entries = stores.tail.read(&conv, 0, 1000).await.unwrap();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
        let page = stores.tail.read(&conv, 40, 10).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), (41..=50).collect::<Vec<_>>());

        // Live subscribers see every message once, in seq order.
        for expected in 1..=100 {
            match tokio::time::timeout(Duration::from_secs(5), live.recv()).await.expect("live message").unwrap() {
                LiveEvent::Message(entry) => assert_eq!(entry.seq, expected, "{backend:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

backend_test! {
    #[tokio::test]
    async fn idempotency_replays_and_detects_reuse(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let stores = open(&env).await;
        let conv = ConvKey::new("app_t", uuid::Uuid::now_v7().to_string());
        let claim = |fingerprint: &str| IdempotencyClaim {
            key: "client-1".into(),
            fingerprint: fingerprint.into(),
            ttl: Duration::from_secs(3600),
            record_checked: false,
        };
        let first = AppendRequest { idempotency: Some(claim("aaa")), ..message(&conv, 1) };
        assert!(matches!(append(stores.tail.as_ref(), &first).await, AppendOutcome::Appended(e) if e.seq == 1));
        assert_eq!(append(stores.tail.as_ref(), &first).await, AppendOutcome::Replayed { seq: 1 });
        let reused = AppendRequest { idempotency: Some(claim("bbb")), ..message(&conv, 2) };
        assert_eq!(append(stores.tail.as_ref(), &reused).await, AppendOutcome::KeyReused { seq: 1 });
        // Concurrent duplicates: exactly one write.
        let racing = AppendRequest {
            idempotency: Some(IdempotencyClaim {
                key: "client-2".into(),
                fingerprint: "ccc".into(),
                ttl: Duration::from_secs(60),
                record_checked: false,
            }),
            ..message(&conv, 3)
        };
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let tail = stores.tail.clone();
                let racing = racing.clone();
                tokio::spawn(async move { append(tail.as_ref(), &racing).await })
            })
            .collect();
        let mut appended = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                AppendOutcome::Appended(entry) => {
                    appended += 1;
                    assert_eq!(entry.seq, 2);
                }
                AppendOutcome::Replayed { seq } => assert_eq!(seq, 2),
                other => panic!("{backend:?}: unexpected {other:?}"),
            }
        }
        assert_eq!(appended, 1, "{backend:?}: one write for eight racing duplicates");
        assert_eq!(stores.tail.read(&conv, 0, 10).await.unwrap().len(), 2);
    }
}

backend_test! {
    #[tokio::test]
    async fn a_batch_appends_in_one_step_in_order_with_each_claim_checked(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let stores = open(&env).await;
        let conv = ConvKey::new("app_t", uuid::Uuid::now_v7().to_string());
        let claim = |key: &str, fingerprint: &str| {
            Some(IdempotencyClaim {
                key: key.into(),
                fingerprint: fingerprint.into(),
                ttl: Duration::from_secs(3600),
                record_checked: false,
            })
        };
        let batch = vec![
            AppendRequest { idempotency: claim("a", "fa"), ..message(&conv, 1) },
            message(&conv, 2),
            // The same key again within the batch: a replay of the first.
            AppendRequest { idempotency: claim("a", "fa"), ..message(&conv, 3) },
            // ... or a reuse when the request differs.
            AppendRequest { idempotency: claim("a", "other"), ..message(&conv, 4) },
            AppendRequest { idempotency: claim("b", "fb"), ..message(&conv, 5) },
        ];
        // A new conversation: nothing is written until the counter is seeded.
        let outcomes = stores.tail.append_batch(&batch).await.unwrap();
        assert_eq!(outcomes, vec![AppendOutcome::NeedsSeed; 5], "{backend:?}");
        assert!(stores.tail.read(&conv, 0, 10).await.unwrap().is_empty());
        stores.tail.seed_seq(&conv, 10).await.unwrap();

        let mut live = stores.live.subscribe(&conv).await.unwrap();
        let outcomes = stores.tail.append_batch(&batch).await.unwrap();
        let summary: Vec<(char, u64)> = outcomes
            .iter()
            .map(|outcome| match outcome {
                AppendOutcome::Appended(entry) => ('a', entry.seq),
                AppendOutcome::Replayed { seq } => ('r', *seq),
                AppendOutcome::KeyReused { seq } => ('k', *seq),
                AppendOutcome::NeedsSeed => ('s', 0),
                AppendOutcome::CheckRecord => ('c', 0),
                AppendOutcome::NotAttempted => ('n', 0),
            })
            .collect();
        assert_eq!(summary, vec![('a', 11), ('a', 12), ('r', 11), ('k', 11), ('a', 13)], "{backend:?}");
        let entries = stores.tail.read(&conv, 0, 10).await.unwrap();
        let bodies: Vec<&[u8]> = entries.iter().map(|e| e.body.as_slice()).collect();
        assert_eq!(bodies, vec![&b"{\"n\":1}"[..], b"{\"n\":2}", b"{\"n\":5}"], "{backend:?}");
        for expected in 11..=13 {
            match tokio::time::timeout(Duration::from_secs(5), live.recv()).await.expect("live message").unwrap() {
                LiveEvent::Message(entry) => assert_eq!(entry.seq, expected, "{backend:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
        // The flush sees three messages and their bytes.
        let dirty = stores.tail.dirty(conv.shard()).await.unwrap();
        let mark = dirty.iter().find(|d| d.conv == conv).expect("dirty mark");
        assert_eq!((mark.messages, mark.bytes), (3, 3 * 7), "{backend:?}");

        // Retried whole, the batch writes nothing new: every keyed message replays.
        let again = stores.tail.append_batch(&batch).await.unwrap();
        assert!(matches!(again[0], AppendOutcome::Replayed { seq: 11 }), "{backend:?}: {again:?}");
        assert!(matches!(again[1], AppendOutcome::Appended(ref e) if e.seq == 14), "{backend:?}: {again:?}");
        assert!(matches!(again[4], AppendOutcome::Replayed { seq: 13 }), "{backend:?}: {again:?}");
        let peek = stores.tail.idempotency_claims(&conv, &["a", "nope", "b"]).await.unwrap();
        assert_eq!(peek, vec![Some((11, "fa".into())), None, Some((13, "fb".into()))], "{backend:?}");
    }
}

backend_test! {
    #[tokio::test]
    async fn a_lost_counter_is_reseeded_and_never_regresses(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let stores = open(&env).await;
        let conv = ConvKey::new("app_t", uuid::Uuid::now_v7().to_string());
        assert_eq!(stores.tail.append(&message(&conv, 1)).await.unwrap(), AppendOutcome::NeedsSeed);
        assert_eq!(stores.tail.last_seq(&conv).await.unwrap(), None);
        // A flushed history up to 41 (known from metadata) seeds the counter.
        stores.tail.seed_seq(&conv, 41).await.unwrap();
        assert!(
            matches!(append(stores.tail.as_ref(), &message(&conv, 1)).await, AppendOutcome::Appended(e) if e.seq == 42)
        );
        // Seeding lower never moves it back, and seeding respects what the log holds.
        stores.tail.seed_seq(&conv, 5).await.unwrap();
        assert_eq!(stores.tail.last_seq(&conv).await.unwrap(), Some(42));
        assert!(
            matches!(append(stores.tail.as_ref(), &message(&conv, 2)).await, AppendOutcome::Appended(e) if e.seq == 43)
        );
        assert_eq!(stores.tail.trim(&conv, 42).await.unwrap(), 1);
        assert_eq!(stores.tail.read(&conv, 0, 10).await.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![43]);
    }
}

services_test! {
    #[tokio::test]
    async fn services_tail_reseeds_past_the_log_when_redis_loses_the_counter(_: ServicesEnv) {
        let env = TestEnv::new(Backend::Services).await;
        let stores = open(&env).await;
        let conv = ConvKey::new("app_t", uuid::Uuid::now_v7().to_string());
        for n in 0..3 {
            append(stores.tail.as_ref(), &message(&conv, n)).await;
        }
        // An operator error or eviction deletes the counter but not the log.
        let client = redis::Client::open(env.var("MSGD_REDIS__URL").unwrap()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let prefix = env.var("MSGD_REDIS__KEY_PREFIX").unwrap();
        let key = format!("{prefix}:{{s{}}}:seq:{}:{}", conv.shard(), conv.app_id, conv.conversation_id);
        let deleted: i64 = redis::cmd("DEL").arg(&key).query_async(&mut connection).await.unwrap();
        assert_eq!(deleted, 1, "the counter key follows the documented schema");
        // Seeding from stale metadata (0) still continues after the log's top.
        assert!(matches!(
            append(stores.tail.as_ref(), &message(&conv, 9)).await,
            AppendOutcome::Appended(e) if e.seq == 4
        ));
    }
}

backend_test! {
    #[tokio::test]
    async fn ephemeral_events_state_and_dirty_marks(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let stores = open(&env).await;
        let conv = ConvKey::new("app_t", uuid::Uuid::now_v7().to_string());

        let mut first = stores.live.subscribe(&conv).await.unwrap();
        let mut second = stores.live.subscribe(&conv).await.unwrap();
        stores.live.publish(&conv, b"{\"op\":\"typing\"}").await.unwrap();
        for live in [&mut first, &mut second] {
            let event = tokio::time::timeout(Duration::from_secs(5), live.recv()).await.unwrap().unwrap();
            assert_eq!(event, LiveEvent::Event(b"{\"op\":\"typing\"}".to_vec()), "{backend:?}");
        }

        let key = format!("receipts:{}", conv.conversation_id);
        stores.state.state_set(&key, "alice", b"{\"read\":3}", Duration::from_secs(60)).await.unwrap();
        stores.state.state_set(&key, "bob", b"{\"read\":1}", Duration::from_secs(60)).await.unwrap();
        stores.state.state_set(&key, "alice", b"{\"read\":4}", Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            stores.state.state_get(&key).await.unwrap(),
            vec![("alice".to_string(), b"{\"read\":4}".to_vec()), ("bob".to_string(), b"{\"read\":1}".to_vec())]
        );
        stores.state.state_set("short", "x", b"1", Duration::from_millis(50)).await.unwrap();
        let expired = crate::support::eventually(Duration::from_secs(3), async || {
            stores.state.state_get("short").await.unwrap().is_empty()
        })
        .await;
        assert!(expired, "{backend:?}: TTL state expires");

        append(stores.tail.as_ref(), &message(&conv, 1)).await;
        append(stores.tail.as_ref(), &message(&conv, 2)).await;
        let dirty = stores.tail.dirty(conv.shard()).await.unwrap();
        let mark = dirty.iter().find(|d| d.conv == conv).expect("conversation is dirty").clone();
        assert_eq!(mark.first_ts_ms, 1_790_000_000_001);
        assert_eq!(mark.bytes, 2 * "{\"n\":1}".len() as u64);
        // A write after the mark was read keeps the conversation dirty.
        append(stores.tail.as_ref(), &message(&conv, 3)).await;
        assert!(!stores.tail.clear_dirty(&mark).await.unwrap());
        let mark = stores.tail.dirty(conv.shard()).await.unwrap().into_iter().find(|d| d.conv == conv).unwrap();
        assert!(stores.tail.clear_dirty(&mark).await.unwrap());
        assert!(stores.tail.dirty(conv.shard()).await.unwrap().iter().all(|d| d.conv != conv));
    }
}

backend_test! {
    #[tokio::test]
    async fn objects_round_trip_with_ranges(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let stores = open(&env).await;
        let objects = &stores.objects;
        objects.ping().await.unwrap();
        let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        objects.put("segments/app_t/2026/11/27/07/a.seg", bytes.clone()).await.unwrap();
        objects.put("segments/app_t/2026/11/27/08/b.seg", b"b".to_vec()).await.unwrap();
        assert_eq!(objects.get("segments/app_t/2026/11/27/07/a.seg").await.unwrap(), bytes);
        assert_eq!(
            objects.get_range("segments/app_t/2026/11/27/07/a.seg", 100, 356).await.unwrap(),
            bytes[100..356].to_vec()
        );
        assert_eq!(
            objects.list("segments/app_t/2026/11/27").await.unwrap(),
            vec!["segments/app_t/2026/11/27/07/a.seg", "segments/app_t/2026/11/27/08/b.seg"]
        );
        objects.delete("segments/app_t/2026/11/27/07/a.seg").await.unwrap();
        objects.delete("segments/app_t/2026/11/27/07/a.seg").await.expect("deleting twice is fine");
        assert!(objects.get("segments/app_t/2026/11/27/07/a.seg").await.is_err());
    }
}

backend_test! {
    #[tokio::test]
    async fn expired_idempotency_claims_are_forgotten_and_purged(backend: Backend) {
        let env = TestEnv::new(backend).await;
        let stores = open(&env).await;
        let conv = ConvKey::new("app_t", uuid::Uuid::now_v7().to_string());
        let claim = IdempotencyClaim {
            key: "short".into(),
            fingerprint: "f".into(),
            ttl: Duration::from_millis(30),
            record_checked: false,
        };
        let request = AppendRequest { idempotency: Some(claim), ..message(&conv, 1) };
        assert!(matches!(append(stores.tail.as_ref(), &request).await, AppendOutcome::Appended(e) if e.seq == 1));
        let forgotten = crate::support::eventually(Duration::from_secs(3), async || {
            matches!(stores.tail.append(&request).await.unwrap(), AppendOutcome::Appended(_))
        })
        .await;
        assert!(forgotten, "{backend:?}: after its TTL the key is free again");
        stores.live.publish(&conv, b"x").await.unwrap();
        stores.state.state_set("gone", "f", b"1", Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let purged = stores.tail.purge_expired().await.unwrap() + stores.state.purge_expired().await.unwrap();
        match backend {
            Backend::Embedded => assert!(purged >= 1, "the embedded tail deletes expired rows"),
            Backend::Services => assert_eq!(purged, 0, "Redis expires keys by itself"),
        }
    }
}
