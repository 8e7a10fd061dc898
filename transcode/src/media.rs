//! Every ffmpeg-next call of the transcoder lives here: open and validate the source, decode it
//! once, and feed every rung of the ladder.
//!
//! Threads: the caller's (blocking) thread demuxes, decodes video and audio, encodes AAC once
//! for all rungs, and makes the poster and thumbnails. Each rung has its own thread with its
//! scaler, libx264 encoder and segmenter. Frames flow down a cascade — the top rung scales (and
//! rotates) the decoded picture, the next rung scales the top rung's picture, and so on — so
//! each downscale starts from the nearest size and the scaling work is spread over the rung
//! threads. Channels are bounded: memory stays flat however long the video is.

use std::sync::Once;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use bytes::Bytes;
use ff::format::{Pixel, Sample as SampleFormat, sample::Type as SampleType};
use ff::media::Type as MediaType;
use ff::software::scaling::Flags as ScaleFlags;
use ff::{ChannelLayout, Dictionary, Packet, Rational, picture};
use ffmpeg_next as ff;
use packager::avc::{self, AvcConfig};
use packager::fmp4::{AudioTrack, VideoTrack};
use packager::publish::{RungInfo, Thumb};
use packager::segmenter::{Segment, Segmenter};
use tokio_util::sync::CancellationToken;

use crate::ffi;
use crate::ladder::{self, Rung, RungSpec};
use crate::rotate::{Rotation, rotate_plane};

/// Video timescale of the output (ticks per second).
pub const TIMESCALE: i32 = 90_000;
const AUDIO_RATE: i32 = 48_000;
const AUDIO_BITRATE: usize = 128_000;
const MAX_FPS: f64 = 60.0;

/// Limits on what is accepted as a moment.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest accepted video (seconds).
    pub max_duration: f64,
    /// Shortest accepted video (seconds).
    pub min_duration: f64,
    /// Largest accepted width or height (pixels).
    pub max_dimension: u32,
}

/// How to encode.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configured ladder.
    pub rungs: Vec<RungSpec>,
    /// x264 preset.
    pub preset: String,
    /// x264 threads per encoder (0 = automatic).
    pub x264_threads: u32,
    /// Segment length (seconds): keyframes are forced on these boundaries.
    pub segment_seconds: f64,
    /// Thumbnail width (pixels).
    pub thumbnail_width: u32,
    /// What is accepted.
    pub limits: Limits,
}

/// What the transcoder reports as it goes.
#[derive(Debug)]
pub enum Event {
    /// A rung's encoder is open: its description and init segment.
    Started {
        /// Rung description for playlists.
        info: RungInfo,
        /// The fMP4 init segment.
        init: Bytes,
    },
    /// A finished media segment of a rung.
    Segment {
        /// Rung name.
        rung: String,
        /// The segment.
        segment: Segment,
    },
    /// A rung could not be produced (the others go on).
    RungFailed {
        /// Rung name.
        rung: String,
        /// Why.
        reason: String,
    },
    /// The poster frame (upright).
    Poster(image::RgbImage),
    /// A thumbnail for the scrubbing track.
    Thumb(Thumb),
    /// Seconds of video decoded so far, and the expected total.
    Progress {
        /// Decoded so far.
        done: f64,
        /// Expected total.
        total: f64,
    },
}

/// Why a transcode stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is not an acceptable video; retrying cannot help.
    #[error("{0}")]
    Invalid(String),
    /// Cancelled (lease lost, shutdown or time limit).
    #[error("cancelled")]
    Cancelled,
    /// The receiver of events went away (publishing failed).
    #[error("output closed")]
    OutputClosed,
    /// An FFmpeg failure that is ours, not the input's.
    #[error("transcoder error: {0}")]
    Internal(String),
}

/// What the source turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Container format name.
    pub format: String,
    /// Video codec name.
    pub codec: String,
    /// Coded width.
    pub width: u32,
    /// Coded height.
    pub height: u32,
    /// How to turn it upright.
    pub rotation: Rotation,
    /// Duration (seconds).
    pub duration: f64,
    /// Frames per second (capped at 60).
    pub fps: f64,
    /// Whether there is an audio stream.
    pub has_audio: bool,
}

/// Result of a finished transcode.
#[derive(Debug, Clone)]
pub struct Summary {
    /// What the source was.
    pub probe: Probe,
    /// Seconds of video decoded.
    pub decoded_seconds: f64,
    /// Frames fed to the ladder.
    pub frames: u64,
    /// The rungs attempted.
    pub rungs: Vec<Rung>,
    /// The rung remuxed from the source instead of re-encoded, if any.
    pub remuxed: Option<String>,
}

/// Initialises FFmpeg once per process and keeps its logging quiet (errors surface as ours).
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

fn human_duration(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn open_error(e: ff::Error) -> Error {
    let detail = match e {
        ff::Error::InvalidData => "the data is not a media container FFmpeg can read".to_string(),
        ff::Error::Eof => "the file ends before its header is complete".to_string(),
        ff::Error::Exit => return Error::Cancelled,
        other => other.to_string(),
    };
    Error::Invalid(format!(
        "not a playable video (truncated, corrupted or not a video file): {detail}"
    ))
}

const STILL_IMAGE_CODECS: &[&str] = &[
    "mjpeg", "png", "bmp", "gif", "webp", "tiff", "jpeg2000", "ljpeg", "jpegls", "pam", "ppm",
    "pgm", "pbm", "qoi",
];

/// Checks a probe against the limits. Pure, so every rule is unit-tested.
pub fn validate(p: &Probe, limits: &Limits) -> Result<(), Error> {
    if p.format.ends_with("_pipe")
        || p.format == "image2"
        || STILL_IMAGE_CODECS.contains(&p.codec.as_str()) && p.duration < limits.min_duration
    {
        return Err(Error::Invalid(format!(
            "not a video: the file is a still image ({} in {})",
            p.codec, p.format
        )));
    }
    if p.width == 0 || p.height == 0 {
        return Err(Error::Invalid(
            "the video stream has no picture size".into(),
        ));
    }
    if p.width > limits.max_dimension || p.height > limits.max_dimension {
        return Err(Error::Invalid(format!(
            "the video is {}×{} pixels; the limit is {} on either side",
            p.width, p.height, limits.max_dimension
        )));
    }
    if p.duration > limits.max_duration {
        return Err(Error::Invalid(format!(
            "the video is {} long; the limit is {}",
            human_duration(p.duration),
            human_duration(limits.max_duration)
        )));
    }
    if p.duration.is_finite() && p.duration > 0.0 && p.duration < limits.min_duration {
        return Err(Error::Invalid(format!(
            "the video is too short ({:.2} s; at least {:.1} s is needed)",
            p.duration, limits.min_duration
        )));
    }
    Ok(())
}

fn rational_f64(r: Rational) -> f64 {
    if r.denominator() == 0 {
        0.0
    } else {
        f64::from(r.numerator()) / f64::from(r.denominator())
    }
}

/// Messages to a rung thread.
enum Msg {
    Frame {
        frame: ff::frame::Video,
        pts: i64,
        key: bool,
    },
    Audio {
        data: Bytes,
        dts: i64,
        duration: u32,
    },
    /// A source video packet for a rung that is remuxed instead of re-encoded.
    Packet {
        data: Bytes,
        pts: i64,
        dts: i64,
        key: bool,
    },
    End,
}

struct EventSink {
    tx: tokio::sync::mpsc::Sender<Event>,
}

impl EventSink {
    fn send(&self, e: Event) -> Result<(), Error> {
        self.tx.blocking_send(e).map_err(|_| Error::OutputClosed)
    }
}

/// Opens `path`, validates it, and transcodes it into the ladder, reporting through `events`.
/// Runs on the calling (blocking) thread plus one thread per rung.
pub fn transcode(
    path: &std::path::Path,
    settings: &Settings,
    events: tokio::sync::mpsc::Sender<Event>,
    cancel: &CancellationToken,
) -> Result<Summary, Error> {
    init();
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(Error::Invalid("the uploaded file is empty".into()));
    }
    let sink = EventSink { tx: events };
    let interrupt = cancel.clone();
    let mut ictx = ff::format::input_with_interrupt(path, move || interrupt.is_cancelled())
        .map_err(open_error)?;
    let format = ictx.format().name().to_string();

    let vstream = ictx
        .streams()
        .best(MediaType::Video)
        .ok_or_else(|| Error::Invalid("not a video: the file has no video stream".into()))?;
    let vindex = vstream.index();
    let vtb = vstream.time_base();
    let vstart = if vstream.start_time() == ff::ffi::AV_NOPTS_VALUE {
        0
    } else {
        vstream.start_time()
    };
    let rotation = vstream
        .side_data()
        .find(|sd| sd.kind() == ff::codec::packet::side_data::Type::DisplayMatrix)
        .map_or(Rotation::None, |sd| {
            Rotation::from_display_matrix(sd.data())
        });
    let mut vctx = ff::codec::context::Context::from_parameters(vstream.parameters())
        .map_err(|e| Error::Invalid(format!("the video stream cannot be read: {e}")))?;
    vctx.set_threading(ff::codec::threading::Config {
        kind: ff::codec::threading::Type::Frame,
        count: 2,
        ..Default::default()
    });
    let codec_name = vctx.id().name().to_string();
    let mut vdec = vctx
        .decoder()
        .video()
        .map_err(|e| Error::Invalid(format!("no decoder for the video codec {codec_name}: {e}")))?;
    let container_duration = if ictx.duration() > 0 {
        ictx.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE)
    } else {
        0.0
    };
    let stream_duration = if vstream.duration() > 0 {
        vstream.duration() as f64 * rational_f64(vtb)
    } else {
        0.0
    };
    let duration = if stream_duration > 0.0 {
        stream_duration
    } else {
        container_duration
    };
    let mut fps = rational_f64(vstream.avg_frame_rate());
    if !(1.0..=1000.0).contains(&fps) {
        fps = rational_f64(vstream.rate());
    }
    if !(1.0..=1000.0).contains(&fps) {
        fps = 30.0;
    }
    let fps = fps.min(MAX_FPS);

    // Audio is optional: a moment without sound is still a moment.
    let astream = ictx.streams().best(MediaType::Audio);
    let has_audio = astream.is_some();
    let probe = Probe {
        format,
        codec: codec_name,
        width: vdec.width(),
        height: vdec.height(),
        rotation,
        duration,
        fps,
        has_audio,
    };
    validate(&probe, &settings.limits)?;

    let (up_w, up_h) = rotation.upright(probe.width, probe.height);
    let rungs = ladder::choose(&settings.rungs, up_w, up_h);
    if rungs.is_empty() {
        return Err(Error::Invalid("no rendition fits this video".into()));
    }

    // Remux fast path: a compliant H.264 source feeds the top rung without re-encoding.
    let remux = remux_plan(
        path,
        vindex,
        &vstream.parameters(),
        vdec.format(),
        &probe,
        &rungs[0],
        settings,
    );
    if let Some(avc) = &remux {
        tracing::info!(rung = %rungs[0].name, codec = %avc.codec_string(), "remuxing the top rung instead of re-encoding it");
    }

    let mut audio = match astream {
        Some(s) => match AudioPipe::new(&s, vstart, vtb) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(error = %e, "audio stream unusable; producing video-only rungs");
                None
            }
        },
        None => None,
    };
    let aindex = audio.as_ref().map(|a| a.index);
    let audio_track = audio.as_ref().map(|a| a.track.clone());

    // The rung cascade.
    let frame_ticks = (f64::from(TIMESCALE) / fps).round() as u32;
    let mut senders: Vec<SyncSender<Msg>> = Vec::new();
    let mut receivers: Vec<Receiver<Msg>> = Vec::new();
    for _ in &rungs {
        let (tx, rx) = sync_channel::<Msg>(6);
        senders.push(tx);
        receivers.push(rx);
    }
    let mut handles = Vec::new();
    for (i, (rung, rx)) in rungs.iter().cloned().zip(receivers).enumerate() {
        let next = senders.get(i + 1).cloned();
        let worker = RungWorker {
            remux: if i == 0 { remux.clone() } else { None },
            rung,
            first: i == 0,
            rotation: if i == 0 { rotation } else { Rotation::None },
            fps,
            frame_ticks,
            settings: settings.clone(),
            audio: audio_track.clone(),
            sink: EventSink {
                tx: sink.tx.clone(),
            },
        };
        let name = format!("rung-{}", worker.rung.name);
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || worker.run(rx, next))
            .map_err(|e| Error::Internal(format!("cannot start a rung thread: {e}")))?;
        handles.push(handle);
    }
    let top = senders[0].clone();
    let all_rungs: Vec<SyncSender<Msg>> = senders.clone();
    drop(senders);

    let mut state = DecodeState {
        vtb,
        vstart,
        last_t: f64::NEG_INFINITY,
        next_key: 0.0,
        frames: 0,
        decoded_seconds: 0.0,
        next_thumb: 0.0,
        thumb_interval: (duration / 100.0).max(settings.segment_seconds),
        poster_done: false,
        first_rgb: None,
        stills: Stills::new(rotation, settings.thumbnail_width),
        last_progress: Instant::now(),
        settings: settings.clone(),
        duration,
        frame_step: 1.0 / fps,
    };

    let result = (|| -> Result<(), Error> {
        let mut decode_errors = 0u64;
        let mut packets = 0u64;
        for (stream, packet) in ictx.packets() {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if stream.index() == vindex {
                packets += 1;
                if remux.is_some()
                    && let Some(data) = packet.data()
                {
                    let to90 = |t: i64| {
                        ((t - vstart) as f64 * rational_f64(vtb) * f64::from(TIMESCALE)).round()
                            as i64
                    };
                    let pts = packet.pts().or(packet.dts()).unwrap_or(0);
                    let dts = packet.dts().unwrap_or(pts);
                    top.send(Msg::Packet {
                        data: avc::to_avcc_sample(data),
                        pts: to90(pts),
                        dts: to90(dts),
                        key: packet.is_key(),
                    })
                    .map_err(|_| Error::Internal("the top rung stopped".into()))?;
                }
                if vdec.send_packet(&packet).is_err() {
                    decode_errors += 1;
                    continue;
                }
                state.drain_video(&mut vdec, &top, &sink)?;
            } else if Some(stream.index()) == aindex
                && let Some(a) = audio.as_mut()
            {
                a.packet(&packet, &all_rungs);
            }
        }
        let _ = vdec.send_eof();
        state.drain_video(&mut vdec, &top, &sink)?;
        if let Some(a) = audio.as_mut() {
            a.finish(&all_rungs);
        }
        if state.frames == 0 {
            return Err(Error::Invalid(
                "the video stream could not be decoded (no picture came out)".into(),
            ));
        }
        if packets > 10 && decode_errors * 2 > packets {
            return Err(Error::Invalid(format!(
                "the video stream is corrupted ({decode_errors} of {packets} packets undecodable)"
            )));
        }
        if state.decoded_seconds + state.frame_step < settings.limits.min_duration {
            return Err(Error::Invalid(format!(
                "the video is too short ({} frame{}; at least {:.1} s is needed)",
                state.frames,
                if state.frames == 1 { "" } else { "s" },
                settings.limits.min_duration
            )));
        }
        Ok(())
    })();

    for tx in &all_rungs {
        let _ = tx.send(Msg::End);
    }
    drop(top);
    drop(all_rungs);
    for h in handles {
        let _ = h.join();
    }
    result?;

    if !state.poster_done
        && let Some(rgb) = state.first_rgb.take()
    {
        sink.send(Event::Poster(rgb))?;
    }
    Ok(Summary {
        probe,
        decoded_seconds: state.decoded_seconds + state.frame_step,
        frames: state.frames,
        remuxed: remux.as_ref().map(|_| rungs[0].name.clone()),
        rungs,
    })
}

/// Decides whether the top rung can be remuxed from the source instead of re-encoded: H.264
/// 4:2:0 8-bit in Baseline/Main/High with 4-byte NAL lengths, exactly the rung's size, upright,
/// at most 60 fps, an average bit rate within the rung's ceiling, and IDR keyframes no further
/// apart than two segments. The keyframe facts come from one demux-only pass (no decoding).
fn remux_plan(
    path: &std::path::Path,
    vindex: usize,
    params: &ff::codec::Parameters,
    pix: Pixel,
    probe: &Probe,
    top: &Rung,
    settings: &Settings,
) -> Option<AvcConfig> {
    if probe.codec != "h264"
        || pix != Pixel::YUV420P
        || probe.rotation != Rotation::None
        || (probe.width, probe.height) != (top.width, top.height)
        || !probe.duration.is_finite()
        || probe.duration <= 0.0
    {
        return None;
    }
    let extradata = ffi::parameters_extradata(params);
    // lengthSizeMinusOne == 3: packets carry 4-byte NAL lengths like our writer's samples
    if extradata.first() != Some(&1) || extradata.get(4).map(|b| b & 3) != Some(3) {
        return None;
    }
    let avc = AvcConfig::from_avcc(&extradata).ok()?;
    let (profile, _, _) = avc.profile_compat_level();
    if !matches!(profile, 66 | 77 | 100) {
        return None;
    }
    let mut ictx = ff::format::input(path).ok()?;
    let stream = ictx.stream(vindex)?;
    let tb = rational_f64(stream.time_base());
    let fps = rational_f64(stream.avg_frame_rate());
    if fps > MAX_FPS + 0.01 || fps <= 0.0 {
        return None;
    }
    let mut bytes = 0u64;
    let mut last_key: Option<f64> = None;
    let mut max_gap = 0.0f64;
    let mut first = true;
    for (s, packet) in ictx.packets() {
        if s.index() != vindex {
            continue;
        }
        let data = packet.data()?;
        bytes += data.len() as u64;
        let t = packet.pts().or(packet.dts()).unwrap_or(0) as f64 * tb;
        if first && !packet.is_key() {
            return None;
        }
        first = false;
        if packet.is_key() {
            if !avc::has_idr(data) {
                return None; // open GOP: segments would not be independent
            }
            if let Some(k) = last_key {
                max_gap = max_gap.max(t - k);
            }
            last_key = Some(t);
        }
    }
    let last = last_key?;
    max_gap = max_gap.max(probe.duration - last);
    let bitrate = bytes as f64 * 8.0 / probe.duration;
    if bitrate > top.maxrate as f64 || max_gap > 2.0 * settings.segment_seconds + 0.05 {
        return None;
    }
    Some(avc)
}

struct DecodeState {
    vtb: Rational,
    vstart: i64,
    last_t: f64,
    next_key: f64,
    frames: u64,
    decoded_seconds: f64,
    next_thumb: f64,
    thumb_interval: f64,
    poster_done: bool,
    first_rgb: Option<image::RgbImage>,
    stills: Stills,
    last_progress: Instant,
    settings: Settings,
    duration: f64,
    frame_step: f64,
}

impl DecodeState {
    fn drain_video(
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

            // poster (first frame at or after 1 s) and thumbnails
            if (self.first_rgb.is_none() || (!self.poster_done && t >= 1.0))
                && let Some(rgb) = self.stills.poster(&frame)
            {
                if t >= 1.0 {
                    self.poster_done = true;
                    sink.send(Event::Poster(rgb))?;
                } else {
                    self.first_rgb = Some(rgb);
                }
            }
            if t + half >= self.next_thumb {
                self.next_thumb += self.thumb_interval;
                if let Some(image) = self.stills.thumb(&frame) {
                    sink.send(Event::Thumb(Thumb { time: t, image }))?;
                }
            }
            if self.last_progress.elapsed().as_millis() >= 500 {
                self.last_progress = Instant::now();
                sink.send(Event::Progress {
                    done: t,
                    total: self.duration,
                })?;
            }
            let pts = (t * f64::from(TIMESCALE)).round() as i64;
            top.send(Msg::Frame { frame, pts, key })
                .map_err(|_| Error::Internal("the top rung stopped".into()))?;
        }
    }
}

/// Poster and thumbnail pictures: RGB, upright.
struct Stills {
    rotation: Rotation,
    thumb_width: u32,
    poster_scaler: Option<(ff::software::scaling::Context, u32, u32)>,
    thumb_scaler: Option<(ff::software::scaling::Context, u32, u32)>,
}

impl Stills {
    fn new(rotation: Rotation, thumb_width: u32) -> Stills {
        Stills {
            rotation,
            thumb_width: thumb_width.max(16),
            poster_scaler: None,
            thumb_scaler: None,
        }
    }

    /// Size (before rotation) for an upright picture whose width is `upright_w` at most.
    fn size_for(&self, frame: &ff::frame::Video, upright_w: u32) -> (u32, u32) {
        let (uw, uh) = self.rotation.upright(frame.width(), frame.height());
        let w = upright_w.min(uw).max(2);
        let h = ((f64::from(uh) * f64::from(w) / f64::from(uw)).round() as u32).max(2);
        let (w, h) = (w & !1, h & !1);
        if self.rotation.swaps() {
            (h, w)
        } else {
            (w, h)
        }
    }

    fn convert(
        slot: &mut Option<(ff::software::scaling::Context, u32, u32)>,
        frame: &ff::frame::Video,
        (w, h): (u32, u32),
        rotation: Rotation,
    ) -> Option<image::RgbImage> {
        let fresh = match slot {
            Some((s, iw, ih)) => {
                *iw != frame.width() || *ih != frame.height() || s.output().width != w
            }
            None => true,
        };
        if fresh {
            let s = ff::software::scaling::Context::get(
                frame.format(),
                frame.width(),
                frame.height(),
                Pixel::RGB24,
                w,
                h,
                ScaleFlags::BICUBIC,
            )
            .ok()?;
            *slot = Some((s, frame.width(), frame.height()));
        }
        let (scaler, _, _) = slot.as_mut()?;
        let mut rgb = ff::frame::Video::empty();
        scaler.run(frame, &mut rgb).ok()?;
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        let mut buf = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h as usize {
            buf.extend_from_slice(&data[y * stride..y * stride + w as usize * 3]);
        }
        let img = image::RgbImage::from_raw(w, h, buf)?;
        Some(match rotation {
            Rotation::None => img,
            Rotation::Cw90 => image::imageops::rotate90(&img),
            Rotation::Cw180 => image::imageops::rotate180(&img),
            Rotation::Cw270 => image::imageops::rotate270(&img),
        })
    }

    fn poster(&mut self, frame: &ff::frame::Video) -> Option<image::RgbImage> {
        let size = self.size_for(frame, 1280);
        Self::convert(&mut self.poster_scaler, frame, size, self.rotation)
    }

    fn thumb(&mut self, frame: &ff::frame::Video) -> Option<image::RgbImage> {
        let size = self.size_for(frame, self.thumb_width);
        Self::convert(&mut self.thumb_scaler, frame, size, self.rotation)
    }
}

/// Decodes the source audio, resamples to 48 kHz stereo float, encodes AAC-LC once and hands
/// every packet to all rungs.
struct AudioPipe {
    index: usize,
    decoder: ff::decoder::Audio,
    resampler: Option<ff::software::resampling::Context>,
    encoder: ff::encoder::audio::Encoder,
    track: AudioTrack,
    fifo: [Vec<f32>; 2],
    next_pts: i64,
    shift: Option<i64>,
    skip: usize,
    frame_size: usize,
}

impl AudioPipe {
    fn new(
        stream: &ff::format::stream::Stream,
        vstart: i64,
        vtb: Rational,
    ) -> Result<AudioPipe, String> {
        let ctx = ff::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| e.to_string())?;
        let decoder = ctx.decoder().audio().map_err(|e| e.to_string())?;
        let codec = ff::encoder::find(ff::codec::Id::AAC).ok_or("no AAC encoder")?;
        let mut enc = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .map_err(|e| e.to_string())?;
        enc.set_rate(AUDIO_RATE);
        enc.set_channel_layout(ChannelLayout::STEREO);
        enc.set_format(SampleFormat::F32(SampleType::Planar));
        enc.set_bit_rate(AUDIO_BITRATE);
        enc.set_time_base(Rational(1, AUDIO_RATE));
        enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        let encoder = enc
            .open_as_with(codec, Dictionary::new())
            .map_err(|e| format!("AAC encoder: {e}"))?;
        let asc = ffi::extradata(&encoder);
        if asc.is_empty() {
            return Err("AAC encoder gave no AudioSpecificConfig".into());
        }
        let frame_size = (encoder.frame_size() as usize).max(1);
        // Align audio with the video timeline: skip audio before the first video frame, pad
        // silence when audio starts later.
        let atb = stream.time_base();
        let astart = if stream.start_time() == ff::ffi::AV_NOPTS_VALUE {
            0
        } else {
            stream.start_time()
        };
        let offset = astart as f64 * rational_f64(atb) - vstart as f64 * rational_f64(vtb);
        let offset_samples = (offset * f64::from(AUDIO_RATE)).round() as i64;
        let mut fifo = [Vec::new(), Vec::new()];
        let mut skip = 0usize;
        if offset_samples > 0 {
            let pad = offset_samples.min(i64::from(AUDIO_RATE) * 10) as usize;
            fifo[0].resize(pad, 0.0);
            fifo[1].resize(pad, 0.0);
        } else {
            skip = (-offset_samples) as usize;
        }
        Ok(AudioPipe {
            index: stream.index(),
            decoder,
            resampler: None,
            encoder,
            track: AudioTrack {
                sample_rate: AUDIO_RATE as u32,
                channels: 2,
                asc: Bytes::from(asc),
                bitrate: AUDIO_BITRATE as u32,
            },
            fifo,
            next_pts: 0,
            shift: None,
            skip,
            frame_size,
        })
    }

    fn packet(&mut self, packet: &Packet, rungs: &[SyncSender<Msg>]) {
        if self.decoder.send_packet(packet).is_err() {
            return; // a damaged audio packet is skipped, as players do
        }
        self.drain_decoder(rungs);
    }

    fn drain_decoder(&mut self, rungs: &[SyncSender<Msg>]) {
        let mut frame = ff::frame::Audio::empty();
        while self.decoder.receive_frame(&mut frame).is_ok() {
            self.resample(Some(&frame));
            self.encode_ready(rungs, false);
        }
    }

    fn resample(&mut self, frame: Option<&ff::frame::Audio>) {
        if self.resampler.is_none() {
            let Some(f) = frame else { return };
            let layout = if f.channel_layout().channels() > 0 {
                f.channel_layout()
            } else {
                ChannelLayout::default(i32::from(f.channels().max(1)))
            };
            match ff::software::resampling::Context::get(
                f.format(),
                layout,
                f.rate(),
                SampleFormat::F32(SampleType::Planar),
                ChannelLayout::STEREO,
                AUDIO_RATE as u32,
            ) {
                Ok(r) => self.resampler = Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resample this audio; it is dropped");
                    return;
                }
            }
        }
        let Some(resampler) = self.resampler.as_mut() else {
            return;
        };
        let capacity = frame.map_or(4096, |f| {
            f.samples() * AUDIO_RATE as usize / f.rate().max(1) as usize + 256
        });
        let mut out = ff::frame::Audio::new(
            SampleFormat::F32(SampleType::Planar),
            capacity,
            ChannelLayout::STEREO,
        );
        let ok = match frame {
            Some(f) => resampler.run(f, &mut out).is_ok(),
            None => resampler.flush(&mut out).is_ok(),
        };
        if !ok {
            return;
        }
        let n = out.samples();
        if n == 0 {
            return;
        }
        for ch in 0..2 {
            let plane: &[f32] = out.plane(ch);
            let take = &plane[..n.min(plane.len())];
            self.fifo[ch].extend_from_slice(take);
        }
        if self.skip > 0 {
            let k = self.skip.min(self.fifo[0].len());
            self.fifo[0].drain(..k);
            self.fifo[1].drain(..k);
            self.skip -= k;
        }
    }

    fn encode_ready(&mut self, rungs: &[SyncSender<Msg>], last: bool) {
        while self.fifo[0].len() >= self.frame_size || (last && !self.fifo[0].is_empty()) {
            let n = self.fifo[0].len().min(self.frame_size);
            let mut f = ff::frame::Audio::new(
                SampleFormat::F32(SampleType::Planar),
                n,
                ChannelLayout::STEREO,
            );
            f.set_rate(AUDIO_RATE as u32);
            for ch in 0..2 {
                let src: Vec<f32> = self.fifo[ch].drain(..n).collect();
                f.plane_mut::<f32>(ch)[..n].copy_from_slice(&src);
            }
            f.set_pts(Some(self.next_pts));
            self.next_pts += n as i64;
            if self.encoder.send_frame(&f).is_ok() {
                self.drain_encoder(rungs);
            }
        }
    }

    fn drain_encoder(&mut self, rungs: &[SyncSender<Msg>]) {
        let mut pkt = Packet::empty();
        while self.encoder.receive_packet(&mut pkt).is_ok() {
            let Some(data) = pkt.data() else { continue };
            let pts = pkt.pts().or(pkt.dts()).unwrap_or(0);
            let shift = *self.shift.get_or_insert((-pts).max(0));
            let duration = if pkt.duration() > 0 {
                pkt.duration() as u32
            } else {
                self.frame_size as u32
            };
            let data = Bytes::copy_from_slice(data);
            for tx in rungs {
                let _ = tx.send(Msg::Audio {
                    data: data.clone(),
                    dts: pts + shift,
                    duration,
                });
            }
        }
    }

    fn finish(&mut self, rungs: &[SyncSender<Msg>]) {
        let _ = self.decoder.send_eof();
        self.drain_decoder(rungs);
        self.resample(None);
        self.encode_ready(rungs, true);
        let _ = self.encoder.send_eof();
        self.drain_encoder(rungs);
    }
}

/// One rung: scale (and rotate, for the top rung), encode with libx264, segment.
struct RungWorker {
    /// Parameter sets of a source that is remuxed into this rung (no encoder).
    remux: Option<AvcConfig>,
    rung: Rung,
    first: bool,
    rotation: Rotation,
    fps: f64,
    frame_ticks: u32,
    settings: Settings,
    audio: Option<AudioTrack>,
    sink: EventSink,
}

impl RungWorker {
    fn run(self, rx: Receiver<Msg>, next: Option<SyncSender<Msg>>) {
        let name = self.rung.name.clone();
        let mut encoder = match self.open() {
            Ok(e) => Some(e),
            Err(reason) => {
                let _ = self.sink.send(Event::RungFailed {
                    rung: name.clone(),
                    reason,
                });
                None
            }
        };
        // Pre-rotation size the scaler produces.
        let (sw, sh) = if self.rotation.swaps() {
            (self.rung.height, self.rung.width)
        } else {
            (self.rung.width, self.rung.height)
        };
        let mut scaler: Option<(ff::software::scaling::Context, Pixel, u32, u32)> = None;
        let mut failed = encoder.is_none();
        // The top rung gets frames, audio and the end from the decoder on one channel; lower
        // rungs get audio and an end from the decoder, and frames and a second end from the rung
        // above. A rung is done when every sender has said so.
        let mut ends_left = if self.first { 1 } else { 2 };
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Frame { frame, pts, key } => {
                    let mut out = match self.scale(&mut scaler, frame, sw, sh) {
                        Ok(f) => f,
                        Err(e) => {
                            if !failed {
                                failed = true;
                                let _ = self.sink.send(Event::RungFailed {
                                    rung: name.clone(),
                                    reason: e,
                                });
                            }
                            continue;
                        }
                    };
                    if !failed
                        && self.remux.is_none()
                        && let Some(enc) = encoder.as_mut()
                        && let Err(e) = enc.frame(&mut out, pts, key, &self.sink)
                    {
                        failed = true;
                        let _ = self.sink.send(Event::RungFailed {
                            rung: name.clone(),
                            reason: e,
                        });
                    }
                    if let Some(n) = &next {
                        let _ = n.send(Msg::Frame {
                            frame: out,
                            pts,
                            key,
                        });
                    }
                }
                Msg::Packet {
                    data,
                    pts,
                    dts,
                    key,
                } => {
                    if !failed && let Some(enc) = encoder.as_mut() {
                        for s in enc.segmenter.push_video(data, pts, dts, key) {
                            let _ = self.sink.send(Event::Segment {
                                rung: name.clone(),
                                segment: s,
                            });
                        }
                    }
                }
                Msg::Audio {
                    data,
                    dts,
                    duration,
                } => {
                    if !failed && let Some(enc) = encoder.as_mut() {
                        for s in enc.segmenter.push_audio(data, dts, duration) {
                            let _ = self.sink.send(Event::Segment {
                                rung: name.clone(),
                                segment: s,
                            });
                        }
                    }
                }
                Msg::End => {
                    ends_left -= 1;
                    if ends_left == 0 {
                        break;
                    }
                }
            }
        }
        if !failed
            && let Some(enc) = encoder.as_mut()
            && let Err(e) = enc.finish(&self.sink)
        {
            let _ = self.sink.send(Event::RungFailed {
                rung: name.clone(),
                reason: e,
            });
        }
        if let Some(n) = &next {
            let _ = n.send(Msg::End);
        }
    }

    fn scale(
        &self,
        scaler: &mut Option<(ff::software::scaling::Context, Pixel, u32, u32)>,
        frame: ff::frame::Video,
        sw: u32,
        sh: u32,
    ) -> Result<ff::frame::Video, String> {
        let same = frame.width() == sw && frame.height() == sh && frame.format() == Pixel::YUV420P;
        let scaled = if same {
            frame
        } else {
            let fresh = match scaler {
                Some((_, f, w, h)) => {
                    *f != frame.format() || *w != frame.width() || *h != frame.height()
                }
                None => true,
            };
            if fresh {
                let s = ff::software::scaling::Context::get(
                    frame.format(),
                    frame.width(),
                    frame.height(),
                    Pixel::YUV420P,
                    sw,
                    sh,
                    ScaleFlags::BICUBIC,
                )
                .map_err(|e| format!("scaler: {e}"))?;
                *scaler = Some((s, frame.format(), frame.width(), frame.height()));
            }
            let Some((s, ..)) = scaler.as_mut() else {
                return Err("scaler missing".into());
            };
            let mut out = ff::frame::Video::empty();
            s.run(&frame, &mut out)
                .map_err(|e| format!("scaling: {e}"))?;
            out
        };
        if self.rotation == Rotation::None {
            return Ok(scaled);
        }
        let (w, h) = (self.rung.width, self.rung.height);
        let mut out = ff::frame::Video::new(Pixel::YUV420P, w, h);
        for plane in 0..3 {
            let (pw, ph) = (
                scaled.plane_width(plane) as usize,
                scaled.plane_height(plane) as usize,
            );
            let src_stride = scaled.stride(plane);
            let dst_stride = out.stride(plane);
            rotate_plane(
                scaled.data(plane),
                src_stride,
                pw,
                ph,
                out.data_mut(plane),
                dst_stride,
                self.rotation,
            );
        }
        Ok(out)
    }

    fn open(&self) -> Result<RungEncoder, String> {
        if let Some(avc) = &self.remux {
            return self.start(None, avc.clone());
        }
        let codec = ff::encoder::find_by_name("libx264").ok_or("libx264 is not available")?;
        let mut enc = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| e.to_string())?;
        let gop = (self.fps * self.settings.segment_seconds).round().max(1.0) as u32;
        enc.set_width(self.rung.width);
        enc.set_height(self.rung.height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(Rational(1, TIMESCALE));
        let fps_r = Rational((self.fps * 1000.0).round() as i32, 1000).reduce();
        enc.set_frame_rate(Some(fps_r));
        enc.set_gop(gop);
        enc.set_bit_rate(self.rung.bitrate as usize);
        enc.set_max_bit_rate(self.rung.maxrate as usize);
        enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        let mut opts = Dictionary::new();
        opts.set("preset", &self.settings.preset);
        opts.set("profile", &self.rung.profile);
        opts.set("bufsize", &self.rung.bufsize.to_string());
        opts.set("keyint_min", &gop.to_string());
        opts.set("sc_threshold", "0");
        opts.set("forced-idr", "1");
        opts.set("threads", &self.settings.x264_threads.to_string());
        let opened = enc
            .open_as_with(codec, opts)
            .map_err(|e| format!("libx264 ({}): {e}", self.rung.name))?;
        let avc = AvcConfig::from_extradata(&ffi::extradata(&opened))
            .map_err(|e| format!("libx264 gave no usable SPS/PPS: {e}"))?;
        self.start(Some(opened), avc)
    }

    /// Makes the segmenter and announces the rung (init segment).
    fn start(
        &self,
        encoder: Option<ff::encoder::video::Encoder>,
        avc: AvcConfig,
    ) -> Result<RungEncoder, String> {
        let video = VideoTrack {
            width: self.rung.width,
            height: self.rung.height,
            timescale: TIMESCALE as u32,
            avc: avc.clone(),
        };
        let segmenter = Segmenter::new(
            video,
            self.audio.clone(),
            self.settings.segment_seconds,
            self.frame_ticks,
        );
        let info = RungInfo {
            name: self.rung.name.clone(),
            width: self.rung.width,
            height: self.rung.height,
            frame_rate: self.fps,
            video_codec: avc.codec_string(),
            audio_codec: self.audio.as_ref().map(AudioTrack::codec_string),
        };
        self.sink
            .send(Event::Started {
                info,
                init: segmenter.init_segment(),
            })
            .map_err(|e| e.to_string())?;
        Ok(RungEncoder {
            encoder,
            segmenter,
            name: self.rung.name.clone(),
        })
    }
}

struct RungEncoder {
    /// `None` when the rung is remuxed from the source.
    encoder: Option<ff::encoder::video::Encoder>,
    segmenter: Segmenter,
    name: String,
}

impl RungEncoder {
    fn frame(
        &mut self,
        frame: &mut ff::frame::Video,
        pts: i64,
        key: bool,
        sink: &EventSink,
    ) -> Result<(), String> {
        // The encoder takes a reference to the (read-only) picture; the same picture then goes
        // down the cascade to be scaled for the next rung.
        frame.set_pts(Some(pts));
        frame.set_kind(if key {
            picture::Type::I
        } else {
            picture::Type::None
        });
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        encoder
            .send_frame(frame)
            .map_err(|e| format!("encoding failed: {e}"))?;
        self.drain(sink)
    }

    fn drain(&mut self, sink: &EventSink) -> Result<(), String> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        let mut pkt = Packet::empty();
        while encoder.receive_packet(&mut pkt).is_ok() {
            let Some(data) = pkt.data() else { continue };
            let pts = pkt.pts().unwrap_or(0);
            let dts = pkt.dts().unwrap_or(pts);
            let key = pkt.is_key() && avc::has_idr(data);
            let sample = avc::to_avcc_sample(data);
            for s in self.segmenter.push_video(sample, pts, dts, key) {
                sink.send(Event::Segment {
                    rung: self.name.clone(),
                    segment: s,
                })
                .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, sink: &EventSink) -> Result<(), String> {
        if let Some(encoder) = self.encoder.as_mut() {
            encoder
                .send_eof()
                .map_err(|e| format!("flushing the encoder: {e}"))?;
            self.drain(sink)?;
        }
        for s in self.segmenter.finish() {
            sink.send(Event::Segment {
                rung: self.name.clone(),
                segment: s,
            })
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Probe {
        Probe {
            format: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            codec: "h264".into(),
            width: 1920,
            height: 1080,
            rotation: Rotation::None,
            duration: 30.0,
            fps: 30.0,
            has_audio: true,
        }
    }

    fn limits() -> Limits {
        Limits {
            max_duration: 600.0,
            min_duration: 0.5,
            max_dimension: 8192,
        }
    }

    #[test]
    fn validation_rules() {
        assert!(validate(&probe(), &limits()).is_ok());
        let err = |p: Probe| validate(&p, &limits()).unwrap_err().to_string();
        assert!(
            err(Probe {
                duration: 700.0,
                ..probe()
            })
            .contains("11m40s long; the limit is 10m00s")
        );
        assert!(
            err(Probe {
                width: 9000,
                ..probe()
            })
            .contains("9000×1080")
        );
        assert!(
            err(Probe {
                duration: 0.1,
                ..probe()
            })
            .contains("too short")
        );
        assert!(
            err(Probe {
                format: "jpeg_pipe".into(),
                codec: "mjpeg".into(),
                duration: 0.0,
                ..probe()
            })
            .contains("still image")
        );
        assert!(
            err(Probe {
                width: 0,
                ..probe()
            })
            .contains("no picture size")
        );
        // unknown duration is not rejected up front (checked while decoding)
        assert!(
            validate(
                &Probe {
                    duration: 0.0,
                    ..probe()
                },
                &limits()
            )
            .is_ok()
        );
    }
}
