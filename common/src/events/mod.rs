//! Events for the rest of the app, through a transactional outbox.
//!
//! A state change and the event that reports it are written in one database transaction
//! ([`emit_on`] on the caller's transaction), so they cannot disagree: an event exists exactly
//! when its change committed. After the commit a relay ([`relay`], a job on the durable queue,
//! so one node at a time holds it and another takes over when that node dies) hands each event
//! to every configured target — signed webhooks ([`webhook`], Standard Webhooks) and a message
//! bus ([`bus`], NATS JetStream) — at least once, in order per subject, with retries and
//! backoff, and dead-letters a delivery after `max_attempts` (listed and replayable at the
//! admin routes, [`admin`], and with `moments events`).
//!
//! Every event carries an `id` (consumers deduplicate on it; it is also the `webhook-id` and
//! the JetStream `Nats-Msg-Id`), a schema `version`, its `subject` (the moment, or the user for
//! `profile.updated`) and `seq` (1, 2, … per subject). Their JSON schema is generated from the
//! types below ([`schema`]) and kept in `docs/events.schema.json`.

pub mod admin;
pub mod bus;
pub mod outbox;
pub mod relay;
pub mod webhook;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::db::Error;
use crate::ids::{new_id, now_ms};

/// The schema version of every event this build writes.
pub const VERSION: u32 = 1;

/// Every event type, as it appears in `type`.
pub const TYPES: &[&str] = &[
    "upload.created",
    "upload.completed",
    "upload.expired",
    "moment.transcoding",
    "moment.ready",
    "moment.failed",
    "moment.deleted",
    "qa.round_done",
    "profile.updated",
];

/// `[events]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Webhook endpoints (`[[events.webhooks]]`), each with the event types it wants.
    pub webhooks: Vec<Endpoint>,
    /// The message bus (`MOMENTS_EVENTS_URL`): `nats://HOST:PORT` publishes every event to
    /// NATS JetStream. Unset: no bus.
    pub url: Option<String>,
    /// Bus subjects are `{subject_prefix}.{type}`, e.g. `moments.events.moment.ready`.
    pub subject_prefix: String,
    /// The JetStream stream the relay creates (if missing) over `{subject_prefix}.>`.
    pub stream: String,
    /// Attempts per delivery before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (milliseconds); doubles per attempt, with jitter.
    pub backoff_base_ms: u64,
    /// Longest retry delay (milliseconds).
    pub backoff_max_ms: u64,
    /// Longest a webhook request (or a bus publish and its ack) may take (milliseconds).
    pub timeout_ms: u64,
    /// How often the relay looks for events committed by other processes (milliseconds).
    pub poll_ms: u64,
    /// Deliveries in flight per target.
    pub concurrency: usize,
    /// Delivered events (and their delivery rows) are removed after this many hours.
    pub retain_hours: u64,
    /// User ids (token `sub`) allowed on the admin routes (`/v1/admin/events…`).
    pub admins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            webhooks: Vec::new(),
            url: None,
            subject_prefix: "moments.events".into(),
            stream: "MOMENTS_EVENTS".into(),
            max_attempts: 12,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            timeout_ms: 10_000,
            poll_ms: 100,
            concurrency: 16,
            retain_hours: 72,
            admins: Vec::new(),
        }
    }
}

/// One webhook endpoint (`[[events.webhooks]]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Short name: `[a-z0-9_-]`, unique; deliveries are kept under `webhook:{name}`.
    pub name: String,
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// Signing secrets, `whsec_` + base64 of 24–64 random bytes. Two may be given while a
    /// secret is rotated: every request is signed with each, so the receiver accepts either.
    pub secrets: Vec<String>,
    /// Event types wanted (`moment.ready`, or `moment.*`); empty means all.
    #[serde(default)]
    pub types: Vec<String>,
}

impl Endpoint {
    /// The delivery target this endpoint's rows are kept under.
    pub fn target(&self) -> String {
        format!("webhook:{}", self.name)
    }

    /// Whether this endpoint wants events of `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| type_matches(t, kind))
    }
}

/// The `api` role's share of the events: the operators' routes (`/v1/admin/events…`).
pub fn service(shared: &crate::service::Shared, config: &Config) -> crate::service::Service {
    crate::service::Service::routes(admin::router(admin::AdminState {
        shared: shared.clone(),
        admins: std::sync::Arc::new(config.admins.clone()),
    }))
}

/// The `worker` role's share: the relay (one `events_relay` job for the whole deployment, held
/// by one worker at a time) delivering to the configured endpoints and bus.
pub async fn jobs(
    shared: &crate::service::Shared,
    config: &Config,
) -> anyhow::Result<crate::service::Service> {
    let bus = bus::open(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(b) = &bus {
        tracing::info!(bus = %b.describe(), "events are published to the bus");
    }
    let relay = relay::Relay::new(
        shared.db.clone(),
        config.clone(),
        bus,
        Some(relay::EventMetrics::register(&shared.metrics)),
    )
    .map_err(|e| anyhow::anyhow!("events: {e}"))?;
    relay::ensure(&shared.queue).await?;
    Ok(crate::service::Service::pool(
        "events",
        vec![std::sync::Arc::new(relay)],
        1,
    ))
}

/// Whether `pattern` (`moment.ready`, or a family `moment.*`) covers the event type `kind`.
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(prefix) => kind
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == kind,
    }
}

impl Config {
    /// Checks what start-up must refuse: bad names, URLs, secrets and types, by name.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for (i, e) in self.webhooks.iter().enumerate() {
            let at = format!("events.webhooks[{i}] ({:?})", e.name);
            if e.name.is_empty()
                || e.name.len() > 40
                || !e
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "{at}: name must be 1–40 characters of a-z, 0-9, - and _"
                ));
            }
            if !names.insert(e.name.as_str()) {
                return Err(format!("{at}: the name is used twice"));
            }
            if !(e.url.starts_with("http://") || e.url.starts_with("https://"))
                || reqwest::Url::parse(&e.url).is_err()
            {
                return Err(format!("{at}: url {:?} is not an http(s) URL", e.url));
            }
            if e.secrets.is_empty() || e.secrets.len() > 2 {
                return Err(format!(
                    "{at}: give one secret, or two while rotating (got {})",
                    e.secrets.len()
                ));
            }
            for (n, s) in e.secrets.iter().enumerate() {
                webhook::Secret::parse(s)
                    .map_err(|why| format!("{at}: secret {}: {why}", n + 1))?;
            }
            for t in &e.types {
                let known = TYPES.iter().any(|k| type_matches(t, k));
                if !known {
                    return Err(format!(
                        "{at}: unknown event type {t:?} (types: {})",
                        TYPES.join(", ")
                    ));
                }
            }
        }
        if let Some(url) = &self.url
            && !url.starts_with("nats://")
        {
            return Err(format!(
                "events.url (MOMENTS_EVENTS_URL) {url:?}: only nats://HOST:PORT is supported"
            ));
        }
        if self.max_attempts == 0 {
            return Err("events.max_attempts must be at least 1".into());
        }
        if self.subject_prefix.is_empty()
            || self
                .subject_prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'*' || b == b'>')
        {
            return Err("events.subject_prefix must be a plain NATS subject".into());
        }
        Ok(())
    }

    /// Every delivery target: `webhook:{name}` per endpoint, and `bus` when a bus is set.
    pub fn targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self.webhooks.iter().map(Endpoint::target).collect();
        if self.url.is_some() {
            t.push(bus::TARGET.to_string());
        }
        t
    }

    /// The targets that want an event of `kind`.
    pub fn targets_for(&self, kind: &str) -> Vec<String> {
        let mut t: Vec<String> = self
            .webhooks
            .iter()
            .filter(|e| e.wants(kind))
            .map(Endpoint::target)
            .collect();
        if self.url.is_some() {
            t.push(bus::TARGET.to_string());
        }
        t
    }
}

/// One event as delivered: the envelope and its typed `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Moments event")]
pub struct Event {
    /// `evt_` and 26 base32 characters; the same on every delivery of this event (consumers
    /// deduplicate on it).
    pub id: String,
    /// Version of the schema `data` follows (this build writes 1).
    pub version: u32,
    /// When the change was made (RFC 3339, UTC, milliseconds).
    pub timestamp: String,
    /// What the event is about: `moment:{id}` for uploads, moments and Q&A rounds,
    /// `user:{id}` for profiles. Order is kept per subject.
    pub subject: String,
    /// 1, 2, 3, … per subject, in the order the changes were committed.
    pub seq: i64,
    /// The type and its data.
    #[serde(flatten)]
    pub payload: Payload,
}

/// The event's `type` and the `data` that goes with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum Payload {
    /// An upload was created (`POST /files`); its moment exists, state `uploading`.
    #[serde(rename = "upload.created")]
    UploadCreated(UploadCreated),
    /// The upload's last byte is stored; the transcode is queued.
    #[serde(rename = "upload.completed")]
    UploadCompleted(UploadCompleted),
    /// An unfinished upload passed its expiry and was removed (with its moment).
    #[serde(rename = "upload.expired")]
    UploadExpired(UploadExpired),
    /// A worker started making the ladder.
    #[serde(rename = "moment.transcoding")]
    MomentTranscoding(MomentRef),
    /// The ladder is published and playable.
    #[serde(rename = "moment.ready")]
    MomentReady(MomentReady),
    /// The moment could not be made.
    #[serde(rename = "moment.failed")]
    MomentFailed(MomentFailed),
    /// The moment is gone (its upload was terminated, failed its digest or expired).
    #[serde(rename = "moment.deleted")]
    MomentDeleted(MomentDeleted),
    /// A Q&A round ended: the question asked and the answer transcribed.
    #[serde(rename = "qa.round_done")]
    QaRoundDone(QaRoundDone),
    /// The user's memory (summary and tags) was rewritten after a Q&A session.
    #[serde(rename = "profile.updated")]
    ProfileUpdated(ProfileUpdated),
}

/// `upload.created`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UploadCreated {
    /// The upload (`/files/{upload_id}`).
    pub upload_id: String,
    /// The moment it becomes.
    pub moment_id: String,
    /// The owner.
    pub user_id: String,
    /// Declared size in bytes.
    pub length: u64,
    /// `Upload-Metadata`, decoded (keys without a value map to "").
    pub metadata: BTreeMap<String, String>,
}

/// `upload.completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UploadCompleted {
    /// The upload.
    pub upload_id: String,
    /// Its moment.
    pub moment_id: String,
    /// The owner.
    pub user_id: String,
    /// Bytes stored.
    pub length: u64,
}

/// `upload.expired`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UploadExpired {
    /// The upload.
    pub upload_id: String,
    /// Its moment (removed with it).
    pub moment_id: String,
    /// The owner.
    pub user_id: String,
    /// Bytes that had arrived.
    pub received: u64,
    /// Declared size.
    pub length: u64,
}

/// `moment.transcoding`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MomentRef {
    /// The moment.
    pub moment_id: String,
    /// The owner.
    pub user_id: String,
}

/// One published rendition in `moment.ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rendition {
    /// Rung name (`480p`, `720p`, `1080p`).
    pub name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Peak bit rate (bits/s).
    pub bandwidth: u64,
}

/// `moment.ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MomentReady {
    /// The moment.
    pub moment_id: String,
    /// The owner.
    pub user_id: String,
    /// The master playlist: absolute when `MOMENTS_PUBLIC_BASE_URL` is set, else the path on
    /// the service's own origin (`/hls/{id}/master.m3u8`).
    pub master_url: String,
    /// The renditions in the master, ascending bandwidth.
    pub renditions: Vec<Rendition>,
    /// The poster image (absolute or path, as `master_url`), when one was made.
    pub poster_url: Option<String>,
    /// Duration in seconds.
    pub duration: Option<f64>,
}

/// `moment.failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MomentFailed {
    /// The moment.
    pub moment_id: String,
    /// The owner.
    pub user_id: String,
    /// Why, for people.
    pub reason: String,
}

/// `moment.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MomentDeleted {
    /// The moment.
    pub moment_id: String,
    /// The owner.
    pub user_id: String,
    /// `upload terminated`, `upload expired` or `upload digest mismatch`.
    pub reason: String,
}

/// `qa.round_done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QaRoundDone {
    /// The Q&A session.
    pub session_id: String,
    /// The moment it is about.
    pub moment_id: String,
    /// The user who answered.
    pub user_id: String,
    /// 1, 2, …
    pub round: u32,
    /// The question asked.
    pub question: String,
    /// The answer, as transcribed.
    pub transcript: String,
    /// Who wrote the question: `llm`, `local question writer`, or `interrupted` (the round's
    /// question was cut off before it was asked).
    pub writer: String,
}

/// `profile.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProfileUpdated {
    /// The user.
    pub user_id: String,
    /// The rewritten summary.
    pub summary: String,
    /// The tags.
    pub tags: Vec<String>,
}

impl Payload {
    /// The `type` string.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::UploadCreated(_) => "upload.created",
            Payload::UploadCompleted(_) => "upload.completed",
            Payload::UploadExpired(_) => "upload.expired",
            Payload::MomentTranscoding(_) => "moment.transcoding",
            Payload::MomentReady(_) => "moment.ready",
            Payload::MomentFailed(_) => "moment.failed",
            Payload::MomentDeleted(_) => "moment.deleted",
            Payload::QaRoundDone(_) => "qa.round_done",
            Payload::ProfileUpdated(_) => "profile.updated",
        }
    }

    /// The subject order is kept within.
    pub fn subject(&self) -> String {
        let moment = match self {
            Payload::UploadCreated(d) => &d.moment_id,
            Payload::UploadCompleted(d) => &d.moment_id,
            Payload::UploadExpired(d) => &d.moment_id,
            Payload::MomentTranscoding(d) => &d.moment_id,
            Payload::MomentReady(d) => &d.moment_id,
            Payload::MomentFailed(d) => &d.moment_id,
            Payload::MomentDeleted(d) => &d.moment_id,
            Payload::QaRoundDone(d) => &d.moment_id,
            Payload::ProfileUpdated(d) => return format!("user:{}", d.user_id),
        };
        format!("moment:{moment}")
    }
}

/// Writes `payload` into the outbox on `conn`, which should be the transaction of the change
/// it reports: the event then exists exactly when the change does. Call
/// [`crate::db::Db::notify`] with [`crate::db::Change::Events`] after committing, to wake this
/// process's relay at once (others find it within `poll_ms`).
pub async fn emit_on(conn: &mut sqlx::AnyConnection, payload: Payload) -> Result<Event, Error> {
    let subject = payload.subject();
    // The per-subject counter: an upsert, so concurrent writers of one subject queue on its
    // row (PostgreSQL) or on the single writer (SQLite) and take consecutive numbers.
    let seq: i64 = sqlx::query(
        "INSERT INTO event_subjects (subject, last_seq) VALUES ($1, 1) \
         ON CONFLICT (subject) DO UPDATE SET last_seq = event_subjects.last_seq + 1 \
         RETURNING last_seq",
    )
    .bind(&subject)
    .fetch_one(&mut *conn)
    .await?
    .try_get("last_seq")?;
    let now = now_ms();
    let event = Event {
        id: format!("evt_{}", new_id()),
        version: VERSION,
        timestamp: rfc3339(now),
        subject,
        seq,
        payload,
    };
    let body =
        serde_json::to_string(&event).map_err(|e| Error::Sql(sqlx::Error::Encode(e.into())))?;
    // `created_at` orders the fan-out across subjects. On PostgreSQL it is the server's clock,
    // so events written on nodes whose clocks disagree still sort in commit order.
    let created_at = if conn.backend_name() == "PostgreSQL" {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    } else {
        "$6"
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO events (id, type, subject, seq, body, created_at) \
         VALUES ($1, $2, $3, $4, $5, {created_at})"
    )))
    .bind(&event.id)
    .bind(event.payload.kind())
    .bind(&event.subject)
    .bind(seq)
    .bind(body)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(event)
}

/// The JSON Schema of [`Event`] (what `docs/events.schema.json` holds).
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Event)).unwrap_or(serde_json::Value::Null)
}

/// Milliseconds since the epoch as RFC 3339 in UTC (`2026-12-02T17:04:05.123Z`).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // civil-from-days (proleptic Gregorian), after H. Hinnant's public-domain algorithm
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_227_445_123), "2026-12-02T16:04:05.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn types_match_exactly_or_by_prefix() {
        assert!(type_matches("moment.*", "moment.ready"));
        assert!(!type_matches("moment.*", "momentx.ready"));
        assert!(!type_matches("moment.*", "upload.created"));
        assert!(type_matches("qa.round_done", "qa.round_done"));
        assert!(!type_matches("qa.round", "qa.round_done"));
        // every payload's kind is a listed type, and only those
        let e = Payload::MomentFailed(MomentFailed {
            moment_id: "m".into(),
            user_id: "u".into(),
            reason: "r".into(),
        });
        assert!(TYPES.contains(&e.kind()));
        assert_eq!(e.subject(), "moment:m");
    }

    #[test]
    fn the_envelope_is_flat_with_type_and_data() {
        let e = Event {
            id: "evt_x".into(),
            version: VERSION,
            timestamp: rfc3339(0),
            subject: "user:alice".into(),
            seq: 3,
            payload: Payload::ProfileUpdated(ProfileUpdated {
                user_id: "alice".into(),
                summary: "likes noodles".into(),
                tags: vec!["food".into()],
            }),
        };
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(v["type"], "profile.updated");
        assert_eq!(v["data"]["tags"][0], "food");
        assert_eq!(v["seq"], 3);
        let back: Event = serde_json::from_value(v).unwrap_or_else(|_| e.clone());
        assert_eq!(back, e);
    }

    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/events/schema.json");
        let want = serde_json::to_string_pretty(&schema()).unwrap_or_default() + "\n";
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "common/src/events/schema.json is stale: run `moments events schema > common/src/events/schema.json`"
        );
        // every type is in it, with its data
        for t in TYPES {
            assert!(
                have.contains(&format!("\"{t}\"")),
                "{t} missing from the schema"
            );
        }
    }

    #[test]
    fn config_refuses_bad_endpoints_by_name() {
        let good = webhook::Secret::generate().encoded();
        let mut c = Config {
            webhooks: vec![Endpoint {
                name: "crm".into(),
                url: "https://crm.example/hook".into(),
                secrets: vec![good.clone()],
                types: vec!["moment.*".into()],
            }],
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
        c.webhooks[0].secrets = vec!["whsec_c2hvcnQ=".into()];
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("events.webhooks[0] (\"crm\")") && err.contains("secret 1"),
            "{err}"
        );
        c.webhooks[0].secrets = vec![good.clone()];
        c.webhooks[0].types = vec!["moment.readyy".into()];
        assert!(c.validate().unwrap_err().contains("unknown event type"));
        c.webhooks[0].types = vec![];
        c.webhooks[0].url = "ftp://x".into();
        assert!(c.validate().unwrap_err().contains("not an http(s) URL"));
        c.webhooks[0].url = "http://127.0.0.1:9/h".into();
        c.url = Some("amqp://localhost".into());
        assert!(c.validate().unwrap_err().contains("MOMENTS_EVENTS_URL"));
    }
}
