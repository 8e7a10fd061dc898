//! Ladder policy (pure): which rungs a source gets and at what size and bit rate.
//!
//! Rungs are named by the short side (`1080p` is 1920×1080 landscape or 1080×1920 portrait).
//! A source gets every configured rung whose short side does not exceed its own (never
//! upscale); a source smaller than the smallest rung gets one rung at its own size. Output keeps
//! the (rotation-corrected) aspect ratio with even dimensions.

use serde::Deserialize;

/// One configured rung.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RungSpec {
    /// Name, e.g. `720p`.
    pub name: String,
    /// Short side in pixels.
    pub short_side: u32,
    /// Target video bit rate (kbit/s).
    pub video_kbps: u32,
    /// Rate-control ceiling (kbit/s).
    pub maxrate_kbps: u32,
    /// VBV buffer (kbit).
    pub bufsize_kbps: u32,
    /// H.264 profile: `high` or `main`.
    pub profile: String,
}

/// The ladder of DESIGN.md (bit rates and VBV as the benchmark anchor uses).
pub fn default_rungs() -> Vec<RungSpec> {
    let r = |name: &str, short, kbps, max, buf, profile: &str| RungSpec {
        name: name.into(),
        short_side: short,
        video_kbps: kbps,
        maxrate_kbps: max,
        bufsize_kbps: buf,
        profile: profile.into(),
    };
    vec![
        r("1080p", 1080, 5000, 5500, 10000, "high"),
        r("720p", 720, 2800, 3100, 5600, "high"),
        r("480p", 480, 1200, 1350, 2400, "main"),
    ]
}

/// A rung chosen for one source.
#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    /// Name (by short side).
    pub name: String,
    /// Output width (upright).
    pub width: u32,
    /// Output height (upright).
    pub height: u32,
    /// Video bit rate (bit/s).
    pub bitrate: u64,
    /// Maximum rate (bit/s).
    pub maxrate: u64,
    /// VBV buffer (bit).
    pub bufsize: u64,
    /// H.264 profile.
    pub profile: String,
}

fn even(x: f64) -> u32 {
    let v = (x / 2.0).round() as u32 * 2;
    v.max(2)
}

/// The rungs for an upright source of `width`×`height` (rotation already applied), highest
/// first.
pub fn choose(specs: &[RungSpec], width: u32, height: u32) -> Vec<Rung> {
    if width == 0 || height == 0 {
        return Vec::new();
    }
    let short = width.min(height);
    let landscape = width >= height;
    let scale_to = |target_short: u32| {
        let f = f64::from(target_short) / f64::from(short);
        if landscape {
            (even(f64::from(width) * f), even(f64::from(target_short)))
        } else {
            (even(f64::from(target_short)), even(f64::from(height) * f))
        }
    };
    let mut sorted: Vec<&RungSpec> = specs.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.short_side));
    let mut out: Vec<Rung> = sorted
        .iter()
        .filter(|s| s.short_side <= short)
        .map(|s| {
            let (w, h) = scale_to(s.short_side);
            Rung {
                name: s.name.clone(),
                width: w,
                height: h,
                bitrate: u64::from(s.video_kbps) * 1000,
                maxrate: u64::from(s.maxrate_kbps) * 1000,
                bufsize: u64::from(s.bufsize_kbps) * 1000,
                profile: s.profile.clone(),
            }
        })
        .collect();
    if out.is_empty()
        && let Some(smallest) = sorted.last()
    {
        // Smaller than every rung: one rung at the source's own size, with the smallest rung's
        // rates scaled by area.
        let (w, h) = scale_to(short);
        let area =
            f64::from(w * h) / f64::from(even(f64::from(smallest.short_side)).pow(2)) * 9.0 / 16.0;
        let f = area.clamp(0.1, 1.0);
        out.push(Rung {
            name: format!("{}p", even(f64::from(short))),
            width: w,
            height: h,
            bitrate: (f64::from(smallest.video_kbps) * 1000.0 * f) as u64,
            maxrate: (f64::from(smallest.maxrate_kbps) * 1000.0 * f) as u64,
            bufsize: (f64::from(smallest.bufsize_kbps) * 1000.0 * f) as u64,
            profile: smallest.profile.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(w: u32, h: u32) -> Vec<(String, u32, u32)> {
        choose(&default_rungs(), w, h)
            .into_iter()
            .map(|r| (r.name, r.width, r.height))
            .collect()
    }

    #[test]
    fn full_hd_gets_three_rungs() {
        assert_eq!(
            sizes(1920, 1080),
            vec![
                ("1080p".into(), 1920, 1080),
                ("720p".into(), 1280, 720),
                ("480p".into(), 854, 480)
            ]
        );
    }

    #[test]
    fn never_upscales() {
        assert_eq!(
            sizes(1280, 720),
            vec![("720p".into(), 1280, 720), ("480p".into(), 854, 480)]
        );
        assert_eq!(sizes(1000, 700), vec![("480p".into(), 686, 480)]);
    }

    #[test]
    fn portrait_is_named_by_the_short_side() {
        assert_eq!(
            sizes(1080, 1920),
            vec![
                ("1080p".into(), 1080, 1920),
                ("720p".into(), 720, 1280),
                ("480p".into(), 480, 854)
            ]
        );
    }

    #[test]
    fn four_k_caps_at_1080p_and_odd_aspects_stay_even() {
        assert_eq!(sizes(3840, 2160)[0], ("1080p".into(), 1920, 1080));
        for (w, h) in [(1918, 1078), (1440, 1080), (2560, 1080), (1080, 1350)] {
            for r in choose(&default_rungs(), w, h) {
                assert_eq!(r.width % 2, 0);
                assert_eq!(r.height % 2, 0);
                let ar_in = f64::from(w) / f64::from(h);
                let ar_out = f64::from(r.width) / f64::from(r.height);
                assert!((ar_in - ar_out).abs() / ar_in < 0.01, "{w}x{h} -> {r:?}");
            }
        }
    }

    #[test]
    fn tiny_sources_get_one_rung_at_their_size() {
        let r = choose(&default_rungs(), 320, 240);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].name.as_str(), r[0].width, r[0].height),
            ("240p", 320, 240)
        );
        assert!(r[0].bitrate < 1_200_000 && r[0].bitrate > 0);
        assert_eq!(choose(&default_rungs(), 0, 100), vec![]);
    }

    #[test]
    fn rates_and_profiles_follow_the_design() {
        let r = choose(&default_rungs(), 1920, 1080);
        assert_eq!(
            (r[0].bitrate, r[0].maxrate, r[0].bufsize),
            (5_000_000, 5_500_000, 10_000_000)
        );
        assert_eq!(r[0].profile, "high");
        assert_eq!(r[2].profile, "main");
    }
}
