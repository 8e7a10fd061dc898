//! Plays a master playlist as an adaptive player does: picks a rung per segment with the ABR
//! controller, downloads segments in order, and simulates playback with a buffer — on a
//! virtual clock that the bandwidth trace drives (so a 30 s moment under a trace takes seconds,
//! and results do not depend on the machine's load), or in real time with `realtime`.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use crate::abr::{Controller, Params};
use crate::decode;
use crate::hls::{Fetcher, Violation};
use crate::trace::Trace;

/// How to play.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bandwidth over time; `None` uses the measured download times.
    pub trace: Option<Trace>,
    /// Decode every fetched segment (and compare streams with the master).
    pub decode: bool,
    /// Sleep for real instead of advancing a virtual clock.
    pub realtime: bool,
    /// Most media buffered ahead (seconds).
    pub max_buffer: f64,
    /// Media buffered before playback starts (seconds).
    pub startup_buffer: f64,
    /// ABR settings.
    pub abr: Params,
    /// After playing, also fetch and check every segment of every rung (not only those
    /// played).
    pub check_all: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trace: None,
            decode: true,
            realtime: false,
            max_buffer: 30.0,
            startup_buffer: 2.0,
            abr: Params::default(),
            check_all: true,
        }
    }
}

/// A rung switch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Switch {
    /// When (seconds since start).
    pub t: f64,
    /// From rung.
    pub from: String,
    /// To rung.
    pub to: String,
}

/// A stall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stall {
    /// When it began (seconds since start).
    pub t: f64,
    /// How long (ms).
    pub ms: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Time to first frame (ms since start).
    pub startup_ms: u64,
    /// Every rung switch.
    pub switches: Vec<Switch>,
    /// Every stall.
    pub stalls: Vec<Stall>,
    /// Average bit rate of the media played (kbit/s).
    pub avg_kbps: f64,
    /// Bytes fetched (playlists, init segments, segments).
    pub bytes: u64,
    /// The rung of each segment played.
    pub played: Vec<String>,
    /// Everything wrong with what was published, with URLs.
    pub violations: Vec<Violation>,
    /// `virtual` or `real`.
    pub clock: &'static str,
}

/// Plays `url`.
pub async fn play(url: &str, opts: &Options) -> Report {
    let fetcher = Fetcher::new();
    let started = Instant::now();
    let (pres, mut violations) = fetcher.presentation(url).await;
    let mut report = Report {
        startup_ms: 0,
        switches: Vec::new(),
        stalls: Vec::new(),
        avg_kbps: 0.0,
        bytes: 0,
        played: Vec::new(),
        violations: Vec::new(),
        clock: if opts.realtime { "real" } else { "virtual" },
    };
    let Some(pres) = pres.filter(|p| !p.rungs.is_empty()) else {
        report.violations = violations;
        return report;
    };
    let rungs = &pres.rungs;
    let count = rungs.iter().map(|r| r.segments.len()).min().unwrap_or(0);
    if rungs.iter().any(|r| r.segments.len() != count) {
        violations.push(Violation {
            url: pres.url.clone(),
            message: "rungs have different segment counts (not aligned for switching)".into(),
        });
    }
    let mut abr = Controller::new(
        opts.abr.clone(),
        rungs.iter().map(|r| r.bandwidth).collect(),
        0,
    );
    let mut inits: HashMap<usize, Bytes> = HashMap::new();
    let mut probed: Vec<bool> = vec![false; rungs.len()];
    let (mut t, mut buffer) = (0.0f64, 0.0f64);
    let mut playing = false;
    let mut current: Option<usize> = None;
    let (mut media_bits, mut media_secs) = (0.0f64, 0.0f64);

    // Time passes while downloading `bytes`: on the trace, or as measured.
    let elapse = |t: f64, bytes: u64, measured: f64| -> f64 {
        match &opts.trace {
            Some(trace) => trace.transfer_time(t, bytes),
            None => measured,
        }
    };

    for i in 0..count {
        let r = abr.choose(buffer);
        if current != Some(r) {
            if let Some(prev) = current {
                report.switches.push(Switch {
                    t: round3(t),
                    from: rungs[prev].name.clone(),
                    to: rungs[r].name.clone(),
                });
            }
            current = Some(r);
        }
        let rung = &rungs[r];
        let mut spent = 0.0;
        let mut fetched = 0u64;
        if let std::collections::hash_map::Entry::Vacant(e) = inits.entry(r) {
            match &rung.init {
                Some(u) => {
                    let t0 = Instant::now();
                    match fetcher.get(u, None).await {
                        Ok(b) => {
                            spent += elapse(t, b.len() as u64, t0.elapsed().as_secs_f64());
                            fetched += b.len() as u64;
                            e.insert(b);
                        }
                        Err(v) => {
                            violations.push(v);
                            e.insert(Bytes::new());
                        }
                    }
                }
                None => {
                    e.insert(Bytes::new());
                }
            }
        }
        let seg = &rung.segments[i];
        let t0 = Instant::now();
        let data = match fetcher.get(&seg.url, seg.range).await {
            Ok(b) => b,
            Err(v) => {
                violations.push(v);
                Bytes::new()
            }
        };
        let measured = t0.elapsed().as_secs_f64();
        let d = spent + elapse(t + spent, data.len() as u64, measured);
        fetched += data.len() as u64;
        report.bytes += fetched;
        if opts.realtime {
            let real = t0.elapsed().as_secs_f64();
            if d > real {
                tokio::time::sleep(std::time::Duration::from_secs_f64(d - real)).await;
            }
        }
        if !data.is_empty() {
            let init = inits.get(&r).cloned().unwrap_or_default();
            if opts.decode {
                let (i2, d2) = (init.clone(), data.clone());
                let decoded = tokio::task::spawn_blocking(move || decode::decode(&i2, &d2)).await;
                if let Ok(Err(msg)) = decoded {
                    violations.push(Violation {
                        url: seg.url.clone(),
                        message: msg,
                    });
                }
                if !probed[r] {
                    probed[r] = true;
                    let (i2, d2) = (init, data.clone());
                    match tokio::task::spawn_blocking(move || decode::probe(&i2, &d2)).await {
                        Ok(Ok(p)) => {
                            for m in decode::compare(rung.codecs.as_deref(), rung.resolution, &p) {
                                violations.push(Violation {
                                    url: rung.url.clone(),
                                    message: m,
                                });
                            }
                        }
                        Ok(Err(msg)) => violations.push(Violation {
                            url: seg.url.clone(),
                            message: msg,
                        }),
                        Err(_) => {}
                    }
                }
            }
            abr.observe(data.len() as u64, d.max(1e-6));
        }
        // playback consumes the buffer while we downloaded
        if playing {
            if buffer < d {
                report.stalls.push(Stall {
                    t: round3(t + buffer),
                    ms: ((d - buffer) * 1000.0).round() as u64,
                });
                buffer = 0.0;
            } else {
                buffer -= d;
            }
        }
        t += d;
        buffer += seg.duration;
        media_bits += data.len() as f64 * 8.0;
        media_secs += seg.duration;
        report.played.push(rung.name.clone());
        if !playing && (buffer >= opts.startup_buffer || i + 1 == count) {
            playing = true;
            report.startup_ms = (t * 1000.0).round() as u64;
        }
        if buffer > opts.max_buffer {
            let wait = buffer - opts.max_buffer;
            if opts.realtime {
                tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
            }
            t += wait;
            buffer = opts.max_buffer;
        }
    }
    if opts.check_all {
        check_all(
            &fetcher,
            rungs,
            &report.played,
            &mut inits,
            opts.decode,
            &mut probed,
            &mut violations,
        )
        .await;
    }
    if media_secs > 0.0 {
        report.avg_kbps = (media_bits / media_secs / 100.0).round() / 10.0;
    }
    if opts.realtime && report.startup_ms == 0 {
        report.startup_ms = started.elapsed().as_millis() as u64;
    }
    report.violations = violations;
    report
}

/// Fetches (and decodes) every init segment and segment the playback did not touch.
async fn check_all(
    fetcher: &Fetcher,
    rungs: &[crate::hls::Rung],
    played: &[String],
    inits: &mut HashMap<usize, Bytes>,
    decode: bool,
    probed: &mut [bool],
    violations: &mut Vec<Violation>,
) {
    for (r, rung) in rungs.iter().enumerate() {
        let init = match inits.get(&r) {
            Some(b) => b.clone(),
            None => match &rung.init {
                Some(u) => match fetcher.get(u, None).await {
                    Ok(b) => {
                        inits.insert(r, b.clone());
                        b
                    }
                    Err(v) => {
                        violations.push(v);
                        continue;
                    }
                },
                None => continue,
            },
        };
        for (i, seg) in rung.segments.iter().enumerate() {
            if played.get(i) == Some(&rung.name) {
                continue; // checked while playing
            }
            let data = match fetcher.get(&seg.url, seg.range).await {
                Ok(b) => b,
                Err(v) => {
                    violations.push(v);
                    continue;
                }
            };
            if !decode {
                continue;
            }
            let (i2, d2) = (init.clone(), data.clone());
            if let Ok(Err(msg)) =
                tokio::task::spawn_blocking(move || decode::decode(&i2, &d2)).await
            {
                violations.push(Violation {
                    url: seg.url.clone(),
                    message: msg,
                });
            }
            if !probed[r] {
                probed[r] = true;
                let (i2, d2) = (init.clone(), data);
                if let Ok(Ok(p)) =
                    tokio::task::spawn_blocking(move || decode::probe(&i2, &d2)).await
                {
                    for m in decode::compare(rung.codecs.as_deref(), rung.resolution, &p) {
                        violations.push(Violation {
                            url: rung.url.clone(),
                            message: m,
                        });
                    }
                }
            }
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
