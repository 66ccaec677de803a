//! Pure planning for the load generator: open-loop send schedules, which connections send,
//! which worker runs each connection, and which messages carry injected faults. Also parses the
//! `--cpu-list` and `--source-addrs` options.
//!
//! Nothing here reads the clock: schedules take `now` from the caller.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

/// Most source addresses one `--source-addrs` option may name.
const MAX_SOURCE_ADDRS: u32 = 65_536;

/// Error in a `--cpu-list` or `--source-addrs` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("invalid CPU list {text:?}: expected core numbers and ranges such as 0,2-3")]
    CpuList { text: String },
    #[error(
        "invalid source address list {text:?}: expected addresses or IPv4 ranges such as 127.0.0.2-127.0.0.40"
    )]
    SourceAddrs { text: String },
    #[error("source address range {text:?} names more than {MAX_SOURCE_ADDRS} addresses")]
    SourceRangeTooLarge { text: String },
    #[error("source address range {text:?} ends before it starts; write the lower address first")]
    SourceRangeReversed { text: String },
}

/// Open-loop schedule of one connection: message `k` is due at `start + k * interval`,
/// whether or not earlier messages got their replies. Latency is measured from the due time, so a
/// stalled server shows up as latency instead of as fewer samples.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    interval: Duration,
    next: u64,
}

impl Pacer {
    /// A schedule with its first message due at `start`.
    pub fn new(start: Instant, interval: Duration) -> Self {
        Self {
            start,
            interval,
            next: 0,
        }
    }

    /// Due time of the next message.
    pub fn next_due(&self) -> Instant {
        let offset = self
            .interval
            .saturating_mul(u32::try_from(self.next).unwrap_or(u32::MAX));
        // Beyond u32::MAX intervals (centuries at any useful rate) the schedule stops growing.
        self.start + offset
    }

    /// Returns the due time of the next message and advances, if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Instant> {
        let due = self.next_due();
        if due > now {
            return None;
        }
        self.next += 1;
        Some(due)
    }

    /// Drops every due time before `now`: the schedule restarts at `now`. Used after a planned
    /// pause, so messages that were never meant to be sent do not count as late. Returns the
    /// number of due times dropped.
    pub fn rebase(&mut self, now: Instant) -> u64 {
        let due = self.next_due();
        let skipped = if now < due || self.interval.is_zero() {
            0
        } else {
            let behind = now.duration_since(due).as_nanos() / self.interval.as_nanos();
            u64::try_from(behind).unwrap_or(u64::MAX).saturating_add(1)
        };
        self.start = now;
        self.next = 0;
        skipped
    }
}

/// Interval between messages of one connection and the offset of connection number `rank`
/// among `senders`, for an aggregate `rate` in messages per second. The offsets of ranks
/// below `senders` spread the connections evenly over one interval.
pub fn pacing(rate: f64, senders: u32, rank: u32) -> (Duration, Duration) {
    let rate = rate.max(f64::MIN_POSITIVE);
    let interval = Duration::from_secs_f64((f64::from(senders.max(1)) / rate).min(3600.0));
    let phase = Duration::from_secs_f64((f64::from(rank) / rate).min(3600.0));
    (interval, phase)
}

/// Returns true when connection `index` is one of the `ratio` share that sends. Active
/// connections are spread evenly over the index range, so every worker gets its share.
pub fn is_active(index: u32, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let before = (f64::from(index) * ratio).floor();
    let after = (f64::from(index + 1) * ratio).floor();
    after > before
}

/// Number of connections below `index` that are active, which is the rank of `index` when it
/// is active itself.
pub fn active_rank(index: u32, ratio: f64) -> u32 {
    if ratio >= 1.0 {
        return index;
    }
    // floor(index * ratio) <= index, so the value fits in u32.
    u32::try_from((f64::from(index) * ratio).floor() as u64).unwrap_or(index)
}

/// Worker that runs connection `index`. The two users of a relay pair share a worker, so a
/// delivery can be matched to its sender without crossing threads.
pub fn worker_for(index: u32, pairs: bool, workers: usize) -> usize {
    let slot = if pairs { index / 2 } else { index };
    usize::try_from(slot).unwrap_or(0) % workers.max(1)
}

/// Kind of fault mixed into the traffic by `--invalid-ratio`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// A message of one byte more than the server's cap: expect close code 1009.
    Oversize,
    /// A JSON message the server must reject with `invalid_json`.
    MalformedJson,
    /// A message sent right after the connection's rate bucket was drained: expect
    /// `rate_limited`.
    OverRate,
}

/// Chooses, message by message, whether to inject a fault and which one.
#[derive(Debug, Clone)]
pub struct Injector {
    ratio: f64,
    kinds: Vec<Injection>,
    rng: SmallRng,
    /// Rejected messages in a row on the current connection.
    consecutive_rejections: u32,
    /// The server closes after this many rejections in a row, so the injector stays below it.
    max_violations: u32,
}

impl Injector {
    /// An injector that picks uniformly among `kinds` with probability `ratio` per message,
    /// seeded so that a run can be repeated.
    pub fn new(ratio: f64, kinds: Vec<Injection>, seed: u64, max_violations: u32) -> Self {
        Self {
            ratio,
            kinds,
            rng: SmallRng::seed_from_u64(seed),
            consecutive_rejections: 0,
            max_violations,
        }
    }

    /// Decides the next message: `None` for a valid one.
    pub fn choose(&mut self) -> Option<Injection> {
        if self.kinds.is_empty() || self.ratio <= 0.0 || !self.rng.random_bool(self.ratio.min(1.0))
        {
            self.consecutive_rejections = 0;
            return None;
        }
        let pick = self.rng.random_range(0..self.kinds.len());
        let kind = self.kinds.get(pick).copied()?;
        match kind {
            Injection::Oversize => self.consecutive_rejections = 0,
            // The burst before the over-rate message is accepted, which resets the count.
            Injection::OverRate => self.consecutive_rejections = 1,
            Injection::MalformedJson => {
                if self.consecutive_rejections + 1 >= self.max_violations {
                    self.consecutive_rejections = 0;
                    return None;
                }
                self.consecutive_rejections += 1;
            }
        }
        Some(kind)
    }

    /// Starts the count of rejections in a row again, for a new connection.
    pub fn reset(&mut self) {
        self.consecutive_rejections = 0;
    }
}

/// Parses a CPU list such as `0,2-3` (the `taskset -c` syntax).
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, PlanError> {
    let invalid = || PlanError::CpuList {
        text: text.to_owned(),
    };
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (first, last),
            None => (part, part),
        };
        let first: usize = first.trim().parse().map_err(|_| invalid())?;
        let last: usize = last.trim().parse().map_err(|_| invalid())?;
        if last < first || last - first >= 4096 {
            return Err(invalid());
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Parses source addresses: a comma-separated list of addresses and IPv4 ranges
/// `first-last`, for example `127.0.0.2-127.0.0.40,::1`.
pub fn parse_source_addrs(text: &str) -> Result<Vec<IpAddr>, PlanError> {
    let invalid = || PlanError::SourceAddrs {
        text: text.to_owned(),
    };
    let mut addrs = Vec::new();
    for part in text.split(',').map(str::trim) {
        let Some((first, last)) = part.split_once('-') else {
            addrs.push(part.parse::<IpAddr>().map_err(|_| invalid())?);
            continue;
        };
        let first: Ipv4Addr = first.trim().parse().map_err(|_| invalid())?;
        let last: Ipv4Addr = last.trim().parse().map_err(|_| invalid())?;
        let (first, last) = (u32::from(first), u32::from(last));
        if last < first {
            return Err(PlanError::SourceRangeReversed {
                text: part.to_owned(),
            });
        }
        if last - first >= MAX_SOURCE_ADDRS {
            return Err(PlanError::SourceRangeTooLarge {
                text: part.to_owned(),
            });
        }
        addrs.extend((first..=last).map(|raw| IpAddr::V4(Ipv4Addr::from(raw))));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_releases_messages_at_due_times() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, Duration::from_millis(10));
        assert_eq!(pacer.pop_due(start), Some(start));
        assert_eq!(pacer.pop_due(start), None);
        assert_eq!(pacer.next_due(), start + Duration::from_millis(10));

        // A late caller gets every missed due time, each with its own intended instant.
        let late = start + Duration::from_millis(35);
        let due: Vec<_> = std::iter::from_fn(|| pacer.pop_due(late)).collect();
        assert_eq!(
            due,
            [10, 20, 30].map(|ms| start + Duration::from_millis(ms))
        );
    }

    #[test]
    fn pacer_rebase_skips_missed_due_times() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, Duration::from_millis(10));
        let later = start + Duration::from_secs(1);
        // Due at 0, 10, ..., 1000 ms: 101 due times, none sent.
        assert_eq!(pacer.rebase(later), 101);
        assert_eq!(pacer.pop_due(later), Some(later));
        assert_eq!(pacer.pop_due(later), None);
        // Only the due time at `later` itself was taken, so nothing is behind yet.
        assert_eq!(pacer.rebase(later + Duration::from_millis(5)), 0);
    }

    #[test]
    fn pacing_spreads_senders_over_one_interval() {
        let (interval, phase) = pacing(1000.0, 100, 0);
        assert_eq!(interval, Duration::from_millis(100));
        assert_eq!(phase, Duration::ZERO);
        let (_, phase) = pacing(1000.0, 100, 99);
        assert_eq!(phase, Duration::from_millis(99));
    }

    #[test]
    fn active_share_is_spread_and_counted() {
        let active: Vec<u32> = (0..1000).filter(|&i| is_active(i, 0.01)).collect();
        assert_eq!(active.len(), 10);
        assert_eq!(active.first(), Some(&99));
        assert_eq!(active_rank(99, 0.01), 0);
        assert_eq!(active_rank(199, 0.01), 1);
        assert!((0..50).all(|i| is_active(i, 1.0)));
        assert_eq!(active_rank(7, 1.0), 7);
    }

    #[test]
    fn worker_for_keeps_relay_pairs_together() {
        for index in (0..100).step_by(2) {
            assert_eq!(worker_for(index, true, 3), worker_for(index + 1, true, 3));
        }
        assert_eq!(worker_for(5, false, 2), 1);
        assert_eq!(worker_for(5, false, 0), 0);
    }

    #[test]
    fn injector_ratio_zero_never_injects() {
        let mut injector = Injector::new(0.0, vec![Injection::Oversize], 1, 10);
        assert!((0..1000).all(|_| injector.choose().is_none()));
    }

    #[test]
    fn injector_ratio_is_roughly_kept_and_kinds_all_appear() {
        let kinds = vec![
            Injection::Oversize,
            Injection::MalformedJson,
            Injection::OverRate,
        ];
        let mut injector = Injector::new(0.2, kinds, 7, 10);
        let picks: Vec<_> = (0..10_000).filter_map(|_| injector.choose()).collect();
        assert!((1_600..2_400).contains(&picks.len()), "{}", picks.len());
        for kind in [
            Injection::Oversize,
            Injection::MalformedJson,
            Injection::OverRate,
        ] {
            assert!(picks.contains(&kind), "{kind:?}");
        }
    }

    #[test]
    fn injector_stays_below_max_violations() {
        let mut injector = Injector::new(1.0, vec![Injection::MalformedJson], 3, 4);
        let picks: Vec<_> = (0..12).map(|_| injector.choose()).collect();
        let malformed = Some(Injection::MalformedJson);
        assert_eq!(
            picks,
            [
                malformed, malformed, malformed, None, malformed, malformed, malformed, None,
                malformed, malformed, malformed, None
            ]
        );
    }

    #[test]
    fn injector_same_seed_repeats() {
        let kinds = vec![Injection::MalformedJson, Injection::OverRate];
        let mut first = Injector::new(0.5, kinds.clone(), 11, 10);
        let mut second = Injector::new(0.5, kinds, 11, 10);
        for _ in 0..100 {
            assert_eq!(first.choose(), second.choose());
        }
    }

    #[test]
    fn cpu_list_parses_ranges() {
        assert_eq!(parse_cpu_list("0,2-3").unwrap(), [0, 2, 3]);
        assert_eq!(parse_cpu_list("3, 1").unwrap(), [1, 3]);
        for bad in ["", "a", "3-1", "1-", "0-99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn source_addrs_parse_ranges_and_lists() {
        let addrs = parse_source_addrs("127.0.0.2-127.0.0.4,::1").unwrap();
        let expected: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "::1"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        assert_eq!(addrs, expected);
        assert_eq!(
            parse_source_addrs("127.0.0.1").unwrap(),
            [IpAddr::from([127, 0, 0, 1])]
        );
    }

    #[test]
    fn source_addrs_reject_bad_input() {
        for bad in ["", "x", "127.0.0.4-127.0.0.2", "::1-::2"] {
            assert!(parse_source_addrs(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_source_addrs("127.0.0.2, 127.0.0.9-127.0.0.3"),
            Err(PlanError::SourceRangeReversed {
                text: "127.0.0.9-127.0.0.3".to_owned()
            })
        );
        assert_eq!(
            parse_source_addrs("10.0.0.0-10.255.255.255"),
            Err(PlanError::SourceRangeTooLarge {
                text: "10.0.0.0-10.255.255.255".to_owned()
            })
        );
    }
}
