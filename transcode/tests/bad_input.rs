//! A malformed-media corpus (≥ 40 files, all made here from lavfi sources): every file ends
//! `failed` with a reason a person can read, or `ready` with a ladder that really decodes;
//! nothing crashes or hangs the worker (each job has a time limit), the worker's peak memory is
//! measured for each file and stays under a bound, and the next job still runs.
//!
//! The table it prints (`cargo nextest run -p transcode --test bad_input --no-capture`) is the
//! README's "Malformed media" figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::moment::State;

/// What a file must come to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// `failed`, the reason containing this text, and not retried.
    Fails(&'static str),
    /// `failed` with some reason, or `ready` and playable: a damaged file that may still hold
    /// a playable video.
    Either,
    /// `ready`, and its ladder decodes: a valid file in another container or codec.
    Plays,
}

/// The worker's peak resident memory for one file (the test process holds the worker) may not
/// pass this. The largest file decodes 8192×4320 frames (the `max_dimension` limit).
const PEAK_LIMIT_MIB: u64 = 1536;

/// Resets the process's peak resident set (Linux `clear_refs` 5).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (/proc/self/clear_refs)");
}

/// The process's peak resident set since the last reset, in MiB.
fn peak_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb / 1024
}

fn lavfi(out: &Path, source: &str, codec: &[&str]) -> PathBuf {
    let mut args = vec!["-f", "lavfi", "-i", source];
    args.extend_from_slice(codec);
    let out_s = out.to_str().unwrap();
    args.push(out_s);
    support::ffmpeg(&args);
    out.to_path_buf()
}

/// Offset of the first box of type `kind` (its size field), searched as bytes.
fn find(bytes: &[u8], kind: &[u8; 4]) -> usize {
    bytes
        .windows(4)
        .position(|w| w == kind)
        .unwrap_or_else(|| panic!("no {} box", String::from_utf8_lossy(kind)))
        - 4
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// `mvhd`/`mdhd` version-0 fields: (timescale offset, duration offset) from the box start.
fn time_fields(bytes: &[u8], box_at: usize) -> (usize, usize) {
    assert_eq!(bytes[box_at + 8], 0, "a version-0 header box");
    (box_at + 20, box_at + 24)
}

/// Every `kind` box's offset.
fn find_all(bytes: &[u8], kind: &[u8; 4]) -> Vec<usize> {
    bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| w == kind)
        .map(|(i, _)| i - 4)
        .collect()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The corpus: (file name, bytes written to it, what it must come to).
fn corpus(dir: &Path) -> Vec<(String, PathBuf, Want)> {
    let p = |n: &str| dir.join(n);
    let mut files: Vec<(String, PathBuf, Want)> = Vec::new();
    let mut add = |name: &str, bytes: &[u8], want: Want| {
        std::fs::write(p(name), bytes).unwrap();
        files.push((name.to_string(), p(name), want));
    };

    // the sources everything else is cut from: moov at the end, and moov first (faststart)
    let good = support::clip(dir, "src.mp4", 320, 240, 2.0, 30, true);
    let good = std::fs::read(good).unwrap();
    let fast = p("src-fast.mp4");
    support::ffmpeg(&[
        "-i",
        p("src.mp4").to_str().unwrap(),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        fast.to_str().unwrap(),
    ]);
    let fast = std::fs::read(fast).unwrap();

    // not video at all
    add("empty.mp4", b"", Want::Fails("the uploaded file is empty"));
    add(
        "text.mp4",
        b"hello, this is not a video\n",
        Want::Fails("not a playable video"),
    );
    add(
        "zeros.mp4",
        &vec![0u8; 1 << 20],
        Want::Fails("not a playable video"),
    );
    let mut x = XorShift(0x9e37_79b9_7f4a_7c15);
    let noise: Vec<u8> = (0..256 * 1024).map(|_| x.next() as u8).collect();
    add("noise.mp4", &noise, Want::Fails("not a playable video"));
    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend(vec![0u8; 4096]);
    add("zip.mp4", &zip, Want::Fails("not a playable video"));

    // image only, audio only
    let jpg = lavfi(
        &p("photo.jpg"),
        "testsrc2=size=320x240",
        &["-frames:v", "1"],
    );
    add(
        "photo.mp4",
        &std::fs::read(jpg).unwrap(),
        Want::Fails("still image"),
    );
    let png = lavfi(
        &p("photo.png"),
        "testsrc2=size=320x240",
        &["-frames:v", "1"],
    );
    add(
        "photo-png.mp4",
        &std::fs::read(png).unwrap(),
        Want::Fails("still image"),
    );
    let aac = lavfi(
        &p("a.m4a"),
        "sine=duration=2",
        &["-c:a", "aac", "-f", "mp4"],
    );
    add(
        "voice.mp4",
        &std::fs::read(aac).unwrap(),
        Want::Fails("no video stream"),
    );
    let wav = lavfi(&p("a.wav"), "sine=duration=2", &[]);
    add(
        "voice-wav.mp4",
        &std::fs::read(wav).unwrap(),
        Want::Fails("no video stream"),
    );

    // truncations at many offsets: moov-last files lose their index (no video left), faststart
    // files keep it and lose media
    for cut in [
        8,
        100,
        1000,
        4096,
        good.len() / 10,
        good.len() / 4,
        good.len() / 2,
        good.len() * 3 / 4,
    ] {
        add(
            &format!("cut-{cut}.mp4"),
            &good[..cut],
            Want::Fails("not a playable video"),
        );
    }
    for cut in [good.len() * 9 / 10, good.len() - 1] {
        add(&format!("cut-{cut}.mp4"), &good[..cut], Want::Either);
    }
    for cut in [
        64,
        400,
        fast.len() / 10,
        fast.len() / 2,
        fast.len() * 9 / 10,
        fast.len() - 1,
    ] {
        add(&format!("fast-cut-{cut}.mp4"), &fast[..cut], Want::Either);
    }

    // byte flips: in the header boxes (moov), and in the middle of the media data
    let moov = find(&fast, b"moov");
    let mdat = find(&fast, b"mdat");
    for seed in 1..=4u64 {
        let mut f = fast.clone();
        let mut x = XorShift(seed * 0x2545_f491_4f6c_dd1d);
        for _ in 0..16 {
            let at = moov + 8 + (x.next() as usize) % (mdat - moov - 8);
            f[at] ^= 1 << (x.next() % 8);
        }
        add(&format!("flip-header-{seed}.mp4"), &f, Want::Either);
    }
    for seed in 1..=2u64 {
        let mut f = fast.clone();
        let mut x = XorShift(seed * 0x9e37_79b9);
        let body = mdat + 8..fast.len();
        for _ in 0..64 {
            let at = body.start + (x.next() as usize) % body.len();
            f[at] = x.next() as u8;
        }
        add(&format!("flip-middle-{seed}.mp4"), &f, Want::Either);
    }
    let mut f = fast.clone();
    f[40..200].fill(0xff);
    add("smeared.mp4", &f, Want::Either);

    // header fields that lie
    let mut f = fast.clone();
    let mvhd = find(&f, b"mvhd");
    let (ts_at, dur_at) = time_fields(&f, mvhd);
    let ten_hours = get_u32(&f, ts_at) * 36_000;
    put_u32(&mut f, dur_at, ten_hours);
    for mdhd in find_all(&fast, b"mdhd") {
        let (ts_at, dur_at) = time_fields(&f, mdhd);
        let v = get_u32(&f, ts_at).saturating_mul(36_000);
        put_u32(&mut f, dur_at, v);
    }
    add("ten-hours.mp4", &f, Want::Either);
    let mdhd = find(&fast, b"mdhd");
    let (ts_at, _) = time_fields(&fast, mdhd);
    let mut f = fast.clone();
    put_u32(&mut f, ts_at, 0);
    add("timescale-zero.mp4", &f, Want::Either);
    let mut f = fast.clone();
    put_u32(&mut f, ts_at, 1);
    add("timescale-one.mp4", &f, Want::Either);
    let mut f = fast.clone();
    let stsz = find(&f, b"stsz");
    put_u32(&mut f, stsz + 16, 0x7fff_ffff);
    add("stsz-count-huge.mp4", &f, Want::Either);
    let mut f = fast.clone();
    let stco = find(&f, b"stco");
    put_u32(&mut f, stco + 16, 0xffff_ff00);
    add("stco-past-end.mp4", &f, Want::Either);
    let mut f = fast.clone();
    put_u32(&mut f, moov, 0xffff_fff0);
    add("moov-size-huge.mp4", &f, Want::Either);
    let mut f = good.clone();
    let mdat = find(&f, b"mdat");
    put_u32(&mut f, mdat, 1); // a 64-bit size follows
    f[mdat + 8..mdat + 16].copy_from_slice(&(1u64 << 62).to_be_bytes());
    add("mdat-largesize.mp4", &f, Want::Either);
    let mut f = fast.clone();
    put_u32(&mut f, moov + 8, 0); // the first child box claims size 0 (to the end of the file)
    add("box-size-zero.mp4", &f, Want::Either);

    // frame rates: absurd, one frame, too long
    let fps1000 = lavfi(
        &p("fps1000.mp4"),
        "testsrc2=size=160x120:rate=1000:duration=2",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    add(
        "fps-1000.mp4",
        &std::fs::read(fps1000).unwrap(),
        Want::Either,
    );
    let one = lavfi(
        &p("one.mp4"),
        "testsrc2=size=320x240:rate=30",
        &["-frames:v", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p"],
    );
    add(
        "oneframe.mp4",
        &std::fs::read(one).unwrap(),
        Want::Fails("too short"),
    );
    let long = lavfi(
        &p("long-src.mp4"),
        "testsrc2=size=64x64:rate=1:duration=700",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    add(
        "long.mp4",
        &std::fs::read(long).unwrap(),
        Want::Fails("limit is 10m00s"),
    );

    // dimensions: past the limit, and a decode bomb at the limit (a few kB that decode into
    // 35-megapixel frames)
    let huge = lavfi(
        &p("huge-src.mp4"),
        "color=red:size=9000x600:rate=1:duration=1",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    add(
        "huge.mp4",
        &std::fs::read(huge).unwrap(),
        Want::Fails("9000×600"),
    );
    let bomb = lavfi(
        &p("bomb-src.mp4"),
        "color=black:size=8192x4320:rate=30:duration=1",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    add(
        "bomb-8192x4320.mp4",
        &std::fs::read(bomb).unwrap(),
        Want::Either,
    );

    // valid files in other containers and codecs, named .mp4
    for (name, codec) in [
        (
            "h264.mkv",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-f",
                "matroska",
            ][..],
        ),
        (
            "h264.ts",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-f",
                "mpegts",
            ][..],
        ),
        (
            "vp9.webm",
            &[
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-f",
                "webm",
            ][..],
        ),
        (
            "hevc.mp4",
            &[
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-x265-params",
                "log-level=error",
                "-pix_fmt",
                "yuv420p",
                "-f",
                "mp4",
            ][..],
        ),
        (
            "mjpeg.avi",
            &[
                "-c:v", "mjpeg", "-q:v", "5", "-pix_fmt", "yuvj420p", "-f", "avi",
            ][..],
        ),
        ("mpeg4.avi", &["-c:v", "mpeg4", "-f", "avi"][..]),
    ] {
        let src = lavfi(
            &p(&format!("src-{name}")),
            "testsrc2=size=320x240:rate=25:duration=2",
            codec,
        );
        add(
            &format!("{name}.mp4"),
            &std::fs::read(src).unwrap(),
            Want::Plays,
        );
    }
    let gif = lavfi(
        &p("anim.gif"),
        "testsrc2=size=160x120:rate=10:duration=2",
        &["-f", "gif"],
    );
    add("anim-gif.mp4", &std::fs::read(gif).unwrap(), Want::Either);

    files
}

/// A ready moment's ladder decodes: ffprobe reads frames from its lowest rendition.
fn assert_plays(env: &support::Env, id: &str, file: &str) -> usize {
    let hls = env.dir.path().join("objects").join("hls").join(id);
    let master = std::fs::read_to_string(hls.join("master.m3u8"))
        .unwrap_or_else(|e| panic!("{file}: ready but no master playlist: {e}"));
    let rendition = master
        .lines()
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("{file}: a master without variants:\n{master}"));
    let probe = support::ffprobe(
        hls.join(rendition).to_str().unwrap(),
        &["-count_frames", "-select_streams", "v:0", "-show_streams"],
    );
    let frames: usize = probe["streams"][0]["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(frames > 0, "{file}: its ladder decodes to no frames");
    frames
}

#[tokio::test]
async fn a_malformed_media_corpus_fails_cleanly_or_plays_and_memory_stays_bounded() {
    let env = support::env_with(
        None,
        transcode::Config {
            job_time_limit_secs: 90,
            ..support::transcode_config()
        },
    )
    .await;
    let dir = env.dir.path().join("corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let files = corpus(&dir);
    assert!(files.len() >= 40, "the corpus has {} files", files.len());

    let mut table = vec![format!(
        "{:<28} {:>9} {:>7} {:>6} {:>9}  reason",
        "file", "bytes", "state", "secs", "peak MiB"
    )];
    let mut worst = (0, String::new());
    for (name, path, want) in &files {
        reset_peak();
        let t0 = Instant::now();
        let id = support::submit(&env, "alice", path).await;
        let m = support::wait_final(&env, &id, Duration::from_secs(240)).await;
        let secs = t0.elapsed().as_secs_f64();
        let peak = peak_mib();
        let err = m.error.clone().unwrap_or_default();
        match (want, m.state) {
            (Want::Fails(reason), State::Failed) => {
                assert!(
                    err.contains(reason),
                    "{name}: reason {err:?} should mention {reason:?}"
                );
                let attempts =
                    sqlx::query_scalar::<_, i64>("SELECT attempts FROM jobs WHERE dedup_key = $1")
                        .bind(format!("transcode:{id}"))
                        .fetch_one(env.db.pool())
                        .await
                        .unwrap();
                assert_eq!(attempts, 1, "{name}: bad input is not retried");
            }
            (Want::Either, State::Failed) => {
                assert!(
                    err.len() > 10 && !err.contains("panic"),
                    "{name}: reason {err:?}"
                );
            }
            (Want::Either | Want::Plays, State::Ready) => {
                assert_plays(&env, &id, name);
            }
            (want, state) => panic!("{name}: wanted {want:?}, got {state:?} ({err:?})"),
        }
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let reason: String = err.chars().take(70).collect();
        table.push(format!(
            "{name:<28} {bytes:>9} {:>7} {secs:>6.1} {peak:>9}  {reason}",
            format!("{:?}", m.state).to_lowercase()
        ));
        if peak > worst.0 {
            worst = (peak, name.clone());
        }
    }
    // the worker goes on after all of it
    let good = support::clip(env.dir.path(), "after.mp4", 320, 240, 2.0, 30, true);
    let id = support::submit(&env, "alice", &good).await;
    let m = support::wait_final(&env, &id, Duration::from_secs(120)).await;
    assert_eq!(m.state, State::Ready, "the worker went on: {:?}", m.error);

    eprintln!("{}", table.join("\n"));
    eprintln!(
        "{} files; worst peak resident memory {} MiB ({}), limit {PEAK_LIMIT_MIB} MiB",
        files.len(),
        worst.0,
        worst.1
    );
    assert!(
        worst.0 <= PEAK_LIMIT_MIB,
        "peak memory {} MiB on {} passes {PEAK_LIMIT_MIB} MiB",
        worst.0,
        worst.1
    );
}
