//! Whether the top rung can take the source's H.264 as it is instead of re-encoding it. The
//! decision is a pure function of facts FFmpeg knows right after opening the source — stream
//! parameters and the container's sample index (an MP4's `moov` lists every sample's size,
//! time and sync flag) — so it needs no pass over the media and can be made while the upload
//! is still arriving. The one fact the index cannot give, that every keyframe is an IDR (a
//! closed GOP), is checked as the packets flow; a source that breaks it is transcoded again
//! without the remux.

use crate::ladder::Rung;
use crate::rotate::Rotation;

/// What is known of the source when it is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Video codec name (FFmpeg's).
    pub codec: String,
    /// Decoded pixels are 8-bit 4:2:0.
    pub yuv420p: bool,
    /// How the picture must be turned.
    pub rotation: Rotation,
    /// Coded size.
    pub width: u32,
    /// Coded height.
    pub height: u32,
    /// The `avcC` record's NAL length size (bytes), if it has one.
    pub nal_length_size: Option<u8>,
    /// `profile_idc` from the `avcC` record.
    pub profile: Option<u8>,
    /// Average frame rate.
    pub fps: f64,
    /// Duration (seconds).
    pub duration: f64,
    /// The sample index, when the container gave a complete one up front.
    pub index: Option<IndexFacts>,
}

/// What the container's sample index says about the video track.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexFacts {
    /// Bytes of all video samples.
    pub bytes: u64,
    /// Whether the first sample is a sync sample.
    pub first_is_key: bool,
    /// Times of the sync samples (seconds, ascending).
    pub keys: Vec<f64>,
}

/// Decides. `Ok` means remux; `Err` says why not (for logs).
pub fn decide(f: &Facts, top: &Rung, segment_seconds: f64, max_fps: f64) -> Result<(), String> {
    if f.codec != "h264" {
        return Err(format!("the source is {}, not H.264", f.codec));
    }
    if !f.yuv420p {
        return Err("the source is not 8-bit 4:2:0".into());
    }
    if f.rotation != Rotation::None {
        return Err("the source must be turned upright".into());
    }
    if (f.width, f.height) != (top.width, top.height) {
        return Err(format!(
            "the source is {}×{}, the rung {}×{}",
            f.width, f.height, top.width, top.height
        ));
    }
    if f.nal_length_size != Some(4) {
        return Err("the source's NAL units are not length-prefixed with 4 bytes".into());
    }
    if !matches!(f.profile, Some(66 | 77 | 100)) {
        return Err("the source's H.264 profile is not Baseline, Main or High".into());
    }
    if !(f.fps > 0.0 && f.fps <= max_fps + 0.01) {
        return Err(format!(
            "the source's frame rate ({:.2}) is out of range",
            f.fps
        ));
    }
    if !(f.duration.is_finite() && f.duration > 0.0) {
        return Err("the source's duration is unknown".into());
    }
    let Some(index) = &f.index else {
        return Err(
            "the source's sample index is not known up front (fragmented or streamed container)"
                .into(),
        );
    };
    if !index.first_is_key {
        return Err("the source does not start with a keyframe".into());
    }
    let Some(&last) = index.keys.last() else {
        return Err("the source has no keyframes".into());
    };
    let mut max_gap = f.duration - last;
    for w in index.keys.windows(2) {
        max_gap = max_gap.max(w[1] - w[0]);
    }
    if max_gap > 2.0 * segment_seconds + 0.05 {
        return Err(format!(
            "the source's keyframes are up to {max_gap:.1} s apart"
        ));
    }
    let bitrate = index.bytes as f64 * 8.0 / f.duration;
    if bitrate > top.maxrate as f64 {
        return Err(format!(
            "the source's {:.0} kbit/s is over the rung's {} kbit/s",
            bitrate / 1000.0,
            top.maxrate / 1000
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rung() -> Rung {
        Rung {
            name: "720p".into(),
            width: 1280,
            height: 720,
            bitrate: 2_800_000,
            maxrate: 3_100_000,
            bufsize: 5_600_000,
            profile: "high".into(),
        }
    }

    fn phone() -> Facts {
        Facts {
            codec: "h264".into(),
            yuv420p: true,
            rotation: Rotation::None,
            width: 1280,
            height: 720,
            nal_length_size: Some(4),
            profile: Some(100),
            fps: 30.0,
            duration: 5.0,
            index: Some(IndexFacts {
                bytes: 1_250_000, // 2 Mbit/s
                first_is_key: true,
                keys: vec![0.0, 1.0, 2.0, 3.0, 4.0],
            }),
        }
    }

    fn why(f: Facts) -> String {
        decide(&f, &rung(), 2.0, 60.0).unwrap_err()
    }

    #[test]
    fn a_compliant_phone_clip_is_remuxed() {
        assert_eq!(decide(&phone(), &rung(), 2.0, 60.0), Ok(()));
    }

    #[test]
    fn every_rule_says_why_not() {
        assert!(
            why(Facts {
                codec: "hevc".into(),
                ..phone()
            })
            .contains("hevc")
        );
        assert!(
            why(Facts {
                yuv420p: false,
                ..phone()
            })
            .contains("4:2:0")
        );
        assert!(
            why(Facts {
                rotation: Rotation::Cw90,
                ..phone()
            })
            .contains("upright")
        );
        assert!(
            why(Facts {
                width: 1920,
                height: 1080,
                ..phone()
            })
            .contains("1920×1080")
        );
        assert!(
            why(Facts {
                nal_length_size: Some(2),
                ..phone()
            })
            .contains("4 bytes")
        );
        assert!(
            why(Facts {
                profile: Some(110),
                ..phone()
            })
            .contains("profile")
        );
        assert!(
            why(Facts {
                fps: 120.0,
                ..phone()
            })
            .contains("frame rate")
        );
        assert!(
            why(Facts {
                duration: f64::NAN,
                ..phone()
            })
            .contains("duration")
        );
        assert!(
            why(Facts {
                index: None,
                ..phone()
            })
            .contains("index")
        );
        let index = phone().index.unwrap();
        let with = |i: IndexFacts| Facts {
            index: Some(i),
            ..phone()
        };
        assert!(
            why(with(IndexFacts {
                first_is_key: false,
                ..index.clone()
            }))
            .contains("start with a keyframe")
        );
        assert!(
            why(with(IndexFacts {
                keys: vec![],
                ..index.clone()
            }))
            .contains("no keyframes")
        );
        // one GOP of 4.5 s: longer than two 2 s segments
        assert!(
            why(with(IndexFacts {
                keys: vec![0.0, 4.5],
                ..index.clone()
            }))
            .contains("4.5 s apart")
        );
        // the last keyframe too far from the end counts as well
        assert!(
            why(Facts {
                duration: 9.0,
                index: Some(IndexFacts {
                    bytes: 2_000_000,
                    ..index.clone()
                }),
                ..phone()
            })
            .contains("5.0 s apart")
        );
        assert!(
            why(with(IndexFacts {
                bytes: 5_000_000, // 8 Mbit/s
                ..index
            }))
            .contains("8000 kbit/s")
        );
    }
}
