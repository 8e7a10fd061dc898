//! Every ffmpeg-next call of the transcoder lives in this module: open and validate the source
//! ([`probe`], [`input`]), decode it once ([`decode`], [`audio`]), and feed every rung of the
//! ladder ([`encode`]); the remux decision is a pure function ([`remux`]).
//!
//! The input is a byte stream ([`crate::source::Reader`]), so the same code transcodes a
//! finished upload and one still arriving: reads past what has arrived block in the reader.
//!
//! Threads: the caller's (blocking) thread demuxes, decodes video and audio, encodes AAC once
//! for all rungs, and makes the poster and thumbnails. Each rung has its own thread with its
//! scaler, libx264 encoder and segmenter. Frames flow down a cascade — the top rung scales (and
//! rotates) the decoded picture, the next rung scales the top rung's picture, and so on — so
//! each downscale starts from the nearest size and the scaling work is spread over the rung
//! threads. Channels are bounded: memory stays flat however long the video is.

pub mod audio;
pub mod clip;
mod decode;
mod encode;
mod input;
pub mod probe;
pub mod remux;
mod stills;

use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::AtomicI64;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use bytes::Bytes;
use ff::format::Pixel;
use ff::media::Type as MediaType;
use ff::{Packet, Rational};
use ffmpeg_next as ff;
use packager::avc::{self, AvcConfig};
use packager::publish::{RungInfo, Thumb};
use packager::segmenter::Segment;
use tokio_util::sync::CancellationToken;

use crate::ffi;
use crate::ladder::{self, Rung, RungSpec};
use crate::rotate::Rotation;
use crate::source::{Monitor, Reader};
use audio::AudioPipe;
use decode::DecodeState;
use encode::RungWorker;
pub use probe::{Limits, Probe, validate};
use stills::Stills;
pub use stills::frame_at;

/// Video timescale of the output (ticks per second).
pub const TIMESCALE: i32 = 90_000;
const MAX_FPS: f64 = 60.0;

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
    /// May the top rung take the source's H.264 as it is (see [`remux`])?
    pub allow_remux: bool,
    /// Keep the audio as 16 kHz mono for captions ([`Summary::speech`]).
    pub speech: bool,
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
    /// The poster (upright): the first good candidate frame as soon as it is decoded, and
    /// again when a clearly better one is found ([`crate::poster`]).
    Poster {
        /// The picture.
        image: image::RgbImage,
        /// Its time in the video (seconds).
        time: f64,
    },
    /// A thumbnail for the scrubbing track.
    Thumb(Thumb),
    /// Seconds of video decoded so far, encoded so far (by the slowest rung), the expected
    /// total, and how many seconds of the source have arrived (when that can be told).
    Progress {
        /// Decoded so far.
        decoded: f64,
        /// Encoded so far by every rung.
        encoded: f64,
        /// Expected total.
        total: f64,
        /// Arrived so far.
        received: Option<f64>,
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
    /// Reading the source failed or stopped (the reader's monitor says why).
    #[error("reading the source stopped: {0}")]
    Input(String),
    /// The top rung was being remuxed and the source turned out to have an open GOP (a
    /// keyframe that is not an IDR): transcode again without the remux.
    #[error("the source has a keyframe that is not an IDR picture; it cannot be remuxed")]
    RemuxRefused,
    /// An FFmpeg failure that is ours, not the input's.
    #[error("transcoder error: {0}")]
    Internal(String),
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
    /// The audio as 16 kHz mono on the video's timeline, for captions: `None` when the
    /// moment has no usable audio or none was asked for.
    pub speech: Option<Vec<i16>>,
    /// Where the animated preview starts: the most active stretch ([`crate::preview`]).
    pub preview_start: f64,
}

/// The source to transcode.
pub struct Input {
    /// Its bytes.
    pub reader: Reader,
    /// Whether FFmpeg may seek in it (see [`crate::container::Kind::seek_while_arriving`]).
    pub seekable: bool,
    /// A file name whose extension helps FFmpeg's probe.
    pub hint: &'static str,
}

/// Initialises FFmpeg once per process and keeps its logging quiet (errors surface as ours).
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Fatal);
        // a role that never transcodes never gets here (the scale-out test checks the logs)
        tracing::info!("FFmpeg initialised");
    });
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

/// How many seconds of the source have arrived: from the sample index when the container has
/// one up front (the time of the last sample wholly durable), else in proportion to bytes.
struct Arrival {
    monitor: Arc<Monitor>,
    /// (end byte, time) of each video sample by end byte, times as a running maximum.
    index: Vec<(u64, f64)>,
}

impl Arrival {
    fn new(monitor: Arc<Monitor>, entries: &[ffi::IndexEntry], tb: f64, start: i64) -> Arrival {
        let mut index: Vec<(u64, f64)> = entries
            .iter()
            .filter(|e| e.pos >= 0 && e.size > 0)
            .map(|e| {
                (
                    e.pos as u64 + u64::from(e.size),
                    (e.timestamp - start) as f64 * tb,
                )
            })
            .collect();
        index.sort_by_key(|(end, _)| *end);
        let mut max = f64::NEG_INFINITY;
        for (_, t) in &mut index {
            max = max.max(*t);
            *t = max;
        }
        Arrival { monitor, index }
    }

    fn seconds(&self, duration: f64) -> Option<f64> {
        if self.monitor.complete() {
            return (duration > 0.0).then_some(duration);
        }
        let durable = self.monitor.durable();
        if !self.index.is_empty() {
            let n = self.index.partition_point(|(end, _)| *end <= durable);
            return Some(if n == 0 {
                0.0
            } else {
                self.index[n - 1].1.max(0.0)
            });
        }
        let length = self.monitor.length();
        (duration > 0.0 && length > 0).then(|| duration * durable as f64 / length as f64)
    }
}

/// Opens `input`, validates it, and transcodes it into the ladder, reporting through `events`.
/// Runs on the calling (blocking) thread plus one thread per rung.
pub fn transcode(
    input: Input,
    settings: &Settings,
    events: tokio::sync::mpsc::Sender<Event>,
    cancel: &CancellationToken,
) -> Result<Summary, Error> {
    init();
    let monitor = input.reader.monitor();
    if monitor.length() == 0 {
        return Err(Error::Invalid("the uploaded file is empty".into()));
    }
    let sink = EventSink { tx: events };
    let mut ictx = input::open(input.reader, input.seekable, input.hint, cancel)?;
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
    let index = ffi::index_entries(&vstream);
    let nb_frames = vstream.frames();
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
    let mut vdec = vctx.decoder().video().map_err(|e| {
        Error::Invalid(if codec_name == "none" {
            // a damaged header: the stream is there but names no codec
            "not a playable video (truncated, corrupted or not a video file): the video \
                 stream names no codec"
                .to_string()
        } else {
            format!("the video codec {codec_name} is not supported: {e}")
        })
    })?;
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
    let avg_fps = rational_f64(vstream.avg_frame_rate());
    let mut fps = avg_fps;
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
    let extradata = ffi::parameters_extradata(&vstream.parameters());
    let tb = rational_f64(vtb);
    let facts = remux::Facts {
        codec: probe.codec.clone(),
        yuv420p: vdec.format() == Pixel::YUV420P,
        rotation,
        width: probe.width,
        height: probe.height,
        nal_length_size: (extradata.first() == Some(&1))
            .then(|| extradata.get(4).map(|b| (b & 3) + 1))
            .flatten(),
        profile: (extradata.first() == Some(&1))
            .then(|| extradata.get(1).copied())
            .flatten(),
        fps: avg_fps,
        duration,
        index: (nb_frames > 0 && index.len() as i64 >= nb_frames).then(|| remux::IndexFacts {
            bytes: index.iter().map(|e| u64::from(e.size)).sum(),
            first_is_key: index.first().is_some_and(|e| e.key),
            keys: index
                .iter()
                .filter(|e| e.key)
                .map(|e| (e.timestamp - vstart) as f64 * tb)
                .collect(),
        }),
    };
    let remux = if settings.allow_remux {
        match remux::decide(&facts, &rungs[0], settings.segment_seconds, MAX_FPS) {
            Ok(()) => match AvcConfig::from_avcc(&extradata) {
                Ok(avc) => Some(avc),
                Err(e) => {
                    tracing::debug!(error = %e, "no remux: the avcC record does not parse");
                    None
                }
            },
            Err(why) => {
                tracing::debug!(rung = %rungs[0].name, %why, "re-encoding the top rung");
                None
            }
        }
    } else {
        None
    };
    if let Some(avc) = &remux {
        tracing::info!(rung = %rungs[0].name, codec = %avc.codec_string(), "remuxing the top rung instead of re-encoding it");
    }
    let arrival = Arrival::new(monitor, &index, tb, vstart);

    let mut audio = match astream {
        Some(s) => match AudioPipe::new(
            &s,
            vstart,
            vtb,
            if settings.speech {
                settings.limits.max_duration + 1.0
            } else {
                0.0
            },
        ) {
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
    let encoded: Vec<Arc<AtomicI64>> = rungs.iter().map(|_| Arc::new(AtomicI64::new(0))).collect();
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
            encoded: encoded[i].clone(),
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
        poster: crate::poster::Chooser::default(),
        poster_best: None,
        activity: crate::preview::Activity::default(),
        stills: Stills::new(rotation, settings.thumbnail_width),
        last_progress: Instant::now(),
        settings: settings.clone(),
        duration,
        frame_step: 1.0 / fps,
        arrival,
        encoded,
    };

    let result = (|| -> Result<(), Error> {
        let mut decode_errors = 0u64;
        let mut packets = 0u64;
        let to90 = |t: i64| {
            ((t - vstart) as f64 * rational_f64(vtb) * f64::from(TIMESCALE)).round() as i64
        };
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let mut packet = Packet::empty();
            match packet.read(&mut ictx) {
                Ok(()) => {}
                Err(ff::Error::Eof) => break,
                // a corrupt packet: the demuxer resyncs past it
                Err(ff::Error::InvalidData) => continue,
                Err(ff::Error::Exit) => return Err(Error::Cancelled),
                Err(e) => return Err(Error::Input(e.to_string())),
            }
            let stream = packet.stream();
            if stream == vindex {
                packets += 1;
                if remux.is_some()
                    && let Some(data) = packet.data()
                {
                    if packet.is_key() && !avc::has_idr(data) {
                        return Err(Error::RemuxRefused);
                    }
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
            } else if Some(stream) == aindex
                && let Some(a) = audio.as_mut()
            {
                a.packet(&packet, &all_rungs);
            }
        }
        let _ = vdec.send_eof();
        state.drain_video(&mut vdec, &top, &sink)?;
        state.finish_poster(&sink)?;
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

    Ok(Summary {
        probe,
        decoded_seconds: state.decoded_seconds + state.frame_step,
        frames: state.frames,
        remuxed: remux.as_ref().map(|_| rungs[0].name.clone()),
        rungs,
        speech: audio
            .as_mut()
            .filter(|_| settings.speech)
            .map(AudioPipe::take_speech),
        preview_start: crate::preview::most_active(
            &state.activity.samples,
            state.decoded_seconds + state.frame_step,
        ),
    })
}
