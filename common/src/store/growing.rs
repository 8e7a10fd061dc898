//! Objects that are still being written: how much of them is durable, and where those bytes
//! are. A resumable upload is the one such object today; its writer (ingest) knows where the
//! bytes live and says so through [`Growing`], so a reader (the transcoder) can start on the
//! first bytes without knowing how uploads are stored.

use async_trait::async_trait;

use super::{Error, Key};

/// One stored piece of a growing object: bytes `offset .. offset + size` of the object are
/// bytes `0 .. size` of the object at `key` (which may hold more than `size` bytes; only the
/// first `size` are durable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Where the bytes are.
    pub key: Key,
    /// Where they start in the growing object.
    pub offset: u64,
    /// How many of them are durable.
    pub size: u64,
}

/// What is durable of a growing object right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// The object's final size.
    pub length: u64,
    /// Bytes durable so far, from the start (the pieces cover exactly `0 .. durable`).
    pub durable: u64,
    /// Every byte is in; the pieces are the finished object.
    pub complete: bool,
    /// The durable bytes, in order, back to back.
    pub pieces: Vec<Piece>,
    /// When the durable extent last grew (ms since the epoch; 0 when unknown).
    pub updated_ms: i64,
}

impl Extent {
    /// A finished object of `length` bytes stored whole at `key`.
    pub fn whole(key: Key, length: u64) -> Extent {
        Extent {
            length,
            durable: length,
            complete: true,
            pieces: vec![Piece {
                key,
                offset: 0,
                size: length,
            }],
            updated_ms: 0,
        }
    }

    /// The piece holding byte `pos`, if it is durable.
    pub fn piece_at(&self, pos: u64) -> Option<&Piece> {
        if pos >= self.durable {
            return None;
        }
        self.pieces
            .iter()
            .find(|p| pos >= p.offset && pos < p.offset + p.size)
    }
}

/// Answers "how much of the object that will be stored at `key` is durable" for objects still
/// being written. Pieces named by an extent stay readable until a later extent stops naming
/// them; a reader that finds a piece gone asks again.
#[async_trait]
pub trait Growing: Send + Sync + 'static {
    /// The extent of the object being written to `key`: `Ok(None)` when no such write is known
    /// (never started, or abandoned and removed).
    async fn extent(&self, key: &Key) -> Result<Option<Extent>, Error>;
}

/// For a process that sees no uploads in progress (tools and tests that store sources whole):
/// every source is a finished object.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoneGrowing;

#[async_trait]
impl Growing for NoneGrowing {
    async fn extent(&self, _key: &Key) -> Result<Option<Extent>, Error> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_durable_prefix_only() {
        let k = |s: &str| Key::new(s).unwrap_or_else(|e| panic!("{e}"));
        let e = Extent {
            length: 100,
            durable: 30,
            complete: false,
            pieces: vec![
                Piece {
                    key: k("a"),
                    offset: 0,
                    size: 20,
                },
                Piece {
                    key: k("b"),
                    offset: 20,
                    size: 10,
                },
            ],
            updated_ms: 0,
        };
        assert_eq!(e.piece_at(0).map(|p| p.key.as_str()), Some("a"));
        assert_eq!(e.piece_at(19).map(|p| p.key.as_str()), Some("a"));
        assert_eq!(e.piece_at(20).map(|p| p.key.as_str()), Some("b"));
        assert_eq!(e.piece_at(29).map(|p| p.key.as_str()), Some("b"));
        assert!(e.piece_at(30).is_none());
        let w = Extent::whole(k("c"), 5);
        assert!(w.complete && w.piece_at(4).is_some() && w.piece_at(5).is_none());
    }
}
