//! Display-matrix rotation (pure): phones record sideways and store how to turn the picture.

/// How a decoded picture must be turned to be upright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// As decoded.
    None,
    /// 90° clockwise.
    Cw90,
    /// 180°.
    Cw180,
    /// 270° clockwise (90° counter-clockwise).
    Cw270,
}

impl Rotation {
    /// From a 3×3 display matrix (9 native-endian 32-bit values: 16.16 fixed point, last
    /// column 2.30) as stored in MP4 `tkhd` / FFmpeg side data. Angles snap to the nearest
    /// quarter turn; anything unreadable is `None`.
    pub fn from_display_matrix(bytes: &[u8]) -> Rotation {
        if bytes.len() < 36 {
            return Rotation::None;
        }
        let m = |i: usize| {
            f64::from(i32::from_ne_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]))
        };
        let (a, b, c, d) = (m(0), m(1), m(3), m(4));
        let s0 = a.hypot(c);
        let s1 = b.hypot(d);
        if s0 == 0.0 || s1 == 0.0 {
            return Rotation::None;
        }
        // FFmpeg's av_display_rotation_get() is the counter-clockwise angle; the picture must
        // be turned by its negation.
        let ccw = -(b / s1).atan2(a / s0).to_degrees();
        let cw = (-ccw).rem_euclid(360.0);
        match ((cw / 90.0).round() as i64).rem_euclid(4) {
            1 => Rotation::Cw90,
            2 => Rotation::Cw180,
            3 => Rotation::Cw270,
            _ => Rotation::None,
        }
    }

    /// True for quarter turns (width and height swap).
    pub fn swaps(self) -> bool {
        matches!(self, Rotation::Cw90 | Rotation::Cw270)
    }

    /// Upright size of a `w`×`h` picture.
    pub fn upright(self, w: u32, h: u32) -> (u32, u32) {
        if self.swaps() { (h, w) } else { (w, h) }
    }
}

/// Rotates one `w`×`h` 8-bit plane from `src` (rows `src_stride` apart) into `dst` (rows
/// `dst_stride` apart; its size is the rotated size). Works in tiles so both sides stay in cache.
pub fn rotate_plane(
    src: &[u8],
    src_stride: usize,
    w: usize,
    h: usize,
    dst: &mut [u8],
    dst_stride: usize,
    rot: Rotation,
) {
    const T: usize = 32;
    for ty in (0..h).step_by(T) {
        for tx in (0..w).step_by(T) {
            for y in ty..(ty + T).min(h) {
                let row = &src[y * src_stride..y * src_stride + w];
                let end = (tx + T).min(w);
                for (x, &px) in row.iter().enumerate().take(end).skip(tx) {
                    let (dx, dy) = match rot {
                        Rotation::None => (x, y),
                        Rotation::Cw90 => (h - 1 - y, x),
                        Rotation::Cw180 => (w - 1 - x, h - 1 - y),
                        Rotation::Cw270 => (y, w - 1 - x),
                    };
                    dst[dy * dst_stride + dx] = px;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(deg: f64) -> Vec<u8> {
        // FFmpeg's av_display_rotation_set(matrix, angle) with angle counter-clockwise
        let r = deg.to_radians();
        let (c, s) = (r.cos(), r.sin());
        let fixed = |v: f64| (v * 65536.0).round() as i32;
        let vals = [fixed(c), fixed(-s), 0, fixed(s), fixed(c), 0, 0, 0, 1 << 30];
        vals.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    #[test]
    fn reads_quarter_turns() {
        // `-metadata:s:v rotate=90` (clockwise display) stores a -90° (ccw) matrix
        assert_eq!(
            Rotation::from_display_matrix(&matrix(-90.0)),
            Rotation::Cw90
        );
        assert_eq!(
            Rotation::from_display_matrix(&matrix(90.0)),
            Rotation::Cw270
        );
        assert_eq!(
            Rotation::from_display_matrix(&matrix(180.0)),
            Rotation::Cw180
        );
        assert_eq!(Rotation::from_display_matrix(&matrix(0.0)), Rotation::None);
        assert_eq!(
            Rotation::from_display_matrix(&matrix(-88.0)),
            Rotation::Cw90
        );
        assert_eq!(Rotation::from_display_matrix(&[0; 12]), Rotation::None);
        assert_eq!(Rotation::from_display_matrix(&[0; 36]), Rotation::None);
    }

    #[test]
    fn rotates_planes() {
        // 3x2 picture:  1 2 3
        //               4 5 6
        let src = [1, 2, 3, 0, 4, 5, 6, 0]; // stride 4
        let mut d = [0u8; 6];
        rotate_plane(&src, 4, 3, 2, &mut d, 2, Rotation::Cw90);
        assert_eq!(d, [4, 1, 5, 2, 6, 3]); // 2x3: 4 1 / 5 2 / 6 3
        rotate_plane(&src, 4, 3, 2, &mut d, 2, Rotation::Cw270);
        assert_eq!(d, [3, 6, 2, 5, 1, 4]);
        rotate_plane(&src, 4, 3, 2, &mut d, 3, Rotation::Cw180);
        assert_eq!(d, [6, 5, 4, 3, 2, 1]);
        assert_eq!(Rotation::Cw90.upright(1920, 1080), (1080, 1920));
        assert_eq!(Rotation::Cw180.upright(1920, 1080), (1920, 1080));
    }
}
