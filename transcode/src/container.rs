//! What an upload's container is, from its first bytes (pure, no FFmpeg): whether it can be
//! transcoded while it is still arriving, and how many bytes must be in before FFmpeg can open
//! it. Only the top-level layout is looked at — box headers for MP4, element headers for
//! Matroska/WebM — so a few KiB decide, whatever the file's size.
//!
//! * MP4 / QuickTime with `moov` before the media (`-movflags +faststart`, what phones' own
//!   recorders and most editors write) streams once `moov` is in.
//! * Fragmented MP4 (iOS AVAssetWriter, Safari's MediaRecorder: `moov` with `mvex`, then
//!   `moof`/`mdat` pairs) streams once `moov` is in.
//! * Matroska / WebM (Chrome's and Firefox's MediaRecorder) streams once its track list is in.
//! * An MP4 whose `mdat` comes first ("moov at the end") cannot: FFmpeg needs the index, which
//!   arrives last. Neither can anything else; those wait for the last byte.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// A container that can be read as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// MP4/QuickTime with the movie header first.
    Mp4,
    /// Fragmented MP4.
    FragmentedMp4,
    /// Matroska or WebM.
    Matroska,
}

impl Kind {
    /// A name for people.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Mp4 => "MP4 with the movie header first",
            Kind::FragmentedMp4 => "fragmented MP4",
            Kind::Matroska => "Matroska/WebM",
        }
    }

    /// A file name whose extension tells FFmpeg's probe what to expect.
    pub fn hint(self) -> &'static str {
        match self {
            Kind::Mp4 | Kind::FragmentedMp4 => "source.mp4",
            Kind::Matroska => "source.webm",
        }
    }

    /// Whether FFmpeg may seek in it while it arrives. Fragmented MP4 and Matroska are read
    /// front to back: given a seekable input, FFmpeg would jump to the end (Matroska's cues,
    /// the last fragment to learn a duration the header does not give) and wait there for the
    /// last byte. A fast-start MP4 needs seeking: its samples are read where its index says.
    pub fn seek_while_arriving(self) -> bool {
        matches!(self, Kind::Mp4)
    }
}

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// Not enough bytes to tell: at least this many are needed.
    NeedMore(u64),
    /// Streamable: FFmpeg can open it once `open_at` bytes are in.
    Stream {
        /// The container.
        kind: Kind,
        /// Bytes needed before opening (the end of `moov`, or of the track list).
        open_at: u64,
    },
    /// Must wait for the last byte, for this reason.
    Fallback(String),
}

/// How far into the file the header may be looked for.
const MAX_HEADER_SCAN: u64 = 64 << 20;

/// Looks at `head`, the first bytes of a file of `length` bytes.
pub fn sniff(head: &[u8], length: u64) -> Sniff {
    if length == 0 {
        return Sniff::Fallback("the file is empty".into());
    }
    if head.len() < 8 && (head.len() as u64) < length {
        return Sniff::NeedMore(8.min(length));
    }
    if head.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
        return matroska(head, length);
    }
    if head.len() >= 8 && is_mp4_box(&head[4..8]) {
        return mp4(head, length);
    }
    Sniff::Fallback(
        "only MP4 and WebM/Matroska are read while they arrive; this file is transcoded once \
         complete"
            .into(),
    )
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Box types that may open an MP4/QuickTime file.
fn is_mp4_box(t: &[u8]) -> bool {
    matches!(
        t,
        b"ftyp" | b"styp" | b"moov" | b"mdat" | b"free" | b"skip" | b"wide" | b"pnot" | b"uuid"
    )
}

/// Reads the box header at `pos`: (header length, box size), `None` when more bytes are needed.
fn box_header(head: &[u8], pos: u64, length: u64) -> Result<Option<(u64, u64, [u8; 4])>, String> {
    let p = pos as usize;
    if head.len() < p + 8 {
        return Ok(None);
    }
    let typ = [head[p + 4], head[p + 5], head[p + 6], head[p + 7]];
    let size32 = be32(&head[p..]);
    let (hdr, size) = match size32 {
        1 => {
            if head.len() < p + 16 {
                return Ok(None);
            }
            (16, be64(&head[p + 8..]))
        }
        0 => (8, length - pos),
        s => (8, s),
    };
    if size < hdr {
        return Err(format!(
            "malformed MP4: the {} box at byte {pos} is {size} bytes long",
            String::from_utf8_lossy(&typ)
        ));
    }
    Ok(Some((hdr, size, typ)))
}

fn mp4(head: &[u8], length: u64) -> Sniff {
    let mut pos = 0u64;
    loop {
        if pos >= length {
            return Sniff::Fallback("the MP4 has no movie header (moov)".into());
        }
        if pos > MAX_HEADER_SCAN {
            return Sniff::Fallback(format!(
                "no movie header (moov) in the first {} MiB",
                MAX_HEADER_SCAN >> 20
            ));
        }
        let (hdr, size, typ) = match box_header(head, pos, length) {
            Ok(Some(h)) => h,
            Ok(None) => return Sniff::NeedMore((pos + 16).min(length)),
            Err(e) => return Sniff::Fallback(e),
        };
        match &typ {
            b"moov" => {
                let end = pos.saturating_add(size);
                if end > length {
                    return Sniff::Fallback("the movie header (moov) runs past the end".into());
                }
                if (head.len() as u64) < end {
                    return Sniff::NeedMore(end);
                }
                let body = &head[(pos + hdr) as usize..end as usize];
                let kind = if has_child(body, b"mvex") {
                    Kind::FragmentedMp4
                } else {
                    Kind::Mp4
                };
                return Sniff::Stream { kind, open_at: end };
            }
            b"mdat" => return Sniff::Fallback("moov at the end of the file".into()),
            b"moof" => {
                return Sniff::Fallback("a movie fragment comes before the movie header".into());
            }
            _ => pos = pos.saturating_add(size),
        }
    }
}

/// Whether the box sequence `body` has a box of type `typ` at its top level.
fn has_child(body: &[u8], typ: &[u8; 4]) -> bool {
    let mut p = 0usize;
    while p + 8 <= body.len() {
        let size = be32(&body[p..]) as usize;
        if &body[p + 4..p + 8] == typ {
            return true;
        }
        let size = match size {
            0 => return false,
            1 if p + 16 <= body.len() => be64(&body[p + 8..]) as usize,
            s => s,
        };
        if size < 8 {
            return false;
        }
        p += size;
    }
    false
}

/// An EBML variable-length integer at `p`: (length in bytes, value). For element ids the
/// marker bit is kept; for sizes it is removed and "all ones" means unknown (`None`).
fn vint(head: &[u8], p: usize, keep_marker: bool) -> Result<Option<(usize, Option<u64>)>, String> {
    let Some(&first) = head.get(p) else {
        return Ok(None);
    };
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return Err("malformed Matroska: a variable-length number is too long".into());
    }
    if head.len() < p + len {
        return Ok(None);
    }
    let mut v = if keep_marker {
        u64::from(first)
    } else {
        u64::from(first) & ((1u64 << (8 - len)) - 1)
    };
    for &b in &head[p + 1..p + len] {
        v = (v << 8) | u64::from(b);
    }
    let unknown = !keep_marker && v == (1u64 << (7 * len)) - 1;
    Ok(Some((len, if unknown { None } else { Some(v) })))
}

const EBML: u64 = 0x1a45_dfa3;
const SEGMENT: u64 = 0x1853_8067;
const TRACKS: u64 = 0x1654_ae6b;
const CLUSTER: u64 = 0x1f43_b675;

/// The element header at `p`: (header length, id, size).
fn element(head: &[u8], p: usize) -> Result<Option<(usize, u64, Option<u64>)>, String> {
    let Some((il, id)) = vint(head, p, true)? else {
        return Ok(None);
    };
    let Some((sl, size)) = vint(head, p + il, false)? else {
        return Ok(None);
    };
    Ok(Some((il + sl, id.unwrap_or(0), size)))
}

fn matroska(head: &[u8], length: u64) -> Sniff {
    let need = |p: usize| Sniff::NeedMore((p as u64 + 16).min(length));
    let fail = |e: String| Sniff::Fallback(e);
    // the EBML header
    let (hl, id, size) = match element(head, 0) {
        Ok(Some(e)) => e,
        Ok(None) => return need(0),
        Err(e) => return fail(e),
    };
    let Some(size) = size.filter(|_| id == EBML) else {
        return fail("malformed Matroska: the EBML header has no size".into());
    };
    let mut p = hl.saturating_add(size as usize);
    // the segment
    let (hl, id, _) = match element(head, p) {
        Ok(Some(e)) => e,
        Ok(None) => return need(p),
        Err(e) => return fail(e),
    };
    if id != SEGMENT {
        return fail("malformed Matroska: no segment after the EBML header".into());
    }
    p += hl;
    // its children, until the track list
    loop {
        if p as u64 >= length {
            return fail("the Matroska file has no track list".into());
        }
        if p as u64 > MAX_HEADER_SCAN {
            return fail(format!(
                "no Matroska track list in the first {} MiB",
                MAX_HEADER_SCAN >> 20
            ));
        }
        let (hl, id, size) = match element(head, p) {
            Ok(Some(e)) => e,
            Ok(None) => return need(p),
            Err(e) => return fail(e),
        };
        match (id, size) {
            (TRACKS, Some(size)) => {
                let end = ((p + hl) as u64).saturating_add(size);
                if end > length {
                    return fail("the Matroska track list runs past the end".into());
                }
                return Sniff::Stream {
                    kind: Kind::Matroska,
                    open_at: end,
                };
            }
            (TRACKS, None) => {
                return fail("the Matroska track list has no size".into());
            }
            (CLUSTER, _) => {
                return fail("the Matroska media starts before its track list".into());
            }
            (_, Some(size)) => p = p.saturating_add(hl).saturating_add(size as usize),
            (_, None) => {
                return fail("a Matroska header element has no size".into());
            }
        }
    }
}

/// One top-level box of an MP4 file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopBox {
    /// Its four-character type.
    pub typ: [u8; 4],
    /// Where it starts.
    pub offset: u64,
    /// Its whole size (header included).
    pub size: u64,
}

/// The top-level box headers of an MP4 file of `length` bytes (reads only the headers).
pub fn top_level_boxes<R: Read + Seek>(r: &mut R, length: u64) -> io::Result<Vec<TopBox>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos + 8 <= length {
        r.seek(SeekFrom::Start(pos))?;
        let mut h = [0u8; 16];
        let n = (length - pos).min(16) as usize;
        r.read_exact(&mut h[..n])?;
        let typ = [h[4], h[5], h[6], h[7]];
        let size = match be32(&h) {
            1 if n >= 16 => be64(&h[8..]),
            0 => length - pos,
            s => s,
        };
        if size < 8 || pos.saturating_add(size) > length {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the {} box at byte {pos} does not fit in the file",
                    String::from_utf8_lossy(&typ)
                ),
            ));
        }
        out.push(TopBox {
            typ,
            offset: pos,
            size,
        });
        pos += size;
    }
    Ok(out)
}

/// Whether an MP4 with these top-level boxes has its movie header after its media (and so
/// needs [`faststart`] to be streamable).
pub fn moov_at_end(boxes: &[TopBox]) -> bool {
    let moov = boxes.iter().position(|b| &b.typ == b"moov");
    let mdat = boxes.iter().position(|b| &b.typ == b"mdat");
    matches!((moov, mdat), (Some(m), Some(d)) if m > d)
}

/// Adds `delta` to every chunk offset (`stco`/`co64` in each track's sample table) of the
/// whole `moov` box that points into `from .. to`. Pure; returns how many offsets moved.
pub fn shift_chunk_offsets(
    moov: &mut [u8],
    from: u64,
    to: u64,
    delta: u64,
) -> Result<usize, String> {
    let hdr = if moov.len() >= 16 && be32(moov) == 1 {
        16
    } else {
        8
    };
    if moov.len() < hdr || &moov[4..8] != b"moov" {
        return Err("not a moov box".into());
    }
    let mut moved = 0;
    shift_in(&mut moov[hdr..], from, to, delta, &mut moved)?;
    Ok(moved)
}

fn shift_in(
    body: &mut [u8],
    from: u64,
    to: u64,
    delta: u64,
    moved: &mut usize,
) -> Result<(), String> {
    let mut p = 0usize;
    while p + 8 <= body.len() {
        let mut size = be32(&body[p..]) as usize;
        let mut hdr = 8;
        if size == 1 {
            if p + 16 > body.len() {
                return Err("a truncated box in moov".into());
            }
            size = be64(&body[p + 8..]) as usize;
            hdr = 16;
        } else if size == 0 {
            size = body.len() - p;
        }
        if size < hdr || p + size > body.len() {
            return Err("a box in moov does not fit".into());
        }
        let typ = [body[p + 4], body[p + 5], body[p + 6], body[p + 7]];
        let inner = &mut body[p + hdr..p + size];
        match &typ {
            b"trak" | b"mdia" | b"minf" | b"stbl" => shift_in(inner, from, to, delta, moved)?,
            b"stco" | b"co64" => {
                let wide = &typ == b"co64";
                if inner.len() < 8 {
                    return Err("a truncated chunk offset table".into());
                }
                let count = be32(&inner[4..]) as usize;
                let width = if wide { 8 } else { 4 };
                if inner.len() < 8 + count * width {
                    return Err("a truncated chunk offset table".into());
                }
                for i in 0..count {
                    let at = 8 + i * width;
                    let off = if wide {
                        be64(&inner[at..])
                    } else {
                        be32(&inner[at..])
                    };
                    if off < from || off >= to {
                        continue;
                    }
                    let new = off + delta;
                    if wide {
                        inner[at..at + 8].copy_from_slice(&new.to_be_bytes());
                    } else {
                        let new = u32::try_from(new).map_err(|_| {
                            "a chunk offset would pass 4 GiB (the file is too large to move its \
                             index)"
                                .to_string()
                        })?;
                        inner[at..at + 4].copy_from_slice(&new.to_be_bytes());
                    }
                    *moved += 1;
                }
            }
            _ => {}
        }
        p += size;
    }
    Ok(())
}

/// Whether the file at `path` is an MP4 with its movie header at the end, which [`faststart`]
/// can make streamable. Anything else (another container, a malformed file) is false: it is
/// uploaded as it is and the server judges it.
pub fn needs_faststart(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(length) = f.metadata().map(|m| m.len()) else {
        return false;
    };
    let mut head = [0u8; 8];
    if f.read_exact(&mut head).is_err() || !is_mp4_box(&head[4..8]) {
        return false;
    }
    top_level_boxes(&mut f, length).is_ok_and(|b| moov_at_end(&b))
}

/// Largest movie header [`faststart`] will move (it is read into memory).
const MAX_MOOV: u64 = 256 << 20;

/// Writes a copy of the MP4 `src` to `dst` with its movie header moved in front of the media
/// (what `qt-faststart` and `-movflags +faststart` do), so it can be transcoded while it
/// uploads. Every other byte is kept as it is; only chunk offsets change. Writes to a
/// temporary file beside `dst` and renames it into place, so `dst` is whole or absent.
pub fn faststart(src: &Path, dst: &Path) -> io::Result<()> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut f = std::fs::File::open(src)?;
    let length = f.metadata()?.len();
    let boxes = top_level_boxes(&mut f, length)?;
    if !moov_at_end(&boxes) {
        return Err(bad("the movie header is not at the end".into()));
    }
    let moov = boxes
        .iter()
        .find(|b| &b.typ == b"moov")
        .copied()
        .ok_or_else(|| bad("no moov".into()))?;
    let first_mdat = boxes
        .iter()
        .find(|b| &b.typ == b"mdat")
        .copied()
        .ok_or_else(|| bad("no mdat".into()))?;
    if moov.size > MAX_MOOV {
        return Err(bad(format!("the movie header is {} bytes", moov.size)));
    }
    let mut header = vec![0u8; moov.size as usize];
    f.seek(SeekFrom::Start(moov.offset))?;
    f.read_exact(&mut header)?;
    // Everything from the first mdat up to the old moov moves down by the moov's size; what
    // followed the moov stays where it was.
    shift_chunk_offsets(&mut header, first_mdat.offset, moov.offset, moov.size).map_err(bad)?;
    let tmp = dst.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut out = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let mut copy = |b: &TopBox, out: &mut io::BufWriter<std::fs::File>| -> io::Result<()> {
            f.seek(SeekFrom::Start(b.offset))?;
            let n = io::copy(&mut (&mut f).take(b.size), out)?;
            if n != b.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank",
                ));
            }
            Ok(())
        };
        for b in boxes.iter().filter(|b| b.offset < first_mdat.offset) {
            copy(b, &mut out)?;
        }
        out.write_all(&header)?;
        for b in boxes
            .iter()
            .filter(|b| b.offset >= first_mdat.offset && b.offset != moov.offset)
        {
            copy(b, &mut out)?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dst)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(typ: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(typ);
        v.extend_from_slice(body);
        v
    }

    fn file(boxes: &[Vec<u8>]) -> Vec<u8> {
        boxes.concat()
    }

    #[test]
    fn fast_start_mp4_streams_once_moov_is_in() {
        let moov = mp4_box(b"moov", &mp4_box(b"trak", &[0; 40]));
        let f = file(&[
            mp4_box(b"ftyp", b"isomiso2"),
            moov.clone(),
            mp4_box(b"mdat", &[7; 1000]),
        ]);
        let open_at = 16 + moov.len() as u64;
        let len = f.len() as u64;
        assert_eq!(
            sniff(&f, len),
            Sniff::Stream {
                kind: Kind::Mp4,
                open_at
            }
        );
        // every prefix asks for more, never decides wrongly
        for cut in 0..open_at as usize {
            match sniff(&f[..cut], len) {
                Sniff::NeedMore(n) => assert!(n > cut as u64 && n <= open_at, "{cut}: {n}"),
                other => panic!("prefix of {cut} bytes: {other:?}"),
            }
        }
    }

    #[test]
    fn fragmented_mp4_is_recognised() {
        let moov = mp4_box(
            b"moov",
            &[mp4_box(b"mvhd", &[0; 20]), mp4_box(b"mvex", &[0; 8])].concat(),
        );
        let f = file(&[
            mp4_box(b"ftyp", b"iso5"),
            moov,
            mp4_box(b"moof", &[0; 30]),
            mp4_box(b"mdat", &[0; 30]),
        ]);
        assert!(matches!(
            sniff(&f, f.len() as u64),
            Sniff::Stream {
                kind: Kind::FragmentedMp4,
                ..
            }
        ));
    }

    #[test]
    fn moov_at_the_end_falls_back_from_the_first_bytes() {
        let mut f = mp4_box(b"ftyp", b"isom");
        // a 64-bit mdat header, then nothing more: the decision needs only the headers
        f.extend_from_slice(&1u32.to_be_bytes());
        f.extend_from_slice(b"mdat");
        f.extend_from_slice(&(10_000_000u64).to_be_bytes());
        assert_eq!(
            sniff(&f, 20_000_000),
            Sniff::Fallback("moov at the end of the file".into())
        );
        let f = file(&[mp4_box(b"ftyp", b"isom"), mp4_box(b"moof", &[0; 8])]);
        assert!(matches!(sniff(&f, f.len() as u64), Sniff::Fallback(r) if r.contains("fragment")));
    }

    #[test]
    fn broken_and_foreign_files_fall_back_with_a_reason() {
        assert_eq!(sniff(b"", 0), Sniff::Fallback("the file is empty".into()));
        let jpeg = [0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0, 1];
        assert!(matches!(sniff(&jpeg, 5000), Sniff::Fallback(r) if r.contains("only MP4")));
        // a box claiming to be shorter than its own header
        let mut bad = 4u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"ftyp");
        assert!(matches!(sniff(&bad, 100), Sniff::Fallback(r) if r.contains("malformed")));
        // no moov before the file ends
        let f = file(&[mp4_box(b"ftyp", b"isom"), mp4_box(b"free", &[0; 8])]);
        assert!(
            matches!(sniff(&f, f.len() as u64), Sniff::Fallback(r) if r.contains("no movie header"))
        );
        // a short head of a long file asks for more
        assert_eq!(sniff(&[0, 0], 1000), Sniff::NeedMore(8));
    }

    fn ebml(id: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = id.to_vec();
        // 8-byte size vint
        v.push(0x01);
        v.extend_from_slice(&(body.len() as u64).to_be_bytes()[1..]);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn webm_streams_once_its_track_list_is_in() {
        let header = ebml(
            &[0x1a, 0x45, 0xdf, 0xa3],
            &[0x42, 0x82, 0x84, b'w', b'e', b'b', b'm'],
        );
        let info = ebml(&[0x15, 0x49, 0xa9, 0x66], &[0; 10]);
        let tracks = ebml(&[0x16, 0x54, 0xae, 0x6b], &[0; 30]);
        // MediaRecorder writes the segment and clusters with unknown sizes
        let mut f = header.clone();
        f.extend_from_slice(&[
            0x18, 0x53, 0x80, 0x67, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        f.extend_from_slice(&info);
        f.extend_from_slice(&tracks);
        let open_at = f.len() as u64;
        f.extend_from_slice(&[
            0x1f, 0x43, 0xb6, 0x75, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        f.extend_from_slice(&[0; 100]);
        let len = 1_000_000;
        assert_eq!(
            sniff(&f, len),
            Sniff::Stream {
                kind: Kind::Matroska,
                open_at
            }
        );
        for cut in 0..(open_at as usize - tracks.len()) {
            assert!(
                matches!(sniff(&f[..cut], len), Sniff::NeedMore(_)),
                "prefix of {cut} bytes"
            );
        }
        // a cluster before any track list cannot be opened early
        let mut g = header;
        g.extend_from_slice(&[
            0x18, 0x53, 0x80, 0x67, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        g.extend_from_slice(&[0x1f, 0x43, 0xb6, 0x75, 0x81]);
        assert!(
            matches!(sniff(&g, len), Sniff::Fallback(r) if r.contains("before its track list"))
        );
    }

    fn stco(offsets: &[u32]) -> Vec<u8> {
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(&(offsets.len() as u32).to_be_bytes());
        for o in offsets {
            body.extend_from_slice(&o.to_be_bytes());
        }
        mp4_box(b"stco", &body)
    }

    #[test]
    fn chunk_offsets_in_the_moved_range_shift() {
        let stbl = mp4_box(
            b"stbl",
            &[mp4_box(b"stsd", &[0; 8]), stco(&[10, 100, 5000])].concat(),
        );
        let trak = mp4_box(b"trak", &mp4_box(b"mdia", &mp4_box(b"minf", &stbl)));
        let mut co64 = vec![0, 0, 0, 0, 0, 0, 0, 1];
        co64.extend_from_slice(&200u64.to_be_bytes());
        let trak2 = mp4_box(
            b"trak",
            &mp4_box(
                b"mdia",
                &mp4_box(b"minf", &mp4_box(b"stbl", &mp4_box(b"co64", &co64))),
            ),
        );
        let mut moov = mp4_box(b"moov", &[mp4_box(b"mvhd", &[0; 12]), trak, trak2].concat());
        let moved = shift_chunk_offsets(&mut moov, 50, 1000, 7).unwrap();
        assert_eq!(moved, 2, "100 and 200 are in range; 10 and 5000 are not");
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
        assert!(find(&moov, &107u32.to_be_bytes()).is_some());
        assert!(find(&moov, &10u32.to_be_bytes()).is_some());
        assert!(find(&moov, &5000u32.to_be_bytes()).is_some());
        assert!(find(&moov, &207u64.to_be_bytes()).is_some());
        assert!(shift_chunk_offsets(&mut moov.clone()[..20].to_vec(), 0, 1, 1).is_err());
        let mut not_moov = mp4_box(b"free", &[0; 8]);
        assert!(shift_chunk_offsets(&mut not_moov, 0, 1, 1).is_err());
        // an offset that would overflow 32 bits is refused, not wrapped
        let mut big = mp4_box(
            b"moov",
            &mp4_box(
                b"trak",
                &mp4_box(
                    b"mdia",
                    &mp4_box(b"minf", &mp4_box(b"stbl", &stco(&[u32::MAX - 3]))),
                ),
            ),
        );
        assert!(shift_chunk_offsets(&mut big, 0, u64::MAX, 10).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for n in 0..2000usize {
            let len = n % 300;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // bias towards the magic numbers so the parsers get exercised
                    match (i, n % 3) {
                        (0..=3, 0) => [0x1a, 0x45, 0xdf, 0xa3][i],
                        (4..=7, 1) => b"ftyp"[i - 4],
                        _ => x as u8,
                    }
                })
                .collect();
            let _ = sniff(&bytes, (len as u64) * (1 + x % 4));
        }
    }
}
