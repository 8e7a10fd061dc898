//! Cuts one rendition's encoded samples into HLS media segments (sans-IO).
//!
//! This is the packager's input interface: the transcoder pushes, per rung, H.264 access units
//! (presentation and decode times in the video timescale) and AAC frames (decode times in the
//! audio sample rate), in the order the encoders produce them. A segment is cut at the first
//! keyframe at or after `start + target` (the transcoder forces keyframes exactly there, so cuts
//! are exact), and handed out once the audio covering it has arrived. Every segment therefore
//! starts with a keyframe and carries the audio of the same time span. Audio is placed by its
//! time alone, never by when it arrived: audio that runs ahead of the video (the video
//! encoder's latency) past the point where the open segment may end waits until that cut is
//! known, so the same stream is segmented the same way however the threads were scheduled.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::fmp4::{self, AudioTrack, Fragment, Sample, VideoTrack};

/// A finished media segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// 0-based index (the `mfhd` sequence number is `index + 1`).
    pub index: u32,
    /// Presentation start (seconds).
    pub start: f64,
    /// Duration (seconds).
    pub duration: f64,
    /// The bytes and the keyframe range.
    pub fragment: Fragment,
}

struct Pending {
    start_pts: i64,
    end_pts: Option<i64>,
    video: Vec<Sample>,
    audio: Vec<Sample>,
}

/// How many closed segments may wait for lagging audio before they are emitted anyway (keeps
/// memory bounded when the audio track ends early or stalls).
const MAX_WAITING: usize = 3;

/// The per-rendition segmenter.
pub struct Segmenter {
    video: VideoTrack,
    audio: Option<AudioTrack>,
    target_ticks: i64,
    tolerance: i64,
    frame_ticks: u32,
    shift: Option<i64>,
    last: Option<(Sample, i64)>,
    max_pts_end: i64,
    pending: VecDeque<Pending>,
    /// Audio (with its time in video ticks) past the point where the open segment may be cut,
    /// waiting for the cut.
    loose: VecDeque<(i64, Sample)>,
    audio_end: i64,
    next_index: u32,
    started: bool,
}

impl Segmenter {
    /// A segmenter for one rung. `frame_ticks` is the nominal frame duration in the video
    /// timescale (used for the last frame and as a tolerance when cutting).
    pub fn new(
        video: VideoTrack,
        audio: Option<AudioTrack>,
        target_seconds: f64,
        frame_ticks: u32,
    ) -> Segmenter {
        let ts = i64::from(video.timescale);
        Segmenter {
            target_ticks: (target_seconds * ts as f64).round() as i64,
            tolerance: i64::from(frame_ticks.max(1)) / 2,
            frame_ticks: frame_ticks.max(1),
            video,
            audio,
            shift: None,
            last: None,
            max_pts_end: 0,
            pending: VecDeque::new(),
            loose: VecDeque::new(),
            audio_end: 0,
            next_index: 0,
            started: false,
        }
    }

    /// The init segment for this rendition.
    pub fn init_segment(&self) -> Bytes {
        fmp4::init_segment(&self.video, self.audio.as_ref())
    }

    /// The video track description.
    pub fn video_track(&self) -> &VideoTrack {
        &self.video
    }

    /// The audio track description, if any.
    pub fn audio_track(&self) -> Option<&AudioTrack> {
        self.audio.as_ref()
    }

    /// Pushes one video access unit (length-prefixed NAL units). Returns segments completed.
    pub fn push_video(&mut self, data: Bytes, pts: i64, dts: i64, keyframe: bool) -> Vec<Segment> {
        if !self.started {
            if !keyframe {
                return Vec::new(); // a segment must start with a keyframe
            }
            self.started = true;
        }
        let shift = *self.shift.get_or_insert((-dts).max(0));
        let sample = Sample {
            data,
            dts: dts + shift,
            cts_offset: (pts - dts - shift) as i32,
            duration: self.frame_ticks,
            keyframe,
        };
        // The previous sample's duration is known now.
        if let Some((mut prev, prev_pts)) = self.last.take() {
            let d = sample.dts - prev.dts;
            if d > 0 && d < i64::from(u32::MAX) {
                prev.duration = d as u32;
            }
            self.max_pts_end = self.max_pts_end.max(prev_pts + i64::from(prev.duration));
            self.place_video(prev, prev_pts);
        }
        self.last = Some((sample, pts));
        self.ready(false)
    }

    fn place_video(&mut self, sample: Sample, pts: i64) {
        let cut = match self.pending.back() {
            None => true,
            Some(open) => {
                sample.keyframe
                    && open.end_pts.is_none()
                    && pts - open.start_pts >= self.target_ticks - self.tolerance
            }
        };
        if cut {
            if let Some(open) = self.pending.back_mut() {
                open.end_pts = Some(pts);
            }
            self.pending.push_back(Pending {
                start_pts: pts,
                end_pts: None,
                video: Vec::new(),
                audio: Vec::new(),
            });
            self.place_loose();
        }
        if let Some(open) = self.pending.back_mut() {
            open.video.push(sample);
        }
    }

    /// Where audio at `at` (video ticks) goes: a segment whose span holds it, or `None` when it
    /// lies past where the open segment may be cut (it waits), or past every segment.
    fn audio_slot(&self, at: i64) -> Option<usize> {
        let earliest_cut = self.target_ticks - self.tolerance;
        self.pending.iter().position(|p| match p.end_pts {
            Some(end) => at < end,
            None => at < p.start_pts + earliest_cut,
        })
    }

    /// Places waiting audio that the latest cut has decided.
    fn place_loose(&mut self) {
        while let Some((at, _)) = self.loose.front() {
            let Some(i) = self.audio_slot(*at) else { break };
            if let Some((_, sample)) = self.loose.pop_front() {
                self.pending[i].audio.push(sample);
            }
        }
    }

    /// Pushes one AAC frame. Returns segments completed.
    pub fn push_audio(&mut self, data: Bytes, dts: i64, duration: u32) -> Vec<Segment> {
        let Some(audio) = &self.audio else {
            return Vec::new();
        };
        let rate = i64::from(audio.sample_rate);
        let vts = i64::from(self.video.timescale);
        let sample = Sample {
            data,
            dts: dts.max(0),
            cts_offset: 0,
            duration,
            keyframe: true,
        };
        // audio time in video ticks
        let at = (i128::from(sample.dts) * i128::from(vts) / i128::from(rate)) as i64;
        self.audio_end = ((i128::from(sample.dts + i64::from(duration)) * i128::from(vts))
            / i128::from(rate)) as i64;
        if self.pending.is_empty() {
            // Audio ahead of every video sample so far: start the first segment's audio.
            self.pending.push_back(Pending {
                start_pts: 0,
                end_pts: None,
                video: Vec::new(),
                audio: Vec::new(),
            });
        }
        match self.audio_slot(at) {
            Some(i) if self.loose.is_empty() => self.pending[i].audio.push(sample),
            _ if self.pending.back().is_some_and(|p| p.end_pts.is_none()) => {
                self.loose.push_back((at, sample));
            }
            // past the end of everything (after finish): dropped, as the video has ended
            _ => {}
        }
        self.ready(false)
    }

    /// Flushes everything at the end of the stream.
    pub fn finish(&mut self) -> Vec<Segment> {
        if let Some((prev, prev_pts)) = self.last.take() {
            self.max_pts_end = self.max_pts_end.max(prev_pts + i64::from(prev.duration));
            self.place_video(prev, prev_pts);
        }
        if let Some(open) = self.pending.back_mut()
            && open.end_pts.is_none()
        {
            open.end_pts = Some(self.max_pts_end.max(open.start_pts));
        }
        // what still waits belongs to the last segment if it falls in it, else it is past the
        // end of the video and dropped
        self.place_loose();
        self.loose.clear();
        self.ready(true)
    }

    fn ready(&mut self, all: bool) -> Vec<Segment> {
        let mut out = Vec::new();
        loop {
            let closed = self.pending.iter().filter(|p| p.end_pts.is_some()).count();
            let Some(front) = self.pending.front() else {
                break;
            };
            let Some(end) = front.end_pts else { break };
            let audio_done = self.audio.is_none() || self.audio_end >= end;
            if !(all || audio_done || closed > MAX_WAITING) {
                break;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if p.video.is_empty() {
                // audio that arrived before any video: carried by the next segment
                if let Some(next) = self.pending.front_mut() {
                    let mut audio = p.audio;
                    audio.append(&mut next.audio);
                    next.audio = audio;
                }
                continue;
            }
            let ts = f64::from(self.video.timescale);
            let index = self.next_index;
            self.next_index += 1;
            out.push(Segment {
                index,
                start: p.start_pts as f64 / ts,
                duration: (end - p.start_pts).max(0) as f64 / ts,
                fragment: fmp4::fragment(index + 1, &p.video, &p.audio),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avc::AvcConfig;

    fn tracks(audio: bool) -> (VideoTrack, Option<AudioTrack>) {
        (
            VideoTrack {
                width: 640,
                height: 360,
                timescale: 90_000,
                avc: AvcConfig {
                    sps: vec![Bytes::from_static(&[0x67, 0x4d, 0, 0x1e])],
                    pps: vec![Bytes::from_static(&[0x68, 0xee])],
                },
            },
            audio.then(|| AudioTrack {
                sample_rate: 48_000,
                channels: 2,
                asc: Bytes::from_static(&[0x11, 0x90]),
                bitrate: 128_000,
            }),
        )
    }

    /// Feeds `secs` of 30 fps video with a keyframe every `gop` frames (B-frame-like timing:
    /// dts runs two frames behind pts), interleaved with 48 kHz AAC frames.
    fn run(secs: f64, gop: u32, audio: bool, audio_lag_frames: usize) -> Vec<Segment> {
        run_with(secs, gop, audio, audio_lag_frames, 0)
    }

    /// As [`run`], with the video also held back by `video_lag_frames` (an encoder's delay).
    fn run_with(
        secs: f64,
        gop: u32,
        audio: bool,
        audio_lag_frames: usize,
        video_lag_frames: usize,
    ) -> Vec<Segment> {
        let (v, a) = tracks(audio);
        let mut s = Segmenter::new(v, a, 2.0, 3000);
        let frames = (secs * 30.0) as i64;
        let mut out = Vec::new();
        let mut audio_dts = 0i64;
        let mut queued_audio = VecDeque::new();
        let mut queued_video = VecDeque::new();
        for f in 0..frames {
            let pts = f * 3000;
            let dts = pts - 6000;
            queued_video.push_back((pts, dts, f % i64::from(gop) == 0));
            while queued_video.len() > video_lag_frames {
                let (p, d, k) = queued_video.pop_front().unwrap();
                out.extend(s.push_video(Bytes::from(vec![1u8; 100]), p, d, k));
            }
            while audio && audio_dts * 90_000 / 48_000 <= pts + 3000 {
                queued_audio.push_back(audio_dts);
                audio_dts += 1024;
            }
            while queued_audio.len() > audio_lag_frames {
                let d = queued_audio.pop_front().unwrap();
                out.extend(s.push_audio(Bytes::from_static(&[0xaa; 20]), d, 1024));
            }
        }
        while let Some(d) = queued_audio.pop_front() {
            out.extend(s.push_audio(Bytes::from_static(&[0xaa; 20]), d, 1024));
        }
        while let Some((p, d, k)) = queued_video.pop_front() {
            out.extend(s.push_video(Bytes::from(vec![1u8; 100]), p, d, k));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn audio_lands_by_time_however_far_the_video_lags() {
        let count = |segs: &[Segment]| -> Vec<usize> {
            segs.iter()
                .map(|s| count_audio(&s.fragment.bytes))
                .collect()
        };
        let reference = count(&run_with(7.0, 60, true, 0, 0));
        assert_eq!(reference.iter().sum::<usize>(), 329, "{reference:?}");
        for video_lag in [1, 5, 20, 45, 80] {
            for audio_lag in [0, 3, 40] {
                let segs = run_with(7.0, 60, true, audio_lag, video_lag);
                assert_eq!(
                    count(&segs),
                    reference,
                    "video {video_lag} frames late, audio {audio_lag} frames late"
                );
            }
        }
    }

    #[test]
    fn cuts_exactly_at_forced_keyframes() {
        let segs = run(7.0, 60, true, 0);
        let d: Vec<f64> = segs.iter().map(|s| s.duration).collect();
        assert_eq!(d, vec![2.0, 2.0, 2.0, 1.0]);
        assert_eq!(
            segs.iter().map(|s| s.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        let total: f64 = d.iter().sum();
        assert!((total - 7.0).abs() < 1e-9);
    }

    #[test]
    fn keyframes_every_second_still_give_two_second_segments() {
        let segs = run(6.0, 30, false, 0);
        assert_eq!(
            segs.iter().map(|s| s.duration).collect::<Vec<_>>(),
            vec![2.0, 2.0, 2.0]
        );
    }

    #[test]
    fn sparse_keyframes_make_longer_segments() {
        let segs = run(9.0, 90, false, 0);
        assert_eq!(
            segs.iter().map(|s| s.duration).collect::<Vec<_>>(),
            vec![3.0, 3.0, 3.0]
        );
    }

    #[test]
    fn lagging_audio_is_waited_for_and_lands_in_its_segment() {
        let segs = run(6.0, 60, true, 40);
        assert_eq!(segs.len(), 3);
        // each 2 s segment carries ~2 s of 1024-sample AAC frames (93.75 per segment)
        for s in &segs {
            let audio_frames = count_audio(&s.fragment.bytes);
            assert!((93..=95).contains(&audio_frames), "{audio_frames}");
        }
    }

    #[test]
    fn leading_non_keyframes_are_dropped_and_decode_times_are_non_negative() {
        let (v, _) = tracks(false);
        let mut s = Segmenter::new(v, None, 2.0, 3000);
        assert!(
            s.push_video(Bytes::from_static(&[1]), 0, -6000, false)
                .is_empty()
        );
        s.push_video(Bytes::from_static(&[1]), 3000, -3000, true);
        s.push_video(Bytes::from_static(&[1]), 6000, 0, false);
        let segs = s.finish();
        assert_eq!(segs.len(), 1);
        assert!((segs[0].start - 3000.0 / 90_000.0).abs() < 1e-9);
    }

    /// Counts samples in the audio traf's trun.
    fn count_audio(frag: &[u8]) -> usize {
        // find the second 'trun' box
        let mut found = 0;
        let mut i = 0;
        while i + 8 < frag.len() {
            if &frag[i + 4..i + 8] == b"trun" {
                found += 1;
                if found == 2 {
                    return u32::from_be_bytes([
                        frag[i + 12],
                        frag[i + 13],
                        frag[i + 14],
                        frag[i + 15],
                    ]) as usize;
                }
            }
            i += 1;
        }
        0
    }
}
