//! The `transcode` job kind: read the source as a byte stream, transcode it on a blocking
//! thread, publish what comes out as it comes out, and move the moment along (`transcoding` →
//! `ready` or `failed`).
//!
//! Two paths, one code:
//! * **Streaming.** Ingest queues the job as a background job with the upload's first durable
//!   bytes. A worker with nothing else to do claims it, reads the container's first bytes and,
//!   if the container can be read while it arrives ([`crate::container`]), transcodes the
//!   growing upload: reads past what has arrived wait. The poster is published with the first
//!   decoded frame; the master playlist, as always, only when every rung is complete.
//! * **After the upload.** Everything else: the job runs once the upload is complete (the
//!   completion promotes it), exactly as before streaming existed.
//!
//! Workers are not held hostage: a streaming job gives its worker back (and starts over later)
//! when a job of a finished upload has waited `stream_yield_secs` for a worker, when its upload
//! brings no bytes for `stream_idle_secs`, or when it has streamed for half the job time limit;
//! a container that cannot stream parks the job until the upload completes. A stream that
//! turns out unreadable while bytes are still arriving is never failed early: the job waits for
//! the last byte and the after-upload path decides, so bad input is refused the same way on
//! both paths. An upload terminated or expired mid-stream stops the job and removes whatever
//! it had published.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::db::Db;
use common::ids::now_ms;
use common::metrics::Metrics;
use common::moment::{self, Detail, State};
use common::queue::{Context, Defer, Handler, Job, JobError};
use common::store::{Extent, Growing, Key, Store};
use packager::publish::{Publisher, Thumb};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::Config;
use crate::container::{self, Sniff};
use crate::media::{self, Event, Input, Limits, Settings};
use crate::source::{Monitor, Policy, Reader, Stop};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: String,
}

/// Transcode metrics.
#[derive(Clone, Debug)]
pub struct TranscodeMetrics {
    speed: Histogram,
    paths: Family<PathLabels, Counter>,
}

impl TranscodeMetrics {
    /// Registers them.
    pub fn register(metrics: &Metrics) -> TranscodeMetrics {
        let speed = Histogram::new([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]);
        metrics.register(
            "transcode_speed_ratio",
            "Seconds of video transcoded per second of wall time (× realtime), after-upload path",
            speed.clone(),
        );
        let paths = Family::<PathLabels, Counter>::default();
        metrics.register(
            "transcode_ready",
            "Moments made ready, by path (streaming: while the upload arrived; after_upload)",
            paths.clone(),
        );
        TranscodeMetrics { speed, paths }
    }
}

/// The largest container header read to decide whether an upload can stream.
const MAX_SNIFF: u64 = 16 << 20;

/// The handler for `transcode` jobs.
pub struct Transcoder {
    queue: common::queue::Queue,
    db: Db,
    store: Store,
    growing: Arc<dyn Growing>,
    config: Config,
    packager: packager::Config,
    metrics: Option<TranscodeMetrics>,
}

/// How one attempt ended, when it did not make the moment ready.
enum Outcome {
    /// The moment's upload is gone; what was published is removed.
    Gone,
    /// Give the worker back.
    Defer(String, Defer),
    /// The remuxed top rung met an open GOP: transcode again without the remux.
    RemuxRefused,
    /// Failed.
    Failed(JobError),
}

impl From<JobError> for Outcome {
    fn from(e: JobError) -> Outcome {
        Outcome::Failed(e)
    }
}

impl Transcoder {
    /// A handler publishing to `store`, recording state in `db`, and reading uploads still in
    /// progress through `growing`.
    pub fn new(
        queue: common::queue::Queue,
        db: Db,
        store: Store,
        growing: Arc<dyn Growing>,
        config: Config,
        packager: packager::Config,
        metrics: Option<TranscodeMetrics>,
    ) -> Transcoder {
        media::init();
        Transcoder {
            queue,
            db,
            store,
            growing,
            config,
            packager,
            metrics,
        }
    }

    fn settings(&self, allow_remux: bool) -> Settings {
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
            allow_remux,
            speech: self.config.captions,
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            stall: Duration::from_secs(self.config.stream_idle_secs.max(1)),
            yield_after: Some(Duration::from_secs(self.config.stream_yield_secs)),
            max_streaming: Duration::from_secs((self.config.job_time_limit_secs / 2).max(1)),
            poll: Duration::from_millis(250),
        }
    }

    /// The source's extent: an upload still arriving (or complete) as ingest knows it, or an
    /// object stored whole. `None`: the upload was abandoned.
    async fn extent(&self, m: &moment::Moment, key: &Key) -> Result<Option<Extent>, JobError> {
        match self.growing.extent(key).await {
            Ok(Some(e)) => return Ok(Some(e)),
            Ok(None) if m.state == State::Uploading => return Ok(None),
            Ok(None) => {}
            Err(e) => return Err(JobError::retry(format!("reading the upload's state: {e}"))),
        }
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(Extent::whole(key.clone(), meta.size))),
            Err(common::store::Error::NotFound(_)) => Err(JobError::permanent(
                "the uploaded source is missing from storage",
            )),
            Err(e) => Err(JobError::retry(format!("looking up the source: {e}"))),
        }
    }

    async fn detail(&self, id: &str, progress: f64, detail: &Detail) {
        if let Err(e) = moment::set_progress(&self.db, id, progress, detail).await {
            tracing::warn!(moment = %id, error = %e, "could not record progress");
        }
    }

    /// Removes what an abandoned moment had published.
    async fn unpublish(&self, id: &str) {
        match self.store.list(&format!("hls/{id}/")).await {
            Ok(objects) => {
                for o in objects {
                    if let Ok(k) = Key::new(o.key) {
                        let _ = self.store.delete(&k).await;
                    }
                }
            }
            Err(e) => tracing::warn!(moment = %id, error = %e, "could not list what to remove"),
        }
    }

    /// Reads the container's first bytes to decide whether the growing upload can be read as
    /// it arrives. Returns the reader (positioned at 0) and the decision.
    async fn sniff(&self, reader: Reader) -> Result<(Reader, Sniff), Outcome> {
        let monitor = reader.monitor();
        let done = tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let mut want = 64 * 1024;
            loop {
                let head = reader.head(want)?;
                match container::sniff(&head, reader.monitor().length()) {
                    Sniff::NeedMore(n) if n > MAX_SNIFF => {
                        return Ok((
                            reader,
                            Sniff::Fallback(format!(
                                "the container header is larger than {} MiB",
                                MAX_SNIFF >> 20
                            )),
                        ));
                    }
                    Sniff::NeedMore(n) if n > head.len() as u64 => want = n.max(want * 2),
                    Sniff::NeedMore(_) => {
                        return Ok((
                            reader,
                            Sniff::Fallback("the file ends in its header".into()),
                        ));
                    }
                    other => return Ok((reader, other)),
                }
            }
        })
        .await
        .map_err(|e| Outcome::Failed(JobError::retry(format!("sniffing thread: {e}"))))?;
        done.map_err(|e: std::io::Error| self.stopped(&monitor, e.to_string()))
    }

    /// What a stopped reader means for the job.
    fn stopped(&self, monitor: &Monitor, fallback: String) -> Outcome {
        match monitor.stop() {
            Some(Stop::Gone) => Outcome::Gone,
            Some(Stop::Cancelled) => Outcome::Failed(JobError::retry("cancelled")),
            Some(stop @ Stop::Yield) => Outcome::Defer(
                format!("{stop}; it starts again when a worker is free"),
                Defer::For(Duration::ZERO),
            ),
            Some(stop @ Stop::Stalled(d)) => Outcome::Defer(stop.to_string(), Defer::For(d)),
            Some(stop @ Stop::TooLong(_)) => Outcome::Defer(
                format!("{stop}; it is transcoded once complete"),
                Defer::UntilPromoted,
            ),
            Some(Stop::Io(e)) => {
                Outcome::Failed(JobError::retry(format!("reading the source: {e}")))
            }
            None => Outcome::Failed(JobError::retry(fallback)),
        }
    }

    async fn attempt(
        &self,
        id: &str,
        key: &Key,
        extent: Extent,
        ctx: &Context,
        detail: &mut Detail,
        allow_remux: bool,
    ) -> Result<(), Outcome> {
        let complete_at_start = extent.complete;
        // A complete upload may still be in its pieces (S3 parts not yet assembled): the pieces
        // go once the object is assembled, and the reader then asks for the extent again.
        let whole = extent.pieces.len() == 1 && extent.pieces[0].key == *key;
        let work = ctx.cancel.child_token();
        let reader = Reader::open(
            self.store.clone(),
            key.clone(),
            extent,
            (!complete_at_start || !whole).then(|| self.growing.clone()),
            Some(self.db.clone()),
            self.policy(),
            work.clone(),
            Some(ctx.clone()),
        );
        let monitor = reader.monitor();
        let (reader, seekable, hint) = if complete_at_start {
            // after the last byte; an earlier attempt's reason (why it did not stream, or why it
            // stopped) says why
            detail.streaming = Some(false);
            if detail.reason.is_none() {
                detail.reason = Some("the upload was complete when a worker took it".into());
            }
            (reader, true, "source")
        } else {
            match self.sniff(reader).await? {
                (reader, Sniff::Stream { kind, .. }) => {
                    detail.streaming = Some(true);
                    detail.reason = None;
                    tracing::info!(moment = %id, container = kind.describe(), "transcoding while the upload arrives");
                    (reader, kind.seek_while_arriving(), kind.hint())
                }
                (reader, Sniff::Fallback(reason)) => {
                    detail.streaming = Some(false);
                    detail.reason = Some(reason.clone());
                    if !monitor.complete() {
                        tracing::info!(moment = %id, %reason, "cannot transcode while it arrives; waiting for the last byte");
                        self.detail(id, 0.0, detail).await;
                        return Err(Outcome::Defer(reason, Defer::UntilPromoted));
                    }
                    (reader, true, "source")
                }
                (_, Sniff::NeedMore(_)) => {
                    return Err(Outcome::Failed(JobError::retry("sniffing ended early")));
                }
            }
        };
        self.detail(id, 0.0, detail).await;

        let started = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(32);
        let settings = self.settings(allow_remux);
        let work2 = work.clone();
        let input = Input {
            reader,
            seekable,
            hint,
        };
        let handle =
            tokio::task::spawn_blocking(move || media::transcode(input, &settings, tx, &work2));

        let mut publisher = Publisher::new(self.store.clone(), id);
        let mut thumbs: Vec<Thumb> = Vec::new();
        let mut last_progress = Instant::now() - Duration::from_secs(10);
        let mut publish_error: Option<String> = None;
        let mut poster_time: Option<f64> = None;
        while let Some(ev) = rx.recv().await {
            let r = match ev {
                Event::Started { info, init } => publisher.start_rung(info, init).await,
                Event::Segment { rung, segment } => publisher.segment(&rung, segment).await,
                Event::RungFailed { rung, reason } => {
                    tracing::warn!(moment = %id, %rung, %reason, "rung failed; publishing the others");
                    publisher.rung_failed(&rung, &reason);
                    Ok(())
                }
                Event::Poster { image, time } => match publisher.poster(&image).await {
                    Ok(()) => {
                        poster_time = Some(time);
                        detail.poster_key = publisher.poster_key().map(str::to_string);
                        self.detail(id, 0.0, detail).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Event::Thumb(t) => {
                    thumbs.push(t);
                    Ok(())
                }
                Event::Progress {
                    encoded,
                    total,
                    received,
                    ..
                } => {
                    if last_progress.elapsed() >= Duration::from_millis(900) {
                        last_progress = Instant::now();
                        detail.encoded_s = Some((encoded * 10.0).round() / 10.0);
                        detail.received_s = received.map(|r| (r * 10.0).round() / 10.0);
                        let p = if total > 0.0 {
                            (encoded / total).min(0.99)
                        } else {
                            0.0
                        };
                        self.detail(id, p, detail).await;
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
            return Err(JobError::retry(e).into());
        }
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                // the reader's stop explains a failed read
                if let Some(stop) = monitor.stop()
                    && stop != Stop::Cancelled
                {
                    return Err(self.stopped(&monitor, e.to_string()));
                }
                return Err(match e {
                    media::Error::RemuxRefused => Outcome::RemuxRefused,
                    media::Error::Cancelled => Outcome::Failed(JobError::retry("cancelled")),
                    // Unreadable while bytes are still arriving: wait for the last byte and let
                    // the after-upload path decide, so bad input fails the same way on both.
                    _ if !monitor.complete() => Outcome::Defer(
                        format!(
                            "could not be read while arriving ({e}); trying again once complete"
                        ),
                        Defer::UntilPromoted,
                    ),
                    media::Error::Invalid(msg) => Outcome::Failed(JobError::permanent(msg)),
                    other => Outcome::Failed(JobError::retry(other.to_string())),
                });
            }
        };
        tracing::debug!(moment = %id, "encoded; publishing the playlists");
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
        let streamed = !complete_at_start;
        if let Some(m) = &self.metrics {
            if !streamed {
                m.speed.observe(speed);
            }
            m.paths
                .get_or_create(&PathLabels {
                    path: if streamed {
                        "streaming"
                    } else {
                        "after_upload"
                    }
                    .into(),
                })
                .inc();
        }
        let mut record = serde_json::to_value(&published)
            .map_err(|e| Outcome::Failed(JobError::retry(e.to_string())))?;
        record["duration"] = serde_json::json!(summary.decoded_seconds);
        record["remuxed"] = serde_json::json!(summary.remuxed.iter().collect::<Vec<_>>());
        record["streamed"] = serde_json::json!(streamed);
        record["poster_time"] =
            serde_json::json!(poster_time.map(|t| (t * 1000.0).round() / 1000.0));
        record["captions"] = self.queue_captions(id, summary.speech.as_deref()).await?;
        // queued before `ready`, like the captions, so a crash between the two cannot lose it
        self.queue
            .enqueue(&crate::preview::job(id, summary.preview_start))
            .await
            .map_err(|e| Outcome::Failed(JobError::retry(format!("queueing the preview: {e}"))))?;
        record["source"] = serde_json::json!({
            "format": summary.probe.format,
            "codec": summary.probe.codec,
            "width": summary.probe.width,
            "height": summary.probe.height,
            "fps": summary.probe.fps,
            "has_audio": summary.probe.has_audio,
        });
        detail.encoded_s = Some((summary.decoded_seconds * 10.0).round() / 10.0);
        detail.received_s = detail.encoded_s;
        self.detail(id, 0.99, detail).await;
        moment::set_ready(
            &self.db,
            id,
            &record,
            self.packager.public_base_url.as_deref(),
        )
        .await
        .map_err(|e| JobError::retry(e.to_string()))?;
        tracing::info!(
            moment = %id,
            rungs = published.renditions.len(),
            seconds = summary.decoded_seconds,
            wall = elapsed,
            streamed,
            "moment ready"
        );
        Ok(())
    }
}

impl Transcoder {
    /// What the moment's record says of its captions at `ready`, after handing the speech to
    /// a `captions` job: the 16 kHz audio is stored (`speech/{id}.wav`, removed by that job)
    /// and the job queued before the moment is ready, so a crash between the two cannot lose
    /// it; the job waits for `ready` and never delays it.
    async fn queue_captions(
        &self,
        id: &str,
        speech: Option<&[i16]>,
    ) -> Result<serde_json::Value, Outcome> {
        if !self.config.captions {
            return Ok(serde_json::json!({ "status": "none: captions are turned off" }));
        }
        let Some(speech) = speech.filter(|s| !s.is_empty()) else {
            return Ok(serde_json::json!({ "status": "none: no audio" }));
        };
        let key = Key::new(moment::speech_key(id))
            .map_err(|e| Outcome::Failed(JobError::permanent(e.to_string())))?;
        let wav = bytes::Bytes::from(wav(speech, media::audio::SPEECH_RATE));
        self.store
            .put_bytes(&key, wav, &common::store::PutOptions::default())
            .await
            .map_err(|e| Outcome::Failed(JobError::retry(format!("storing the speech: {e}"))))?;
        self.queue
            .enqueue(&moment::captions_job(id))
            .await
            .map_err(|e| Outcome::Failed(JobError::retry(format!("queueing captions: {e}"))))?;
        Ok(serde_json::json!({ "status": "pending" }))
    }
}

/// A 16-bit mono PCM WAV file.
fn wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let data = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// How long a job waits, without using an attempt, while the object store is unreachable.
const STORE_OUTAGE_RETRY: Duration = Duration::from_secs(5);

impl Transcoder {
    /// One attempt at a transcode job.
    async fn run_once(&self, job: &Job, ctx: &Context) -> Result<(), JobError> {
        let Some(id) = job.payload["moment"].as_str() else {
            return Err(JobError::permanent("job payload names no moment"));
        };
        let Some(m) = moment::get(&self.db, id)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?
        else {
            // withdrawn with its upload (terminated or expired): nothing to make
            self.unpublish(id).await;
            return Ok(());
        };
        if m.state.is_final() {
            // Published (or given up) already: finishing twice publishes once.
            return Ok(());
        }
        let Some(source) = m.source_key.clone() else {
            return Err(JobError::permanent("the moment has no uploaded source"));
        };
        let key =
            Key::new(source).map_err(|e| JobError::permanent(format!("bad source key: {e}")))?;
        let mut detail = m.detail.clone();
        let mut allow_remux = true;
        loop {
            let Some(extent) = self.extent(&m, &key).await? else {
                self.unpublish(id).await;
                return Ok(());
            };
            if extent.complete {
                moment::set_state(&self.db, id, State::Transcoding, None)
                    .await
                    .map_err(|e| JobError::retry(e.to_string()))?;
            } else if !self.config.streaming {
                detail.streaming = Some(false);
                detail.reason = Some("this worker transcodes only complete uploads".into());
                self.detail(id, 0.0, &detail).await;
                return Err(JobError::defer(
                    "waiting for the last byte",
                    Defer::UntilPromoted,
                ));
            } else if extent.updated_ms > 0
                && now_ms() - extent.updated_ms > (self.config.stream_idle_secs as i64) * 1000
            {
                // still stalled since the last attempt gave up: do not start over for nothing
                let idle = Duration::from_secs(self.config.stream_idle_secs.max(1));
                return Err(JobError::defer(
                    "the upload is still stalled",
                    Defer::For(idle),
                ));
            }
            let outcome = self
                .attempt(id, &key, extent, ctx, &mut detail, allow_remux)
                .await;
            match outcome {
                Ok(()) => return Ok(()),
                Err(Outcome::RemuxRefused) if allow_remux => {
                    tracing::info!(moment = %id, "the source has an open GOP; transcoding again without the remux");
                    self.unpublish(id).await;
                    detail.poster_key = None;
                    allow_remux = false;
                }
                Err(Outcome::Gone) => {
                    tracing::info!(moment = %id, "the upload was abandoned; stopping and removing what was published");
                    self.unpublish(id).await;
                    return Ok(());
                }
                Err(Outcome::Defer(reason, defer)) => {
                    if detail.streaming == Some(true) {
                        detail.reason = Some(reason.clone());
                    }
                    self.detail(id, 0.0, &detail).await;
                    return Err(JobError::defer(reason, defer));
                }
                Err(Outcome::RemuxRefused) => {
                    return Err(JobError::retry(media::Error::RemuxRefused.to_string()));
                }
                Err(Outcome::Failed(e)) => {
                    if e.retryable
                        && let Ok(Some(now)) = moment::get(&self.db, id).await
                        && now.state == State::Transcoding
                    {
                        let _ = moment::set_state(&self.db, id, State::Queued, None).await;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// A retryable failure while the object store itself is unreachable is the store's outage,
    /// not the job's fault: the job waits [`STORE_OUTAGE_RETRY`] and tries again without using
    /// one of its attempts (three attempts with a 2 s backoff would otherwise all be spent in
    /// a 10 s outage). Any other failure counts as usual.
    async fn outage_or(&self, e: JobError) -> JobError {
        let reason = match tokio::time::timeout(Duration::from_secs(5), self.store.check()).await {
            Ok(Ok(())) => return e,
            Ok(Err(check)) => check.to_string(),
            Err(_) => "its readiness check timed out".to_string(),
        };
        tracing::warn!(error = %e.message, store = %reason, "object store unavailable: the job waits without using an attempt");
        JobError::defer(
            format!(
                "storage unavailable, waiting without using an attempt: {}",
                e.message
            ),
            Defer::For(STORE_OUTAGE_RETRY),
        )
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
        match self.run_once(job, ctx).await {
            Err(e) if e.retryable && e.defer.is_none() => Err(self.outage_or(e).await),
            r => r,
        }
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
