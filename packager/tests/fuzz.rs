//! packager's fuzz targets (`fuzz/checks.rs`) over their seeds and mutations of them, in the
//! ordinary suite; `deploy/fuzz.sh` runs the same checks coverage-guided under libFuzzer.

#[path = "../fuzz/checks.rs"]
mod checks;

use common::testing::fuzz::replay;

#[test]
fn playlist() {
    replay("playlist", &checks::playlist_seeds(), checks::playlist);
}

#[test]
fn boxes() {
    replay("boxes", &checks::boxes_seeds(), checks::boxes);
}
