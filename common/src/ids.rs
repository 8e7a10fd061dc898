//! Identifiers and clocks shared by every crate.

use rand::Rng;

/// A new random id: 26 characters of lowercase Crockford base32 carrying 128 random bits.
/// Unguessable, so published HLS can be public by id; URL- and object-key-safe.
pub fn new_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut n: u128 = rand::rng().random();
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

/// True when `s` has the shape of an id made by [`new_id`] (checked before using it in keys).
pub fn is_id(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"ilou".contains(&b)))
}

/// Milliseconds since the Unix epoch (what the database stores).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(is_id(&a), "{a}");
        assert!(!is_id("../etc/passwd"));
        assert!(!is_id("ABCDEFGHJKMNPQRSTVWXYZ0123"));
        assert!(!is_id(""));
    }
}
