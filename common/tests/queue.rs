//! Queue semantics on SQLite and PostgreSQL: exclusive claims under concurrency, lease expiry
//! after a simulated crash, retries with backoff, dead letters, idempotent completion.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::db::Db;
use common::queue::{
    Config, Context, Defer, Handler, Job, JobError, NewJob, Outcome, Priority, Queue, promote_on,
    withdraw_on,
};
use common::testing::on_both;
use tokio_util::sync::CancellationToken;

fn fast_config() -> Config {
    Config {
        lease_secs: 1,
        max_attempts: 3,
        backoff_base_ms: 40,
        backoff_max_ms: 200,
        poll_ms: 20,
    }
}

fn job(kind: &str, n: usize) -> NewJob {
    NewJob {
        kind: kind.into(),
        payload: serde_json::json!({ "n": n }),
        dedup_key: None,
        max_attempts: None,
        priority: Default::default(),
    }
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_job() {
    on_both(|db: Db| async move {
        let queue = Queue::new(db, fast_config());
        for n in 0..40 {
            queue.enqueue(&job("transcode", n)).await.unwrap();
        }
        queue.enqueue(&job("other", 99)).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..8 {
            let q = queue.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(j) = q.claim(&["transcode"], &format!("w{w}")).await.unwrap() {
                    mine.push(j.id);
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 40, "every job claimed once");
        assert_eq!(unique.len(), 40, "no job claimed twice");
        // the other kind was not touched
        let stats = queue.stats().await.unwrap();
        assert_eq!(stats.queued.get("other"), Some(&1));
        assert_eq!(stats.running.get("transcode"), Some(&40));
    })
    .await;
}

#[tokio::test]
async fn expired_lease_is_taken_over_and_completion_is_idempotent() {
    on_both(|db: Db| async move {
        let queue = Queue::new(db, fast_config());
        let id = queue.enqueue(&job("transcode", 1)).await.unwrap();
        let crashed = queue
            .claim(&["transcode"], "crashed")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(crashed.id, id);
        assert!(
            queue.claim(&["transcode"], "b").await.unwrap().is_none(),
            "leased"
        );
        // the worker "crashes": no heartbeat; the lease runs out
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let taken = queue.claim(&["transcode"], "b").await.unwrap().unwrap();
        assert_eq!(taken.id, id);
        assert_eq!(taken.attempts, 2);
        // the old owner can neither heartbeat nor finish
        assert!(!queue.heartbeat(&crashed).await.unwrap());
        assert!(!queue.complete(&crashed).await.unwrap());
        assert_eq!(
            queue.fail(&crashed, "late", true).await.unwrap(),
            Outcome::LeaseLost
        );
        // the new owner finishes once; a second completion is a no-op
        assert!(queue.heartbeat(&taken).await.unwrap());
        assert!(queue.complete(&taken).await.unwrap());
        assert!(!queue.complete(&taken).await.unwrap());
        let rec = queue.get(&id).await.unwrap().unwrap();
        assert_eq!(rec.state, "done");
        assert!(queue.claim(&["transcode"], "c").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn retries_back_off_then_dead_letter_keeps_the_error() {
    on_both(|db: Db| async move {
        let queue = Queue::new(db, fast_config());
        let id = queue.enqueue(&job("transcode", 1)).await.unwrap();
        for attempt in 1..=3u32 {
            let j = loop {
                if let Some(j) = queue.claim(&["transcode"], "w").await.unwrap() {
                    break j;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert_eq!(j.attempts, attempt);
            let outcome = queue
                .fail(&j, &format!("boom {attempt}"), true)
                .await
                .unwrap();
            if attempt < 3 {
                let Outcome::Retry { after_ms } = outcome else {
                    panic!("{outcome:?}")
                };
                assert!((20..=200).contains(&after_ms), "{after_ms}");
                // not claimable before its backoff ends
                let rec = queue.get(&id).await.unwrap().unwrap();
                assert_eq!(rec.state, "queued");
                assert!(rec.run_after > common::ids::now_ms());
                assert!(queue.claim(&["transcode"], "w").await.unwrap().is_none());
            } else {
                assert_eq!(outcome, Outcome::Dead);
            }
        }
        let rec = queue.get(&id).await.unwrap().unwrap();
        assert_eq!(rec.state, "failed");
        assert_eq!(rec.last_error.as_deref(), Some("boom 3"));
        assert!(queue.claim(&["transcode"], "w").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn permanent_failures_dead_letter_at_once_and_dedup_keys_enqueue_once() {
    on_both(|db: Db| async move {
        let queue = Queue::new(db, fast_config());
        let mut nj = job("transcode", 1);
        nj.dedup_key = Some("transcode:m1".into());
        let a = queue.enqueue(&nj).await.unwrap();
        let b = queue.enqueue(&nj).await.unwrap();
        assert_eq!(a, b);
        let j = queue.claim(&["transcode"], "w").await.unwrap().unwrap();
        assert!(
            queue.claim(&["transcode"], "w").await.unwrap().is_none(),
            "only one job"
        );
        assert_eq!(
            queue.fail(&j, "not a video", false).await.unwrap(),
            Outcome::Dead
        );
        assert_eq!(queue.get(&a).await.unwrap().unwrap().state, "failed");
    })
    .await;
}

#[tokio::test]
async fn a_worker_lost_on_the_last_attempt_is_reaped_and_release_does_not_count() {
    on_both(|db: Db| async move {
        let queue = Queue::new(db, fast_config());
        let mut nj = job("transcode", 1);
        nj.max_attempts = Some(1);
        let id = queue.enqueue(&nj).await.unwrap();
        let j = queue.claim(&["transcode"], "w").await.unwrap().unwrap();
        assert!(queue.release(&j).await.unwrap());
        let j = queue.claim(&["transcode"], "w").await.unwrap().unwrap();
        assert_eq!(j.attempts, 1, "a released attempt does not count");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(queue.claim(&["transcode"], "w2").await.unwrap().is_none());
        let reaped = queue.reap().await.unwrap();
        assert_eq!(reaped.len(), 1);
        assert_eq!(reaped[0].id, id);
        let rec = queue.get(&id).await.unwrap().unwrap();
        assert_eq!(rec.state, "failed");
        assert!(rec.last_error.unwrap().contains("lease expired"));
        assert!(queue.reap().await.unwrap().is_empty());
    })
    .await;
}

/// Fails its first attempt, then succeeds; counts dead letters.
struct Flaky {
    runs: AtomicU32,
    dead: AtomicU32,
    heartbeat_outlives_lease: bool,
}

#[async_trait]
impl Handler for Flaky {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    async fn run(&self, job: &Job, ctx: &Context) -> Result<(), JobError> {
        if job.payload["permanent"] == true {
            return Err(JobError::permanent("bad input"));
        }
        // counted after the permanent failure: when the bad job ran first, the good one's
        // first run was counted as its second and it passed without the retry under test
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        if self.heartbeat_outlives_lease {
            // longer than the 1 s lease: only heartbeats keep it
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2500)) => {}
                _ = ctx.cancel.cancelled() => return Err(JobError::retry("cancelled")),
            }
        }
        if n == 0 && !self.heartbeat_outlives_lease {
            return Err(JobError::retry("transient"));
        }
        Ok(())
    }
    async fn dead(&self, _job: &Job, _error: &str) {
        self.dead.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn workers_retry_heartbeat_and_dead_letter_through_handlers() {
    on_both(|db: Db| async move {
        let queue = Queue::new(db, fast_config());
        let flaky = Arc::new(Flaky {
            runs: AtomicU32::new(0),
            dead: AtomicU32::new(0),
            heartbeat_outlives_lease: false,
        });
        let ok = queue
            .enqueue(&NewJob {
                kind: "flaky".into(),
                payload: serde_json::json!({}),
                dedup_key: None,
                max_attempts: None,
                priority: Default::default(),
            })
            .await
            .unwrap();
        let bad = queue
            .enqueue(&NewJob {
                kind: "flaky".into(),
                payload: serde_json::json!({"permanent": true}),
                dedup_key: None,
                max_attempts: None,
                priority: Default::default(),
            })
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let workers = tokio::spawn(common::queue::run_workers(
            queue.clone(),
            vec![flaky.clone()],
            2,
            "test",
            None,
            shutdown.clone(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let a = queue.get(&ok).await.unwrap().unwrap().state;
            let b = queue.get(&bad).await.unwrap().unwrap().state;
            if a == "done" && b == "failed" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{a} {b}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(flaky.dead.load(Ordering::SeqCst), 1);
        assert_eq!(queue.get(&ok).await.unwrap().unwrap().attempts, 2);
        shutdown.cancel();
        workers.await.unwrap();

        // a job longer than its lease survives through heartbeats, not a takeover
        let slow = Arc::new(Flaky {
            runs: AtomicU32::new(0),
            dead: AtomicU32::new(0),
            heartbeat_outlives_lease: true,
        });
        let id = queue
            .enqueue(&NewJob {
                kind: "flaky".into(),
                payload: serde_json::json!({}),
                dedup_key: None,
                max_attempts: None,
                priority: Default::default(),
            })
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let workers = tokio::spawn(common::queue::run_workers(
            queue.clone(),
            vec![slow.clone()],
            2,
            "test",
            None,
            shutdown.clone(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while queue.get(&id).await.unwrap().unwrap().state != "done" {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(slow.runs.load(Ordering::SeqCst), 1, "never run twice");
        assert_eq!(queue.get(&id).await.unwrap().unwrap().attempts, 1);
        shutdown.cancel();
        workers.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn tickets_are_single_use() {
    on_both(|db: Db| async move {
        let t = common::auth::issue_ticket(&db, "alice").await.unwrap();
        assert!(t.len() >= 40);
        assert_eq!(
            common::auth::redeem_ticket(&db, &t)
                .await
                .unwrap()
                .as_deref(),
            Some("alice")
        );
        assert_eq!(common::auth::redeem_ticket(&db, &t).await.unwrap(), None);
        assert_eq!(
            common::auth::redeem_ticket(&db, "forged").await.unwrap(),
            None
        );
        assert_eq!(common::auth::redeem_ticket(&db, "").await.unwrap(), None);
    })
    .await;
}

fn keyed(kind: &str, key: &str, priority: Priority) -> NewJob {
    NewJob {
        kind: kind.into(),
        payload: serde_json::json!({ "key": key }),
        dedup_key: Some(key.into()),
        max_attempts: None,
        priority,
    }
}

#[tokio::test]
async fn background_jobs_wait_for_idle_workers_and_park_until_promoted() {
    on_both(|db: Db| async move {
        let queue = Queue::new(db.clone(), fast_config());
        let bg = queue
            .enqueue(&keyed("transcode", "bg", Priority::Background))
            .await
            .unwrap();
        let normal = queue
            .enqueue(&keyed("transcode", "normal", Priority::Normal))
            .await
            .unwrap();
        // the later normal job goes first
        let first = queue.claim(&["transcode"], "w").await.unwrap().unwrap();
        assert_eq!(first.id, normal);
        assert_eq!(first.priority, Priority::Normal);
        // with the normal job waiting, a running background job would be told to yield
        let second = queue.claim(&["transcode"], "w").await.unwrap().unwrap();
        assert_eq!(second.id, bg);
        assert_eq!(second.priority, Priority::Background);
        assert!(
            !queue
                .others_waiting(&["transcode"], Duration::ZERO)
                .await
                .unwrap()
        );
        let late = queue
            .enqueue(&keyed("transcode", "late", Priority::Normal))
            .await
            .unwrap();
        assert!(
            queue
                .others_waiting(&["transcode"], Duration::ZERO)
                .await
                .unwrap()
        );
        assert!(
            !queue
                .others_waiting(&["transcode"], Duration::from_secs(60))
                .await
                .unwrap(),
            "not waiting that long yet"
        );
        assert!(
            !queue
                .others_waiting(&["other"], Duration::ZERO)
                .await
                .unwrap()
        );
        let third = queue.claim(&["transcode"], "w").await.unwrap().unwrap();
        assert_eq!(third.id, late);

        // parking: the background job gives its worker back, the attempt does not count, and
        // nothing claims it until it is promoted
        assert!(
            queue
                .park(&second, "waiting for the last byte")
                .await
                .unwrap()
        );
        let rec = queue.get(&bg).await.unwrap().unwrap();
        assert!(rec.parked(), "{rec:?}");
        assert_eq!(rec.attempts, 0);
        assert_eq!(rec.last_error.as_deref(), Some("waiting for the last byte"));
        assert!(queue.claim(&["transcode"], "w").await.unwrap().is_none());
        let mut conn = db.pool().acquire().await.unwrap();
        assert!(promote_on(&mut conn, "bg").await.unwrap());
        drop(conn);
        let rec = queue.get(&bg).await.unwrap().unwrap();
        assert!(!rec.parked());
        assert_eq!(rec.priority, Priority::Normal);
        let again = queue.claim(&["transcode"], "w").await.unwrap().unwrap();
        assert_eq!(again.id, bg);
        assert_eq!(again.attempts, 1);

        // a promotion that lands while the job runs is not lost when it parks afterwards
        let racy = queue
            .enqueue(&keyed("transcode", "racy", Priority::Background))
            .await
            .unwrap();
        let running = queue.claim(&["transcode"], "w").await.unwrap().unwrap();
        assert_eq!(running.id, racy);
        let mut conn = db.pool().acquire().await.unwrap();
        assert!(promote_on(&mut conn, "racy").await.unwrap());
        drop(conn);
        assert!(
            !queue.park(&running, "too late").await.unwrap(),
            "promoted while running: runnable at once"
        );
        let rec = queue.get(&racy).await.unwrap().unwrap();
        assert!(!rec.parked() && rec.state == "queued");
        assert_eq!(
            queue.claim(&["transcode"], "w").await.unwrap().unwrap().id,
            racy
        );
    })
    .await;
}

#[tokio::test]
async fn requeue_waits_and_withdraw_removes_only_waiting_jobs() {
    on_both(|db: Db| async move {
        let queue = Queue::new(db.clone(), fast_config());
        let id = queue
            .enqueue(&keyed("transcode", "stalled", Priority::Background))
            .await
            .unwrap();
        let job = queue.claim(&["transcode"], "w").await.unwrap().unwrap();
        assert!(
            queue
                .requeue(&job, Duration::from_millis(300), "the upload stalled")
                .await
                .unwrap()
        );
        let rec = queue.get(&id).await.unwrap().unwrap();
        assert_eq!((rec.state.as_str(), rec.attempts), ("queued", 0));
        assert!(queue.claim(&["transcode"], "w").await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(350)).await;
        let job = queue.claim(&["transcode"], "w").await.unwrap().unwrap();
        assert_eq!(job.id, id);
        // a running job is not withdrawn (it notices by itself)…
        let mut conn = db.pool().acquire().await.unwrap();
        assert!(!withdraw_on(&mut conn, "stalled").await.unwrap());
        drop(conn);
        assert_eq!(queue.get(&id).await.unwrap().unwrap().state, "running");
        // …a waiting one is
        assert!(queue.park(&job, "waiting").await.unwrap());
        let mut conn = db.pool().acquire().await.unwrap();
        assert!(withdraw_on(&mut conn, "stalled").await.unwrap());
        drop(conn);
        assert!(queue.get(&id).await.unwrap().is_none());
        assert!(queue.find("stalled").await.unwrap().is_none());
    })
    .await;
}

/// Defers once (parks), then succeeds: deferral goes through the worker loop without counting
/// an attempt or dead-lettering.
struct Patient {
    runs: AtomicU32,
}

#[async_trait]
impl Handler for Patient {
    fn kind(&self) -> &'static str {
        "patient"
    }
    async fn run(&self, _job: &Job, ctx: &Context) -> Result<(), JobError> {
        assert_eq!(&*ctx.kinds, &["patient"]);
        if self.runs.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(JobError::defer("not yet", Defer::UntilPromoted));
        }
        Ok(())
    }
    async fn dead(&self, _job: &Job, _error: &str) {
        panic!("a deferred job is never dead-lettered");
    }
}

#[tokio::test]
async fn deferred_jobs_park_through_the_worker_loop() {
    on_both(|db: Db| async move {
        let queue = Queue::new(db.clone(), fast_config());
        let id = queue
            .enqueue(&keyed("patient", "p", Priority::Background))
            .await
            .unwrap();
        let handler = Arc::new(Patient {
            runs: AtomicU32::new(0),
        });
        let shutdown = CancellationToken::new();
        let workers = tokio::spawn(common::queue::run_workers(
            queue.clone(),
            vec![handler.clone()],
            1,
            "test",
            None,
            shutdown.clone(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !queue.get(&id).await.unwrap().unwrap().parked() {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            handler.runs.load(Ordering::SeqCst),
            1,
            "parked: not run again"
        );
        let mut conn = db.pool().acquire().await.unwrap();
        promote_on(&mut conn, "p").await.unwrap();
        drop(conn);
        queue.notify();
        while queue.get(&id).await.unwrap().unwrap().state != "done" {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(queue.get(&id).await.unwrap().unwrap().attempts, 1);
        shutdown.cancel();
        workers.await.unwrap();
    })
    .await;
}
