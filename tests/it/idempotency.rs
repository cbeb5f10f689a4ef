//! Idempotency across the tail → segment boundary, on both backends, with the
//! clock injected: a retry hours after its original, once the flush released
//! the claim (Redis), is answered from the durable record with the original
//! envelope — alone, in a batch, and eight at once; another payload under the
//! key is refused; a retry after the window is a new message; retention
//! deletes the records past the window.

use std::sync::Arc;
use std::time::Duration;

use msgd::auth::Caller;
use msgd::clock::now_ms;
use msgd::context::Context;
use msgd::conversations::{self, CreateConversation};
use msgd::flush::{FlushOptions, Flusher};
use msgd::keys::Scope;
use msgd::messages::{self, SendRequest, Sent};
use msgd::retention::{Retention, RetentionOptions};
use msgd::store::{AppendOutcome, AppendRequest, ConvKey, IdempotencyClaim, Stores};
use msgd::telemetry::Metrics;
use serde_json::json;

use crate::support::api::create_app;
use crate::support::{backend_test, services_test, Backend, ServicesEnv, TestEnv};

const HOUR: i64 = 3_600_000;

struct Harness {
    _env: TestEnv,
    ctx: Arc<Context>,
    caller: Caller,
    conversation: String,
    flusher: Flusher,
}

impl Harness {
    async fn new(backend: Backend) -> Harness {
        let env = TestEnv::new(backend).await;
        let (app_id, _) = create_app(&env, "idempotency");
        let config = Arc::new(env.config());
        let metrics = Metrics::new("test");
        let stores = Stores::open(&config, &metrics).await.unwrap();
        let flusher = Flusher::new(stores.clone(), metrics.clone(), config.flush.clone());
        let ctx = Arc::new(Context::new(config, stores, metrics).unwrap());
        let caller = Caller {
            app_id,
            key_id: "k_test".into(),
            scope: Scope::Write,
            user_id: Some("alice".into()),
            token_expires_at_ms: None,
        };
        let create = CreateConversation { members: Vec::new(), title: None, metadata: None, owner: None };
        let conversation = conversations::create(&ctx, &caller, create, now_ms()).await.unwrap().id;
        Harness { _env: env, ctx, caller, conversation, flusher }
    }

    async fn send(&self, key: &str, text: &str, now: i64) -> Result<Sent, msgd::error::Error> {
        let request = request(key, text);
        messages::send(&self.ctx, &self.caller, &self.conversation, request, None, now).await
    }

    async fn flush(&self, now: i64) {
        self.flusher.tick(FlushOptions { all: true, dry_run: false }, now).await.unwrap();
    }

    /// The claim the tail holds on `key` for alice.
    async fn claim(&self, key: &str) -> Option<(u64, String)> {
        let conv = ConvKey::new(&self.caller.app_id, &self.conversation);
        let claim = format!("user:5:alice:{key}");
        self.ctx.stores.tail.idempotency_claims(&conv, &[claim.as_str()]).await.unwrap().pop().flatten()
    }

    fn lookups(&self, result: &str) -> u64 {
        self.ctx.metrics.idempotency_record_lookups_total.with_label_values(&[result]).get()
    }
}

fn request(key: &str, text: &str) -> SendRequest {
    serde_json::from_value(json!({"payload": {"text": text}, "client_msg_id": key})).unwrap()
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_after_the_flush_gets_its_original_until_the_window_ends(backend: Backend) {
        let h = Harness::new(backend).await;
        let t0 = now_ms();
        let original = h.send("k1", "hello", t0).await.unwrap();
        assert!(!original.replayed);
        let original = original.envelope;
        assert_eq!(original.client_msg_id.as_deref(), Some("k1"));
        h.flush(t0 + 1_000).await;
        let released = h.ctx.stores.tail.releases_claims();
        assert_eq!(h.claim("k1").await.is_none(), released, "{backend:?}: the flush releases claims held in memory");

        // Two hours later: the original, from its segment, whoever asks first.
        let later = t0 + 2 * HOUR;
        let retries: Vec<_> = (0..8)
            .map(|_| {
                let ctx = h.ctx.clone();
                let (caller, conversation) = (h.caller.clone(), h.conversation.clone());
                tokio::spawn(async move {
                    messages::send(&ctx, &caller, &conversation, request("k1", "hello"), None, later).await
                })
            })
            .collect();
        for retry in retries {
            let sent = retry.await.unwrap().unwrap();
            assert!(sent.replayed, "{backend:?}");
            assert_eq!(sent.envelope, original, "{backend:?}: the original envelope");
        }
        if released {
            assert!(h.lookups("found") >= 8, "{backend:?}: answered from the durable record");
        }
        let reused = h.send("k1", "something else", later).await.unwrap_err();
        assert_eq!(reused.code.as_str(), "idempotency_key_reused", "{backend:?}");

        // In a batch: the late retry, a new key and an unkeyed message, in order.
        let batch = vec![
            json!({"payload": {"text": "hello"}, "client_msg_id": "k1"}),
            json!({"payload": {"text": "new"}, "client_msg_id": "k2"}),
            json!({"payload": {"text": "plain"}}),
        ];
        let results = messages::send_batch(&h.ctx, &h.caller, &h.conversation, batch, later).await.unwrap();
        let results: Vec<Sent> = results.into_iter().map(Result::unwrap).collect();
        assert!(results[0].replayed && results[0].envelope == original, "{backend:?}");
        assert_eq!((results[1].replayed, results[1].envelope.seq), (false, 2), "{backend:?}");
        assert_eq!((results[2].replayed, results[2].envelope.seq), (false, 3), "{backend:?}");

        // Past the window the key is free: a new message.
        let next_day = t0 + 25 * HOUR;
        let fresh = h.send("k1", "hello", next_day).await.unwrap();
        assert_eq!((fresh.replayed, fresh.envelope.seq), (false, 4), "{backend:?}");
        assert_ne!(fresh.envelope.id, original.id);
    }
}

backend_test! {
    #[tokio::test]
    async fn retention_deletes_the_records_past_the_window(backend: Backend) {
        let h = Harness::new(backend).await;
        let t0 = now_ms();
        h.send("old", "a", t0).await.unwrap();
        h.flush(t0 + 1_000).await;
        h.send("new", "b", t0 + 23 * HOUR).await.unwrap();
        h.flush(t0 + 23 * HOUR + 1_000).await;
        let conv = ConvKey::new(&h.caller.app_id, &h.conversation);
        let recorded = h.ctx.stores.metadata.idempotency_records(&conv, 0).await.unwrap().len();
        let released = h.ctx.stores.tail.releases_claims();
        // Only a tail that releases its claims needs the records.
        assert_eq!(recorded, if released { 2 } else { 0 }, "{backend:?}");

        let retention = Retention::new(h.ctx.stores.clone(), h.ctx.metrics.clone(), &h.ctx.config);
        let report = retention.run(&RetentionOptions::default(), t0 + 25 * HOUR).await.unwrap();
        assert_eq!(report.idempotency_records, if released { 1 } else { 0 }, "{backend:?}");
        let left = h.ctx.stores.metadata.idempotency_records(&conv, 0).await.unwrap().len();
        assert_eq!(left, if released { 1 } else { 0 }, "{backend:?}: the record inside the window stays");
        // …and still answers.
        let retry = h.send("new", "b", t0 + 26 * HOUR).await.unwrap();
        assert!(retry.replayed, "{backend:?}");
    }
}

services_test! {
    #[tokio::test]
    async fn the_released_key_filter_costs_its_configured_size(_services: ServicesEnv) {
        let h = Harness::new(Backend::Services).await;
        let t0 = now_ms();
        for n in 0..20 {
            h.send(&format!("key-{n}"), "x", t0).await.unwrap();
        }
        h.flush(t0 + 1_000).await;
        let client = redis::Client::open(h._env.var("MSGD_REDIS__URL").unwrap()).unwrap();
        let mut redis = client.get_multiplexed_async_connection().await.unwrap();
        let pattern = format!("{}:*idem-filter*", h._env.var("MSGD_REDIS__KEY_PREFIX").unwrap());
        let filters: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut redis).await.unwrap();
        assert_eq!(filters.len(), 1, "the flush released the keys into one shard's generation: {filters:?}");
        // 32 MiB over 64 shards × 3 generations, allocated whole: at most
        // the allocator's size class above it (192 KiB, +12.5%), where SETBIT
        // growing the string would double it.
        let configured = (32u64 << 20) / (64 * 3);
        let used: u64 = redis::cmd("MEMORY").arg("USAGE").arg(&filters[0]).query_async(&mut redis).await.unwrap();
        assert!((configured..configured * 115 / 100).contains(&used), "{used} bytes for {configured}");
        let ttl: i64 = redis::cmd("PTTL").arg(&filters[0]).query_async(&mut redis).await.unwrap();
        assert!(ttl > 24 * HOUR && ttl <= 36 * HOUR, "it lives until three generations after its start: {ttl}");
    }
}

services_test! {
    #[tokio::test]
    async fn a_released_key_stops_the_append_until_the_record_was_checked(_services: ServicesEnv) {
        let h = Harness::new(Backend::Services).await;
        let tail = h.ctx.stores.tail.clone();
        let conv = ConvKey::new(&h.caller.app_id, &h.conversation);
        let t0 = now_ms();
        let request = |key: Option<&str>, n: u64| AppendRequest {
            conv: conv.clone(),
            ts_ms: t0,
            body: format!("{{\"n\":{n}}}").into_bytes(),
            idempotency: key.map(|key| IdempotencyClaim {
                key: key.into(),
                fingerprint: "f".into(),
                ttl: Duration::from_secs(3600),
                record_checked: false,
            }),
        };
        tail.seed_seq(&conv, 0).await.unwrap();
        assert!(matches!(tail.append(&request(Some("a"), 1)).await.unwrap(), AppendOutcome::Appended(_)));
        assert_eq!(tail.release_claims(&conv, &["a".to_string()], t0).await.unwrap(), 1);
        assert_eq!(tail.release_claims(&conv, &["a".to_string()], t0).await.unwrap(), 0, "released once");

        // Nothing from the released key on is written; the keyed messages the
        // filter holds are named, the rest not attempted.
        let batch = [request(None, 2), request(Some("a"), 3), request(Some("b"), 4), request(Some("a"), 5)];
        let outcomes = tail.append_batch(&batch).await.unwrap();
        assert!(matches!(outcomes[0], AppendOutcome::Appended(ref e) if e.seq == 2), "{outcomes:?}");
        assert_eq!(
            outcomes[1..],
            [AppendOutcome::CheckRecord, AppendOutcome::NotAttempted, AppendOutcome::CheckRecord],
            "{outcomes:?}"
        );
        assert_eq!(tail.last_seq(&conv).await.unwrap(), Some(2));

        let mut checked = request(Some("a"), 3);
        checked.idempotency.as_mut().unwrap().record_checked = true;
        assert!(matches!(tail.append(&checked).await.unwrap(), AppendOutcome::Appended(ref e) if e.seq == 3));
        // Claimed again: a plain retry meets the claim, not the filter.
        assert_eq!(tail.append(&request(Some("a"), 3)).await.unwrap(), AppendOutcome::Replayed { seq: 3 });
    }
}
