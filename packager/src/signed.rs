//! Signed playback (pure): a playback token binds a moment, an expiry, the time it was issued
//! and, optionally, the viewer it was issued to, under an HMAC-SHA256 key every node shares.
//!
//! `token = {expires_s}.{issued_ms}.{viewer, base64url}.{HMAC-SHA256, base64url}` over
//! `moment \n expires_s \n issued_ms \n viewer`. The moment is not in the token: it is the
//! moment of the URL the token comes with, so a token of another moment fails its signature.
//! Revocation ("every token issued so far") is a cut-off time per moment, compared with
//! `issued_ms` (see `common::auth::revoke`).
//!
//! With signing on, the origin rewrites the playlists it serves so every URI they name carries
//! the same token ([`sign_playlist`]); players need nothing special.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The query parameter a signed URL carries.
pub const PARAM: &str = "token";

/// A playback token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Seconds since the epoch after which it is refused.
    pub expires: i64,
    /// When it was issued (ms since the epoch).
    pub issued_ms: i64,
    /// The user it was issued to, when bound to one.
    pub viewer: Option<String>,
}

/// Why a token is refused. The messages say nothing about the moment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token.
    #[error("a playback token is required")]
    Missing,
    /// Not a token of ours, tampered with, or for another moment.
    #[error("the playback token is not valid here")]
    Invalid,
    /// Past its expiry.
    #[error("the playback token has expired")]
    Expired,
    /// Issued before the moment's tokens were revoked.
    #[error("the playback token was revoked")]
    Revoked,
}

/// Signs and checks playback tokens.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer with `key` (at least 16 bytes; a shorter one is refused).
    pub fn new(key: &[u8]) -> Result<Signer, String> {
        if key.len() < 16 {
            return Err("the playback key must be at least 16 bytes".into());
        }
        Ok(Signer { key: key.to_vec() })
    }

    fn mac(&self, moment: &str, expires: i64, issued_ms: i64, viewer: &str) -> Hmac<Sha256> {
        // a key of any length is a valid HMAC key
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(format!("{moment}\n{expires}\n{issued_ms}\n{viewer}").as_bytes());
        mac
    }

    /// The token for `moment` under `grant`.
    pub fn sign(&self, moment: &str, grant: &Grant) -> String {
        let viewer = grant.viewer.as_deref().unwrap_or("");
        let tag = self
            .mac(moment, grant.expires, grant.issued_ms, viewer)
            .finalize()
            .into_bytes();
        format!(
            "{}.{}.{}.{}",
            grant.expires,
            grant.issued_ms,
            B64.encode(viewer),
            B64.encode(tag)
        )
    }

    /// Checks `token` for `moment` at `now_s`; `revoked_before_ms`: the moment's cut-off.
    pub fn check(
        &self,
        moment: &str,
        token: Option<&str>,
        now_s: i64,
        revoked_before_ms: Option<i64>,
    ) -> Result<Grant, Refusal> {
        let token = token.filter(|t| !t.is_empty()).ok_or(Refusal::Missing)?;
        if token.len() > 512 {
            return Err(Refusal::Invalid);
        }
        let mut parts = token.split('.');
        let (Some(exp), Some(iat), Some(viewer), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refusal::Invalid);
        };
        let expires: i64 = exp.parse().map_err(|_| Refusal::Invalid)?;
        let issued_ms: i64 = iat.parse().map_err(|_| Refusal::Invalid)?;
        let viewer = B64
            .decode(viewer)
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or(Refusal::Invalid)?;
        let tag = B64.decode(tag).map_err(|_| Refusal::Invalid)?;
        self.mac(moment, expires, issued_ms, &viewer)
            .verify_slice(&tag)
            .map_err(|_| Refusal::Invalid)?;
        if now_s >= expires {
            return Err(Refusal::Expired);
        }
        if revoked_before_ms.is_some_and(|before| issued_ms <= before) {
            return Err(Refusal::Revoked);
        }
        Ok(Grant {
            expires,
            issued_ms,
            viewer: (!viewer.is_empty()).then_some(viewer),
        })
    }
}

/// `uri` with `?token=…` (or `&token=…`) added.
fn with_token(uri: &str, token: &str) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{PARAM}={token}")
}

/// A playlist whose every URI carries `token`: the URI lines, and the `URI="…"` attributes of
/// tags (`EXT-X-MAP`, `EXT-X-MEDIA`, `EXT-X-I-FRAME-STREAM-INF`). `segments` false leaves the
/// media segments' and init segments' URIs bare (playlists signed, segments cacheable across
/// viewers by a CDN).
pub fn sign_playlist(playlist: &str, token: &str, segments: bool) -> String {
    let mut out = String::with_capacity(playlist.len() + 64);
    for line in playlist.lines() {
        if line.starts_with('#') {
            match line.find("URI=\"") {
                Some(at) if segments || !line.starts_with("#EXT-X-MAP") => {
                    let start = at + 5;
                    let end = line[start..].find('"').map_or(line.len(), |e| start + e);
                    out.push_str(&line[..start]);
                    out.push_str(&with_token(&line[start..end], token));
                    out.push_str(&line[end..]);
                }
                _ => out.push_str(line),
            }
        } else if line.trim().is_empty() {
            out.push_str(line);
        } else if segments || line.trim_end().ends_with(".m3u8") {
            out.push_str(&with_token(line.trim(), token));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn grant(viewer: Option<&str>) -> Grant {
        Grant {
            expires: 2_000,
            issued_ms: 1_000_000,
            viewer: viewer.map(str::to_string),
        }
    }

    #[test]
    fn a_token_is_good_for_its_moment_until_it_expires_or_is_revoked() {
        let s = signer();
        let t = s.sign("m1", &grant(Some("bob")));
        assert_eq!(s.check("m1", Some(&t), 1_999, None), Ok(grant(Some("bob"))));
        assert_eq!(s.check("m1", Some(&t), 2_000, None), Err(Refusal::Expired));
        assert_eq!(s.check("m2", Some(&t), 1_000, None), Err(Refusal::Invalid));
        assert_eq!(s.check("m1", None, 1_000, None), Err(Refusal::Missing));
        assert_eq!(
            s.check("m1", Some(&t), 1_000, Some(1_000_000)),
            Err(Refusal::Revoked)
        );
        // a token issued after the cut-off is good
        assert!(s.check("m1", Some(&t), 1_000, Some(999_999)).is_ok());
        let other = Signer::new(b"another key, also long enough").unwrap();
        assert_eq!(
            other.check("m1", Some(&t), 1_000, None),
            Err(Refusal::Invalid)
        );
        assert!(Signer::new(b"short").is_err());
    }

    #[test]
    fn tampered_tokens_are_invalid() {
        let s = signer();
        let t = s.sign("m1", &grant(None));
        let parts: Vec<&str> = t.split('.').collect();
        // a later expiry, another viewer, garbage
        let later = format!("9999999999.{}.{}.{}", parts[1], parts[2], parts[3]);
        let viewer = format!(
            "{}.{}.{}.{}",
            parts[0],
            parts[1],
            B64.encode("eve"),
            parts[3]
        );
        for bad in [
            later,
            viewer,
            "x".into(),
            "1.2.3.4.5".into(),
            "1.2.!.4".into(),
        ] {
            assert_eq!(
                s.check("m1", Some(&bad), 1_000, None),
                Err(Refusal::Invalid),
                "{bad}"
            );
        }
        // the refusals say nothing of the moment
        for r in [
            Refusal::Missing,
            Refusal::Invalid,
            Refusal::Expired,
            Refusal::Revoked,
        ] {
            assert!(!r.to_string().contains("m1"));
        }
    }

    #[test]
    fn playlists_carry_the_token_to_everything_they_name() {
        let master = "#EXTM3U\n#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",URI=\"captions/en.m3u8\"\n\
            #EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8\n\
            #EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI=\"720p/iframes.m3u8\"\n";
        let signed = sign_playlist(master, "T", true);
        assert!(
            signed.contains("URI=\"captions/en.m3u8?token=T\""),
            "{signed}"
        );
        assert!(signed.contains("\n720p/index.m3u8?token=T\n"), "{signed}");
        assert!(
            signed.contains("URI=\"720p/iframes.m3u8?token=T\""),
            "{signed}"
        );
        let media =
            "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.0,\nseg_00000.m4s\n#EXT-X-ENDLIST\n";
        let signed = sign_playlist(media, "T", true);
        assert!(signed.contains("URI=\"init.mp4?token=T\""), "{signed}");
        assert!(signed.contains("\nseg_00000.m4s?token=T\n"), "{signed}");
        let open = sign_playlist(media, "T", false);
        assert_eq!(open, media);
        assert!(m3u8_rs::parse_media_playlist_res(signed.as_bytes()).is_ok());
    }
}
