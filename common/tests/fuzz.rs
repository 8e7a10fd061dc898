//! common's fuzz targets (`fuzz/checks.rs`) over their seeds and mutations of them, in the
//! ordinary suite; `deploy/fuzz.sh` runs the same checks coverage-guided under libFuzzer.

#[path = "../fuzz/checks.rs"]
mod checks;

use common::testing::fuzz::replay;

#[test]
fn jwt() {
    replay("jwt", &checks::jwt_seeds(), checks::jwt);
}
