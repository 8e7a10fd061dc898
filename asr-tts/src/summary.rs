//! The `qa_summary` job: after a session, the user's answers become their memory — a short
//! summary and tags, written by the LLM (asked for JSON) or, without one, by the local keyword
//! extractor — which the next session's first question can draw on.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::queue::{Context as JobContext, Handler, Job, JobError};
use futures::StreamExt;
use serde_json::json;

use crate::llm::{self, Event};
use crate::store::{self, Profile};
use crate::voice::Voice;

/// Job kind.
pub const KIND: &str = "qa_summary";

/// The handler.
pub struct Summarizer {
    voice: Arc<Voice>,
}

impl Summarizer {
    /// A handler over the voice service.
    pub fn new(voice: Arc<Voice>) -> Summarizer {
        Summarizer { voice }
    }
}

const SYSTEM: &str = "You keep a dating app's memory of a user. From their earlier summary and \
their answers below, write an updated summary (at most two sentences, third person, concrete: \
people, places, food, hobbies, plans) and up to six short lowercase tags. Answer with JSON only: \
{\"summary\": \"...\", \"tags\": [\"...\"]}";

/// The local fallback: the answers' most telling words.
pub fn local_summary(previous: &Profile, answers: &[String]) -> Profile {
    let all = answers.join(" ");
    let tags = llm::keywords(&all, 6);
    let summary = if tags.is_empty() {
        previous.summary.clone()
    } else {
        format!("Talked about {}.", tags.join(", "))
    };
    Profile {
        summary,
        tags,
        updated_at: 0,
    }
}

/// Reads `{"summary": …, "tags": […]}` out of an LLM reply (tolerating text around it).
pub fn parse_reply(reply: &str) -> Option<Profile> {
    let start = reply.find('{')?;
    let end = reply.rfind('}')?;
    let v: serde_json::Value = serde_json::from_str(reply.get(start..=end)?).ok()?;
    let summary = v["summary"].as_str()?.trim().to_string();
    let tags = v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str())
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty() && t.len() <= 40)
                .take(6)
                .collect()
        })
        .unwrap_or_default();
    (!summary.is_empty()).then_some(Profile {
        summary,
        tags,
        updated_at: 0,
    })
}

fn merge(previous: &Profile, new: Profile) -> Profile {
    let mut tags = new.tags.clone();
    for t in &previous.tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    tags.truncate(12);
    Profile {
        summary: new.summary,
        tags,
        updated_at: 0,
    }
}

impl Summarizer {
    async fn ask_llm(
        &self,
        previous: &Profile,
        turns: &[(u32, String, Option<String>)],
    ) -> Option<Profile> {
        let llm = self.voice.llm.as_ref()?;
        let mut convo = format!(
            "Earlier summary: {}\n",
            if previous.summary.is_empty() {
                "(none)"
            } else {
                &previous.summary
            }
        );
        for (_, q, a) in turns {
            if let Some(a) = a {
                convo.push_str(&format!("Q: {q}\nA: {a}\n"));
            }
        }
        let messages = vec![
            json!({"role": "system", "content": SYSTEM}),
            json!({"role": "user", "content": convo}),
        ];
        let cancel = tokio_util::sync::CancellationToken::new();
        let collect = async {
            let mut s = llm.complete(messages, cancel.clone()).await.ok()?;
            let mut text = String::new();
            while let Some(ev) = s.next().await {
                match ev {
                    Ok(Event::Token(t)) => text.push_str(&t),
                    Ok(Event::Usage { .. }) => {}
                    Err(_) => return None,
                }
            }
            Some(text)
        };
        let reply = tokio::time::timeout(Duration::from_secs(60), collect)
            .await
            .ok()??;
        parse_reply(&reply)
    }
}

#[async_trait]
impl Handler for Summarizer {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn time_limit(&self) -> Duration {
        Duration::from_secs(120)
    }

    async fn run(&self, job: &Job, _ctx: &JobContext) -> Result<(), JobError> {
        let Some(session) = job.payload["session"].as_str() else {
            return Err(JobError::permanent("job payload names no session"));
        };
        let db = &self.voice.db;
        let user: Option<String> =
            sqlx::query_scalar("SELECT user_id FROM qa_sessions WHERE id = $1")
                .bind(session)
                .fetch_optional(db.pool())
                .await
                .map_err(|e| JobError::retry(e.to_string()))?;
        let Some(user) = user else {
            return Err(JobError::permanent("the session no longer exists"));
        };
        let turns = store::turns(db, session)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        let answers: Vec<String> = turns
            .iter()
            .filter_map(|(_, _, a)| a.clone())
            .filter(|a| !a.trim().is_empty())
            .collect();
        if answers.is_empty() {
            return Ok(());
        }
        let previous = store::profile(db, &user)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        let fresh = match self.ask_llm(&previous, &turns).await {
            Some(p) => p,
            None => local_summary(&previous, &answers),
        };
        let merged = merge(&previous, fresh);
        store::put_profile(db, &user, &merged)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        tracing::info!(%session, %user, tags = ?merged.tags, "memory updated");
        Ok(())
    }

    async fn dead(&self, job: &Job, error: &str) {
        tracing::warn!(job = %job.id, %error, "summary job gave up");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_fallbacks() {
        let p = parse_reply("Sure! {\"summary\": \"Loves hiking with Ann.\", \"tags\": [\"Hiking\", \"friends\"]} ok").unwrap();
        assert_eq!(p.summary, "Loves hiking with Ann.");
        assert_eq!(p.tags, vec!["hiking", "friends"]);
        assert!(parse_reply("no json here").is_none());
        assert!(parse_reply("{\"tags\": []}").is_none());
        let l = local_summary(
            &Profile::default(),
            &["We ate dumplings at the night market".into()],
        );
        assert!(l.tags.contains(&"dumplings".to_string()), "{l:?}");
        let m = merge(
            &Profile {
                summary: "old".into(),
                tags: vec!["hiking".into()],
                updated_at: 0,
            },
            Profile {
                summary: "new".into(),
                tags: vec!["dumplings".into()],
                updated_at: 0,
            },
        );
        assert_eq!(m.tags, vec!["dumplings", "hiking"]);
        assert_eq!(m.summary, "new");
    }
}
