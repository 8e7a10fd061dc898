//! Resampling to the recogniser's 16 kHz mono (pure): channels are averaged, then a
//! windowed-sinc filter (Blackman window, cut-off at the lower Nyquist frequency) interpolates
//! each output sample — good enough that the recogniser cannot tell, simple enough to test.

/// Averages interleaved channels into mono.
pub fn to_mono(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks(channels)
        .map(|f| f.iter().sum::<f32>() / channels as f32)
        .collect()
}

/// Resamples mono `input` from `from` Hz to `to` Hz.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    const HALF: i64 = 16; // taps each side (at the lower rate)
    let ratio = f64::from(to) / f64::from(from);
    let cutoff = ratio.min(1.0); // fraction of the input Nyquist to keep
    let out_len = ((input.len() as f64) * ratio).floor() as usize;
    let span = (HALF as f64 / cutoff).ceil() as i64;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let center = n as f64 / ratio;
        let first = center.floor() as i64 - span + 1;
        let mut acc = 0.0f64;
        let mut norm = 0.0f64;
        for k in first..first + 2 * span {
            if k < 0 || k as usize >= input.len() {
                continue;
            }
            let x = (k as f64 - center) * cutoff;
            let sinc = if x.abs() < 1e-9 {
                1.0
            } else {
                (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
            };
            // Blackman window over [-span, span]
            let w_pos = (k as f64 - center) / span as f64;
            let w = if w_pos.abs() >= 1.0 {
                0.0
            } else {
                0.42 + 0.5 * (std::f64::consts::PI * w_pos).cos()
                    + 0.08 * (2.0 * std::f64::consts::PI * w_pos).cos()
            };
            let c = sinc * w;
            acc += c * f64::from(input[k as usize]);
            norm += c;
        }
        out.push(if norm.abs() > 1e-12 {
            (acc / norm) as f32
        } else {
            0.0
        });
    }
    out
}

/// Float samples (−1..1) to 16-bit PCM.
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, secs: f64) -> Vec<f32> {
        (0..(f64::from(rate) * secs) as usize)
            .map(|i| {
                (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin() as f32 * 0.5
            })
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn keeps_speech_band_tones_and_removes_aliases() {
        // 1 kHz survives 48k → 16k with its level
        let out = resample(&tone(1000.0, 48_000, 0.5), 48_000, 16_000);
        assert_eq!(out.len(), 8000);
        let r = rms(&out[200..7800]);
        assert!((r - 0.3536).abs() < 0.02, "{r}");
        // 12 kHz (above the new Nyquist of 8 kHz) is filtered instead of aliasing to 4 kHz
        let out = resample(&tone(12_000.0, 48_000, 0.5), 48_000, 16_000);
        assert!(rms(&out[200..7800]) < 0.02);
        // upsampling 8k → 16k keeps a 1 kHz tone
        let out = resample(&tone(1000.0, 8000, 0.5), 8000, 16_000);
        assert_eq!(out.len(), 8000);
        assert!((rms(&out[200..7800]) - 0.3536).abs() < 0.02);
    }

    #[test]
    fn mono_and_conversion() {
        assert_eq!(to_mono(&[1.0, 0.0, 0.5, 0.5], 2), vec![0.5, 0.5]);
        assert_eq!(to_i16(&[1.5, -1.0, 0.0]), vec![32767, -32767, 0]);
        assert!(resample(&[], 44_100, 16_000).is_empty());
        assert_eq!(resample(&[0.1, 0.2], 16_000, 16_000), vec![0.1, 0.2]);
    }
}
