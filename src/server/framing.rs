//! Refusing an HTTP/1.1 request that has both `Content-Length` and
//! `Transfer-Encoding` (either order): 400 and a closed connection, before
//! any handler, upstream or shadow sees it. Such a request is the classic
//! smuggling vector (CL.TE / TE.CL): a proxy in front of teebox may have
//! framed it by the other header.
//!
//! hyper frames such a request by `Transfer-Encoding` alone and drops
//! `Content-Length` before the service is called (RFC 9112 §6.1 allows
//! that), so the request handlers get shows no conflict. What still shows
//! it is the connection's raw bytes, which pass through `TimedIo`. Copying
//! them to re-parse a head later costs a copy per read, and finding the
//! head of one request among pipelined requests and bodies would need a
//! second HTTP parser; instead, every read is scanned in place for line
//! starts (with memchr, which skips newline-free body bytes many at a
//! time), and only lines starting with `c`, `t` or a blank line are looked
//! at further:
//!
//! - A *block* is the lines since the last blank line. Every header line of
//!   a real request head starts right after a `\n` and a head holds no
//!   blank line, so the block that ends at a head's blank line holds all of
//!   its header lines (plus, at most, stray lines from the body before it).
//!   So a head with both headers always makes its block have both: no
//!   false negatives, pipelined or not, whatever the read boundaries.
//! - Once a block with both has ended, the connection refuses every
//!   request with `Transfer-Encoding` from then on (hyper only dispatches a
//!   head after reading all of it, so the flag is set in time). The flag is
//!   never cleared: with pipelining the block may belong to a later head.
//! - A request without `Transfer-Encoding` never had both (hyper keeps the
//!   header), so it is never affected: a false positive needs body bytes
//!   that look like such a block, followed by a chunked request on the
//!   same connection, which then gets 400 and a closed connection.

use http::{header, HeaderValue, StatusCode};

use crate::message::Response;

/// `"transfer-encoding:"`, the longer of the two names with its colon.
const LONGEST: usize = 18;

/// What a line's first bytes say about it.
enum Line {
    Blank,
    ContentLength,
    TransferEncoding,
    Other,
}

/// Finds header blocks with both framing headers in a connection's bytes,
/// read by read.
#[derive(Default)]
pub struct FramingScan {
    /// The start of a line the previous read ended in before it could be
    /// told apart.
    carry: [u8; LONGEST],
    carried: usize,
    /// Whether `carry` holds a line start still to be classified.
    pending: bool,
    content_length: bool,
    transfer_encoding: bool,
}

impl FramingScan {
    /// Scans the next bytes of the stream; true if a block with both
    /// `Content-Length` and `Transfer-Encoding` ended in them.
    pub fn scan(&mut self, bytes: &[u8]) -> bool {
        let mut found = false;
        if self.pending {
            found |= self.finish_carried(bytes);
        }
        // memchr skips newline-free stretches (most bodies) many bytes at
        // a time, so a request body costs next to nothing to scan.
        for newline in memchr::memchr_iter(b'\n', bytes) {
            found |= self.line_at(&bytes[newline + 1..]);
        }
        found
    }

    /// Looks at the line that starts at `start` (the rest of this read).
    #[inline]
    fn line_at(&mut self, start: &[u8]) -> bool {
        match classify(start) {
            Some(line) => self.saw(line),
            None => {
                self.carry_from(start);
                false
            }
        }
    }

    /// Classifies the carried line start with the first bytes of this read.
    fn finish_carried(&mut self, bytes: &[u8]) -> bool {
        self.pending = false;
        if self.carried == 0 {
            // The last read ended with a newline: the line starts here.
            return self.line_at(bytes);
        }
        let take = (LONGEST - self.carried).min(bytes.len());
        self.carry[self.carried..self.carried + take].copy_from_slice(&bytes[..take]);
        self.carried += take;
        let carry = self.carry;
        match classify(&carry[..self.carried]) {
            Some(line) => self.saw(line),
            // Only when this read was too short to tell; it is all carried.
            None => {
                self.pending = true;
                false
            }
        }
    }

    fn carry_from(&mut self, start: &[u8]) {
        // classify only needs more when `start` is shorter than LONGEST.
        let n = start.len().min(LONGEST);
        self.carry[..n].copy_from_slice(&start[..n]);
        self.carried = n;
        self.pending = true;
    }

    #[inline]
    fn saw(&mut self, line: Line) -> bool {
        match line {
            Line::Blank => {
                let both = self.content_length && self.transfer_encoding;
                self.content_length = false;
                self.transfer_encoding = false;
                both
            }
            Line::ContentLength => {
                self.content_length = true;
                false
            }
            Line::TransferEncoding => {
                self.transfer_encoding = true;
                false
            }
            Line::Other => false,
        }
    }
}

/// What the line starting at `start` is, or `None` if `start` is too short
/// to tell. A header name is matched with its colon: hyper refuses a space
/// before the colon in a request.
#[inline]
fn classify(start: &[u8]) -> Option<Line> {
    match *start.first()? {
        b'\n' => Some(Line::Blank),
        b'\r' => match start.get(1)? {
            b'\n' => Some(Line::Blank),
            _ => Some(Line::Other),
        },
        b'c' | b'C' => starts_with_name(start, b"content-length:", Line::ContentLength),
        b't' | b'T' => starts_with_name(start, b"transfer-encoding:", Line::TransferEncoding),
        _ => Some(Line::Other),
    }
}

fn starts_with_name(start: &[u8], name: &[u8], line: Line) -> Option<Line> {
    let n = start.len().min(name.len());
    if !start[..n].eq_ignore_ascii_case(&name[..n]) {
        return Some(Line::Other);
    }
    (n == name.len()).then_some(line)
}

/// Whether `req` is to be refused: it is chunked and its connection
/// carried a header block with both framing headers (see the module doc).
pub fn conflicts<B>(req: &http::Request<B>, cl_and_te_seen: bool) -> bool {
    cl_and_te_seen && req.headers().contains_key(header::TRANSFER_ENCODING)
}

pub fn refusal(client: std::net::SocketAddr) -> Response {
    tracing::debug!(%client, "refused: Content-Length and Transfer-Encoding together");
    let mut response = super::router::plain(
        StatusCode::BAD_REQUEST,
        "400 Bad Request: both Content-Length and Transfer-Encoding\n",
    );
    // The framing of what follows is in doubt: read nothing more.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const CL_TE: &[u8] =
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    fn scan_in_pieces(bytes: &[u8], cuts: &[usize]) -> bool {
        let mut scan = FramingScan::default();
        let mut found = false;
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            found |= scan.scan(&bytes[at..cut]);
            at = cut;
        }
        found
    }

    #[test]
    fn both_headers_are_found_whatever_the_read_boundaries() {
        for cut in 0..=CL_TE.len() {
            assert!(scan_in_pieces(CL_TE, &[cut]), "cut at {cut}");
        }
        let every_byte: Vec<usize> = (1..CL_TE.len()).collect();
        assert!(scan_in_pieces(CL_TE, &every_byte));
        for a in 0..CL_TE.len() {
            for b in a..CL_TE.len() {
                assert!(scan_in_pieces(CL_TE, &[a, b]), "cuts at {a} and {b}");
            }
        }
    }

    #[test]
    fn either_order_any_case_bare_newlines_and_no_space() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncOnTeNt-LeNgTh: 4\r\nTRANSFER-ENCODING: chunked\r\n\r\n",
            b"POST / HTTP/1.1\ncontent-length:4\ntransfer-encoding:chunked\n\n",
        ] {
            assert!(
                FramingScan::default().scan(head),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn a_pipelined_head_behind_a_body_is_found() {
        let mut stream = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec();
        stream.extend_from_slice(CL_TE);
        assert!(FramingScan::default().scan(&stream));
    }

    #[test]
    fn one_header_per_head_is_not_a_conflict() {
        let stream = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..=stream.len() {
            assert!(!scan_in_pieces(stream, &[cut]), "cut at {cut}");
        }
    }

    #[test]
    fn names_that_only_start_alike_do_not_count() {
        let head = b"POST / HTTP/1.1\r\nContent-Length-X: 4\r\nTransfer-Encodings: chunked\r\nX-Content-Length: 4\r\n\r\n";
        assert!(!FramingScan::default().scan(head));
    }
}
