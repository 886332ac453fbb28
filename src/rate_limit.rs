//! Token buckets keyed by who asks (an API key, a source address, a participant): `rate`
//! requests a second (or a minute) sustained, `burst` at once. Pure state with the time passed in, so tests need no clock; the
//! map is bounded (full, idle buckets are forgotten first, then the stalest ones), so a flood of
//! source addresses cannot grow it without end.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Most keys a limiter remembers.
const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets of one kind of caller.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `rate` per second (0 turns the limit off), `burst` at least 1.
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// `per_minute` a minute, sustained and at once (0 turns the limit off).
    pub fn per_minute(per_minute: u32) -> Self {
        RateLimiter {
            rate: f64::from(per_minute) / 60.0,
            burst: f64::from(per_minute.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now`: `Ok` or `Err(wait until the next token)`.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        if !self.buckets.contains_key(key) && self.buckets.len() >= MAX_KEYS {
            self.evict(now);
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// Forgets buckets that have refilled (they behave like new ones), else the stalest half.
    fn evict(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if self.buckets.len() >= MAX_KEYS {
            let mut ages: Vec<Instant> = self.buckets.values().map(|b| b.at).collect();
            ages.sort();
            let cut = ages[ages.len() / 2];
            self.buckets.retain(|_, b| b.at > cut);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(2, 3);
        for _ in 0..3 {
            assert!(l.check(&"a", t0).is_ok());
        }
        let wait = l.check(&"a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        // Another caller has its own bucket.
        assert!(l.check(&"b", t0).is_ok());
        // Half a second gives one token back (2 per second), not more than the burst later.
        assert!(l.check(&"a", t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check(&"a", t0 + Duration::from_millis(500)).is_err());
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(l.check(&"a", later).is_ok());
        }
        assert!(l.check(&"a", later).is_err());
    }

    #[test]
    fn off_and_bounded() {
        let t0 = Instant::now();
        let mut off = RateLimiter::new(0, 1);
        for _ in 0..100 {
            assert!(off.check(&1, t0).is_ok());
        }
        let mut l = RateLimiter::new(1, 1);
        for i in 0..(MAX_KEYS as u32 + 50) {
            let _ = l.check(&i, t0 + Duration::from_micros(u64::from(i)));
        }
        assert!(l.len() <= MAX_KEYS);
    }
}
