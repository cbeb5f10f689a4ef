//! Metrics and logs: the Prometheus registry every component records into,
//! and the tracing subscriber set up from `[log]`.
//!
//! Naming follows Prometheus conventions: `msgd_` prefix, base units,
//! `_total` counters, and never a user or conversation id as a label.
//! Each registry is per instance (not the global default) so several servers
//! can run in one test process.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::config::{LogConfig, LogFormat};

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
    pub messages_ingested_total: IntCounter,
    pub ingest_duration_seconds: Histogram,
    pub idempotent_replays_total: IntCounter,
    pub rate_limited_total: IntCounterVec,
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
}

/// The `kind` label values of `msgd_retention_deleted_total`.
pub const RETENTION_KINDS: [&str; 6] =
    ["objects", "block_rows", "attachments", "tail_entries", "idempotency_claims", "state_entries"];

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
            messages_ingested_total: IntCounter::new("msgd_messages_ingested_total", "Messages accepted into the tail")
                .expect("metric"),
            ingest_duration_seconds: Histogram::with_opts(
                HistogramOpts::new("msgd_ingest_duration_seconds", "Time to accept one message (auth excluded)")
                    .buckets(LATENCY_BUCKETS.to_vec()),
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
            registry,
        };
        for result in ["created", "stored", "refused"] {
            metrics.attachment_uploads_total.with_label_values(&[result]);
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
            Box::new(metrics.messages_ingested_total.clone()),
            Box::new(metrics.ingest_duration_seconds.clone()),
            Box::new(metrics.idempotent_replays_total.clone()),
            Box::new(metrics.rate_limited_total.clone()),
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
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, "msgd")),
        ] {
            r.register(collector).expect("metric names are unique");
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

/// Installs the global log subscriber (stderr). Idempotent: a second call
/// (tests) keeps the first subscriber. Text logs are coloured only when stderr
/// is a terminal: escape codes in a file or a log shipper are noise.
pub fn init_logging(config: &LogConfig) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::builder().parse_lossy(&config.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}
