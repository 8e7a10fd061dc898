//! The animated preview's encoder: a few seconds of a published rung decoded and re-encoded as
//! one small, silent, progressive MP4 (`moov` before `mdat`, so a feed can start it before it
//! has all of it), for grids that loop it muted.

use std::path::Path;

use ff::format::Pixel;
use ff::software::scaling::Flags as ScaleFlags;
use ff::{Dictionary, Packet, Rational};
use ffmpeg_next as ff;

use super::{Error, TIMESCALE, rational_f64};

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    /// Width (pixels).
    pub width: u32,
    /// Height (pixels).
    pub height: u32,
    /// Seconds, from its first frame to the end of its last.
    pub duration: f64,
    /// Frames encoded.
    pub frames: u64,
}

/// The size of a `w`×`h` picture scaled so that its short side is `short` at most (never
/// upscaled), both sides even.
pub fn preview_size(w: u32, h: u32, short: u32) -> (u32, u32) {
    let s = w.min(h).max(1);
    let scale = (f64::from(short) / f64::from(s)).min(1.0);
    let even = |v: u32| ((f64::from(v) * scale).round() as u32).max(2) & !1;
    (even(w), even(h))
}

/// Encodes `length` seconds from `start` (seconds on the moment's timeline) of the video in
/// `input` (a published init segment followed by the media segments covering that stretch)
/// into `output`: H.264 main profile, CRF 30, short side `short` at most, no audio, faststart.
pub fn preview(
    input: &Path,
    start: f64,
    length: f64,
    short: u32,
    output: &Path,
) -> Result<Clip, Error> {
    super::init();
    let mut ictx = ff::format::input(input)
        .map_err(|e| Error::Invalid(format!("the published rung cannot be opened: {e}")))?;
    let stream = ictx
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| Error::Invalid("the published rung has no video".into()))?;
    let index = stream.index();
    let tb = rational_f64(stream.time_base());
    let rate = rational_f64(stream.avg_frame_rate());
    let fps = if rate > 0.0 && rate <= 120.0 {
        rate
    } else {
        30.0
    };
    let mut dec = ff::codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(|e| Error::Internal(format!("cannot decode the published video: {e}")))?;
    let (width, height) = preview_size(dec.width(), dec.height(), short);

    let codec = ff::encoder::find_by_name("libx264")
        .ok_or_else(|| Error::Internal("libx264 is not available".into()))?;
    let mut enc = ff::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| Error::Internal(e.to_string()))?;
    enc.set_width(width);
    enc.set_height(height);
    enc.set_format(Pixel::YUV420P);
    enc.set_time_base(Rational(1, TIMESCALE));
    enc.set_frame_rate(Some(Rational((fps * 1000.0).round() as i32, 1000).reduce()));
    enc.set_gop((fps * 2.0).round().max(1.0) as u32);
    enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
    let mut opts = Dictionary::new();
    opts.set("preset", "veryfast");
    opts.set("crf", "30");
    opts.set("profile", "main");
    let mut enc = enc
        .open_as_with(codec, opts)
        .map_err(|e| Error::Internal(format!("libx264 (preview): {e}")))?;

    let mut octx = ff::format::output_as(output, "mp4")
        .map_err(|e| Error::Internal(format!("cannot write the preview: {e}")))?;
    {
        let mut ost = octx
            .add_stream(codec)
            .map_err(|e| Error::Internal(format!("preview stream: {e}")))?;
        ost.set_parameters(&enc);
        ost.set_time_base(Rational(1, TIMESCALE));
    }
    let mut mux = Dictionary::new();
    mux.set("movflags", "+faststart");
    octx.write_header_with(mux)
        .map_err(|e| Error::Internal(format!("preview header: {e}")))?;
    let ost_tb = octx
        .stream(0)
        .map(|s| s.time_base())
        .unwrap_or(Rational(1, TIMESCALE));

    let mut window = Window {
        start,
        end: start + length,
        half: 0.5 / fps,
        tb,
        width,
        height,
        scaler: None,
        last_pts: None,
        frames: 0,
    };
    let mut done = false;
    for (s, packet) in ictx.packets() {
        if s.index() != index || dec.send_packet(&packet).is_err() {
            continue;
        }
        if window.take(&mut dec, &mut enc, &mut octx, ost_tb)? {
            done = true;
            break;
        }
    }
    if !done {
        let _ = dec.send_eof();
        window.take(&mut dec, &mut enc, &mut octx, ost_tb)?;
    }
    if window.frames == 0 {
        return Err(Error::Invalid(format!(
            "no frame between {start:.2} s and {:.2} s could be decoded",
            start + length
        )));
    }
    enc.send_eof()
        .map_err(|e| Error::Internal(format!("flushing the preview encoder: {e}")))?;
    write_packets(&mut enc, &mut octx, ost_tb)?;
    octx.write_trailer()
        .map_err(|e| Error::Internal(format!("finishing the preview: {e}")))?;
    let last = window.last_pts.unwrap_or(0) as f64 / f64::from(TIMESCALE);
    Ok(Clip {
        width,
        height,
        duration: last + 1.0 / fps,
        frames: window.frames,
    })
}

/// The stretch being encoded and the state of its encode.
struct Window {
    start: f64,
    end: f64,
    half: f64,
    tb: f64,
    width: u32,
    height: u32,
    scaler: Option<ff::software::scaling::Context>,
    last_pts: Option<i64>,
    frames: u64,
}

impl Window {
    /// Encodes the decoded frames inside the window; true once a frame past its end came.
    fn take(
        &mut self,
        dec: &mut ff::decoder::Video,
        enc: &mut ff::encoder::video::Encoder,
        octx: &mut ff::format::context::Output,
        ost_tb: Rational,
    ) -> Result<bool, Error> {
        let mut frame = ff::frame::Video::empty();
        while dec.receive_frame(&mut frame).is_ok() {
            let t = frame.timestamp().map_or(0.0, |ts| ts as f64 * self.tb);
            if t + self.half < self.start {
                continue;
            }
            if t + self.half >= self.end {
                return Ok(true);
            }
            let pts = ((t - self.start).max(0.0) * f64::from(TIMESCALE)).round() as i64;
            if self.last_pts.is_some_and(|p| pts <= p) {
                continue;
            }
            if self.scaler.is_none() {
                self.scaler = Some(
                    ff::software::scaling::Context::get(
                        frame.format(),
                        frame.width(),
                        frame.height(),
                        Pixel::YUV420P,
                        self.width,
                        self.height,
                        ScaleFlags::BICUBIC,
                    )
                    .map_err(|e| Error::Internal(format!("preview scaler: {e}")))?,
                );
            }
            let mut out = ff::frame::Video::empty();
            if let Some(scaler) = self.scaler.as_mut() {
                scaler
                    .run(&frame, &mut out)
                    .map_err(|e| Error::Internal(format!("scaling the preview: {e}")))?;
            }
            out.set_pts(Some(pts));
            enc.send_frame(&out)
                .map_err(|e| Error::Internal(format!("encoding the preview: {e}")))?;
            self.last_pts = Some(pts);
            self.frames += 1;
            write_packets(enc, octx, ost_tb)?;
        }
        Ok(false)
    }
}

fn write_packets(
    enc: &mut ff::encoder::video::Encoder,
    octx: &mut ff::format::context::Output,
    ost_tb: Rational,
) -> Result<(), Error> {
    let mut pkt = Packet::empty();
    while enc.receive_packet(&mut pkt).is_ok() {
        pkt.set_stream(0);
        pkt.rescale_ts(Rational(1, TIMESCALE), ost_tb);
        pkt.write_interleaved(octx)
            .map_err(|e| Error::Internal(format!("writing the preview: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::preview_size;

    #[test]
    fn the_short_side_is_capped_and_both_sides_are_even() {
        assert_eq!(preview_size(854, 480, 360), (640, 360));
        assert_eq!(preview_size(480, 854, 360), (360, 640));
        assert_eq!(preview_size(1920, 1080, 360), (640, 360));
        // never upscaled
        assert_eq!(preview_size(320, 240, 360), (320, 240));
        assert_eq!(preview_size(321, 241, 360), (320, 240));
    }
}
