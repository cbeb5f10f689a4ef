//! Metrics: the Prometheus registry every component records into (the
//! catalogue of every family is `dashboards/METRICS.md`).
//!
//! Naming follows Prometheus conventions: `msgd_` prefix, base units,
//! `_total` counters, and never a user or conversation id as a label.
//! Each registry is per instance (not the global default) so several servers
//! can run in one test process.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric msgd exports; cheap to clone (handles share the registry).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    /// Open client connections (HTTP and WebSocket).
    pub http_connections: IntGauge,
    /// Connections or WebSockets refused by a cap, by reason: `max_connections`,
    /// `fd_exhausted`, `ws_per_user`, `ws_per_ip`.
    pub connections_refused_total: IntCounterVec,
    pub object_store_requests_total: IntCounterVec,
    pub object_store_request_duration_seconds: HistogramVec,
    /// 1 when the last readiness check of a dependency passed.
    pub dependency_up: IntGaugeVec,
    pub dependency_check_duration_seconds: GaugeVec,
    pub redis_command_duration_seconds: HistogramVec,
    pub redis_errors_total: IntCounterVec,
    pub auth_failures_total: IntCounterVec,
    /// Admin API calls by action ([`ADMIN_ACTIONS`]) and outcome ([`ADMIN_OUTCOMES`]).
    pub admin_requests_total: IntCounterVec,
    /// Seqs the last consistency check found in neither the tail nor the segments.
    pub recovery_lost_seqs: IntGauge,
    /// Repairs by the consistency check, by kind (`reindexed`, `counter_seeded`).
    pub recovery_repairs_total: IntCounterVec,
    pub messages_ingested_total: IntCounter,
    /// Messages edited or deleted, by kind (`edit`, `delete`).
    pub message_changes_total: IntCounterVec,
    /// Reactions added or removed, by action (`add`, `remove`).
    pub reactions_total: IntCounterVec,
    pub ingest_duration_seconds: Histogram,
    pub store_group_items: HistogramVec,
    pub idempotent_replays_total: IntCounter,
    pub rate_limited_total: IntCounterVec,
    pub idempotency_record_lookups_total: IntCounterVec,
    pub idempotency_claims_released_total: IntCounter,
    pub flush_duration_seconds: HistogramVec,
    pub flush_ticks_total: IntCounterVec,
    pub segment_bytes: Histogram,
    pub segment_records: Histogram,
    pub flush_backlog_messages: IntGauge,
    pub flush_oldest_unflushed_age_seconds: Gauge,
    pub history_requests_total: IntCounterVec,
    pub history_duration_seconds: Histogram,
    pub block_cache_hits_total: IntCounter,
    pub block_cache_misses_total: IntCounter,
    pub block_cache_bytes: IntGauge,
    pub ws_connections: IntGauge,
    pub ws_subscriptions: IntGauge,
    pub ws_frames_sent_total: IntCounterVec,
    pub ws_slow_consumer_disconnects_total: IntCounter,
    pub delivery_latency_seconds: Histogram,
    /// Segments, block rows and bytes compaction read (`in`) and wrote (`out`).
    pub compaction_segments_total: IntCounterVec,
    pub compaction_block_rows_total: IntCounterVec,
    pub compaction_bytes_total: IntCounterVec,
    /// What retention deleted, by kind (`RETENTION_KINDS`).
    pub retention_deleted_total: IntCounterVec,
    pub retention_deleted_bytes_total: IntCounter,
    pub retention_last_success_timestamp_seconds: Gauge,
    pub retention_run_duration_seconds: Histogram,
    /// Retention runs by result: `ok`, `error`, `skipped` (another instance held the lease).
    pub retention_runs_total: IntCounterVec,
    pub backup_last_success_timestamp_seconds: Gauge,
    /// Objects (and their bytes) copied to the backup target.
    pub backup_objects_total: IntCounter,
    pub backup_bytes_total: IntCounter,
    /// Attachment uploads by result: `created` (a target handed out), `stored`
    /// (bytes checked and in place), `refused` (bytes that did not match).
    pub attachment_uploads_total: IntCounterVec,
    pub attachment_uploaded_bytes_total: IntCounter,
    /// Steps of each background worker, by result (`ok`, `error`).
    pub worker_steps_total: IntCounterVec,
    pub worker_step_duration_seconds: HistogramVec,
    pub worker_last_success_timestamp_seconds: GaugeVec,
    /// Ticks that came due while a step still ran, so never started.
    pub worker_ticks_skipped_total: IntCounterVec,
    /// Work waiting for a worker (segment-flush: messages not yet in a segment).
    pub worker_queue_depth: IntGaugeVec,
    /// SIGHUP reloads of the logging settings, by result (`ok`, `error`).
    pub config_reloads_total: IntCounterVec,
    /// Redis `INFO memory`, polled (registered in services mode only).
    pub redis_memory: RedisMemory,
}

/// Redis memory gauges, from `INFO memory`.
#[derive(Clone)]
pub struct RedisMemory {
    pub used_bytes: IntGauge,
    pub peak_bytes: IntGauge,
    /// `maxmemory`; 0 when Redis has no limit.
    pub max_bytes: IntGauge,
    pub fragmentation_ratio: Gauge,
}

/// The `command` label values of the Redis metrics: every name the Redis tail times.
pub const REDIS_COMMANDS: [&str; 17] = [
    "append",
    "clear_dirty",
    "dirty",
    "get",
    "info",
    "lease",
    "ping",
    "publish",
    "rate_limit",
    "release_claims",
    "seed",
    "state_get",
    "state_raise",
    "state_remove",
    "state_set",
    "xrange",
    "xtrim",
];

/// The `op` label values of the object store metrics.
pub const OBJECT_STORE_OPS: [&str; 8] =
    ["list", "head", "put", "put_multipart", "get", "get_range", "delete", "presign"];

/// The `worker` label values of the `msgd_worker_*` metrics: one per worker type.
pub const WORKERS: [&str; 8] = [
    "segment-flush",
    "recovery",
    "compaction",
    "retention",
    "dependency-watcher",
    "membership-invalidation",
    "stats",
    "activity",
];

/// The `action` label values of `msgd_admin_requests_total`: one per admin
/// route, and `other` for anything else under `/v1/admin`.
pub const ADMIN_ACTIONS: [&str; 7] =
    ["create_app", "list_apps", "create_key", "list_keys", "rotate_key", "revoke_key", "other"];

/// The `outcome` label values of `msgd_admin_requests_total`: 2xx, 401,
/// other 4xx, 5xx.
pub const ADMIN_OUTCOMES: [&str; 4] = ["ok", "unauthenticated", "refused", "failed"];

/// The `kind` label values of `msgd_retention_deleted_total`.
pub const RETENTION_KINDS: [&str; 11] = [
    "objects",
    "block_rows",
    "attachments",
    "tail_entries",
    "idempotency_claims",
    "state_entries",
    "idempotency_records",
    "message_changes",
    "reactions",
    "replies",
    "conversations",
];

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    pub fn new(backend: &str) -> Metrics {
        let registry = Registry::new();
        let metrics = Metrics {
            http_requests_total: IntCounterVec::new(
                Opts::new("msgd_http_requests_total", "HTTP requests by method, route template and status"),
                &["method", "route", "status"],
            )
            .expect("metric"),
            http_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new("msgd_http_request_duration_seconds", "HTTP request latency by route template")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "route"],
            )
            .expect("metric"),
            http_connections: IntGauge::new("msgd_http_connections", "Open client connections (HTTP and WebSocket)")
                .expect("metric"),
            connections_refused_total: IntCounterVec::new(
                Opts::new(
                    "msgd_connections_refused_total",
                    concat!(
                        "Connections and WebSockets refused by a cap ",
                        "(max_connections, fd_exhausted, ws_per_user, ws_per_ip)",
                    ),
                ),
                &["reason"],
            )
            .expect("metric"),
            object_store_requests_total: IntCounterVec::new(
                Opts::new("msgd_object_store_requests_total", "Object store requests by operation and result"),
                &["op", "result"],
            )
            .expect("metric"),
            object_store_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new("msgd_object_store_request_duration_seconds", "Object store request latency")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["op"],
            )
            .expect("metric"),
            dependency_up: IntGaugeVec::new(
                Opts::new("msgd_dependency_up", "1 when the dependency passed its last readiness check"),
                &["dependency"],
            )
            .expect("metric"),
            dependency_check_duration_seconds: GaugeVec::new(
                Opts::new("msgd_dependency_check_duration_seconds", "Duration of the last readiness check"),
                &["dependency"],
            )
            .expect("metric"),
            redis_command_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "msgd_redis_command_duration_seconds",
                    "Redis command latency (a script counts as one)",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["command"],
            )
            .expect("metric"),
            redis_errors_total: IntCounterVec::new(
                Opts::new("msgd_redis_errors_total", "Failed Redis commands"),
                &["command"],
            )
            .expect("metric"),
            auth_failures_total: IntCounterVec::new(
                Opts::new("msgd_auth_failures_total", "Refused requests by reason (the error code)"),
                &["reason"],
            )
            .expect("metric"),
            admin_requests_total: IntCounterVec::new(
                Opts::new("msgd_admin_requests_total", "Admin API calls by action and outcome"),
                &["action", "outcome"],
            )
            .expect("metric"),
            recovery_lost_seqs: IntGauge::new(
                "msgd_recovery_lost_seqs",
                "Seqs the last consistency check found in neither the tail nor the segments (lost history)",
            )
            .expect("metric"),
            recovery_repairs_total: IntCounterVec::new(
                Opts::new(
                    "msgd_recovery_repairs_total",
                    "Repairs by the consistency check, by kind (reindexed, counter_seeded)",
                ),
                &["kind"],
            )
            .expect("metric"),
            messages_ingested_total: IntCounter::new("msgd_messages_ingested_total", "Messages accepted into the tail")
                .expect("metric"),
            message_changes_total: IntCounterVec::new(
                Opts::new("msgd_message_changes_total", "Messages edited or deleted, by kind (edit, delete)"),
                &["kind"],
            )
            .expect("metric"),
            reactions_total: IntCounterVec::new(
                Opts::new("msgd_reactions_total", "Reactions added or removed, by action (add, remove)"),
                &["action"],
            )
            .expect("metric"),
            ingest_duration_seconds: Histogram::with_opts(
                HistogramOpts::new("msgd_ingest_duration_seconds", "Time to accept one message (auth excluded)")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("metric"),
            store_group_items: HistogramVec::new(
                HistogramOpts::new(
                    "msgd_store_group_items",
                    "Items one grouped store call carried: concurrent appends to a conversation, rate-limit checks \
                     of an app, own-message marks of a conversation go together",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
                &["op"],
            )
            .expect("metric"),
            idempotent_replays_total: IntCounter::new(
                "msgd_idempotent_replays_total",
                "Sends answered with the original message because the idempotency key was seen",
            )
            .expect("metric"),
            rate_limited_total: IntCounterVec::new(
                Opts::new("msgd_rate_limited_total", "Requests refused by a rate limit, by scope (user or key)"),
                &["scope"],
            )
            .expect("metric"),
            idempotency_record_lookups_total: IntCounterVec::new(
                Opts::new(
                    "msgd_idempotency_record_lookups_total",
                    "Keyed messages looked up in the durable idempotency record because the tail's filter held \
                     their key, by result (found: a late retry; absent: the filter's false positive)",
                ),
                &["result"],
            )
            .expect("metric"),
            idempotency_claims_released_total: IntCounter::new(
                "msgd_idempotency_claims_released_total",
                "Idempotency claims the tail dropped after their messages were flushed and recorded durably",
            )
            .expect("metric"),
            flush_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "msgd_flush_duration_seconds",
                    "Flush duration by stage (and `tick` for the whole tick)",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["stage"],
            )
            .expect("metric"),
            flush_ticks_total: IntCounterVec::new(
                Opts::new("msgd_flush_ticks_total", "Flush ticks by result (ok or error)"),
                &["result"],
            )
            .expect("metric"),
            segment_bytes: Histogram::with_opts(
                HistogramOpts::new("msgd_segment_bytes", "Size of written segment objects")
                    .buckets(prometheus::exponential_buckets(1024.0, 4.0, 10).expect("buckets")),
            )
            .expect("metric"),
            segment_records: Histogram::with_opts(
                HistogramOpts::new("msgd_segment_records", "Messages per written segment")
                    .buckets(prometheus::exponential_buckets(1.0, 4.0, 12).expect("buckets")),
            )
            .expect("metric"),
            flush_backlog_messages: IntGauge::new(
                "msgd_flush_backlog_messages",
                "Messages in the tail not yet in a segment (shards this instance flushed last tick)",
            )
            .expect("metric"),
            flush_oldest_unflushed_age_seconds: Gauge::new(
                "msgd_flush_oldest_unflushed_age_seconds",
                "Age of the oldest message not yet in a segment",
            )
            .expect("metric"),
            history_requests_total: IntCounterVec::new(
                Opts::new("msgd_history_requests_total", "History range reads by source (tail or segments)"),
                &["source"],
            )
            .expect("metric"),
            history_duration_seconds: Histogram::with_opts(
                HistogramOpts::new("msgd_history_duration_seconds", "Time to answer one history page")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("metric"),
            block_cache_hits_total: IntCounter::new(
                "msgd_block_cache_hits_total",
                "Decoded segment blocks served from memory",
            )
            .expect("metric"),
            block_cache_misses_total: IntCounter::new(
                "msgd_block_cache_misses_total",
                "Segment blocks fetched and decoded",
            )
            .expect("metric"),
            block_cache_bytes: IntGauge::new(
                "msgd_block_cache_bytes",
                "Raw bytes of the decoded blocks held in memory",
            )
            .expect("metric"),
            ws_connections: IntGauge::new("msgd_ws_connections", "Open WebSocket connections").expect("metric"),
            ws_subscriptions: IntGauge::new("msgd_ws_subscriptions", "Conversation subscriptions of open WebSockets")
                .expect("metric"),
            ws_frames_sent_total: IntCounterVec::new(
                Opts::new("msgd_ws_frames_sent_total", "WebSocket frames sent, by op"),
                &["op"],
            )
            .expect("metric"),
            ws_slow_consumer_disconnects_total: IntCounter::new(
                "msgd_ws_slow_consumer_disconnects_total",
                "WebSockets closed because their send queue filled up",
            )
            .expect("metric"),
            delivery_latency_seconds: Histogram::with_opts(
                HistogramOpts::new("msgd_delivery_latency_seconds", "Ingest time to live frame written")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("metric"),
            compaction_segments_total: IntCounterVec::new(
                Opts::new("msgd_compaction_segments_total", "Segments compaction replaced (in) and wrote (out)"),
                &["direction"],
            )
            .expect("metric"),
            compaction_block_rows_total: IntCounterVec::new(
                Opts::new("msgd_compaction_block_rows_total", "Block rows compaction removed (in) and wrote (out)"),
                &["direction"],
            )
            .expect("metric"),
            compaction_bytes_total: IntCounterVec::new(
                Opts::new("msgd_compaction_bytes_total", "Segment bytes compaction replaced (in) and wrote (out)"),
                &["direction"],
            )
            .expect("metric"),
            retention_deleted_total: IntCounterVec::new(
                Opts::new("msgd_retention_deleted_total", "What retention deleted, by kind"),
                &["kind"],
            )
            .expect("metric"),
            retention_deleted_bytes_total: IntCounter::new(
                "msgd_retention_deleted_bytes_total",
                "Bytes of segment objects and attachments retention deleted",
            )
            .expect("metric"),
            retention_last_success_timestamp_seconds: Gauge::new(
                "msgd_retention_last_success_timestamp_seconds",
                "When this instance last finished a retention run (Unix seconds; 0 before the first)",
            )
            .expect("metric"),
            retention_run_duration_seconds: Histogram::with_opts(
                HistogramOpts::new("msgd_retention_run_duration_seconds", "Duration of retention runs")
                    .buckets(prometheus::exponential_buckets(0.01, 4.0, 10).expect("buckets")),
            )
            .expect("metric"),
            retention_runs_total: IntCounterVec::new(
                Opts::new("msgd_retention_runs_total", "Retention runs by result (ok, error, skipped)"),
                &["result"],
            )
            .expect("metric"),
            backup_last_success_timestamp_seconds: Gauge::new(
                "msgd_backup_last_success_timestamp_seconds",
                "When the last successful backup run started: its recovery point (Unix seconds; 0 before the first)",
            )
            .expect("metric"),
            backup_objects_total: IntCounter::new("msgd_backup_objects_total", "Objects copied to the backup target")
                .expect("metric"),
            backup_bytes_total: IntCounter::new("msgd_backup_bytes_total", "Bytes copied to the backup target")
                .expect("metric"),
            attachment_uploads_total: IntCounterVec::new(
                Opts::new("msgd_attachment_uploads_total", "Attachment uploads by result (created, stored, refused)"),
                &["result"],
            )
            .expect("metric"),
            attachment_uploaded_bytes_total: IntCounter::new(
                "msgd_attachment_uploaded_bytes_total",
                "Bytes of attachments stored and checked",
            )
            .expect("metric"),
            worker_steps_total: IntCounterVec::new(
                Opts::new("msgd_worker_steps_total", "Steps (ticks) of each background worker, by result"),
                &["worker", "result"],
            )
            .expect("metric"),
            worker_step_duration_seconds: HistogramVec::new(
                HistogramOpts::new("msgd_worker_step_duration_seconds", "Duration of one step of a worker")
                    .buckets(prometheus::exponential_buckets(0.001, 4.0, 10).expect("buckets")),
                &["worker"],
            )
            .expect("metric"),
            worker_last_success_timestamp_seconds: GaugeVec::new(
                Opts::new(
                    "msgd_worker_last_success_timestamp_seconds",
                    "When the worker last finished a step without error (Unix seconds; 0 before the first)",
                ),
                &["worker"],
            )
            .expect("metric"),
            worker_ticks_skipped_total: IntCounterVec::new(
                Opts::new(
                    "msgd_worker_ticks_skipped_total",
                    "Ticks that came due while the worker's step still ran (backlogged), so never started",
                ),
                &["worker"],
            )
            .expect("metric"),
            worker_queue_depth: IntGaugeVec::new(
                Opts::new(
                    "msgd_worker_queue_depth",
                    "Work waiting for the worker (segment-flush: messages not yet in a segment)",
                ),
                &["worker"],
            )
            .expect("metric"),
            config_reloads_total: IntCounterVec::new(
                Opts::new("msgd_config_reloads_total", "Reloads of the logging settings (SIGHUP), by result"),
                &["result"],
            )
            .expect("metric"),
            redis_memory: RedisMemory {
                used_bytes: IntGauge::new("msgd_redis_memory_used_bytes", "Redis used_memory (INFO memory)")
                    .expect("metric"),
                peak_bytes: IntGauge::new("msgd_redis_memory_peak_bytes", "Redis used_memory_peak (INFO memory)")
                    .expect("metric"),
                max_bytes: IntGauge::new("msgd_redis_memory_max_bytes", "Redis maxmemory (0: no limit set)")
                    .expect("metric"),
                fragmentation_ratio: Gauge::new(
                    "msgd_redis_memory_fragmentation_ratio",
                    "Redis mem_fragmentation_ratio (INFO memory)",
                )
                .expect("metric"),
            },
            registry,
        };
        for worker in WORKERS {
            for result in ["ok", "error"] {
                metrics.worker_steps_total.with_label_values(&[worker, result]);
            }
            metrics.worker_ticks_skipped_total.with_label_values(&[worker]);
            metrics.worker_last_success_timestamp_seconds.with_label_values(&[worker]);
            metrics.worker_queue_depth.with_label_values(&[worker]);
        }
        for result in ["ok", "error"] {
            metrics.config_reloads_total.with_label_values(&[result]);
            metrics.flush_ticks_total.with_label_values(&[result]);
        }
        for op in OBJECT_STORE_OPS {
            for result in ["ok", "error"] {
                metrics.object_store_requests_total.with_label_values(&[op, result]);
            }
        }
        if backend == "services" {
            for command in REDIS_COMMANDS {
                metrics.redis_errors_total.with_label_values(&[command]);
            }
        }
        for scope in ["user", "key", "upload"] {
            metrics.rate_limited_total.with_label_values(&[scope]);
        }
        for result in ["found", "absent"] {
            metrics.idempotency_record_lookups_total.with_label_values(&[result]);
        }
        for reason in ["max_connections", "fd_exhausted", "ws_per_user", "ws_per_ip"] {
            metrics.connections_refused_total.with_label_values(&[reason]);
        }
        for source in ["tail", "segments"] {
            metrics.history_requests_total.with_label_values(&[source]);
        }
        for result in ["created", "stored", "refused"] {
            metrics.attachment_uploads_total.with_label_values(&[result]);
        }
        for direction in ["in", "out"] {
            metrics.compaction_segments_total.with_label_values(&[direction]);
            metrics.compaction_block_rows_total.with_label_values(&[direction]);
            metrics.compaction_bytes_total.with_label_values(&[direction]);
        }
        for kind in ["edit", "delete"] {
            metrics.message_changes_total.with_label_values(&[kind]);
        }
        for action in ["add", "remove"] {
            metrics.reactions_total.with_label_values(&[action]);
        }
        for action in ADMIN_ACTIONS {
            for outcome in ADMIN_OUTCOMES {
                metrics.admin_requests_total.with_label_values(&[action, outcome]);
            }
        }
        for kind in ["reindexed", "counter_seeded"] {
            metrics.recovery_repairs_total.with_label_values(&[kind]);
        }
        for kind in RETENTION_KINDS {
            metrics.retention_deleted_total.with_label_values(&[kind]);
        }
        for result in ["ok", "error", "skipped"] {
            metrics.retention_runs_total.with_label_values(&[result]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new("msgd_build_info", "Constant 1, labelled with the version and backend"),
            &["version", "backend"],
        )
        .expect("metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), backend]).set(1);
        let r = &metrics.registry;
        for collector in [
            Box::new(metrics.http_requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.http_request_duration_seconds.clone()),
            Box::new(metrics.http_connections.clone()),
            Box::new(metrics.connections_refused_total.clone()),
            Box::new(metrics.object_store_requests_total.clone()),
            Box::new(metrics.object_store_request_duration_seconds.clone()),
            Box::new(metrics.dependency_up.clone()),
            Box::new(metrics.dependency_check_duration_seconds.clone()),
            Box::new(metrics.redis_command_duration_seconds.clone()),
            Box::new(metrics.redis_errors_total.clone()),
            Box::new(metrics.auth_failures_total.clone()),
            Box::new(metrics.admin_requests_total.clone()),
            Box::new(metrics.recovery_lost_seqs.clone()),
            Box::new(metrics.recovery_repairs_total.clone()),
            Box::new(metrics.messages_ingested_total.clone()),
            Box::new(metrics.message_changes_total.clone()),
            Box::new(metrics.reactions_total.clone()),
            Box::new(metrics.ingest_duration_seconds.clone()),
            Box::new(metrics.store_group_items.clone()),
            Box::new(metrics.idempotent_replays_total.clone()),
            Box::new(metrics.rate_limited_total.clone()),
            Box::new(metrics.idempotency_record_lookups_total.clone()),
            Box::new(metrics.idempotency_claims_released_total.clone()),
            Box::new(metrics.flush_duration_seconds.clone()),
            Box::new(metrics.flush_ticks_total.clone()),
            Box::new(metrics.segment_bytes.clone()),
            Box::new(metrics.segment_records.clone()),
            Box::new(metrics.flush_backlog_messages.clone()),
            Box::new(metrics.flush_oldest_unflushed_age_seconds.clone()),
            Box::new(metrics.history_requests_total.clone()),
            Box::new(metrics.history_duration_seconds.clone()),
            Box::new(metrics.block_cache_hits_total.clone()),
            Box::new(metrics.block_cache_misses_total.clone()),
            Box::new(metrics.block_cache_bytes.clone()),
            Box::new(metrics.ws_connections.clone()),
            Box::new(metrics.ws_subscriptions.clone()),
            Box::new(metrics.ws_frames_sent_total.clone()),
            Box::new(metrics.ws_slow_consumer_disconnects_total.clone()),
            Box::new(metrics.delivery_latency_seconds.clone()),
            Box::new(metrics.compaction_segments_total.clone()),
            Box::new(metrics.compaction_block_rows_total.clone()),
            Box::new(metrics.compaction_bytes_total.clone()),
            Box::new(metrics.retention_deleted_total.clone()),
            Box::new(metrics.retention_deleted_bytes_total.clone()),
            Box::new(metrics.retention_last_success_timestamp_seconds.clone()),
            Box::new(metrics.retention_run_duration_seconds.clone()),
            Box::new(metrics.retention_runs_total.clone()),
            Box::new(metrics.backup_last_success_timestamp_seconds.clone()),
            Box::new(metrics.backup_objects_total.clone()),
            Box::new(metrics.backup_bytes_total.clone()),
            Box::new(metrics.attachment_uploads_total.clone()),
            Box::new(metrics.attachment_uploaded_bytes_total.clone()),
            Box::new(metrics.worker_steps_total.clone()),
            Box::new(metrics.worker_step_duration_seconds.clone()),
            Box::new(metrics.worker_last_success_timestamp_seconds.clone()),
            Box::new(metrics.worker_ticks_skipped_total.clone()),
            Box::new(metrics.worker_queue_depth.clone()),
            Box::new(metrics.config_reloads_total.clone()),
            Box::new(SampledOut::new()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, "msgd")),
        ] {
            r.register(collector).expect("metric names are unique");
        }
        if backend == "services" {
            let memory = &metrics.redis_memory;
            for gauge in [&memory.used_bytes, &memory.peak_bytes, &memory.max_bytes] {
                r.register(Box::new(gauge.clone())).expect("metric names are unique");
            }
            r.register(Box::new(memory.fragmentation_ratio.clone())).expect("metric names are unique");
        }
        metrics
    }

    /// The Prometheus text exposition of the metrics whose names start with
    /// `prefix` (for a one-shot command's node_exporter textfile).
    pub fn render_prefixed(&self, prefix: &str) -> String {
        let families: Vec<_> = self.registry.gather().into_iter().filter(|f| f.name().starts_with(prefix)).collect();
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// `msgd_log_lines_sampled_out_total`: read from the process-wide log
/// writer at each scrape (the writer is one per process, registries one per
/// server).
struct SampledOut {
    desc: prometheus::core::Desc,
}

impl SampledOut {
    fn new() -> SampledOut {
        let help = "Log lines left out by log sampling ([observability.logging.sampling])";
        let desc = prometheus::core::Desc::new(
            "msgd_log_lines_sampled_out_total".into(),
            help.into(),
            vec![],
            Default::default(),
        )
        .expect("metric");
        SampledOut { desc }
    }
}

impl prometheus::core::Collector for SampledOut {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let counter =
            IntCounter::with_opts(Opts::new(self.desc.fq_name.clone(), self.desc.help.clone())).expect("metric");
        counter.inc_by(crate::logging::sampled_out());
        prometheus::core::Collector::collect(&counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names a source passes to its `timed(` helper.
    fn timed_names(source: &str) -> Vec<&str> {
        source.split("timed(\"").skip(1).filter_map(|rest| rest.split('"').next()).collect()
    }

    #[test]
    fn the_label_sets_created_at_start_cover_every_name_in_use() {
        for name in timed_names(include_str!("store/redis_tail.rs")) {
            assert!(REDIS_COMMANDS.contains(&name), "add {name:?} to REDIS_COMMANDS");
        }
        for name in timed_names(include_str!("store/objects.rs")) {
            assert!(OBJECT_STORE_OPS.contains(&name), "add {name:?} to OBJECT_STORE_OPS");
        }
    }
}
