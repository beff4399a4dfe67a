//! Copies that keep the very chunks the connection read, instead of their
//! own copy of them.
//!
//! A body that arrives in one chunk (the usual request up to 64 KiB over
//! HTTP/1.1), or in large ones (an upload, read 80 KiB at a time), can go
//! to the targets as it came: no copy on the serving thread. But each chunk
//! is a slice of a connection's read buffer, which it keeps whole for as
//! long as the copy lives (a buffer of up to about twice `limits {
//! read_buffer }`). So a copy keeps its chunks only when its targets
//! are keeping up (each answered the last copy it was sent and holds fewer
//! than [`SHALLOW_BACKLOG`] copies, so this one will be sent soon), and
//! the copies of one mirror hold read buffers of at most [`LENT_BYTES`] at
//! a time. The rest are copied into an allocation of their size as before:
//! a target that hangs fills its backlog with copies of their own size
//! only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::copy_bytes::CopyBytes;
use crate::message::body::read_buffer_at_most;

/// The read buffers the copies of one mirror may hold at once, counting
/// each chunk as the largest buffer it can be a slice of: with the default
/// `read_buffer`, 400 small bodies, or 30 of 1 MiB.
pub const LENT_BYTES: usize = 64 << 20;

/// How much larger than the most it reads at once a connection's buffer
/// can be: hyper reads into all of its buffer's spare room, and `bytes`
/// grows that buffer in doublings when it cannot reuse the consumed
/// start (a read of 90 KiB out of a 160 KiB buffer with the default
/// 80 KiB `read_buffer`).
const BUFFER_GROWTH: usize = 2;

/// A target holding fewer copies than this (queued and in flight) is
/// keeping up: a copy for it is sent before long. A copy thread that runs
/// in turns on a busy core leaves a hundred copies or so waiting between
/// them (30k a second, a few milliseconds apart); what they may hold is
/// bounded by [`LENT_BYTES`] all the same.
pub const SHALLOW_BACKLOG: usize = 256;

/// A copy's body, as the tee collected it.
#[derive(Debug)]
pub enum CollectedBody {
    /// In the copy's own allocation, of its size.
    Own(Bytes),
    /// The chunks the body came in, still part of the reader's buffers.
    Read(CopyBytes),
}

/// The read buffers the copies of one mirror hold.
#[derive(Debug)]
pub struct Lending {
    held: AtomicUsize,
    /// The largest read buffer a chunk can be a slice of, as it is now.
    buffer_at_most: fn() -> usize,
}

impl Default for Lending {
    fn default() -> Self {
        Lending {
            held: AtomicUsize::new(0),
            buffer_at_most: read_buffer_at_most,
        }
    }
}

impl Lending {
    /// The body a copy keeps: its chunks themselves when its targets are
    /// `keeping_up` (asked only for such a body) and there is room (with
    /// the [`Lent`] that holds it), otherwise a copy in its own allocation.
    pub fn keep(
        self: &Arc<Self>,
        body: CollectedBody,
        keeping_up: impl FnOnce() -> bool,
    ) -> (CopyBytes, Option<Lent>) {
        match body {
            CollectedBody::Own(body) => (CopyBytes::One(body), None),
            CollectedBody::Read(chunks) => {
                match keeping_up().then(|| self.borrow(&chunks)).flatten() {
                    Some(lent) => (chunks, Some(lent)),
                    None => (CopyBytes::One(chunks.copied()), None),
                }
            }
        }
    }

    fn borrow(self: &Arc<Self>, chunks: &CopyBytes) -> Option<Lent> {
        let bytes = buffers_held(chunks, BUFFER_GROWTH * (self.buffer_at_most)());
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + bytes <= LENT_BYTES).then_some(held + bytes)
            })
            .ok()
            .map(|_| Lent {
                lending: self.clone(),
                bytes,
            })
    }

    /// The read buffers counted as held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// The most the buffers behind `chunks` can hold: each chunk may be a
/// slice of a read buffer of its own, of up to `buffer` bytes.
fn buffers_held(chunks: &CopyBytes, buffer: usize) -> usize {
    let one = |chunk: &Bytes| chunk.len().max(buffer);
    match chunks {
        CopyBytes::One(chunk) => one(chunk),
        CopyBytes::Chunks(chunks) => chunks.iter().map(one).sum(),
    }
}

/// One copy's hold on read buffers, given back when the copy is dropped.
#[derive(Debug)]
pub struct Lent {
    lending: Arc<Lending>,
    bytes: usize,
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.lending.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read buffers as large as the default `read_buffer`, whatever other
    /// tests in this process serve with.
    const READ_BUFFER_AT_MOST: usize = crate::message::body::DEFAULT_READ_BUFFER;

    fn lending() -> Arc<Lending> {
        Arc::new(Lending {
            held: AtomicUsize::new(0),
            buffer_at_most: || READ_BUFFER_AT_MOST,
        })
    }

    fn one(chunk: &Bytes) -> CollectedBody {
        CollectedBody::Read(CopyBytes::One(chunk.clone()))
    }

    fn first(body: &CopyBytes) -> *const u8 {
        match body {
            CopyBytes::One(one) => one.as_ptr(),
            CopyBytes::Chunks(chunks) => chunks[0].as_ptr(),
        }
    }

    #[test]
    fn lends_up_to_lent_bytes_then_copies() {
        let lending = lending();
        let buffer = Bytes::from(vec![7u8; 64]);
        let chunk = buffer.slice(8..16);
        let mut held = Vec::new();
        for _ in 0..LENT_BYTES / (BUFFER_GROWTH * READ_BUFFER_AT_MOST) {
            let (body, lent) = lending.keep(one(&chunk), || true);
            assert_eq!(first(&body), chunk.as_ptr(), "the chunk itself");
            held.push(lent.expect("room to lend"));
        }
        let (body, lent) = lending.keep(one(&chunk), || true);
        assert!(lent.is_none());
        assert_ne!(first(&body), chunk.as_ptr(), "a copy of its own");
        assert_eq!(body.joined(), chunk);
        held.pop();
        let (_, lent) = lending.keep(one(&chunk), || true);
        assert!(lent.is_some(), "a place given back is taken again");
    }

    #[test]
    fn each_chunk_counts_as_a_grown_read_buffer() {
        let lending = lending();
        let grown = BUFFER_GROWTH * READ_BUFFER_AT_MOST;
        let big = Bytes::from(vec![3u8; grown + 10]);
        let chunks = CopyBytes::Chunks(vec![big.clone(), Bytes::from_static(b"end")].into());
        let (body, lent) = lending.keep(CollectedBody::Read(chunks), || true);
        assert!(lent.is_some());
        assert_eq!(first(&body), big.as_ptr());
        assert_eq!(lending.held(), 2 * grown + 10);
        drop(lent);
        assert_eq!(lending.held(), 0, "given back whole");
    }

    #[test]
    fn chunks_not_lent_are_joined_into_one_copy() {
        let lending = lending();
        let chunks =
            CopyBytes::Chunks(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde")].into());
        let (body, lent) = lending.keep(CollectedBody::Read(chunks), || false);
        assert!(lent.is_none());
        assert!(matches!(&body, CopyBytes::One(one) if &one[..] == b"abcde"));
        assert_eq!(lending.held(), 0, "no place kept");
    }

    #[test]
    fn copies_for_targets_falling_behind_are_copied() {
        let lending = lending();
        let chunk = Bytes::from(vec![1u8; 32]).slice(4..20);
        let (body, lent) = lending.keep(one(&chunk), || false);
        assert!(lent.is_none());
        assert_ne!(first(&body), chunk.as_ptr());
        assert_eq!(body.joined(), chunk);
        assert_eq!(lending.held(), 0, "no place kept");
    }

    #[test]
    fn own_bodies_take_no_place() {
        let lending = lending();
        let (body, lent) = lending.keep(CollectedBody::Own(Bytes::from_static(b"abc")), || {
            panic!("the targets are not asked about a body of its own")
        });
        assert_eq!(&body.joined()[..], b"abc");
        assert!(lent.is_none());
        assert_eq!(lending.held(), 0);
    }
}
