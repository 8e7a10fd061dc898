//! The assets a feed needs, end to end on the in-process stack: captions made from a moment's
//! own speech (WebVTT beside the ladder, a `SUBTITLES` group in the master, the transcript in
//! the moment's JSON), an honest `none: …` when there is no speech, a poster that skips a black
//! lead-in and that the owner can move, an animated preview of the most active stretch, and signed playback (unsigned, tampered, expired and
//! revoked tokens refused, on a second node too). Every part runs on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: fail loudly

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Stack;

/// The databases a test runs on: SQLite, then a fresh PostgreSQL (panics when unreachable,
/// unless `MOMENTS_TEST_SKIP_PG=1`).
async fn databases() -> Vec<(Option<common::testing::PgTestDb>, &'static str)> {
    let mut out = vec![(None, "sqlite")];
    if let Some(pg) = common::testing::fresh_pg().await {
        out.push((Some(pg), "postgres"));
    }
    out
}

async fn stack(
    dir: &Path,
    pg: &Option<common::testing::PgTestDb>,
    tweak: impl FnOnce(&mut moments::Config),
) -> Stack {
    let url = pg.as_ref().map(|p| p.url.clone());
    let models = common::testing::voice_models();
    support::start(dir, |c| {
        c.database.url = url;
        c.voice.models_dir = models;
        tweak(c);
    })
    .await
}

/// GETs `url` (no bearer: what a player does); returns status, headers and body.
async fn fetch(url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// Waits until `f(moment)` holds.
async fn wait_for(
    s: &Stack,
    id: &str,
    within: Duration,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let m = s.moment(id).await;
        if f(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: never happened: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A clip of `lead` s of silence, the speech in `speech` (any audio file), then 1 s of
/// silence, over testsrc2 video.
fn speaking_clip(dir: &Path, speech: &Path, lead: f64) -> (PathBuf, f64) {
    let probe = common::testing::ffprobe(speech.to_str().unwrap(), &["-show_format"]);
    let spoken: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let total = lead + spoken + 1.0;
    let video = format!("testsrc2=size=320x240:rate=30:duration={total:.3}");
    let audio = format!(
        "[1:a]aresample=48000,adelay=delays={}:all=1,apad=whole_dur={total:.3}[a]",
        (lead * 1000.0) as u64
    );
    let out = dir.join("speaking.mp4");
    support::make(
        &out,
        &[
            "-f",
            "lavfi",
            "-i",
            &video,
            "-i",
            speech.to_str().unwrap(),
            "-filter_complex",
            &audio,
            "-map",
            "0:v",
            "-map",
            "[a]",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "60",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-t",
            &format!("{total:.3}"),
            "-movflags",
            "+faststart",
        ],
    );
    (out, spoken)
}

/// Words of `text`, lower case, without punctuation.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word error rate of `heard` against `said` (Levenshtein over words).
fn wer(said: &str, heard: &str) -> f64 {
    let (a, b) = (words(said), words(heard));
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, wa) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, wb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(wa != wb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()] as f64 / a.len().max(1) as f64
}

/// `(start, end, text)` of each cue of a WebVTT file.
fn vtt_cues(vtt: &str) -> Vec<(f64, f64, String)> {
    let time = |t: &str| -> f64 {
        let parts: Vec<f64> = t.trim().split(':').map(|p| p.parse().unwrap()).collect();
        parts.iter().fold(0.0, |acc, p| acc * 60.0 + p)
    };
    let mut cues = Vec::new();
    let mut lines = vtt.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some((a, b)) = line.split_once(" --> ") {
            let mut text = Vec::new();
            while let Some(l) = lines.peek() {
                if l.trim().is_empty() {
                    break;
                }
                text.push(lines.next().unwrap().to_string());
            }
            cues.push((time(a), time(b), text.join(" ")));
        }
    }
    cues
}

/// Runs `player-test/browser/captions-test.mjs` on `master`; its JSON summary, every check
/// passed.
async fn hls_js_captions(master: &str) -> Value {
    let browser = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../player-test/browser");
    assert!(
        browser.join("node_modules/hls.js").exists()
            && browser.join("node_modules/playwright-core").exists(),
        "npm packages missing: run deploy/install-test-tools.sh"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "chromium missing: run deploy/install-deps.sh --browser"
    );
    let artifacts = browser.join("artifacts");
    let out = tokio::process::Command::new("node")
        .arg(browser.join("captions-test.mjs"))
        .arg(master)
        .arg(&artifacts)
        .output()
        .await
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&summary).unwrap();
    for check in [
        "subtitle_track_listed",
        "cues_loaded",
        "cue_shown_while_playing",
        "no_fatal_error",
    ] {
        assert_eq!(v["checks"][check]["pass"], true, "{check}: {summary}");
    }
    assert!(artifacts.join("hls-captions.png").exists());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moments_speech_becomes_captions_in_its_ladder_and_its_transcript() {
    let said = "We walked along the harbour at sunset. The fishing boats were coming home.";
    for (pg, db) in databases().await {
        let dir = tempfile::tempdir().unwrap();
        let s = stack(dir.path(), &pg, |_| {}).await;
        // Piper's voice (the neural engine; eSpeak NG's is misheard by Whisper)
        let r = s
            .http
            .post(format!("{}/v1/tts", s.base))
            .bearer_auth(&s.token)
            .json(&json!({"text": said}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{db}: /v1/tts");
        let speech = dir.path().join("speech.ogg");
        std::fs::write(&speech, r.bytes().await.unwrap()).unwrap();
        let lead = 1.5;
        let (clip, spoken) = speaking_clip(dir.path(), &speech, lead);

        let id = s.whole(&std::fs::read(&clip).unwrap()).await;
        let ready = s.settle(&id, Duration::from_secs(120)).await;
        assert_eq!(ready["state"], "ready", "{db}: {ready}");
        // captions never hold up `ready`: the job starts after it
        assert!(
            ready["captions"] == "pending" || ready["captions"] == "ready",
            "{db}: {ready}"
        );
        let t0 = Instant::now();
        let m = wait_for(&s, &id, Duration::from_secs(120), "captions", |m| {
            m["captions"] != "pending"
        })
        .await;
        eprintln!(
            "{db}: captions {} s after ready",
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(m["captions"], "ready", "{db}: {m}");
        let transcript = m["transcript"].as_str().unwrap();
        let e = wer(said, transcript);
        eprintln!("{db}: transcript {transcript:?}, WER {e:.2}");
        assert!(
            e <= 0.25,
            "{db}: {transcript:?} is not what was said (WER {e:.2})"
        );

        // the WebVTT: cues within the speech, the first one starting when the speech does
        let (status, headers, body) = fetch(m["captions_url"].as_str().unwrap()).await;
        assert_eq!(status, 200, "{db}: captions_url");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/vtt"),
            "{db}: {:?}",
            headers["content-type"]
        );
        let vtt = String::from_utf8(body).unwrap();
        assert!(vtt.starts_with("WEBVTT\n"), "{db}: {vtt}");
        let cues = vtt_cues(&vtt);
        assert!(
            cues.len() >= 2,
            "{db}: two sentences, one cue each at least: {vtt}"
        );
        assert!(
            (cues[0].0 - lead).abs() <= 0.5,
            "{db}: the first cue starts at {} s, the speech at {lead} s",
            cues[0].0
        );
        let end = lead + spoken;
        let last = cues.last().unwrap();
        assert!(
            (last.1 - end).abs() <= 1.1,
            "{db}: the last cue ends at {} s, the speech at {end} s",
            last.1
        );
        for w in cues.windows(2) {
            assert!(w[0].1 <= w[1].0 + 1e-3, "{db}: cues overlap: {w:?}");
        }
        for (a, b, text) in &cues {
            assert!(b > a && b - a <= 7.0 + 1e-3, "{db}: cue {a}..{b}");
            assert!(text.len() <= 2 * 42 + 1, "{db}: cue too long: {text:?}");
        }
        let heard: Vec<&str> = cues.iter().map(|c| c.2.as_str()).collect();
        assert_eq!(
            words(&heard.join(" ")),
            words(transcript),
            "{db}: the cues hold the transcript"
        );

        // the master names the subtitle rendition, on every variant (m3u8-rs, not ours)
        let master_url = m["master_url"].as_str().unwrap();
        let (status, headers, body) = fetch(master_url).await;
        assert_eq!(status, 200, "{db}");
        assert!(
            headers["cache-control"]
                .to_str()
                .unwrap()
                .contains("max-age=30"),
            "{db}: the master changes once captions are in: {:?}",
            headers["cache-control"]
        );
        let master = match m3u8_rs::parse_playlist_res(&body).unwrap() {
            m3u8_rs::Playlist::MasterPlaylist(p) => p,
            other => panic!("{db}: not a master: {other:?}"),
        };
        let subs: Vec<_> = master
            .alternatives
            .iter()
            .filter(|a| a.media_type == m3u8_rs::AlternativeMediaType::Subtitles)
            .collect();
        assert_eq!(subs.len(), 1, "{db}: {master:?}");
        assert_eq!(subs[0].language.as_deref(), Some("en"), "{db}");
        assert!(!master.variants.is_empty());
        // every variant but the I-frame ones (which take no SUBTITLES attribute)
        for v in master.variants.iter().filter(|v| !v.is_i_frame) {
            assert_eq!(
                v.subtitles.as_deref(),
                Some(subs[0].group_id.as_str()),
                "{db}: {v:?}"
            );
        }
        let base = master_url.rsplit_once('/').unwrap().0;
        let subs_url = format!("{base}/{}", subs[0].uri.as_deref().unwrap());
        let (status, _, body) = fetch(&subs_url).await;
        assert_eq!(status, 200, "{db}: {subs_url}");
        let media = match m3u8_rs::parse_playlist_res(&body).unwrap() {
            m3u8_rs::Playlist::MediaPlaylist(p) => p,
            other => panic!("{db}: not a media playlist: {other:?}"),
        };
        assert!(media.end_list);
        assert_eq!(media.segments.len(), 1);
        assert!(media.segments[0].uri.ends_with(".vtt"), "{db}");
        // ffprobe (FFmpeg's HLS demuxer) still reads the master; FFmpeg 5.1 skips subtitle
        // renditions ("Can't support the subtitle"), so its WebVTT demuxer reads the captions
        let probe = common::testing::ffprobe(master_url, &["-show_streams"]);
        let kinds: Vec<&str> = probe["streams"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|st| st["codec_type"].as_str())
            .collect();
        assert!(
            kinds.contains(&"video") && kinds.contains(&"audio"),
            "{db}: {kinds:?}"
        );
        let vtt_file = dir.path().join("captions.vtt");
        std::fs::write(&vtt_file, &vtt).unwrap();
        let probe = common::testing::ffprobe(
            vtt_file.to_str().unwrap(),
            &["-show_streams", "-show_packets"],
        );
        assert_eq!(probe["streams"][0]["codec_name"], "webvtt", "{db}: {probe}");
        let packets = probe["packets"].as_array().unwrap();
        assert_eq!(packets.len(), cues.len(), "{db}: {probe}");
        for (p, c) in packets.iter().zip(&cues) {
            let pts: f64 = p["pts_time"].as_str().unwrap().parse().unwrap();
            assert!((pts - c.0).abs() < 0.002, "{db}: ffprobe {pts} vs {}", c.0);
        }

        // hls.js in Chromium lists the rendition, loads its cues at the same times, shows one
        if db == "sqlite" {
            let browser = hls_js_captions(master_url).await;
            let tracks = browser["text_tracks"].as_array().unwrap();
            let shown: Vec<&Value> = tracks
                .iter()
                .flat_map(|t| t["cues"].as_array().unwrap())
                .collect();
            assert_eq!(shown.len(), cues.len(), "{browser}");
            for (b, c) in shown.iter().zip(&cues) {
                let start = b["start"].as_f64().unwrap();
                assert!(
                    (start - c.0).abs() <= 0.5,
                    "hls.js places a cue at {start} s, the file at {} s",
                    c.0
                );
                assert_eq!(words(b["text"].as_str().unwrap()), words(&c.2));
            }
        }

        // the 16 kHz speech the transcoder left for the job is gone
        let speech_key = common::moment::speech_key(&id);
        assert!(
            s.keys("speech/").await.iter().all(|k| *k != speech_key),
            "{db}: {speech_key} was not removed"
        );
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moment_without_speech_says_why_it_has_no_captions() {
    for (pg, db) in databases().await {
        let dir = tempfile::tempdir().unwrap();
        let s = stack(dir.path(), &pg, |_| {}).await;
        // a 440 Hz tone: audio, but nothing said
        let tone = support::faststart_clip(dir.path(), "tone.mp4", 320, 240, 4, 600);
        let silent = common::testing::clip(dir.path(), "mute.mp4", 320, 240, 3.0, 30, false);
        let tone_id = s.whole(&std::fs::read(&tone).unwrap()).await;
        let mute_id = s.whole(&std::fs::read(&silent).unwrap()).await;
        for (id, want) in [(&tone_id, "none: "), (&mute_id, "none: no audio")] {
            assert_eq!(
                s.settle(id, Duration::from_secs(120)).await["state"],
                "ready"
            );
            let m = wait_for(&s, id, Duration::from_secs(120), "captions", |m| {
                m["captions"] != "pending"
            })
            .await;
            let said = m["captions"].as_str().unwrap();
            assert!(said.starts_with(want), "{db}: {said:?}, wanted {want:?}…");
            assert!(m["captions_url"].is_null(), "{db}: {m}");
            assert!(m["transcript"].is_null(), "{db}: {m}");
            let (_, _, body) = fetch(m["master_url"].as_str().unwrap()).await;
            let master = String::from_utf8(body).unwrap();
            assert!(!master.contains("SUBTITLES"), "{db}: {master}");
        }
        eprintln!(
            "{db}: tone: {}",
            s.moment(&tone_id).await["captions"].as_str().unwrap()
        );
        s.stop().await;
    }
}

/// The poster's ETag, Cache-Control and bytes.
async fn poster(m: &Value) -> (String, String, Vec<u8>) {
    let (status, headers, body) = fetch(m["poster_url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    (
        headers["etag"].to_str().unwrap().to_string(),
        headers["cache-control"].to_str().unwrap().to_string(),
        body,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poster_skips_a_black_start_and_the_owner_can_move_it() {
    for (pg, db) in databases().await {
        let dir = tempfile::tempdir().unwrap();
        let s = stack(dir.path(), &pg, |c| c.transcode.captions = false).await;
        // 2 s fade from black, then a bright test picture
        let clip = support::make(
            &dir.path().join("fade.mp4"),
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=30:duration=6,fade=in:0:60",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-movflags",
                "+faststart",
            ],
        );
        let id = s.whole(&std::fs::read(&clip).unwrap()).await;
        let m = s.settle(&id, Duration::from_secs(120)).await;
        assert_eq!(m["state"], "ready", "{db}: {m}");
        assert_eq!(m["captions"], "none: captions are turned off", "{db}");
        let chosen = m["poster_time"].as_f64().unwrap();
        assert!(
            chosen >= 1.0,
            "{db}: the poster is at {chosen} s, in the fade from black"
        );
        let (etag, cache, jpeg) = poster(&m).await;
        assert!(cache.contains("max-age=60") && !cache.contains("immutable"));
        let img = image::load_from_memory(&jpeg).unwrap().to_luma8();
        let mean = img.pixels().map(|p| f64::from(p.0[0])).sum::<f64>() / img.len() as f64;
        assert!(mean > 40.0, "{db}: the poster is dark (mean luma {mean})");
        let (status, _, blur) = fetch(m["poster_blur_url"].as_str().unwrap()).await;
        assert_eq!(status, 200, "{db}: poster_blur_url");
        let blur = image::load_from_memory(&blur).unwrap();
        assert_eq!(blur.width(), 480, "{db}");

        // bad changes get a reason and change nothing
        let patch = |body: Vec<u8>, token: String, id: String| {
            let http = s.http.clone();
            let base = s.base.clone();
            async move {
                let r = http
                    .patch(format!("{base}/v1/moments/{id}"))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        for (body, reason) in [
            (json!({"poster_time": -1}).to_string(), "negative"),
            (json!({"poster_time": "two"}).to_string(), "number"),
            (json!({"poster_time": 60.0}).to_string(), "past the end"),
            (json!({"title": "x"}).to_string(), "only poster_time"),
            (json!({}).to_string(), "missing"),
            ("{not json".to_string(), "not JSON"),
        ] {
            let (status, answer) = patch(body.into_bytes(), s.token.clone(), id.clone()).await;
            assert_eq!(status, 400, "{db}: {answer}");
            assert!(
                answer.to_string().contains(reason),
                "{db}: {answer} does not say {reason:?}"
            );
        }
        let (status, _) = patch(
            json!({"poster_time": 1.0}).to_string().into_bytes(),
            s.token.clone(),
            "nosuchmoment".into(),
        )
        .await;
        assert_eq!(status, 404, "{db}");
        let (private, _) = common::auth::ensure_dev_key(&dir.path().join("data")).unwrap();
        let bob = common::auth::mint(&private, "bob", Duration::from_secs(60)).unwrap();
        let (status, _) = patch(
            json!({"poster_time": 1.0}).to_string().into_bytes(),
            bob,
            id.clone(),
        )
        .await;
        assert_eq!(status, 404, "{db}: another user's moment is not found");
        assert_eq!(s.moment(&id).await["poster_time"].as_f64(), Some(chosen));

        // the owner picks 4.5 s: a new poster, a new ETag
        let (status, answer) = patch(
            json!({"poster_time": 4.5}).to_string().into_bytes(),
            s.token.clone(),
            id.clone(),
        )
        .await;
        assert_eq!(status, 202, "{db}: {answer}");
        let m = wait_for(&s, &id, Duration::from_secs(60), "the new poster", |m| {
            m["poster_time"].as_f64() == Some(4.5)
        })
        .await;
        let (etag2, _, jpeg2) = poster(&m).await;
        assert_ne!(etag, etag2, "{db}: the poster's ETag did not change");
        assert_ne!(jpeg, jpeg2, "{db}");
        // testsrc2 moves: the frame at 4.5 s is not the one chosen before
        let expected = dir.path().join("at45.png");
        support::make(
            &expected,
            &["-ss", "4.5", "-i", clip.to_str().unwrap(), "-frames:v", "1"],
        );
        let want = image::open(&expected).unwrap().to_luma8();
        let got = image::load_from_memory(&jpeg2).unwrap().resize_exact(
            want.width(),
            want.height(),
            image::imageops::FilterType::Triangle,
        );
        let got = got.to_luma8();
        let diff = want
            .pixels()
            .zip(got.pixels())
            .map(|(a, b)| (f64::from(a.0[0]) - f64::from(b.0[0])).abs())
            .sum::<f64>()
            / want.len() as f64;
        assert!(
            diff < 20.0,
            "{db}: the new poster is not the frame at 4.5 s (mean diff {diff})"
        );
        s.stop().await;
    }
}

/// Mean absolute luma difference of two pictures (the second resized to the first).
fn luma_diff(a: &image::GrayImage, b: &image::DynamicImage) -> f64 {
    let b = b
        .resize_exact(a.width(), a.height(), image::imageops::FilterType::Triangle)
        .to_luma8();
    a.pixels()
        .zip(b.pixels())
        .map(|(x, y)| (f64::from(x.0[0]) - f64::from(y.0[0])).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// One frame of `video` at `at` seconds, as a grey picture.
fn frame_of(video: &Path, at: f64, png: &Path) -> image::GrayImage {
    support::make(
        png,
        &[
            "-ss",
            &at.to_string(),
            "-i",
            video.to_str().unwrap(),
            "-frames:v",
            "1",
        ],
    );
    image::open(png).unwrap().to_luma8()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_is_a_small_muted_faststart_mp4_of_the_most_active_stretch() {
    for (pg, db) in databases().await {
        let dir = tempfile::tempdir().unwrap();
        let s = stack(dir.path(), &pg, |c| c.transcode.captions = false).await;
        // 5 s of still colour bars, then 3 s of moving test picture; with a tone
        let clip = support::make(
            &dir.path().join("still-then-moving.mp4"),
            &[
                "-f",
                "lavfi",
                "-i",
                "smptebars=size=640x480:rate=30:duration=5",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=640x480:rate=30:duration=3",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:duration=8",
                "-filter_complex",
                "[0:v][1:v]concat=n=2:v=1:a=0[v]",
                "-map",
                "[v]",
                "-map",
                "2:a",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-movflags",
                "+faststart",
            ],
        );
        let id = s.whole(&std::fs::read(&clip).unwrap()).await;
        let m = s.settle(&id, Duration::from_secs(120)).await;
        assert_eq!(m["state"], "ready", "{db}: {m}");
        let m = wait_for(&s, &id, Duration::from_secs(60), "the preview", |m| {
            m["preview_url"].is_string()
        })
        .await;
        let (status, headers, mp4) = fetch(m["preview_url"].as_str().unwrap()).await;
        assert_eq!(status, 200, "{db}");
        assert_eq!(headers["content-type"], "video/mp4", "{db}");
        let at = |tag: &[u8]| mp4.windows(4).position(|w| w == tag);
        let (moov, mdat) = (at(b"moov"), at(b"mdat"));
        assert!(
            moov.is_some() && mdat.is_some() && moov < mdat,
            "{db}: not faststart (moov at {moov:?}, mdat at {mdat:?})"
        );
        let file = dir.path().join("preview.mp4");
        std::fs::write(&file, &mp4).unwrap();
        let probe =
            common::testing::ffprobe(file.to_str().unwrap(), &["-show_streams", "-show_format"]);
        let streams = probe["streams"].as_array().unwrap();
        assert_eq!(
            streams.len(),
            1,
            "{db}: muted means no audio stream: {probe}"
        );
        assert_eq!(streams[0]["codec_name"], "h264", "{db}");
        assert_eq!(streams[0]["profile"], "Main", "{db}");
        let (w, h) = (
            streams[0]["width"].as_u64().unwrap(),
            streams[0]["height"].as_u64().unwrap(),
        );
        assert!((240..=360).contains(&h.min(w)), "{db}: {w}x{h}");
        assert_eq!(w * 3, h * 4, "{db}: the aspect ratio changed: {w}x{h}");
        let length: f64 = probe["format"]["duration"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((2.5..=3.5).contains(&length), "{db}: {length} s long");
        assert!(
            mp4.len() < 400 << 10,
            "{db}: the preview is {} KiB, not small",
            mp4.len() >> 10
        );
        // the stretch with the motion, not the still start: the preview's middle frame is the
        // moving picture
        let middle =
            image::DynamicImage::ImageLuma8(frame_of(&file, 1.5, &dir.path().join("mid.png")));
        let bars = frame_of(&clip, 2.0, &dir.path().join("bars.png"));
        let moving = frame_of(&clip, 6.0, &dir.path().join("moving.png"));
        let (to_bars, to_moving) = (luma_diff(&bars, &middle), luma_diff(&moving, &middle));
        assert!(
            to_moving < to_bars,
            "{db}: the preview's middle is the still start (diff {to_bars} to it, {to_moving} to the motion)"
        );
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_playback_refuses_missing_bad_expired_and_revoked_tokens() {
    let secret = "feed-test-secret-0123456789abcdef";
    for (pg, db) in databases().await {
        let dir = tempfile::tempdir().unwrap();
        let s = stack(dir.path(), &pg, |c| {
            c.packager.signed_playback = true;
            c.packager.playback_secret = Some(secret.into());
            c.transcode.captions = false;
        })
        .await;
        let clip = support::faststart_clip(dir.path(), "a.mp4", 320, 240, 3, 600);
        let id = s.whole(&std::fs::read(&clip).unwrap()).await;
        let m = s.settle(&id, Duration::from_secs(120)).await;
        assert_eq!(m["state"], "ready", "{db}: {m}");
        let signed = m["master_url"].as_str().unwrap().to_string();
        let (bare, token) = signed.split_once("?token=").expect("a signed master_url");
        let base = bare.rsplit_once('/').unwrap().0.to_string();

        // no token, a tampered one, one for another moment: 403, saying nothing more
        let (status, _, body) = fetch(bare).await;
        assert_eq!(status, 403, "{db}: an unsigned master");
        assert!(String::from_utf8_lossy(&body).contains("playback_refused"));
        let mut tampered = token.to_string();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(fetch(&format!("{bare}?token={tampered}")).await.0, 403);

        // the signed master: every URI in it carries the token, and they all play
        let (status, headers, body) = fetch(&signed).await;
        assert_eq!(status, 200, "{db}");
        assert!(
            headers["cache-control"]
                .to_str()
                .unwrap()
                .starts_with("private"),
            "{db}: a signed playlist is not for shared caches"
        );
        let master = match m3u8_rs::parse_playlist_res(&body).unwrap() {
            m3u8_rs::Playlist::MasterPlaylist(p) => p,
            other => panic!("{other:?}"),
        };
        let variant = &master.variants[0].uri;
        assert!(variant.contains("token="), "{db}: {variant}");
        let (status, _, body) = fetch(&format!("{base}/{variant}")).await;
        assert_eq!(status, 200, "{db}: {variant}");
        let media = match m3u8_rs::parse_playlist_res(&body).unwrap() {
            m3u8_rs::Playlist::MediaPlaylist(p) => p,
            other => panic!("{other:?}"),
        };
        let dir_of = |u: &str| {
            u.rsplit_once('/')
                .map_or(String::new(), |(d, _)| d.to_string())
        };
        let rung = format!("{base}/{}", dir_of(variant.split('?').next().unwrap()));
        let seg = &media.segments[0].uri;
        assert!(seg.contains("token="), "{db}: {seg}");
        assert_eq!(fetch(&format!("{rung}/{seg}")).await.0, 200, "{db}: {seg}");
        let bare_seg = seg.split('?').next().unwrap();
        assert_eq!(
            fetch(&format!("{rung}/{bare_seg}")).await.0,
            403,
            "{db}: an unsigned segment"
        );
        // posters stay public (feeds show them before anyone plays)
        assert_eq!(fetch(m["poster_url"].as_str().unwrap()).await.0, 200);

        // a short-lived token from POST /playback works, then expires
        let post = |path: &str, body: Value| {
            let r = s
                .http
                .post(format!("{}/v1/moments/{id}/{path}", s.base))
                .bearer_auth(&s.token)
                .json(&body);
            async move {
                let r = r.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        for bad in [
            json!({"ttl_secs": 0}),
            json!({"ttl_secs": 999_999}),
            json!({"ttl_secs": "x"}),
        ] {
            let (status, answer) = post("playback", bad.clone()).await;
            assert_eq!(status, 400, "{db}: {bad} → {answer}");
        }
        let (status, short) = post("playback", json!({"ttl_secs": 1})).await;
        assert_eq!(status, 200, "{db}: {short}");
        assert_eq!(short["signed"], true);
        let short_url = short["master_url"].as_str().unwrap().to_string();
        assert_eq!(fetch(&short_url).await.0, 200, "{db}: a fresh short token");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(fetch(&short_url).await.0, 403, "{db}: an expired token");

        // a second API node with the same secret and database honours the tokens…
        let other = match &pg {
            Some(pg) => Some(
                support::node(
                    dir.path(),
                    "api",
                    &[
                        ("MOMENTS_DATABASE_URL", pg.url.as_str()),
                        ("MOMENTS_SIGNED_PLAYBACK", "true"),
                        ("MOMENTS_PLAYBACK_SECRET", secret),
                    ],
                )
                .await,
            ),
            None => None,
        };
        let on_other = |url: &str| match &other {
            Some(n) => url.replacen(&s.base, &n.base, 1),
            None => url.to_string(),
        };
        if other.is_some() {
            assert_eq!(fetch(&on_other(&signed)).await.0, 200, "{db}: second node");
            assert_eq!(fetch(&on_other(bare)).await.0, 403, "{db}: second node");
        }

        // …and a revocation, within a second, on both
        let (status, answer) = post("revoke", json!({})).await;
        assert_eq!(status, 200, "{db}: {answer}");
        let t0 = Instant::now();
        for url in [signed.clone(), on_other(&signed)] {
            loop {
                let status = fetch(&url).await.0;
                if status == 403 {
                    break;
                }
                assert_eq!(status, 200);
                assert!(
                    t0.elapsed() < Duration::from_secs(1),
                    "{db}: {url} still plays {:?} after the revocation",
                    t0.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        eprintln!("{db}: revoked everywhere within {:?}", t0.elapsed());
        // a token issued after the revocation plays
        tokio::time::sleep(Duration::from_millis(5)).await;
        let fresh = s.moment(&id).await["master_url"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            fetch(&fresh).await.0,
            200,
            "{db}: a token after the revocation"
        );
        assert_eq!(fetch(&on_other(&fresh)).await.0, 200, "{db}");
        drop(other);
        s.stop().await;
    }
}
