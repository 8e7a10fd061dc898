//! Answer audio in: the formats clients send, checked against their bytes, decoded (symphonia
//! for WAV, MP3, AAC/M4A, FLAC and Ogg Vorbis; GStreamer for Opus in Ogg or WebM) and resampled
//! to the recogniser's 16 kHz mono.

use std::io::Cursor;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::resample;

/// Recogniser sample rate.
pub const ASR_RATE: u32 = 16_000;

/// A format a client may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RIFF/WAVE.
    Wav,
    /// Raw 16-bit little-endian mono PCM at 16 kHz.
    Pcm16,
    /// Ogg (Opus or Vorbis).
    Ogg,
    /// WebM/Matroska (Opus), what Chromium's MediaRecorder makes.
    Webm,
    /// MPEG audio layer III.
    Mp3,
    /// AAC in MP4.
    M4a,
    /// FLAC.
    Flac,
}

impl Format {
    /// Parses a format name (also accepting common MIME types).
    pub fn parse(s: &str) -> Option<Format> {
        let s = s.trim().to_ascii_lowercase();
        let base = s.split(';').next().unwrap_or("").trim();
        Some(match base {
            "wav" | "audio/wav" | "audio/x-wav" | "audio/wave" => Format::Wav,
            "pcm16" | "audio/l16" | "pcm" => Format::Pcm16,
            "ogg" | "opus" | "audio/ogg" | "audio/opus" => Format::Ogg,
            "webm" | "audio/webm" => Format::Webm,
            "mp3" | "audio/mpeg" | "audio/mp3" => Format::Mp3,
            "m4a" | "aac" | "audio/mp4" | "audio/aac" | "audio/x-m4a" => Format::M4a,
            "flac" | "audio/flac" => Format::Flac,
            _ => return None,
        })
    }

    /// The name used in the protocol.
    pub fn name(self) -> &'static str {
        match self {
            Format::Wav => "wav",
            Format::Pcm16 => "pcm16",
            Format::Ogg => "ogg",
            Format::Webm => "webm",
            Format::Mp3 => "mp3",
            Format::M4a => "m4a",
            Format::Flac => "flac",
        }
    }

    /// Whether `data` starts like this format (raw PCM has no signature).
    pub fn matches(self, data: &[u8]) -> bool {
        let at =
            |o: usize, sig: &[u8]| data.len() >= o + sig.len() && &data[o..o + sig.len()] == sig;
        match self {
            Format::Wav => at(0, b"RIFF") && at(8, b"WAVE"),
            Format::Pcm16 => data.len().is_multiple_of(2),
            Format::Ogg => at(0, b"OggS"),
            Format::Webm => at(0, &[0x1a, 0x45, 0xdf, 0xa3]),
            Format::Mp3 => {
                at(0, b"ID3") || (data.len() >= 2 && data[0] == 0xff && data[1] & 0xe0 == 0xe0)
            }
            Format::M4a => at(4, b"ftyp"),
            Format::Flac => at(0, b"fLaC"),
        }
    }
}

/// Audio input errors (all the client's: a 4xx or an `error` event).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// No bytes.
    #[error("the answer is empty")]
    Empty,
    /// The bytes are not what the client said.
    #[error("the audio was declared as {0} but is not {0}")]
    Mismatch(&'static str),
    /// Decoding failed.
    #[error("the audio could not be decoded as {format}: {reason}")]
    Undecodable {
        /// Declared format.
        format: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// Too long.
    #[error("the answer is {secs:.0} s long; the limit is {max:.0} s")]
    TooLong {
        /// Its length.
        secs: f64,
        /// The limit.
        max: f64,
    },
    /// Decoded to nothing.
    #[error("the audio holds no sound")]
    Silent,
}

/// Decodes `data` declared as `format` to 16 kHz mono, refusing more than `max_secs`.
pub fn decode(data: &[u8], format: Format, max_secs: f64) -> Result<Vec<i16>, Error> {
    if data.is_empty() {
        return Err(Error::Empty);
    }
    if !format.matches(data) {
        return Err(Error::Mismatch(format.name()));
    }
    let pcm = match format {
        Format::Pcm16 => data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect(),
        Format::Webm => gst(data, format)?,
        Format::Ogg => match symphonia_decode(data, format, max_secs) {
            Ok(p) => p,
            // symphonia reads Ogg Vorbis; Opus (what browsers record) goes through GStreamer
            Err(Error::Undecodable { .. }) => gst(data, format)?,
            Err(e) => return Err(e),
        },
        _ => symphonia_decode(data, format, max_secs)?,
    };
    let secs = pcm.len() as f64 / f64::from(ASR_RATE);
    if secs > max_secs {
        return Err(Error::TooLong {
            secs,
            max: max_secs,
        });
    }
    if pcm.is_empty() {
        return Err(Error::Silent);
    }
    Ok(pcm)
}

fn gst(data: &[u8], format: Format) -> Result<Vec<i16>, Error> {
    crate::gst::decode_to_16k(data).map_err(|e| Error::Undecodable {
        format: format.name(),
        reason: e.to_string(),
    })
}

fn symphonia_decode(data: &[u8], format: Format, max_secs: f64) -> Result<Vec<i16>, Error> {
    let undecodable = |reason: String| Error::Undecodable {
        format: format.name(),
        reason,
    };
    let mut hint = Hint::new();
    hint.with_extension(match format {
        Format::M4a => "m4a",
        other => other.name(),
    });
    let mss = MediaSourceStream::new(Box::new(Cursor::new(data.to_vec())), Default::default());
    let probed = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| undecodable(e.to_string()))?;
    let mut reader = probed;
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or_else(|| undecodable("no audio track".into()))?
        .clone();
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| undecodable("not an audio track".into()))?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| undecodable(e.to_string()))?;
    let rate = params.sample_rate.unwrap_or(ASR_RATE);
    let mut mono: Vec<f32> = Vec::new();
    let max_samples = (max_secs * f64::from(rate)) as usize + rate as usize;
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(undecodable(e.to_string())),
        };
        if packet.track_id != track.id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::DecodeError(_)) => continue, // a damaged packet, as players skip
            Err(e) => return Err(undecodable(e.to_string())),
        };
        let frames = decoded.frames().max(1);
        let mut interleaved: Vec<f32> = Vec::new();
        decoded.copy_to_vec_interleaved(&mut interleaved);
        let channels = (interleaved.len() / frames).max(1);
        mono.extend(resample::to_mono(&interleaved, channels));
        if mono.len() > max_samples {
            let secs = mono.len() as f64 / f64::from(rate);
            return Err(Error::TooLong {
                secs,
                max: max_secs,
            });
        }
    }
    if mono.is_empty() {
        return Err(undecodable("no audio decoded".into()));
    }
    Ok(resample::to_i16(&resample::resample(&mono, rate, ASR_RATE)))
}

/// Parses a WAV header (16-bit PCM) enough to stream its samples: returns (channels, rate,
/// offset of the sample data) once the header is complete.
pub fn wav_header(data: &[u8]) -> Option<(u16, u32, usize)> {
    if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return None;
    }
    let mut i = 12;
    let mut fmt: Option<(u16, u32, u16)> = None;
    while i + 8 <= data.len() {
        let id = &data[i..i + 4];
        let len = u32::from_le_bytes([data[i + 4], data[i + 5], data[i + 6], data[i + 7]]) as usize;
        let body = i + 8;
        if id == b"fmt " {
            if body + 16 > data.len() {
                return None;
            }
            let ch = u16::from_le_bytes([data[body + 2], data[body + 3]]);
            let rate = u32::from_le_bytes([
                data[body + 4],
                data[body + 5],
                data[body + 6],
                data[body + 7],
            ]);
            let bits = u16::from_le_bytes([data[body + 14], data[body + 15]]);
            fmt = Some((ch, rate, bits));
        } else if id == b"data" {
            let (ch, rate, bits) = fmt?;
            if bits != 16 {
                return None;
            }
            return Some((ch, rate, body));
        }
        i = body + len + (len & 1);
    }
    None
}

/// A 16-bit mono PCM WAV file of `samples` at `rate`.
pub fn wav_bytes(samples: &[i16], rate: u32) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut v = Vec::with_capacity(44 + samples.len() * 2);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // PCM
    v.extend_from_slice(&1u16.to_le_bytes()); // mono
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(rate * 2).to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wav_writer_writes_what_the_header_parser_reads() {
        let wav = wav_bytes(&[0, 1000, -1000, 32767], 22050);
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(wav.len(), 44 + 8);
        assert_eq!(
            wav_header(&wav).map(|(ch, rate, _)| (ch, rate)),
            Some((1, 22050))
        );
    }

    #[test]
    fn formats_parse_and_sniff() {
        assert_eq!(Format::parse("audio/webm;codecs=opus"), Some(Format::Webm));
        assert_eq!(Format::parse("WAV"), Some(Format::Wav));
        assert_eq!(Format::parse("midi"), None);
        assert!(Format::Ogg.matches(b"OggS\0\x02"));
        assert!(!Format::Ogg.matches(b"RIFF"));
        assert!(Format::Flac.matches(b"fLaC...."));
        assert!(Format::M4a.matches(b"\0\0\0\x20ftypM4A "));
    }

    #[test]
    fn wav_decodes_and_resamples() {
        let samples: Vec<i16> = (0..22_050)
            .map(|i| ((i as f32 * 0.1).sin() * 10_000.0) as i16)
            .collect();
        let bytes = wav_bytes(&samples, 22_050);
        let pcm = decode(&bytes, Format::Wav, 120.0).unwrap();
        assert!((pcm.len() as i64 - 16_000).abs() <= 2, "{}", pcm.len());
        assert_eq!(wav_header(&bytes), Some((1, 22_050, 44)));
    }

    #[test]
    fn bad_input_is_refused_clearly() {
        assert_eq!(decode(b"", Format::Wav, 120.0), Err(Error::Empty));
        assert_eq!(
            decode(b"OggS....", Format::Wav, 120.0),
            Err(Error::Mismatch("wav"))
        );
        assert_eq!(
            decode(b"not audio at all", Format::Mp3, 120.0),
            Err(Error::Mismatch("mp3"))
        );
        assert!(matches!(
            decode(b"RIFF\x10\0\0\0WAVEjunkjunkjunk", Format::Wav, 120.0),
            Err(Error::Undecodable { .. })
        ));
        let long = wav_bytes(&vec![0i16; 16_000 * 3], 16_000);
        assert!(matches!(
            decode(&long, Format::Wav, 2.0),
            Err(Error::TooLong { .. })
        ));
        assert_eq!(
            decode(&[1, 2, 3], Format::Pcm16, 120.0),
            Err(Error::Mismatch("pcm16"))
        );
    }
}
