//! The buckets in Redis, shared by every node: one key per (kind, user) holding the bucket's
//! TAT (see `gcra.rs`), read, checked and written by one Lua script on the Redis server's clock
//! — one round trip, atomic, and immune to the nodes' clocks disagreeing. The key expires when
//! the bucket is full again, so idle users cost nothing.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::gcra::{Decision, Shape};

/// The steps of [`super::gcra::take`], in Lua. KEYS[1]: the bucket; ARGV: µs per token, burst,
/// cost. Returns `{1, tat}` when taken or `{0, retry_us}`.
const TAKE: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = math.min(math.max(tonumber(ARGV[3]), 0), burst)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allowed_at = new_tat - burst * interval
if allowed_at > now then
  return {0, math.ceil(allowed_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, string.format('%.0f', new_tat)}
"#;

/// A Redis connection (made on first use, then kept and re-established by the manager) and the
/// script.
pub(super) struct Buckets {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    url: String,
}

impl Buckets {
    pub(super) fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Buckets, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("limits.redis_url {}: {e}", crate::db::redact(url)))?;
        Ok(Buckets {
            client,
            conn: tokio::sync::Mutex::new(None),
            script: redis::Script::new(TAKE),
            prefix: prefix.to_string(),
            timeout,
            url: crate::db::redact(url),
        })
    }

    pub(super) fn describe(&self) -> String {
        self.url.clone()
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            self.timeout * 2,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| {
            format!(
                "no connection to {} within {:?}",
                self.url,
                self.timeout * 2
            )
        })?
        .map_err(|e| format!("cannot connect to {}: {e}", self.url))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// One take: the decision, or why Redis could not give one.
    pub(super) async fn take(
        &self,
        kind: &str,
        user: &str,
        shape: Shape,
        cost: u64,
    ) -> Result<Decision, String> {
        let mut conn = self.connection().await?;
        let key = format!("{}{kind}:{user}", self.prefix);
        let mut invocation = self.script.key(key);
        invocation.arg(shape.interval_us).arg(shape.burst).arg(cost);
        let call = invocation.invoke_async::<(i64, i64)>(&mut conn);
        let (allowed, value) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("{} did not answer within {:?}", self.url, self.timeout))?
            .map_err(|e| format!("{}: {e}", self.url))?;
        Ok(if allowed == 1 {
            Decision::Allow { tat: value as f64 }
        } else {
            Decision::Deny {
                retry_us: value as f64,
            }
        })
    }
}
