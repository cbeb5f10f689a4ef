//! The `stats` worker of `serve`: polls into the metrics what msgd's own code
//! does not see happen — Redis memory (`INFO memory`, services mode) and when
//! the deployment-wide jobs last succeeded, whichever process ran them (the
//! retention worker of another instance, `msgd retention` under cron, `msgd
//! backup-r2 run` under a timer) — so the alerts on those times work from any
//! instance's scrape.

use std::time::Duration;

use async_trait::async_trait;

use crate::store::Stores;
use crate::telemetry::Metrics;
use crate::worker::{Worker, WorkerState};

/// How often the worker polls.
const INTERVAL: Duration = Duration::from_secs(15);

pub struct StatsWorker {
    stores: Stores,
    metrics: Metrics,
}

impl StatsWorker {
    pub fn new(stores: Stores, metrics: Metrics) -> StatsWorker {
        StatsWorker { stores, metrics }
    }

    async fn poll_memory(&self) -> anyhow::Result<()> {
        if let Some(memory) = self.stores.tail.memory().await? {
            let gauges = &self.metrics.redis_memory;
            gauges.used_bytes.set(memory.used_bytes);
            gauges.peak_bytes.set(memory.peak_bytes);
            gauges.max_bytes.set(memory.max_bytes);
            gauges.fragmentation_ratio.set(memory.fragmentation_ratio);
        }
        Ok(())
    }

    async fn poll_jobs(&self) -> anyhow::Result<()> {
        for (job, at_ms) in self.stores.metadata.job_successes().await? {
            let gauge = match job.as_str() {
                "retention" => &self.metrics.retention_last_success_timestamp_seconds,
                "backup" => &self.metrics.backup_last_success_timestamp_seconds,
                _ => continue,
            };
            let at = at_ms as f64 / 1000.0;
            if at > gauge.get() {
                gauge.set(at);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Worker for StatsWorker {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn component(&self) -> &'static str {
        "telemetry"
    }

    fn interval(&self) -> Option<Duration> {
        Some(INTERVAL)
    }

    /// Both polls, even when one fails (Redis down leaves the job times current).
    async fn work(&mut self) -> anyhow::Result<WorkerState> {
        let (memory, jobs) = tokio::join!(self.poll_memory(), self.poll_jobs());
        memory.and(jobs)?;
        Ok(WorkerState::Idle)
    }
}
