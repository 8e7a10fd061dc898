//! player-test: an adaptive HLS player harness that tests the service from outside, over HTTP
//! only. It depends on nothing of the server and must stay a pure client.
//! (Built by the player-test issue; nothing lives here yet.)

#![forbid(unsafe_code)]
