//! Copies that keep the very chunk the connection read, instead of their
//! own copy of it.
//!
//! A body that arrives in one chunk (the usual request up to 64 KiB over
//! HTTP/1.1) can go to the targets as it is: no copy on the serving thread.
//! But that chunk is a slice of the connection's read buffer, which it
//! keeps whole for as long as the copy lives. So a copy keeps the chunk
//! only when its targets are keeping up (each answered the last copy it
//! was sent and holds fewer than [`SHALLOW_BACKLOG`] copies, so this one
//! will be sent soon), and only [`LENT_AT_ONCE`] copies per mirror hold one
//! at a time. The rest are copied into an allocation of their size as
//! before: a target that hangs fills its backlog with copies of their own
//! size only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// Copies of one mirror that may hold a connection's read buffer at once.
pub const LENT_AT_ONCE: usize = 128;

/// A target holding fewer copies than this (queued and in flight) is
/// keeping up: a copy for it is sent before long.
pub const SHALLOW_BACKLOG: usize = 64;

/// A copy's body, as the tee collected it.
#[derive(Debug)]
pub enum CollectedBody {
    /// In the copy's own allocation, of its size.
    Own(Bytes),
    /// The one chunk the body came in, still part of the reader's buffer.
    Read(Bytes),
}

/// How many copies of one mirror hold a read buffer.
#[derive(Debug, Default)]
pub struct Lending {
    lent: AtomicUsize,
}

impl Lending {
    /// The body a copy keeps: the chunk itself when its targets are
    /// `keeping_up` (asked only for such a chunk) and fewer than
    /// [`LENT_AT_ONCE`] copies hold one (with the [`Lent`] that says so),
    /// otherwise a copy in its own allocation.
    pub fn keep(
        self: &Arc<Self>,
        body: CollectedBody,
        keeping_up: impl FnOnce() -> bool,
    ) -> (Bytes, Option<Lent>) {
        match body {
            CollectedBody::Own(body) => (body, None),
            CollectedBody::Read(chunk) => match keeping_up().then(|| self.borrow()).flatten() {
                Some(lent) => (chunk, Some(lent)),
                None => (Bytes::copy_from_slice(&chunk), None),
            },
        }
    }

    fn borrow(self: &Arc<Self>) -> Option<Lent> {
        self.lent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |lent| {
                (lent < LENT_AT_ONCE).then_some(lent + 1)
            })
            .ok()
            .map(|_| Lent(self.clone()))
    }

    /// Copies holding a read buffer now.
    #[cfg(test)]
    fn lent(&self) -> usize {
        self.lent.load(Ordering::Acquire)
    }
}

/// One copy's hold on a read buffer, given back when the copy is dropped.
#[derive(Debug)]
pub struct Lent(Arc<Lending>);

impl Drop for Lent {
    fn drop(&mut self) {
        self.0.lent.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lends_at_most_lent_at_once_then_copies() {
        let lending = Arc::new(Lending::default());
        let buffer = Bytes::from(vec![7u8; 64]);
        let chunk = buffer.slice(8..16);
        let mut held = Vec::new();
        for _ in 0..LENT_AT_ONCE {
            let (body, lent) = lending.keep(CollectedBody::Read(chunk.clone()), || true);
            assert_eq!(body.as_ptr(), chunk.as_ptr(), "the chunk itself");
            held.push(lent.expect("room to lend"));
        }
        let (body, lent) = lending.keep(CollectedBody::Read(chunk.clone()), || true);
        assert!(lent.is_none());
        assert_ne!(body.as_ptr(), chunk.as_ptr(), "a copy of its own");
        assert_eq!(body, chunk);
        held.pop();
        assert_eq!(lending.lent(), LENT_AT_ONCE - 1);
        let (_, lent) = lending.keep(CollectedBody::Read(chunk), || true);
        assert!(lent.is_some(), "a place given back is taken again");
    }

    #[test]
    fn copies_for_targets_falling_behind_are_copied() {
        let lending = Arc::new(Lending::default());
        let chunk = Bytes::from(vec![1u8; 32]).slice(4..20);
        let (body, lent) = lending.keep(CollectedBody::Read(chunk.clone()), || false);
        assert!(lent.is_none());
        assert_ne!(body.as_ptr(), chunk.as_ptr());
        assert_eq!(body, chunk);
        assert_eq!(lending.lent(), 0, "no place kept");
    }

    #[test]
    fn own_bodies_take_no_place() {
        let lending = Arc::new(Lending::default());
        let (body, lent) = lending.keep(CollectedBody::Own(Bytes::from_static(b"abc")), || {
            panic!("the targets are not asked about a body of its own")
        });
        assert_eq!(&body[..], b"abc");
        assert!(lent.is_none());
        assert_eq!(lending.lent(), 0);
    }
}
