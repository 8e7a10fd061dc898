//! The token bucket as arithmetic, without I/O: the generic cell rate algorithm (GCRA), the
//! form of a token bucket that needs one number per key, the "theoretical arrival time" (TAT)
//! of the next token. The in-process limiter keeps it in a map; the Redis limiter runs the same
//! steps in a Lua script (see `remote.rs`), so both answer alike.
//!
//! A bucket refills at `rate` tokens per second up to `burst`. Taking `cost` tokens at `now`
//! (microseconds) moves the TAT forward by `cost` emission intervals; it is allowed when the
//! new TAT lies no further ahead than the burst's worth of intervals.

/// A bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Microseconds per token.
    pub interval_us: f64,
    /// Tokens it holds when full (at least 1).
    pub burst: f64,
}

impl Shape {
    /// A bucket of `burst` tokens refilled at `per_sec` tokens per second.
    pub fn new(per_sec: f64, burst: u64) -> Shape {
        Shape {
            interval_us: 1e6 / per_sec,
            burst: burst.max(1) as f64,
        }
    }
}

/// The answer to one take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Allowed; store this TAT (µs), which may be forgotten once `now` passes it.
    Allow {
        /// The new theoretical arrival time.
        tat: f64,
    },
    /// Refused: retry after this many microseconds (nothing was taken).
    Deny {
        /// Until the take would be allowed.
        retry_us: f64,
    },
}

/// Takes `cost` tokens (clamped to the burst, so a take bigger than the bucket can still
/// succeed, once it is full) from a bucket whose stored TAT is `tat` (`None`: never used).
pub fn take(shape: Shape, tat: Option<f64>, now_us: f64, cost: f64) -> Decision {
    let cost = cost.clamp(0.0, shape.burst);
    let tat = tat.unwrap_or(now_us).max(now_us);
    let new_tat = tat + cost * shape.interval_us;
    let allowed_at = new_tat - shape.burst * shape.interval_us;
    if allowed_at > now_us {
        Decision::Deny {
            retry_us: allowed_at - now_us,
        }
    } else {
        Decision::Allow { tat: new_tat }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs takes of 1 at the given times (s) against one bucket; returns which were allowed.
    fn run(shape: Shape, times_s: &[f64]) -> Vec<bool> {
        let mut tat = None;
        times_s
            .iter()
            .map(|t| match take(shape, tat, t * 1e6, 1.0) {
                Decision::Allow { tat: n } => {
                    tat = Some(n);
                    true
                }
                Decision::Deny { .. } => false,
            })
            .collect()
    }

    #[test]
    fn a_full_bucket_allows_its_burst_at_once_then_the_rate() {
        // 2 per second, burst 5: five at t=0, the sixth refused
        let shape = Shape::new(2.0, 5);
        assert_eq!(run(shape, &[0.0; 6]), [true, true, true, true, true, false]);
        // after the burst, one every half second
        let got = run(shape, &[0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.5, 0.6, 1.0]);
        assert_eq!(
            got,
            [true, true, true, true, true, false, true, false, true]
        );
    }

    #[test]
    fn a_refusal_says_when_to_retry_and_takes_nothing() {
        let shape = Shape::new(1.0, 2);
        let Decision::Allow { tat } = take(shape, None, 0.0, 2.0) else {
            panic!()
        };
        let Decision::Deny { retry_us } = take(shape, Some(tat), 0.0, 1.0) else {
            panic!("a third token at once")
        };
        assert!((retry_us - 1e6).abs() < 1.0, "{retry_us}");
        // the refused take did not move the TAT: at the retry time it passes
        assert!(matches!(
            take(shape, Some(tat), retry_us, 1.0),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn an_idle_bucket_refills_only_up_to_its_burst() {
        let shape = Shape::new(10.0, 3);
        // an hour idle still gives only 3 at once
        let mut times = vec![0.0];
        times.extend([3600.0; 4]);
        assert_eq!(run(shape, &times), [true, true, true, true, false]);
    }

    #[test]
    fn a_take_bigger_than_the_bucket_waits_for_a_full_bucket() {
        // bytes: 1000/s, burst 100; a 500-byte chunk counts as 100 (the whole bucket)
        let shape = Shape::new(1000.0, 100);
        let Decision::Allow { tat } = take(shape, None, 0.0, 500.0) else {
            panic!()
        };
        assert!((tat - 100_000.0).abs() < 1.0, "{tat}");
        let Decision::Deny { retry_us } = take(shape, Some(tat), 0.0, 500.0) else {
            panic!()
        };
        assert!((retry_us - 100_000.0).abs() < 1.0, "{retry_us}");
    }

    #[test]
    fn bytes_over_time_never_exceed_rate_times_time_plus_burst() {
        let shape = Shape::new(1_000_000.0, 64_000);
        let (mut tat, mut now, mut sent) = (None, 0.0_f64, 0.0_f64);
        let chunk = 16_384.0;
        while now < 5e6 {
            match take(shape, tat, now, chunk) {
                Decision::Allow { tat: n } => {
                    tat = Some(n);
                    sent += chunk;
                }
                Decision::Deny { retry_us } => now += retry_us,
            }
        }
        let bound = 1_000_000.0 * now / 1e6 + 64_000.0;
        assert!(sent <= bound, "{sent} > {bound}");
        assert!(sent >= bound - 2.0 * 64_000.0, "throttled too hard: {sent}");
    }
}
