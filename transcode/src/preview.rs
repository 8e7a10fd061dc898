//! The animated preview (`preview.mp4`): about 3 s of the moment's most active stretch, muted,
//! 360p at most, faststart, for feed grids that loop it.
//!
//! Which stretch is decided in the transcode's one decode pass: every [`STEP`] seconds the
//! small grey copy the poster scorer already makes is compared with the previous one
//! ([`Activity`]), and at the end [`most_active`] picks the window with the most change. The
//! clip itself is made after `ready` by the `preview` job, which never delays it: the job
//! decodes only that stretch of the lowest published rung (its init segment and the few media
//! segments overlapping the window) and encodes it again small ([`crate::media::clip`]). The
//! source is never read twice, and the ladder's threads never share their cores with it.

use std::time::Duration;

use async_trait::async_trait;
use common::db::Db;
use common::moment::{self, State};
use common::queue::{Context, Defer, Handler, Job, JobError, NewJob, Priority};
use common::store::{Key, Store};
use serde_json::json;

use crate::pick::{read, segments};

/// The preview's length (seconds).
pub const LENGTH: f64 = 3.0;
/// How often the decode pass measures change (seconds).
pub const STEP: f64 = 0.5;
/// The preview's short side at most (pixels).
pub const SHORT_SIDE: u32 = 360;
/// The job kind.
pub const KIND: &str = "preview";

/// Change in the picture over the decode pass: one sample per [`STEP`].
#[derive(Debug, Default)]
pub struct Activity {
    next: f64,
    last: Option<Vec<u8>>,
    /// (time, mean absolute difference from the previous sample's grey picture, 0–255).
    pub samples: Vec<(f64, f64)>,
}

impl Activity {
    /// Whether the frame at `t` should be measured.
    pub fn due(&self, t: f64) -> bool {
        t >= self.next
    }

    /// Measures the frame at `t` (its grey picture, as the poster scorer makes it).
    pub fn add(&mut self, t: f64, grey: Vec<u8>) {
        while self.next <= t {
            self.next += STEP;
        }
        if let Some(prev) = &self.last
            && prev.len() == grey.len()
            && !grey.is_empty()
        {
            let sum: u64 = prev
                .iter()
                .zip(&grey)
                .map(|(a, b)| u64::from(a.abs_diff(*b)))
                .sum();
            self.samples.push((t, sum as f64 / grey.len() as f64));
        }
        self.last = Some(grey);
    }
}

/// The start (seconds) of the [`LENGTH`]-second window of a `duration`-second video with the
/// most change. A sample at `t` measures the change over the [`STEP`] before it, so it counts
/// for a window that holds that whole step. Of windows with as much change, the one whose
/// change is nearest its middle wins; a video with no change (or too short) starts at 0.
pub fn most_active(samples: &[(f64, f64)], duration: f64) -> f64 {
    // NaN, short or exactly LENGTH long
    if duration.is_nan() || duration <= LENGTH {
        return 0.0;
    }
    let latest = duration - LENGTH;
    let eps = 1e-6;
    let mut best: Option<(f64, f64, f64)> = None; // (start, sum, distance of change from middle)
    let candidates =
        std::iter::once(0.0).chain(samples.iter().map(|(t, _)| (t - STEP).clamp(0.0, latest)));
    for start in candidates {
        let inside = samples
            .iter()
            .filter(|(t, _)| t - STEP >= start - eps && *t <= start + LENGTH + eps);
        let (sum, moment) = inside.fold((0.0, 0.0), |(s, m), (t, d)| {
            (s + d, m + d * (t - STEP / 2.0))
        });
        if sum <= eps {
            continue;
        }
        let off = (moment / sum - (start + LENGTH / 2.0)).abs();
        let better = match best {
            None => true,
            Some((_, bs, bo)) => sum > bs + eps || (sum > bs - eps && off < bo - eps),
        };
        if better {
            best = Some((start, sum, off));
        }
    }
    best.map_or(0.0, |(s, _, _)| (s * 1000.0).round() / 1000.0)
}

/// The preview job of a moment, from `start` (one per moment).
pub fn job(moment_id: &str, start: f64) -> NewJob {
    NewJob {
        kind: KIND.to_string(),
        payload: json!({ "moment": moment_id, "start": start }),
        dedup_key: Some(format!("{KIND}:{moment_id}")),
        max_attempts: None,
        priority: Priority::default(),
    }
}

/// The media segments of a playlist that overlap `[from, to)`.
pub fn segments_between(playlist: &str, from: f64, to: f64) -> Vec<String> {
    segments(playlist)
        .into_iter()
        .filter(|(_, start, d)| start + d > from && *start < to)
        .map(|(uri, _, _)| uri)
        .collect()
}

/// The handler.
pub struct Previewer {
    db: Db,
    store: Store,
}

impl Previewer {
    /// Over the moments' database and the published ladders' store.
    pub fn new(db: Db, store: Store) -> Previewer {
        crate::media::init();
        Previewer { db, store }
    }
}

#[async_trait]
impl Handler for Previewer {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn time_limit(&self) -> Duration {
        Duration::from_secs(120)
    }

    async fn run(&self, job: &Job, _ctx: &Context) -> Result<(), JobError> {
        let Some(id) = job.payload["moment"].as_str() else {
            return Err(JobError::permanent("job payload names no moment"));
        };
        let Some(m) = moment::get(&self.db, id)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?
        else {
            return Ok(()); // gone since
        };
        match m.state {
            State::Ready => {}
            State::Failed => return Ok(()),
            // queued just before `ready` is written: wait for it, never delay it
            _ => {
                return Err(JobError::defer(
                    "waiting for the moment to be ready",
                    Defer::For(Duration::from_millis(500)),
                ));
            }
        }
        if m.renditions["preview"]["key"].is_string() {
            return Ok(()); // made already
        }
        let duration = m.renditions["duration"].as_f64().unwrap_or(0.0);
        let start = job.payload["start"]
            .as_f64()
            .unwrap_or(0.0)
            .clamp(0.0, (duration - LENGTH).max(0.0));
        let length = LENGTH.min(duration - start);
        if length.is_nan() || length <= 0.1 {
            return Err(JobError::permanent("the moment is too short for a preview"));
        }
        // renditions are listed by ascending bandwidth: the first is the smallest
        let playlist = m.renditions["renditions"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|r| r["playlist"].as_str())
            .ok_or_else(|| JobError::permanent("the moment lists no rendition"))?
            .to_string();
        let dir = playlist.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let media = read(&self.store, &format!("hls/{id}/{playlist}"), 4 << 20).await?;
        let wanted = segments_between(&String::from_utf8_lossy(&media), start, start + length);
        if wanted.is_empty() {
            return Err(JobError::permanent("the rendition has no segments there"));
        }
        let mut parts =
            vec![read(&self.store, &format!("hls/{id}/{dir}/init.mp4"), 4 << 20).await?];
        for s in &wanted {
            parts.push(read(&self.store, &format!("hls/{id}/{dir}/{s}"), 256 << 20).await?);
        }
        let (clip, bytes) = tokio::task::spawn_blocking(move || {
            let mut input = tempfile::Builder::new().suffix(".mp4").tempfile()?;
            for p in &parts {
                std::io::Write::write_all(&mut input, p)?;
            }
            let output = tempfile::Builder::new().suffix(".mp4").tempfile()?;
            let clip =
                crate::media::clip::preview(input.path(), start, length, SHORT_SIDE, output.path());
            let bytes = std::fs::read(output.path())?;
            Ok::<_, std::io::Error>((clip, bytes))
        })
        .await
        .map_err(|e| JobError::retry(format!("preview thread: {e}")))?
        .map_err(|e| JobError::retry(format!("preview files: {e}")))?;
        let clip = clip.map_err(|e| JobError::permanent(e.to_string()))?;
        let key = format!("hls/{id}/preview.mp4");
        let k = Key::new(key.clone()).map_err(|e| JobError::permanent(e.to_string()))?;
        self.store
            .put_bytes(
                &k,
                bytes::Bytes::from(bytes),
                &packager::publish::headers_for("preview.mp4"),
            )
            .await
            .map_err(|e| JobError::retry(format!("storing the preview: {e}")))?;
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        moment::set_published_field(
            &self.db,
            id,
            "preview",
            json!({
                "key": key,
                "start": round(start),
                "duration": round(clip.duration),
                "width": clip.width,
                "height": clip.height,
            }),
        )
        .await
        .map_err(|e| JobError::retry(e.to_string()))?;
        tracing::info!(moment = %id, start, frames = clip.frames, "preview made");
        Ok(())
    }

    async fn dead(&self, job: &Job, error: &str) {
        // the moment plays without it; feeds fall back to the poster
        tracing::warn!(moment = %job.payload["moment"], %error, "the preview could not be made");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(f: impl Fn(f64) -> f64, until: f64) -> Vec<(f64, f64)> {
        (1..=(until / STEP) as usize)
            .map(|i| i as f64 * STEP)
            .map(|t| (t, f(t)))
            .collect()
    }

    #[test]
    fn the_window_holds_the_burst_of_change_in_its_middle() {
        // still, then a burst of motion from 5 to 6.5 s, then still again
        let s = series(|t| if (5.5..=6.5).contains(&t) { 40.0 } else { 1.0 }, 12.0);
        let start = most_active(&s, 12.0);
        assert!(start <= 5.0 && start + LENGTH >= 6.5, "window from {start}");
        let middle = start + LENGTH / 2.0;
        assert!((middle - 5.75).abs() <= 0.5, "window from {start}");
    }

    #[test]
    fn more_change_later_moves_the_window_to_the_end() {
        let s = series(|t| t, 10.0);
        assert_eq!(most_active(&s, 10.0), 7.0);
    }

    #[test]
    fn short_or_still_videos_start_at_zero() {
        assert_eq!(most_active(&series(|t| t, 3.0), 3.0), 0.0);
        assert_eq!(most_active(&series(|t| t, 2.0), 2.5), 0.0);
        assert_eq!(most_active(&series(|_| 0.0, 10.0), 10.0), 0.0);
        assert_eq!(most_active(&[], 10.0), 0.0);
        assert_eq!(most_active(&[], f64::NAN), 0.0);
    }

    #[test]
    fn activity_samples_every_step_and_measures_the_difference() {
        let mut a = Activity::default();
        assert!(a.due(0.0));
        a.add(0.0, vec![10; 4]);
        assert!(!a.due(0.4));
        assert!(a.due(0.5));
        a.add(0.5, vec![20, 20, 10, 10]);
        a.add(1.0, vec![20, 20, 10]); // another size: no sample, a new reference
        a.add(1.5, vec![20, 20, 16]);
        assert_eq!(a.samples, vec![(0.5, 5.0), (1.5, 2.0)]);
    }

    #[test]
    fn segments_overlapping_a_window() {
        let p = "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.0,\na.m4s\n#EXTINF:2.0,\nb.m4s\n\
                 #EXTINF:2.0,\nc.m4s\n#EXTINF:1.0,\nd.m4s\n#EXT-X-ENDLIST\n";
        assert_eq!(segments_between(p, 2.5, 5.5), vec!["b.m4s", "c.m4s"]);
        assert_eq!(segments_between(p, 0.0, 3.0), vec!["a.m4s", "b.m4s"]);
        assert_eq!(segments_between(p, 4.0, 7.0), vec!["c.m4s", "d.m4s"]);
        assert!(segments_between(p, 8.0, 9.0).is_empty());
    }
}
