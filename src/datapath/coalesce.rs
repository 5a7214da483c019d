//! Receive coalescing under sustained load (`[ring] coalesce_us`, as a NIC's `rx-usecs`).
//!
//! A worker that just keeps up with a steady stream settles at about one frame per round, and
//! so one `sendmmsg` per frame (bench, V2 ring at full rate: 1.1 frames per batch and 1.3 per
//! `sendmmsg` by the worker's counters). Waiting a little after a small round lets the next
//! one forward a batch (bench full runs before and after: 2.49 -> 2.00 µs of CPU per frame). The
//! wait follows a round only when the round before it also had traffic: a frame that arrives
//! alone is followed by an empty round, so it never waits and neither does the next lone
//! frame — low-load latency is untouched.

use std::time::Duration;

/// A round with fewer frames than this, right after another round with traffic, is followed
/// by the wait; a few dozen frames per `sendmmsg` amortise the call.
const COALESCE_BELOW_FRAMES: u64 = 32;

/// Decides, after each round of a worker, whether to wait before the next.
#[derive(Clone, Copy, Debug)]
pub struct Coalescer {
    wait: Duration,
    previous_round_had_traffic: bool,
}

impl Coalescer {
    /// `wait` zero turns coalescing off.
    pub fn new(wait: Duration) -> Coalescer {
        Coalescer {
            wait,
            previous_round_had_traffic: false,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.wait.is_zero()
    }

    /// Records a round that handled `frames` frames; returns how long to wait before the next
    /// round, if at all. Everything the round took is already sent: only frames still to come
    /// wait.
    pub fn after_round(&mut self, frames: u64) -> Option<Duration> {
        let sustained = self.previous_round_had_traffic && frames > 0;
        self.previous_round_had_traffic = frames > 0;
        (sustained && frames < COALESCE_BELOW_FRAMES && self.enabled()).then_some(self.wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_micros(50);

    fn waits(c: &mut Coalescer, rounds: &[u64]) -> Vec<bool> {
        rounds.iter().map(|&n| c.after_round(n).is_some()).collect()
    }

    #[test]
    fn a_lone_frame_never_waits() {
        // Low load: each frame is followed by an empty round before the next one comes.
        let mut c = Coalescer::new(WAIT);
        assert_eq!(waits(&mut c, &[1, 0, 1, 0, 0, 2, 0]), [false; 7]);
    }

    #[test]
    fn a_sustained_trickle_waits_from_its_second_round() {
        let mut c = Coalescer::new(WAIT);
        assert_eq!(
            waits(&mut c, &[1, 1, 3, 31, 0, 1]),
            [false, true, true, true, false, false]
        );
        assert_eq!(Coalescer::new(WAIT).after_round(1), None);
    }

    #[test]
    fn full_rounds_do_not_wait() {
        // A worker already behind forwards large batches: waiting would only add latency.
        let mut c = Coalescer::new(WAIT);
        assert_eq!(waits(&mut c, &[256, 256, 32, 64]), [false; 4]);
    }

    #[test]
    fn zero_turns_it_off() {
        let mut c = Coalescer::new(Duration::ZERO);
        assert!(!c.enabled());
        assert_eq!(waits(&mut c, &[1, 1, 1, 1]), [false; 4]);
    }
}
