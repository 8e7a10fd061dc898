//! Outbox throughput and delay: writes `--events` events (each in its own transaction, from
//! `--writers` concurrent writers, over `--subjects` subjects) into a fresh database while the
//! relay delivers them to a webhook receiver on loopback, then prints what it measured:
//! the write rate, the end-to-end rate (first commit → last receipt) and the delay from each
//! event's commit to its receipt (p50, p99, max).
//!
//!   cargo run --release -p common --example events_bench -- [--db postgres|sqlite] \
//!       [--events 5000] [--writers 8] [--subjects 500] [--concurrency 16] [--rate EVENTS_PER_S]
//!
//! Without `--rate` every writer writes as fast as it can (a burst: the delay is mostly the
//! backlog's); with it the events come evenly at that rate (the delay a consumer sees).
//!
//! PostgreSQL: a fresh database on `MOMENTS_TEST_PG_URL` (default
//! postgres://postgres@127.0.0.1:5432/test), dropped afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: fail loudly

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::db::{Change, Db};
use common::events::{self, Endpoint, Payload, relay::Relay, webhook::Secret};
use common::ids::now_ms;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let (mut backend, mut n, mut writers, mut subjects, mut concurrency) =
        ("postgres".to_string(), 5000usize, 8usize, 500usize, 16usize);
    let mut rate: Option<f64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--db" => backend = v(),
            "--events" => n = v().parse().expect("--events N"),
            "--writers" => writers = v().parse().expect("--writers N"),
            "--subjects" => subjects = v().parse().expect("--subjects N"),
            "--concurrency" => concurrency = v().parse().expect("--concurrency N"),
            "--rate" => rate = Some(v().parse().expect("--rate EVENTS_PER_S")),
            other => panic!("unknown argument {other}"),
        }
    }
    let _pg;
    let _dir;
    let db = if backend == "postgres" {
        _pg = common::testing::fresh_pg()
            .await
            .expect("PostgreSQL is needed");
        Db::connect(&_pg.url, (writers + 4) as u32).await.unwrap()
    } else {
        _dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", _dir.path().join("bench.db").display());
        Db::connect(&url, (writers + 4) as u32).await.unwrap()
    };

    // the receiver: records when each event arrived
    let received: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let app = {
        let received = received.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let received = received.clone();
                async move {
                    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
                    received
                        .lock()
                        .unwrap()
                        .push((e["id"].as_str().unwrap().to_string(), now_ms()));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = events::Config {
        webhooks: vec![Endpoint {
            name: "bench".into(),
            url,
            secrets: vec![Secret::generate().encoded()],
            types: vec![],
        }],
        concurrency,
        ..events::Config::default()
    };
    config.validate().unwrap();
    let relay = Arc::new(Relay::new(db.clone(), config, None, None).unwrap());
    let stop = CancellationToken::new();
    let running = {
        let (relay, stop) = (relay.clone(), stop.clone());
        tokio::spawn(async move { relay.run_until(&stop).await })
    };

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            let t0 = Instant::now();
            while i < n {
                if let Some(r) = rate {
                    // event i is due at i / rate seconds: an even load, not a burst
                    let at = Duration::from_secs_f64(i as f64 / r);
                    if let Some(wait) = at.checked_sub(t0.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let mut tx = db.pool().begin().await.unwrap();
                events::emit_on(
                    &mut tx,
                    Payload::MomentFailed(events::MomentFailed {
                        moment_id: format!("m{}", i % subjects),
                        user_id: "bench".into(),
                        reason: format!("event {i}"),
                    }),
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                db.notify(Change::Events);
                i += writers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let written = started.elapsed();
    while received.lock().unwrap().len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not everything arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = started.elapsed();
    stop.cancel();
    let _ = running.await;

    let created: std::collections::HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT id, created_at FROM events")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut delays: Vec<i64> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(id, at)| at - created[id])
        .collect();
    delays.sort_unstable();
    let q = |p: f64| delays[((delays.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "backend={backend} events={n} writers={writers} subjects={subjects} concurrency={concurrency} rate={}",
        rate.map_or("burst".to_string(), |r| format!("{r}/s"))
    );
    println!(
        "written_per_s={:.0} delivered_per_s={:.0} delay_ms_p50={} delay_ms_p99={} delay_ms_max={}",
        n as f64 / written.as_secs_f64(),
        n as f64 / all.as_secs_f64(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    db.close().await;
}
