//! One rung of the ladder on its own thread: scale (and rotate, for the top rung), encode with
//! libx264 (or take the source's packets when the rung is remuxed), segment.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use ff::format::Pixel;
use ff::software::scaling::Flags as ScaleFlags;
use ff::{Dictionary, Packet, Rational, picture};
use ffmpeg_next as ff;
use packager::avc::{self, AvcConfig};
use packager::fmp4::{AudioTrack, VideoTrack};
use packager::publish::RungInfo;
use packager::segmenter::Segmenter;

use super::{Event, EventSink, Msg, Settings, TIMESCALE};
use crate::ffi;
use crate::ladder::Rung;
use crate::rotate::{Rotation, rotate_plane};

/// One rung: scale (and rotate, for the top rung), encode with libx264, segment.
pub(super) struct RungWorker {
    /// Parameter sets of a source that is remuxed into this rung (no encoder).
    pub(super) remux: Option<AvcConfig>,
    pub(super) rung: Rung,
    pub(super) first: bool,
    pub(super) rotation: Rotation,
    pub(super) fps: f64,
    pub(super) frame_ticks: u32,
    pub(super) settings: Settings,
    pub(super) audio: Option<AudioTrack>,
    pub(super) sink: EventSink,
    /// Decode time (output timescale) of the last sample this rung has encoded; `i64::MAX`
    /// once the rung has failed (it no longer holds the ladder back).
    pub(super) encoded: Arc<AtomicI64>,
}

impl RungWorker {
    /// Reports the rung failed; it no longer holds the ladder's encoded position back.
    fn failed(&self, rung: String, reason: String) {
        self.encoded.store(i64::MAX, Ordering::Relaxed);
        let _ = self.sink.send(Event::RungFailed { rung, reason });
    }

    pub(super) fn run(self, rx: Receiver<Msg>, next: Option<SyncSender<Msg>>) {
        let name = self.rung.name.clone();
        let mut encoder = match self.open() {
            Ok(e) => Some(e),
            Err(reason) => {
                self.failed(name.clone(), reason);
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
                                self.failed(name.clone(), e);
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
                        self.failed(name.clone(), e);
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
                        self.encoded.fetch_max(dts, Ordering::Relaxed);
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
            self.failed(name.clone(), e);
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
            encoded: self.encoded.clone(),
        })
    }
}

struct RungEncoder {
    /// `None` when the rung is remuxed from the source.
    encoder: Option<ff::encoder::video::Encoder>,
    segmenter: Segmenter,
    name: String,
    encoded: Arc<AtomicI64>,
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
            self.encoded.fetch_max(dts, Ordering::Relaxed);
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
