//! Bandwidth traces: lines `<start second> <kbit/s>`, each rate holding until the next line.

/// A piecewise-constant bandwidth over time.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// (start second, bits per second), ascending by start.
    points: Vec<(f64, f64)>,
}

/// A trace file that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("trace line {line}: {message}")]
pub struct Error {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl Trace {
    /// Parses the text of a trace file (`#` starts a comment; blank lines are ignored).
    pub fn parse(text: &str) -> Result<Trace, Error> {
        let mut points: Vec<(f64, f64)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: String| Error {
                line: i + 1,
                message,
            };
            let mut parts = line.split_whitespace();
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err(format!(
                    "expected `<start second> <kbit/s>`, got {line:?}"
                )));
            };
            let start: f64 = a
                .parse()
                .map_err(|_| err(format!("start {a:?} is not a number")))?;
            let kbps: f64 = b
                .parse()
                .map_err(|_| err(format!("rate {b:?} is not a number")))?;
            if !start.is_finite() || start < 0.0 {
                return Err(err(format!("start {start} must be a non-negative number")));
            }
            if !kbps.is_finite() || kbps <= 0.0 {
                return Err(err(format!("rate {kbps} must be above zero")));
            }
            if let Some(&(prev, _)) = points.last()
                && start <= prev
            {
                return Err(err(format!("start {start} does not come after {prev}")));
            }
            points.push((start, kbps * 1000.0));
        }
        if points.is_empty() {
            return Err(Error {
                line: 0,
                message: "the trace has no lines".into(),
            });
        }
        if points[0].0 > 0.0 {
            // before the first line, the first rate holds
            let r = points[0].1;
            points.insert(0, (0.0, r));
        }
        Ok(Trace { points })
    }

    /// Bits per second at time `t`.
    pub fn rate_at(&self, t: f64) -> f64 {
        self.points
            .iter()
            .rev()
            .find(|(s, _)| *s <= t)
            .map_or(self.points[0].1, |(_, r)| *r)
    }

    /// Seconds needed to move `bytes` starting at time `t`.
    pub fn transfer_time(&self, t: f64, bytes: u64) -> f64 {
        let mut left = bytes as f64 * 8.0;
        let mut now = t;
        loop {
            let rate = self.rate_at(now);
            let next = self
                .points
                .iter()
                .map(|(s, _)| *s)
                .find(|s| *s > now)
                .unwrap_or(f64::INFINITY);
            let can = (next - now) * rate;
            if can >= left {
                return now + left / rate - t;
            }
            left -= can;
            now = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_integrates() {
        let t = Trace::parse("# drop\n0 8000\n10 1000\n\n20 8000 # back\n").unwrap();
        assert_eq!(t.rate_at(5.0), 8e6);
        assert_eq!(t.rate_at(10.0), 1e6);
        assert_eq!(t.rate_at(100.0), 8e6);
        // 1 MB at 8 Mbit/s = 1 s
        assert!((t.transfer_time(0.0, 1_000_000) - 1.0).abs() < 1e-9);
        // starting at 9.5 s: 0.5 s at 8 Mbit/s moves 0.5 MB, the rest at 1 Mbit/s takes 4 s
        assert!((t.transfer_time(9.5, 1_000_000) - 4.5).abs() < 1e-9);
        let late = Trace::parse("5 2000").unwrap();
        assert_eq!(late.rate_at(0.0), 2e6);
    }

    #[test]
    fn bad_traces_name_the_line() {
        assert_eq!(Trace::parse("").unwrap_err().line, 0);
        assert_eq!(Trace::parse("0 8000\nabc 1").unwrap_err().line, 2);
        assert!(Trace::parse("0 0").is_err());
        assert!(Trace::parse("0 -5").is_err());
        assert!(
            Trace::parse("0 100\n0 200")
                .unwrap_err()
                .message
                .contains("does not come after")
        );
        assert!(Trace::parse("0 100 7").is_err());
        assert!(Trace::parse("-1 100").is_err());
        assert!(Trace::parse("0 inf").is_err());
    }
}
