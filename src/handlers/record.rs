//! `record "traffic.jsonl" { responses #true; max_body "1MiB"; roll_size "100MiB"; roll_keep 5 }`:
//! writes every request it sees (and, with `responses`, its response) as one
//! JSON line, for `teebox replay` or any other tool.
//!
//! Bodies are kept as they stream past, up to `max_body`, without holding
//! up either side; the line is written when the request body and (with
//! `responses`) the response body are done, by a writer thread behind a
//! bounded queue. The line format is in the README ("Recording").

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use kdl::KdlNode;

use super::{
    BoxFuture, BuildContext, BuildError, HandlerConfig, HandlerKind, Middleware, MiddlewareConfig,
    Next,
};
use crate::config::options::{self as o, Spec, Table, Unset};
use crate::config::reader::Reader;
use crate::lines::{Destination, LineSink, Roll};
use crate::message::json;
use crate::message::placeholders::RequestVars;
use crate::message::{body, Request, Response};

pub static KIND: HandlerKind = HandlerKind::Middleware {
    name: "record",
    decode,
    options: OPTIONS,
};

/// What `record` takes, in the order its diagnostics list it.
pub static OPTIONS: &Table = &[&PATH, &RESPONSES, &MAX_BODY, &ROLL_SIZE, &ROLL_KEEP];

static PATH: Spec<o::FileToWrite> = Spec::argument(
    "path",
    o::FileToWrite {
        what: "record file",
    },
    Unset::Required,
    "Where the lines go (appended to; its directory must exist).",
);

static RESPONSES: Spec<o::Flag> = Spec::once(
    "responses",
    o::Flag,
    Unset::Default("#false"),
    "Also record the response.",
);

static MAX_BODY: Spec<o::Size> = Spec::once(
    "max_body",
    o::Size,
    Unset::Default("1MiB"),
    "Bodies are kept up to this size; longer ones are cut and marked.",
);

static ROLL_SIZE: Spec<o::Size> = Spec::once(
    "roll_size",
    o::Size,
    Unset::Default("100MiB"),
    "Past this size the file is rolled to path.1, path.2, ...",
);

static ROLL_KEEP: Spec<o::Int> = Spec::once(
    "roll_keep",
    o::Int { min: 0, max: 1000 },
    Unset::Default("5"),
    "Rolled files kept; the oldest is removed.",
);

#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// Relative to the site file; its directory existed when it was read.
    path: PathBuf,
    responses: bool,
    max_body: u64,
    roll: Roll,
}

/// Lines waiting for the writer; past this, lines are dropped and counted.
const QUEUE: usize = 4096;

fn decode(node: &KdlNode, r: &mut Reader) -> Option<Box<dyn MiddlewareConfig>> {
    r.no_properties(node);
    let path = r
        .args_only(node, 1, "a file path, such as \"traffic.jsonl\"")
        .and_then(|args| PATH.read_entry(args[0], r));
    let opts = o::read(node, OPTIONS, r);
    let responses = opts.get(r, &RESPONSES);
    let max_body = opts.get(r, &MAX_BODY);
    let roll_size = opts.get(r, &ROLL_SIZE);
    let roll_keep = opts.get(r, &ROLL_KEEP);
    Some(Box::new(RecordConfig {
        path: path?,
        responses: responses?,
        max_body: max_body?,
        roll: Roll {
            size: roll_size?.max(1),
            keep: roll_keep? as usize,
        },
    }))
}

impl HandlerConfig for RecordConfig {}

impl MiddlewareConfig for RecordConfig {
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Middleware>, BuildError> {
        let path: PathBuf = cx.base_dir.join(&self.path);
        let sink = LineSink::open(
            Destination::File {
                path,
                roll: Some(self.roll),
            },
            QUEUE,
            "record file",
        )
        .map_err(|e| BuildError(e.to_string()))?;
        Ok(Arc::new(Record {
            config: self.clone(),
            sink,
        }))
    }
}

pub struct Record {
    config: RecordConfig,
    sink: LineSink,
}

impl Middleware for Record {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        let (mut parts, request_body) = req.into_parts();
        let vars = RequestVars::of(&mut parts, next.conn());
        // The request's part of the line, written now: `{"ts_ms":…,…,"headers":[…]`.
        let mut head = String::with_capacity(512);
        let _ = write!(head, "{{\"ts_ms\":{},\"id\":", vars.unix_ms);
        json::push_str(&mut head, &vars.id);
        head.push_str(",\"client\":");
        json::push_str(&mut head, &next.conn().client.to_string());
        head.push_str(",\"method\":");
        json::push_str(&mut head, parts.method.as_str());
        head.push_str(",\"uri\":");
        json::push_str(&mut head, &parts.uri.to_string());
        let _ = write!(head, ",\"version\":\"{:?}\",", parts.version);
        json::push_headers(&mut head, "headers", &parts.headers);
        let line = Arc::new(Line {
            sink: self.sink.clone(),
            started: Instant::now(),
            head,
            parts: Mutex::new(Parts::default()),
        });
        let max_body = self.config.max_body;
        let request_body = Captured::wrap(request_body, max_body, line.clone(), Side::Request);
        let req = Request::from_parts(parts, request_body);
        let responses = self.config.responses;
        Box::pin(async move {
            let response = next.run(req).await;
            if !responses {
                return response;
            }
            let (parts, response_body) = response.into_parts();
            let mut head = format!("{{\"status\":{},", parts.status.as_u16());
            json::push_headers(&mut head, "headers", &parts.headers);
            line.lock().response_head = Some(head);
            let response_body = Captured::wrap(response_body, max_body, line, Side::Response);
            Response::from_parts(parts, response_body)
        })
    }
}

/// One request's line, written when the last part of it is dropped: the
/// handler, the request body and the response body each hold it.
struct Line {
    sink: LineSink,
    started: Instant,
    /// The request's fields, written when the request arrived.
    head: String,
    parts: Mutex<Parts>,
}

#[derive(Default)]
struct Parts {
    request_body: Option<BodyRecord>,
    /// `{"status":…,"headers":[…]`
    response_head: Option<String>,
    response_body: Option<BodyRecord>,
    response_ms: Option<f64>,
}

impl Line {
    fn lock(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let parts = std::mem::take(&mut *self.lock());
        let mut line = std::mem::take(&mut self.head);
        line.push(',');
        parts.request_body.unwrap_or_default().write(&mut line);
        if let Some(response) = parts.response_head {
            line.push_str(",\"response\":");
            line.push_str(&response);
            line.push(',');
            parts.response_body.unwrap_or_default().write(&mut line);
            let ms = parts
                .response_ms
                .unwrap_or_else(|| self.started.elapsed().as_secs_f64() * 1000.0);
            let _ = write!(line, ",\"duration_ms\":{ms:.3}}}");
        }
        line.push_str("}\n");
        self.sink.write(line);
    }
}

/// A body as far as it was seen.
#[derive(Default)]
struct BodyRecord {
    kept: Bytes,
    /// Every data byte that went past, kept or not.
    seen: u64,
    /// The body ended normally (rather than being dropped unread or
    /// failing part way).
    complete: bool,
    trailers: Option<HeaderMap>,
}

impl BodyRecord {
    /// `"body":…` and the fields beside it (see [`json::push_body`]);
    /// truncated when cut at `max_body` or not seen whole.
    fn write(self, out: &mut String) {
        let truncated = !self.complete || self.seen > self.kept.len() as u64;
        json::push_body(out, &self.kept, self.seen, truncated);
        if let Some(trailers) = &self.trailers {
            out.push(',');
            json::push_headers(out, "trailers", trailers);
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// Keeps up to `max_body` bytes of a body for the line, as it goes past.
struct Captured {
    kept: BytesMut,
    record: BodyRecord,
    max_body: u64,
    /// Let go when the body is done, so the line is written as soon as the
    /// last part of it is.
    line: Option<Arc<Line>>,
    side: Side,
}

impl Captured {
    fn wrap(inner: body::Body, max_body: u64, line: Arc<Line>, side: Side) -> body::Body {
        body::boxed(body::Observed::new(
            inner,
            Captured {
                kept: BytesMut::new(),
                record: BodyRecord::default(),
                max_body,
                line: Some(line),
                side,
            },
        ))
    }
}

impl body::Observe for Captured {
    fn data(&mut self, data: &Bytes) {
        self.record.seen += data.len() as u64;
        let room = self.max_body.saturating_sub(self.kept.len() as u64) as usize;
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        self.record.trailers = Some(trailers.clone());
    }

    fn done(&mut self, complete: bool) {
        let Some(line) = self.line.take() else { return };
        let mut record = std::mem::take(&mut self.record);
        record.complete = complete;
        record.kept = std::mem::take(&mut self.kept).freeze();
        let mut parts = line.lock();
        match self.side {
            Side::Request => parts.request_body = Some(record),
            Side::Response => {
                parts.response_ms = Some(line.started.elapsed().as_secs_f64() * 1000.0);
                parts.response_body = Some(record);
            }
        }
    }
}
