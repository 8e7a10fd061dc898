//! The bodies of common's fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/`) and
//! by the test suite (`tests/fuzz.rs`, through `common::testing::fuzz::replay`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a check reports by panicking

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::auth::{Auth, Error, mint};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};

/// A verifier and the one token it must accept.
struct Keys {
    auth: Auth,
    token: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("moments-fuzz-jwt-{}", std::process::id()));
        let (private, public) = common::auth::ensure_dev_key(&dir).expect("a key pair");
        let _ = std::fs::remove_dir_all(&dir);
        Keys {
            auth: Auth::from_public_pem(&public, "fuzz").expect("the public key"),
            token: mint(&private, "fuzz-user", Duration::from_secs(30 * 86400)).expect("a token"),
        }
    })
}

/// Checks one verification outcome: only the real token verifies (no other byte string is
/// accepted, however close), and a refusal is an ordinary 401 reason.
fn outcome(token: &str, r: Result<common::auth::Claims, Error>) {
    match r {
        Ok(c) => {
            assert_eq!(
                token,
                keys().token,
                "a token that is not the minted one verified"
            );
            assert_eq!(c.sub, "fuzz-user");
        }
        Err(e) => assert!(
            matches!(e, Error::Invalid(_) | Error::Malformed | Error::TooLong),
            "{e:?}"
        ),
    }
}

/// JWT verification on arbitrary input: as a bare token, as an `Authorization` header, and as a
/// forged token (the input split at its first NUL into header and claims JSON) carrying the
/// real token's signature or none at all.
pub fn jwt(data: &[u8]) {
    let k = keys();
    let text = String::from_utf8_lossy(data);
    outcome(&text, k.auth.verify(&text));

    if let Ok(v) = HeaderValue::from_bytes(data) {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v);
        let r = k.auth.claims_from_headers(&h);
        if r.is_ok() {
            let bearer = text.trim().split_once(' ').map(|(_, t)| t.trim());
            assert_eq!(bearer, Some(k.token.as_str()));
        } else {
            outcome("", r);
        }
    }

    if let Some(nul) = data.iter().position(|b| *b == 0) {
        let (header, claims) = (&data[..nul], &data[nul + 1..]);
        let signature = k.token.rsplit('.').next().unwrap_or("");
        for sig in [signature, ""] {
            let forged = format!("{}.{}.{sig}", B64.encode(header), B64.encode(claims));
            outcome(&forged, k.auth.verify(&forged));
        }
    }
}

pub fn jwt_seeds() -> Vec<Vec<u8>> {
    let token = keys().token.clone();
    let far = 4_102_444_800u64; // 2100-01-01
    let mut seeds = vec![
        token.clone().into_bytes(),
        format!("Bearer {token}").into_bytes(),
        format!("bearer   {token}  ").into_bytes(),
        format!("{token}.").into_bytes(),
        b"Bearer ".to_vec(),
        b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.".to_vec(),
    ];
    for header in [
        r#"{"alg":"EdDSA","typ":"JWT"}"#,
        r#"{"alg":"none"}"#,
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#"{"alg":"EdDSA","kid":"../../etc/passwd","crit":["exp"]}"#,
    ] {
        let claims = format!(r#"{{"sub":"fuzz-user","iat":0,"exp":{far},"nbf":0,"jti":"x"}}"#);
        let mut s = header.as_bytes().to_vec();
        s.push(0);
        s.extend_from_slice(claims.as_bytes());
        seeds.push(s);
    }
    seeds
}
