//! Packager: turns each rung's encoded samples into HLS with fMP4 (CMAF) segments, renders the
//! playlists (pure functions), writes the poster and the thumbnail track, publishes everything
//! to the object store with the master playlist last, and serves it back as the HLS origin.
//!
//! Position in the data flow: transcode → **packager** → players. Its input interface is
//! [`segmenter::Segmenter`] (encoded H.264 access units and AAC frames per rung, with their
//! timestamps) feeding a [`publish::Publisher`]. It holds no FFmpeg code: the fMP4 writer is
//! our own ([`fmp4`]), so segment boundaries and byte offsets are exact and nothing goes
//! through temporary files.

#![forbid(unsafe_code)]

pub mod avc;
pub mod fmp4;
pub mod origin;
pub mod playlist;
pub mod publish;
pub mod segmenter;
pub mod signed;
pub mod status;

use serde::Deserialize;

/// The `api` role's share of this crate: the HLS origin (`/hls/…`) and the moment status
/// routes (`/v1/moments/{id}`, its SSE). `http_addr` is this process's TCP listener, named in
/// URLs answered to HTTP/3 requests; `origin` is the origin's state (its cache), made with
/// [`origin::OriginState::new`].
pub fn service(
    shared: &common::service::Shared,
    config: &Config,
    http_addr: Option<std::net::SocketAddr>,
    origin: origin::OriginState,
) -> (common::service::Service, status::StatusState) {
    let state = status::StatusState {
        shared: shared.clone(),
        public_base_url: config.public_base_url.clone(),
        http_origin: http_addr.map(|a| {
            let ip = if a.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                a.ip()
            };
            std::net::SocketAddr::new(ip, a.port()).to_string()
        }),
        watcher_reads: Default::default(),
        watchers: Default::default(),
        signing: origin.signing.clone(),
        playback_ttl_secs: config.playback_ttl_secs,
        playback_policy: config.playback_policy,
    };
    state.register(&shared.metrics);
    let router = origin::router(origin).merge(status::router(state.clone()));
    (common::service::Service::routes(router), state)
}

/// `[packager]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Target segment duration (seconds); keyframes are forced on these boundaries.
    pub segment_seconds: f64,
    /// Base URL players use for published objects (a CDN or the bucket's public URL, mapping
    /// to the store's root). Unset: the built-in origin at `/hls/…`.
    pub public_base_url: Option<String>,
    /// Width of scrubbing thumbnails (pixels).
    pub thumbnail_width: u32,
    /// Bytes of immutable published objects (segments, init segments, pictures) the built-in
    /// origin keeps in memory; 0 turns the cache off.
    pub origin_cache_bytes: u64,
    /// A cached object is checked against the store again after this long (seconds), so one
    /// removed from storage stops being served within it.
    pub origin_cache_revalidate_secs: u64,
    /// Signed playback (`MOMENTS_SIGNED_PLAYBACK`): playlists and segments under `/hls/{id}/`
    /// need a token from `POST /v1/moments/{id}/playback` (posters stay public). Off in the
    /// embedded default.
    pub signed_playback: bool,
    /// The key every node signs playback tokens with (`MOMENTS_PLAYBACK_SECRET`, at least 16
    /// bytes). Unset: `$DATA/keys/playback.key`, made on first use (one node only).
    pub playback_secret: Option<String>,
    /// How long a playback token lasts (seconds), unless the request asks for less.
    pub playback_ttl_secs: u64,
    /// With signed playback, also sign the segments' URIs (`true`, the default: every object
    /// needs the token). `false` signs only the playlists, so a CDN can cache each segment once
    /// for every viewer; the playlists are then the gate.
    pub signed_segments: bool,
    /// Who may get a playback token: `owner` (the default) or `any-user` (any signed-in user,
    /// as a feed needs; the app decides who sees the moment's id).
    pub playback_policy: PlaybackPolicy,
}

/// Who may get a playback token for a moment.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PlaybackPolicy {
    /// Only its owner.
    #[default]
    Owner,
    /// Any authenticated user.
    AnyUser,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_seconds: 2.0,
            public_base_url: None,
            thumbnail_width: 160,
            origin_cache_bytes: 256 << 20,
            origin_cache_revalidate_secs: 60,
            signed_playback: false,
            playback_secret: None,
            playback_ttl_secs: 3600,
            signed_segments: true,
            playback_policy: PlaybackPolicy::Owner,
        }
    }
}
