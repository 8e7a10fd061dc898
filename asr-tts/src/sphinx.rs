//! CMU pocketsphinx 0.8 (Debian's libpocketsphinx3 with the en-us model) through bindgen-made
//! bindings. A decoder is not thread-safe and loading one takes a moment, so decoders are kept
//! in a small pool and each utterance holds one exclusively.

#![allow(
    unsafe_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    missing_docs,
    clippy::all
)]

mod sys {
    include!(concat!(env!("OUT_DIR"), "/pocketsphinx.rs"));
}

use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where Debian's pocketsphinx-en-us puts the model.
pub const DEFAULT_MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";

/// pocketsphinx errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// A model file is missing.
    #[error("pocketsphinx model file missing: {0}")]
    Missing(PathBuf),
    /// The decoder could not be created.
    #[error("pocketsphinx could not load its model from {0}")]
    Init(PathBuf),
    /// Decoding failed.
    #[error("pocketsphinx decoding failed ({0})")]
    Decode(&'static str),
}

/// One loaded decoder.
pub struct Decoder {
    ps: *mut sys::ps_decoder_t,
    config: *mut sys::cmd_ln_t,
}

// SAFETY: a decoder is only ever used by one thread at a time (the pool hands it out
// exclusively); pocketsphinx keeps no thread-local state.
unsafe impl Send for Decoder {}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: both pointers came from ps_init / cmd_ln_parse_r and are freed once here.
        unsafe {
            sys::ps_free(self.ps);
            sys::cmd_ln_free_r(self.config);
        }
    }
}

fn quiet() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Logging goes to /dev/null through `-logfn` below; nothing global to set here.
    });
}

impl Decoder {
    /// Loads the model in `dir` (`en-us/`, `en-us.lm.bin`, `cmudict-en-us.dict`).
    pub fn load(dir: &Path) -> Result<Decoder, Error> {
        quiet();
        let hmm = dir.join("en-us");
        let lm = dir.join("en-us.lm.bin");
        let dict = dir.join("cmudict-en-us.dict");
        for p in [&hmm, &lm, &dict] {
            if !p.exists() {
                return Err(Error::Missing(p.clone()));
            }
        }
        let args: Vec<CString> = [
            "pocketsphinx",
            "-hmm",
            &hmm.to_string_lossy(),
            "-lm",
            &lm.to_string_lossy(),
            "-dict",
            &dict.to_string_lossy(),
            "-logfn",
            "/dev/null",
        ]
        .iter()
        .map(|s| CString::new(*s).map_err(|_| Error::Init(dir.to_path_buf())))
        .collect::<Result<_, _>>()?;
        let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
        // SAFETY: argv points at NUL-terminated strings alive for the call; ps_args() is the
        // decoder's static argument table.
        let config = unsafe {
            sys::cmd_ln_parse_r(
                std::ptr::null_mut(),
                sys::ps_args(),
                argv.len() as i32,
                argv.as_mut_ptr(),
                1,
            )
        };
        if config.is_null() {
            return Err(Error::Init(dir.to_path_buf()));
        }
        // SAFETY: config is a valid cmd_ln_t from above.
        let ps = unsafe { sys::ps_init(config) };
        if ps.is_null() {
            // SAFETY: free the config we own.
            unsafe { sys::cmd_ln_free_r(config) };
            return Err(Error::Init(dir.to_path_buf()));
        }
        Ok(Decoder { ps, config })
    }

    /// Starts an utterance.
    pub fn start(&mut self) -> Result<(), Error> {
        // SAFETY: valid decoder, used exclusively.
        if unsafe { sys::ps_start_utt(self.ps) } < 0 {
            return Err(Error::Decode("start"));
        }
        Ok(())
    }

    /// Feeds 16 kHz mono samples.
    pub fn feed(&mut self, pcm: &[i16]) -> Result<(), Error> {
        if pcm.is_empty() {
            return Ok(());
        }
        // SAFETY: the slice is valid for `len` samples during the call.
        let r = unsafe { sys::ps_process_raw(self.ps, pcm.as_ptr(), pcm.len(), 0, 0) };
        if r < 0 {
            return Err(Error::Decode("process"));
        }
        Ok(())
    }

    /// The current best hypothesis.
    pub fn hypothesis(&mut self) -> String {
        let mut score = 0i32;
        // SAFETY: valid decoder; the returned string is owned by the decoder and copied now.
        let p = unsafe { sys::ps_get_hyp(self.ps, &mut score) };
        if p.is_null() {
            return String::new();
        }
        // SAFETY: NUL-terminated string from pocketsphinx.
        unsafe { CStr::from_ptr(p) }
            .to_string_lossy()
            .trim()
            .to_string()
    }

    /// Ends the utterance; returns the final hypothesis.
    pub fn end(&mut self) -> Result<String, Error> {
        // SAFETY: valid decoder.
        if unsafe { sys::ps_end_utt(self.ps) } < 0 {
            return Err(Error::Decode("end"));
        }
        Ok(self.hypothesis())
    }
}

/// A pool of decoders over one model.
pub struct Pool {
    dir: PathBuf,
    free: Mutex<Vec<Decoder>>,
}

impl Pool {
    /// A pool over the model in `dir`; one decoder is loaded now to prove the model works.
    pub fn new(dir: &Path) -> Result<Pool, Error> {
        let first = Decoder::load(dir)?;
        Ok(Pool {
            dir: dir.to_path_buf(),
            free: Mutex::new(vec![first]),
        })
    }

    /// A decoder for one utterance (loaded if none is free).
    pub fn take(&self) -> Result<Decoder, Error> {
        if let Some(d) = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(d);
        }
        Decoder::load(&self.dir)
    }

    /// Returns a decoder to the pool.
    pub fn give(&self, d: Decoder) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < 4 {
            free.push(d);
        }
    }
}
