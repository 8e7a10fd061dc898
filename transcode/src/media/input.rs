//! The source as FFmpeg reads it: a format context over our own byte stream
//! ([`crate::source::Reader`]) through ffmpeg-next's custom I/O (`StreamIo`), so the same
//! demuxing serves a finished upload and one still arriving. A read past what has arrived
//! blocks inside our reader; FFmpeg's interrupt callback is the job's cancellation.

use ffmpeg_next as ff;
use tokio_util::sync::CancellationToken;

use super::Error;
use super::probe::open_error;
use crate::source::Reader;

/// FFmpeg's I/O buffer over our reader (reads reach the reader in blocks of this size).
const IO_BUFFER: usize = 256 * 1024;

/// Opens `reader` as an FFmpeg input. `seekable` false reads it front to back (Matroska while
/// it arrives); `hint` is a file name whose extension helps the format probe.
pub(super) fn open(
    reader: Reader,
    seekable: bool,
    hint: &str,
    cancel: &CancellationToken,
) -> Result<ff::format::context::Input, Error> {
    let io = if seekable {
        ff::format::context::StreamIo::from_read_seek_with_capacity(reader, IO_BUFFER)
    } else {
        ff::format::context::StreamIo::from_read_with_capacity(reader, IO_BUFFER)
    }
    .map_err(|e| Error::Internal(format!("cannot set up reading the source: {e}")))?;
    let interrupt = cancel.clone();
    ff::format::input_from_stream_with_interrupt(io, Some(hint), None, move || {
        interrupt.is_cancelled()
    })
    .map_err(open_error)
}
