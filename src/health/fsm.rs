//! The per-real-server checker state machine. Pure: time is passed in (a `Duration` since an
//! arbitrary origin), so unit tests drive it with a virtual clock and never sleep.
//!
//! One *attempt* is one probe. A failed attempt while the real is up is retried `retry` times,
//! `delay_before_retry` apart (keepalived); only when every retry has failed does the round
//! count as failed. `fall` failed rounds in a row take the real down (ldirectord's
//! `failurecount`); `rise` successful rounds in a row bring it back. Between rounds the checker
//! waits `interval` (keepalived `delay_loop`, ldirectord `checkinterval`). An attempt that took
//! longer than `timeout` failed, whatever the probe said. With `alpha` the real starts down (it
//! must pass `rise` checks before it gets traffic); otherwise it starts up, as in keepalived.
//! The first attempt runs `warmup_offset` after start (keepalived `warmup`: a random delay
//! the caller picks, so checks of many reals do not all fire together).
//!
//! Worst-case detection time of a dead real (connect refused or timing out):
//! `interval + retry × (delay_before_retry + timeout) + timeout`.

use std::time::Duration;

/// Timing and thresholds of one checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
    pub retry: u32,
    pub delay_before_retry: Duration,
    pub rise: u32,
    pub fall: u32,
    pub alpha: bool,
    /// Upper bound of the random delay before the first check.
    pub warmup: Duration,
}

impl Default for Timing {
    /// keepalived's TCP_CHECK defaults, except `delay_loop` (60 s there): 10 s, ldirectord's
    /// `checkinterval`.
    fn default() -> Self {
        Timing {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            retry: 1,
            delay_before_retry: Duration::from_secs(1),
            rise: 1,
            fall: 1,
            alpha: false,
            warmup: Duration::ZERO,
        }
    }
}

/// What one attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; `weight` is a dynamic weight (MISC_CHECK `misc_dynamic`), `None` = configured.
    Pass {
        weight: Option<u32>,
    },
    Fail(String),
}

/// What changed after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
    /// Still up, with another dynamic weight.
    Weight,
}

#[derive(Clone, Debug)]
pub struct Fsm {
    pub timing: Timing,
    up: bool,
    retries_used: u32,
    ok_run: u32,
    fail_run: u32,
    next_at: Duration,
    weight: Option<u32>,
    pub transitions: u64,
}

impl Fsm {
    pub fn new(timing: Timing, now: Duration, warmup_offset: Duration) -> Fsm {
        Fsm {
            timing,
            up: !timing.alpha,
            retries_used: 0,
            ok_run: 0,
            fail_run: 0,
            next_at: now + warmup_offset.min(timing.warmup),
            weight: None,
            transitions: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The dynamic weight of the last passing check, if the checker reports one.
    pub fn weight(&self) -> Option<u32> {
        self.weight
    }

    /// When the next attempt is due.
    pub fn due(&self) -> Duration {
        self.next_at
    }

    /// Records an attempt that finished at `now` and took `latency`.
    pub fn on_result(
        &mut self,
        now: Duration,
        latency: Duration,
        outcome: &Outcome,
    ) -> Option<Transition> {
        let passed = match outcome {
            Outcome::Pass { .. } if latency > self.timing.timeout => false,
            Outcome::Pass { .. } => true,
            Outcome::Fail(_) => false,
        };
        if passed {
            let weight = match outcome {
                Outcome::Pass { weight } => *weight,
                Outcome::Fail(_) => None,
            };
            self.retries_used = 0;
            self.fail_run = 0;
            self.ok_run = self.ok_run.saturating_add(1);
            self.next_at = now + self.timing.interval;
            let weight_changed = weight != self.weight;
            self.weight = weight;
            if !self.up && self.ok_run >= self.timing.rise.max(1) {
                self.up = true;
                self.transitions += 1;
                return Some(Transition::Up);
            }
            return (self.up && weight_changed).then_some(Transition::Weight);
        }
        self.ok_run = 0;
        if self.up && self.retries_used < self.timing.retry {
            self.retries_used += 1;
            self.next_at = now + self.timing.delay_before_retry;
            return None;
        }
        self.retries_used = 0;
        self.fail_run = self.fail_run.saturating_add(1);
        self.next_at = now + self.timing.interval;
        if self.up && self.fail_run >= self.timing.fall.max(1) {
            self.up = false;
            self.transitions += 1;
            return Some(Transition::Down);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timing() -> Timing {
        Timing {
            interval: ms(1000),
            timeout: ms(300),
            retry: 2,
            delay_before_retry: ms(200),
            rise: 2,
            fall: 1,
            alpha: false,
            warmup: ms(500),
        }
    }

    const PASS: Outcome = Outcome::Pass { weight: None };

    fn fail() -> Outcome {
        Outcome::Fail("refused".into())
    }

    /// Runs attempts at their due times with the given outcomes; returns (time, transition).
    fn drive(f: &mut Fsm, outcomes: &[Outcome]) -> Vec<(u64, Option<Transition>)> {
        outcomes
            .iter()
            .map(|o| {
                let t = f.due();
                (t.as_millis() as u64, f.on_result(t, ms(1), o))
            })
            .collect()
    }

    #[test]
    fn warmup_delays_the_first_check_within_its_bound() {
        let f = Fsm::new(timing(), ms(100), ms(9999));
        assert_eq!(f.due(), ms(600));
        let f = Fsm::new(timing(), ms(100), ms(50));
        assert_eq!(f.due(), ms(150));
    }

    #[test]
    fn retries_then_down_then_rise_needs_two_passes() {
        let mut f = Fsm::new(timing(), ms(0), ms(0));
        assert!(f.is_up());
        let got = drive(&mut f, &[PASS, fail(), fail(), fail(), fail(), PASS, PASS]);
        assert_eq!(
            got,
            vec![
                (0, None),
                (1000, None),                   // first failure: retry in 200 ms
                (1200, None),                   // second retry
                (1400, Some(Transition::Down)), // retries exhausted, fall = 1
                (2400, None),                   // down: no retries, interval
                (3400, None),                   // first pass of rise = 2
                (4400, Some(Transition::Up)),
            ]
        );
        assert_eq!(f.transitions, 2);
    }

    #[test]
    fn detection_window_is_interval_plus_retries_plus_timeout() {
        let t = timing();
        let mut f = Fsm::new(t, ms(0), ms(0));
        f.on_result(ms(0), ms(1), &PASS);
        // Every attempt now times out.
        let mut now = f.due();
        loop {
            let end = now + t.timeout;
            if f.on_result(end, t.timeout + ms(1), &PASS) == Some(Transition::Down) {
                now = end;
                break;
            }
            now = f.due();
        }
        let bound = t.interval + (t.delay_before_retry + t.timeout) * t.retry + t.timeout;
        assert!(now <= bound, "{now:?} > {bound:?}");
    }

    #[test]
    fn a_slow_pass_is_a_failure() {
        let mut t = timing();
        t.retry = 0;
        let mut f = Fsm::new(t, ms(0), ms(0));
        assert_eq!(f.on_result(ms(400), ms(301), &PASS), Some(Transition::Down));
    }

    #[test]
    fn fall_counts_failed_rounds_not_attempts() {
        let mut t = timing();
        t.retry = 0;
        t.fall = 3;
        let mut f = Fsm::new(t, ms(0), ms(0));
        let got = drive(&mut f, &[fail(), fail(), PASS, fail(), fail(), fail()]);
        let downs: Vec<_> = got.iter().filter(|(_, t)| t.is_some()).collect();
        assert_eq!(downs, vec![&(5000, Some(Transition::Down))]);
    }

    #[test]
    fn alpha_starts_down_and_rises() {
        let mut t = timing();
        t.alpha = true;
        t.rise = 1;
        let mut f = Fsm::new(t, ms(0), ms(0));
        assert!(!f.is_up());
        // A failure while down is not retried quickly.
        assert_eq!(f.on_result(ms(0), ms(1), &fail()), None);
        assert_eq!(f.due(), ms(1000));
        assert_eq!(f.on_result(ms(1000), ms(1), &PASS), Some(Transition::Up));
    }

    #[test]
    fn dynamic_weight_changes_are_reported_while_up() {
        let mut f = Fsm::new(timing(), ms(0), ms(0));
        assert_eq!(
            f.on_result(ms(0), ms(1), &Outcome::Pass { weight: Some(5) }),
            Some(Transition::Weight)
        );
        assert_eq!(f.weight(), Some(5));
        assert_eq!(
            f.on_result(ms(1000), ms(1), &Outcome::Pass { weight: Some(5) }),
            None
        );
        assert_eq!(
            f.on_result(ms(2000), ms(1), &PASS),
            Some(Transition::Weight)
        );
        assert_eq!(f.weight(), None);
    }
}
