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

/// One entry of a stream's sample index (what a container such as MP4 knows of every sample
/// before reading it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexEntry {
    /// Byte position of the sample in the file.
    pub pos: i64,
    /// Its timestamp (stream time base).
    pub timestamp: i64,
    /// Its size in bytes (0 when the container does not say).
    pub size: u32,
    /// A sync sample (keyframe).
    pub key: bool,
}

/// A copy of the stream's sample index, taken right after the input was opened.
pub fn index_entries(stream: &ff::format::stream::Stream) -> Vec<IndexEntry> {
    // SAFETY: `stream` borrows a live AVStream of an open input for the whole call. FFmpeg's
    // accessors return the count of entries and a pointer to entry `i` (valid until the next
    // call that takes the stream or its context); each entry is copied out at once, and no
    // other FFmpeg call is made in between.
    unsafe {
        let st = stream.as_ptr() as *mut ff::ffi::AVStream;
        let n = ff::ffi::avformat_index_get_entries_count(st);
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for i in 0..n {
            let e = ff::ffi::avformat_index_get_entry(st, i);
            if e.is_null() {
                break;
            }
            let e = &*e;
            out.push(IndexEntry {
                pos: e.pos,
                timestamp: e.timestamp,
                size: e.size().max(0) as u32,
                key: e.flags() & ff::ffi::AVINDEX_KEYFRAME != 0,
            });
        }
        out
    }
}
