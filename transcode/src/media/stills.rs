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
}

impl Stills {
    pub(super) fn new(rotation: Rotation, thumb_width: u32) -> Stills {
        Stills {
            rotation,
            thumb_width: thumb_width.max(16),
            poster_scaler: None,
            thumb_scaler: None,
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

    pub(super) fn thumb(&mut self, frame: &ff::frame::Video) -> Option<image::RgbImage> {
        let size = self.size_for(frame, self.thumb_width);
        Self::convert(&mut self.thumb_scaler, frame, size, self.rotation)
    }
}
