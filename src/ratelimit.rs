//! Rate-limit arithmetic (GCRA: a token bucket without a refill timer),
//! pure: the embedded tail stores the state in process, the Redis tail runs
//! the same arithmetic in Lua, and the domain reads the decision to answer
//! with `Retry-After` and the RateLimit fields.

/// The answer of a rate-limit check (GCRA: a token bucket without a
/// refill timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// When refused: how long until one request is allowed again.
    pub retry_after_ms: u64,
    /// How long until the bucket is full again.
    pub reset_ms: u64,
}

/// One bucket of a rate-limit check.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub key: String,
    pub rate_per_second: f64,
    pub burst: u32,
}

impl Bucket {
    pub fn new(key: impl Into<String>, rate_per_second: f64, burst: u32) -> Bucket {
        Bucket { key: key.into(), rate_per_second, burst }
    }

    /// Milliseconds per token.
    pub fn interval_ms(&self) -> f64 {
        1000.0 / self.rate_per_second
    }

    /// How far ahead of now the arrival time may run: the burst beyond the first token.
    fn tolerance_ms(&self) -> f64 {
        self.interval_ms() * f64::from(self.burst.max(1) - 1)
    }
}

/// One rate-limit check: up to `wanted` requests from every bucket at once.
#[derive(Debug, Clone, PartialEq)]
pub struct RateCheck {
    pub buckets: Vec<Bucket>,
    pub wanted: u32,
}

/// What a check of several buckets granted.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Requests granted, the same number taken from every bucket: at most
    /// what was wanted and what the emptiest bucket held.
    pub granted: u32,
    /// Each bucket's state after the grant, in the order given; `allowed` is
    /// false for a bucket that held fewer than were wanted.
    pub decisions: Vec<RateDecision>,
}

impl Grant {
    /// The first bucket that held fewer than were wanted, with its decision.
    pub fn refused(&self) -> Option<(usize, RateDecision)> {
        self.decisions.iter().position(|d| !d.allowed).map(|i| (i, self.decisions[i]))
    }
}

/// GCRA over several buckets at once: takes up to `wanted` tokens from each,
/// the same number from all. `tats` are the stored theoretical arrival times
/// (Unix ms) of `buckets`, `now` the clock. Returns the grant and the new
/// arrival times to store. The Redis tail runs the same arithmetic in Lua.
pub fn take(buckets: &[Bucket], tats: &[Option<f64>], now: f64, wanted: u32) -> (Grant, Vec<f64>) {
    let held: Vec<(f64, u32)> = buckets
        .iter()
        .zip(tats)
        .map(|(bucket, tat)| {
            let (interval, tolerance) = (bucket.interval_ms(), bucket.tolerance_ms());
            let tat = tat.unwrap_or(now).max(now);
            let available =
                if tat - now > tolerance { 0 } else { ((now + tolerance - tat) / interval).floor() as u32 + 1 };
            (tat, available)
        })
        .collect();
    let granted = held.iter().map(|(_, available)| *available).fold(wanted, u32::min);
    let mut new_tats = Vec::with_capacity(buckets.len());
    let decisions = buckets
        .iter()
        .zip(&held)
        .map(|(bucket, (tat, available))| {
            let (interval, tolerance) = (bucket.interval_ms(), bucket.tolerance_ms());
            let tat = tat + f64::from(granted) * interval;
            new_tats.push(tat);
            let allowed = *available >= wanted;
            RateDecision {
                allowed,
                remaining: available - granted,
                retry_after_ms: if allowed { 0 } else { ((tat - now - tolerance).ceil() as u64).max(1) },
                reset_ms: (tat - now).ceil() as u64,
            }
        })
        .collect();
    (Grant { granted, decisions }, new_tats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bucket_allows_the_burst_then_the_rate() {
        let bucket = [Bucket::new("b", 10.0, 20)];
        let (mut tat, now) = (None, 1_000_000.0);
        for expected_remaining in (0..20).rev() {
            let (grant, next) = take(&bucket, &[tat], now, 1);
            assert_eq!((grant.granted, grant.decisions[0].remaining), (1, expected_remaining));
            assert!(grant.refused().is_none());
            tat = Some(next[0]);
        }
        let (refused, same) = take(&bucket, &[tat], now, 1);
        assert_eq!(refused.granted, 0);
        assert_eq!(refused.refused().map(|(i, d)| (i, d.retry_after_ms)), Some((0, 100)));
        assert_eq!(Some(same[0]), tat);
        // One interval later exactly one more is allowed.
        let (later, _) = take(&bucket, &[tat], now + 100.0, 1);
        assert!(later.granted == 1 && later.decisions[0].remaining == 0);
    }

    #[test]
    fn taking_several_at_once_is_taking_them_one_by_one() {
        let buckets = [Bucket::new("user", 10.0, 5), Bucket::new("key", 100.0, 8)];
        let now = 5_000.0;
        let (together, tats) = take(&buckets, &[None, None], now, 7);
        assert_eq!(together.granted, 5, "the user's bucket holds 5");
        assert_eq!(together.refused().map(|(i, _)| i), Some(0));
        let mut one_by_one = vec![None, None];
        let mut granted = 0;
        for _ in 0..7 {
            let (grant, next) = take(&buckets, &one_by_one, now, 1);
            granted += grant.granted;
            one_by_one = next.into_iter().map(Some).collect();
        }
        assert_eq!(granted, together.granted);
        assert_eq!(one_by_one, tats.iter().copied().map(Some).collect::<Vec<_>>());
        // The key's bucket gave what the user's could take, no more.
        assert_eq!(together.decisions[1].remaining, 3);
        assert!(together.decisions[1].allowed);
    }
}
