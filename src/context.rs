//! The shared context of a running msgd: config, stores, metrics and the
//! shared domain primitives (authentication, membership, the timeline) with
//! their per-instance caches. Built once by `serve`; use cases take it as
//! their first parameter. It sits above the primitives and below the use
//! cases: nothing it holds imports it.

use std::sync::Arc;

use crate::activity::Activity;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::membership::Membership;
use crate::store::Stores;
use crate::telemetry::Metrics;
use crate::timeline::Timeline;

pub struct Context {
    pub config: Arc<Config>,
    pub stores: Stores,
    pub metrics: Metrics,
    pub auth: Authenticator,
    pub membership: Arc<Membership>,
    pub timeline: Timeline,
    /// Pending last-activity notes for the inbox, written by [`crate::activity::ActivityWriter`].
    pub activity: Arc<Activity>,
    /// The HMAC key of history cursors, shared by every instance through the
    /// metadata store so a cursor from one instance works on another; read on
    /// first use, so `serve` starts while Postgres is down.
    cursor_key: tokio::sync::OnceCell<Vec<u8>>,
}

impl Context {
    pub fn new(config: Arc<Config>, stores: Stores, metrics: Metrics) -> anyhow::Result<Context> {
        let auth = Authenticator::new(&config, stores.metadata.clone())?;
        let membership = Arc::new(Membership::new(stores.clone()));
        let timeline = Timeline::new(
            stores.clone(),
            metrics.clone(),
            config.history.block_cache_bytes as usize,
            config.retention.period_ms(),
        );
        let activity = Arc::default();
        Ok(Context { config, stores, metrics, auth, membership, timeline, activity, cursor_key: Default::default() })
    }

    pub async fn cursor_key(&self) -> Result<&[u8], crate::error::Error> {
        let key = self
            .cursor_key
            .get_or_try_init(|| async {
                let mut candidate = [0u8; 32];
                getrandom::fill(&mut candidate).expect("the OS random number generator failed");
                self.stores.metadata.shared_secret("history-cursor", &candidate).await
            })
            .await?;
        Ok(key.as_slice())
    }
}
