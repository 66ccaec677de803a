//! Which application server gets the next batch: round robin over the servers that are not
//! backing off after a failure.

use std::time::{Duration, Instant};

/// Health and round-robin state of a worker's upstreams.
#[derive(Debug, Clone)]
pub struct Pool {
    down_until: Vec<Option<Instant>>,
    next: usize,
}

impl Pool {
    pub fn new(upstreams: usize) -> Self {
        Self {
            down_until: vec![None; upstreams],
            next: 0,
        }
    }

    /// Picks the next healthy upstream not yet in `tried` (indexed like the upstreams),
    /// round robin. Returns `None` when every untried upstream is backing off.
    pub fn pick(&mut self, now: Instant, tried: &[bool]) -> Option<usize> {
        let count = self.down_until.len();
        for step in 0..count {
            let index = (self.next + step) % count;
            if tried.get(index).copied().unwrap_or(false) {
                continue;
            }
            let healthy = self
                .down_until
                .get(index)
                .copied()
                .flatten()
                .is_none_or(|until| now >= until);
            if healthy {
                self.next = (index + 1) % count;
                return Some(index);
            }
        }
        None
    }

    /// Takes upstream `index` out of rotation until `now + backoff`.
    pub fn mark_down(&mut self, index: usize, now: Instant, backoff: Duration) {
        if let Some(slot) = self.down_until.get_mut(index) {
            *slot = Some(now + backoff);
        }
    }

    /// Puts upstream `index` back into rotation.
    pub fn mark_up(&mut self, index: usize) {
        if let Some(slot) = self.down_until.get_mut(index) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_rotates_over_healthy_upstreams() {
        let now = Instant::now();
        let mut pool = Pool::new(3);
        let tried = [false; 3];
        assert_eq!(pool.pick(now, &tried), Some(0));
        assert_eq!(pool.pick(now, &tried), Some(1));
        assert_eq!(pool.pick(now, &tried), Some(2));
        assert_eq!(pool.pick(now, &tried), Some(0));
    }

    #[test]
    fn pick_skips_down_and_tried_upstreams() {
        let now = Instant::now();
        let mut pool = Pool::new(3);
        pool.mark_down(1, now, Duration::from_secs(1));
        assert_eq!(pool.pick(now, &[true, false, false]), Some(2));
        assert_eq!(pool.pick(now, &[true, false, true]), None);
    }

    #[test]
    fn pick_after_backoff_returns_upstream() {
        let now = Instant::now();
        let mut pool = Pool::new(1);
        pool.mark_down(0, now, Duration::from_millis(100));
        assert_eq!(pool.pick(now, &[false]), None);
        let later = now + Duration::from_millis(100);
        assert_eq!(pool.pick(later, &[false]), Some(0));
        pool.mark_down(0, now, Duration::from_secs(5));
        pool.mark_up(0);
        assert_eq!(pool.pick(now, &[false]), Some(0));
    }
}
