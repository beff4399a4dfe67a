//! What the mirror needs to know about gRPC: whether a request is a gRPC
//! call (one header check), and whether its request body is exactly one
//! length-prefixed message, which is all a unary call ever sends.
//!
//! A gRPC message on the wire is a 5-byte prefix (a compressed flag, then
//! the message length as a big-endian u32) and the message. A unary or
//! server-streaming call sends one message and ends its stream; a
//! client-streaming or bidirectional call may send any number. Only the
//! request is seen here, so a server-streaming call looks unary and is
//! copied; a streaming call that happens to send exactly one message is
//! copied too. Everything else (several messages, none, or a prefix the
//! body does not match) is not copied.

use http::header::CONTENT_TYPE;
use http::HeaderMap;

/// The length of a message's prefix: flag byte and u32 length.
const PREFIX: usize = 5;

/// How a request's copy must travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Any HTTP version the target speaks.
    #[default]
    Http,
    /// A gRPC call: only over HTTP/2, and only if unary.
    Grpc,
}

impl Protocol {
    /// `application/grpc`, `application/grpc+proto`, `application/grpc;…`
    /// are gRPC. gRPC-Web (`application/grpc-web…`) is not: it works over
    /// HTTP/1.1 and keeps its trailers in the body, so it is copied as any
    /// other request. Media types are case-insensitive.
    pub fn of(headers: &HeaderMap) -> Protocol {
        let Some(value) = headers.get(CONTENT_TYPE) else {
            return Protocol::Http;
        };
        let bytes = value.as_bytes();
        let grpc = b"application/grpc";
        let is_grpc = bytes.len() >= grpc.len()
            && bytes[..grpc.len()].eq_ignore_ascii_case(grpc)
            && matches!(bytes.get(grpc.len()), None | Some(b'+') | Some(b';'));
        match is_grpc {
            true => Protocol::Grpc,
            false => Protocol::Http,
        }
    }
}

/// Why a gRPC request body is not one unary message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotUnary {
    /// A second message began: a client-streaming or bidirectional call.
    Several,
    /// The body ended without a message (a streaming call that sent none).
    Empty,
    /// The body ended inside a message's prefix or before the length the
    /// prefix declared.
    Truncated,
}

/// Follows the message framing of a request body as its chunks go past,
/// keeping only the prefix being read: no copy of the data.
#[derive(Debug, Default)]
pub struct Framing {
    prefix: [u8; PREFIX],
    /// Bytes of the current prefix read so far.
    prefix_read: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    messages: u32,
}

impl Framing {
    /// Takes the next chunk. `Err` as soon as the body is known not to be
    /// one message, so a long client stream is given up early instead of
    /// being kept up to `max_body`.
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), NotUnary> {
        while !data.is_empty() {
            if self.remaining > 0 {
                // At most `data.len()`, so the cast back cannot truncate.
                let take = (data.len() as u64).min(self.remaining) as usize;
                self.remaining -= take as u64;
                data = &data[take..];
                continue;
            }
            if self.prefix_read == 0 && self.messages == 1 {
                return Err(NotUnary::Several);
            }
            let take = data.len().min(PREFIX - self.prefix_read);
            self.prefix[self.prefix_read..self.prefix_read + take].copy_from_slice(&data[..take]);
            self.prefix_read += take;
            data = &data[take..];
            if self.prefix_read == PREFIX {
                self.start_message();
            }
        }
        Ok(())
    }

    fn start_message(&mut self) {
        let [_, a, b, c, d] = self.prefix;
        self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
        self.prefix_read = 0;
        self.messages += 1;
    }

    /// The body has ended: `Ok` if it was exactly one whole message.
    pub fn finish(&self) -> Result<(), NotUnary> {
        match (self.messages, self.prefix_read, self.remaining) {
            (0, 0, _) => Err(NotUnary::Empty),
            (1, 0, 0) => Ok(()),
            _ => Err(NotUnary::Truncated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `body` split at every `step` bytes.
    fn shape(body: &[u8], step: usize) -> Result<(), NotUnary> {
        let mut framing = Framing::default();
        for chunk in body.chunks(step.max(1)) {
            framing.push(chunk)?;
        }
        framing.finish()
    }

    fn content_type(value: &str) -> Protocol {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, value.parse().unwrap());
        Protocol::of(&headers)
    }

    #[test]
    fn grpc_content_types() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc; charset=utf-8",
        ] {
            assert_eq!(content_type(grpc), Protocol::Grpc, "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "application/json",
            "application/gr",
        ] {
            assert_eq!(content_type(other), Protocol::Http, "{other}");
        }
        assert_eq!(Protocol::of(&HeaderMap::new()), Protocol::Http);
    }

    #[test]
    fn one_message_is_unary_however_it_is_split() {
        let body = message(b"hello, shadow");
        for step in 1..=body.len() {
            assert_eq!(shape(&body, step), Ok(()), "step {step}");
        }
        assert_eq!(shape(&message(b""), 1), Ok(()), "an empty message");
    }

    #[test]
    fn a_second_message_is_streaming_as_soon_as_it_starts() {
        let mut body = message(b"one");
        body.extend_from_slice(&message(b"two"));
        for step in 1..=body.len() {
            assert_eq!(shape(&body, step), Err(NotUnary::Several), "step {step}");
        }
        let mut framing = Framing::default();
        framing.push(&message(b"one")).unwrap();
        assert_eq!(framing.push(&[0]), Err(NotUnary::Several));
    }

    #[test]
    fn bodies_that_are_not_one_whole_message() {
        assert_eq!(shape(b"", 1), Err(NotUnary::Empty));
        assert_eq!(shape(&[0, 0, 0], 1), Err(NotUnary::Truncated));
        let body = message(b"twelve bytes");
        assert_eq!(shape(&body[..body.len() - 1], 4), Err(NotUnary::Truncated));
        // A length prefix far past the body.
        assert_eq!(
            shape(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2], 3),
            Err(NotUnary::Truncated)
        );
    }
}
