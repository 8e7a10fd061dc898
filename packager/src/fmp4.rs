//! A small fragmented-MP4 (CMAF) writer: the init segment (`ftyp` + `moov` with `mvex`) and
//! media segments (`moof` + `mdat`) for one H.264 track and an optional AAC track, muxed.
//!
//! Why our own writer instead of libavformat's HLS muxer: segment boundaries are decided by us
//! (exactly at the forced keyframes), every byte offset is known (the I-frame playlists need the
//! keyframe's byte range), segments go straight from memory to the object store without temp
//! files, and the writer is pure code that tests can check box by box. Decoding tests run the
//! output through ffprobe/ffmpeg and hls.js, so the boxes are checked by independent readers.

use bytes::{BufMut, Bytes, BytesMut};

use crate::avc::AvcConfig;

/// Track id of the video track.
pub const VIDEO_TRACK: u32 = 1;
/// Track id of the audio track.
pub const AUDIO_TRACK: u32 = 2;

/// What the video track carries.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoTrack {
    /// Coded width.
    pub width: u32,
    /// Coded height.
    pub height: u32,
    /// Ticks per second of sample times.
    pub timescale: u32,
    /// Parameter sets.
    pub avc: AvcConfig,
}

/// What the audio track carries.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioTrack {
    /// Sample rate (also the timescale).
    pub sample_rate: u32,
    /// Channel count.
    pub channels: u16,
    /// AudioSpecificConfig (the AAC decoder's extradata).
    pub asc: Bytes,
    /// Average bit rate (for `esds`).
    pub bitrate: u32,
}

impl AudioTrack {
    /// RFC 6381 codec string, `mp4a.40.<audio object type>`.
    pub fn codec_string(&self) -> String {
        let aot = self.asc.first().map_or(2, |b| b >> 3);
        format!("mp4a.40.{aot}")
    }
}

/// One coded frame, in its track's timescale.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Payload: 4-byte length-prefixed NAL units (video) or a raw AAC frame (audio).
    pub data: Bytes,
    /// Decode time.
    pub dts: i64,
    /// Presentation time minus decode time (may be negative with B-frames).
    pub cts_offset: i32,
    /// Duration.
    pub duration: u32,
    /// Random access point.
    pub keyframe: bool,
}

fn put_box(out: &mut BytesMut, kind: &[u8; 4], body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    out.put_slice(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

fn put_full_box(
    out: &mut BytesMut,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut BytesMut),
) {
    put_box(out, kind, |b| {
        b.put_u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
        body(b);
    });
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// The init segment: `ftyp` + `moov` describing the tracks, with `mvex` for fragments.
pub fn init_segment(video: &VideoTrack, audio: Option<&AudioTrack>) -> Bytes {
    let mut out = BytesMut::with_capacity(1024);
    put_box(&mut out, b"ftyp", |b| {
        b.put_slice(b"iso6");
        b.put_u32(0);
        for brand in [b"iso6", b"cmfc", b"mp41", b"avc1"] {
            b.put_slice(brand);
        }
    });
    put_box(&mut out, b"moov", |b| {
        put_full_box(b, b"mvhd", 0, 0, |b| {
            b.put_u32(0); // creation
            b.put_u32(0); // modification
            b.put_u32(1000);
            b.put_u32(0); // duration: unknown (fragmented)
            b.put_u32(0x0001_0000); // rate 1.0
            b.put_u16(0x0100); // volume 1.0
            b.put_bytes(0, 10);
            for m in MATRIX {
                b.put_u32(m);
            }
            b.put_bytes(0, 24);
            b.put_u32(if audio.is_some() { 3 } else { 2 }); // next track id
        });
        video_trak(b, video);
        if let Some(a) = audio {
            audio_trak(b, a);
        }
        put_box(b, b"mvex", |b| {
            let mut tracks = vec![VIDEO_TRACK];
            if audio.is_some() {
                tracks.push(AUDIO_TRACK);
            }
            for id in tracks {
                put_full_box(b, b"trex", 0, 0, |b| {
                    b.put_u32(id);
                    b.put_u32(1); // sample description index
                    b.put_u32(0);
                    b.put_u32(0);
                    b.put_u32(0);
                });
            }
        });
    });
    out.freeze()
}

fn tkhd(b: &mut BytesMut, id: u32, volume: u16, width: u32, height: u32) {
    put_full_box(b, b"tkhd", 0, 0x3, |b| {
        b.put_u32(0);
        b.put_u32(0);
        b.put_u32(id);
        b.put_u32(0);
        b.put_u32(0); // duration
        b.put_bytes(0, 8);
        b.put_u16(0); // layer
        b.put_u16(0); // alternate group
        b.put_u16(volume);
        b.put_u16(0);
        for m in MATRIX {
            b.put_u32(m);
        }
        b.put_u32(width << 16);
        b.put_u32(height << 16);
    });
}

fn mdhd_hdlr(b: &mut BytesMut, timescale: u32, handler: &[u8; 4], name: &str) {
    put_full_box(b, b"mdhd", 0, 0, |b| {
        b.put_u32(0);
        b.put_u32(0);
        b.put_u32(timescale);
        b.put_u32(0);
        b.put_u16(0x55c4); // 'und'
        b.put_u16(0);
    });
    put_full_box(b, b"hdlr", 0, 0, |b| {
        b.put_u32(0);
        b.put_slice(handler);
        b.put_bytes(0, 12);
        b.put_slice(name.as_bytes());
        b.put_u8(0);
    });
}

fn dinf_and_empty_tables(b: &mut BytesMut, stsd: impl FnOnce(&mut BytesMut)) {
    put_box(b, b"dinf", |b| {
        put_full_box(b, b"dref", 0, 0, |b| {
            b.put_u32(1);
            put_full_box(b, b"url ", 0, 1, |_| {});
        });
    });
    put_box(b, b"stbl", |b| {
        put_full_box(b, b"stsd", 0, 0, |b| {
            b.put_u32(1);
            stsd(b);
        });
        put_full_box(b, b"stts", 0, 0, |b| b.put_u32(0));
        put_full_box(b, b"stsc", 0, 0, |b| b.put_u32(0));
        put_full_box(b, b"stsz", 0, 0, |b| {
            b.put_u32(0);
            b.put_u32(0);
        });
        put_full_box(b, b"stco", 0, 0, |b| b.put_u32(0));
    });
}

fn video_trak(b: &mut BytesMut, v: &VideoTrack) {
    put_box(b, b"trak", |b| {
        tkhd(b, VIDEO_TRACK, 0, v.width, v.height);
        put_box(b, b"mdia", |b| {
            mdhd_hdlr(b, v.timescale, b"vide", "Moments video");
            put_box(b, b"minf", |b| {
                put_full_box(b, b"vmhd", 0, 1, |b| b.put_bytes(0, 8));
                dinf_and_empty_tables(b, |b| {
                    put_box(b, b"avc1", |b| {
                        b.put_bytes(0, 6);
                        b.put_u16(1); // data reference index
                        b.put_bytes(0, 16);
                        b.put_u16(v.width as u16);
                        b.put_u16(v.height as u16);
                        b.put_u32(0x0048_0000);
                        b.put_u32(0x0048_0000);
                        b.put_u32(0);
                        b.put_u16(1); // frame count
                        b.put_bytes(0, 32); // compressor name
                        b.put_u16(0x0018);
                        b.put_i16(-1);
                        put_box(b, b"avcC", |b| b.put_slice(&v.avc.avcc_record()));
                    });
                });
            });
        });
    });
}

/// An MPEG-4 descriptor header with a length that fits in one byte or more.
fn put_descriptor(b: &mut BytesMut, tag: u8, body: &[u8]) {
    b.put_u8(tag);
    let mut len = body.len();
    let mut bytes = vec![(len & 0x7f) as u8];
    len >>= 7;
    while len > 0 {
        bytes.push(0x80 | (len & 0x7f) as u8);
        len >>= 7;
    }
    bytes.reverse();
    b.put_slice(&bytes);
    b.put_slice(body);
}

fn audio_trak(b: &mut BytesMut, a: &AudioTrack) {
    put_box(b, b"trak", |b| {
        tkhd(b, AUDIO_TRACK, 0x0100, 0, 0);
        put_box(b, b"mdia", |b| {
            mdhd_hdlr(b, a.sample_rate, b"soun", "Moments audio");
            put_box(b, b"minf", |b| {
                put_full_box(b, b"smhd", 0, 0, |b| b.put_u32(0));
                dinf_and_empty_tables(b, |b| {
                    put_box(b, b"mp4a", |b| {
                        b.put_bytes(0, 6);
                        b.put_u16(1);
                        b.put_bytes(0, 8);
                        b.put_u16(a.channels);
                        b.put_u16(16);
                        b.put_u32(0);
                        b.put_u32(a.sample_rate << 16);
                        put_full_box(b, b"esds", 0, 0, |b| {
                            let mut dsi = BytesMut::new();
                            put_descriptor(&mut dsi, 0x05, &a.asc);
                            let mut dcd = BytesMut::new();
                            dcd.put_u8(0x40); // MPEG-4 audio
                            dcd.put_u8(0x15); // audio stream
                            dcd.put_uint(6144, 3); // buffer size
                            dcd.put_u32(a.bitrate);
                            dcd.put_u32(a.bitrate);
                            dcd.put_slice(&dsi);
                            let mut es = BytesMut::new();
                            es.put_u16(0); // ES id
                            es.put_u8(0);
                            put_descriptor(&mut es, 0x04, &dcd);
                            put_descriptor(&mut es, 0x06, &[0x02]);
                            put_descriptor(b, 0x03, &es);
                        });
                    });
                });
            });
        });
    });
}

/// A written media segment and where its parts sit.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    /// `moof` + `mdat`.
    pub bytes: Bytes,
    /// Bytes from the segment start through the end of the first video sample (a keyframe):
    /// the byte range an I-frame playlist points at.
    pub first_keyframe_end: u64,
}

const FLAGS_SYNC: u32 = 0x0200_0000;
const FLAGS_NON_SYNC: u32 = 0x0101_0000;

/// Writes one media segment: sequence number `seq`, the video samples and the audio samples
/// that fall in it. Sample decode times must be non-negative and increasing per track.
pub fn fragment(seq: u32, video: &[Sample], audio: &[Sample]) -> Fragment {
    let mut moof = BytesMut::with_capacity(256 + 16 * (video.len() + audio.len()));
    let mut data_offset_slots = Vec::new();
    put_box(&mut moof, b"moof", |b| {
        put_full_box(b, b"mfhd", 0, 0, |b| b.put_u32(seq));
        if !video.is_empty() {
            traf(b, VIDEO_TRACK, video, true, &mut data_offset_slots);
        }
        if !audio.is_empty() {
            traf(b, AUDIO_TRACK, audio, false, &mut data_offset_slots);
        }
    });
    let video_bytes: usize = video.iter().map(|s| s.data.len()).sum();
    let audio_bytes: usize = audio.iter().map(|s| s.data.len()).sum();
    let mdat_header = 8u32;
    // data offsets are relative to the start of the moof (default-base-is-moof)
    let mut offset = moof.len() as u32 + mdat_header;
    let mut slots = data_offset_slots.into_iter();
    if !video.is_empty()
        && let Some(slot) = slots.next()
    {
        moof[slot..slot + 4].copy_from_slice(&offset.to_be_bytes());
        offset += video_bytes as u32;
    }
    if !audio.is_empty()
        && let Some(slot) = slots.next()
    {
        moof[slot..slot + 4].copy_from_slice(&offset.to_be_bytes());
    }
    let total = moof.len() + mdat_header as usize + video_bytes + audio_bytes;
    let mut out = BytesMut::with_capacity(total);
    out.put_slice(&moof);
    out.put_u32((mdat_header as usize + video_bytes + audio_bytes) as u32);
    out.put_slice(b"mdat");
    for s in video.iter().chain(audio) {
        out.put_slice(&s.data);
    }
    let first_keyframe_end = video.first().map_or(0, |s| {
        (moof.len() + mdat_header as usize + s.data.len()) as u64
    });
    Fragment {
        bytes: out.freeze(),
        first_keyframe_end,
    }
}

fn traf(b: &mut BytesMut, track: u32, samples: &[Sample], video: bool, slots: &mut Vec<usize>) {
    put_box(b, b"traf", |b| {
        // default-base-is-moof
        put_full_box(b, b"tfhd", 0, 0x02_0000, |b| b.put_u32(track));
        put_full_box(b, b"tfdt", 1, 0, |b| {
            b.put_u64(samples.first().map_or(0, |s| s.dts.max(0) as u64));
        });
        // data-offset, sample duration, size, flags (+ composition offsets for video)
        let flags = if video { 0x0f01 } else { 0x0701 };
        put_full_box(b, b"trun", if video { 1 } else { 0 }, flags, |b| {
            b.put_u32(samples.len() as u32);
            slots.push(b.len());
            b.put_u32(0); // data offset, patched once the moof size is known
            for s in samples {
                b.put_u32(s.duration);
                b.put_u32(s.data.len() as u32);
                b.put_u32(if s.keyframe || !video {
                    FLAGS_SYNC
                } else {
                    FLAGS_NON_SYNC
                });
                if video {
                    b.put_i32(s.cts_offset);
                }
            }
        });
    });
}

/// The body of the box at `path` (`[b"moof", b"traf", b"trun"]`: the first match at each
/// level), or `None` when a level is missing or a size does not fit. A minimal reader for
/// checking what [`init_segment`] and [`fragment`] wrote (tests and fuzz targets); it never
/// reads past `data`, whatever the sizes claim.
pub fn find_box<'a>(data: &'a [u8], path: &[&[u8; 4]]) -> Option<&'a [u8]> {
    let mut cur = data;
    for kind in path {
        let mut rest = cur;
        cur = loop {
            let header = rest.get(..8)?;
            let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if size < 8 || size > rest.len() {
                return None;
            }
            if &header[4..8] == *kind {
                break &rest[8..size];
            }
            rest = &rest[size..];
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video_track() -> VideoTrack {
        VideoTrack {
            width: 1280,
            height: 720,
            timescale: 90_000,
            avc: AvcConfig {
                sps: vec![Bytes::from_static(&[0x67, 0x64, 0, 0x1f, 0xac])],
                pps: vec![Bytes::from_static(&[0x68, 0xeb])],
            },
        }
    }

    #[test]
    fn init_segment_has_the_expected_boxes() {
        let audio = AudioTrack {
            sample_rate: 48_000,
            channels: 2,
            asc: Bytes::from_static(&[0x11, 0x90]),
            bitrate: 128_000,
        };
        let init = init_segment(&video_track(), Some(&audio));
        assert_eq!(&init[4..8], b"ftyp");
        assert!(find_box(&init, &[b"moov", b"mvex"]).is_some());
        let avcc = find_box(
            &init,
            &[b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"],
        )
        .unwrap();
        // stsd: version/flags + count, then the avc1 entry
        assert_eq!(&avcc[8 + 4..8 + 8], b"avc1");
        assert_eq!(audio.codec_string(), "mp4a.40.2");
        let total: u32 = u32::from_be_bytes([init[0], init[1], init[2], init[3]]) + {
            let at = u32::from_be_bytes([init[0], init[1], init[2], init[3]]) as usize;
            u32::from_be_bytes([init[at], init[at + 1], init[at + 2], init[at + 3]])
        };
        assert_eq!(total as usize, init.len(), "ftyp + moov and nothing else");
    }

    #[test]
    fn fragment_offsets_point_at_the_samples() {
        let v = |n: u8, key| Sample {
            data: Bytes::from(vec![n; 10 + n as usize]),
            dts: 3000 * n as i64,
            cts_offset: if n == 1 { -3000 } else { 0 },
            duration: 3000,
            keyframe: key,
        };
        let a = |n: u8| Sample {
            data: Bytes::from(vec![0xa0 + n; 5]),
            dts: 1024 * n as i64,
            cts_offset: 0,
            duration: 1024,
            keyframe: true,
        };
        let frag = fragment(7, &[v(0, true), v(1, false)], &[a(0), a(1)]);
        let bytes = &frag.bytes;
        assert_eq!(&bytes[4..8], b"moof");
        let moof_size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert_eq!(&bytes[moof_size + 4..moof_size + 8], b"mdat");
        let mfhd = find_box(bytes, &[b"moof", b"mfhd"]).unwrap();
        assert_eq!(u32::from_be_bytes([mfhd[4], mfhd[5], mfhd[6], mfhd[7]]), 7);
        // video trun's data offset lands on the first video byte
        let trun = find_box(bytes, &[b"moof", b"traf", b"trun"]).unwrap();
        assert_eq!(trun[0], 1, "version 1: signed composition offsets");
        let off = u32::from_be_bytes([trun[8], trun[9], trun[10], trun[11]]) as usize;
        assert_eq!(bytes[off], 0);
        assert_eq!(bytes[off + 10], 1, "second sample follows the first");
        // the keyframe range ends right after the first sample
        assert_eq!(frag.first_keyframe_end as usize, off + 10);
        // audio data follows all the video data
        let audio_start = off + 10 + 11;
        assert_eq!(&bytes[audio_start..audio_start + 5], &[0xa0; 5]);
        assert_eq!(bytes.len(), audio_start + 10);
    }

    #[test]
    fn descriptor_lengths_use_continuation_bytes() {
        let mut b = BytesMut::new();
        put_descriptor(&mut b, 0x05, &[0u8; 200]);
        assert_eq!(&b[..3], &[0x05, 0x81, 0x48]);
        assert_eq!(b.len(), 203);
    }
}
