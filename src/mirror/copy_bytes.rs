//! A copy's body: one buffer, or the chunks the client's body was read in.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// A copy's body: one buffer, or the chunks the client's body was read in,
/// kept as they came (see [`super::lending`]).
#[derive(Debug, Clone)]
pub enum CopyBytes {
    One(Bytes),
    Chunks(Arc<[Bytes]>),
}

impl Default for CopyBytes {
    fn default() -> Self {
        CopyBytes::One(Bytes::new())
    }
}

impl CopyBytes {
    pub fn len(&self) -> usize {
        match self {
            CopyBytes::One(one) => one.len(),
            CopyBytes::Chunks(chunks) => chunks.iter().map(Bytes::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body in one buffer: itself if it is one, joined if not.
    pub fn joined(&self) -> Bytes {
        match self {
            CopyBytes::One(one) => one.clone(),
            CopyBytes::Chunks(chunks) => join(chunks),
        }
    }

    /// The body copied into one allocation of its size, which holds none
    /// of the buffers its chunks are slices of.
    pub fn copied(&self) -> Bytes {
        match self {
            CopyBytes::One(one) => Bytes::copy_from_slice(one),
            CopyBytes::Chunks(chunks) => join(chunks),
        }
    }

    /// The chunk at `index` (empty ones included); `None` past the end.
    pub(super) fn chunk(&self, index: usize) -> Option<&Bytes> {
        match self {
            CopyBytes::One(one) => (index == 0).then_some(one),
            CopyBytes::Chunks(chunks) => chunks.get(index),
        }
    }
}

/// `chunks` in one allocation of their size.
fn join(chunks: &[Bytes]) -> Bytes {
    let mut joined = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    chunks
        .iter()
        .for_each(|chunk| joined.extend_from_slice(chunk));
    joined.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_is_the_bytes_in_order() {
        let chunks =
            CopyBytes::Chunks(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")].into());
        assert_eq!(chunks.joined(), Bytes::from_static(b"abcd"));
        assert_eq!(chunks.len(), 4);
    }
}
