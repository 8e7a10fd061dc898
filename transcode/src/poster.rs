//! Choosing the poster (pure): candidate frames of the first [`WINDOW`] seconds, one every
//! [`STEP`], are scored on a small grey copy by sharpness (variance of the Laplacian), exposure
//! (mean brightness near the middle) and contrast; black, white, flat (a fade's first frames)
//! and blurred frames are refused outright. The first acceptable candidate is published at
//! once, so a poster shows while the upload still arrives; a clearly better one found later in
//! the window replaces it.

/// Candidates come from the first this many seconds.
pub const WINDOW: f64 = 10.0;
/// One candidate every this many seconds.
pub const STEP: f64 = 0.5;
/// Width of the grey copy a candidate is scored on.
pub const SCORE_WIDTH: u32 = 160;
/// A later candidate replaces the published one when it scores this much higher.
pub const BETTER_BY: f64 = 0.5;

/// What a candidate frame looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Mean brightness, 0–255.
    pub mean: f64,
    /// Standard deviation of brightness.
    pub contrast: f64,
    /// Variance of the 4-neighbour Laplacian.
    pub sharpness: f64,
}

impl Score {
    /// Measures a grey picture (`luma` row by row, `width` wide).
    pub fn of(luma: &[u8], width: usize) -> Score {
        let height = luma.len().checked_div(width).unwrap_or(0);
        let n = (width * height).max(1) as f64;
        let mean = luma.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = luma
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let (mut sum, mut sq, mut count) = (0.0, 0.0, 0.0);
        for y in 1..height.saturating_sub(1) {
            for x in 1..width.saturating_sub(1) {
                let at = |dx: isize, dy: isize| {
                    f64::from(luma[(y as isize + dy) as usize * width + (x as isize + dx) as usize])
                };
                let l = at(1, 0) + at(-1, 0) + at(0, 1) + at(0, -1) - 4.0 * at(0, 0);
                sum += l;
                sq += l * l;
                count += 1.0;
            }
        }
        let sharpness = if count > 0.0 {
            sq / count - (sum / count).powi(2)
        } else {
            0.0
        };
        Score {
            mean,
            contrast: var.sqrt(),
            sharpness,
        }
    }

    /// Why this frame must not be the poster, if it must not.
    pub fn refused(&self) -> Option<&'static str> {
        if self.mean < 28.0 {
            Some("too dark (black or fading in)")
        } else if self.mean > 235.0 {
            Some("too bright (white or washed out)")
        } else if self.contrast < 10.0 {
            Some("flat (no detail)")
        } else if self.sharpness < 4.0 {
            Some("blurred")
        } else {
            None
        }
    }

    /// Higher is better: sharper, well exposed, with contrast. Refused frames score below
    /// every acceptable one.
    pub fn value(&self) -> f64 {
        let exposure = 1.0 - ((self.mean - 128.0) / 128.0).powi(2) * 2.0;
        let v = (1.0 + self.sharpness).ln() + exposure + (self.contrast / 50.0).min(1.0);
        if self.refused().is_some() {
            v - 100.0
        } else {
            v
        }
    }
}

/// The poster choice as candidates come in: what to publish, and when.
#[derive(Debug, Default)]
pub struct Chooser {
    next: f64,
    /// (time, value) of the published poster.
    published: Option<(f64, f64)>,
    /// (time, value) of the best candidate not yet published.
    best: Option<(f64, f64)>,
    closed: bool,
}

/// What to do with a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Not a candidate (between steps, or after the window).
    Skip,
    /// Score it, then call [`Chooser::scored`].
    Score,
}

impl Chooser {
    /// Whether the frame at `t` is a candidate.
    pub fn consider(&mut self, t: f64) -> Decision {
        if self.closed || t + 1e-6 < self.next {
            return Decision::Skip;
        }
        if t > WINDOW && self.published.is_some() {
            self.closed = true;
            return Decision::Skip;
        }
        while self.next <= t + 1e-6 {
            self.next += STEP;
        }
        Decision::Score
    }

    /// A candidate's score: `true` when it is to be published now (kept by the caller as the
    /// best so far otherwise). The first acceptable candidate is published at once; a later
    /// one only when it beats the published one by [`BETTER_BY`]. Past the window, the best
    /// candidate is published even when every one was refused, so a moment always has one.
    pub fn scored(&mut self, t: f64, score: &Score) -> bool {
        let v = score.value();
        let publish = match self.published {
            None => score.refused().is_none() || t > WINDOW,
            Some((_, pv)) => v > pv + BETTER_BY,
        };
        if publish {
            self.published = Some((t, v));
            self.best = None;
            if t > WINDOW {
                self.closed = true;
            }
        } else if self.best.is_none_or(|(_, bv)| v > bv) {
            self.best = Some((t, v));
        }
        publish
    }

    /// Whether the best unpublished candidate (kept by the caller) should be published at the
    /// end of the video: when nothing was, or it is clearly better.
    pub fn finish(&mut self) -> bool {
        self.closed = true;
        match (self.best, self.published) {
            (Some(_), None) => true,
            (Some((_, bv)), Some((_, pv))) => bv > pv + BETTER_BY,
            _ => false,
        }
    }

    /// Whether a candidate scoring `score` is the best unpublished one (the caller keeps its
    /// picture only then).
    pub fn is_best(&self, t: f64) -> bool {
        self.best.is_some_and(|(bt, _)| (bt - t).abs() < 1e-9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(v: u8) -> Vec<u8> {
        vec![v; 160 * 90]
    }

    fn checker(low: u8, high: u8, cell: usize) -> Vec<u8> {
        (0..160 * 90)
            .map(|i| {
                let (x, y) = (i % 160, i / 160);
                if (x / cell + y / cell).is_multiple_of(2) {
                    low
                } else {
                    high
                }
            })
            .collect()
    }

    #[test]
    fn black_white_flat_and_blurred_frames_are_refused() {
        assert!(Score::of(&flat(0), 160).refused().is_some());
        assert!(Score::of(&flat(250), 160).refused().is_some());
        assert!(Score::of(&flat(128), 160).refused().is_some());
        // a fade's first frame: detail, but nearly black
        assert!(Score::of(&checker(5, 25, 8), 160).refused().is_some());
        // a smooth gradient: contrast but no edges
        let gradient: Vec<u8> = (0..160 * 90).map(|i| (60 + (i % 160) / 2) as u8).collect();
        assert_eq!(Score::of(&gradient, 160).refused(), Some("blurred"));
        let good = Score::of(&checker(60, 200, 8), 160);
        assert_eq!(good.refused(), None);
        assert!(good.value() > Score::of(&checker(100, 130, 8), 160).value());
    }

    #[test]
    fn a_fade_in_publishes_its_first_good_frame_then_a_clearly_better_one() {
        let mut c = Chooser::default();
        let mut published = vec![];
        for i in 0..60 {
            let t = f64::from(i) / 30.0 * 8.0; // 0..16 s, 3.75 frames per second
            if c.consider(t) == Decision::Skip {
                continue;
            }
            // fades in over 2 s, gets more contrast until 6 s
            let level = (t / 2.0).min(1.0);
            let contrast = (t / 6.0).min(1.0);
            let lo = (level * (128.0 - 60.0 * contrast)) as u8;
            let hi = (level * (128.0 + 70.0 * contrast)) as u8;
            if c.scored(t, &Score::of(&checker(lo, hi, 8), 160)) {
                published.push(t);
            }
        }
        assert!(!published.is_empty());
        assert!(
            published[0] > 0.3,
            "a dark lead-in frame was published: {published:?}"
        );
        assert!(published.iter().all(|&t| t <= WINDOW), "{published:?}");
    }

    #[test]
    fn a_video_of_refused_frames_still_gets_a_poster() {
        let mut c = Chooser::default();
        for i in 0..8 {
            let t = f64::from(i) * 0.5;
            if c.consider(t) == Decision::Score {
                assert!(!c.scored(t, &Score::of(&flat(i as u8), 160)));
            }
        }
        assert!(c.is_best(3.5));
        assert!(c.finish());
    }
}
