//! A small HTTP/3 load generator (the project's own quinn + h3 client): GETs one URL over
//! `--connections` QUIC connections with `--streams` requests in flight on each, for
//! `--duration`, reading every body in full. Prints `REQ_PER_S MB_PER_S` (for
//! `deploy/bench/origin.sh`; Debian ships no HTTP/3-capable load tool).
//!
//!   cargo run --release -p common --example h3load -- --url https://127.0.0.1:4433/hls/ID/720p/seg_00001.m4s \
//!       --cert-sha256 HEX [--connections 4] [--streams 8] [--duration 10s]

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: fail loudly

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

#[tokio::main]
async fn main() {
    let mut url = None;
    let mut fp = None;
    let (mut conns, mut streams, mut secs) = (4usize, 8usize, 10u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--url" => url = Some(v()),
            "--cert-sha256" => fp = Some(v()),
            "--connections" => conns = v().parse().expect("--connections N"),
            "--streams" => streams = v().parse().expect("--streams N"),
            "--duration" => secs = v().trim_end_matches('s').parse().expect("--duration 10s"),
            other => panic!("unknown argument {other}"),
        }
    }
    let url: http::Uri = url.expect("--url").parse().expect("a URL");
    let trust = common::server::tls::Trust::Pinned(fp.expect("--cert-sha256"));
    let host = url.host().expect("a host").to_string();
    let addr = tokio::net::lookup_host((host.as_str(), url.port_u16().unwrap_or(443)))
        .await
        .unwrap()
        .next()
        .unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..conns {
        let mut client = common::h3client::Client::connect(addr, &host, &trust)
            .await
            .unwrap();
        for _ in 0..streams {
            let mut send = client.sender().clone();
            let (url, requests, bytes) = (url.clone(), requests.clone(), bytes.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let req = http::Request::get(url.clone()).body(()).unwrap();
                    let mut s = send.send_request(req).await.unwrap();
                    s.finish().await.unwrap();
                    let head = s.recv_response().await.unwrap();
                    assert!(head.status().is_success(), "{}", head.status());
                    let mut n = 0u64;
                    while let Some(mut chunk) = s.recv_data().await.unwrap() {
                        n += chunk.remaining() as u64;
                        let _: Bytes = chunk.copy_to_bytes(chunk.remaining());
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n, Ordering::Relaxed);
                }
            }));
        }
        clients.push(client);
    }
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "{:.0} {:.1}",
        requests.load(Ordering::Relaxed) as f64 / took,
        bytes.load(Ordering::Relaxed) as f64 / took / (1 << 20) as f64
    );
    drop(clients);
}
