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

/// One GCRA step: `tat` is the stored theoretical arrival time (ms), `now`
/// the clock, `interval_ms` = 1000 / rate. Returns the decision and the new
/// `tat` to store. The Redis tail runs the same arithmetic in Lua.
pub fn gcra(tat: Option<f64>, now: f64, interval_ms: f64, burst: u32) -> (RateDecision, f64) {
    let tolerance = interval_ms * f64::from(burst.max(1) - 1);
    let tat = tat.unwrap_or(now).max(now);
    if tat - now > tolerance {
        let retry = (tat - now - tolerance).ceil() as u64;
        let decision = RateDecision {
            allowed: false,
            remaining: 0,
            retry_after_ms: retry.max(1),
            reset_ms: (tat - now).ceil() as u64,
        };
        return (decision, tat);
    }
    let new_tat = tat + interval_ms;
    let remaining = ((now + tolerance - (new_tat - interval_ms)) / interval_ms).floor().max(0.0) as u32;
    let decision =
        RateDecision { allowed: true, remaining, retry_after_ms: 0, reset_ms: (new_tat - now).ceil() as u64 };
    (decision, new_tat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let (mut tat, now) = (None, 1_000_000.0);
        for expected_remaining in (0..20).rev() {
            let (decision, next) = gcra(tat, now, 100.0, 20);
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
            tat = Some(next);
        }
        let (refused, same) = gcra(tat, now, 100.0, 20);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ms, 100);
        assert_eq!(Some(same), tat);
        // One interval later exactly one more is allowed.
        let (later, _) = gcra(tat, now + 100.0, 100.0, 20);
        assert!(later.allowed && later.remaining == 0);
    }
}
