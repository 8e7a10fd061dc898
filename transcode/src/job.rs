//! The `transcode` job kind: fetch the source, transcode it on a blocking thread, publish what
//! comes out as it comes out, and move the moment along (`transcoding` → `ready` or `failed`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::db::Db;
use common::metrics::Metrics;
use common::moment::{self, State};
use common::queue::{Context, Handler, Job, JobError};
use common::store::{Key, Store};
use packager::publish::{Publisher, Thumb};
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::media::{self, Event, Limits, Settings};

/// Transcode metrics.
#[derive(Clone, Debug)]
pub struct TranscodeMetrics {
    speed: Histogram,
}

impl TranscodeMetrics {
    /// Registers them.
    pub fn register(metrics: &Metrics) -> TranscodeMetrics {
        let speed = Histogram::new([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]);
        metrics.register(
            "transcode_speed_ratio",
            "Seconds of video transcoded per second of wall time (× realtime)",
            speed.clone(),
        );
        TranscodeMetrics { speed }
    }
}

/// The handler for `transcode` jobs.
pub struct Transcoder {
    db: Db,
    store: Store,
    config: Config,
    packager: packager::Config,
    metrics: Option<TranscodeMetrics>,
}

impl Transcoder {
    /// A handler publishing to `store` and recording state in `db`.
    pub fn new(
        db: Db,
        store: Store,
        config: Config,
        packager: packager::Config,
        metrics: Option<TranscodeMetrics>,
    ) -> Transcoder {
        media::init();
        Transcoder {
            db,
            store,
            config,
            packager,
            metrics,
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            rungs: self.config.rungs.clone(),
            preset: self.config.x264_preset.clone(),
            x264_threads: self.config.x264_threads,
            segment_seconds: self.packager.segment_seconds,
            thumbnail_width: self.packager.thumbnail_width,
            limits: Limits {
                max_duration: self.config.max_duration_secs,
                min_duration: self.config.min_duration_secs,
                max_dimension: self.config.max_dimension,
            },
        }
    }

    async fn fetch(&self, key: &Key) -> Result<(PathBuf, Option<tempfile::TempPath>), JobError> {
        if let Some(p) = self.store.local_path(key)
            && p.is_file()
        {
            return Ok((p, None));
        }
        let dir = self
            .config
            .work_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| JobError::retry(format!("work dir {}: {e}", dir.display())))?;
        let tmp = tempfile::Builder::new()
            .prefix("moments-src-")
            .tempfile_in(&dir)
            .map_err(|e| JobError::retry(format!("temp file in {}: {e}", dir.display())))?
            .into_temp_path();
        match self.store.download_to(key, &tmp).await {
            Ok(_) => Ok((tmp.to_path_buf(), Some(tmp))),
            Err(common::store::Error::NotFound(_)) => Err(JobError::permanent(
                "the uploaded source is missing from storage",
            )),
            Err(e) => Err(JobError::retry(format!("fetching the source: {e}"))),
        }
    }

    async fn transcode(
        &self,
        id: &str,
        source_key: &str,
        cancel: &CancellationToken,
    ) -> Result<(), JobError> {
        let key = Key::new(source_key)
            .map_err(|e| JobError::permanent(format!("bad source key: {e}")))?;
        let (path, _temp) = self.fetch(&key).await?;
        let started = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(32);
        let settings = self.settings();
        let work = cancel.child_token();
        let work2 = work.clone();
        let handle =
            tokio::task::spawn_blocking(move || media::transcode(&path, &settings, tx, &work2));

        let mut publisher = Publisher::new(self.store.clone(), id);
        let mut thumbs: Vec<Thumb> = Vec::new();
        let mut poster: Option<image::RgbImage> = None;
        let mut last_progress = Instant::now() - Duration::from_secs(10);
        let mut publish_error: Option<String> = None;
        while let Some(ev) = rx.recv().await {
            let r = match ev {
                Event::Started { info, init } => publisher.start_rung(info, init).await,
                Event::Segment { rung, segment } => publisher.segment(&rung, segment).await,
                Event::RungFailed { rung, reason } => {
                    tracing::warn!(moment = %id, %rung, %reason, "rung failed; publishing the others");
                    publisher.rung_failed(&rung, &reason);
                    Ok(())
                }
                Event::Poster(img) => {
                    poster = Some(img);
                    Ok(())
                }
                Event::Thumb(t) => {
                    thumbs.push(t);
                    Ok(())
                }
                Event::Progress { done, total } => {
                    if total > 0.0 && last_progress.elapsed() >= Duration::from_millis(900) {
                        last_progress = Instant::now();
                        let _ = moment::set_progress(
                            &self.db,
                            id,
                            (done / total).min(0.99),
                            &Default::default(),
                        )
                        .await;
                    }
                    Ok(())
                }
            };
            if let Err(e) = r {
                publish_error = Some(e.to_string());
                work.cancel();
                break;
            }
        }
        drop(rx);
        let result = handle
            .await
            .map_err(|e| JobError::retry(format!("transcoder thread: {e}")))?;
        if let Some(e) = publish_error {
            return Err(JobError::retry(e));
        }
        let summary = match result {
            Ok(s) => s,
            Err(media::Error::Invalid(msg)) => return Err(JobError::permanent(msg)),
            Err(media::Error::Cancelled) => return Err(JobError::retry("cancelled")),
            Err(e) => return Err(JobError::retry(e.to_string())),
        };
        if let Some(img) = &poster {
            publisher
                .poster(img)
                .await
                .map_err(|e| JobError::retry(e.to_string()))?;
        }
        publisher
            .thumbnails(&thumbs, summary.decoded_seconds)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        let published = publisher.finish().await.map_err(|e| match e {
            packager::publish::Error::NothingToPublish(m) => {
                JobError::permanent(format!("no rendition could be encoded: {m}"))
            }
            other => JobError::retry(other.to_string()),
        })?;
        let elapsed = started.elapsed().as_secs_f64();
        let speed = summary.decoded_seconds / elapsed.max(1e-3);
        if let Some(m) = &self.metrics {
            m.speed.observe(speed);
        }
        let mut record =
            serde_json::to_value(&published).map_err(|e| JobError::retry(e.to_string()))?;
        record["duration"] = serde_json::json!(summary.decoded_seconds);
        record["remuxed"] = serde_json::json!(summary.remuxed.iter().collect::<Vec<_>>());
        record["source"] = serde_json::json!({
            "format": summary.probe.format,
            "codec": summary.probe.codec,
            "width": summary.probe.width,
            "height": summary.probe.height,
            "fps": summary.probe.fps,
            "has_audio": summary.probe.has_audio,
        });
        moment::set_ready(&self.db, id, &record)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        tracing::info!(
            moment = %id,
            rungs = published.renditions.len(),
            seconds = summary.decoded_seconds,
            wall = elapsed,
            speed,
            "moment ready"
        );
        Ok(())
    }
}

#[async_trait]
impl Handler for Transcoder {
    fn kind(&self) -> &'static str {
        moment::TRANSCODE_KIND
    }

    fn time_limit(&self) -> Duration {
        Duration::from_secs(self.config.job_time_limit_secs)
    }

    async fn run(&self, job: &Job, ctx: &Context) -> Result<(), JobError> {
        let Some(id) = job.payload["moment"].as_str() else {
            return Err(JobError::permanent("job payload names no moment"));
        };
        let m = moment::get(&self.db, id)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?
            .ok_or_else(|| JobError::permanent("the moment no longer exists"))?;
        if m.state.is_final() {
            // Published (or given up) already: finishing twice publishes once.
            return Ok(());
        }
        let Some(source) = m.source_key.clone() else {
            return Err(JobError::permanent("the moment has no uploaded source"));
        };
        moment::set_state(&self.db, id, State::Transcoding, None)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        let r = self.transcode(id, &source, &ctx.cancel).await;
        if let Err(e) = &r
            && e.retryable
        {
            let _ = moment::set_state(&self.db, id, State::Queued, None).await;
        }
        r
    }

    async fn dead(&self, job: &Job, error: &str) {
        if let Some(id) = job.payload["moment"].as_str()
            && let Err(e) = moment::set_state(&self.db, id, State::Failed, Some(error)).await
        {
            tracing::error!(moment = %id, error = %e, "could not mark the moment failed");
        }
    }
}

/// A convenience for wiring: the handler as the queue wants it.
pub fn handler(t: Transcoder) -> Arc<dyn Handler> {
    Arc::new(t)
}
