//! The decoded picture's path: timestamps, the keyframe schedule (a keyframe at every segment
//! boundary), the poster (the first good candidate frame, sent at once so it can be published
//! while the upload is still arriving, and a clearly better one later: [`crate::poster`]) and
//! thumbnails, progress, and the hand-over to the top rung.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use ff::Rational;
use ffmpeg_next as ff;
use packager::publish::Thumb;

use super::probe::human_duration;
use super::stills::Stills;
use super::{Arrival, Error, Event, EventSink, MAX_FPS, Msg, Settings, TIMESCALE, rational_f64};

pub(super) struct DecodeState {
    pub(super) vtb: Rational,
    pub(super) vstart: i64,
    pub(super) last_t: f64,
    pub(super) next_key: f64,
    pub(super) frames: u64,
    pub(super) decoded_seconds: f64,
    pub(super) next_thumb: f64,
    pub(super) thumb_interval: f64,
    pub(super) poster: crate::poster::Chooser,
    /// The best candidate not yet published: its time and picture.
    pub(super) poster_best: Option<(f64, image::RgbImage)>,
    /// Change in the picture, for the animated preview's stretch.
    pub(super) activity: crate::preview::Activity,
    pub(super) stills: Stills,
    pub(super) last_progress: Instant,
    pub(super) settings: Settings,
    pub(super) duration: f64,
    pub(super) frame_step: f64,
    pub(super) arrival: Arrival,
    /// Each rung's encoded position (output ticks).
    pub(super) encoded: Vec<Arc<AtomicI64>>,
}

impl DecodeState {
    /// At the end of the video: the best candidate still unpublished, when nothing was or it
    /// is clearly better.
    pub(super) fn finish_poster(&mut self, sink: &EventSink) -> Result<(), Error> {
        if self.poster.finish()
            && let Some((time, image)) = self.poster_best.take()
        {
            sink.send(Event::Poster { image, time })?;
        }
        Ok(())
    }

    pub(super) fn drain_video(
        &mut self,
        dec: &mut ff::decoder::Video,
        top: &SyncSender<Msg>,
        sink: &EventSink,
    ) -> Result<(), Error> {
        loop {
            let mut frame = ff::frame::Video::empty();
            if dec.receive_frame(&mut frame).is_err() {
                return Ok(());
            }
            let t = match frame.timestamp() {
                Some(ts) => (ts - self.vstart) as f64 * rational_f64(self.vtb),
                None => {
                    if self.last_t.is_finite() {
                        self.last_t + self.frame_step
                    } else {
                        0.0
                    }
                }
            };
            // Drop frames that go backwards and, above 60 fps, frames closer than 1/60 s.
            if self.last_t.is_finite() && t < self.last_t + 0.5 / MAX_FPS {
                continue;
            }
            if t > self.settings.limits.max_duration + 1.0 {
                return Err(Error::Invalid(format!(
                    "the video is longer than the {} limit",
                    human_duration(self.settings.limits.max_duration)
                )));
            }
            let t = t.max(0.0);
            self.last_t = t;
            self.decoded_seconds = t;
            let half = self.frame_step / 2.0;
            let key = self.frames == 0 || t + half >= self.next_key;
            if key {
                while self.next_key <= t + half {
                    self.next_key += self.settings.segment_seconds;
                }
            }
            self.frames += 1;

            // the poster: the first good candidate at once, so it can be shown (and the voice
            // Q&A prepared) while the rest of the moment is still arriving
            if self.poster.consider(t) == crate::poster::Decision::Score
                && let Some((grey, width)) = self.stills.grey(&frame)
            {
                let score = crate::poster::Score::of(&grey, width);
                if self.poster.scored(t, &score) {
                    self.poster_best = None;
                    if let Some(image) = self.stills.poster(&frame) {
                        sink.send(Event::Poster { image, time: t })?;
                    }
                } else if self.poster.is_best(t) {
                    self.poster_best = self.stills.poster(&frame).map(|i| (t, i));
                }
            }
            if self.activity.due(t)
                && let Some((grey, _)) = self.stills.grey(&frame)
            {
                self.activity.add(t, grey);
            }
            if t + half >= self.next_thumb {
                self.next_thumb += self.thumb_interval;
                if let Some(image) = self.stills.thumb(&frame) {
                    sink.send(Event::Thumb(Thumb { time: t, image }))?;
                }
            }
            if self.last_progress.elapsed().as_millis() >= 500 {
                self.last_progress = Instant::now();
                let slowest = self
                    .encoded
                    .iter()
                    .map(|e| e.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(0);
                let encoded = if slowest == i64::MAX {
                    t
                } else {
                    (slowest as f64 / f64::from(TIMESCALE)).clamp(0.0, t)
                };
                sink.send(Event::Progress {
                    decoded: t,
                    encoded,
                    total: self.duration,
                    received: self.arrival.seconds(self.duration),
                })?;
            }
            let pts = (t * f64::from(TIMESCALE)).round() as i64;
            top.send(Msg::Frame { frame, pts, key })
                .map_err(|_| Error::Internal("the top rung stopped".into()))?;
        }
    }
}
