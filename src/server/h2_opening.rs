//! Tells from a connection's first bytes whether its client speaks HTTP/1.1
//! or HTTP/2, and when an HTTP/2 client's opening is complete: until then
//! it is still sending its "request head", and `read_header_timeout`
//! applies, as it does to an HTTP/1.1 head.
//!
//! An HTTP/2 client opens with the 24-byte preface and a SETTINGS frame
//! (RFC 9113 §3.4). A client that sends `PRI * HTTP/2.0` and stops must not
//! hold its connection for the idle timeout.

pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
/// Each setting is a 16-bit identifier and a 32-bit value.
const SETTING_LEN: usize = 6;
/// The largest frame a client may send before it learns the server's
/// (RFC 9113 §4.2).
const DEFAULT_MAX_FRAME: usize = 16_384;

/// The protocol, as far as the bytes so far tell.
#[derive(Debug)]
pub enum Opening {
    /// Could still be either; see [`OpeningScan`].
    Reading(OpeningScan),
    Http1,
    /// The preface and the first SETTINGS frame came (or a frame in its
    /// place that HTTP/2 itself refuses).
    Http2,
}

impl Default for Opening {
    fn default() -> Self {
        Opening::Reading(OpeningScan::default())
    }
}

impl Opening {
    /// Takes in the next bytes from the client. When they show it to be
    /// HTTP/1.1, returns the bytes that came before them (the start of the
    /// preface they had agreed with), which an HTTP/1.1 scan has not seen.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<&'static [u8]> {
        let Opening::Reading(scan) = self else {
            return None;
        };
        match scan.feed(bytes) {
            Fed::Pending => None,
            Fed::Http2 => {
                *self = Opening::Http2;
                None
            }
            Fed::Http1 { earlier } => {
                *self = Opening::Http1;
                Some(earlier)
            }
        }
    }

    /// Whether the whole preface came: HTTP/2 is certain, and an HTTP/1.1
    /// answer (a 408) would make no sense to the client.
    pub fn preface_complete(&self) -> bool {
        match self {
            Opening::Reading(scan) => scan.seen >= PREFACE.len(),
            Opening::Http1 => false,
            Opening::Http2 => true,
        }
    }
}

/// How many bytes of the opening (preface, then SETTINGS frame) came.
#[derive(Debug, Default)]
pub struct OpeningScan {
    seen: usize,
    header: [u8; FRAME_HEADER],
    /// The SETTINGS payload still to come, once its header is in.
    payload_left: usize,
}

enum Fed {
    Pending,
    Http1 { earlier: &'static [u8] },
    Http2,
}

impl OpeningScan {
    fn feed(&mut self, mut bytes: &[u8]) -> Fed {
        const HEADER_END: usize = PREFACE.len() + FRAME_HEADER;
        while !bytes.is_empty() {
            let n = if self.seen < PREFACE.len() {
                let n = bytes.len().min(PREFACE.len() - self.seen);
                if bytes[..n] != PREFACE[self.seen..self.seen + n] {
                    return Fed::Http1 {
                        earlier: &PREFACE[..self.seen],
                    };
                }
                n
            } else if self.seen < HEADER_END {
                let at = self.seen - PREFACE.len();
                let n = bytes.len().min(FRAME_HEADER - at);
                self.header[at..at + n].copy_from_slice(&bytes[..n]);
                if at + n == FRAME_HEADER {
                    match settings_payload(&self.header) {
                        Some(0) | None => return Fed::Http2,
                        Some(len) => self.payload_left = len,
                    }
                }
                n
            } else {
                let n = bytes.len().min(self.payload_left);
                self.payload_left -= n;
                if self.payload_left == 0 {
                    return Fed::Http2;
                }
                n
            };
            self.seen += n;
            bytes = &bytes[n..];
        }
        Fed::Pending
    }
}

/// The payload length of a frame header that is a plausible first SETTINGS
/// frame. `None`: anything else, which HTTP/2 answers itself (GOAWAY).
fn settings_payload(header: &[u8; FRAME_HEADER]) -> Option<usize> {
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let plausible = header[3] == SETTINGS
        && header[4] & ACK == 0
        && stream == 0
        && len % SETTING_LEN == 0
        && len <= DEFAULT_MAX_FRAME;
    plausible.then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], SETTINGS, 0, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        frame
    }

    /// Feeds `stream` in pieces of `step` bytes; what it ended as, and what
    /// an HTTP/1.1 scan would see: what the verdict handed back, then every
    /// piece from the one that decided it on.
    fn feed_in_steps(stream: &[u8], step: usize) -> (Opening, Vec<u8>) {
        let mut opening = Opening::default();
        let mut http1_sees = Vec::new();
        for piece in stream.chunks(step) {
            if let Some(earlier) = opening.feed(piece) {
                http1_sees.extend_from_slice(earlier);
            }
            if matches!(opening, Opening::Http1) {
                http1_sees.extend_from_slice(piece);
            }
        }
        (opening, http1_sees)
    }

    #[test]
    fn http2_needs_the_whole_preface_and_a_settings_frame() {
        let mut whole = PREFACE.to_vec();
        whole.extend(settings(&[0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0]));
        for step in [1, 5, 14, 24, whole.len()] {
            let mut opening = Opening::default();
            for (i, piece) in whole.chunks(step).enumerate() {
                assert!(
                    matches!(opening, Opening::Reading(_)),
                    "step {step}, piece {i}"
                );
                assert_eq!(opening.feed(piece), None);
            }
            assert!(matches!(opening, Opening::Http2), "step {step}");
        }
        // The 14 bytes every HTTP/2 start shares are not enough; nor is the
        // preface without its SETTINGS frame.
        for cut in [14, 24, 30, 33, whole.len() - 1] {
            let (opening, _) = feed_in_steps(&whole[..cut], 4);
            assert!(matches!(opening, Opening::Reading(_)), "{cut}");
            assert_eq!(opening.preface_complete(), cut >= 24, "{cut}");
        }
    }

    #[test]
    fn an_empty_or_implausible_first_frame_ends_the_opening() {
        let mut empty = PREFACE.to_vec();
        empty.extend(settings(&[]));
        assert!(matches!(feed_in_steps(&empty, 3).0, Opening::Http2));
        // A HEADERS frame first: HTTP/2's own error, not a slow opening.
        let mut headers = PREFACE.to_vec();
        headers.extend([0, 0, 5, 1, 4, 0, 0, 0, 1]);
        assert!(matches!(feed_in_steps(&headers, 7).0, Opening::Http2));
    }

    #[test]
    fn http1_hands_back_what_it_agreed_with() {
        for (stream, step) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], 1),
            (b"PRI * HTTP/1.1\r\n\r\n", 3),
            (b"PRI * HTTP/2.0\r\n\r\nXX", 2),
            (b"PRI * HTTP/2.0\r\n\r\nXX", 100),
        ] {
            let (opening, handed) = feed_in_steps(stream, step);
            assert!(matches!(opening, Opening::Http1));
            assert_eq!(handed, stream);
        }
    }
}
