//! The bodies of packager's fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/`)
//! and by the test suite (`tests/fuzz.rs`, through `common::testing::fuzz::replay`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a check reports by panicking

use bytes::Bytes;
use packager::fmp4::{Sample, find_box, fragment};
use packager::playlist::{self, Segment, Variant};

/// Reads fuzz input as numbers and names; past the end it reads zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// A name as our code makes them (URIs, codec strings): 1 to 32 characters of `alphabet`.
    fn name(&mut self, alphabet: &[u8]) -> String {
        let n = 1 + usize::from(self.byte() % 32);
        (0..n)
            .map(|_| char::from(alphabet[usize::from(self.byte()) % alphabet.len()]))
            .collect()
    }

    /// A duration in seconds as the segmenter measures it (ticks over a timescale), or now and
    /// then a value a broken source could make of it: NaN, infinite, negative, zero.
    fn seconds(&mut self) -> f64 {
        let ticks = f64::from(self.u32());
        match self.byte() {
            0xff => f64::NAN,
            0xfe => f64::INFINITY,
            0xfd => -ticks / 90_000.0,
            0xfc => 0.0,
            s => ticks / [90_000.0, 48_000.0, 44_100.0, 1000.0, 30.0, 1.0][usize::from(s) % 6],
        }
    }
}

const URI: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-/";
const CODEC: &[u8] = b"abcdefABCDEF0123456789.";

/// What a player reads for a rendered duration: the value, or 0 for one no source can have.
fn shown(d: f64) -> f64 {
    if d.is_finite() && d > 0.0 { d } else { 0.0 }
}

fn close(parsed: f64, want: f64) -> bool {
    (parsed - want).abs() <= 1e-6 + want.abs() * 1e-6
}

/// Playlist rendering, round-tripped through an independent parser (m3u8-rs): media, I-frame
/// and master playlists built from arbitrary segments and variants parse, and say what was
/// rendered.
pub fn playlist(data: &[u8]) {
    let mut input = Input(data);
    let segments: Vec<Segment> = (0..input.byte() % 48)
        .map(|_| Segment {
            uri: input.name(URI),
            duration: input.seconds(),
            bytes: u64::from(input.u32()),
            keyframe_bytes: u64::from(input.u32()),
        })
        .collect();
    let init = input.name(URI);

    let media = playlist::media(&init, &segments);
    let parsed = match m3u8_rs::parse_media_playlist_res(media.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("media playlist does not parse: {e:?}\n{media}"),
    };
    assert!(parsed.end_list && !parsed.i_frames_only);
    assert_eq!(parsed.segments.len(), segments.len(), "{media}");
    for (p, s) in parsed.segments.iter().zip(&segments) {
        assert_eq!(p.uri, s.uri);
        assert!(
            close(f64::from(p.duration), shown(s.duration)),
            "{} vs {}",
            p.duration,
            s.duration
        );
        // RFC 8216 4.3.3.1: every EXTINF rounded to the nearest integer <= the target duration
        assert!(
            (shown(s.duration) + 0.5).floor() <= parsed.target_duration as f64,
            "{media}"
        );
    }
    assert_eq!(
        parsed
            .segments
            .first()
            .and_then(|s| s.map.as_ref())
            .map(|m| m.uri.as_str()),
        segments.first().map(|_| init.as_str())
    );

    let iframes = playlist::iframes(&init, &segments);
    let parsed = match m3u8_rs::parse_media_playlist_res(iframes.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("I-frame playlist does not parse: {e:?}\n{iframes}"),
    };
    assert!(parsed.i_frames_only);
    assert_eq!(parsed.segments.len(), segments.len());
    for (p, s) in parsed.segments.iter().zip(&segments) {
        let range = p.byte_range.as_ref().expect("a byte range");
        assert_eq!((range.length, range.offset), (s.keyframe_bytes, Some(0)));
    }

    let variants: Vec<Variant> = (0..input.byte() % 6)
        .map(|_| Variant {
            uri: input.name(URI),
            iframe_uri: input.name(URI),
            bandwidth: u64::from(input.u32()),
            average_bandwidth: u64::from(input.u32()),
            iframe_bandwidth: u64::from(input.u32()),
            width: input.u32() % 16_384,
            height: input.u32() % 16_384,
            frame_rate: input.seconds(),
            video_codec: format!("avc1.{}", input.name(CODEC)),
            audio_codec: (input.byte() % 2 == 0).then(|| format!("mp4a.40.{}", input.byte() % 48)),
        })
        .collect();
    let master = playlist::master(&variants);
    let parsed = match m3u8_rs::parse_master_playlist_res(master.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("master playlist does not parse: {e:?}\n{master}"),
    };
    let (iframe, streams): (Vec<_>, Vec<_>) = parsed.variants.iter().partition(|v| v.is_i_frame);
    assert_eq!(streams.len(), variants.len(), "{master}");
    assert_eq!(iframe.len(), variants.len(), "{master}");
    assert!(streams.windows(2).all(|w| w[0].bandwidth <= w[1].bandwidth));
    // the master lists them by bandwidth, ties in the order given
    let mut sorted: Vec<&Variant> = variants.iter().collect();
    sorted.sort_by_key(|v| v.bandwidth);
    for (p, v) in streams.iter().zip(&sorted) {
        assert_eq!((&p.uri, p.bandwidth), (&v.uri, v.bandwidth), "{master}");
        assert_eq!(p.average_bandwidth, Some(v.average_bandwidth));
        let res = p.resolution.expect("RESOLUTION");
        assert_eq!(
            (res.width, res.height),
            (u64::from(v.width), u64::from(v.height))
        );
        let codecs = match &v.audio_codec {
            Some(a) => format!("{},{a}", v.video_codec),
            None => v.video_codec.clone(),
        };
        assert_eq!(p.codecs.as_deref(), Some(codecs.as_str()));
        match p.frame_rate {
            Some(f) => assert!(
                (f - v.frame_rate).abs() <= 0.0005 + 1e-9 * v.frame_rate,
                "{master}"
            ),
            None => assert_eq!(shown(v.frame_rate), 0.0, "FRAME-RATE left out: {master}"),
        }
    }
    for (p, v) in iframe.iter().zip(&sorted) {
        assert_eq!(
            (&p.uri, p.bandwidth),
            (&v.iframe_uri, v.iframe_bandwidth.max(1))
        );
    }
}

pub fn playlist_seeds() -> Vec<Vec<u8>> {
    let mut seg = vec![3u8];
    for (i, ticks) in [540_000u32, 540_000, 123_456].iter().enumerate() {
        seg.extend([9, b's', b'e', b'g', b'0', b'0', 1 + i as u8, 0, b'm', b'4']);
        seg.extend(ticks.to_be_bytes());
        seg.push(0);
        seg.extend(1_200_000u32.to_be_bytes());
        seg.extend(90_000u32.to_be_bytes());
    }
    seg.extend([8, b'i', b'n', b'i', b't', b'.', b'm', b'p', b'4']);
    seg.push(3);
    for bw in [800_000u32, 2_500_000, 5_000_000] {
        seg.extend([4, b'7', b'2', b'0', b'p']);
        seg.extend([5, b'i', b'7', b'2', b'0', b'p']);
        seg.extend(bw.to_be_bytes());
        seg.extend((bw / 2).to_be_bytes());
        seg.extend((bw / 8).to_be_bytes());
        seg.extend(1280u32.to_be_bytes());
        seg.extend(720u32.to_be_bytes());
        seg.extend(30u32.to_be_bytes());
        seg.push(5);
        seg.extend([5, b'6', b'4', b'0', b'0', b'1']);
        seg.extend([0, 2]);
    }
    vec![
        seg,
        vec![1, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0xff],
        vec![0, 1, 0, 1],
    ]
}

/// The fMP4 box reader on arbitrary bytes never reads past its input; and a fragment written
/// from arbitrary samples reads back: its sequence number, sample count, and a data offset
/// that lands on the first video byte.
pub fn boxes(data: &[u8]) {
    let range = data.as_ptr_range();
    for path in [
        &[b"moof", b"traf", b"trun"][..],
        &[b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"][..],
        &[b"mdat"][..],
    ] {
        if let Some(body) = find_box(data, path) {
            let r = body.as_ptr_range();
            assert!(range.start <= r.start && r.end <= range.end);
        }
    }

    let mut input = Input(data);
    let seq = input.u32();
    let sample = |input: &mut Input, i: usize, dts: &mut i64| {
        let len = usize::from(input.byte()) + 1;
        let duration = input.u32() % 100_000;
        let s = Sample {
            data: Bytes::from(vec![i as u8; len]),
            dts: *dts,
            cts_offset: input.u32() as i32 % 10_000,
            duration,
            keyframe: i == 0 || input.byte().is_multiple_of(8),
        };
        *dts += i64::from(duration);
        s
    };
    let mut dts = 0;
    let video: Vec<Sample> = (0..usize::from(input.byte() % 24))
        .map(|i| sample(&mut input, i, &mut dts))
        .collect();
    let mut dts = 0;
    let audio: Vec<Sample> = (0..usize::from(input.byte() % 24))
        .map(|i| sample(&mut input, 100 + i, &mut dts))
        .collect();
    let frag = fragment(seq, &video, &audio);
    let bytes = &frag.bytes;
    let mfhd = find_box(bytes, &[b"moof", b"mfhd"]).expect("mfhd");
    assert_eq!(mfhd.get(4..8), Some(&seq.to_be_bytes()[..]));
    let mdat = find_box(bytes, &[b"mdat"]).expect("mdat");
    let payload: usize = video.iter().chain(&audio).map(|s| s.data.len()).sum();
    assert_eq!(mdat.len(), payload);
    if let Some(first) = video.first() {
        let trun = find_box(bytes, &[b"moof", b"traf", b"trun"]).expect("video trun");
        let count = u32::from_be_bytes([trun[4], trun[5], trun[6], trun[7]]);
        assert_eq!(count as usize, video.len());
        let off = u32::from_be_bytes([trun[8], trun[9], trun[10], trun[11]]) as usize;
        assert_eq!(
            bytes.get(off..off + first.data.len()),
            Some(&first.data[..])
        );
        assert_eq!(frag.first_keyframe_end as usize, off + first.data.len());
    }
}

pub fn boxes_seeds() -> Vec<Vec<u8>> {
    let mut frag = vec![0, 0, 0, 7, 3];
    for i in 0..3u8 {
        frag.extend([10 + i, 0, 0, 0x0b, 0xb8, 0, 0, 0, 0, i]);
    }
    frag.push(2);
    for _ in 0..2 {
        frag.extend([5, 0, 0, 4, 0, 0, 0, 0, 0, 0]);
    }
    let mut nested = Vec::new();
    nested.extend(24u32.to_be_bytes());
    nested.extend(b"moof");
    nested.extend(16u32.to_be_bytes());
    nested.extend(b"traf");
    nested.extend(8u32.to_be_bytes());
    nested.extend(b"trun");
    vec![
        frag,
        nested,
        vec![0xff, 0xff, 0xff, 0xff, b'm', b'o', b'o', b'f'],
    ]
}
