//! Coordination between instances: rate-limit buckets and leases. Services
//! mode keeps both in Redis, shared by every instance; embedded mode is one
//! process by definition, so [`InProcess`] keeps them in memory — honestly
//! named, since a restart refills the buckets and drops the leases.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::StoreError;
use crate::ratelimit::{take, Bucket, Grant, RateCheck};

#[async_trait]
pub trait Coordination: Send + Sync {
    /// Several rate-limit checks of one app's buckets, in order, in one step
    /// (a bucket two checks name is one bucket): each takes up to its
    /// `wanted` requests from all of its buckets at once, the same number from
    /// each (see [`crate::ratelimit::take`]). The buckets of one app share a
    /// Redis cluster slot.
    async fn rate_limit_many(&self, app_id: &str, checks: &[RateCheck]) -> Result<Vec<Grant>, StoreError>;

    /// One check of [`Coordination::rate_limit_many`].
    async fn rate_limit(&self, app_id: &str, buckets: &[Bucket], wanted: u32) -> Result<Grant, StoreError> {
        let check = RateCheck { buckets: buckets.to_vec(), wanted };
        let mut grants = self.rate_limit_many(app_id, std::slice::from_ref(&check)).await?;
        grants.pop().ok_or_else(|| StoreError::Corrupt { dependency: "rate limits", message: "no grant".into() })
    }

    /// Takes (or renews, when `holder` already has it) the lease `name` for
    /// `ttl`; false when someone else holds it. Leases split background work
    /// between instances; they are not a fence — guarded commits are.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Gives a lease back if `holder` still has it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// Above this many buckets, full ones are dropped on the next check.
const MAX_IDLE_BUCKETS: usize = 10_000;

/// Buckets and leases of a single process (embedded mode).
#[derive(Default)]
pub(crate) struct InProcess {
    /// Bucket → its GCRA theoretical arrival time (Unix ms).
    buckets: Mutex<HashMap<String, f64>>,
    /// Lease → (holder, until).
    leases: Mutex<HashMap<String, (String, Instant)>>,
}

#[async_trait]
impl Coordination for InProcess {
    async fn rate_limit_many(&self, app_id: &str, checks: &[RateCheck]) -> Result<Vec<Grant>, StoreError> {
        let now = crate::clock::now_ms() as f64;
        let mut held = self.buckets.lock().expect("rate buckets lock");
        if held.len() > MAX_IDLE_BUCKETS {
            held.retain(|_, tat| *tat > now);
        }
        let mut grants = Vec::with_capacity(checks.len());
        for check in checks {
            let keys: Vec<String> = check.buckets.iter().map(|bucket| format!("{app_id}:{}", bucket.key)).collect();
            let tats: Vec<Option<f64>> = keys.iter().map(|key| held.get(key).copied()).collect();
            let (grant, tats) = take(&check.buckets, &tats, now, check.wanted);
            for (key, tat) in keys.into_iter().zip(tats) {
                held.insert(key, tat);
            }
            grants.push(grant);
        }
        Ok(grants)
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut leases = self.leases.lock().expect("leases lock");
        let now = Instant::now();
        match leases.get(name) {
            Some((other, until)) if other != holder && *until > now => Ok(false),
            _ => {
                leases.insert(name.to_string(), (holder.to_string(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut leases = self.leases.lock().expect("leases lock");
        if leases.get(name).is_some_and(|(other, _)| other == holder) {
            leases.remove(name);
        }
        Ok(())
    }
}
