#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn config(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    tweak(&mut c);
    c
}

fn limiter(c: &Config) -> (Arc<crate::metrics::Metrics>, Limiter) {
    let m = crate::metrics::Metrics::new("test");
    let l = Limiter::new(c, &m).unwrap();
    (m, l)
}

#[tokio::test]
async fn over_the_burst_a_user_gets_429_with_retry_after_and_others_are_untouched() {
    let c = config(|c| c.speech = Bucket::new("6/min", 3));
    let (m, l) = limiter(&c);
    for _ in 0..3 {
        l.take(Kind::Speech, "alice", 1).await.unwrap();
    }
    let err = l.take(Kind::Speech, "alice", 1).await.unwrap_err();
    let Error::Limited { retry_s, .. } = &err else {
        panic!("{err}")
    };
    assert!((9..=10).contains(retry_s), "one token per 10 s: {retry_s}");
    let api = ApiError::from(err);
    assert_eq!(api.status, 429);
    assert_eq!(api.code, "rate_limited");
    assert!(api.message.contains("ASR/TTS calls"), "{}", api.message);
    assert!(
        api.headers
            .iter()
            .any(|(k, v)| k == http::header::RETRY_AFTER
                && v.to_str().unwrap().parse::<u64>().is_ok())
    );
    // another user, another kind: their own buckets
    l.take(Kind::Speech, "bob", 1).await.unwrap();
    l.take(Kind::Requests, "alice", 1).await.unwrap();
    assert!(
        m.encode()
            .contains(r#"moments_rate_limited_total{kind="speech"} 1"#),
        "{}",
        m.encode()
    );
}

#[tokio::test]
async fn a_bucket_that_is_off_never_refuses() {
    let c = config(|c| c.uploads = Bucket::new("off", 1));
    let (_m, l) = limiter(&c);
    assert!(!l.is_on(Kind::Uploads));
    for _ in 0..1000 {
        l.take(Kind::Uploads, "alice", 1).await.unwrap();
    }
}

#[test]
fn bad_settings_are_refused_with_their_name() {
    for (tweak, want) in [
        (
            Box::new(|c: &mut Config| c.requests.rate = "fast".into()) as Box<dyn Fn(&mut Config)>,
            "limits.requests",
        ),
        (
            Box::new(|c: &mut Config| c.uploads.rate = "10/week".into()),
            "limits.uploads: invalid rate unit",
        ),
        (
            Box::new(|c: &mut Config| c.speech = Bucket::new("0/s", 1)),
            "above zero",
        ),
        (
            Box::new(|c: &mut Config| c.qa_sessions = Bucket::new("1/s", 0)),
            "above zero",
        ),
        (
            Box::new(|c: &mut Config| {
                c.upload_bytes = Bucket {
                    rate: "1MiB/s".into(),
                    burst: Some(BurstSize::Size("lots".into())),
                }
            }),
            "limits.upload_bytes: invalid number",
        ),
        (
            Box::new(|c: &mut Config| {
                c.uploads = Bucket {
                    rate: "5/min".into(),
                    burst: None,
                }
            }),
            "needs a burst",
        ),
        (
            Box::new(|c: &mut Config| c.redis_url = Some("http://127.0.0.1:6379".into())),
            "redis://",
        ),
    ] {
        let c = config(|c| tweak(c));
        let err = c.validate().unwrap_err();
        assert!(err.contains(want), "{err} (wanted {want})");
    }
    let ok = config(|c| {
        c.upload_bytes = Bucket {
            rate: "8MiB/s".into(),
            burst: Some(BurstSize::Size("16MiB".into())),
        }
    });
    assert_eq!(
        ok.upload_bytes.parse().unwrap(),
        Some((8.0 * 1048576.0, 16 << 20))
    );
    let toml_err = toml::from_str::<Config>("[requests]\nrate = \"1/s\"\nburst = 1\nspeed = 2\n")
        .unwrap_err()
        .to_string();
    assert!(toml_err.contains("speed"), "{toml_err}");
}

#[tokio::test]
async fn the_limit_holds_across_nodes_sharing_redis() {
    let Some((url, prefix)) = crate::testing::redis() else {
        return;
    };
    let c = config(|c| {
        c.redis_url = Some(url);
        c.redis_prefix = prefix;
        c.uploads = Bucket::new("1/h", 10);
    });
    // two nodes, each with its own connection, taking at once
    let (_m1, a) = limiter(&c);
    let (_m2, b) = limiter(&c);
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            node.take(Kind::Uploads, "alice", 1).await
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => allowed += 1,
            Err(Error::Limited { retry_s, .. }) => assert!(retry_s > 300, "{retry_s}"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(allowed, 10, "the burst, across both nodes together");
    // bob's bucket is his own
    a.take(Kind::Uploads, "bob", 1).await.unwrap();
    assert!(a.describe().starts_with("redis "), "{}", a.describe());
}

#[tokio::test]
async fn the_byte_throttle_slows_an_upload_to_its_rate_on_redis() {
    let Some((url, prefix)) = crate::testing::redis() else {
        return;
    };
    let c = config(|c| {
        c.redis_url = Some(url);
        c.redis_prefix = prefix;
        c.upload_bytes = Bucket {
            rate: "1MiB/s".into(),
            burst: Some(BurstSize::Size("256KiB".into())),
        };
    });
    let (_m, l) = limiter(&c);
    let start = Instant::now();
    // 1.25 MiB in 64 KiB pieces: the first 256 KiB at once, the rest at 1 MiB/s
    for _ in 0..20 {
        l.wait(Kind::UploadBytes, "alice", 64 << 10).await.unwrap();
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

#[tokio::test]
async fn redis_unreachable_fails_open_by_default_and_closed_when_asked() {
    let port = crate::testing::free_port();
    let down = format!("redis://127.0.0.1:{port}");
    let c = config(|c| {
        c.redis_url = Some(down.clone());
        c.redis_timeout_ms = 200;
        c.requests = Bucket::new("1/h", 1);
    });
    let (m, open) = limiter(&c);
    let start = Instant::now();
    for _ in 0..3 {
        open.take(Kind::Requests, "alice", 1).await.unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "each check is bounded"
    );
    assert!(
        m.encode()
            .contains(r#"moments_rate_limit_errors_total{kind="requests"} 3"#),
        "{}",
        m.encode()
    );

    let c = config(|c| {
        c.redis_url = Some(down);
        c.redis_timeout_ms = 200;
        c.fail_open = false;
    });
    let (_m, closed) = limiter(&c);
    let err = closed.take(Kind::Requests, "alice", 1).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    let api = ApiError::from(err);
    assert_eq!(api.status, 503, "never a 500");
    assert_eq!(api.code, "limiter_unavailable");
}
