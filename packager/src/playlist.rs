//! HLS playlist rendering (RFC 8216, version 7 for fMP4) as pure functions: media playlists,
//! I-frame-only playlists, the master playlist, and the WebVTT thumbnail track.

use std::fmt::Write;

/// One media segment of a rendition.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// URI relative to the playlist.
    pub uri: String,
    /// Duration in seconds.
    pub duration: f64,
    /// Size in bytes.
    pub bytes: u64,
    /// Bytes from the segment start through the end of its first keyframe.
    pub keyframe_bytes: u64,
}

/// A duration or rate as a playlist may show it: a broken source can make a NaN, infinite or
/// negative one (a zero timescale, say), and those would make the playlist unparseable.
fn positive(x: f64) -> Option<f64> {
    (x.is_finite() && x > 0.0).then_some(x)
}

/// `EXTINF` of a segment: its duration, or 0 when it has none a player could use.
fn extinf(s: &Segment) -> f64 {
    positive(s.duration).unwrap_or(0.0)
}

/// `EXT-X-TARGETDURATION`: every `EXTINF` rounded to the nearest integer must not exceed it.
pub fn target_duration(segments: &[Segment]) -> u64 {
    segments
        .iter()
        .map(|s| (extinf(s) + 0.5).floor() as u64)
        .max()
        .unwrap_or(1)
        .max(1)
}

fn header(out: &mut String, target: u64) {
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n\
         #EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n"
    );
}

/// A VOD media playlist.
pub fn media(init_uri: &str, segments: &[Segment]) -> String {
    let mut out = String::with_capacity(128 + segments.len() * 40);
    header(&mut out, target_duration(segments));
    let _ = writeln!(out, "#EXT-X-MAP:URI=\"{init_uri}\"");
    for s in segments {
        let _ = write!(out, "#EXTINF:{:.6},\n{}\n", extinf(s), s.uri);
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// An I-frame-only playlist: each entry is the first keyframe of a segment, by byte range.
pub fn iframes(init_uri: &str, segments: &[Segment]) -> String {
    let mut out = String::with_capacity(160 + segments.len() * 64);
    header(&mut out, target_duration(segments));
    out.push_str("#EXT-X-I-FRAMES-ONLY\n");
    let _ = writeln!(out, "#EXT-X-MAP:URI=\"{init_uri}\"");
    for s in segments {
        let _ = write!(
            out,
            "#EXTINF:{:.6},\n#EXT-X-BYTERANGE:{}@0\n{}\n",
            extinf(s),
            s.keyframe_bytes,
            s.uri
        );
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// Peak bit rate of the I-frame playlist (largest keyframe over its segment's duration).
pub fn iframe_bandwidth(segments: &[Segment]) -> u64 {
    segments
        .iter()
        .filter(|s| s.duration > 0.0)
        .map(|s| (s.keyframe_bytes as f64 * 8.0 / s.duration).ceil() as u64)
        .max()
        .unwrap_or(0)
}

/// Peak and average bit rates of a rendition, from its segments.
pub fn bandwidths(segments: &[Segment]) -> (u64, u64) {
    let peak = segments
        .iter()
        .filter(|s| s.duration > 0.0)
        .map(|s| (s.bytes as f64 * 8.0 / s.duration).ceil() as u64)
        .max()
        .unwrap_or(0);
    let total_bytes: u64 = segments.iter().map(|s| s.bytes).sum();
    let total_secs: f64 = segments.iter().map(extinf).sum();
    let avg = if total_secs > 0.0 {
        (total_bytes as f64 * 8.0 / total_secs).ceil() as u64
    } else {
        0
    };
    (peak, avg)
}

/// One rung as the master playlist lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Media playlist URI relative to the master.
    pub uri: String,
    /// I-frame playlist URI relative to the master.
    pub iframe_uri: String,
    /// Measured peak bit rate (bits/s).
    pub bandwidth: u64,
    /// Measured average bit rate (bits/s).
    pub average_bandwidth: u64,
    /// I-frame playlist peak bit rate.
    pub iframe_bandwidth: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub frame_rate: f64,
    /// Video codec string (`avc1.PPCCLL`).
    pub video_codec: String,
    /// Audio codec string (`mp4a.40.2`), when the rung has audio.
    pub audio_codec: Option<String>,
}

/// The master playlist, variants in ascending bandwidth.
pub fn master(variants: &[Variant]) -> String {
    let mut sorted: Vec<&Variant> = variants.iter().collect();
    sorted.sort_by_key(|v| v.bandwidth);
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in &sorted {
        let codecs = match &v.audio_codec {
            Some(a) => format!("{},{a}", v.video_codec),
            None => v.video_codec.clone(),
        };
        // FRAME-RATE is optional: left out rather than written as NaN or 0
        let rate = positive(v.frame_rate)
            .map(|r| format!(",FRAME-RATE={r:.3}"))
            .unwrap_or_default();
        let _ = write!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{}{rate},CODECS=\"{codecs}\"\n{}\n",
            v.bandwidth, v.average_bandwidth, v.width, v.height, v.uri
        );
    }
    for v in &sorted {
        let _ = writeln!(
            out,
            "#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={},RESOLUTION={}x{},CODECS=\"{}\",URI=\"{}\"",
            v.iframe_bandwidth.max(1),
            v.width,
            v.height,
            v.video_codec,
            v.iframe_uri
        );
    }
    out
}

/// One cue of the thumbnail track: a region of a sprite sheet shown for `start..end`.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail {
    /// Cue start (seconds).
    pub start: f64,
    /// Cue end (seconds).
    pub end: f64,
    /// Sprite sheet URI relative to the VTT file.
    pub sprite: String,
    /// Region within the sprite.
    pub x: u32,
    /// Region within the sprite.
    pub y: u32,
    /// Region width.
    pub w: u32,
    /// Region height.
    pub h: u32,
}

fn vtt_time(t: f64) -> String {
    let ms = (t.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}

/// The WebVTT thumbnail track (`sprite.jpg#xywh=x,y,w,h` cues), as players use for scrubbing.
pub fn thumbnails_vtt(cues: &[Thumbnail]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for c in cues {
        let _ = write!(
            out,
            "{} --> {}\n{}#xywh={},{},{},{}\n\n",
            vtt_time(c.start),
            vtt_time(c.end),
            c.sprite,
            c.x,
            c.y,
            c.w,
            c.h
        );
    }
    out
}

/// The subtitle rendition a master names: one WebVTT file for the whole moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Subtitles {
    /// `GROUP-ID` of the `EXT-X-MEDIA` tag, named by every variant's `SUBTITLES`.
    pub group: String,
    /// Human-readable `NAME` (`English`).
    pub name: String,
    /// BCP 47 `LANGUAGE` (`en`).
    pub language: String,
    /// Media playlist URI relative to the master.
    pub uri: String,
}

/// The master playlist with a subtitle rendition: an `EXT-X-MEDIA:TYPE=SUBTITLES` tag after
/// the header and `SUBTITLES="group"` on every `EXT-X-STREAM-INF` (I-frame variants carry
/// none, as RFC 8216 says). A master that already names subtitles is returned as it is, so
/// republishing twice changes nothing.
pub fn with_subtitles(master: &str, subs: &Subtitles) -> String {
    if master.contains("TYPE=SUBTITLES") {
        return master.to_string();
    }
    let media = format!(
        "#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"{}\",NAME=\"{}\",LANGUAGE=\"{}\",\
         AUTOSELECT=YES,DEFAULT=NO,FORCED=NO,URI=\"{}\"",
        subs.group, subs.name, subs.language, subs.uri
    );
    let mut out = String::with_capacity(master.len() + 256);
    let mut placed = false;
    for line in master.lines() {
        if !placed && (line.starts_with("#EXT-X-STREAM-INF") || line.starts_with("#EXT-X-I-FRAME"))
        {
            out.push_str(&media);
            out.push('\n');
            placed = true;
        }
        out.push_str(line);
        if line.starts_with("#EXT-X-STREAM-INF:") {
            let _ = write!(out, ",SUBTITLES=\"{}\"", subs.group);
        }
        out.push('\n');
    }
    out
}

/// The media playlist of a subtitle rendition: the whole moment's WebVTT as one segment.
pub fn subtitles_media(vtt_uri: &str, duration: f64) -> String {
    let d = positive(duration).unwrap_or(1.0);
    let mut out = String::with_capacity(256);
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:0\n\
         #EXT-X-PLAYLIST-TYPE:VOD\n#EXTINF:{d:.6},\n{vtt_uri}\n#EXT-X-ENDLIST\n",
        d.ceil().max(1.0) as u64
    );
    out
}

/// One caption cue: up to two lines shown from `start` to `end` (seconds of the moment).
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    /// Cue start (seconds).
    pub start: f64,
    /// Cue end (seconds).
    pub end: f64,
    /// The lines (at most two).
    pub lines: Vec<String>,
}

/// A WebVTT caption file. `X-TIMESTAMP-MAP` ties cue time 0 to media time 0 (our segments
/// start at 0), which HLS players need to place cues beside fMP4 video. Cue text is escaped
/// (`&`, `<`, `>`) and a line never holds `-->`.
pub fn captions_vtt(cues: &[Caption]) -> String {
    let mut out = String::from("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n\n");
    for (i, c) in cues.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}\n{} --> {}",
            i + 1,
            vtt_time(c.start),
            vtt_time(c.end)
        );
        for l in &c.lines {
            let text = l
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            out.push_str(text.trim());
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(durations: &[f64]) -> Vec<Segment> {
        durations
            .iter()
            .enumerate()
            .map(|(i, d)| Segment {
                uri: format!("seg_{i:05}.m4s"),
                duration: *d,
                bytes: (*d * 1_000_000.0) as u64 / 8 * (i as u64 + 1),
                keyframe_bytes: 20_000,
            })
            .collect()
    }

    #[test]
    fn media_playlist_is_vod_fmp4() {
        let p = media("init.mp4", &segs(&[2.0, 2.0, 1.4]));
        assert_eq!(
            p,
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"init.mp4\"\n\
             #EXTINF:2.000000,\nseg_00000.m4s\n#EXTINF:2.000000,\nseg_00001.m4s\n\
             #EXTINF:1.400000,\nseg_00002.m4s\n#EXT-X-ENDLIST\n"
        );
    }

    #[test]
    fn target_duration_rounds_to_nearest_and_is_never_zero() {
        assert_eq!(target_duration(&segs(&[2.0, 2.49])), 2);
        assert_eq!(target_duration(&segs(&[2.0, 2.5])), 3);
        assert_eq!(target_duration(&segs(&[0.2])), 1);
        assert_eq!(target_duration(&[]), 1);
    }

    #[test]
    fn bandwidths_are_measured() {
        // segment i has (i+1) Mbit/s
        let s = segs(&[2.0, 2.0, 2.0]);
        let (peak, avg) = bandwidths(&s);
        assert_eq!(peak, 3_000_000);
        assert_eq!(avg, 2_000_000);
        assert_eq!(bandwidths(&[]), (0, 0));
        assert_eq!(iframe_bandwidth(&s), 80_000);
    }

    #[test]
    fn iframe_playlist_uses_byte_ranges() {
        let p = iframes("init.mp4", &segs(&[2.0]));
        assert!(p.contains("#EXT-X-I-FRAMES-ONLY\n"));
        assert!(p.contains("#EXT-X-BYTERANGE:20000@0\nseg_00000.m4s\n"));
    }

    #[test]
    fn master_lists_codecs_resolution_and_frame_rate_sorted_by_bandwidth() {
        let v = |name: &str, bw, w, h, audio: bool| Variant {
            uri: format!("{name}/index.m3u8"),
            iframe_uri: format!("{name}/iframes.m3u8"),
            bandwidth: bw,
            average_bandwidth: bw * 8 / 10,
            iframe_bandwidth: 100_000,
            width: w,
            height: h,
            frame_rate: 29.97,
            video_codec: "avc1.64001f".into(),
            audio_codec: audio.then(|| "mp4a.40.2".to_string()),
        };
        let m = master(&[
            v("720p", 3_000_000, 1280, 720, true),
            v("480p", 1_300_000, 854, 480, false),
        ]);
        let expected = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
            #EXT-X-STREAM-INF:BANDWIDTH=1300000,AVERAGE-BANDWIDTH=1040000,RESOLUTION=854x480,FRAME-RATE=29.970,CODECS=\"avc1.64001f\"\n480p/index.m3u8\n\
            #EXT-X-STREAM-INF:BANDWIDTH=3000000,AVERAGE-BANDWIDTH=2400000,RESOLUTION=1280x720,FRAME-RATE=29.970,CODECS=\"avc1.64001f,mp4a.40.2\"\n720p/index.m3u8\n\
            #EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=100000,RESOLUTION=854x480,CODECS=\"avc1.64001f\",URI=\"480p/iframes.m3u8\"\n\
            #EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=100000,RESOLUTION=1280x720,CODECS=\"avc1.64001f\",URI=\"720p/iframes.m3u8\"\n";
        assert_eq!(m, expected);
    }

    /// Found by the `playlist` fuzz target: a source with a zero timescale made NaN rates and
    /// durations, and the master said `FRAME-RATE=NaN`, which no parser takes.
    #[test]
    fn nan_infinite_and_negative_durations_and_rates_keep_playlists_parseable() {
        let m = master(&[Variant {
            uri: "a/index.m3u8".into(),
            iframe_uri: "a/iframes.m3u8".into(),
            bandwidth: 1,
            average_bandwidth: 1,
            iframe_bandwidth: 1,
            width: 2,
            height: 2,
            frame_rate: f64::NAN,
            video_codec: "avc1.64001f".into(),
            audio_codec: None,
        }]);
        assert!(m.contains("RESOLUTION=2x2,CODECS="), "{m}");
        assert!(!m.contains("FRAME-RATE"), "{m}");
        let mut s = segs(&[f64::NAN, f64::INFINITY, -2.0, 4.0]);
        for seg in &mut s {
            seg.bytes = 1000;
        }
        let p = media("init.mp4", &s);
        assert_eq!(p.matches("#EXTINF:0.000000,").count(), 3, "{p}");
        assert!(p.contains("#EXT-X-TARGETDURATION:4\n"), "{p}");
        // the average counts the segments' bytes over the 4 s a player can use
        assert_eq!(bandwidths(&s), (2000, 8000));
    }

    #[test]
    fn vtt_times_and_regions() {
        let v = thumbnails_vtt(&[Thumbnail {
            start: 3661.5,
            end: 3663.5,
            sprite: "thumbs.jpg".into(),
            x: 160,
            y: 90,
            w: 160,
            h: 90,
        }]);
        assert_eq!(
            v,
            "WEBVTT\n\n01:01:01.500 --> 01:01:03.500\nthumbs.jpg#xywh=160,90,160,90\n\n"
        );
    }

    #[test]
    fn subtitles_join_the_master_once_and_every_variant_names_them() {
        let m = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
            #EXT-X-STREAM-INF:BANDWIDTH=1,RESOLUTION=2x2,CODECS=\"avc1.64001f\"\na/index.m3u8\n\
            #EXT-X-STREAM-INF:BANDWIDTH=2,RESOLUTION=4x4,CODECS=\"avc1.64001f\"\nb/index.m3u8\n\
            #EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,RESOLUTION=2x2,CODECS=\"avc1.64001f\",URI=\"a/iframes.m3u8\"\n";
        let subs = Subtitles {
            group: "subs".into(),
            name: "English".into(),
            language: "en".into(),
            uri: "captions/en.m3u8".into(),
        };
        let with = with_subtitles(m, &subs);
        assert_eq!(with.matches("TYPE=SUBTITLES").count(), 1, "{with}");
        assert_eq!(with.matches("SUBTITLES=\"subs\"").count(), 2, "{with}");
        assert!(!with.contains("iframes.m3u8\",SUBTITLES"), "{with}");
        let media_at = with.find("#EXT-X-MEDIA:").unwrap();
        assert!(media_at < with.find("#EXT-X-STREAM-INF").unwrap());
        assert_eq!(with_subtitles(&with, &subs), with);
        let parsed = m3u8_rs::parse_master_playlist_res(with.as_bytes()).unwrap();
        assert_eq!(parsed.alternatives.len(), 1);
        assert!(
            parsed
                .variants
                .iter()
                .all(|v| v.is_i_frame || v.subtitles.as_deref() == Some("subs"))
        );
    }

    #[test]
    fn caption_files_escape_text_and_map_timestamps() {
        let v = captions_vtt(&[Caption {
            start: 1.25,
            end: 3.5,
            lines: vec!["Fish & chips <b>".into(), " a --> b ".into()],
        }]);
        assert_eq!(
            v,
            "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n\n1\n00:00:01.250 --> 00:00:03.500\n\
             Fish &amp; chips &lt;b&gt;\na --&gt; b\n\n"
        );
        let p = subtitles_media("en.vtt", 12.3);
        let parsed = m3u8_rs::parse_media_playlist_res(p.as_bytes()).unwrap();
        assert_eq!(parsed.target_duration, 13);
        assert_eq!(parsed.segments.len(), 1);
        assert!(parsed.end_list);
    }
}
