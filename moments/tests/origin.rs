//! The HLS origin's memory: answers from the cache are the answers from the store — status,
//! headers and bytes — for whole objects, every kind of range, validators and HEAD; and an
//! object removed from storage stops being served once its entry is checked again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod support;

use std::time::Duration;

use reqwest::header::HeaderMap;

/// Status, headers (without `date`) and body of one request.
async fn answer(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut req = http.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let hm: HeaderMap = r.headers().clone();
    let mut hs: Vec<(String, String)> = hm
        .iter()
        .filter(|(k, _)| k.as_str() != "date")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    hs.sort();
    (status, hs, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_equal_the_stores_and_removed_objects_go() {
    let dir = tempfile::tempdir().unwrap();
    // one stack with the origin cache (checking entries again at once), and a second on the
    // same data without it
    let cached = support::start(dir.path(), |c| {
        c.packager.origin_cache_revalidate_secs = 0;
    })
    .await;
    let clip = support::faststart_clip(dir.path(), "clip.mp4", 1280, 720, 4, 3000);
    let id = cached.whole(&std::fs::read(&clip).unwrap()).await;
    let m = cached.settle(&id, Duration::from_secs(120)).await;
    assert_eq!(m["state"], "ready", "{m}");
    let plain = support::start(dir.path(), |c| {
        c.packager.origin_cache_bytes = 0;
    })
    .await;
    let seg = format!("hls/{id}/720p/seg_00001.m4s");
    let etag = cached
        .http
        .get(format!("{}/{seg}", cached.base))
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    let weak = format!("W/{etag}");
    let list = format!("\"other\", {etag}");
    let objects = [
        seg.clone(),
        format!("hls/{id}/720p/init.mp4"),
        format!("hls/{id}/poster.jpg"),
        format!("hls/{id}/thumbs.jpg"),
        format!("hls/{id}/720p/index.m3u8"),
        format!("hls/{id}/master.m3u8"),
        format!("hls/{id}/720p/seg_99999.m4s"),
    ];
    let variants: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("range", "bytes=0-99")],
        vec![("range", "bytes=100-")],
        vec![("range", "bytes=-50")],
        vec![("range", "bytes=999999999-")],
        vec![("range", "bytes=abc")],
        vec![("range", "bytes=0-1,5-6")],
        vec![("if-none-match", &etag)],
        vec![("if-none-match", &weak)],
        vec![("if-none-match", &list)],
        vec![("if-none-match", "\"nope\"")],
        vec![("if-none-match", "*")],
        vec![("origin", "https://app.example")],
    ];
    for obj in &objects {
        for h in &variants {
            for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
                // twice from the caching stack: the first may fill the cache, the second is
                // answered from it
                let a1 = answer(
                    &cached.http,
                    method.clone(),
                    &format!("{}/{obj}", cached.base),
                    h,
                )
                .await;
                let a2 = answer(
                    &cached.http,
                    method.clone(),
                    &format!("{}/{obj}", cached.base),
                    h,
                )
                .await;
                let b = answer(
                    &plain.http,
                    method.clone(),
                    &format!("{}/{obj}", plain.base),
                    h,
                )
                .await;
                assert_eq!(a1, b, "{method} {obj} {h:?}: first answer");
                assert_eq!(a2, b, "{method} {obj} {h:?}: cached answer");
            }
        }
    }
    // the cache really held the immutable objects (segment, init segment, thumbnail sprite;
    // the poster can change, so it is not one of them)
    let origin_stats = support::origin_cache(&cached);
    assert!(origin_stats.entries >= 3, "{origin_stats:?}");

    // removed from storage: gone at the next request (entries are checked at once here)
    cached
        .store()
        .delete(&common::store::Key::new(seg.clone()).unwrap())
        .await
        .unwrap();
    let r = cached
        .http
        .get(format!("{}/{seg}", cached.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    plain.stop().await;
    cached.stop().await;
}
