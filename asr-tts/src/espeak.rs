//! libespeak-ng through its C API (FFI). eSpeak NG keeps global state and is not thread-safe,
//! so every call holds one process-wide lock; synthesis runs in synchronous mode with a
//! callback that copies the samples out.

#![allow(unsafe_code)]

use std::ffi::{CString, c_int, c_short, c_void};
use std::sync::{Mutex, OnceLock};

use espeakng_sys as sys;

/// eSpeak NG errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// Initialisation failed (data files missing?).
    #[error("espeak-ng could not start (is the espeak-ng-data package installed?)")]
    Init,
    /// The voice is not installed.
    #[error("espeak-ng has no voice {0:?}")]
    Voice(String),
    /// Synthesis failed.
    #[error("espeak-ng synthesis failed (code {0})")]
    Synth(i32),
}

struct Engine {
    rate: u32,
}

static ENGINE: OnceLock<Result<Engine, Error>> = OnceLock::new();
static LOCK: Mutex<()> = Mutex::new(());

unsafe extern "C" fn collect(wav: *mut c_short, n: c_int, events: *mut sys::espeak_EVENT) -> c_int {
    // SAFETY: espeak-ng passes `n` valid samples at `wav` (or null at the end) and an event
    // list whose `user_data` is the `Vec<i16>` pointer we handed to espeak_Synth below, which
    // outlives the synchronous call.
    unsafe {
        if !wav.is_null() && n > 0 && !events.is_null() {
            let out = (*events).user_data as *mut Vec<i16>;
            if !out.is_null() {
                (*out).extend_from_slice(std::slice::from_raw_parts(wav, n as usize));
            }
        }
    }
    0
}

fn engine() -> Result<&'static Engine, Error> {
    ENGINE
        .get_or_init(|| {
            let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: called once, under the lock, with a null path (default data directory);
            // the callback has the signature espeak-ng expects.
            let rate = unsafe {
                sys::espeak_Initialize(
                    sys::espeak_AUDIO_OUTPUT_AUDIO_OUTPUT_SYNCHRONOUS,
                    500,
                    std::ptr::null(),
                    0,
                )
            };
            if rate <= 0 {
                return Err(Error::Init);
            }
            // SAFETY: as above; the callback is a plain function with a static lifetime.
            unsafe { sys::espeak_SetSynthCallback(Some(collect)) };
            Ok(Engine { rate: rate as u32 })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The engine's output sample rate.
pub fn sample_rate() -> Result<u32, Error> {
    engine().map(|e| e.rate)
}

/// Synthesises `text` with `voice` (e.g. `en-us`, `cmn`) at `rate` words per minute; returns
/// mono 16-bit samples at [`sample_rate`].
pub fn synthesize(text: &str, voice: &str, wpm: i32) -> Result<Vec<i16>, Error> {
    engine()?;
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cvoice = CString::new(voice).map_err(|_| Error::Voice(voice.to_string()))?;
    // SAFETY: the voice name is a valid C string; the lock serialises all eSpeak calls.
    let r = unsafe { sys::espeak_SetVoiceByName(cvoice.as_ptr()) };
    if r != sys::espeak_ERROR_EE_OK {
        return Err(Error::Voice(voice.to_string()));
    }
    // SAFETY: plain parameter setter, under the lock.
    unsafe {
        sys::espeak_SetParameter(sys::espeak_PARAMETER_espeakRATE, wpm, 0);
    }
    let ctext = CString::new(text.replace('\0', " ")).map_err(|_| Error::Synth(-1))?;
    let mut out: Vec<i16> = Vec::new();
    // SAFETY: `ctext` is NUL-terminated UTF-8 and lives across the synchronous call; the
    // user_data pointer is `out`, which the callback extends and which outlives the call.
    let r = unsafe {
        sys::espeak_Synth(
            ctext.as_ptr() as *const c_void,
            ctext.as_bytes_with_nul().len(),
            0,
            sys::espeak_POSITION_TYPE_POS_CHARACTER,
            0,
            sys::espeakCHARS_UTF8,
            std::ptr::null_mut(),
            &mut out as *mut Vec<i16> as *mut c_void,
        )
    };
    if r != sys::espeak_ERROR_EE_OK {
        return Err(Error::Synth(r as i32));
    }
    Ok(out)
}

/// IPA phonemes of `text` for `voice`, clause by clause (for neural voices that speak
/// phonemes). Each item is a clause's phonemes.
pub fn phonemes(text: &str, voice: &str) -> Result<Vec<String>, Error> {
    engine()?;
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cvoice = CString::new(voice).map_err(|_| Error::Voice(voice.to_string()))?;
    // SAFETY: valid C string, under the lock.
    let r = unsafe { sys::espeak_SetVoiceByName(cvoice.as_ptr()) };
    if r != sys::espeak_ERROR_EE_OK {
        return Err(Error::Voice(voice.to_string()));
    }
    let ctext = CString::new(text.replace('\0', " ")).map_err(|_| Error::Synth(-1))?;
    let mut ptr = ctext.as_ptr() as *const c_void;
    let mut out = Vec::new();
    // IPA output (bit 1), no tie characters
    let mode: c_int = 0x02;
    loop {
        if ptr.is_null() {
            break;
        }
        // SAFETY: `ptr` walks through `ctext` (alive for the loop); espeak_TextToPhonemes
        // advances it and returns a pointer to its own static buffer, copied at once.
        let ph =
            unsafe { sys::espeak_TextToPhonemes(&mut ptr, sys::espeakCHARS_UTF8 as c_int, mode) };
        if ph.is_null() {
            break;
        }
        // SAFETY: a NUL-terminated string owned by eSpeak until the next call.
        let s = unsafe { std::ffi::CStr::from_ptr(ph) }
            .to_string_lossy()
            .into_owned();
        if !s.trim().is_empty() {
            out.push(s);
        }
    }
    Ok(out)
}
