//! Poster and thumbnail pictures: RGB, upright, scaled from decoded frames.

use ff::format::Pixel;
use ff::software::scaling::Flags as ScaleFlags;
use ffmpeg_next as ff;

use crate::rotate::Rotation;

/// Poster and thumbnail pictures: RGB, upright.
pub(super) struct Stills {
    rotation: Rotation,
    thumb_width: u32,
    poster_scaler: Option<(ff::software::scaling::Context, u32, u32)>,
    thumb_scaler: Option<(ff::software::scaling::Context, u32, u32)>,
    grey_scaler: Option<(ff::software::scaling::Context, u32, u32)>,
}

impl Stills {
    pub(super) fn new(rotation: Rotation, thumb_width: u32) -> Stills {
        Stills {
            rotation,
            thumb_width: thumb_width.max(16),
            poster_scaler: None,
            thumb_scaler: None,
            grey_scaler: None,
        }
    }

    /// Size (before rotation) for an upright picture whose width is `upright_w` at most.
    fn size_for(&self, frame: &ff::frame::Video, upright_w: u32) -> (u32, u32) {
        let (uw, uh) = self.rotation.upright(frame.width(), frame.height());
        let w = upright_w.min(uw).max(2);
        let h = ((f64::from(uh) * f64::from(w) / f64::from(uw)).round() as u32).max(2);
        let (w, h) = (w & !1, h & !1);
        if self.rotation.swaps() {
            (h, w)
        } else {
            (w, h)
        }
    }

    fn convert(
        slot: &mut Option<(ff::software::scaling::Context, u32, u32)>,
        frame: &ff::frame::Video,
        (w, h): (u32, u32),
        rotation: Rotation,
    ) -> Option<image::RgbImage> {
        let fresh = match slot {
            Some((s, iw, ih)) => {
                *iw != frame.width() || *ih != frame.height() || s.output().width != w
            }
            None => true,
        };
        if fresh {
            let s = ff::software::scaling::Context::get(
                frame.format(),
                frame.width(),
                frame.height(),
                Pixel::RGB24,
                w,
                h,
                ScaleFlags::BICUBIC,
            )
            .ok()?;
            *slot = Some((s, frame.width(), frame.height()));
        }
        let (scaler, _, _) = slot.as_mut()?;
        let mut rgb = ff::frame::Video::empty();
        scaler.run(frame, &mut rgb).ok()?;
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        let mut buf = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h as usize {
            buf.extend_from_slice(&data[y * stride..y * stride + w as usize * 3]);
        }
        let img = image::RgbImage::from_raw(w, h, buf)?;
        Some(match rotation {
            Rotation::None => img,
            Rotation::Cw90 => image::imageops::rotate90(&img),
            Rotation::Cw180 => image::imageops::rotate180(&img),
            Rotation::Cw270 => image::imageops::rotate270(&img),
        })
    }

    pub(super) fn poster(&mut self, frame: &ff::frame::Video) -> Option<image::RgbImage> {
        let size = self.size_for(frame, 1280);
        Self::convert(&mut self.poster_scaler, frame, size, self.rotation)
    }

    /// A small grey copy (as decoded, not rotated: scores do not care) for scoring poster
    /// candidates: its rows and its width.
    pub(super) fn grey(&mut self, frame: &ff::frame::Video) -> Option<(Vec<u8>, usize)> {
        let w = crate::poster::SCORE_WIDTH.min(frame.width()).max(2) & !1;
        let h = ((f64::from(frame.height()) * f64::from(w) / f64::from(frame.width().max(1)))
            .round() as u32)
            .max(2)
            & !1;
        let fresh = match &self.grey_scaler {
            Some((s, iw, ih)) => {
                *iw != frame.width() || *ih != frame.height() || s.output().width != w
            }
            None => true,
        };
        if fresh {
            let s = ff::software::scaling::Context::get(
                frame.format(),
                frame.width(),
                frame.height(),
                Pixel::GRAY8,
                w,
                h,
                ScaleFlags::AREA,
            )
            .ok()?;
            self.grey_scaler = Some((s, frame.width(), frame.height()));
        }
        let (scaler, _, _) = self.grey_scaler.as_mut()?;
        let mut grey = ff::frame::Video::empty();
        scaler.run(frame, &mut grey).ok()?;
        let stride = grey.stride(0);
        let data = grey.data(0);
        let mut buf = Vec::with_capacity((w * h) as usize);
        for y in 0..h as usize {
            buf.extend_from_slice(&data[y * stride..y * stride + w as usize]);
        }
        Some((buf, w as usize))
    }

    pub(super) fn thumb(&mut self, frame: &ff::frame::Video) -> Option<image::RgbImage> {
        let size = self.size_for(frame, self.thumb_width);
        Self::convert(&mut self.thumb_scaler, frame, size, self.rotation)
    }
}

/// The frame at `time` (seconds) of a short fMP4 file (an init segment followed by the media
/// segment holding that time, as published): the first decoded frame at or past `time`, or
/// the last one when `time` is past them all. Upright already (the ladder is).
pub fn frame_at(path: &std::path::Path, time: f64) -> Result<image::RgbImage, super::Error> {
    use super::Error;
    super::init();
    let mut ictx = ff::format::input(path)
        .map_err(|e| Error::Invalid(format!("the published segment cannot be opened: {e}")))?;
    let stream = ictx
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| Error::Invalid("the published segment has no video".into()))?;
    let index = stream.index();
    let tb = super::rational_f64(stream.time_base());
    let rate = super::rational_f64(stream.avg_frame_rate());
    let half = if rate > 0.0 { 0.5 / rate } else { 0.017 };
    let mut dec = ff::codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(|e| Error::Internal(format!("cannot decode the published video: {e}")))?;
    let mut stills = Stills::new(Rotation::None, 160);
    let mut last: Option<ff::frame::Video> = None;
    let take = |dec: &mut ff::decoder::Video, last: &mut Option<ff::frame::Video>| {
        let mut frame = ff::frame::Video::empty();
        while dec.receive_frame(&mut frame).is_ok() {
            let t = frame.timestamp().map_or(0.0, |ts| ts as f64 * tb);
            let done = t + half >= time;
            *last = Some(std::mem::replace(&mut frame, ff::frame::Video::empty()));
            if done {
                return true;
            }
        }
        false
    };
    let mut found = false;
    for (s, packet) in ictx.packets() {
        if s.index() != index || dec.send_packet(&packet).is_err() {
            continue;
        }
        if take(&mut dec, &mut last) {
            found = true;
            break;
        }
    }
    if !found {
        let _ = dec.send_eof();
        take(&mut dec, &mut last);
    }
    let frame = last.ok_or_else(|| Error::Invalid("no frame could be decoded there".into()))?;
    stills
        .poster(&frame)
        .ok_or_else(|| Error::Internal("the frame could not be converted".into()))
}
