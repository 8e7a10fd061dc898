//! The few raw FFmpeg fields ffmpeg-next does not expose. Every `unsafe` block here reads a
//! plain field of a live, owned context.

#![allow(unsafe_code)]

use ffmpeg_next as ff;

/// The codec context's `extradata` (SPS/PPS for libx264 with a global header, the
/// AudioSpecificConfig for AAC), copied out.
pub fn extradata(ctx: &ff::codec::Context) -> Vec<u8> {
    // SAFETY: `ctx` owns a valid AVCodecContext for the duration of the borrow; FFmpeg keeps
    // `extradata` either null or pointing at `extradata_size` initialised bytes, and we copy
    // them before the borrow ends.
    unsafe {
        let p = ctx.as_ptr();
        let data = (*p).extradata;
        let size = (*p).extradata_size;
        if data.is_null() || size <= 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(data, size as usize).to_vec()
        }
    }
}

/// A stream's codec parameters' `extradata` (the `avcC` record of an MP4 H.264 track), copied.
pub fn parameters_extradata(params: &ff::codec::Parameters) -> Vec<u8> {
    // SAFETY: `params` wraps a valid AVCodecParameters owned by the open input for the duration
    // of the borrow; `extradata` is null or points at `extradata_size` bytes, copied out here.
    unsafe {
        let p = params.as_ptr();
        let data = (*p).extradata;
        let size = (*p).extradata_size;
        if data.is_null() || size <= 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(data, size as usize).to_vec()
        }
    }
}
