//! Token buckets per key (an agent, a client address): `per_minute` tokens, refilled evenly.
//! Shared by the agent API (requests per agent, failed authentications per address) and the run
//! scheduler (runs per agent).

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Keys kept before idle buckets are dropped (a full bucket carries no information).
const MAX_KEYS: usize = 100_000;

/// A token bucket per key.
pub struct RateLimiter<K> {
    per_second: f64,
    capacity: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_minute` tokens per key, refilled evenly.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            capacity: f64::from(per_minute),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token; `Err(wait)` when the key must wait.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.take(key, true)
    }

    /// Whether a token is available, without taking it.
    pub fn peek(&self, key: &K) -> Result<(), Duration> {
        self.take(key, false)
    }

    fn take(&self, key: &K, consume: bool) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > MAX_KEYS {
            let capacity = self.capacity;
            let per_second = self.per_second;
            buckets.retain(|_, (t, last)| {
                *t + now.duration_since(*last).as_secs_f64() * per_second < capacity
            });
        }
        let (tokens, last) = buckets.entry(key.clone()).or_insert((self.capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second)
            .min(self.capacity);
        *last = now;
        if *tokens >= 1.0 {
            if consume {
                *tokens -= 1.0;
            }
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::AgentId;

    #[test]
    fn bucket_empties_and_says_how_long_to_wait() {
        let limiter = RateLimiter::new(3);
        let agent = AgentId::new();
        assert!(limiter.check(&agent).is_ok());
        assert!(limiter.check(&agent).is_ok());
        assert!(limiter.check(&agent).is_ok());
        let wait = limiter.check(&agent).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            limiter.check(&AgentId::new()).is_ok(),
            "buckets are per agent"
        );
    }
}
