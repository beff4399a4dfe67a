//! The breaker that keeps a failing target from eating work.
//!
//! After `max_failures` consecutive failures the target is paused: it gets
//! no copies. Once `retry_after` has passed, one copy goes through as a
//! probe; success resumes the target, failure pauses it again. A target
//! that has been failing for `fail_after` is to be removed.
//!
//! The request path only reads an atomic flag while the target is healthy;
//! the lock is taken only while it is failing.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub max_failures: u32,
    pub retry_after: Duration,
    pub fail_after: Duration,
}

/// Whether a copy may go to the target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Send,
    /// The one copy that tests a paused target.
    Probe,
    Skip,
}

/// What an outcome changed, worth telling the operator about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Paused,
    Resumed,
    /// Failing for `fail_after`: take the target away.
    Remove,
}

#[derive(Debug, Default)]
struct Failing {
    /// Start of the current run of failures.
    since: Option<Instant>,
    /// When a paused target may be probed.
    retry_at: Option<Instant>,
    probe_in_flight: bool,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    paused: AtomicBool,
    consecutive: AtomicU32,
    failing: Mutex<Failing>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            paused: AtomicBool::new(false),
            consecutive: AtomicU32::new(0),
            failing: Mutex::new(Failing::default()),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failing> {
        // The state stays consistent even if a holder panicked: every
        // update is a few plain assignments.
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn admit(&self, now: Instant) -> Admit {
        if !self.is_paused() {
            return Admit::Send;
        }
        let mut failing = self.lock();
        match failing.retry_at {
            Some(at) if now >= at && !failing.probe_in_flight => {
                failing.probe_in_flight = true;
                Admit::Probe
            }
            _ => Admit::Skip,
        }
    }

    /// Whether [`admit`](Breaker::admit) would let a probe through now,
    /// without taking it.
    pub fn probe_due(&self, now: Instant) -> bool {
        let failing = self.lock();
        failing.retry_at.is_some_and(|at| now >= at) && !failing.probe_in_flight
    }

    /// A probe that was admitted but never sent (dropped from a full
    /// backlog) must not block the next one.
    pub fn probe_lost(&self) {
        self.lock().probe_in_flight = false;
    }

    /// Records how a copy went. `probe` says whether it was the probe of a
    /// paused target; other copies still in flight when the target was
    /// paused count, but do not move the probe schedule.
    pub fn record(&self, success: bool, probe: bool, now: Instant) -> Transition {
        if success {
            let was_failing = self.consecutive.swap(0, Ordering::Relaxed) > 0;
            if !was_failing && !self.is_paused() {
                return Transition::None;
            }
            let mut failing = self.lock();
            *failing = Failing::default();
            return match self.paused.swap(false, Ordering::Relaxed) {
                true => Transition::Resumed,
                false => Transition::None,
            };
        }
        let mut failing = self.lock();
        let since = *failing.since.get_or_insert(now);
        let count = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if now.duration_since(since) >= self.config.fail_after {
            return Transition::Remove;
        }
        if self.is_paused() {
            if probe {
                failing.probe_in_flight = false;
                failing.retry_at = Some(now + self.config.retry_after);
            }
            return Transition::None;
        }
        if count >= self.config.max_failures {
            self.paused.store(true, Ordering::Relaxed);
            failing.retry_at = Some(now + self.config.retry_after);
            failing.probe_in_flight = false;
            return Transition::Paused;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            max_failures: 3,
            retry_after: Duration::from_secs(10),
            fail_after: Duration::from_secs(60),
        })
    }

    #[test]
    fn pauses_probes_resumes() {
        let b = breaker();
        let t0 = Instant::now();
        assert_eq!(b.record(false, false, t0), Transition::None);
        assert_eq!(b.record(false, false, t0), Transition::None);
        assert_eq!(b.admit(t0), Admit::Send);
        assert_eq!(b.record(false, false, t0), Transition::Paused);
        assert_eq!(b.admit(t0), Admit::Skip);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(b.admit(later), Admit::Skip, "one probe at a time");
        assert_eq!(b.record(true, true, later), Transition::Resumed);
        assert_eq!(b.admit(later), Admit::Send);
    }

    #[test]
    fn failed_probe_waits_again_then_removes() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, false, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.record(false, true, t1), Transition::None);
        assert_eq!(b.admit(t1 + Duration::from_secs(5)), Admit::Skip);
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.admit(t2), Admit::Probe);
        assert_eq!(
            b.record(false, true, t0 + Duration::from_secs(60)),
            Transition::Remove
        );
    }

    #[test]
    fn a_late_failure_does_not_push_the_probe_back() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, false, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admit::Probe);
        // A copy sent before the pause fails now: the probe is still out.
        assert_eq!(b.record(false, false, t1), Transition::None);
        assert_eq!(b.admit(t1), Admit::Skip);
    }

    #[test]
    fn probe_due_says_what_admit_would_without_taking_it() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, false, t0);
        }
        assert!(!b.probe_due(t0));
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.probe_due(t1));
        assert!(b.probe_due(t1), "asking takes nothing");
        assert_eq!(b.admit(t1), Admit::Probe);
        assert!(!b.probe_due(t1), "the probe is out");
    }

    #[test]
    fn success_resets_the_count() {
        let b = breaker();
        let t0 = Instant::now();
        b.record(false, false, t0);
        b.record(false, false, t0);
        b.record(true, false, t0);
        b.record(false, false, t0);
        b.record(false, false, t0);
        assert_eq!(b.admit(t0), Admit::Send);
    }
}
