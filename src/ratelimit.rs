//! Token-bucket rate limiting for client messages, driven by a caller-supplied clock.
//!
//! A [`TokenBucket`] holds up to `burst` tokens and gains `rate_per_sec` tokens per second. Each
//! message takes one (or `n`) tokens. The bucket never reads the clock: every call takes `now`,
//! so tests can drive it with synthetic instants. It keeps tokens as exact integers in units of
//! 10⁻⁹ token, so refills lose no fractions however often they run.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Sub-token units per token: one token per second equals one unit per nanosecond.
const UNITS_PER_TOKEN: u64 = 1_000_000_000;
const NANOS_PER_MILLI: u128 = 1_000_000;

/// Result of taking tokens from a [`TokenBucket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The tokens were taken; process the message.
    Allow,
    /// Not enough tokens; nothing was taken. `retry_after` is the time until enough tokens are
    /// available, rounded up to whole milliseconds.
    Throttle { retry_after: Duration },
}

/// Token bucket for one client.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Tokens gained per second; 0 means no limit.
    rate_per_sec: u32,
    /// Maximum tokens held, in units. INVARIANT: `units <= capacity_units`.
    capacity_units: u64,
    /// Tokens held, in units of 10⁻⁹ token.
    units: u64,
    /// Latest instant the bucket was refilled to. Never moves backwards.
    refilled_at: Instant,
}

impl TokenBucket {
    /// Creates a full bucket that gains `rate_per_sec` tokens per second up to `burst`.
    ///
    /// `rate_per_sec` 0 means no limit: every take is allowed. `burst` 0 is treated as 1,
    /// because a bucket that can hold no token would throttle every message forever.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let capacity_units = u64::from(burst.max(1)) * UNITS_PER_TOKEN;
        Self {
            rate_per_sec,
            capacity_units,
            units: capacity_units,
            refilled_at: now,
        }
    }

    /// Takes one token. See [`TokenBucket::try_take_n`].
    pub fn try_take(&mut self, now: Instant) -> Decision {
        self.try_take_n(1, now)
    }

    /// Takes `n` tokens if the bucket contains them at `now`, and otherwise takes none.
    ///
    /// A `now` earlier than a previous call counts as no time passed: it never panics and never
    /// adds tokens. `n` 0 is always allowed. When `n` exceeds the burst size the request can
    /// never succeed, so it is throttled with `retry_after` of `Duration::MAX`.
    pub fn try_take_n(&mut self, n: u32, now: Instant) -> Decision {
        if self.rate_per_sec == 0 {
            return Decision::Allow;
        }
        self.refill(now);

        let needed = u64::from(n) * UNITS_PER_TOKEN;
        if needed > self.capacity_units {
            return Decision::Throttle {
                retry_after: Duration::MAX,
            };
        }
        if let Some(left) = self.units.checked_sub(needed) {
            self.units = left;
            return Decision::Allow;
        }

        // One unit arrives every 1/rate_per_sec nanoseconds, so the wait is
        // ceil(missing / rate_per_sec) nanoseconds, reported in whole milliseconds rounded up.
        let missing = needed - self.units;
        let wait_nanos = u128::from(missing).div_ceil(u128::from(self.rate_per_sec));
        let wait_millis = wait_nanos.div_ceil(NANOS_PER_MILLI);
        // `missing` is below 2^64 and the rate is at least 1, so this fits in u64.
        let retry_after = Duration::from_millis(u64::try_from(wait_millis).unwrap_or(u64::MAX));
        Decision::Throttle { retry_after }
    }

    /// Adds the tokens gained between the last refill and `now`, capped at the burst size.
    fn refill(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.refilled_at) else {
            return;
        };
        self.refilled_at = now;

        // Units gained equal elapsed nanoseconds times the rate; u128 can represent any Duration times
        // u32::MAX.
        let gained = elapsed
            .as_nanos()
            .saturating_mul(u128::from(self.rate_per_sec));
        let free = u128::from(self.capacity_units - self.units);
        // `gained.min(free)` is at most `free`, which came from a u64.
        let added = u64::try_from(gained.min(free)).unwrap_or(0);
        self.units += added;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn throttle(millis: u64) -> Decision {
        Decision::Throttle {
            retry_after: ms(millis),
        }
    }

    const _: () = assert!(std::mem::size_of::<TokenBucket>() <= 40);

    #[test]
    fn bucket_burst_then_throttle() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, start);
        for taken in 0..5 {
            assert_eq!(bucket.try_take(start), Decision::Allow, "token {taken}");
        }
        assert_eq!(bucket.try_take(start), throttle(100));
        assert_eq!(
            bucket.try_take(start),
            throttle(100),
            "a throttled take costs nothing"
        );
    }

    #[test]
    fn bucket_refills_at_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(4, 1, start);
        assert_eq!(bucket.try_take(start), Decision::Allow);
        assert_eq!(bucket.try_take(start + ms(249)), throttle(1));
        assert_eq!(bucket.try_take(start + ms(250)), Decision::Allow);
        assert_eq!(bucket.try_take(start + ms(250)), throttle(250));

        let mut allowed = 0;
        for step in 1..=40 {
            if bucket.try_take(start + ms(250) + ms(step * 25)) == Decision::Allow {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 4, "one second at 4 per second allows 4");
    }

    #[test]
    fn bucket_frequent_refills_lose_no_fraction() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, 1, start);
        assert_eq!(bucket.try_take(start), Decision::Allow);
        // 1/3 s is 333_333_333.3 ns: a third of a token every 111_111_111 ns must still add up.
        let step = Duration::from_nanos(111_111_111);
        for tick in 1..=2 {
            assert!(matches!(
                bucket.try_take(start + step * tick),
                Decision::Throttle { .. }
            ));
        }
        assert_eq!(
            bucket.try_take(start + step * 3 + Duration::from_nanos(1)),
            Decision::Allow
        );
    }

    #[test]
    fn bucket_retry_after_rounds_up_to_millisecond() {
        let start = Instant::now();
        let cases = [
            (1, Duration::ZERO, 1_000),
            (3, Duration::ZERO, 334),
            (1_000, Duration::ZERO, 1),
            (1_000_000, Duration::ZERO, 1),
            (10, ms(99), 1),
            (10, Duration::from_micros(99_999), 1),
            (10, ms(50), 50),
            (7, ms(100), 43),
        ];
        for (rate, waited, expected_ms) in cases {
            let mut bucket = TokenBucket::new(rate, 1, start);
            assert_eq!(bucket.try_take(start), Decision::Allow);
            assert_eq!(
                bucket.try_take(start + waited),
                throttle(expected_ms),
                "rate {rate}"
            );
        }
    }

    #[test]
    fn bucket_retry_after_is_exact_wait() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, 1, start);
        assert_eq!(bucket.try_take(start), Decision::Allow);
        let Decision::Throttle { retry_after } = bucket.try_take(start) else {
            panic!("empty bucket must throttle");
        };
        assert_eq!(
            bucket.try_take(start + retry_after - Duration::from_millis(1)),
            throttle(1)
        );
        assert_eq!(bucket.try_take(start + retry_after), Decision::Allow);
    }

    #[test]
    fn bucket_long_idle_caps_at_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, 3, start);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(start), Decision::Allow);
        }
        let later = start + Duration::from_secs(86_400 * 365);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(later), Decision::Allow);
        }
        assert_eq!(bucket.try_take(later), throttle(10));
    }

    #[test]
    fn bucket_time_going_backwards_mints_nothing() {
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1, 1, later);
        assert_eq!(bucket.try_take(later), Decision::Allow);
        assert_eq!(bucket.try_take(start), throttle(1_000));
        assert_eq!(bucket.try_take(later + ms(500)), throttle(500));
        assert_eq!(
            bucket.try_take(start),
            throttle(500),
            "earlier instant adds nothing"
        );
        assert_eq!(bucket.try_take(later + ms(1_000)), Decision::Allow);
    }

    #[test]
    fn bucket_zero_rate_never_limits() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0, 1, start);
        for _ in 0..10_000 {
            assert_eq!(bucket.try_take(start), Decision::Allow);
        }
        assert_eq!(bucket.try_take_n(u32::MAX, start), Decision::Allow);
    }

    #[test]
    fn bucket_zero_burst_holds_one_token() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2, 0, start);
        assert_eq!(bucket.try_take(start), Decision::Allow);
        assert_eq!(bucket.try_take(start), throttle(500));
    }

    #[test]
    fn bucket_take_n_is_all_or_nothing() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 10, start);
        assert_eq!(bucket.try_take_n(7, start), Decision::Allow);
        assert_eq!(bucket.try_take_n(4, start), throttle(100));
        assert_eq!(bucket.try_take_n(3, start), Decision::Allow);
        assert_eq!(bucket.try_take_n(0, start), Decision::Allow);
        assert_eq!(bucket.try_take_n(10, start), throttle(1_000));
    }

    #[test]
    fn bucket_take_more_than_burst_is_never_allowed() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 4, start);
        let never = Decision::Throttle {
            retry_after: Duration::MAX,
        };
        assert_eq!(bucket.try_take_n(5, start), never);
        assert_eq!(
            bucket.try_take_n(5, start + Duration::from_secs(3_600)),
            never
        );
        assert_eq!(
            bucket.try_take_n(4, start),
            Decision::Allow,
            "the failed take cost nothing"
        );
    }

    #[test]
    fn bucket_extreme_settings_do_not_overflow() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(u32::MAX, u32::MAX, start);
        assert_eq!(bucket.try_take_n(u32::MAX, start), Decision::Allow);
        assert_eq!(bucket.try_take(start), throttle(1));
        let far = start + Duration::from_secs(u64::from(u32::MAX) * 1_000);
        assert_eq!(bucket.try_take_n(u32::MAX, far), Decision::Allow);

        let mut slow = TokenBucket::new(1, u32::MAX, start);
        assert_eq!(slow.try_take_n(u32::MAX, start), Decision::Allow);
        let wait = Duration::from_secs(u64::from(u32::MAX));
        assert_eq!(
            slow.try_take_n(u32::MAX, start),
            Decision::Throttle { retry_after: wait }
        );
    }
}
