//! The cargo-fuzz targets' checks, run in the ordinary test suite.
//!
//! Each fuzz target's body is a plain `fn(&[u8])` in its crate's `fuzz/checks.rs`, shared by the
//! libFuzzer binary (`deploy/fuzz.sh`, coverage-guided, minutes to hours) and by a test that calls
//! [`replay`]: every seed, then `MOMENTS_TEST_FUZZ_RUNS` (default 3000) deterministic mutations
//! of them (bit flips, interesting bytes, insertions, deletions, repeats, splices of two seeds).
//! The mutations come from a fixed seed per target (`MOMENTS_TEST_FUZZ_SEED` changes it), so a
//! failure repeats. A failing input is written to the system temp directory and its path
//! printed, so `cargo fuzz run <target> <file>` reproduces it under the sanitizer build.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `check` over `seeds` and mutations of them; panics with the failing input's file when
/// one panics.
pub fn replay(target: &str, seeds: &[Vec<u8>], check: impl Fn(&[u8])) {
    assert!(!seeds.is_empty(), "fuzz target {target} has no seeds");
    let runs: usize = env_number("MOMENTS_TEST_FUZZ_RUNS").unwrap_or(3000) as usize;
    let seed =
        env_number("MOMENTS_TEST_FUZZ_SEED").unwrap_or(0x006d_6f6d_656e_7473) ^ name_hash(target);
    let mut rng = XorShift(seed | 1);
    let run = |input: &[u8], what: &str| {
        if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
            let path = std::env::temp_dir().join(format!(
                "moments-fuzz-{target}-{:016x}",
                name_hash(&String::from_utf8_lossy(input))
            ));
            let saved = std::fs::write(&path, input).is_ok();
            panic!(
                "fuzz target {target} failed on {what} ({} bytes{}); reproduce with \
                 `deploy/fuzz.sh {target} -- {}`",
                input.len(),
                if saved { "" } else { ", not saved" },
                path.display()
            );
        }
    };
    for (i, s) in seeds.iter().enumerate() {
        run(s, &format!("seed {i}"));
    }
    for i in 0..runs {
        let base = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, base, other);
        run(&input, &format!("mutation {i} (seed {seed:#x})"));
    }
}

fn env_number(var: &str) -> Option<u64> {
    let v = std::env::var(var).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// FNV-1a: a stable per-target seed (std's hasher is randomised per process).
fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that parsers of text, JSON, playlists and boxes treat specially.
const INTERESTING: &[u8] = b"\0\xff\x7f\x80\n\r\t \"\\{}[]:,.=@#-+0x9eE";

/// One to four random edits of `base` (sometimes spliced with `other`).
fn mutate(rng: &mut XorShift, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    out.insert(at.min(out.len()), rng.next() as u8);
                }
            }
            3 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            4 if !out.is_empty() => {
                // repeat a stretch: long runs, nesting, size fields far from their bodies
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(32)).min(out.len());
                let piece = out[start..end].repeat(1 + rng.below(64));
                let at = at.min(out.len());
                out.splice(at..at, piece);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(other.len());
                out.truncate(at);
                out.extend_from_slice(&other[cut..]);
            }
            _ => out.truncate(at),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_check_names_its_input() {
        let seeds = vec![b"hello".to_vec()];
        let r = catch_unwind(AssertUnwindSafe(|| {
            replay("selftest", &seeds, |d| assert!(!d.contains(&0)));
        }));
        let msg = r.expect_err("some mutation inserts a NUL byte");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("fuzz target selftest failed on mutation"),
            "{msg}"
        );
    }

    #[test]
    fn mutations_repeat_for_the_same_seed() {
        let a: Vec<Vec<u8>> = {
            let mut r = XorShift(7);
            (0..50).map(|_| mutate(&mut r, b"abcdef", b"xyz")).collect()
        };
        let mut r = XorShift(7);
        let b: Vec<Vec<u8>> = (0..50).map(|_| mutate(&mut r, b"abcdef", b"xyz")).collect();
        assert_eq!(a, b);
        assert!(a.iter().any(|m| m.as_slice() != b"abcdef"));
    }
}
