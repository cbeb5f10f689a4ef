//! The shared context of a running msgd: config, stores, metrics and the
//! per-instance caches. Built once by `serve`; domain functions take it as
//! their first parameter.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::conversations::Membership;
use crate::store::Stores;
use crate::telemetry::Metrics;

pub struct Context {
    pub config: Arc<Config>,
    pub stores: Stores,
    pub metrics: Metrics,
    pub auth: Authenticator,
    pub membership: Membership,
}

impl Context {
    pub fn new(config: Arc<Config>, stores: Stores, metrics: Metrics) -> anyhow::Result<Context> {
        let auth = Authenticator::new(&config, stores.metadata.clone())?;
        let membership = Membership::new(stores.clone());
        Ok(Context { config, stores, metrics, auth, membership })
    }
}
