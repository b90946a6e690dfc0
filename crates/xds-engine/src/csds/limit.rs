//! The small tools of CSDS's bounds: a token bucket per `StreamClientStatus` stream, a gate
//! that keeps a refusal warning to one per interval, and the quoting of client strings in logs.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// A token bucket: `burst` requests at once, then `rate` per second on average.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Tokens at `at`; below zero when requests are waiting for tokens not made yet.
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate` must be above zero and `burst` at least 1 (checked with the
    /// configuration).
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: if rate > 0.0 { rate } else { 1.0 },
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token: how long the caller must wait before using it (zero when one is there).
    pub(crate) fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Lets a warning through at most once per interval (the others go to debug).
pub(crate) struct LogGate {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl LogGate {
    pub(crate) fn new(every: Duration) -> Self {
        LogGate {
            every,
            last: Mutex::new(None),
        }
    }

    pub(crate) fn open(&self) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock();
        match *last {
            Some(t) if now.saturating_duration_since(t) < self.every => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_lets_a_burst_through_then_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(2.0, 3, start);
        for _ in 0..3 {
            assert_eq!(b.take(Instant::now()), Duration::ZERO);
        }
        // The fourth waits for the next token (half a second at 2 per second), the fifth for
        // the one after it.
        assert_eq!(b.take(Instant::now()), Duration::from_millis(500));
        assert_eq!(b.take(Instant::now()), Duration::from_millis(1000));
        // After a long quiet period the bucket is full again, not fuller.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(b.take(Instant::now()), Duration::ZERO);
        }
        assert!(b.take(Instant::now()) > Duration::ZERO);

        // Over a long flood, the requests let through follow the rate.
        let mut b = TokenBucket::new(10.0, 5, Instant::now());
        let t0 = Instant::now();
        let mut passed = 0;
        while Instant::now() - t0 < Duration::from_secs(10) {
            let wait = b.take(Instant::now());
            tokio::time::sleep(wait).await;
            passed += 1;
        }
        assert!(
            (100..=106).contains(&passed),
            "{passed} requests in 10 s at 10/s, burst 5"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_opens_once_per_interval() {
        let g = LogGate::new(Duration::from_secs(10));
        assert!(g.open());
        assert!(!g.open());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(g.open());
    }
}
