//! Per-user rate limits: one token bucket per (kind, user), checked where the work is asked for.
//!
//! - `requests`: every authenticated API request (counted by the [`crate::auth::User`] and
//!   [`crate::auth::StreamUser`] extractors, so every route is covered the same way);
//! - `uploads`: upload creations (tus and the resumable-upload draft alike);
//! - `upload_bytes`: the bytes of upload bodies per second — a throttle, not a refusal: the
//!   server stops reading until the bucket has refilled, so an upload slows down but never
//!   fails for it (off by default: a byte budget belongs to a deployment's plans);
//! - `qa_sessions`: Q&A sessions opened;
//! - `speech`: `/v1/asr` and `/v1/tts` calls.
//!
//! The buckets live in this process by default, and in Redis when `limits.redis_url` (or
//! `MOMENTS_REDIS_URL`) is set: each take is one `EVALSHA` of a script that does the whole
//! check-and-take atomically on the Redis server's clock, so the limit holds across nodes.
//! Over the limit a request gets `429` with `Retry-After` and a JSON reason. When Redis cannot
//! be reached within `redis_timeout_ms`, the limiter fails **open** by default (the request
//! goes through, `moments_rate_limit_errors_total` counts it and a warning is logged at most
//! every 10 s): the limits protect capacity and fairness, not identity — authentication still
//! holds — and a cache outage should not stop every upload. `fail_open = false` refuses with
//! `503` and `Retry-After: 1` instead. Never a 500.

pub mod gcra;
mod remote;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;

use crate::error::ApiError;

/// The kinds of bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Authenticated API requests.
    Requests,
    /// Upload creations.
    Uploads,
    /// Upload body bytes (a throttle).
    UploadBytes,
    /// Q&A sessions opened.
    QaSessions,
    /// ASR and TTS calls.
    Speech,
}

impl Kind {
    /// The name in config, metrics and Redis keys.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Uploads => "uploads",
            Kind::UploadBytes => "upload_bytes",
            Kind::QaSessions => "qa_sessions",
            Kind::Speech => "speech",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Requests => "API requests",
            Kind::Uploads => "uploads created",
            Kind::UploadBytes => "upload bytes",
            Kind::QaSessions => "Q&A sessions opened",
            Kind::Speech => "ASR/TTS calls",
        }
    }
}

/// One bucket's setting: `rate = "20/s"` (also `/min`, `/h`; for bytes `"8MiB/s"`), `burst`
/// tokens when full. `rate = "off"` disables it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Tokens per time unit, or `off`.
    pub rate: String,
    /// Tokens a full bucket holds (for bytes: bytes, or with KiB/MiB). Needed unless off.
    #[serde(default)]
    pub burst: Option<BurstSize>,
}

/// A burst as a number or, for bytes, a size string (`"16MiB"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum BurstSize {
    /// A count.
    Count(u64),
    /// A size with KiB/MiB/GiB.
    Size(String),
}

impl Bucket {
    /// `rate` (as in config) with a burst of `burst` tokens.
    pub fn new(rate: &str, burst: u64) -> Bucket {
        Bucket {
            rate: rate.into(),
            burst: Some(BurstSize::Count(burst)),
        }
    }

    /// `None` when off; else tokens per second and the burst.
    pub fn parse(&self) -> Result<Option<(f64, u64)>, String> {
        let rate = self.rate.trim();
        if rate == "off" {
            return Ok(None);
        }
        let (num, unit) = rate.split_once('/').ok_or_else(|| {
            format!("invalid rate {rate:?} (use e.g. 20/s, 100/min, 10/h or off)")
        })?;
        let per = match unit.trim() {
            "s" => 1.0,
            "min" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "invalid rate unit {other:?} in {rate:?} (use s, min or h)"
                ));
            }
        };
        let n = size(num)?;
        let burst = match &self.burst {
            None => {
                return Err(format!(
                    "rate {rate:?} needs a burst (the tokens a full bucket holds)"
                ));
            }
            Some(BurstSize::Count(n)) => *n,
            Some(BurstSize::Size(s)) => size(s)?,
        };
        if n == 0 || burst == 0 {
            return Err(format!(
                "rate {rate:?} and its burst must be above zero (or rate = \"off\")"
            ));
        }
        Ok(Some((n as f64 / per, burst)))
    }
}

/// `123`, `64KiB`, `8MiB`, `1GiB`.
fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .iter()
        .find_map(|(suffix, m)| t.strip_suffix(suffix).map(|n| (n, *m)))
        .unwrap_or((t, 1));
    num.trim()
        .parse::<u64>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| format!("invalid number {s:?} (use e.g. 20, 64KiB or 8MiB)"))
}

/// `[limits]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Redis that holds the buckets for every node (`redis://host:6379/0`). Unset: each
    /// process keeps its own (the limits are then per node).
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys (`{prefix}{kind}:{user}`).
    pub redis_prefix: String,
    /// How long one Redis round trip may take before it counts as unreachable (ms).
    pub redis_timeout_ms: u64,
    /// Redis unreachable: let requests through (true, the default) or refuse them with 503.
    pub fail_open: bool,
    /// Authenticated API requests per user.
    pub requests: Bucket,
    /// Uploads created per user.
    pub uploads: Bucket,
    /// Upload bytes per second per user (a throttle).
    pub upload_bytes: Bucket,
    /// Q&A sessions opened per user.
    pub qa_sessions: Bucket,
    /// ASR and TTS calls per user.
    pub speech: Bucket,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis_url: None,
            redis_prefix: "moments:rl:".into(),
            redis_timeout_ms: 250,
            fail_open: true,
            // a player polls, an app refreshes: generous per person, far below abuse
            requests: Bucket::new("50/s", 500),
            uploads: Bucket::new("120/h", 30),
            upload_bytes: Bucket {
                rate: "off".into(),
                burst: None,
            },
            qa_sessions: Bucket::new("60/h", 10),
            speech: Bucket::new("120/min", 30),
        }
    }
}

impl Config {
    /// Every bucket off (for tests of other things, and for a deployment that limits at its
    /// gateway instead).
    pub fn off() -> Config {
        let off = || Bucket {
            rate: "off".into(),
            burst: None,
        };
        Config {
            requests: off(),
            uploads: off(),
            upload_bytes: off(),
            qa_sessions: off(),
            speech: off(),
            ..Config::default()
        }
    }

    /// Checks every bucket's setting.
    pub fn validate(&self) -> Result<(), String> {
        for (kind, b) in self.buckets() {
            b.parse()
                .map_err(|e| format!("limits.{}: {e}", kind.name()))?;
        }
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(format!(
                "limits.redis_url must start with redis:// or rediss:// (got {:?})",
                crate::db::redact(url)
            ));
        }
        Ok(())
    }

    fn buckets(&self) -> [(Kind, &Bucket); 5] {
        [
            (Kind::Requests, &self.requests),
            (Kind::Uploads, &self.uploads),
            (Kind::UploadBytes, &self.upload_bytes),
            (Kind::QaSessions, &self.qa_sessions),
            (Kind::Speech, &self.speech),
        ]
    }
}

/// Limiter errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bucket is empty.
    #[error(
        "rate limit: {what} for this user are limited to {rate} (burst {burst}); retry in {retry_s} s"
    )]
    Limited {
        /// What is limited.
        what: &'static str,
        /// The configured rate, as written.
        rate: String,
        /// The configured burst.
        burst: u64,
        /// Whole seconds until a retry passes (at least 1).
        retry_s: u64,
    },
    /// Redis did not answer and the limiter fails closed.
    #[error("rate limiter unavailable (limits.fail_open = false): {0}")]
    Unavailable(String),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match &e {
            Error::Limited { retry_s, .. } => {
                let retry = HeaderValue::from(*retry_s);
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
                    .with_header(http::header::RETRY_AFTER, retry)
            }
            Error::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "limiter_unavailable",
                e.to_string(),
            )
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// Where the buckets are.
enum Backend {
    /// In this process: key → TAT (µs since the epoch).
    Local(Mutex<HashMap<(Kind, String), f64>>),
    /// In Redis, shared by every node.
    Redis(Box<remote::Buckets>),
}

struct Limit {
    shape: gcra::Shape,
    rate: String,
    burst: u64,
}

/// The process's rate limiter (see the module docs).
pub struct Limiter {
    backend: Backend,
    limits: HashMap<Kind, Limit>,
    fail_open: bool,
    limited: Family<KindLabel, Counter>,
    errors: Family<KindLabel, Counter>,
    last_warning_ms: AtomicI64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("where", &self.describe())
            .finish()
    }
}

impl Limiter {
    /// A limiter for `config` (validated here), registering its metrics. Redis is connected
    /// lazily: a node starts even while Redis is down.
    pub fn new(config: &Config, metrics: &crate::metrics::Metrics) -> Result<Limiter, String> {
        config.validate()?;
        let mut limits = HashMap::new();
        for (kind, b) in config.buckets() {
            if let Some((per_sec, burst)) = b.parse()? {
                limits.insert(
                    kind,
                    Limit {
                        shape: gcra::Shape::new(per_sec, burst),
                        rate: b.rate.trim().to_string(),
                        burst,
                    },
                );
            }
        }
        let backend = match &config.redis_url {
            Some(url) => Backend::Redis(Box::new(remote::Buckets::new(
                url,
                &config.redis_prefix,
                Duration::from_millis(config.redis_timeout_ms.max(1)),
            )?)),
            None => Backend::Local(Mutex::default()),
        };
        let limited = Family::<KindLabel, Counter>::default();
        metrics.register(
            "rate_limited",
            "Requests refused (or upload reads paused) by a per-user rate limit, by bucket",
            limited.clone(),
        );
        let errors = Family::<KindLabel, Counter>::default();
        metrics.register(
            "rate_limit_errors",
            "Rate-limit checks that could not reach Redis (let through or refused by limits.fail_open), by bucket",
            errors.clone(),
        );
        Ok(Limiter {
            backend,
            limits,
            fail_open: config.fail_open,
            limited,
            errors,
            last_warning_ms: AtomicI64::new(0),
        })
    }

    /// Where the buckets are kept, for the startup log.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Local(_) => "in this process".into(),
            Backend::Redis(r) => format!("redis {}", r.describe()),
        }
    }

    /// Takes `cost` tokens from `user`'s `kind` bucket: `Ok` when allowed (or the bucket is
    /// off), [`Error::Limited`] with when to retry, or [`Error::Unavailable`] when Redis is
    /// down and the limiter fails closed.
    pub async fn take(&self, kind: Kind, user: &str, cost: u64) -> Result<(), Error> {
        match self.check(kind, user, cost).await? {
            None => Ok(()),
            Some(retry_us) => {
                let limit = &self.limits[&kind];
                Err(Error::Limited {
                    what: kind.what(),
                    rate: limit.rate.clone(),
                    burst: limit.burst,
                    retry_s: (retry_us / 1e6).ceil().max(1.0) as u64,
                })
            }
        }
    }

    /// Waits until `user`'s `kind` bucket has `cost` tokens and takes them (the upload byte
    /// throttle). Returns how long it waited. Fails only when Redis is down and the limiter
    /// fails closed.
    pub async fn wait(&self, kind: Kind, user: &str, cost: u64) -> Result<Duration, Error> {
        let mut waited = Duration::ZERO;
        let Some(limit) = self.limits.get(&kind) else {
            return Ok(waited);
        };
        // a take is clamped to the bucket's size: pay a bigger cost in bucket-sized pieces
        let mut left = cost;
        while left > 0 {
            let piece = left.min(limit.burst);
            while let Some(retry_us) = self.check(kind, user, piece).await? {
                let pause =
                    Duration::from_micros(retry_us.ceil() as u64).max(Duration::from_millis(1));
                tokio::time::sleep(pause).await;
                waited += pause;
            }
            left -= piece;
        }
        Ok(waited)
    }

    /// Whether `kind` is limited at all (callers skip the work of counting when not).
    pub fn is_on(&self, kind: Kind) -> bool {
        self.limits.contains_key(&kind)
    }

    /// `None`: taken; `Some(µs)`: refused, retry after.
    async fn check(&self, kind: Kind, user: &str, cost: u64) -> Result<Option<f64>, Error> {
        let Some(limit) = self.limits.get(&kind) else {
            return Ok(None);
        };
        let decision = match &self.backend {
            Backend::Local(map) => {
                let now = crate::ids::now_ms() as f64 * 1e3;
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() > 100_000 {
                    // forget the buckets that are full again (their TAT has passed)
                    map.retain(|_, tat| *tat > now);
                }
                let key = (kind, user.to_string());
                let d = gcra::take(limit.shape, map.get(&key).copied(), now, cost as f64);
                if let gcra::Decision::Allow { tat } = d {
                    map.insert(key, tat);
                }
                d
            }
            Backend::Redis(r) => match r.take(kind.name(), user, limit.shape, cost).await {
                Ok(d) => d,
                Err(e) => return self.unreachable(kind, e),
            },
        };
        match decision {
            gcra::Decision::Allow { .. } => Ok(None),
            gcra::Decision::Deny { retry_us } => {
                self.limited
                    .get_or_create(&KindLabel {
                        kind: kind.name().into(),
                    })
                    .inc();
                Ok(Some(retry_us))
            }
        }
    }

    fn unreachable(&self, kind: Kind, reason: String) -> Result<Option<f64>, Error> {
        self.errors
            .get_or_create(&KindLabel {
                kind: kind.name().into(),
            })
            .inc();
        let now = crate::ids::now_ms();
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now - last >= 10_000
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error = %reason,
                fail_open = self.fail_open,
                "rate limiter cannot reach Redis; {}",
                if self.fail_open { "letting requests through" } else { "refusing requests" }
            );
        }
        if self.fail_open {
            Ok(None)
        } else {
            Err(Error::Unavailable(reason))
        }
    }
}

#[cfg(test)]
mod tests;
