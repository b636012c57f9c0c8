//! Per-agent token buckets: `rate_limit_per_minute` tokens, refilled evenly.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::ids::AgentId;

pub struct RateLimiter {
    per_second: f64,
    capacity: f64,
    buckets: Mutex<HashMap<AgentId, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            capacity: f64::from(per_minute),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token; `Err(wait)` when the agent must wait.
    pub fn check(&self, agent: AgentId) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let (tokens, last) = buckets.entry(agent).or_insert((self.capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second)
            .min(self.capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_says_how_long_to_wait() {
        let limiter = RateLimiter::new(3);
        let agent = AgentId::new();
        assert!(limiter.check(agent).is_ok());
        assert!(limiter.check(agent).is_ok());
        assert!(limiter.check(agent).is_ok());
        let wait = limiter.check(agent).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            limiter.check(AgentId::new()).is_ok(),
            "buckets are per agent"
        );
    }
}
