//! The ladder end to end: a generated clip goes through the real queue and worker (FFmpeg
//! decode, libx264/AAC encode, our fMP4 packager) into the object store, and every published
//! object is checked with tools that are not ours: ffprobe and the m3u8-rs parser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use common::store::{Key, ObjectStore};
use serde_json::Value;

/// What one published rung must look like.
struct Expect {
    name: &'static str,
    width: u32,
    height: u32,
}

/// Checks everything published for moment `id` against `expected`, for a source of
/// `duration` seconds at `fps`, with or without audio.
async fn check_published(
    store: &dyn ObjectStore,
    id: &str,
    expected: &[Expect],
    duration: f64,
    fps: f64,
    audio: bool,
    scratch: &Path,
) {
    let get = |key: String| async move {
        String::from_utf8(
            store
                .get_bytes(&Key::new(key).unwrap(), 1 << 20)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap()
    };
    let master_text = get(format!("hls/{id}/master.m3u8")).await;
    let master = match m3u8_rs::parse_playlist_res(master_text.as_bytes()) {
        Ok(m3u8_rs::Playlist::MasterPlaylist(m)) => m,
        other => panic!("master does not parse as a master playlist: {other:?}\n{master_text}"),
    };
    assert!(master.independent_segments, "EXT-X-INDEPENDENT-SEGMENTS");
    let streams = master.variants.iter().filter(|v| !v.is_i_frame).count();
    let iframe_streams = master.variants.iter().filter(|v| v.is_i_frame).count();
    assert_eq!(streams, expected.len(), "{master_text}");
    assert_eq!(iframe_streams, expected.len(), "{master_text}");

    for e in expected {
        let variant = master
            .variants
            .iter()
            .find(|v| !v.is_i_frame && v.uri == format!("{}/index.m3u8", e.name))
            .unwrap_or_else(|| panic!("{} missing from master:\n{master_text}", e.name));
        let res = variant.resolution.unwrap();
        assert_eq!(
            (res.width as u32, res.height as u32),
            (e.width, e.height),
            "{}",
            e.name
        );
        assert!(variant.bandwidth > 0 && variant.average_bandwidth.unwrap() > 0);
        assert!(variant.average_bandwidth.unwrap() <= variant.bandwidth);
        assert!((variant.frame_rate.unwrap() - fps).abs() < 0.01);
        let codecs = variant.codecs.clone().unwrap();
        assert_eq!(codecs.contains("mp4a.40.2"), audio, "{codecs}");

        // media playlist
        let media_text = get(format!("hls/{id}/{}/index.m3u8", e.name)).await;
        let media = match m3u8_rs::parse_playlist_res(media_text.as_bytes()) {
            Ok(m3u8_rs::Playlist::MediaPlaylist(m)) => m,
            other => panic!("media playlist does not parse: {other:?}\n{media_text}"),
        };
        assert!(media.end_list);
        assert_eq!(media.playlist_type, Some(m3u8_rs::MediaPlaylistType::Vod));
        assert!(media_text.contains("#EXT-X-VERSION:7"));
        assert!(media_text.contains("#EXT-X-MAP:URI=\"init.mp4\""));
        let total: f64 = media.segments.iter().map(|s| f64::from(s.duration)).sum();
        assert!(
            (total - duration).abs() <= 1.0 / fps + 1e-6,
            "{}: segments sum to {total}, clip is {duration}",
            e.name
        );
        for s in &media.segments {
            assert!(
                (f64::from(s.duration)).round() as u64 <= media.target_duration,
                "EXTINF {} over TARGETDURATION {}",
                s.duration,
                media.target_duration
            );
        }
        let iframes = get(format!("hls/{id}/{}/iframes.m3u8", e.name)).await;
        match m3u8_rs::parse_playlist_res(iframes.as_bytes()) {
            Ok(m3u8_rs::Playlist::MediaPlaylist(m)) => {
                assert!(m.i_frames_only);
                assert_eq!(m.segments.len(), media.segments.len());
                assert!(m.segments.iter().all(|s| s.byte_range.is_some()));
            }
            other => panic!("I-frame playlist does not parse: {other:?}"),
        }

        // the rendition itself, joined (init + segments) and read by ffprobe
        let mut joined = store
            .get_bytes(
                &Key::new(format!("hls/{id}/{}/init.mp4", e.name)).unwrap(),
                1 << 20,
            )
            .await
            .unwrap()
            .to_vec();
        let mut starts = Vec::new();
        for s in &media.segments {
            let key = format!("hls/{id}/{}/{}", e.name, s.uri);
            let seg = store
                .get_bytes(&Key::new(key).unwrap(), 64 << 20)
                .await
                .unwrap();
            starts.push(joined.len());
            joined.extend_from_slice(&seg);
        }
        let file = scratch.join(format!("{id}-{}.mp4", e.name));
        std::fs::write(&file, &joined).unwrap();
        let probe = support::ffprobe(file.to_str().unwrap(), &["-show_streams", "-show_format"]);
        let streams = probe["streams"].as_array().unwrap();
        let v = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
        assert_eq!(v["codec_name"], "h264");
        assert_eq!(
            (
                v["width"].as_u64().unwrap() as u32,
                v["height"].as_u64().unwrap() as u32
            ),
            (e.width, e.height)
        );
        assert_eq!(v["pix_fmt"], "yuv420p");
        // CODECS in the master equals what the stream really is
        let profile = v["profile"].as_str().unwrap().to_string();
        let level = v["level"].as_i64().unwrap();
        let avc = codecs.split(',').next().unwrap();
        assert_eq!(
            i64::from_str_radix(&avc[9..11], 16).unwrap(),
            level,
            "{avc} vs level {level}"
        );
        let pidc = i64::from_str_radix(&avc[5..7], 16).unwrap();
        let expected_pidc = match profile.as_str() {
            "High" => 100,
            "Main" => 77,
            "Baseline" | "Constrained Baseline" => 66,
            other => panic!("unexpected profile {other}"),
        };
        assert_eq!(pidc, expected_pidc, "{avc} vs {profile}");
        let a = streams.iter().find(|s| s["codec_type"] == "audio");
        assert_eq!(a.is_some(), audio);
        if let Some(a) = a {
            assert_eq!(a["codec_name"], "aac");
            assert_eq!(a["sample_rate"], "48000");
            assert_eq!(a["channels"], 2);
            assert_eq!(a["profile"], "LC");
        }

        // every segment starts with a keyframe, and all frames decode
        let frames = common::testing::assert_segments_start_with_keyframes(&file, &starts, e.name);
        let expected_frames = (duration * fps).round() as usize;
        assert!(
            frames.abs_diff(expected_frames) <= 1,
            "{}: {frames} frames decoded, expected {expected_frames}",
            e.name
        );
    }
    // poster and thumbnails
    let poster = store
        .head(&Key::new(format!("hls/{id}/poster.jpg")).unwrap())
        .await
        .unwrap();
    assert_eq!(poster.content_type.as_deref(), Some("image/jpeg"));
    let vtt = get(format!("hls/{id}/thumbs.vtt")).await;
    assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> "), "{vtt}");
    assert!(vtt.contains("thumbs.jpg#xywh=0,0,"));
}

fn sizes(m: &common::moment::Moment) -> Vec<(String, u64, u64)> {
    m.renditions["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r: &Value| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["width"].as_u64().unwrap(),
                r["height"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn full_hd_clip_with_audio_yields_three_rungs() {
    let env = support::env().await;
    let src = support::clip(env.dir.path(), "in.mp4", 1920, 1080, 5.0, 30, true);
    let id = support::submit(&env, "alice", &src).await;
    let m = support::wait_final(&env, &id, Duration::from_secs(300)).await;
    assert_eq!(m.state, common::moment::State::Ready, "{:?}", m.error);
    assert_eq!(
        sizes(&m),
        vec![
            ("480p".into(), 854, 480),
            ("720p".into(), 1280, 720),
            ("1080p".into(), 1920, 1080)
        ]
    );
    check_published(
        &*env.store,
        &id,
        &[
            Expect {
                name: "1080p",
                width: 1920,
                height: 1080,
            },
            Expect {
                name: "720p",
                width: 1280,
                height: 720,
            },
            Expect {
                name: "480p",
                width: 854,
                height: 480,
            },
        ],
        5.0,
        30.0,
        true,
        env.dir.path(),
    )
    .await;
}

#[tokio::test]
async fn a_720p_source_gets_720p_and_480p_only_and_video_only_works() {
    let env = support::env().await;
    let src = support::clip(env.dir.path(), "in.mp4", 1280, 720, 4.5, 25, false);
    let id = support::submit(&env, "alice", &src).await;
    let m = support::wait_final(&env, &id, Duration::from_secs(300)).await;
    assert_eq!(m.state, common::moment::State::Ready, "{:?}", m.error);
    check_published(
        &*env.store,
        &id,
        &[
            Expect {
                name: "720p",
                width: 1280,
                height: 720,
            },
            Expect {
                name: "480p",
                width: 854,
                height: 480,
            },
        ],
        4.5,
        25.0,
        false,
        env.dir.path(),
    )
    .await;
}

/// Mean brightness of the top and bottom halves of the first frame of `file`, as ffmpeg
/// decodes it (with its own autorotation for sources).
fn halves(file: &str, w: u32, h: u32) -> (f64, f64) {
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            file,
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let px = out.stdout;
    assert_eq!(px.len() as u32, w * h, "{file}: unexpected frame size");
    let half = px.len() / 2;
    let mean = |s: &[u8]| s.iter().map(|&b| f64::from(b)).sum::<f64>() / s.len() as f64;
    (mean(&px[..half]), mean(&px[half..]))
}

#[tokio::test]
async fn a_rotated_phone_clip_comes_out_upright() {
    let env = support::env().await;
    let dir = env.dir.path();
    // left half white, right half black, stored sideways with a 90° display matrix
    let plain = dir.join("plain.mp4");
    support::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=white:size=960x1080:rate=30:duration=3",
        "-f",
        "lavfi",
        "-i",
        "color=black:size=960x1080:rate=30:duration=3",
        "-filter_complex",
        "[0:v][1:v]hstack",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        plain.to_str().unwrap(),
    ]);
    let rotated = dir.join("rotated.mp4");
    support::ffmpeg(&[
        "-i",
        plain.to_str().unwrap(),
        "-c",
        "copy",
        "-metadata:s:v:0",
        "rotate=90",
        rotated.to_str().unwrap(),
    ]);
    // FFmpeg itself shows the source upright as 1080x1920 with one half white, one black:
    // that is the reference orientation.
    let (src_top, src_bottom) = halves(rotated.to_str().unwrap(), 1080, 1920);
    assert!(
        (src_top - src_bottom).abs() > 200.0,
        "ffmpeg autorotation: {src_top} {src_bottom}"
    );
    let white_on_top = src_top > src_bottom;

    let id = support::submit(&env, "alice", &rotated).await;
    let m = support::wait_final(&env, &id, Duration::from_secs(300)).await;
    assert_eq!(m.state, common::moment::State::Ready, "{:?}", m.error);
    assert_eq!(
        sizes(&m),
        vec![
            ("480p".into(), 480, 854),
            ("720p".into(), 720, 1280),
            ("1080p".into(), 1080, 1920)
        ]
    );
    for (rung, w, h) in [
        ("1080p", 1080, 1920),
        ("720p", 720, 1280),
        ("480p", 480, 854),
    ] {
        let mut joined = env
            .store
            .get_bytes(
                &Key::new(format!("hls/{id}/{rung}/init.mp4")).unwrap(),
                1 << 20,
            )
            .await
            .unwrap()
            .to_vec();
        let seg = env
            .store
            .get_bytes(
                &Key::new(format!("hls/{id}/{rung}/seg_00000.m4s")).unwrap(),
                64 << 20,
            )
            .await
            .unwrap();
        joined.extend_from_slice(&seg);
        let file = dir.join(format!("{rung}.mp4"));
        std::fs::write(&file, joined).unwrap();
        let (top, bottom) = halves(file.to_str().unwrap(), w, h);
        assert!(
            (top - bottom).abs() > 200.0 && (top > bottom) == white_on_top,
            "{rung} is not turned as FFmpeg turns the source: top {top}, bottom {bottom}"
        );
    }
    // the poster is upright too
    let poster = env
        .store
        .get_bytes(&Key::new(format!("hls/{id}/poster.jpg")).unwrap(), 8 << 20)
        .await
        .unwrap();
    let img = image::load_from_memory(&poster).unwrap().to_luma8();
    assert!(img.height() > img.width());
    let top = img.get_pixel(img.width() / 2, img.height() / 4).0[0];
    let bottom = img.get_pixel(img.width() / 2, img.height() * 3 / 4).0[0];
    assert!(
        top.abs_diff(bottom) > 200 && (top > bottom) == white_on_top,
        "poster: {top} {bottom}"
    );
}

/// MD5 of the video packets of `file` as FFmpeg demuxes them (no decoding).
fn video_md5(file: &str) -> String {
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-v", "error", "-i", file, "-map", "0:v:0", "-c", "copy", "-f", "md5", "-",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn a_compliant_h264_source_is_remuxed_into_its_rung() {
    let env = support::env().await;
    let dir = env.dir.path();
    // what a phone might send: 720p30 H.264 High, 2 Mbit/s, closed 1 s GOPs, AAC
    let src = dir.join("phone.mp4");
    support::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30:duration=5",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=5",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        "high",
        "-b:v",
        "2000k",
        "-maxrate",
        "2500k",
        "-bufsize",
        "4000k",
        "-g",
        "30",
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        src.to_str().unwrap(),
    ]);
    let id = support::submit(&env, "alice", &src).await;
    let m = support::wait_final(&env, &id, Duration::from_secs(300)).await;
    assert_eq!(m.state, common::moment::State::Ready, "{:?}", m.error);
    assert_eq!(m.renditions["remuxed"], serde_json::json!(["720p"]));
    check_published(
        &*env.store,
        &id,
        &[
            Expect {
                name: "720p",
                width: 1280,
                height: 720,
            },
            Expect {
                name: "480p",
                width: 854,
                height: 480,
            },
        ],
        5.0,
        30.0,
        true,
        dir,
    )
    .await;
    // the 720p video is the source's bitstream, packet for packet
    let rendition = dir.join(format!("{id}-720p.mp4"));
    assert_eq!(
        video_md5(rendition.to_str().unwrap()),
        video_md5(src.to_str().unwrap())
    );
    // …while a source over the rung's bit rate is re-encoded
    let fat = dir.join("fat.mp4");
    support::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30:duration=3",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-b:v",
        "8000k",
        "-g",
        "30",
        "-pix_fmt",
        "yuv420p",
        fat.to_str().unwrap(),
    ]);
    let id = support::submit(&env, "alice", &fat).await;
    let m = support::wait_final(&env, &id, Duration::from_secs(300)).await;
    assert_eq!(m.state, common::moment::State::Ready, "{:?}", m.error);
    assert_eq!(m.renditions["remuxed"], serde_json::json!([]));
}
