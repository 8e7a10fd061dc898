//! The object-store contract, run against the local directory store and against a real
//! S3-compatible server (s3s-fs on loopback).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::io;

use bytes::Bytes;
use common::store::{ByteRange, ByteStream, Error, Key, Local, ObjectStore, PutOptions};
use common::testing::S3Server;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

async fn read_all(store: &dyn ObjectStore, k: &Key, range: Option<ByteRange>) -> Vec<u8> {
    let obj = store.get(k, range).await.unwrap();
    let chunks: Vec<Bytes> = obj.body.try_collect().await.unwrap();
    chunks.concat()
}

/// A deterministic pseudo-random body of `len` bytes in `chunk`-sized pieces.
fn pattern(len: usize, chunk: usize) -> (ByteStream, String) {
    let mut data = vec![0u8; len];
    let mut x: u32 = 0x1234_5678;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let digest = hex::encode(Sha256::digest(&data));
    let chunks: Vec<io::Result<Bytes>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    (Box::pin(futures::stream::iter(chunks)), digest)
}

async fn contract(store: &dyn ObjectStore, large: usize) {
    store.check().await.unwrap();

    // put / get / head with headers
    let opts = PutOptions {
        content_type: Some("application/vnd.apple.mpegurl".into()),
        cache_control: Some("max-age=2".into()),
    };
    let k = key("hls/abc/master.m3u8");
    let meta = store
        .put_bytes(&k, Bytes::from_static(b"#EXTM3U\nhello\n"), &opts)
        .await
        .unwrap();
    assert_eq!(meta.size, 14);
    assert_eq!(read_all(store, &k, None).await, b"#EXTM3U\nhello\n");
    let head = store.head(&k).await.unwrap();
    assert_eq!(head.size, 14);
    assert_eq!(
        head.content_type.as_deref(),
        Some("application/vnd.apple.mpegurl")
    );
    assert_eq!(head.cache_control.as_deref(), Some("max-age=2"));
    assert!(head.etag.is_some());

    // overwrite replaces, and the validator changes
    store
        .put_bytes(&k, Bytes::from_static(b"#EXTM3U\nbye\n"), &opts)
        .await
        .unwrap();
    assert_eq!(read_all(store, &k, None).await, b"#EXTM3U\nbye\n");
    assert_ne!(store.head(&k).await.unwrap().etag, head.etag);

    // ranges
    assert_eq!(
        read_all(store, &k, Some(ByteRange::Between(1, 3))).await,
        b"EXT"
    );
    assert_eq!(
        read_all(store, &k, Some(ByteRange::From(8))).await,
        b"bye\n"
    );
    assert_eq!(
        read_all(store, &k, Some(ByteRange::Suffix(4))).await,
        b"bye\n"
    );
    let ranged = store
        .get(&k, Some(ByteRange::Between(2, 100)))
        .await
        .unwrap();
    assert_eq!(ranged.range, Some((2, 11)));
    assert_eq!(ranged.meta.size, 12);
    assert!(matches!(
        store.get(&k, Some(ByteRange::From(12))).await,
        Err(Error::RangeNotSatisfiable { size: 12 })
    ));

    // missing objects
    let missing = key("hls/abc/nope.m4s");
    assert!(matches!(
        store.head(&missing).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.get(&missing, None).await,
        Err(Error::NotFound(_))
    ));

    // list by prefix (not by directory)
    for name in [
        "hls/abc/720p/a.m4s",
        "hls/abc/720p/b.m4s",
        "hls/abd/x",
        "uploads/abc",
    ] {
        store
            .put_bytes(&key(name), Bytes::from_static(b"x"), &PutOptions::default())
            .await
            .unwrap();
    }
    let listed: Vec<String> = store
        .list("hls/abc/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        listed,
        [
            "hls/abc/720p/a.m4s",
            "hls/abc/720p/b.m4s",
            "hls/abc/master.m3u8"
        ]
    );
    let listed: Vec<String> = store
        .list("hls/ab")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(listed.len(), 4);
    assert!(store.list("nothing/").await.unwrap().is_empty());

    // delete is idempotent
    store.delete(&key("hls/abd/x")).await.unwrap();
    store.delete(&key("hls/abd/x")).await.unwrap();
    assert!(matches!(
        store.head(&key("hls/abd/x")).await,
        Err(Error::NotFound(_))
    ));

    // a large streamed body (multipart on S3) arrives intact
    let big = key("uploads/big.bin");
    let (body, digest) = pattern(large, 64 * 1024 + 7);
    let meta = store.put(&big, body, &PutOptions::default()).await.unwrap();
    assert_eq!(meta.size, large as u64);
    let back = read_all(store, &big, None).await;
    assert_eq!(hex::encode(Sha256::digest(&back)), digest);
    let tail = read_all(
        store,
        &big,
        Some(ByteRange::Between(large as u64 - 10, large as u64 + 10)),
    )
    .await;
    assert_eq!(tail, back[large - 10..]);

    // a body that fails midway leaves no object behind (and an old one untouched)
    let failing = key("uploads/failing.bin");
    for _ in 0..2 {
        let chunks: Vec<io::Result<Bytes>> = vec![
            Ok(Bytes::from(vec![1u8; 3 * 1024 * 1024])),
            Ok(Bytes::from(vec![2u8; 3 * 1024 * 1024])),
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "client went away",
            )),
        ];
        let err = store
            .put(
                &failing,
                Box::pin(futures::stream::iter(chunks)),
                &PutOptions::default(),
            )
            .await;
        assert!(err.is_err());
        assert!(matches!(
            store.head(&failing).await,
            Err(Error::NotFound(_))
        ));
    }
    let err = store
        .put(
            &big,
            Box::pin(futures::stream::iter(vec![
                Ok(Bytes::from_static(b"partial")),
                Err(io::Error::other("boom")),
            ])),
            &PutOptions::default(),
        )
        .await;
    assert!(err.is_err());
    assert_eq!(store.head(&big).await.unwrap().size, large as u64);
}

#[tokio::test]
async fn local_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Local::open(dir.path().join("objects")).await.unwrap();
    contract(&store, 12 * 1024 * 1024 + 3).await;
    // no temporary files or sidecars leak into listings
    let all = store.list("").await.unwrap();
    assert!(
        all.iter()
            .all(|m| !m.key.contains(".tmp") && !m.key.starts_with('.'))
    );
}

#[tokio::test]
async fn s3_store_contract() {
    let server = S3Server::start();
    let store = server
        .store("moments", "test-prefix", 5 * 1024 * 1024)
        .await;
    // 12 MiB with 5 MiB parts: a three-part multipart upload
    contract(&store, 12 * 1024 * 1024 + 3).await;
    assert_eq!(store.describe(), "s3://moments/test-prefix");
    // objects really live under the prefix in the bucket
    let raw = store
        .client()
        .list_objects_v2()
        .bucket("moments")
        .send()
        .await
        .unwrap();
    assert!(
        raw.contents()
            .iter()
            .all(|o| o.key().unwrap_or("").starts_with("test-prefix/"))
    );
}

#[tokio::test]
async fn s3_unreachable_fails_the_check() {
    let port = common::testing::free_port();
    let store = common::store::S3::connect(common::store::s3::Options {
        bucket: "b".into(),
        prefix: String::new(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: "us-east-1".into(),
        path_style: true,
        part_size: 5 * 1024 * 1024,
        credentials: Some(("a".into(), "b".into())),
    })
    .await
    .unwrap();
    assert!(store.check().await.is_err());
}

#[tokio::test]
async fn local_store_writes_nothing_outside_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let store = Local::open(root.clone()).await.unwrap();
    for bad in [
        "../escape",
        "a/../../escape",
        "/tmp/escape",
        "..",
        "a/./b",
        ".meta/x",
    ] {
        assert!(Key::new(bad).is_err(), "{bad}");
    }
    // A listing prefix cannot walk out of the root either.
    assert!(store.list("../").await.is_err());
    // Only the root exists beside our temp dir contents.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
}

#[tokio::test]
async fn local_put_is_invisible_until_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Local::open(dir.path().to_path_buf()).await.unwrap());
    let k = key("uploads/slow.bin");
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
    let body: ByteStream = Box::pin(tokio_stream_from(rx));
    let s2 = store.clone();
    let k2 = k.clone();
    let task = tokio::spawn(async move { s2.put(&k2, body, &PutOptions::default()).await });
    tx.send(Ok(Bytes::from_static(b"first half ")))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(matches!(store.head(&k).await, Err(Error::NotFound(_))));
    assert!(store.list("uploads/").await.unwrap().is_empty());
    tx.send(Ok(Bytes::from_static(b"second half")))
        .await
        .unwrap();
    drop(tx);
    task.await.unwrap().unwrap();
    assert_eq!(read_all(&*store, &k, None).await, b"first half second half");
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
) -> impl futures::Stream<Item = io::Result<Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
