//! The `poster` job: the owner chose another frame (`PATCH /v1/moments/{id}` with
//! `poster_time`). The frame is decoded from the published ladder, not the source, so it works
//! after the source is gone: the top rung's init segment and the one media segment holding
//! that time are read from storage, the frame at the time decoded ([`crate::media::frame_at`]),
//! and the poster and its blurred variant written again (their ETags change); the moment's
//! `poster_time` follows.

use std::time::Duration;

use async_trait::async_trait;
use common::db::Db;
use common::moment::{self, State};
use common::queue::{Context, Handler, Job, JobError};
use common::store::{Key, Store};

/// The media segments of a playlist in order: URI, start and duration (seconds).
pub fn segments(playlist: &str) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    let mut start = 0.0;
    let mut duration: Option<f64> = None;
    for line in playlist.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#EXTINF:") {
            duration = rest.split(',').next().and_then(|d| d.trim().parse().ok());
        } else if !line.is_empty() && !line.starts_with('#') {
            let d = duration.take().unwrap_or(0.0);
            out.push((line.to_string(), start, d));
            start += d;
        }
    }
    out
}

/// The segment of a media playlist holding `time`: its URI and start. Past the end: the last.
pub fn segment_at(playlist: &str, time: f64) -> Option<(String, f64)> {
    let all = segments(playlist);
    all.iter()
        .find(|(_, start, d)| time < start + d)
        .or(all.last())
        .map(|(uri, start, _)| (uri.clone(), *start))
}

/// A published object, for a job that needs it: gone is permanent, any other failure retried.
pub async fn read(store: &Store, key: &str, max: u64) -> Result<bytes::Bytes, JobError> {
    let k = Key::new(key.to_string()).map_err(|e| JobError::permanent(e.to_string()))?;
    store.get_bytes(&k, max).await.map_err(|e| match e {
        common::store::Error::NotFound(_) => JobError::permanent(format!("{key} is not published")),
        e => JobError::retry(format!("reading {key}: {e}")),
    })
}

/// The handler.
pub struct Picker {
    db: Db,
    store: Store,
}

impl Picker {
    /// Over the moments' database and the published ladders' store.
    pub fn new(db: Db, store: Store) -> Picker {
        crate::media::init();
        Picker { db, store }
    }
}

#[async_trait]
impl Handler for Picker {
    fn kind(&self) -> &'static str {
        moment::POSTER_KIND
    }

    fn time_limit(&self) -> Duration {
        Duration::from_secs(120)
    }

    async fn run(&self, job: &Job, _ctx: &Context) -> Result<(), JobError> {
        let (Some(id), Some(time)) = (job.payload["moment"].as_str(), job.payload["time"].as_f64())
        else {
            return Err(JobError::permanent("job payload names no moment or time"));
        };
        let Some(m) = moment::get(&self.db, id)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?
        else {
            return Ok(()); // gone since
        };
        if m.state != State::Ready {
            return Err(JobError::permanent("the moment is not ready"));
        }
        // renditions are listed by ascending bandwidth: the last is the top rung
        let playlist = m.renditions["renditions"]
            .as_array()
            .and_then(|r| r.last())
            .and_then(|r| r["playlist"].as_str())
            .ok_or_else(|| JobError::permanent("the moment lists no rendition"))?
            .to_string();
        let dir = playlist.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let media = read(&self.store, &format!("hls/{id}/{playlist}"), 4 << 20).await?;
        let (segment, _) = segment_at(&String::from_utf8_lossy(&media), time)
            .ok_or_else(|| JobError::permanent("the rendition has no segments"))?;
        let init = read(&self.store, &format!("hls/{id}/{dir}/init.mp4"), 4 << 20).await?;
        let seg = read(&self.store, &format!("hls/{id}/{dir}/{segment}"), 256 << 20).await?;
        let image = tokio::task::spawn_blocking(move || {
            let mut file = tempfile::Builder::new().suffix(".mp4").tempfile()?;
            std::io::Write::write_all(&mut file, &init)?;
            std::io::Write::write_all(&mut file, &seg)?;
            Ok::<_, std::io::Error>(crate::media::frame_at(file.path(), time))
        })
        .await
        .map_err(|e| JobError::retry(format!("poster thread: {e}")))?
        .map_err(|e| JobError::retry(format!("writing the segment to decode: {e}")))?
        .map_err(|e| JobError::permanent(e.to_string()))?;
        packager::publish::write_poster(&self.store, id, &image)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        moment::set_published_field(
            &self.db,
            id,
            "poster_time",
            serde_json::json!((time * 1000.0).round() / 1000.0),
        )
        .await
        .map_err(|e| JobError::retry(e.to_string()))?;
        tracing::info!(moment = %id, time, "poster chosen by its owner");
        Ok(())
    }

    async fn dead(&self, job: &Job, error: &str) {
        // the poster stays what it was; the owner may choose again
        tracing::warn!(moment = %job.payload["moment"], %error, "the chosen poster could not be made");
    }
}

#[cfg(test)]
mod tests {
    use super::segment_at;

    #[test]
    fn the_segment_holding_a_time() {
        let p = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n\
                 #EXTINF:2.000000,\nseg_00000.m4s\n#EXTINF:2.000000,\nseg_00001.m4s\n\
                 #EXTINF:1.500000,\nseg_00002.m4s\n#EXT-X-ENDLIST\n";
        assert_eq!(segment_at(p, 0.0), Some(("seg_00000.m4s".into(), 0.0)));
        assert_eq!(segment_at(p, 2.0), Some(("seg_00001.m4s".into(), 2.0)));
        assert_eq!(segment_at(p, 5.4), Some(("seg_00002.m4s".into(), 4.0)));
        assert_eq!(segment_at(p, 9.0), Some(("seg_00002.m4s".into(), 4.0)));
        assert_eq!(segment_at("#EXTM3U\n", 1.0), None);
    }
}
