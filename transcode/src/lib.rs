//! Transcode: the transcode job kind on the shared durable queue and the worker that turns a
//! source video into the H.264/AAC ladder (ffmpeg-next: decode once, scale, encode per rung),
//! plus the ladder policy as plain, testable functions.
//!
//! Position in the data flow: ingest → **transcode** → packager. FFmpeg calls stay in one
//! module here. (Built by the Transcode issue; nothing lives here yet.)
