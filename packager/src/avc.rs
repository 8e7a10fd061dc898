//! H.264 bitstream helpers: Annex B ↔ length-prefixed (AVCC) conversion, the `avcC`
//! decoder configuration record, and the RFC 6381 codec string (`avc1.PPCCLL`) read from the
//! real SPS.

use bytes::{BufMut, Bytes, BytesMut};

/// NAL unit types we care about.
pub const NAL_IDR: u8 = 5;
/// Sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// Picture parameter set.
pub const NAL_PPS: u8 = 8;
/// Access unit delimiter.
pub const NAL_AUD: u8 = 9;

/// Splits an Annex B byte stream (`00 00 01` / `00 00 00 01` start codes) into NAL units.
pub fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (n, &(_, begin)) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(data.len(), |&(s, _)| s);
        // a four-byte start code leaves a zero byte at the end of the previous unit
        while end > begin && data[end - 1] == 0 {
            end -= 1;
        }
        if end > begin {
            out.push(&data[begin..end]);
        }
    }
    out
}

/// True when `data` looks like Annex B (starts with a start code).
pub fn is_annexb(data: &[u8]) -> bool {
    data.starts_with(&[0, 0, 1]) || data.starts_with(&[0, 0, 0, 1])
}

/// Splits length-prefixed (4-byte) NAL units.
pub fn avcc_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= data.len() {
        let len = u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
        i += 4;
        if len == 0 || i + len > data.len() {
            break;
        }
        out.push(&data[i..i + len]);
        i += len;
    }
    out
}

/// Converts one access unit to 4-byte length-prefixed NAL units, dropping parameter sets and
/// delimiters (they live in `avcC`). Input may be Annex B or already AVCC.
pub fn to_avcc_sample(data: &[u8]) -> Bytes {
    let nals = if is_annexb(data) {
        annexb_nals(data)
    } else {
        avcc_nals(data)
    };
    let mut out = BytesMut::with_capacity(data.len() + 16);
    for nal in nals {
        let kind = nal[0] & 0x1f;
        if kind == NAL_SPS || kind == NAL_PPS || kind == NAL_AUD {
            continue;
        }
        out.put_u32(nal.len() as u32);
        out.put_slice(nal);
    }
    out.freeze()
}

/// True when the access unit holds an IDR slice.
pub fn has_idr(data: &[u8]) -> bool {
    let nals = if is_annexb(data) {
        annexb_nals(data)
    } else {
        avcc_nals(data)
    };
    nals.iter().any(|n| n[0] & 0x1f == NAL_IDR)
}

/// SPS and PPS of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    /// Sequence parameter sets (NAL units without start codes).
    pub sps: Vec<Bytes>,
    /// Picture parameter sets.
    pub pps: Vec<Bytes>,
}

/// Errors reading codec configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// No SPS or PPS was found.
    #[error("H.264 configuration has no {0}")]
    Missing(&'static str),
    /// The `avcC` record is cut short or malformed.
    #[error("malformed avcC record")]
    BadAvcc,
}

impl AvcConfig {
    /// Reads the configuration from encoder extradata, which is either Annex B parameter sets
    /// (libx264 with a global header) or an `avcC` record (MP4 sources).
    pub fn from_extradata(extradata: &[u8]) -> Result<AvcConfig, Error> {
        if extradata.first() == Some(&1) {
            return Self::from_avcc(extradata);
        }
        let mut cfg = AvcConfig {
            sps: Vec::new(),
            pps: Vec::new(),
        };
        for nal in annexb_nals(extradata) {
            match nal[0] & 0x1f {
                NAL_SPS => cfg.sps.push(Bytes::copy_from_slice(nal)),
                NAL_PPS => cfg.pps.push(Bytes::copy_from_slice(nal)),
                _ => {}
            }
        }
        cfg.check()
    }

    /// Parses an `avcC` record.
    pub fn from_avcc(rec: &[u8]) -> Result<AvcConfig, Error> {
        if rec.len() < 7 || rec[0] != 1 {
            return Err(Error::BadAvcc);
        }
        let mut i = 5;
        let read_sets = |count: usize, i: &mut usize| -> Result<Vec<Bytes>, Error> {
            let mut sets = Vec::with_capacity(count);
            for _ in 0..count {
                if *i + 2 > rec.len() {
                    return Err(Error::BadAvcc);
                }
                let len = u16::from_be_bytes([rec[*i], rec[*i + 1]]) as usize;
                *i += 2;
                if *i + len > rec.len() || len == 0 {
                    return Err(Error::BadAvcc);
                }
                sets.push(Bytes::copy_from_slice(&rec[*i..*i + len]));
                *i += len;
            }
            Ok(sets)
        };
        let nsps = (rec[i] & 0x1f) as usize;
        i += 1;
        let sps = read_sets(nsps, &mut i)?;
        if i >= rec.len() {
            return Err(Error::BadAvcc);
        }
        let npps = rec[i] as usize;
        i += 1;
        let pps = read_sets(npps, &mut i)?;
        AvcConfig { sps, pps }.check()
    }

    fn check(self) -> Result<AvcConfig, Error> {
        match (self.sps.first(), self.pps.first()) {
            (None, _) => Err(Error::Missing("SPS")),
            (_, None) => Err(Error::Missing("PPS")),
            (Some(s), _) if s.len() < 4 => Err(Error::Missing("complete SPS")),
            _ => Ok(self),
        }
    }

    /// `profile_idc`, `constraint flags`, `level_idc` from the first SPS.
    pub fn profile_compat_level(&self) -> (u8, u8, u8) {
        let s = &self.sps[0];
        (s[1], s[2], s[3])
    }

    /// RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        let (p, c, l) = self.profile_compat_level();
        format!("avc1.{p:02x}{c:02x}{l:02x}")
    }

    /// The `AVCDecoderConfigurationRecord` (contents of the `avcC` box).
    pub fn avcc_record(&self) -> Bytes {
        let (profile, compat, level) = self.profile_compat_level();
        let mut b = BytesMut::new();
        b.put_u8(1);
        b.put_u8(profile);
        b.put_u8(compat);
        b.put_u8(level);
        b.put_u8(0xfc | 3); // 4-byte NAL lengths
        b.put_u8(0xe0 | (self.sps.len() as u8 & 0x1f));
        for s in &self.sps {
            b.put_u16(s.len() as u16);
            b.put_slice(s);
        }
        b.put_u8(self.pps.len() as u8);
        for p in &self.pps {
            b.put_u16(p.len() as u16);
            b.put_slice(p);
        }
        if matches!(profile, 100 | 110 | 122 | 144) {
            // High profiles carry chroma format and bit depths: 4:2:0, 8-bit (what we encode
            // and what the remux path accepts).
            b.put_u8(0xfc | 1);
            b.put_u8(0xf8);
            b.put_u8(0xf8);
            b.put_u8(0);
        }
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPS/PPS as libx264 emits them for 1280x720 High@3.1 (trimmed to the header bytes that
    // matter here; the tail is arbitrary payload).
    const SPS: &[u8] = &[0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50];
    const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];

    fn annexb(units: &[&[u8]], four: bool) -> Vec<u8> {
        let mut v = Vec::new();
        for u in units {
            if four {
                v.extend_from_slice(&[0, 0, 0, 1]);
            } else {
                v.extend_from_slice(&[0, 0, 1]);
            }
            v.extend_from_slice(u);
        }
        v
    }

    #[test]
    fn splits_annexb_with_both_start_codes() {
        let idr: &[u8] = &[0x65, 0x88, 0x80, 0x00, 0x10];
        let mut data = annexb(&[SPS, PPS], true);
        data.extend(annexb(&[idr], false));
        let nals = annexb_nals(&data);
        assert_eq!(nals, vec![SPS, PPS, idr]);
        // trailing zero bytes (cabac_zero_words, start-code padding) are not part of a NAL
        let mut padded = annexb(&[idr], false);
        padded.extend_from_slice(&[0, 0]);
        assert_eq!(annexb_nals(&padded), vec![idr]);
    }

    #[test]
    fn converts_to_length_prefixed_without_parameter_sets() {
        let idr: &[u8] = &[0x65, 0x88, 0x84];
        let data = annexb(&[&[0x09, 0xf0], SPS, PPS, idr], true);
        let out = to_avcc_sample(&data);
        assert_eq!(&out[..], &[0, 0, 0, 3, 0x65, 0x88, 0x84]);
        assert!(has_idr(&data));
        assert!(has_idr(&out));
        // already-AVCC input passes through
        assert_eq!(to_avcc_sample(&out), out);
        let p_slice = annexb(&[&[0x41, 0x9a]], false);
        assert!(!has_idr(&p_slice));
    }

    #[test]
    fn config_from_annexb_and_avcc_agree() {
        let from_b = AvcConfig::from_extradata(&annexb(&[SPS, PPS], true)).unwrap();
        assert_eq!(from_b.codec_string(), "avc1.64001f");
        let rec = from_b.avcc_record();
        assert_eq!(rec[0..4], [1, 0x64, 0x00, 0x1f]);
        let from_rec = AvcConfig::from_extradata(&rec).unwrap();
        assert_eq!(from_b, from_rec);
    }

    #[test]
    fn bad_configs_are_errors_not_panics() {
        assert_eq!(AvcConfig::from_extradata(&[]), Err(Error::Missing("SPS")));
        assert_eq!(
            AvcConfig::from_extradata(&annexb(&[SPS], true)),
            Err(Error::Missing("PPS"))
        );
        assert_eq!(AvcConfig::from_avcc(&[1, 2, 3]), Err(Error::BadAvcc));
        assert_eq!(
            AvcConfig::from_avcc(&[1, 0x64, 0, 0x1f, 0xff, 0xe1, 0x00, 0x40, 0x67]),
            Err(Error::BadAvcc)
        );
        assert!(avcc_nals(&[0, 0, 0, 9, 1]).is_empty());
    }
}
