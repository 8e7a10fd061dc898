//! The ABR controller (sans-IO): picks a rung from measured throughput and the buffer level.
//!
//! Rule (documented, tested in virtual time):
//! * throughput is estimated with two exponentially weighted moving averages of the measured
//!   segment download rates, one sample per segment — a fast one (half-life 1.5 segments) and a
//!   slow one (half-life 4 segments). Up-switches use the lower of the two (a rise must last a
//!   few segments); down-switches also take the last segment's rate into account, so a sudden
//!   drop is acted on at the next segment. (Weighting samples by download time, as hls.js does
//!   with its continuous measurements, lets one slow segment on a bad link outweigh many fast
//!   ones, and a short moment ends before the estimate recovers.)
//! * the candidate is the highest rung whose peak `BANDWIDTH` fits in `safety` (0.8) × estimate;
//! * buffer guard: with less than `low_buffer` (8 s) buffered, never switch up; up-switches go
//!   one rung at a time, down-switches straight to the rung the budget allows.

/// Settings of the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Fraction of the estimate a rung may use.
    pub safety: f64,
    /// Half-life of the fast average (segments).
    pub fast_half_life: f64,
    /// Half-life of the slow average (segments).
    pub slow_half_life: f64,
    /// Below this buffer (seconds) the controller does not switch up.
    pub low_buffer: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            safety: 0.8,
            fast_half_life: 1.5,
            slow_half_life: 4.0,
            low_buffer: 8.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Ewma {
    half_life: f64,
    estimate: f64,
    total_weight: f64,
}

impl Ewma {
    fn new(half_life: f64) -> Ewma {
        Ewma {
            half_life,
            estimate: 0.0,
            total_weight: 0.0,
        }
    }

    fn sample(&mut self, weight: f64, value: f64) {
        let alpha = 0.5f64.powf(weight / self.half_life);
        self.estimate = value * (1.0 - alpha) + alpha * self.estimate;
        self.total_weight += weight;
    }

    /// Corrected for the zero start (as hls.js's EWMA does).
    fn value(&self) -> f64 {
        let zero_factor = 1.0 - 0.5f64.powf(self.total_weight / self.half_life);
        if zero_factor <= 0.0 {
            0.0
        } else {
            self.estimate / zero_factor
        }
    }
}

/// The controller.
#[derive(Debug, Clone)]
pub struct Controller {
    params: Params,
    /// Rung bandwidths (bits/s), ascending.
    rungs: Vec<u64>,
    fast: Ewma,
    slow: Ewma,
    last: Option<f64>,
    current: usize,
}

impl Controller {
    /// A controller over rungs of these peak bandwidths (any order; indexes refer to the
    /// ascending order), starting at `start`.
    pub fn new(params: Params, mut rungs: Vec<u64>, start: usize) -> Controller {
        rungs.sort_unstable();
        let start = start.min(rungs.len().saturating_sub(1));
        Controller {
            fast: Ewma::new(params.fast_half_life),
            slow: Ewma::new(params.slow_half_life),
            last: None,
            params,
            rungs,
            current: start,
        }
    }

    /// The rung in use (index into the ascending bandwidths).
    pub fn current(&self) -> usize {
        self.current
    }

    /// Records a download of `bytes` that took `seconds`.
    pub fn observe(&mut self, bytes: u64, seconds: f64) {
        if seconds <= 0.0 || bytes == 0 {
            return;
        }
        let bps = bytes as f64 * 8.0 / seconds;
        self.fast.sample(1.0, bps);
        self.slow.sample(1.0, bps);
        self.last = Some(bps);
    }

    /// The throughput estimate (bits/s), or `None` before any sample.
    pub fn estimate(&self) -> Option<f64> {
        if self.fast.total_weight <= 0.0 {
            return None;
        }
        Some(self.fast.value().min(self.slow.value()))
    }

    fn fits(&self, estimate: f64) -> usize {
        let budget = estimate * self.params.safety;
        self.rungs
            .iter()
            .rposition(|&bw| (bw as f64) <= budget)
            .unwrap_or(0)
    }

    /// Picks the rung for the next segment given `buffer` seconds of media buffered.
    pub fn choose(&mut self, buffer: f64) -> usize {
        let Some(estimate) = self.estimate() else {
            return self.current;
        };
        let down = self.fits(self.last.map_or(estimate, |l| l.min(estimate)));
        let fits = if down < self.current {
            down
        } else {
            self.fits(estimate)
        };
        let next = if fits > self.current {
            if buffer < self.params.low_buffer {
                self.current
            } else {
                self.current + 1
            }
        } else if fits < self.current {
            fits
        } else {
            self.current
        };
        self.current = next;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNGS: [u64; 3] = [1_400_000, 3_300_000, 5_800_000];

    /// Simulates 2 s segments of each rung's size under a bandwidth function of time, in
    /// virtual time; returns the rung chosen for each segment and the stall time.
    fn simulate(
        bandwidth: impl Fn(f64) -> f64,
        segments: usize,
        start: usize,
    ) -> (Vec<usize>, f64) {
        let mut c = Controller::new(Params::default(), RUNGS.to_vec(), start);
        let (mut t, mut buffer, mut stalled) = (0.0f64, 0.0f64, 0.0f64);
        let mut picks = Vec::new();
        for _ in 0..segments {
            let r = c.choose(buffer);
            picks.push(r);
            let bytes = (RUNGS[r] as f64 * 2.0 / 8.0) as u64;
            // download at the bandwidth of the moment, in 10 ms steps
            let mut left = bytes as f64 * 8.0;
            let t0 = t;
            while left > 0.0 {
                left -= bandwidth(t) * 0.01;
                t += 0.01;
            }
            let d = t - t0;
            c.observe(bytes, d);
            // playback starts once the first segment is in; before that nothing can stall
            if !picks.is_empty() && picks.len() > 1 {
                if buffer < d {
                    stalled += d - buffer;
                    buffer = 0.0;
                } else {
                    buffer -= d;
                }
            }
            buffer += 2.0;
            if buffer > 30.0 {
                t += buffer - 30.0;
                buffer = 30.0;
            }
        }
        (picks, stalled)
    }

    #[test]
    fn steady_bandwidth_settles_on_the_best_fitting_rung() {
        let (picks, stall) = simulate(|_| 10_000_000.0, 20, 0);
        assert_eq!(*picks.last().unwrap(), 2);
        assert_eq!(stall, 0.0);
        let (picks, _) = simulate(|_| 4_500_000.0, 20, 0);
        assert_eq!(*picks.last().unwrap(), 1, "{picks:?}");
        let (picks, _) = simulate(|_| 1_000_000.0, 20, 2);
        assert_eq!(*picks.last().unwrap(), 0, "{picks:?}");
    }

    #[test]
    fn a_drop_switches_down_fast_and_a_recovery_switches_up_without_stalls() {
        // 8 Mbit/s, then 1 Mbit/s for 12 s, then 8 Mbit/s again
        let trace = |t: f64| {
            if (20.0..32.0).contains(&t) {
                1_000_000.0
            } else {
                8_000_000.0
            }
        };
        let (picks, stall) = simulate(trace, 40, 0);
        let down = picks.windows(2).any(|w| w[1] < w[0]);
        let up_after_down = picks
            .windows(2)
            .skip_while(|w| w[1] >= w[0])
            .any(|w| w[1] > w[0]);
        assert!(down && up_after_down, "{picks:?}");
        assert_eq!(stall, 0.0, "{picks:?}");
    }

    #[test]
    fn no_up_switch_on_a_low_buffer_and_one_rung_at_a_time() {
        let mut c = Controller::new(Params::default(), RUNGS.to_vec(), 0);
        c.observe(10_000_000, 1.0); // 80 Mbit/s
        assert_eq!(c.choose(2.0), 0, "buffer too low to switch up");
        assert_eq!(c.choose(10.0), 1);
        assert_eq!(c.choose(10.0), 2);
        assert_eq!(c.choose(10.0), 2);
    }

    #[test]
    fn a_drop_goes_straight_to_the_rung_that_fits() {
        let mut c = Controller::new(Params::default(), RUNGS.to_vec(), 2);
        c.observe(100_000, 1.0); // 0.8 Mbit/s
        assert_eq!(c.choose(20.0), 0);
    }

    #[test]
    fn a_drop_is_acted_on_at_once_a_rise_step_by_step() {
        let mut c = Controller::new(Params::default(), RUNGS.to_vec(), 2);
        for _ in 0..10 {
            c.observe(2_500_000, 1.0); // 20 Mbit/s
        }
        assert_eq!(c.choose(20.0), 2);
        c.observe(125_000, 1.0); // one segment at 1 Mbit/s
        assert!(
            c.estimate().unwrap() > 10_000_000.0,
            "the averages still remember 20 Mbit/s"
        );
        assert_eq!(
            c.choose(20.0),
            0,
            "but the last segment's rate forces the switch down"
        );
        for _ in 0..3 {
            c.observe(125_000, 1.0); // the drop lasts
        }
        assert_eq!(c.choose(20.0), 0);
        c.observe(2_500_000, 1.0); // a rise goes up one rung per segment
        assert_eq!(c.choose(20.0), 1);
        assert_eq!(c.choose(20.0), 2);
        assert!(
            Controller::new(Params::default(), vec![], 0)
                .estimate()
                .is_none()
        );
    }
}
