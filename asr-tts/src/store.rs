//! Voice rows in the metadata database: sessions, rounds (transcripts stored with the moment)
//! and per-user memory (profile summary and tags).

use common::db::{Change, Db, Error};
use common::events::{self, Payload};
use common::ids::now_ms;
use sqlx::Row;

/// A Q&A session.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// The moment it is about.
    pub moment_id: String,
    /// `new`, `open` or `done`.
    pub state: String,
    /// Question audio format (`ogg` or `pcm16`).
    pub audio_format: String,
}

/// Creates a session.
pub async fn create_session(
    db: &Db,
    id: &str,
    user: &str,
    moment: &str,
    audio: &str,
) -> Result<(), Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO qa_sessions (id, user_id, moment_id, state, audio_format, created_at, updated_at) \
         VALUES ($1, $2, $3, 'new', $4, $5, $5)",
    )
    .bind(id)
    .bind(user)
    .bind(moment)
    .bind(audio)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The session if `user` owns it.
pub async fn session_for(db: &Db, id: &str, user: &str) -> Result<Option<Session>, Error> {
    let row = sqlx::query(
        "SELECT id, user_id, moment_id, state, audio_format FROM qa_sessions WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(db.pool())
    .await?;
    row.map(|r| {
        Ok(Session {
            id: r.try_get("id")?,
            user_id: r.try_get("user_id")?,
            moment_id: r.try_get("moment_id")?,
            state: r.try_get("state")?,
            audio_format: r.try_get("audio_format")?,
        })
    })
    .transpose()
}

/// Moves a `new` session to `open` (a session is connected once). False when it was not new.
pub async fn open_session(db: &Db, id: &str) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE qa_sessions SET state = 'open', updated_at = $1 WHERE id = $2 AND state = 'new'",
    )
    .bind(now_ms())
    .bind(id)
    .execute(db.pool())
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Marks a session done.
pub async fn close_session(db: &Db, id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE qa_sessions SET state = 'done', updated_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Adds LLM token usage (and counts rounds the local writer served).
pub async fn add_usage(
    db: &Db,
    id: &str,
    prompt: u64,
    completion: u64,
    local_round: bool,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE qa_sessions SET prompt_tokens = prompt_tokens + $1, completion_tokens = completion_tokens + $2, \
         local_rounds = local_rounds + $3, updated_at = $4 WHERE id = $5",
    )
    .bind(prompt as i64)
    .bind(completion as i64)
    .bind(i64::from(local_round))
    .bind(now_ms())
    .bind(id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Token usage of a session: (prompt, completion, local rounds).
pub async fn usage(db: &Db, id: &str) -> Result<(i64, i64, i64), Error> {
    let r = sqlx::query(
        "SELECT prompt_tokens, completion_tokens, local_rounds FROM qa_sessions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(db.pool())
    .await?;
    Ok((
        r.try_get("prompt_tokens")?,
        r.try_get("completion_tokens")?,
        r.try_get("local_rounds")?,
    ))
}

/// Stores a round's question.
pub async fn put_question(
    db: &Db,
    session: &str,
    round: u32,
    question: &str,
    writer: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO qa_turns (session_id, round, question, writer, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (session_id, round) DO UPDATE SET question = $3, writer = $4",
    )
    .bind(session)
    .bind(i64::from(round))
    .bind(question)
    .bind(writer)
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Stores a round's transcribed answer. The first answer of a round ends it: `qa.round_done`
/// is written in the same transaction (storing it again changes the text, reports nothing).
pub async fn put_answer(db: &Db, session: &str, round: u32, answer: &str) -> Result<(), Error> {
    let mut tx = db.pool().begin().await?;
    let first = sqlx::query(
        "UPDATE qa_turns SET answer = $1 WHERE session_id = $2 AND round = $3 AND answer IS NULL \
         RETURNING question, writer",
    )
    .bind(answer)
    .bind(session)
    .bind(i64::from(round))
    .fetch_optional(&mut *tx)
    .await?;
    let emitted = match first {
        Some(row) => {
            let Some(s) = sqlx::query("SELECT user_id, moment_id FROM qa_sessions WHERE id = $1")
                .bind(session)
                .fetch_optional(&mut *tx)
                .await?
            else {
                // no session row (never happens in the service): keep the answer, report nothing
                tx.commit().await?;
                return Ok(());
            };
            events::emit_on(
                &mut tx,
                Payload::QaRoundDone(events::QaRoundDone {
                    session_id: session.to_string(),
                    moment_id: s.try_get("moment_id")?,
                    user_id: s.try_get("user_id")?,
                    round,
                    question: row.try_get("question")?,
                    transcript: answer.to_string(),
                    writer: row.try_get("writer")?,
                }),
            )
            .await?;
            true
        }
        None => {
            sqlx::query("UPDATE qa_turns SET answer = $1 WHERE session_id = $2 AND round = $3")
                .bind(answer)
                .bind(session)
                .bind(i64::from(round))
                .execute(&mut *tx)
                .await?;
            false
        }
    };
    tx.commit().await?;
    if emitted {
        db.notify(Change::Events);
    }
    Ok(())
}

/// The rounds of a session: (round, question, answer).
pub async fn turns(db: &Db, session: &str) -> Result<Vec<(u32, String, Option<String>)>, Error> {
    let rows = sqlx::query(
        "SELECT round, question, answer FROM qa_turns WHERE session_id = $1 ORDER BY round",
    )
    .bind(session)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("round")? as u32,
                r.try_get("question")?,
                r.try_get("answer")?,
            ))
        })
        .collect()
}

/// A user's memory.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Profile {
    /// Summary of earlier sessions.
    pub summary: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Last change (ms), 0 when never written.
    pub updated_at: i64,
}

/// The user's memory (empty when none yet).
pub async fn profile(db: &Db, user: &str) -> Result<Profile, Error> {
    let row = sqlx::query("SELECT summary, tags, updated_at FROM profiles WHERE user_id = $1")
        .bind(user)
        .fetch_optional(db.pool())
        .await?;
    Ok(match row {
        Some(r) => {
            let tags: String = r.try_get("tags")?;
            Profile {
                summary: r.try_get("summary")?,
                tags: serde_json::from_str(&tags).unwrap_or_default(),
                updated_at: r.try_get("updated_at")?,
            }
        }
        None => Profile::default(),
    })
}

/// Writes the user's memory, and `profile.updated` in the same transaction when the summary
/// or the tags changed (a summary job run again after a crash reports nothing new).
pub async fn put_profile(db: &Db, user: &str, p: &Profile) -> Result<(), Error> {
    let tags = serde_json::to_string(&p.tags).unwrap_or_else(|_| "[]".into());
    let mut tx = db.begin_write().await?;
    let before = sqlx::query("SELECT summary, tags FROM profiles WHERE user_id = $1")
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
    let changed = match &before {
        Some(r) => {
            r.try_get::<String, _>("summary")? != p.summary
                || serde_json::from_str::<Vec<String>>(&r.try_get::<String, _>("tags")?)
                    .unwrap_or_default()
                    != p.tags
        }
        None => true,
    };
    sqlx::query(
        "INSERT INTO profiles (user_id, summary, tags, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id) DO UPDATE SET summary = $2, tags = $3, updated_at = $4",
    )
    .bind(user)
    .bind(&p.summary)
    .bind(tags)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    if changed {
        events::emit_on(
            &mut tx,
            Payload::ProfileUpdated(events::ProfileUpdated {
                user_id: user.to_string(),
                summary: p.summary.clone(),
                tags: p.tags.clone(),
            }),
        )
        .await?;
    }
    tx.commit().await?;
    if changed {
        db.notify(Change::Events);
    }
    Ok(())
}
