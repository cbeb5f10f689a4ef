//! The shared context of a running msgd: config, stores, metrics and the
//! per-instance caches. Built once by `serve`; domain functions take it as
//! their first parameter.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::conversations::Membership;
use crate::history::BlockCache;
use crate::store::Stores;
use crate::telemetry::Metrics;

pub struct Context {
    pub config: Arc<Config>,
    pub stores: Stores,
    pub metrics: Metrics,
    pub auth: Authenticator,
    pub membership: Membership,
    pub block_cache: BlockCache,
    /// The HMAC key of history cursors, shared by every instance through the
    /// metadata store so a cursor from one instance works on another; read on
    /// first use, so `serve` starts while Postgres is down.
    cursor_key: tokio::sync::OnceCell<Vec<u8>>,
}

impl Context {
    pub fn new(config: Arc<Config>, stores: Stores, metrics: Metrics) -> anyhow::Result<Context> {
        let auth = Authenticator::new(&config, stores.metadata.clone())?;
        let membership = Membership::new(stores.clone());
        let block_cache = BlockCache::new(config.history.block_cache_bytes as usize, metrics.clone());
        Ok(Context { config, stores, metrics, auth, membership, block_cache, cursor_key: Default::default() })
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
