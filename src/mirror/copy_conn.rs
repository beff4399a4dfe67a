//! A mirror worker's own HTTP/1.1 connection to a plain `http://` target.
//!
//! A worker sends one copy at a time, so it needs one connection, not a
//! pool, and a copy's answer is only read to be counted (and, with
//! `compare`, collected): no response object, no header map, no body
//! stream, no task of its own. hyper's client does all of that for every
//! copy, and on the one core a mirror shares with the requests it cost
//! about half of a copy's user time (callgrind: 15.5k instructions per
//! copy on the copy thread). Here the head is written with the body in one
//! `writev`, and the answer is parsed in place with `httparse`, hyper's own
//! parser. Targets over TLS or HTTP/2 keep hyper's client
//! ([`crate::upstream::pool`]).
//!
//! The framing follows RFC 9112: the request is sent with the client's
//! `Content-Length`, chunked (with its trailers) when the client sent none
//! and there is a body, and bare otherwise; the answer's length comes from
//! `Transfer-Encoding`, then `Content-Length`, then the connection's close,
//! and HEAD, 1xx, 204 and 304 answers have none.

use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, HOST, MAX_FORWARDS, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING,
};
use std::mem::MaybeUninit;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use super::copy::CopyBody;
use crate::message::error_chain;
use crate::upstream::pool::PoolSettings;
use crate::upstream::tls_connector::Connector;

/// A response head longer than this is refused (hyper's default read
/// buffer limit, which bounds its heads).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Interim (1xx) answers before the final one, at most.
const MAX_INTERIM: usize = 16;
/// A body up to this size is written before the answer is read; a larger
/// one is written while reading, so an answer given before the target has
/// read it all (a 413, say) ends the copy instead of a blocked write.
const WRITE_THEN_READ: usize = 64 * 1024;
/// Header lines a response head may have (hyper's default limit).
const MAX_HEADERS: usize = 100;
/// Reads are at least this large.
const READ_CHUNK: usize = 8 * 1024;
/// How long a worker sends copies one at a time after its target dropped
/// pipelined requests.
const NO_PIPELINES_FOR: Duration = Duration::from_secs(30);
/// A kept connection idle this long may be closed by the target just as a
/// copy goes out on it (see `crate::upstream::pool`'s `RACY_IDLE`).
const RACY_IDLE: Duration = Duration::from_secs(1);

/// Why a copy got no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before a response")]
    ClosedBeforeAnswer,
    #[error("connection closed in the response body")]
    ClosedInBody,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// What failed the copy ahead in the pipeline, for each copy behind
    /// it.
    #[error("{0} (ahead in its pipeline)")]
    Pipeline(String),
}

/// A copy's request head, as one target gets it.
pub struct CopyHead<'a> {
    pub method: &'a Method,
    /// Origin form: `/path?query`.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// Written after `headers`, which then hold none.
    pub host: Option<&'a HeaderValue>,
}

impl<'a> CopyHead<'a> {
    /// `copy`'s head as one target gets it: `headers` and `host` from
    /// the target's edits.
    pub fn of(
        copy: &'a super::copy::CopyRequest,
        headers: &'a HeaderMap,
        host: Option<&'a HeaderValue>,
    ) -> Self {
        CopyHead {
            method: &copy.method,
            target: copy.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            headers,
            host,
        }
    }
}

/// What a target answered.
pub struct Answer {
    pub status: StatusCode,
    /// Only when asked for (`compare`); empty otherwise.
    pub headers: HeaderMap,
    /// Whether the body was read to its end (not cut at the caller's cap).
    pub whole: bool,
}

/// One worker's connection, opened on first use and kept while the target
/// keeps it alive.
pub struct CopyConn {
    origin: Uri,
    connector: Connector,
    settings: PoolSettings,
    live: Option<Live>,
    /// Whether copies may be pipelined (see [`CopyConn::exchange_pipelined`]).
    /// Until when copies go one at a time (see
    /// [`CopyConn::exchange_pipelined`]).
    no_pipelines_until: Option<Instant>,
    /// What was read and not yet used.
    input: BytesMut,
    /// The request head (and chunk-size lines) being written.
    output: Vec<u8>,
}

struct Live {
    stream: TcpStream,
    idle_since: Instant,
    /// Answers read on it so far.
    answers: usize,
}

/// How the answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

impl CopyConn {
    /// `origin`: an `http://` URL's scheme and authority.
    pub fn new(origin: Uri, connector: Connector, settings: PoolSettings) -> Self {
        CopyConn {
            origin,
            connector,
            settings,
            live: None,
            no_pipelines_until: None,
            input: BytesMut::new(),
            output: Vec::new(),
        }
    }

    /// Sends the copy and reads the answer:
    /// its body goes to `on_body` up to `cap` bytes (more is not read, and
    /// the connection is closed). A future dropped part way drops the
    /// connection with it: the next copy opens a new one.
    pub async fn exchange(
        &mut self,
        head: &CopyHead<'_>,
        body: &CopyBody,
        want_headers: bool,
        cap: usize,
        on_body: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Answer, ExchangeError> {
        let (mut live, racy) = self.kept_or_new().await?;
        let result = match self
            .round_trip(&mut live, head, body, want_headers, cap, on_body)
            .await
        {
            // The target closed the kept connection as the copy went out
            // (its idle timeout raced ours): a bodyless idempotent copy goes
            // once more on a new one, as the upstream pool does.
            Err(ExchangeError::ClosedBeforeAnswer)
                if racy && body.has_no_data() && head.method.is_idempotent() =>
            {
                tracing::debug!(target_url = %self.origin, "kept-alive connection closed under a copy; sending it again");
                live = self.connect().await?;
                self.round_trip(&mut live, head, body, want_headers, cap, on_body)
                    .await
            }
            other => other,
        };
        let (answer, reusable) = result?;
        live.answers += 1;
        if reusable && self.settings.keepalive {
            live.idle_since = Instant::now();
            self.live = Some(live);
        }
        Ok(answer)
    }

    /// The kept connection, else a new one; and whether it was kept idle
    /// so long that the target may close it just as a request goes out
    /// ([`RACY_IDLE`]).
    async fn kept_or_new(&mut self) -> Result<(Live, bool), ExchangeError> {
        match self.take_live() {
            Some((live, idle_for)) => Ok((live, idle_for >= RACY_IDLE)),
            None => Ok((self.connect().await?, false)),
        }
    }

    /// The kept connection, unless it is too old or the target has closed
    /// it (or sent something unasked, which makes it useless too).
    fn take_live(&mut self) -> Option<(Live, Duration)> {
        let live = self.live.take()?;
        let idle_for = live.idle_since.elapsed();
        if idle_for > self.settings.idle_timeout {
            return None;
        }
        // Only tried when the runtime last heard from epoll that there is
        // something to read: no system call otherwise.
        let mut probe = [0u8; 1];
        match live.stream.try_read(&mut probe) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Some((live, idle_for)),
            _ => None,
        }
    }

    async fn connect(&mut self) -> Result<Live, ExchangeError> {
        self.input.clear();
        let io = self
            .connector
            .call(self.origin.clone())
            .await
            .map_err(|err| ExchangeError::Connect(error_chain(err.as_ref())))?;
        match io {
            MaybeHttpsStream::Http(io) => Ok(Live {
                stream: TokioIo::into_inner(io),
                idle_since: Instant::now(),
                answers: 0,
            }),
            MaybeHttpsStream::Https(_) => Err(ExchangeError::Connect(
                "a TLS connection where plain HTTP was asked for".into(),
            )),
        }
    }

    /// One request and its answer on `live`; whether the connection can
    /// carry another.
    async fn round_trip(
        &mut self,
        live: &mut Live,
        head: &CopyHead<'_>,
        body: &CopyBody,
        want_headers: bool,
        cap: usize,
        on_body: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<(Answer, bool), ExchangeError> {
        self.input.clear();
        let sent_whole = self.write_request(&mut live.stream, head, body).await?;
        let (answer, reusable) = self
            .read_answer(&mut live.stream, head, want_headers, cap, on_body)
            .await?;
        // A copy answered before its body was all sent leaves the rest of
        // the body unsent: the connection cannot carry another.
        Ok((answer, reusable && sent_whole && self.input.is_empty()))
    }

    /// Reads the answer to `head` (after any interim ones); whether the
    /// connection may carry another request as far as this answer says.
    async fn read_answer(
        &mut self,
        stream: &mut TcpStream,
        head: &CopyHead<'_>,
        want_headers: bool,
        cap: usize,
        on_body: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<(Answer, bool), ExchangeError> {
        let mut interim = 0;
        let answer = loop {
            let answer = self.read_head(stream, want_headers).await?;
            match answer.status.as_u16() {
                // Interim answers (100 Continue, 103 Early Hints) come
                // before the final one.
                100 | 102..=199 if interim < MAX_INTERIM => interim += 1,
                100 | 102..=199 => return Err(ExchangeError::Invalid("too many interim answers")),
                _ => break answer,
            }
        };
        if answer.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::Invalid(
                "101 to a copy that asked no upgrade",
            ));
        }
        let framing = match *head.method == Method::HEAD
            || answer.status == StatusCode::NO_CONTENT
            || answer.status == StatusCode::NOT_MODIFIED
        {
            true => Framing::Empty,
            false => answer.framing.map_err(ExchangeError::Invalid)?,
        };
        let whole = self.read_body(stream, framing, cap, on_body).await?;
        let reusable = answer.keep_alive
            && whole
            && framing != Framing::UntilClose
            && !asks_close(head.headers);
        let answer = Answer {
            status: answer.status,
            headers: answer.headers,
            whole,
        };
        Ok((answer, reusable))
    }

    /// Sends `copies`, bodyless copies with safe methods (GET, HEAD,
    /// OPTIONS, TRACE), in one write before any answer comes (HTTP/1.1
    /// pipelining, RFC 9112 §9.3.2), and reads their answers in order,
    /// giving each to `on_answer` with its index as it comes.
    ///
    /// Copies left unanswered when a connection ends go on a new one:
    /// after an answer that closes it (as it said, or cut at `cap`), and
    /// once after the target closed it unasked having answered some (then
    /// this worker sends one at a time for [`NO_PIPELINES_FOR`]) or having
    /// kept it idle long enough to close it just then. Another failure
    /// goes to the first copy not yet answered, and ends those behind it
    /// with [`ExchangeError::Pipeline`].
    pub async fn exchange_pipelined(
        &mut self,
        copies: &[(CopyHead<'_>, CopyBody)],
        cap: usize,
        on_answer: &mut (dyn FnMut(usize, Result<Answer, ExchangeError>) + Send),
    ) {
        let mut answered = 0;
        let mut sent_again = false;
        while answered < copies.len() {
            let (mut live, racy) = match self.kept_or_new().await {
                Ok(kept_or_new) => kept_or_new,
                Err(err) => return fail_from(answered, copies.len(), err, on_answer),
            };
            self.input.clear();
            self.output.clear();
            // Nothing goes behind a request that closes the connection.
            let mut end = answered;
            for (head, body) in &copies[answered..] {
                encode_head(&mut self.output, head, body);
                end += 1;
                if !self.pipelines() || asks_close(head.headers) {
                    break;
                }
            }
            let on_this = answered;
            let written =
                write_all_vectored(&mut live.stream, &mut [IoSlice::new(&self.output)]).await;
            let mut open = true;
            // The last answer's status, and whether it was cut at `cap`.
            let mut last = (StatusCode::OK, false);
            let mut failure = written.err();
            while failure.is_none() && open && answered < end {
                let head = &copies[answered].0;
                match self
                    .read_answer(&mut live.stream, head, false, cap, &mut |_| {})
                    .await
                {
                    Ok((answer, reusable)) => {
                        last = (answer.status, !answer.whole);
                        on_answer(answered, Ok(answer));
                        answered += 1;
                        live.answers += 1;
                        open = reusable;
                    }
                    Err(err) => failure = Some(err),
                }
            }
            match failure {
                None => {
                    if open && self.input.is_empty() && self.settings.keepalive {
                        live.idle_since = Instant::now();
                        self.live = Some(live);
                    } else if live.answers == 1
                        && answered < end
                        && last.0.as_u16() < 400
                        && !last.1
                    {
                        // A target that keeps no connection (but after an
                        // error, which many close on) would get the rest
                        // of every pipeline written again for each answer.
                        self.stop_pipelining();
                    }
                    // The rest, if any, on a connection that can take them.
                }
                Some(ExchangeError::ClosedBeforeAnswer | ExchangeError::Io(_))
                    if !sent_again && (answered > on_this || racy) =>
                {
                    sent_again = true;
                    if answered > on_this {
                        self.stop_pipelining();
                        tracing::debug!(target_url = %self.origin, "the target dropped pipelined copies; sending them one at a time for a while");
                    }
                }
                Some(err) => return fail_from(answered, copies.len(), err, on_answer),
            }
        }
    }

    /// Whether this worker may pipeline copies: not for a while after its
    /// target dropped a pipeline's requests unasked.
    pub fn pipelines(&self) -> bool {
        self.no_pipelines_until
            .is_none_or(|until| Instant::now() >= until)
    }

    /// Copies go one at a time for [`NO_PIPELINES_FOR`]: the target may
    /// have restarted or been overloaded, or may not take pipelines at all.
    pub fn stop_pipelining(&mut self) {
        self.no_pipelines_until = Some(Instant::now() + NO_PIPELINES_FOR);
    }

    /// Writes the request: its body with a length when the client gave
    /// one (the length of what is sent, which `header_up` cannot make
    /// wrong), chunked with the trailers it announces when not, and none
    /// for a GET, HEAD or CONNECT without a length, as hyper's client sends
    /// them to the primary. False when an answer came before the body was
    /// all written, which then stopped.
    async fn write_request(
        &mut self,
        stream: &mut TcpStream,
        head: &CopyHead<'_>,
        body: &CopyBody,
    ) -> Result<bool, ExchangeError> {
        let out = &mut self.output;
        out.clear();
        let framing = encode_head(out, head, body);
        let length = body.data_len();
        let head_len = out.len();
        let mut sizes = Vec::new();
        let mut end = head_len..head_len;
        if framing == BodyFraming::Chunked {
            // Each chunk's size line, then the last chunk and the trailers,
            // go into `out` behind the head.
            for chunk in body.data_chunks() {
                let start = out.len();
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                sizes.push(start..out.len());
            }
            let start = out.len();
            out.extend_from_slice(b"0\r\n");
            if let Some(trailers) = body.trailers() {
                write_trailers(out, head.headers, trailers);
            }
            out.extend_from_slice(b"\r\n");
            end = start..out.len();
        }
        let out = &self.output;
        let mut slices = Vec::with_capacity(2 + 3 * sizes.len());
        slices.push(IoSlice::new(&out[..head_len]));
        match framing {
            BodyFraming::None => {}
            BodyFraming::Length => slices.extend(body.data_chunks().map(|c| IoSlice::new(c))),
            BodyFraming::Chunked => {
                for (chunk, size) in body.data_chunks().zip(sizes) {
                    slices.push(IoSlice::new(&out[size]));
                    slices.push(IoSlice::new(chunk));
                    slices.push(IoSlice::new(b"\r\n"));
                }
                slices.push(IoSlice::new(&out[end]));
            }
        }
        if framing == BodyFraming::None || length <= WRITE_THEN_READ {
            write_all_vectored(stream, &mut slices).await?;
            return Ok(true);
        }
        // Written while reading: a final answer (or trouble) stops the
        // writing; an interim one (100 Continue) asks for the rest of it.
        let input = &mut self.input;
        let (mut reader, mut writer) = stream.split();
        let writing = write_all_vectored(&mut writer, &mut slices);
        tokio::pin!(writing);
        loop {
            tokio::select! {
                written = &mut writing => return written.map(|()| true),
                read = fill_from(&mut reader, input) => match read? {
                    // Closed for reading: what is left to write may still go.
                    0 => return writing.await.map(|()| true),
                    // Interim answers past a head's limit: stopped too, and
                    // refused when read.
                    _ if input.len() >= MAX_HEAD || final_answer_begun(input) => {
                        return Ok(false)
                    }
                    _ => {}
                },
            }
        }
    }

    /// Reads until `input` holds a whole head, and takes it out.
    async fn read_head(
        &mut self,
        stream: &mut TcpStream,
        want_headers: bool,
    ) -> Result<Head, ExchangeError> {
        loop {
            if let Some(head) = parse_head(&mut self.input, want_headers)? {
                return Ok(head);
            }
            if self.input.len() >= MAX_HEAD {
                return Err(ExchangeError::Invalid("response head too large"));
            }
            if self.fill(stream).await? == 0 {
                return Err(match self.input.is_empty() {
                    true => ExchangeError::ClosedBeforeAnswer,
                    false => ExchangeError::Invalid("connection closed in the response head"),
                });
            }
        }
    }

    /// Reads the body as `framing` says, giving `on_body` at most `cap`
    /// bytes; false if it stopped at the cap.
    async fn read_body(
        &mut self,
        stream: &mut TcpStream,
        framing: Framing,
        cap: usize,
        on_body: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<bool, ExchangeError> {
        let mut read = 0usize;
        let mut give = |data: &[u8]| -> bool {
            read += data.len();
            if read > cap {
                return false;
            }
            on_body(data);
            true
        };
        match framing {
            Framing::Empty => Ok(true),
            Framing::Length(mut left) => loop {
                if let Some(data) = take_data(&mut self.input, &mut left) {
                    if !give(&data) {
                        return Ok(false);
                    }
                }
                if left == 0 {
                    return Ok(true);
                }
                if self.fill(stream).await? == 0 {
                    return Err(ExchangeError::ClosedInBody);
                }
            },
            Framing::UntilClose => loop {
                if !self.input.is_empty() {
                    let data = self.input.split();
                    if !give(&data) {
                        return Ok(false);
                    }
                }
                if self.fill(stream).await? == 0 {
                    return Ok(true);
                }
            },
            Framing::Chunked => {
                // Bytes of the current chunk still to come; then its CRLF.
                let mut left: u64 = 0;
                let mut after_data = false;
                loop {
                    if left > 0 {
                        if let Some(data) = take_data(&mut self.input, &mut left) {
                            after_data = left == 0;
                            if !give(&data) {
                                return Ok(false);
                            }
                            continue;
                        }
                    } else {
                        match next_chunk(&mut self.input, after_data)? {
                            Some(ChunkStep::Data(size)) => {
                                left = size;
                                after_data = false;
                                continue;
                            }
                            Some(ChunkStep::End) => return Ok(true),
                            None if self.input.len() >= MAX_HEAD => {
                                return Err(ExchangeError::Invalid("chunk framing too long"))
                            }
                            None => {}
                        }
                    }
                    if self.fill(stream).await? == 0 {
                        return Err(ExchangeError::ClosedInBody);
                    }
                }
            }
        }
    }

    /// One read into `input`; 0 at the end of the stream.
    async fn fill(&mut self, stream: &mut TcpStream) -> Result<usize, ExchangeError> {
        fill_from(stream, &mut self.input).await
    }
}

/// Up to `left` bytes from the front of `input`, if it holds any.
fn take_data(input: &mut BytesMut, left: &mut u64) -> Option<BytesMut> {
    let take = (input.len() as u64).min(*left) as usize;
    *left -= take as u64;
    (take > 0).then(|| input.split_to(take))
}

/// One read from `reader` into `input`; 0 at the end of the stream.
async fn fill_from(
    reader: &mut (impl AsyncReadExt + Unpin),
    input: &mut BytesMut,
) -> Result<usize, ExchangeError> {
    if input.capacity() - input.len() < READ_CHUNK {
        input.reserve(READ_CHUNK);
    }
    Ok(reader.read_buf(input).await?)
}

/// Whether `input` holds more than whole interim (1xx) heads: the start
/// of the final answer, or bytes that are no HTTP at all.
fn final_answer_begun(input: &[u8]) -> bool {
    let mut at = 0;
    loop {
        let mut lines = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &input[at..],
            &mut lines,
        );
        match parsed {
            Ok(httparse::Status::Complete(length))
                if response
                    .code
                    .is_some_and(|code| (100..200).contains(&code) && code != 101) =>
            {
                at += length;
                if at == input.len() {
                    return false;
                }
            }
            // Still coming: interim until it says otherwise.
            Ok(httparse::Status::Partial) => {
                return response
                    .code
                    .is_some_and(|code| !(100..200).contains(&code))
            }
            _ => return true,
        }
    }
}

/// Writes the request line and headers, with the body's framing, to `out`;
/// how the body is to be framed.
fn encode_head(out: &mut Vec<u8>, head: &CopyHead<'_>, body: &CopyBody) -> BodyFraming {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.headers {
        if name == TRANSFER_ENCODING || name == CONTENT_LENGTH {
            continue;
        }
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(host) = head.host {
        header_line(out, b"host", host.as_bytes());
    }
    let length = body.data_len();
    let framing = if body.announces_length() || head.headers.contains_key(CONTENT_LENGTH) {
        header_line(out, b"content-length", length.to_string().as_bytes());
        BodyFraming::Length
    } else if matches!(*head.method, Method::GET | Method::HEAD | Method::CONNECT)
        || (length == 0 && body.trailers().is_none())
    {
        BodyFraming::None
    } else {
        header_line(out, b"transfer-encoding", b"chunked");
        BodyFraming::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// Gives every copy from `from` on the same failure.
/// Gives the copy at `from` `err`, and those behind it up to `to`
/// [`ExchangeError::Pipeline`] with its reason.
fn fail_from(
    from: usize,
    to: usize,
    err: ExchangeError,
    on_answer: &mut (dyn FnMut(usize, Result<Answer, ExchangeError>) + Send),
) {
    let why = err.to_string();
    on_answer(from, Err(err));
    for index in from + 1..to {
        on_answer(index, Err(ExchangeError::Pipeline(why.clone())));
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BodyFraming {
    None,
    Length,
    Chunked,
}

/// The trailers the request's `Trailer` header announces, but those no
/// trailer may carry (RFC 9110 §6.5.1; the list hyper's client keeps).
fn write_trailers(out: &mut Vec<u8>, headers: &HeaderMap, trailers: &HeaderMap) {
    let announced = |name: &HeaderName| {
        headers
            .get_all(TRAILER)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|listed| listed.trim().eq_ignore_ascii_case(name.as_str()))
    };
    for (name, value) in trailers {
        let forbidden = matches!(
            *name,
            AUTHORIZATION
                | CACHE_CONTROL
                | CONTENT_ENCODING
                | CONTENT_LENGTH
                | CONTENT_RANGE
                | CONTENT_TYPE
                | HOST
                | MAX_FORWARDS
                | SET_COOKIE
                | TRAILER
                | TRANSFER_ENCODING
                | TE
        );
        if !forbidden && announced(name) {
            header_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// Whether the request's own `Connection` header closes the connection.
fn asks_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| tokens(value.as_bytes()))
        .any(|token| token.eq_ignore_ascii_case(b"close"))
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

async fn write_all_vectored(
    stream: &mut (impl AsyncWriteExt + Unpin),
    mut slices: &mut [IoSlice<'_>],
) -> Result<(), ExchangeError> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written = stream.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

struct Head {
    status: StatusCode,
    headers: HeaderMap,
    /// Why the body's length cannot be known, if it cannot; it matters
    /// only to an answer that has a body.
    framing: Result<Framing, &'static str>,
    keep_alive: bool,
}

/// A whole response head at the front of `input`, taken out of it; `None`
/// while it is incomplete.
fn parse_head(input: &mut BytesMut, want_headers: bool) -> Result<Option<Head>, ExchangeError> {
    if input.is_empty() {
        return Ok(None);
    }
    // Left uninitialized: httparse writes the lines it finds.
    let mut lines = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        input,
        &mut lines,
    );
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Invalid("too many headers"))
        }
        Err(_) => return Err(ExchangeError::Invalid("not an HTTP/1 response head")),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ExchangeError::Invalid("bad status code"))?;
    // HTTP/1.1 keeps the connection unless told to close; 1.0 closes
    // unless told to keep it.
    let mut keep_alive = response.version == Some(1);
    let mut length_seen: Result<Option<u64>, &'static str> = Ok(None);
    let mut chunked = false;
    let mut encoded = false;
    let mut headers = HeaderMap::new();
    for line in response.headers.iter() {
        let name = line.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // Digits only; a list of the same length counts as one.
            for item in line.value.split(|b| *b == b',') {
                let value = content_length(item.trim_ascii());
                length_seen = match (length_seen, value) {
                    (Err(why), _) => Err(why),
                    (_, None) => Err("bad Content-Length"),
                    (Ok(Some(seen)), Some(value)) if seen != value => {
                        Err("conflicting Content-Length")
                    }
                    (Ok(_), Some(value)) => Ok(Some(value)),
                };
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encoded = true;
            // Chunked must be the last coding; anything after it means the
            // body ends with the connection.
            chunked = tokens(line.value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(line.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0) {
                    keep_alive = true;
                }
            }
        }
        if want_headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_bytes(line.value),
            ) {
                headers.append(name, value);
            }
        }
    }
    let framing = match (encoded, chunked, length_seen) {
        (true, true, _) => Ok(Framing::Chunked),
        (true, false, _) => Ok(Framing::UntilClose),
        (false, _, Ok(Some(length))) => Ok(Framing::Length(length)),
        (false, _, Ok(None)) => Ok(Framing::UntilClose),
        (false, _, Err(why)) => Err(why),
    };
    // Both lengths at once, or a coding in HTTP/1.0 (RFC 9112 §6.1): read
    // as the coding says, never trusted for another.
    if encoded && (length_seen != Ok(None) || response.version == Some(0)) {
        keep_alive = false;
    }
    input.advance(length);
    Ok(Some(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// A `Content-Length` value: ASCII digits only (no sign, no space).
fn content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The comma-separated tokens of a header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

enum ChunkStep {
    /// A chunk of this many bytes follows (its CRLF is checked after).
    Data(u64),
    /// The last chunk and the trailers are read.
    End,
}

/// Reads the next chunk's size line from `input` (`after_data`: after the
/// CRLF that ends the chunk before it); `None` until it is all there.
fn next_chunk(input: &mut BytesMut, after_data: bool) -> Result<Option<ChunkStep>, ExchangeError> {
    let at = match after_data {
        false => 0,
        true if input.starts_with(b"\r\n") => 2,
        true if input.is_empty() || input[..] == b"\r"[..] => return Ok(None),
        true => return Err(ExchangeError::Invalid("no CRLF after a chunk")),
    };
    // httparse takes an empty size line for 0; hyper does not, nor this.
    match input.get(at) {
        None => return Ok(None),
        Some(b) if !b.is_ascii_hexdigit() => return Err(ExchangeError::Invalid("bad chunk size")),
        Some(_) => {}
    }
    let (length, size) = match httparse::parse_chunk_size(&input[at..]) {
        Ok(httparse::Status::Complete(found)) => found,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ExchangeError::Invalid("bad chunk size")),
    };
    if size > 0 {
        input.advance(at + length);
        return Ok(Some(ChunkStep::Data(size)));
    }
    // The last chunk: trailers until an empty line.
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(&input[at + length..], &mut lines) {
        Ok(httparse::Status::Complete((trailers, _))) => {
            input.advance(at + length + trailers);
            Ok(Some(ChunkStep::End))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(ExchangeError::Invalid("bad trailers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::copy::{CopyBytes, CopyExtras, CopyRequest};
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::net::TcpListener;

    /// One exchange a scripted target expects on a connection: the request
    /// bytes it must receive, and what it answers (in separate writes);
    /// `close` ends the connection after the answer.
    struct Step {
        expect: &'static [u8],
        answer: &'static [&'static [u8]],
        close: bool,
    }

    /// A target on 127.0.0.1 that plays one script per connection, in
    /// order, and counts the connections.
    async fn scripted(connections: Vec<Vec<Step>>) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            for script in connections {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    for step in script {
                        let mut got = vec![0u8; step.expect.len()];
                        if stream.read_exact(&mut got).await.is_err() {
                            return;
                        }
                        assert_eq!(
                            String::from_utf8_lossy(&got),
                            String::from_utf8_lossy(step.expect)
                        );
                        for part in step.answer {
                            stream.write_all(part).await.unwrap();
                            stream.flush().await.unwrap();
                            tokio::task::yield_now().await;
                        }
                        if step.close {
                            return;
                        }
                    }
                    // Held open until the client goes.
                    let _ = stream.read(&mut [0u8; 1]).await;
                });
            }
        });
        (origin, accepted)
    }

    fn conn(origin: Uri) -> CopyConn {
        let connector = crate::upstream::tls_connector::UpstreamTls::default()
            .connector(Duration::from_secs(5), false)
            .unwrap();
        CopyConn::new(origin, connector, PoolSettings::default())
    }

    /// A copy of `body` in two chunks; with `length` its `Content-Length`
    /// is `stated` (which the copy corrects), without it the client sent it
    /// chunked, with trailers (one announced, one announced but never
    /// allowed in trailers, one not announced).
    fn copy_stating(
        method: Method,
        body: &'static [u8],
        length: bool,
        stated: usize,
    ) -> CopyRequest {
        let mut headers = HeaderMap::new();
        if length {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(stated));
        } else {
            headers.insert(TRAILER, HeaderValue::from_static("x-sum, content-type"));
        }
        let trailers = (!length).then(|| {
            let mut t = HeaderMap::new();
            t.insert("x-sum", HeaderValue::from_static("7"));
            t.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            t.insert("x-other", HeaderValue::from_static("1"));
            t
        });
        CopyRequest::new(
            method,
            Uri::from_static("/p?q=1"),
            headers,
            CopyBytes::Chunks(
                vec![
                    Bytes::from_static(&body[..body.len() / 2]),
                    Bytes::from_static(&body[body.len() / 2..]),
                ]
                .into(),
            ),
            trailers,
            length,
            CopyExtras::default(),
        )
    }

    /// A copy with no body and no header.
    fn bodyless(method: Method) -> CopyRequest {
        CopyRequest::new(
            method,
            Uri::from_static("/p?q=1"),
            HeaderMap::new(),
            CopyBytes::default(),
            None,
            false,
            CopyExtras::default(),
        )
    }

    fn copy(method: Method, body: &'static [u8], length: bool) -> CopyRequest {
        copy_stating(method, body, length, body.len())
    }

    /// Sends `copy` on `conn`: the status, the body read, and whether whole.
    async fn send(
        conn: &mut CopyConn,
        copy: &CopyRequest,
        cap: usize,
    ) -> Result<(u16, Vec<u8>, bool), ExchangeError> {
        let host = HeaderValue::from_static("shadow");
        let head = CopyHead {
            method: &copy.method,
            target: copy.uri.path_and_query().unwrap().as_str(),
            headers: &copy.headers,
            host: Some(&host),
        };
        let mut body = Vec::new();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            conn.exchange(&head, &copy.body(), false, cap, &mut |d: &[u8]| {
                body.extend_from_slice(d)
            }),
        )
        .await
        .expect("an exchange that ends")?;
        Ok((answer.status.as_u16(), body, answer.whole))
    }

    const GET: &[u8] = b"GET /p?q=1 HTTP/1.1\r\nhost: shadow\r\n\r\n";

    #[tokio::test]
    async fn bodies_go_out_with_the_framing_the_client_used() {
        let (origin, _) = scripted(vec![vec![
            Step {
                expect: b"POST /p?q=1 HTTP/1.1\r\nhost: shadow\r\ncontent-length: 5\r\n\r\nhello",
                answer: &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
                close: false,
            },
            Step {
                expect: b"POST /p?q=1 HTTP/1.1\r\ntrailer: x-sum, content-type\r\nhost: shadow\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\nx-sum: 7\r\n\r\n",
                answer: &[b"HTTP/1.1 204 No Content\r\n\r\n"],
                close: false,
            },
            Step {
                // Without a length a GET has no body, as hyper sends it.
                expect: GET,
                answer: &[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
                close: false,
            },
        ]])
        .await;
        let mut conn = conn(origin);
        // The length the client stated was edited (`header_up`): the copy
        // states the length it sends.
        let sent = send(
            &mut conn,
            &copy_stating(Method::POST, b"hello", true, 99),
            1024,
        )
        .await
        .unwrap();
        assert_eq!(sent, (200, b"ok".to_vec(), true));
        let sent = send(&mut conn, &copy(Method::POST, b"hello", false), 1024)
            .await
            .unwrap();
        assert_eq!(sent, (204, Vec::new(), true));
        let mut get = copy(Method::GET, b"hello", false);
        get.headers.clear();
        let sent = send(&mut conn, &get, 1024).await.unwrap();
        assert_eq!(sent, (200, Vec::new(), true));
    }

    #[tokio::test]
    async fn an_interim_answer_during_a_large_body_lets_it_all_go() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        const LENGTH: usize = 8 << 20;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            // As for `Expect: 100-continue`: go on, then read it all.
            stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .unwrap();
            let mut body = vec![0u8; LENGTH];
            stream.read_exact(&mut body).await.unwrap();
            assert!(body.iter().all(|b| *b == b'a'));
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = stream.read(&mut [0u8; 1]).await;
        });
        let body: &'static [u8] = vec![b'a'; LENGTH].leak();
        let mut conn = conn(origin);
        let sent = send(&mut conn, &copy(Method::POST, body, true), 1024)
            .await
            .unwrap();
        assert_eq!(sent, (200, b"ok".to_vec(), true));
        assert!(conn.live.is_some(), "all of it sent: kept");
    }

    #[test]
    fn only_a_final_answer_stops_the_body() {
        assert!(!final_answer_begun(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(!final_answer_begun(b"HTTP/1.1 100 Cont"));
        assert!(!final_answer_begun(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 1"
        ));
        assert!(final_answer_begun(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 "
        ));
        assert!(final_answer_begun(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
        ));
        assert!(final_answer_begun(b"garbage\r\n"));
    }

    #[tokio::test]
    async fn an_answer_before_the_body_is_all_read_ends_the_copy() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (done, hold) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            // Refused without reading the body, which is larger than the
            // sockets' buffers, and the connection held open.
            stream
                .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            let _ = hold.await;
        });
        let body: &'static [u8] = vec![b'a'; 32 << 20].leak();
        let mut conn = conn(origin);
        let sent = send(&mut conn, &copy(Method::POST, body, true), 1024)
            .await
            .unwrap();
        assert_eq!(sent, (413, Vec::new(), true));
        assert!(conn.live.is_none(), "half a body sent: not kept");
        drop(done);
    }

    #[tokio::test]
    async fn one_connection_carries_copies_while_the_target_keeps_it() {
        let (origin, accepted) = scripted(vec![
            vec![
                Step {
                    expect: GET,
                    // Interim answers first; the chunks and trailers split
                    // across writes.
                    answer: &[
                        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab",
                        b"cd\r",
                        b"\n3;x=y\r\nefg\r\n0\r\nx-t",
                        b": 1\r\n\r\n",
                    ],
                    close: false,
                },
                Step {
                    expect: GET,
                    answer: &[b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nxyz"],
                    close: true,
                },
            ],
            vec![Step {
                expect: GET,
                // No length: the body ends with the connection.
                answer: &[b"HTTP/1.1 200 OK\r\n\r\nto the end"],
                close: true,
            }],
            vec![Step {
                expect: GET,
                answer: &[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
                close: false,
            }],
        ])
        .await;
        let mut conn = conn(origin);
        let get = bodyless(Method::GET);
        assert_eq!(
            send(&mut conn, &get, 1024).await.unwrap(),
            (200, b"abcdefg".to_vec(), true)
        );
        assert_eq!(
            send(&mut conn, &get, 1024).await.unwrap(),
            (200, b"xyz".to_vec(), true)
        );
        assert_eq!(
            send(&mut conn, &get, 1024).await.unwrap(),
            (200, b"to the end".to_vec(), true)
        );
        assert_eq!(
            send(&mut conn, &get, 1024).await.unwrap(),
            (200, Vec::new(), true)
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "kept until `close`, the close-delimited body, and after"
        );
    }

    /// `copies` as one pipeline on `conn`: each one's status, or error.
    async fn pipeline(conn: &mut CopyConn, copies: &[(&str, Method)]) -> Vec<Result<u16, String>> {
        let host = HeaderValue::from_static("shadow");
        let headers = HeaderMap::new();
        let copies: Vec<_> = copies
            .iter()
            .map(|(target, method)| {
                let head = CopyHead {
                    method,
                    target,
                    headers: &headers,
                    host: Some(&host),
                };
                (head, bodyless(method.clone()).body())
            })
            .collect();
        let mut got = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            conn.exchange_pipelined(&copies, 1024, &mut |index, result| {
                assert_eq!(index, got.len(), "answers in order");
                got.push(result.map(|a| a.status.as_u16()).map_err(|e| e.to_string()));
            }),
        )
        .await
        .expect("a pipeline that ends");
        got
    }

    fn request(method: &str, target: &str) -> String {
        format!("{method} {target} HTTP/1.1\r\nhost: shadow\r\n\r\n")
    }

    fn leak(text: String) -> &'static [u8] {
        Box::leak(text.into_bytes().into_boxed_slice())
    }

    /// GETs of `paths`, one after the other, as the target receives them.
    fn gets(paths: &[&str]) -> &'static [u8] {
        leak(paths.iter().map(|path| request("GET", path)).collect())
    }

    /// GETs of `paths` as one pipeline on `conn`.
    async fn pipeline_gets(conn: &mut CopyConn, paths: &[&str]) -> Vec<Result<u16, String>> {
        let copies: Vec<_> = paths.iter().map(|path| (*path, Method::GET)).collect();
        pipeline(conn, &copies).await
    }

    #[tokio::test]
    async fn pipelined_copies_go_out_in_one_write_and_their_answers_come_in_order() {
        let all = [
            request("GET", "/a"),
            request("HEAD", "/b"),
            request("OPTIONS", "/c"),
        ]
        .concat();
        let (origin, accepted) = scripted(vec![vec![
            Step {
                // The scripted target reads all three before it answers:
                // they came before any answer.
                expect: leak(all),
                answer: &[
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                    b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
                ],
                close: false,
            },
            Step {
                expect: GET,
                answer: &[b"HTTP/1.1 204 No Content\r\n\r\n"],
                close: false,
            },
        ]])
        .await;
        let mut conn = conn(origin);
        let answers = pipeline(
            &mut conn,
            &[
                ("/a", Method::GET),
                ("/b", Method::HEAD),
                ("/c", Method::OPTIONS),
            ],
        )
        .await;
        assert_eq!(answers, vec![Ok(200), Ok(200), Ok(404)]);
        // The connection is kept for what comes next.
        assert_eq!(
            send(&mut conn, &bodyless(Method::GET), 1024)
                .await
                .unwrap()
                .0,
            204
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(conn.pipelines());
    }

    #[tokio::test]
    async fn copies_after_an_answer_that_closes_go_on_a_new_connection() {
        let (origin, accepted) = scripted(vec![
            vec![Step {
                expect: gets(&["/1", "/2", "/3", "/4"]),
                answer: &[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"],
                close: true,
            }],
            vec![Step {
                expect: gets(&["/3", "/4"]),
                answer: &[b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"],
                close: false,
            }],
        ])
        .await;
        let mut conn = conn(origin);
        let answers = pipeline_gets(&mut conn, &["/1", "/2", "/3", "/4"]).await;
        assert_eq!(answers, vec![Ok(200), Ok(200), Ok(201), Ok(202)]);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(conn.pipelines(), "it said it would close");
    }

    #[tokio::test]
    async fn a_target_that_drops_pipelined_copies_gets_them_once_more_one_at_a_time() {
        let ok: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"];
        let (origin, accepted) = scripted(vec![
            // Answers the first and closes, unasked.
            vec![Step {
                expect: gets(&["/1", "/2", "/3"]),
                answer: ok,
                close: true,
            }],
            // The rest, one request at a time.
            vec![
                Step {
                    expect: gets(&["/2"]),
                    answer: ok,
                    close: false,
                },
                Step {
                    expect: gets(&["/3"]),
                    answer: ok,
                    close: false,
                },
            ],
        ])
        .await;
        let mut conn = conn(origin);
        let answers = pipeline_gets(&mut conn, &["/1", "/2", "/3"]).await;
        assert_eq!(answers, vec![Ok(200), Ok(200), Ok(200)]);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(!conn.pipelines());
    }

    #[tokio::test]
    async fn copies_behind_an_answer_cut_at_the_cap_go_on_a_new_connection() {
        let (origin, accepted) = scripted(vec![
            vec![Step {
                expect: gets(&["/big", "/a"]),
                answer: &[
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2048\r\n\r\n",
                    &[b'x'; 2048],
                ],
                close: false,
            }],
            vec![Step {
                expect: gets(&["/a"]),
                answer: &[b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"],
                close: false,
            }],
        ])
        .await;
        let mut conn = conn(origin);
        let answers = pipeline_gets(&mut conn, &["/big", "/a"]).await;
        assert_eq!(answers, vec![Ok(200), Ok(201)]);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(conn.pipelines());
    }

    #[tokio::test]
    async fn a_target_that_keeps_no_connection_gets_no_more_pipelines() {
        let close: &[&[u8]] =
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"];
        let (origin, accepted) = scripted(vec![
            vec![Step {
                expect: gets(&["/1", "/2", "/3"]),
                answer: close,
                close: true,
            }],
            vec![Step {
                expect: gets(&["/2"]),
                answer: close,
                close: true,
            }],
            vec![Step {
                expect: gets(&["/3"]),
                answer: close,
                close: true,
            }],
        ])
        .await;
        let mut conn = conn(origin);
        let answers = pipeline_gets(&mut conn, &["/1", "/2", "/3"]).await;
        assert_eq!(answers, vec![Ok(200), Ok(200), Ok(200)]);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert!(!conn.pipelines());
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_not_used_again() {
        let (origin, accepted) = scripted(vec![
            vec![Step {
                expect: GET,
                answer: &[b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"],
                close: true,
            }],
            vec![Step {
                expect: GET,
                answer: &[b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"],
                close: false,
            }],
        ])
        .await;
        let mut conn = conn(origin);
        let get = bodyless(Method::GET);
        assert_eq!(send(&mut conn, &get, 1024).await.unwrap().1, b"a");
        // Until the close has reached this side.
        for _ in 0..200 {
            if conn
                .take_live()
                .map(|live| conn.live = Some(live.0))
                .is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(send(&mut conn, &get, 1024).await.unwrap().1, b"b");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_past_the_cap_is_not_read_and_its_connection_not_kept() {
        let (origin, accepted) = scripted(vec![
            vec![Step {
                expect: GET,
                answer: &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"],
                close: false,
            }],
            vec![Step {
                expect: b"HEAD /p?q=1 HTTP/1.1\r\nhost: shadow\r\n\r\n",
                // A HEAD answer's length has no body behind it.
                answer: &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"],
                close: false,
            }],
        ])
        .await;
        let mut conn = conn(origin);
        let get = bodyless(Method::GET);
        let (_, body, whole) = send(&mut conn, &get, 4).await.unwrap();
        assert!(!whole);
        assert!(body.len() <= 4, "{body:?}");
        let head = bodyless(Method::HEAD);
        assert_eq!(
            send(&mut conn, &head, 4).await.unwrap(),
            (200, Vec::new(), true)
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn broken_answers_are_errors() {
        let (origin, _) = scripted(vec![
            vec![Step {
                expect: GET,
                answer: &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"],
                close: true,
            }],
            vec![Step {
                expect: GET,
                answer: &[],
                close: true,
            }],
            vec![Step {
                expect: GET,
                answer: &[b"HTTP/1.1 101 Switching Protocols\r\n\r\n"],
                close: false,
            }],
            vec![Step {
                expect: GET,
                answer: &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX"],
                close: false,
            }],
        ])
        .await;
        let mut conn = conn(origin);
        let get = bodyless(Method::GET);
        let errors = [
            "connection closed in the response body",
            "connection closed before a response",
            "invalid response: 101 to a copy that asked no upgrade",
            "invalid response: no CRLF after a chunk",
        ];
        for expected in errors {
            let err = send(&mut conn, &get, 1024).await.unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }

    fn head(bytes: &[u8]) -> Result<Option<Head>, ExchangeError> {
        parse_head(&mut BytesMut::from(bytes), true)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let of = |bytes: &[u8]| head(bytes).unwrap().unwrap().framing.unwrap();
        assert_eq!(
            of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Framing::UntilClose
        );
        assert_eq!(of(b"HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilClose);
        let both =
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(both.framing, Ok(Framing::Chunked));
        assert!(!both.keep_alive, "never trusted for another request");
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let keep = |bytes: &[u8]| head(bytes).unwrap().unwrap().keep_alive;
        assert!(keep(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keep(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(!keep(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(keep(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn bad_heads_are_refused() {
        let framing = |bytes: &[u8]| head(bytes).unwrap().unwrap().framing;
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err("bad Content-Length")
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n"),
            Err("bad Content-Length")
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err("conflicting Content-Length")
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert!(head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: y\r\n")).collect();
        assert!(head(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()).is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Len").unwrap().is_none());
    }

    #[test]
    fn a_head_is_taken_out_and_the_body_left() {
        let mut input =
            BytesMut::from(&b"HTTP/1.1 201 Created\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi"[..]);
        let head = parse_head(&mut input, true).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers["x-a"], "1");
        assert_eq!(&input[..], b"hi");
        let mut input = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n"[..]);
        assert!(parse_head(&mut input, false)
            .unwrap()
            .unwrap()
            .headers
            .is_empty());
    }

    #[test]
    fn chunks_step_through_sizes_and_trailers() {
        let mut input = BytesMut::from(&b"5;ext=1\r\nhello"[..]);
        assert!(matches!(
            next_chunk(&mut input, false),
            Ok(Some(ChunkStep::Data(5)))
        ));
        assert_eq!(&input[..], b"hello");
        input.advance(5);
        assert!(
            next_chunk(&mut input, true).unwrap().is_none(),
            "the CRLF is still to come"
        );
        input.extend_from_slice(b"\r\n0\r\nX-T: 1\r\n");
        assert!(
            next_chunk(&mut input, true).unwrap().is_none(),
            "the trailers are not over"
        );
        input.extend_from_slice(b"\r\nnext");
        assert!(matches!(
            next_chunk(&mut input, true),
            Ok(Some(ChunkStep::End))
        ));
        assert_eq!(&input[..], b"next");
        assert!(next_chunk(&mut BytesMut::from(&b"zz\r\n"[..]), false).is_err());
        assert!(next_chunk(&mut BytesMut::from(&b"xy5\r\n"[..]), true).is_err());
        // An empty size line is no last chunk.
        assert!(next_chunk(&mut BytesMut::from(&b"\r\n\r\n\r\n"[..]), true).is_err());
    }
}
