//! GStreamer pieces of the voice pipeline: each sentence's audio as a complete Ogg/Opus stream
//! (`opusenc` + `oggmux`), and decoding what browsers record (Opus in Ogg or WebM) to 16 kHz
//! mono for the recogniser.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// GStreamer errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// GStreamer or a plugin is missing.
    #[error("GStreamer is not usable: {0}")]
    Init(String),
    /// The stream could not be processed.
    #[error("{0}")]
    Stream(String),
}

/// Initialises GStreamer once (and says so when it cannot start).
pub fn init() -> Result<(), Error> {
    static INIT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Init)
}

/// Runs a pipeline with an `appsrc` named `src` fed `input` and an `appsink` named `sink`;
/// returns everything the sink received.
fn run(
    desc: &str,
    input: &[u8],
    caps: Option<gst::Caps>,
    duration: Option<gst::ClockTime>,
) -> Result<Vec<u8>, Error> {
    init()?;
    let pipeline = gst::parse::launch(desc)
        .map_err(|e| Error::Init(format!("{desc}: {e}")))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| Error::Init("not a pipeline".into()))?;
    let src = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| Error::Init("no appsrc".into()))?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| Error::Init("no appsink".into()))?;
    // raw PCM is timed; an encoded file is a byte stream for typefinding
    match &caps {
        Some(c) => {
            src.set_caps(Some(c));
            src.set_format(gst::Format::Time);
        }
        None => src.set_format(gst::Format::Bytes),
    }
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| Error::Stream(format!("cannot start: {e}")))?;
    let mut feed = gst::Buffer::from_slice(input.to_vec());
    if let Some(d) = duration
        && let Some(b) = feed.get_mut()
    {
        b.set_pts(gst::ClockTime::ZERO);
        b.set_duration(d);
    }
    let _ = src.push_buffer(feed);
    let _ = src.end_of_stream();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let result = loop {
        if std::time::Instant::now() > deadline {
            break Err(Error::Stream("GStreamer took longer than 60 s".into()));
        }
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(500)) {
            Some(sample) => {
                if let Some(buf) = sample.buffer()
                    && let Ok(map) = buf.map_readable()
                {
                    out.extend_from_slice(map.as_slice());
                }
            }
            None if !sink.is_eos() && !has_error(&pipeline) => continue,
            None => {
                // EOS or error: the bus says which
                let bus = pipeline.bus();
                let err = bus.and_then(|b| {
                    b.pop_filtered(&[gst::MessageType::Error])
                        .and_then(|m| match m.view() {
                            gst::MessageView::Error(e) => Some(e.error().to_string()),
                            _ => None,
                        })
                });
                break match err {
                    Some(e) => Err(Error::Stream(e)),
                    None => Ok(()),
                };
            }
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result.map(|()| out)
}

fn has_error(p: &gst::Pipeline) -> bool {
    p.bus()
        .and_then(|b| b.peek())
        .is_some_and(|m| matches!(m.view(), gst::MessageView::Error(_)))
}

/// Encodes mono 16-bit PCM at `rate` Hz as a complete Ogg/Opus stream.
pub fn encode_ogg_opus(pcm: &[i16], rate: u32) -> Result<Vec<u8>, Error> {
    init()?;
    let caps = gst::Caps::builder("audio/x-raw")
        .field("format", "S16LE")
        .field("layout", "interleaved")
        .field("rate", rate as i32)
        .field("channels", 1i32)
        .build();
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let duration =
        gst::ClockTime::from_nseconds(pcm.len() as u64 * 1_000_000_000 / u64::from(rate.max(1)));
    run(
        "appsrc name=src ! audioconvert ! audioresample ! opusenc bitrate=32000 ! oggmux ! appsink name=sink sync=false",
        &bytes,
        Some(caps),
        Some(duration),
    )
}

/// One continuous Ogg/Opus stream fed sentence by sentence: pages come out as soon as the
/// encoder has them, so a client can start playing the first sentence while later ones are
/// still being synthesised.
pub struct OpusStream {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    sink: gst_app::AppSink,
    rate: u32,
    samples: u64,
}

impl OpusStream {
    /// A stream for mono 16-bit PCM at `rate`.
    pub fn new(rate: u32) -> Result<OpusStream, Error> {
        init()?;
        let pipeline = gst::parse::launch(
            "appsrc name=src ! audioconvert ! audioresample ! opusenc bitrate=32000 ! oggmux ! appsink name=sink sync=false",
        )
        .map_err(|e| Error::Init(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| Error::Init("not a pipeline".into()))?;
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| Error::Init("no appsrc".into()))?;
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| Error::Init("no appsink".into()))?;
        let caps = gst::Caps::builder("audio/x-raw")
            .field("format", "S16LE")
            .field("layout", "interleaved")
            .field("rate", rate as i32)
            .field("channels", 1i32)
            .build();
        src.set_caps(Some(&caps));
        src.set_format(gst::Format::Time);
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| Error::Stream(format!("cannot start: {e}")))?;
        Ok(OpusStream {
            pipeline,
            src,
            sink,
            rate: rate.max(1),
            samples: 0,
        })
    }

    /// Adds samples; returns the encoded bytes ready so far.
    pub fn push(&mut self, pcm: &[i16]) -> Vec<u8> {
        let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut buf = gst::Buffer::from_slice(bytes);
        if let Some(b) = buf.get_mut() {
            let ns =
                |n: u64| gst::ClockTime::from_nseconds(n * 1_000_000_000 / u64::from(self.rate));
            b.set_pts(ns(self.samples));
            b.set_duration(ns(pcm.len() as u64));
        }
        self.samples += pcm.len() as u64;
        let _ = self.src.push_buffer(buf);
        self.drain(gst::ClockTime::from_mseconds(50))
    }

    fn drain(&self, wait: gst::ClockTime) -> Vec<u8> {
        let mut out = Vec::new();
        let mut timeout = wait;
        while let Some(sample) = self.sink.try_pull_sample(timeout) {
            if let Some(buf) = sample.buffer()
                && let Ok(map) = buf.map_readable()
            {
                out.extend_from_slice(map.as_slice());
            }
            timeout = gst::ClockTime::ZERO;
        }
        out
    }

    /// Ends the stream; returns the last bytes.
    pub fn finish(self) -> Vec<u8> {
        let _ = self.src.end_of_stream();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.sink.is_eos() && std::time::Instant::now() < deadline {
            out.extend(self.drain(gst::ClockTime::from_mseconds(100)));
        }
        out.extend(self.drain(gst::ClockTime::ZERO));
        let _ = self.pipeline.set_state(gst::State::Null);
        out
    }
}

/// Decodes an encoded audio file (Ogg/Opus, WebM/Opus, anything GStreamer reads) to 16 kHz
/// mono 16-bit PCM.
pub fn decode_to_16k(data: &[u8]) -> Result<Vec<i16>, Error> {
    let raw = run(
        "appsrc name=src ! decodebin ! audioconvert ! audioresample ! audio/x-raw,format=S16LE,rate=16000,channels=1 ! appsink name=sink sync=false",
        data,
        None,
        None,
    )?;
    Ok(raw
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn opus_round_trip() {
        let pcm: Vec<i16> = (0..22_050)
            .map(|i| ((i as f32 * 0.05).sin() * 8000.0) as i16)
            .collect();
        let ogg = super::encode_ogg_opus(&pcm, 22_050).unwrap();
        eprintln!("{} bytes", ogg.len());
        std::fs::write("/tmp/opus-test.ogg", &ogg).unwrap();
        assert!(ogg.starts_with(b"OggS"));
        let back = super::decode_to_16k(&ogg).unwrap();
        assert!((back.len() as i64 - 16_000).abs() < 1000, "{}", back.len());
    }
}
