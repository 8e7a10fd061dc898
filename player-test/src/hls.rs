//! Fetching and reading HLS as a player does: the master playlist, each rung's media
//! playlist, and their segments — over plain HTTP, with every problem reported as a
//! [`Violation`] naming its URL.

use std::time::Duration;

use bytes::Bytes;

/// Something wrong with what the server published.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Where.
    pub url: String,
    /// What.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.url, self.message)
    }
}

/// One segment of a rung.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Absolute URL.
    pub url: String,
    /// `EXTINF` duration.
    pub duration: f64,
    /// Byte range, when the playlist gives one (`length`, `offset`).
    pub range: Option<(u64, u64)>,
}

/// One rung (variant stream) with its media playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    /// `1080p`-style name (short side of `RESOLUTION`).
    pub name: String,
    /// Peak `BANDWIDTH`.
    pub bandwidth: u64,
    /// `RESOLUTION`.
    pub resolution: Option<(u64, u64)>,
    /// `CODECS`.
    pub codecs: Option<String>,
    /// Media playlist URL.
    pub url: String,
    /// `EXT-X-MAP` URL.
    pub init: Option<String>,
    /// Segments in order.
    pub segments: Vec<Segment>,
    /// `EXT-X-TARGETDURATION`.
    pub target_duration: u64,
}

/// The whole presentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Presentation {
    /// Master playlist URL.
    pub url: String,
    /// Rungs that could be read, ascending bandwidth.
    pub rungs: Vec<Rung>,
}

/// Resolves `uri` against `base` (absolute URLs pass through).
pub fn resolve(base: &str, uri: &str) -> String {
    match reqwest::Url::parse(base).and_then(|b| b.join(uri)) {
        Ok(u) => u.to_string(),
        Err(_) => uri.to_string(),
    }
}

/// `1080p` for 1920×1080 and for 1080×1920.
pub fn rung_name(resolution: Option<(u64, u64)>, fallback: &str) -> String {
    match resolution {
        Some((w, h)) => format!("{}p", w.min(h)),
        None => fallback.to_string(),
    }
}

/// The HTTP side.
#[derive(Clone)]
pub struct Fetcher {
    http: reqwest::Client,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    /// A client with sane timeouts.
    pub fn new() -> Fetcher {
        Fetcher {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
        }
    }

    /// GETs `url` (optionally a byte range); a non-2xx answer is a violation.
    pub async fn get(&self, url: &str, range: Option<(u64, u64)>) -> Result<Bytes, Violation> {
        let v = |message: String| Violation {
            url: url.to_string(),
            message,
        };
        let mut req = self.http.get(url);
        if let Some((len, off)) = range {
            req = req.header("range", format!("bytes={off}-{}", off + len.max(1) - 1));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| v(format!("request failed: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(v(format!("HTTP {status}")));
        }
        resp.bytes()
            .await
            .map_err(|e| v(format!("body cut short: {e}")))
    }

    /// Reads the master playlist and every media playlist it names. Problems are returned
    /// alongside whatever could be read.
    pub async fn presentation(&self, url: &str) -> (Option<Presentation>, Vec<Violation>) {
        let mut problems = Vec::new();
        let body = match self.get(url, None).await {
            Ok(b) => b,
            Err(v) => return (None, vec![v]),
        };
        let master = match m3u8_rs::parse_playlist_res(&body) {
            Ok(m3u8_rs::Playlist::MasterPlaylist(m)) => m,
            Ok(m3u8_rs::Playlist::MediaPlaylist(_)) => {
                return (
                    None,
                    vec![Violation {
                        url: url.into(),
                        message: "a media playlist where a master playlist was expected".into(),
                    }],
                );
            }
            Err(_) => {
                let start: String = String::from_utf8_lossy(&body).chars().take(40).collect();
                return (
                    None,
                    vec![Violation {
                        url: url.into(),
                        message: format!("not an HLS playlist (starts with {start:?})"),
                    }],
                );
            }
        };
        let mut rungs = Vec::new();
        for v in master.variants.iter().filter(|v| !v.is_i_frame) {
            let purl = resolve(url, &v.uri);
            let resolution = v.resolution.map(|r| (r.width, r.height));
            let name = rung_name(resolution, &v.uri);
            if resolution.is_none() {
                problems.push(Violation {
                    url: purl.clone(),
                    message: "variant has no RESOLUTION".into(),
                });
            }
            match self.media(&purl).await {
                Ok((init, segments, target, mut p)) => {
                    problems.append(&mut p);
                    rungs.push(Rung {
                        name,
                        bandwidth: v.bandwidth,
                        resolution,
                        codecs: v.codecs.clone(),
                        url: purl,
                        init,
                        segments,
                        target_duration: target,
                    });
                }
                Err(v) => problems.push(v),
            }
        }
        if rungs.is_empty() && problems.is_empty() {
            problems.push(Violation {
                url: url.into(),
                message: "the master playlist lists no playable variant".into(),
            });
        }
        rungs.sort_by_key(|r| r.bandwidth);
        (
            Some(Presentation {
                url: url.into(),
                rungs,
            }),
            problems,
        )
    }

    /// Reads one media playlist and checks it.
    #[allow(clippy::type_complexity)]
    async fn media(
        &self,
        url: &str,
    ) -> Result<(Option<String>, Vec<Segment>, u64, Vec<Violation>), Violation> {
        let body = self.get(url, None).await?;
        let media = match m3u8_rs::parse_playlist_res(&body) {
            Ok(m3u8_rs::Playlist::MediaPlaylist(m)) => m,
            _ => {
                return Err(Violation {
                    url: url.into(),
                    message: "not a media playlist".into(),
                });
            }
        };
        let mut problems = Vec::new();
        let mut init = None;
        let mut segments = Vec::new();
        for s in &media.segments {
            if let Some(map) = &s.map {
                init = Some(resolve(url, &map.uri));
            }
            segments.push(Segment {
                url: resolve(url, &s.uri),
                duration: f64::from(s.duration),
                range: s
                    .byte_range
                    .as_ref()
                    .map(|r| (r.length, r.offset.unwrap_or(0))),
            });
        }
        if init.is_none() {
            problems.push(Violation {
                url: url.into(),
                message: "no EXT-X-MAP: fMP4 segments need an init segment".into(),
            });
        }
        if segments.is_empty() {
            problems.push(Violation {
                url: url.into(),
                message: "the playlist has no segments".into(),
            });
        }
        if !media.end_list {
            problems.push(Violation {
                url: url.into(),
                message: "a VOD playlist must end with EXT-X-ENDLIST".into(),
            });
        }
        for s in &segments {
            if (s.duration + 0.5).floor() as u64 > media.target_duration {
                problems.push(Violation {
                    url: s.url.clone(),
                    message: format!(
                        "EXTINF {:.3} s exceeds EXT-X-TARGETDURATION {}",
                        s.duration, media.target_duration
                    ),
                });
            }
        }
        Ok((init, segments, media.target_duration, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_relative_uris() {
        assert_eq!(
            resolve("http://h/hls/x/master.m3u8", "720p/index.m3u8"),
            "http://h/hls/x/720p/index.m3u8"
        );
        assert_eq!(
            resolve("http://h/hls/x/720p/index.m3u8", "seg_00001.m4s"),
            "http://h/hls/x/720p/seg_00001.m4s"
        );
        assert_eq!(
            resolve("http://h/a/b.m3u8", "https://cdn/x.m4s"),
            "https://cdn/x.m4s"
        );
    }

    #[test]
    fn names_by_short_side() {
        assert_eq!(rung_name(Some((1920, 1080)), "x"), "1080p");
        assert_eq!(rung_name(Some((1080, 1920)), "x"), "1080p");
        assert_eq!(rung_name(None, "v0"), "v0");
    }
}
