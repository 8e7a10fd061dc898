//! The relay: one job on the durable queue (`events_relay`) that never finishes. Whichever
//! worker holds its lease fans new events out and delivers them; when that process dies the
//! lease expires and a worker on any node takes over (at most `queue.lease_secs` later), and
//! a graceful shutdown gives the lease back at once. Each target has its own loop, so an
//! endpoint that hangs or fails delays only its own deliveries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::bus::{self, Bus};
use super::webhook::{Outcome, Sender};
use super::{Config, outbox};
use crate::db::{Change, Db, Error};
use crate::metrics::Metrics;
use crate::queue::{Context, Defer, Handler, Job, JobError, NewJob, Priority, Queue};

/// The relay's job kind.
pub const KIND: &str = "events_relay";

/// The relay job (one per database: its dedup key is fixed). Its attempt limit is out of
/// reach, so a relay killed again and again is never dead-lettered.
pub fn job() -> NewJob {
    NewJob {
        kind: KIND.to_string(),
        payload: serde_json::json!({}),
        dedup_key: Some(KIND.to_string()),
        max_attempts: Some(1_000_000_000),
        priority: Priority::Normal,
    }
}

/// Makes sure the relay job exists and can run (every worker process calls this at start).
pub async fn ensure(queue: &Queue) -> Result<(), Error> {
    queue.enqueue(&job()).await?;
    queue.revive(KIND).await?;
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveredLabels {
    target: String,
    r#type: String,
}

/// The relay's metrics.
#[derive(Clone, Debug)]
pub struct EventMetrics {
    delivered: Family<DeliveredLabels, Counter>,
    failures: Family<TargetLabels, Counter>,
    delay: Family<TargetLabels, Histogram>,
    pending: Family<TargetLabels, Gauge>,
    dead: Family<TargetLabels, Gauge>,
    oldest: Family<TargetLabels, Gauge>,
    unfanned: Gauge,
}

fn delay_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 16,
    ))
}

impl EventMetrics {
    /// Registers them (once per process).
    pub fn register(metrics: &Metrics) -> EventMetrics {
        let m = EventMetrics {
            delivered: Family::default(),
            failures: Family::default(),
            delay: Family::new_with_constructor(delay_histogram as fn() -> Histogram),
            pending: Family::default(),
            dead: Family::default(),
            oldest: Family::default(),
            unfanned: Gauge::default(),
        };
        metrics.register(
            "events_delivered",
            "Events delivered, by target and type",
            m.delivered.clone(),
        );
        metrics.register(
            "event_delivery_failures",
            "Failed delivery attempts (retried or dead-lettered), by target",
            m.failures.clone(),
        );
        metrics.register(
            "event_delivery_delay_seconds",
            "From the event's commit to its delivery, by target",
            m.delay.clone(),
        );
        metrics.register(
            "events_pending",
            "Deliveries waiting, by target",
            m.pending.clone(),
        );
        metrics.register(
            "events_dead",
            "Dead-lettered deliveries (see /v1/admin/events/dead), by target",
            m.dead.clone(),
        );
        metrics.register(
            "events_oldest_pending_age_seconds",
            "Age of the oldest waiting delivery's event, by target",
            m.oldest.clone(),
        );
        metrics.register(
            "events_unfanned",
            "Events written but not yet given to their targets",
            m.unfanned.clone(),
        );
        m
    }

    async fn refresh(&self, db: &Db, targets: &[String]) {
        if let Ok(s) = outbox::stats(db).await {
            self.unfanned.set(s.unfanned);
            for t in targets {
                let l = TargetLabels { target: t.clone() };
                self.pending
                    .get_or_create(&l)
                    .set(s.pending.get(t).copied().unwrap_or(0));
                self.dead
                    .get_or_create(&l)
                    .set(s.dead.get(t).copied().unwrap_or(0));
                self.oldest
                    .get_or_create(&l)
                    .set(s.oldest_pending_ms.get(t).copied().unwrap_or(0) / 1000);
            }
        }
    }
}

/// Where one target's deliveries go.
#[derive(Clone, Debug)]
enum Via {
    Webhook { name: String, sender: Sender },
    Bus(Arc<dyn Bus>),
}

/// The relay's state.
#[derive(Debug)]
pub struct Relay {
    db: Db,
    config: Config,
    targets: Vec<(String, Via)>,
    metrics: Option<EventMetrics>,
}

impl Relay {
    /// A relay for `config` (validated), publishing to `bus` when one is configured.
    pub fn new(
        db: Db,
        config: Config,
        bus: Option<Arc<dyn Bus>>,
        metrics: Option<EventMetrics>,
    ) -> Result<Relay, String> {
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let mut targets = Vec::new();
        for e in &config.webhooks {
            targets.push((
                e.target(),
                Via::Webhook {
                    name: e.name.clone(),
                    sender: Sender::new(e, timeout)?,
                },
            ));
        }
        if let Some(b) = bus {
            targets.push((bus::TARGET.to_string(), Via::Bus(b)));
        }
        Ok(Relay {
            db,
            config,
            targets,
            metrics,
        })
    }

    async fn fan_out_loop(&self, wake: &Notify, cancel: &CancellationToken) {
        let mut changes = self.db.subscribe();
        let poll = Duration::from_millis(self.config.poll_ms.max(10));
        while !cancel.is_cancelled() {
            match outbox::fan_out(&self.db, &self.config, 500).await {
                Ok(n) if n > 0 => {
                    wake.notify_waiters();
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "events: fan-out failed; retrying"),
            }
            let deadline = tokio::time::sleep(poll);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = cancel.cancelled() => return,
                    c = changes.recv() => match c {
                        Ok(Change::Events) | Err(_) => break,
                        Ok(_) => {}
                    },
                }
            }
        }
    }

    async fn target_loop(
        &self,
        target: &str,
        via: &Via,
        wake: &Notify,
        cancel: &CancellationToken,
    ) {
        let poll = Duration::from_millis(self.config.poll_ms.max(10));
        let batch = (self.config.concurrency.max(1) * 4) as i64;
        while !cancel.is_cancelled() {
            let woken = wake.notified();
            let due = match via {
                Via::Webhook { name, .. } => match outbox::disabled(&self.db, name).await {
                    Ok(Some(_)) => Ok(Vec::new()),
                    Ok(None) => outbox::due(&self.db, target, batch).await,
                    Err(e) => Err(e),
                },
                Via::Bus(_) => outbox::due(&self.db, target, batch).await,
            };
            let due = match due {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(target, error = %e, "events: cannot read deliveries; retrying");
                    Vec::new()
                }
            };
            if due.is_empty() {
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = cancel.cancelled() => return,
                }
                continue;
            }
            // one delivery per subject at a time (the batch holds one head per subject); the
            // successes are recorded together
            let done: Vec<outbox::Due> = futures::stream::iter(due)
                .map(|d| async move {
                    // a relay that lost its lease sends nothing more (the new holder will)
                    (!cancel.is_cancelled() && self.deliver(target, via, &d).await).then_some(d)
                })
                .buffer_unordered(self.config.concurrency.max(1))
                .filter_map(|d| async move { d })
                .collect()
                .await;
            self.record_delivered(target, &done).await;
        }
    }

    /// Records a batch's successes (and their metrics).
    async fn record_delivered(&self, target: &str, done: &[outbox::Due]) {
        let ids: Vec<String> = done.iter().map(|d| d.event_id.clone()).collect();
        if let Err(e) = outbox::delivered(&self.db, target, &ids).await {
            // delivered but not recorded: they go again (at-least-once)
            tracing::warn!(target, error = %e, "events: could not record deliveries");
            return;
        }
        if let Some(m) = &self.metrics {
            let now = crate::ids::now_ms();
            for d in done {
                m.delivered
                    .get_or_create(&DeliveredLabels {
                        target: target.to_string(),
                        r#type: d.kind.clone(),
                    })
                    .inc();
                m.delay
                    .get_or_create(&TargetLabels {
                        target: target.to_string(),
                    })
                    .observe((now - d.created_at).max(0) as f64 / 1000.0);
            }
        }
    }

    /// One attempt; true when delivered (recorded by the caller), failures recorded here.
    async fn deliver(&self, target: &str, via: &Via, d: &outbox::Due) -> bool {
        let result = match via {
            Via::Webhook { name, sender } => match sender.send(&d.event_id, &d.body).await {
                Outcome::Delivered => Ok(()),
                Outcome::Gone => {
                    tracing::warn!(endpoint = %name, "webhook endpoint answered 410 Gone: disabled; its deliveries wait until it is enabled again");
                    if let Err(e) = outbox::disable(&self.db, name, "answered 410 Gone").await {
                        tracing::warn!(error = %e, "events: could not disable the endpoint");
                    }
                    return false;
                }
                Outcome::Failed(why) => Err(why),
            },
            Via::Bus(b) => b.publish(&d.event_id, &d.kind, &d.body).await,
        };
        let Err(why) = result else {
            return true;
        };
        if let Some(m) = &self.metrics {
            m.failures
                .get_or_create(&TargetLabels {
                    target: target.to_string(),
                })
                .inc();
        }
        match outbox::failed(&self.db, &self.config, d, target, &why).await {
            Ok(true) => {
                tracing::error!(target, event = %d.event_id, kind = %d.kind, error = %why, "event delivery dead-lettered after {} attempts", self.config.max_attempts)
            }
            Ok(false) => {
                tracing::warn!(target, event = %d.event_id, attempt = d.attempts + 1, error = %why, "event delivery failed; will retry")
            }
            Err(e) => {
                tracing::warn!(target, error = %e, "events: could not record a failed delivery")
            }
        }
        false
    }

    async fn housekeeping(&self, cancel: &CancellationToken) {
        let targets: Vec<String> = self.targets.iter().map(|(t, _)| t.clone()).collect();
        let mut last_prune = Instant::now() - Duration::from_secs(3600);
        while !cancel.is_cancelled() {
            if let Some(m) = &self.metrics {
                m.refresh(&self.db, &targets).await;
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = Instant::now();
                let keep = Duration::from_secs(self.config.retain_hours * 3600);
                match outbox::prune(&self.db, keep).await {
                    Ok(n) if n > 0 => tracing::info!(
                        events = n,
                        "events: delivered events past their retention removed"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "events: prune failed"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Runs the relay until `cancel` (what the job does while it holds the lease).
    pub async fn run_until(&self, cancel: &CancellationToken) {
        let wake = Notify::new();
        let targets = futures::future::join_all(
            self.targets
                .iter()
                .map(|(t, via)| self.target_loop(t, via, &wake, cancel)),
        );
        tokio::join!(
            self.fan_out_loop(&wake, cancel),
            targets,
            self.housekeeping(cancel)
        );
    }
}

/// How long one attempt of the relay job runs before it gives the lease back (and, usually,
/// takes it again at once): keeps any one attempt bounded.
const STINT: Duration = Duration::from_secs(3600);

#[async_trait]
impl Handler for Relay {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn time_limit(&self) -> Duration {
        STINT + Duration::from_secs(300)
    }

    async fn run(&self, _job: &Job, ctx: &Context) -> Result<(), JobError> {
        tracing::info!(targets = ?self.targets.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), "events relay started on this node");
        let stint = ctx.cancel.child_token();
        let timer = {
            let stint = stint.clone();
            tokio::spawn(async move {
                tokio::time::sleep(STINT).await;
                stint.cancel();
            })
        };
        self.run_until(&stint).await;
        timer.abort();
        Err(JobError::defer(
            "the relay gives its lease back after each stint",
            Defer::For(Duration::ZERO),
        ))
    }

    async fn dead(&self, _job: &Job, error: &str) {
        tracing::error!(
            error,
            "the events relay job was dead-lettered; `moments worker` restarts it"
        );
    }
}
