//! The transcoder's byte stream over a source that is still being written: reads stop at the
//! durable extent and wait for more, seeking anywhere is allowed (reading past what arrived
//! waits), a source that disappears or stalls stops the reader with that reason, and remote
//! pieces (a real S3 server) read the same bytes as a local file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::store::{Extent, Growing, Key, Local, Piece, PutOptions, Store};
use tokio_util::sync::CancellationToken;
use transcode::source::{Policy, Reader, Stop};

/// A growing object the test controls: the extent it answers is whatever the test last set.
#[derive(Clone, Default)]
struct Manual(Arc<Mutex<Option<Extent>>>);

#[async_trait]
impl Growing for Manual {
    async fn extent(&self, _key: &Key) -> Result<Option<Extent>, common::store::Error> {
        Ok(self.0.lock().unwrap().clone())
    }
}

fn extent(key: &Key, durable: u64, length: u64) -> Extent {
    Extent {
        length,
        durable,
        complete: durable == length,
        pieces: vec![Piece {
            key: key.clone(),
            offset: 0,
            size: durable,
        }],
        updated_ms: 0,
    }
}

fn policy(stall: Duration) -> Policy {
    Policy {
        stall,
        yield_after: None,
        max_streaming: Duration::from_secs(60),
        poll: Duration::from_millis(20),
    }
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_wait_for_durable_bytes_and_seeks_past_them_wait_too() {
    let dir = tempfile::tempdir().unwrap();
    let store: Store = Arc::new(Local::open(dir.path().to_path_buf()).await.unwrap());
    let key = Key::new("uploads/abc").unwrap();
    let path = store.local_path(&key).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let all = data(300_000);
    // bytes past the durable offset are on disk but not durable: never read
    std::fs::write(&path, &all[..150_000]).unwrap();
    let growing = Manual::default();
    *growing.0.lock().unwrap() = Some(extent(&key, 100_000, all.len() as u64));
    let mut reader = Reader::open(
        store.clone(),
        key.clone(),
        extent(&key, 100_000, all.len() as u64),
        Some(Arc::new(growing.clone())),
        None,
        policy(Duration::from_secs(30)),
        CancellationToken::new(),
        None,
    );
    let monitor = reader.monitor();
    let grower = {
        let (growing, key, path, all) = (growing.clone(), key.clone(), path.clone(), all.clone());
        tokio::spawn(async move {
            for durable in [150_000u64, 220_000, 300_000] {
                tokio::time::sleep(Duration::from_millis(300)).await;
                std::fs::write(&path, &all[..durable as usize]).unwrap();
                *growing.0.lock().unwrap() = Some(extent(&key, durable, 300_000));
            }
        })
    };
    let handle = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut got = vec![0u8; 100_000];
        reader.read_exact(&mut got).unwrap();
        let first = started.elapsed();
        // a seek past what has arrived is fine; the read there waits
        assert_eq!(reader.seek(SeekFrom::End(-10)).unwrap(), 299_990);
        let mut tail = [0u8; 10];
        reader.read_exact(&mut tail).unwrap();
        let tail_at = started.elapsed();
        // backwards inside what has arrived, at once
        reader.seek(SeekFrom::Start(100_000)).unwrap();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        (got, first, tail, tail_at, rest)
    });
    let (got, first, tail, tail_at, rest) = handle.await.unwrap();
    grower.await.unwrap();
    assert_eq!(got, all[..100_000]);
    assert!(
        first < Duration::from_millis(250),
        "durable bytes come at once: {first:?}"
    );
    assert_eq!(tail, all[299_990..]);
    assert!(
        tail_at >= Duration::from_millis(850),
        "the end was read only once it was durable ({tail_at:?})"
    );
    assert_eq!(rest, all[100_000..]);
    assert!(monitor.complete());
    assert_eq!(monitor.stop(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_goes_away_or_stalls_stops_the_reader_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store: Store = Arc::new(Local::open(dir.path().to_path_buf()).await.unwrap());
    let key = Key::new("uploads/gone").unwrap();
    let path = store.local_path(&key).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data(1000)).unwrap();

    // abandoned: the upload disappears while the reader waits
    let growing = Manual::default();
    *growing.0.lock().unwrap() = Some(extent(&key, 1000, 5000));
    let mut reader = Reader::open(
        store.clone(),
        key.clone(),
        extent(&key, 1000, 5000),
        Some(Arc::new(growing.clone())),
        None,
        policy(Duration::from_secs(30)),
        CancellationToken::new(),
        None,
    );
    let monitor = reader.monitor();
    let g = growing.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        *g.0.lock().unwrap() = None;
    });
    let err = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 2000];
        reader.read_exact(&mut buf).unwrap_err()
    })
    .await
    .unwrap();
    assert!(err.to_string().contains("abandoned"), "{err}");
    assert_eq!(monitor.stop(), Some(Stop::Gone));

    // stalled: nothing new for the stall time
    *growing.0.lock().unwrap() = Some(extent(&key, 1000, 5000));
    let mut reader = Reader::open(
        store.clone(),
        key.clone(),
        extent(&key, 1000, 5000),
        Some(Arc::new(growing.clone())),
        None,
        policy(Duration::from_millis(300)),
        CancellationToken::new(),
        None,
    );
    let monitor = reader.monitor();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        reader.seek(SeekFrom::Start(1000)).unwrap();
        reader.read(&mut [0u8; 10]).unwrap_err()
    })
    .await
    .unwrap();
    assert_eq!(
        monitor.stop(),
        Some(Stop::Stalled(Duration::from_millis(300)))
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // cancelled: the job's token stops a waiting read at once
    let cancel = CancellationToken::new();
    let mut reader = Reader::open(
        store.clone(),
        key.clone(),
        extent(&key, 1000, 5000),
        Some(Arc::new(growing.clone())),
        None,
        policy(Duration::from_secs(30)),
        cancel.clone(),
        None,
    );
    let monitor = reader.monitor();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    tokio::task::spawn_blocking(move || {
        reader.seek(SeekFrom::Start(4000)).unwrap();
        reader.read(&mut [0u8; 10]).unwrap_err()
    })
    .await
    .unwrap();
    assert_eq!(monitor.stop(), Some(Stop::Cancelled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_pieces_read_as_one_stream_and_a_superseded_piece_is_asked_for_again() {
    let s3 = common::testing::S3Server::start();
    let store: Store = Arc::new(s3.store("source-test", "p", 5 << 20).await);
    let all = data(3_500_000);
    // three pieces: a "part", a "tail", and later the whole object
    let part = Key::new("uploads/x.parts/00001").unwrap();
    let tail = Key::new("uploads/x.tail/000002000000").unwrap();
    let whole = Key::new("uploads/x").unwrap();
    store
        .put_bytes(
            &part,
            all[..2_000_000].to_vec().into(),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    store
        .put_bytes(
            &tail,
            all[2_000_000..3_000_000].to_vec().into(),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let pieces = Extent {
        length: all.len() as u64,
        durable: 3_000_000,
        complete: false,
        pieces: vec![
            Piece {
                key: part.clone(),
                offset: 0,
                size: 2_000_000,
            },
            Piece {
                key: tail.clone(),
                offset: 2_000_000,
                size: 1_000_000,
            },
        ],
        updated_ms: 0,
    };
    let growing = Manual::default();
    *growing.0.lock().unwrap() = Some(pieces.clone());
    let mut reader = Reader::open(
        store.clone(),
        whole.clone(),
        pieces,
        Some(Arc::new(growing.clone())),
        None,
        policy(Duration::from_secs(30)),
        CancellationToken::new(),
        None,
    );
    let first = tokio::task::spawn_blocking(move || {
        let mut got = vec![0u8; 3_000_000];
        reader.read_exact(&mut got).unwrap();
        (reader, got)
    })
    .await
    .unwrap();
    let (mut reader, got) = first;
    assert!(
        got == all[..3_000_000],
        "the pieces read back as the object's bytes"
    );
    // the upload completes: the pieces are replaced by the assembled object and removed
    store
        .put_bytes(&whole, all.clone().into(), &PutOptions::default())
        .await
        .unwrap();
    *growing.0.lock().unwrap() = Some(Extent::whole(whole.clone(), all.len() as u64));
    store.delete(&part).await.unwrap();
    store.delete(&tail).await.unwrap();
    let rest = tokio::task::spawn_blocking(move || {
        // back into the (now deleted) part, then to the end
        reader.seek(SeekFrom::Start(1_000_000)).unwrap();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        rest
    })
    .await
    .unwrap();
    assert!(
        rest == all[1_000_000..],
        "read on from the assembled object"
    );
}
