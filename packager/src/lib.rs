//! Packager: fMP4/CMAF HLS packaging of encoded renditions, playlist rendering (pure
//! functions), poster and thumbnails, atomic publishing to object storage (master playlist
//! last) and the HLS origin for local storage.
//!
//! Position in the data flow: transcode → **packager** → players. (Built by the Packager issue;
//! nothing lives here yet.)
