//! Raw HTTP/1.1 over a TcpStream, for requests no well-behaved client would
//! send, and a minimal parser for what comes back.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TIMEOUT;

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawOutcome {
    /// Every byte read.
    pub bytes: Vec<u8>,
    /// Whether the server closed the connection (EOF or reset) within
    /// [`TIMEOUT`]; false means it was still open when we gave up.
    pub closed: bool,
    /// The error that ended reading, if it was not a clean EOF.
    pub error: Option<String>,
}

impl RawOutcome {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response, if one arrived.
    pub fn status(&self) -> Option<u16> {
        status_of(&self.bytes)
    }

    /// How many response status lines arrived.
    pub fn responses(&self) -> usize {
        self.text().matches("HTTP/1.1 ").count()
    }

    /// The first response, parsed.
    pub fn response(&self) -> RawResponse {
        parse_response(&self.bytes).unwrap_or_else(|| {
            panic!(
                "no complete HTTP response in {:?} (error: {:?})",
                self.text(),
                self.error
            )
        })
    }
}

/// Writes `request` as is and reads until the server closes the connection
/// (or [`TIMEOUT`] passes). Send `Connection: close` to get a clean end.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> RawOutcome {
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    // The server may answer and close before it has read everything (an
    // oversized head), so a failed write is not the end of the story.
    let write_error = tokio::time::timeout(TIMEOUT, stream.write_all(request))
        .await
        .map_err(|_| "write timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .err();
    let mut outcome = read_to_close(&mut stream).await;
    if outcome.error.is_none() {
        outcome.error = write_error;
    }
    outcome
}

/// Reads until EOF, a read error, or [`TIMEOUT`].
pub async fn read_to_close(stream: &mut TcpStream) -> RawOutcome {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let result = tokio::time::timeout(TIMEOUT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(err) => return Some(err.to_string()),
            }
        }
    })
    .await;
    match result {
        Ok(error) => RawOutcome {
            bytes,
            closed: true,
            error,
        },
        Err(_) => RawOutcome {
            bytes,
            closed: false,
            error: None,
        },
    }
}

/// The status code of an HTTP/1.x response that starts `bytes`.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    let rest = text.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

/// A response parsed from raw bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// In the order they were sent, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Decoded (de-chunked) body.
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

/// Parses the first response in `bytes` (Content-Length, chunked, or up to
/// the end); `None` if the head is incomplete.
pub fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = status_of(lines.next()?.as_bytes())?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &bytes[end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if find("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().ok()?;
        rest.get(..len)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}
