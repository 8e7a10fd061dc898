//! Independent checks of segment bytes with the FFmpeg command-line tools: does the rendition
//! (init + segment) decode without errors, and is it what the master playlist says it is.

use std::io::Write;
use std::process::{Command, Stdio};

/// What ffprobe saw in a rendition.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Video width.
    pub width: u64,
    /// Video height.
    pub height: u64,
    /// H.264 profile name (`High`, `Main`, …).
    pub profile: Option<String>,
    /// H.264 level (e.g. 31).
    pub level: Option<i64>,
    /// Whether an audio stream is present.
    pub audio: bool,
}

fn run(mut cmd: Command, input: Vec<u8>) -> Result<(Vec<u8>, Vec<u8>, bool), String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e} (is FFmpeg installed?)"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    Ok((out.stdout, out.stderr, out.status.success()))
}

/// Decodes `init` + `segment` completely; any decoder complaint is an error.
pub fn decode(init: &[u8], segment: &[u8]) -> Result<(), String> {
    let mut input = init.to_vec();
    input.extend_from_slice(segment);
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-xerror",
        "-i",
        "pipe:0",
        "-f",
        "null",
        "-",
    ]);
    let (_, stderr, ok) = run(cmd, input)?;
    let msg = String::from_utf8_lossy(&stderr).trim().to_string();
    if !ok || !msg.is_empty() {
        return Err(format!(
            "does not decode cleanly: {}",
            if msg.is_empty() {
                "ffmpeg failed".into()
            } else {
                msg.lines().take(3).collect::<Vec<_>>().join(" / ")
            }
        ));
    }
    Ok(())
}

/// Reads stream facts of `init` + `segment`.
pub fn probe(init: &[u8], segment: &[u8]) -> Result<Probe, String> {
    let mut input = init.to_vec();
    input.extend_from_slice(segment);
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-show_streams",
        "-of",
        "json",
        "-i",
        "pipe:0",
    ]);
    let (stdout, stderr, ok) = run(cmd, input)?;
    if !ok {
        return Err(format!(
            "ffprobe failed: {}",
            String::from_utf8_lossy(&stderr).trim()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&stdout).map_err(|e| format!("ffprobe output: {e}"))?;
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .ok_or("no video stream")?;
    Ok(Probe {
        width: video["width"].as_u64().unwrap_or(0),
        height: video["height"].as_u64().unwrap_or(0),
        profile: video["profile"].as_str().map(str::to_string),
        level: video["level"].as_i64(),
        audio: streams.iter().any(|s| s["codec_type"] == "audio"),
    })
}

/// `profile_idc` for an ffprobe profile name.
pub fn profile_idc(name: &str) -> Option<u8> {
    Some(match name {
        "Baseline" | "Constrained Baseline" => 66,
        "Main" => 77,
        "Extended" => 88,
        "High" => 100,
        "High 10" => 110,
        "High 4:2:2" => 122,
        "High 4:4:4 Predictive" => 244,
        _ => return None,
    })
}

/// Compares `CODECS` and `RESOLUTION` from the master with what ffprobe saw; returns the
/// mismatches.
pub fn compare(codecs: Option<&str>, resolution: Option<(u64, u64)>, p: &Probe) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((w, h)) = resolution
        && (w, h) != (p.width, p.height)
    {
        out.push(format!(
            "RESOLUTION {w}x{h} but the stream is {}x{}",
            p.width, p.height
        ));
    }
    let Some(codecs) = codecs else {
        out.push("no CODECS attribute".into());
        return out;
    };
    let list: Vec<&str> = codecs.split(',').map(str::trim).collect();
    match list.iter().find(|c| c.starts_with("avc1.")) {
        Some(avc) if avc.len() == 11 => {
            let pidc = u8::from_str_radix(&avc[5..7], 16).ok();
            let level = i64::from_str_radix(&avc[9..11], 16).ok();
            if let (Some(name), Some(pidc)) = (&p.profile, pidc)
                && profile_idc(name).is_some_and(|x| x != pidc)
            {
                out.push(format!(
                    "CODECS says {avc} but the stream's profile is {name}"
                ));
            }
            if let (Some(l), Some(level)) = (p.level, level)
                && l != level
            {
                out.push(format!(
                    "CODECS says level {level} but the stream's level is {l}"
                ));
            }
        }
        _ => out.push(format!("CODECS {codecs:?} has no avc1.PPCCLL entry")),
    }
    let says_audio = list.iter().any(|c| c.starts_with("mp4a."));
    if says_audio != p.audio {
        out.push(format!(
            "CODECS {} audio but the stream {}",
            if says_audio { "lists" } else { "does not list" },
            if p.audio { "has audio" } else { "has none" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(w: u64, h: u64, profile: &str, level: i64, audio: bool) -> Probe {
        Probe {
            width: w,
            height: h,
            profile: Some(profile.into()),
            level: Some(level),
            audio,
        }
    }

    #[test]
    fn matching_and_mismatching_codecs() {
        assert!(
            compare(
                Some("avc1.64001f,mp4a.40.2"),
                Some((1280, 720)),
                &p(1280, 720, "High", 31, true)
            )
            .is_empty()
        );
        assert!(
            compare(
                Some("avc1.42c01e"),
                Some((854, 480)),
                &p(854, 480, "Constrained Baseline", 30, false)
            )
            .is_empty()
        );
        let m = compare(
            Some("avc1.64001f,mp4a.40.2"),
            Some((1920, 1080)),
            &p(1280, 720, "Main", 40, false),
        );
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(compare(None, None, &p(1, 1, "High", 1, false)).len(), 1);
        assert_eq!(
            compare(Some("hvc1.1"), None, &p(1, 1, "High", 1, false)).len(),
            1
        );
    }
}
