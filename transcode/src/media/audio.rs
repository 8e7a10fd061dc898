//! The audio path: decode the source's audio once, resample to 48 kHz stereo float, encode
//! AAC-LC once and hand every packet to all rungs. When captions are wanted, the same decoded
//! audio is also kept as 16 kHz mono (libswresample), the recogniser's input, on the video's
//! timeline.

use std::sync::mpsc::SyncSender;

use bytes::Bytes;
use ff::format::{Sample as SampleFormat, sample::Type as SampleType};
use ff::{ChannelLayout, Dictionary, Packet, Rational};
use ffmpeg_next as ff;
use packager::fmp4::AudioTrack;

use super::{Msg, rational_f64};
use crate::ffi;

const AUDIO_RATE: i32 = 48_000;
const AUDIO_BITRATE: usize = 128_000;
/// The recogniser's sample rate.
pub const SPEECH_RATE: u32 = 16_000;

/// The audio kept for captions: 16 kHz mono, aligned with the video's time 0.
struct Speech {
    resampler: Option<ff::software::resampling::Context>,
    samples: Vec<i16>,
    /// Samples still to drop (audio before the first video frame).
    skip: usize,
    /// The most kept (the longest accepted video).
    max: usize,
}

impl Speech {
    fn push(&mut self, stereo48k: &ff::frame::Audio) {
        if self.resampler.is_none() {
            match ff::software::resampling::Context::get(
                SampleFormat::F32(SampleType::Planar),
                ChannelLayout::STEREO,
                AUDIO_RATE as u32,
                SampleFormat::I16(SampleType::Packed),
                ChannelLayout::MONO,
                SPEECH_RATE,
            ) {
                Ok(r) => self.resampler = Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resample for captions; there will be none");
                    self.max = 0;
                    return;
                }
            }
        }
        let Some(r) = self.resampler.as_mut() else {
            return;
        };
        let mut out = ff::frame::Audio::new(
            SampleFormat::I16(SampleType::Packed),
            stereo48k.samples() / 3 + 64,
            ChannelLayout::MONO,
        );
        if r.run(stereo48k, &mut out).is_err() {
            return;
        }
        let n = out.samples();
        let data: &[i16] = out.plane(0);
        let mut take = &data[..n.min(data.len())];
        let k = self.skip.min(take.len());
        take = &take[k..];
        self.skip -= k;
        let room = self.max.saturating_sub(self.samples.len());
        self.samples
            .extend_from_slice(&take[..take.len().min(room)]);
    }
}

/// Decodes the source audio, resamples to 48 kHz stereo float, encodes AAC-LC once and hands
/// every packet to all rungs.
pub(super) struct AudioPipe {
    pub(super) index: usize,
    decoder: ff::decoder::Audio,
    resampler: Option<ff::software::resampling::Context>,
    encoder: ff::encoder::audio::Encoder,
    pub(super) track: AudioTrack,
    fifo: [Vec<f32>; 2],
    next_pts: i64,
    shift: Option<i64>,
    skip: usize,
    frame_size: usize,
    speech: Option<Speech>,
}

impl AudioPipe {
    /// `speech_secs`: keep at most this much 16 kHz mono audio for captions (0: none).
    pub(super) fn new(
        stream: &ff::format::stream::Stream,
        vstart: i64,
        vtb: Rational,
        speech_secs: f64,
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
        let mut speech = (speech_secs > 0.0).then(|| Speech {
            resampler: None,
            samples: Vec::new(),
            skip: 0,
            max: (speech_secs * f64::from(SPEECH_RATE)) as usize,
        });
        // the 48 kHz stream is padded or trimmed before the second resampler sees it, so the
        // 16 kHz speech is aligned the same way
        if offset_samples > 0 {
            let pad = offset_samples.min(i64::from(AUDIO_RATE) * 10) as usize;
            fifo[0].resize(pad, 0.0);
            fifo[1].resize(pad, 0.0);
            if let Some(s) = speech.as_mut() {
                s.samples.resize(pad / 3, 0);
            }
        } else {
            skip = (-offset_samples) as usize;
            if let Some(s) = speech.as_mut() {
                s.skip = skip / 3;
            }
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
            speech,
        })
    }

    pub(super) fn packet(&mut self, packet: &Packet, rungs: &[SyncSender<Msg>]) {
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
        if let Some(s) = self.speech.as_mut() {
            s.push(&out);
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

    pub(super) fn finish(&mut self, rungs: &[SyncSender<Msg>]) {
        let _ = self.decoder.send_eof();
        self.drain_decoder(rungs);
        self.resample(None);
        self.encode_ready(rungs, true);
        let _ = self.encoder.send_eof();
        self.drain_encoder(rungs);
    }

    /// The 16 kHz mono audio kept for captions (empty when none was asked for).
    pub(super) fn take_speech(&mut self) -> Vec<i16> {
        self.speech
            .as_mut()
            .map(|s| std::mem::take(&mut s.samples))
            .unwrap_or_default()
    }
}
