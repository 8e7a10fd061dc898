//! asr-tts's fuzz targets (`fuzz/checks.rs`) over their seeds and mutations of them, in the
//! ordinary suite; `deploy/fuzz.sh` runs the same checks coverage-guided under libFuzzer.

#[path = "../fuzz/checks.rs"]
mod checks;

use common::testing::fuzz::replay;

#[test]
fn splitter() {
    replay("splitter", &checks::splitter_seeds(), checks::splitter);
}

#[test]
fn ws_message() {
    replay(
        "ws_message",
        &checks::ws_message_seeds(),
        checks::ws_message,
    );
}
