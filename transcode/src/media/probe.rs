//! What the source is, and whether it is acceptable as a moment (the rules are pure, so each
//! is unit-tested).

use ffmpeg_next as ff;

use super::Error;
use crate::rotate::Rotation;

/// Limits on what is accepted as a moment.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest accepted video (seconds).
    pub max_duration: f64,
    /// Shortest accepted video (seconds).
    pub min_duration: f64,
    /// Largest accepted width or height (pixels).
    pub max_dimension: u32,
}

/// What the source turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Container format name.
    pub format: String,
    /// Video codec name.
    pub codec: String,
    /// Coded width.
    pub width: u32,
    /// Coded height.
    pub height: u32,
    /// How to turn it upright.
    pub rotation: Rotation,
    /// Duration (seconds).
    pub duration: f64,
    /// Frames per second (capped at 60).
    pub fps: f64,
    /// Whether there is an audio stream.
    pub has_audio: bool,
}

pub(super) fn human_duration(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

pub(super) fn open_error(e: ff::Error) -> Error {
    let detail = match e {
        ff::Error::InvalidData => "the data is not a media container FFmpeg can read".to_string(),
        ff::Error::Eof => "the file ends before its header is complete".to_string(),
        ff::Error::Exit => return Error::Cancelled,
        other => other.to_string(),
    };
    Error::Invalid(format!(
        "not a playable video (truncated, corrupted or not a video file): {detail}"
    ))
}

const STILL_IMAGE_CODECS: &[&str] = &[
    "mjpeg", "png", "bmp", "gif", "webp", "tiff", "jpeg2000", "ljpeg", "jpegls", "pam", "ppm",
    "pgm", "pbm", "qoi",
];

/// Checks a probe against the limits. Pure, so every rule is unit-tested.
pub fn validate(p: &Probe, limits: &Limits) -> Result<(), Error> {
    if p.format.ends_with("_pipe")
        || p.format == "image2"
        || STILL_IMAGE_CODECS.contains(&p.codec.as_str()) && p.duration < limits.min_duration
    {
        return Err(Error::Invalid(format!(
            "not a video: the file is a still image ({} in {})",
            p.codec, p.format
        )));
    }
    if p.width == 0 || p.height == 0 {
        return Err(Error::Invalid(
            "the video stream has no picture size".into(),
        ));
    }
    if p.width > limits.max_dimension || p.height > limits.max_dimension {
        return Err(Error::Invalid(format!(
            "the video is {}×{} pixels; the limit is {} on either side",
            p.width, p.height, limits.max_dimension
        )));
    }
    if p.duration > limits.max_duration {
        return Err(Error::Invalid(format!(
            "the video is {} long; the limit is {}",
            human_duration(p.duration),
            human_duration(limits.max_duration)
        )));
    }
    if p.duration.is_finite() && p.duration > 0.0 && p.duration < limits.min_duration {
        return Err(Error::Invalid(format!(
            "the video is too short ({:.2} s; at least {:.1} s is needed)",
            p.duration, limits.min_duration
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Probe {
        Probe {
            format: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            codec: "h264".into(),
            width: 1920,
            height: 1080,
            rotation: Rotation::None,
            duration: 30.0,
            fps: 30.0,
            has_audio: true,
        }
    }

    fn limits() -> Limits {
        Limits {
            max_duration: 600.0,
            min_duration: 0.5,
            max_dimension: 8192,
        }
    }

    #[test]
    fn validation_rules() {
        assert!(validate(&probe(), &limits()).is_ok());
        let err = |p: Probe| validate(&p, &limits()).unwrap_err().to_string();
        assert!(
            err(Probe {
                duration: 700.0,
                ..probe()
            })
            .contains("11m40s long; the limit is 10m00s")
        );
        assert!(
            err(Probe {
                width: 9000,
                ..probe()
            })
            .contains("9000×1080")
        );
        assert!(
            err(Probe {
                duration: 0.1,
                ..probe()
            })
            .contains("too short")
        );
        assert!(
            err(Probe {
                format: "jpeg_pipe".into(),
                codec: "mjpeg".into(),
                duration: 0.0,
                ..probe()
            })
            .contains("still image")
        );
        assert!(
            err(Probe {
                width: 0,
                ..probe()
            })
            .contains("no picture size")
        );
        // unknown duration is not rejected up front (checked while decoding)
        assert!(
            validate(
                &Probe {
                    duration: 0.0,
                    ..probe()
                },
                &limits()
            )
            .is_ok()
        );
    }
}
