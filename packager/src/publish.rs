//! Publishing a ladder to the object store, in the order that keeps readers safe: init and media
//! segments as they are produced, then per-rung playlists, the poster and thumbnails, and the
//! master playlist last — so a player never sees a master that points at something missing. If
//! any write fails the master is not written and the caller retries the job; republishing writes
//! the same keys again (idempotent).

use std::collections::BTreeMap;
use std::io::Cursor;

use bytes::Bytes;
use common::store::{Key, PutOptions, Store};
use serde::Serialize;

use crate::playlist::{self, Variant};
use crate::segmenter::Segment;

/// `Content-Type` and `Cache-Control` for an object key, by extension.
pub fn headers_for(key: &str) -> PutOptions {
    let immutable = "public, max-age=31536000, immutable";
    let name = key.rsplit('/').next().unwrap_or(key);
    if name == "poster.jpg" || name == "poster-blur.jpg" {
        // the poster can change (a better frame found later, or the owner's choice)
        return PutOptions {
            content_type: Some("image/jpeg".into()),
            cache_control: Some("public, max-age=60".into()),
        };
    }
    let (ct, cc) = match key.rsplit('.').next().unwrap_or("") {
        "m3u8" => ("application/vnd.apple.mpegurl", "public, max-age=30"),
        "m4s" => ("video/iso.segment", immutable),
        "mp4" => ("video/mp4", immutable),
        "jpg" | "jpeg" => ("image/jpeg", immutable),
        "vtt" => ("text/vtt; charset=utf-8", "public, max-age=30"),
        _ => ("application/octet-stream", "public, max-age=30"),
    };
    PutOptions {
        content_type: Some(ct.to_string()),
        cache_control: Some(cc.to_string()),
    }
}

/// Publishing errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store refused a write.
    #[error("publishing {key}: {source}")]
    Store {
        /// The key being written.
        key: String,
        /// Why.
        source: common::store::Error,
    },
    /// No rung could be produced.
    #[error("no rendition could be produced: {0}")]
    NothingToPublish(String),
    /// An image could not be encoded.
    #[error("image encoding failed: {0}")]
    Image(String),
}

/// What one rung is, for playlists.
#[derive(Debug, Clone, PartialEq)]
pub struct RungInfo {
    /// `1080p`, `720p`, … (named by the short side).
    pub name: String,
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// Frames per second.
    pub frame_rate: f64,
    /// Video codec string.
    pub video_codec: String,
    /// Audio codec string, if the rung has audio.
    pub audio_codec: Option<String>,
}

/// A published rendition, as stored on the moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendition {
    /// Rung name.
    pub name: String,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Measured peak bit rate.
    pub bandwidth: u64,
    /// Measured average bit rate.
    pub average_bandwidth: u64,
    /// `CODECS` attribute.
    pub codecs: String,
    /// Frames per second.
    pub frame_rate: f64,
    /// Media playlist path relative to the master.
    pub playlist: String,
    /// Number of segments.
    pub segments: usize,
    /// Total duration in seconds.
    pub duration: f64,
}

/// A rung that could not be produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedRung {
    /// Rung name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// The result of a publish.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Published {
    /// Renditions in the master, ascending bandwidth.
    pub renditions: Vec<Rendition>,
    /// Rungs that could not be produced, with the reason.
    pub failed: Vec<FailedRung>,
    /// Object key of the master playlist.
    pub master_key: String,
    /// Object key of the poster, if one was written.
    pub poster_key: Option<String>,
}

struct RungState {
    info: RungInfo,
    segments: Vec<playlist::Segment>,
}

/// One thumbnail frame for the scrubbing track.
#[derive(Debug, Clone)]
pub struct Thumb {
    /// Time of the frame (seconds).
    pub time: f64,
    /// The picture (already small).
    pub image: image::RgbImage,
}

/// Publishes one moment's ladder.
pub struct Publisher {
    store: Store,
    moment: String,
    rungs: BTreeMap<String, RungState>,
    failed: BTreeMap<String, String>,
    poster_key: Option<String>,
    thumbs_written: bool,
}

impl Publisher {
    /// A publisher for `moment` (an id; keys go under `hls/{moment}/`).
    pub fn new(store: Store, moment: &str) -> Publisher {
        Publisher {
            store,
            moment: moment.to_string(),
            rungs: BTreeMap::new(),
            failed: BTreeMap::new(),
            poster_key: None,
            thumbs_written: false,
        }
    }

    fn key(&self, rel: &str) -> Result<Key, Error> {
        let k = format!("hls/{}/{rel}", self.moment);
        Key::new(k.clone()).map_err(|source| Error::Store { key: k, source })
    }

    async fn put_owned(&self, rel: String, bytes: Bytes) -> Result<String, Error> {
        self.put(&rel, bytes).await
    }

    async fn put(&self, rel: &str, bytes: Bytes) -> Result<String, Error> {
        let key = self.key(rel)?;
        self.store
            .put_bytes(&key, bytes, &headers_for(rel))
            .await
            .map_err(|source| Error::Store {
                key: key.to_string(),
                source,
            })?;
        Ok(key.to_string())
    }

    /// Starts a rung: writes its init segment.
    pub async fn start_rung(&mut self, info: RungInfo, init: Bytes) -> Result<(), Error> {
        self.put(&format!("{}/init.mp4", info.name), init).await?;
        self.rungs.insert(
            info.name.clone(),
            RungState {
                info,
                segments: Vec::new(),
            },
        );
        Ok(())
    }

    /// Writes one media segment of a started rung.
    pub async fn segment(&mut self, rung: &str, seg: Segment) -> Result<(), Error> {
        let uri = format!("seg_{:05}.m4s", seg.index);
        let size = seg.fragment.bytes.len() as u64;
        let keyframe_bytes = seg.fragment.first_keyframe_end;
        self.put(&format!("{rung}/{uri}"), seg.fragment.bytes)
            .await?;
        if let Some(state) = self.rungs.get_mut(rung) {
            state.segments.push(playlist::Segment {
                uri,
                duration: seg.duration,
                bytes: size,
                keyframe_bytes,
            });
        }
        Ok(())
    }

    /// Records that a rung could not be produced; the others are still published.
    pub fn rung_failed(&mut self, rung: &str, reason: &str) {
        self.rungs.remove(rung);
        self.failed.insert(rung.to_string(), reason.to_string());
    }

    /// The poster's key, once written.
    pub fn poster_key(&self) -> Option<&str> {
        self.poster_key.as_deref()
    }

    /// Writes the poster (JPEG, quality 85) and its blurred variant ([`blurred`]).
    pub async fn poster(&mut self, image: &image::RgbImage) -> Result<(), Error> {
        let (key, _) = write_poster(&self.store, &self.moment, image).await?;
        self.poster_key = Some(key);
        Ok(())
    }

    /// Writes the thumbnail sprite sheet and its WebVTT track.
    pub async fn thumbnails(&mut self, thumbs: &[Thumb], duration: f64) -> Result<(), Error> {
        let Some(first) = thumbs.first() else {
            return Ok(());
        };
        let (w, h) = first.image.dimensions();
        let columns = 10u32.min(thumbs.len() as u32).max(1);
        let rows = (thumbs.len() as u32).div_ceil(columns);
        let mut sheet = image::RgbImage::new(w * columns, h * rows);
        let mut cues = Vec::with_capacity(thumbs.len());
        for (i, t) in thumbs.iter().enumerate() {
            let (x, y) = ((i as u32 % columns) * w, (i as u32 / columns) * h);
            image::imageops::replace(&mut sheet, &t.image, i64::from(x), i64::from(y));
            let end = thumbs.get(i + 1).map_or(duration, |n| n.time).max(t.time);
            cues.push(playlist::Thumbnail {
                start: t.time,
                end,
                sprite: "thumbs.jpg".to_string(),
                x,
                y,
                w,
                h,
            });
        }
        let jpeg = encode_jpeg(&sheet, 75)?;
        let vtt = Bytes::from(playlist::thumbnails_vtt(&cues));
        futures::try_join!(self.put("thumbs.jpg", jpeg), self.put("thumbs.vtt", vtt))?;
        self.thumbs_written = true;
        Ok(())
    }

    /// Writes the playlists, the master last. Fails (writing no master) when no rung has
    /// segments.
    pub async fn finish(self) -> Result<Published, Error> {
        let mut variants = Vec::new();
        let mut renditions = Vec::new();
        let mut failed: Vec<FailedRung> = self
            .failed
            .iter()
            .map(|(name, reason)| FailedRung {
                name: name.clone(),
                reason: reason.clone(),
            })
            .collect();
        let mut writes = Vec::new();
        for (name, state) in &self.rungs {
            if state.segments.is_empty() {
                failed.push(FailedRung {
                    name: name.clone(),
                    reason: "no segments were produced".into(),
                });
                continue;
            }
            let media = playlist::media("init.mp4", &state.segments);
            let iframes = playlist::iframes("init.mp4", &state.segments);
            writes.push(self.put_owned(format!("{name}/index.m3u8"), Bytes::from(media)));
            writes.push(self.put_owned(format!("{name}/iframes.m3u8"), Bytes::from(iframes)));
            let (bandwidth, average) = playlist::bandwidths(&state.segments);
            let info = &state.info;
            variants.push(Variant {
                uri: format!("{name}/index.m3u8"),
                iframe_uri: format!("{name}/iframes.m3u8"),
                bandwidth,
                average_bandwidth: average,
                iframe_bandwidth: playlist::iframe_bandwidth(&state.segments),
                width: info.width,
                height: info.height,
                frame_rate: info.frame_rate,
                video_codec: info.video_codec.clone(),
                audio_codec: info.audio_codec.clone(),
            });
            renditions.push(Rendition {
                name: name.clone(),
                width: info.width,
                height: info.height,
                bandwidth,
                average_bandwidth: average,
                codecs: match &info.audio_codec {
                    Some(a) => format!("{},{a}", info.video_codec),
                    None => info.video_codec.clone(),
                },
                frame_rate: info.frame_rate,
                playlist: format!("{name}/index.m3u8"),
                segments: state.segments.len(),
                duration: state.segments.iter().map(|s| s.duration).sum(),
            });
        }
        // the media playlists together (each is written whole and atomically), the master
        // only once they are all in
        futures::future::try_join_all(writes).await?;
        if variants.is_empty() {
            let reasons: Vec<String> = failed
                .iter()
                .map(|f| format!("{}: {}", f.name, f.reason))
                .collect();
            return Err(Error::NothingToPublish(reasons.join("; ")));
        }
        renditions.sort_by_key(|r| r.bandwidth);
        let master_key = self
            .put("master.m3u8", Bytes::from(playlist::master(&variants)))
            .await?;
        Ok(Published {
            renditions,
            failed,
            master_key,
            poster_key: self.poster_key,
        })
    }
}

/// Where a moment's captions in `language` are published, relative to `hls/{id}/`.
pub fn captions_paths(language: &str) -> (String, String) {
    (
        format!("captions/{language}.vtt"),
        format!("captions/{language}.m3u8"),
    )
}

/// Publishes a moment's captions after its ladder: the WebVTT file and its media playlist,
/// then the master again with the subtitle rendition (the master only once both are in, so a
/// player never sees a group whose playlist is missing). The master keeps its short cache
/// lifetime, so players and caches take the new one within 30 s.
pub async fn captions(
    store: &Store,
    moment: &str,
    language: &str,
    name: &str,
    cues: &[playlist::Caption],
    duration: f64,
) -> Result<String, Error> {
    let (vtt, media) = captions_paths(language);
    let key = |rel: &str| {
        let k = format!("hls/{moment}/{rel}");
        Key::new(k.clone()).map_err(|source| Error::Store { key: k, source })
    };
    let put = |rel: String, bytes: Bytes| {
        let store = store.clone();
        let k = key(&rel);
        async move {
            let k = k?;
            store
                .put_bytes(&k, bytes, &headers_for(&rel))
                .await
                .map_err(|source| Error::Store {
                    key: k.to_string(),
                    source,
                })
        }
    };
    let vtt_name = vtt.rsplit('/').next().unwrap_or(&vtt).to_string();
    put(vtt.clone(), Bytes::from(playlist::captions_vtt(cues))).await?;
    put(
        media.clone(),
        Bytes::from(playlist::subtitles_media(&vtt_name, duration)),
    )
    .await?;
    let master_key = key("master.m3u8")?;
    let master = store
        .get_bytes(&master_key, 1 << 20)
        .await
        .map_err(|source| Error::Store {
            key: master_key.to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&master);
    let updated = playlist::with_subtitles(
        &text,
        &playlist::Subtitles {
            group: "subs".into(),
            name: name.into(),
            language: language.into(),
            uri: media,
        },
    );
    if updated != text {
        put("master.m3u8".into(), Bytes::from(updated)).await?;
    }
    Ok(format!("hls/{moment}/{vtt}"))
}

/// A blurred copy of a poster for blur-until-tap feeds: shrunk to 48 pixels wide, blurred,
/// and grown back to 480 (smooth, and no face or text can be read from it).
pub fn blurred(image: &image::RgbImage) -> image::RgbImage {
    use image::imageops::{self, FilterType};
    let (w, h) = image.dimensions();
    let small_h = ((f64::from(h) * 48.0 / f64::from(w.max(1))).round() as u32).max(1);
    let small = imageops::resize(image, 48, small_h, FilterType::Triangle);
    let soft = imageops::blur(&small, 1.5);
    let big_h = ((f64::from(h) * 480.0 / f64::from(w.max(1))).round() as u32).max(1);
    imageops::resize(&soft, 480, big_h, FilterType::Triangle)
}

/// Writes a moment's poster and its blurred variant; returns their keys.
pub async fn write_poster(
    store: &Store,
    moment: &str,
    image: &image::RgbImage,
) -> Result<(String, String), Error> {
    let jpeg = encode_jpeg(image, 85)?;
    let blur = encode_jpeg(&blurred(image), 70)?;
    let put = |rel: &'static str, bytes: Bytes| async move {
        let k = format!("hls/{moment}/{rel}");
        let key = Key::new(k.clone()).map_err(|source| Error::Store { key: k, source })?;
        store
            .put_bytes(&key, bytes, &headers_for(rel))
            .await
            .map_err(|source| Error::Store {
                key: key.to_string(),
                source,
            })?;
        Ok::<_, Error>(key.to_string())
    };
    // the blurred one first: whoever sees the new poster finds its blur in place
    let blur_key = put("poster-blur.jpg", blur).await?;
    let key = put("poster.jpg", jpeg).await?;
    Ok((key, blur_key))
}

/// Encodes an RGB image as JPEG.
pub fn encode_jpeg(image: &image::RgbImage, quality: u8) -> Result<Bytes, Error> {
    let mut out = Cursor::new(Vec::with_capacity(64 * 1024));
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(image)
        .map_err(|e| Error::Image(e.to_string()))?;
    Ok(Bytes::from(out.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::headers_for;

    #[test]
    fn content_types_and_caching_by_kind() {
        let h = headers_for("720p/seg_00001.m4s");
        assert_eq!(h.content_type.as_deref(), Some("video/iso.segment"));
        assert!(h.cache_control.unwrap().contains("immutable"));
        let h = headers_for("720p/init.mp4");
        assert_eq!(h.content_type.as_deref(), Some("video/mp4"));
        let h = headers_for("master.m3u8");
        assert_eq!(
            h.content_type.as_deref(),
            Some("application/vnd.apple.mpegurl")
        );
        assert_eq!(h.cache_control.as_deref(), Some("public, max-age=30"));
        assert_eq!(
            headers_for("poster.jpg").content_type.as_deref(),
            Some("image/jpeg")
        );
        // posters can be replaced: never immutable
        for p in ["hls/x/poster.jpg", "hls/x/poster-blur.jpg"] {
            assert_eq!(
                headers_for(p).cache_control.as_deref(),
                Some("public, max-age=60")
            );
        }
        assert!(
            headers_for("hls/x/thumbs.jpg")
                .cache_control
                .unwrap()
                .contains("immutable")
        );
    }
}
