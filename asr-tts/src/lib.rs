//! Voice Q&A: the streaming pipeline audio in → ASR → LLM stream → sentence splitter → TTS →
//! audio out, with engine traits for ASR, TTS and the LLM.
//!
//! Position in the data flow: beside the video path; reads a moment's poster, writes
//! transcripts and user memory. (Built by the asr-tts issue; nothing lives here yet.)

#![forbid(unsafe_code)]
