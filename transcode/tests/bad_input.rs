//! Bad input never crashes or hangs the worker: each file ends `failed` with a reason a person
//! can read (or `ready` where what remains really is playable), and the next job still runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use common::moment::State;

#[tokio::test]
async fn each_bad_file_fails_with_a_clear_reason_and_the_worker_goes_on() {
    let env = support::env().await;
    let dir = env.dir.path().to_path_buf();
    let p = |n: &str| dir.join(n);

    std::fs::write(p("empty.mp4"), b"").unwrap();

    support::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240",
        "-frames:v",
        "1",
        p("photo.jpg").to_str().unwrap(),
    ]);
    std::fs::rename(p("photo.jpg"), p("photo.mp4")).unwrap();

    support::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=duration=2",
        "-c:a",
        "aac",
        "-f",
        "mp4",
        p("voice.mp4").to_str().unwrap(),
    ]);

    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(p("noise.mp4"), noise).unwrap();

    let good = support::clip(&dir, "good.mp4", 640, 360, 3.0, 30, true);
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(p("truncated.mp4"), &bytes[..bytes.len() / 2]).unwrap();

    support::ffmpeg(&[
        "-i",
        good.to_str().unwrap(),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        p("fast.mp4").to_str().unwrap(),
    ]);
    let mut fast = std::fs::read(p("fast.mp4")).unwrap();
    for b in &mut fast[40..200] {
        *b = 0xff;
    }
    std::fs::write(p("corrupt.mp4"), fast).unwrap();

    support::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=30",
        "-frames:v",
        "1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        p("oneframe.mp4").to_str().unwrap(),
    ]);

    support::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=red:size=9000x600:rate=1:duration=1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        p("huge.mp4").to_str().unwrap(),
    ]);

    support::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x64:rate=1:duration=700",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        p("long.mp4").to_str().unwrap(),
    ]);

    // (file, what the reason must say; None = may also come out ready)
    let cases: &[(&str, Option<&str>)] = &[
        ("empty.mp4", Some("the uploaded file is empty")),
        ("photo.mp4", Some("still image")),
        ("voice.mp4", Some("no video stream")),
        ("noise.mp4", Some("not a playable video")),
        ("truncated.mp4", Some("not a playable video")),
        ("corrupt.mp4", None),
        ("oneframe.mp4", Some("too short")),
        ("huge.mp4", Some("9000×600")),
        ("long.mp4", Some("limit is 10m00s")),
    ];
    let mut ids = Vec::new();
    for (file, _) in cases {
        ids.push(support::submit(&env, "alice", &p(file)).await);
    }
    let good_id = support::submit(&env, "alice", &good).await;

    for ((file, reason), id) in cases.iter().zip(&ids) {
        let m = support::wait_final(&env, id, Duration::from_secs(120)).await;
        match reason {
            Some(r) => {
                assert_eq!(m.state, State::Failed, "{file} should fail");
                let err = m.error.clone().unwrap_or_default();
                assert!(
                    err.contains(r),
                    "{file}: reason {err:?} should mention {r:?}"
                );
                // permanent: not retried
                let job =
                    sqlx::query_scalar::<_, i64>("SELECT attempts FROM jobs WHERE dedup_key = $1")
                        .bind(format!("transcode:{id}"))
                        .fetch_one(env.db.pool())
                        .await
                        .unwrap();
                assert_eq!(job, 1, "{file}: bad input is not retried");
            }
            None => {
                if m.state == State::Failed {
                    assert!(
                        m.error.clone().unwrap_or_default().len() > 10,
                        "{file}: {:?}",
                        m.error
                    );
                }
            }
        }
        eprintln!("{file}: {:?} {:?}", m.state, m.error);
    }
    let m = support::wait_final(&env, &good_id, Duration::from_secs(120)).await;
    assert_eq!(m.state, State::Ready, "the worker went on: {:?}", m.error);
}
