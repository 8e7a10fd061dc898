//! Signed webhooks, per the Standard Webhooks specification: each POST carries
//! `webhook-id` (the event id), `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (`v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`, one per configured secret,
//! space-separated, so two secrets are valid at once while one is rotated).
//!
//! What an endpoint's answer means: 2xx delivered; 410 Gone disables the endpoint (its
//! deliveries wait until an operator enables it again); anything else — another status, a
//! redirect (never followed), a timeout, a refused connection — is retried with backoff. At most
//! [`MAX_BODY`] bytes of an answer are read, so a huge body costs nothing.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes of an endpoint's answer that are read (for the error message); the rest is dropped.
pub const MAX_BODY: usize = 4096;

/// A signing secret: `whsec_` + base64 of 24–64 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// Parses a configured secret; the reason names what is wrong (never the secret).
    pub fn parse(s: &str) -> Result<Secret, String> {
        let Some(b64) = s.strip_prefix("whsec_") else {
            return Err("must start with whsec_ (whsec_ + base64 of 24–64 random bytes)".into());
        };
        let key = B64
            .decode(b64.trim())
            .map_err(|e| format!("the part after whsec_ is not base64: {e}"))?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "decodes to {} bytes; Standard Webhooks secrets are 24–64 bytes",
                key.len()
            ));
        }
        Ok(Secret(key))
    }

    /// A new random 32-byte secret (`moments events secret`).
    pub fn generate() -> Secret {
        let key: [u8; 32] = rand::random();
        Secret(key.to_vec())
    }

    /// The `whsec_…` form.
    pub fn encoded(&self) -> String {
        format!("whsec_{}", B64.encode(&self.0))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes keys of any length; 24–64 bytes are checked when parsing.
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per secret.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// 410 Gone: stop sending to this endpoint.
    Gone,
    /// Anything else; retried.
    Failed(String),
}

/// An endpoint ready to send to.
#[derive(Debug, Clone)]
pub struct Sender {
    url: String,
    secrets: Vec<Secret>,
    http: reqwest::Client,
}

impl Sender {
    /// A sender for `endpoint` (validated by [`super::Config::validate`]).
    pub fn new(endpoint: &super::Endpoint, timeout: Duration) -> Result<Sender, String> {
        let secrets = endpoint
            .secrets
            .iter()
            .map(|s| Secret::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("moments-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Sender {
            url: endpoint.url.clone(),
            secrets,
            http,
        })
    }

    /// POSTs one event body, signed now.
    pub async fn send(&self, id: &str, body: &str) -> Outcome {
        let ts = crate::ids::now_ms() / 1000;
        let sig = signature_header(&self.secrets, id, ts, body.as_bytes());
        let res = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body.to_string())
            .send()
            .await;
        let mut res = match res {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Outcome::Failed("timed out".into()),
            Err(e) => return Outcome::Failed(format!("request failed: {e}")),
        };
        let status = res.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        if status == reqwest::StatusCode::GONE {
            return Outcome::Gone;
        }
        // a few bytes of the answer for the operator, never the whole of a huge one
        let mut head = Vec::new();
        while head.len() < MAX_BODY {
            match tokio::time::timeout(Duration::from_secs(1), res.chunk()).await {
                Ok(Ok(Some(c))) => head.extend_from_slice(&c[..c.len().min(MAX_BODY - head.len())]),
                _ => break,
            }
        }
        let text: String = String::from_utf8_lossy(&head).chars().take(200).collect();
        if status.is_redirection() {
            let to = res
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            return Outcome::Failed(format!(
                "answered {status} to {to} (redirects are not followed)"
            ));
        }
        Outcome::Failed(format!("answered {status}: {}", text.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_specification_example() {
        // The example of the Standard Webhooks specification (and its reference libraries).
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap_or_else(|e| panic!("{e}"));
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body.as_bytes()),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn two_secrets_give_two_signatures_and_bad_secrets_are_named() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let h = signature_header(&[a.clone(), b.clone()], "evt_1", 10, b"{}");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(
            parts,
            vec![a.sign("evt_1", 10, b"{}"), b.sign("evt_1", 10, b"{}")]
        );
        assert_eq!(Secret::parse(&a.encoded()), Ok(a));
        assert!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap_err()
                .contains("whsec_")
        );
        assert!(Secret::parse("whsec_!!!").unwrap_err().contains("base64"));
        assert!(
            Secret::parse("whsec_c2hvcnQ=")
                .unwrap_err()
                .contains("5 bytes")
        );
        let long = format!("whsec_{}", B64.encode([7u8; 65]));
        assert!(Secret::parse(&long).unwrap_err().contains("65 bytes"));
        assert!(!format!("{:?}", Secret::generate()).contains("whsec"));
    }
}
