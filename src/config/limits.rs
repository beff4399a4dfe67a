//! `global { limits { … } }`: the connection and request limits of every
//! listener, declared once (see [`super::options`]). A file without
//! `limits` is read as one with an empty block, so it gets these defaults.

use std::borrow::Cow;

use kdl::{KdlEntry, KdlNode};

use super::diag::Problem;
use super::model::Limits;
use super::options::{self as o, Spec, Table, Unset, Value};
use super::reader::Reader;
use super::value;

/// What `limits` takes, in the order its diagnostics list it.
pub static OPTIONS: &Table = &[
    &MAX_HEADER_SIZE,
    &READ_BUFFER,
    &READ_HEADER_TIMEOUT,
    &READ_BODY_TIMEOUT,
    &IDLE_TIMEOUT,
    &MAX_CONNECTIONS,
    &H2_MAX_CONCURRENT_STREAMS,
];

static MAX_HEADER_SIZE: Spec<SizeIn> = Spec::once(
    "max_header_size",
    SizeIn {
        help: "request heads are rarely over 8 KiB; the default is \"64KiB\"",
    },
    Unset::Default("64KiB"),
    "Request line plus headers (HTTP/2: the header list); larger: 431.",
);

static READ_BUFFER: Spec<SizeIn> = Spec::once(
    "read_buffer",
    SizeIn {
        help: "the default \"80KiB\" reads a 64 KiB upload and its head at once; \
               \"256KiB\" or more suits large uploads",
    },
    Unset::Default("80KiB"),
    "The most an HTTP/1.1 connection reads at once (or max_header_size, if larger).",
);

static READ_HEADER_TIMEOUT: Spec<o::Duration> = Spec::once(
    "read_header_timeout",
    o::Duration::POSITIVE,
    Unset::Default("10s"),
    "From a request head's first byte to its end; over it: 408, closed.",
);

static READ_BODY_TIMEOUT: Spec<o::Duration> = Spec::once(
    "read_body_timeout",
    o::Duration::POSITIVE,
    Unset::Default("1m"),
    "The longest wait for the client between two reads of a request body.",
);

static IDLE_TIMEOUT: Spec<o::Duration> = Spec::once(
    "idle_timeout",
    o::Duration::POSITIVE,
    Unset::Default("2m"),
    "A keep-alive connection idle this long is closed.",
);

static MAX_CONNECTIONS: Spec<o::Int> = Spec::once(
    "max_connections",
    o::Int {
        min: 1,
        max: 1_000_000,
    },
    Unset::Default("10000"),
    "Connections served at once; at the limit, accepting waits.",
);

static H2_MAX_CONCURRENT_STREAMS: Spec<o::Int> = Spec::once(
    "h2_max_concurrent_streams",
    o::Int {
        min: 1,
        max: 10_000,
    },
    Unset::Default("256"),
    "Streams per HTTP/2 connection.",
);

/// A `limits` block.
pub fn decode(node: &KdlNode, r: &mut Reader) -> Option<Limits> {
    r.no_properties(node);
    r.args_only(
        node,
        0,
        "options go inside the block: limits { max_connections 10000 }",
    );
    let opts = o::read(node, OPTIONS, r);
    let max_header_size = opts.get(r, &MAX_HEADER_SIZE);
    let read_buffer = opts.get(r, &READ_BUFFER);
    let read_header_timeout = opts.get(r, &READ_HEADER_TIMEOUT);
    let read_body_timeout = opts.get(r, &READ_BODY_TIMEOUT);
    let idle_timeout = opts.get(r, &IDLE_TIMEOUT);
    let max_connections = opts.get(r, &MAX_CONNECTIONS);
    let streams = opts.get(r, &H2_MAX_CONCURRENT_STREAMS);
    if let (Some(buffer), Some(head), Some(written)) =
        (read_buffer, max_header_size, opts.node(&READ_BUFFER))
    {
        if buffer < head {
            r.push(read_buffer_below_head(written, head));
        }
    }
    Some(Limits {
        max_header_size: max_header_size?,
        read_buffer: read_buffer?,
        read_header_timeout: read_header_timeout?,
        read_body_timeout: read_body_timeout?,
        idle_timeout: idle_timeout?,
        max_connections: max_connections? as usize,
        h2_max_concurrent_streams: streams? as u32,
    })
}

/// hyper's buffer must hold a whole head, so a smaller `read_buffer` is
/// not what connections get: worth a word, not a refusal.
fn read_buffer_below_head(written: &KdlNode, head: usize) -> Problem {
    Problem::warning(
        written.span(),
        format!(
            "read_buffer is below max_header_size: connections read up to {head} bytes at once"
        ),
    )
    .label("smaller than max_header_size")
    .help("a read buffer must hold a whole request head; raise read_buffer or leave it out")
}

/// A buffer's size, 8 KiB (the least hyper takes) to 16 MiB.
#[derive(Debug)]
struct SizeIn {
    help: &'static str,
}

impl Value for SizeIn {
    type Out = usize;
    fn describe(&self) -> Cow<'static, str> {
        "size, 8KiB–16MiB".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a size from \"8KiB\" to \"16MiB\"".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<usize> {
        let size = r.check(value::size(entry))?;
        if !(8 * 1024..=16 << 20).contains(&size) {
            r.push(
                Problem::error(
                    value::value_span(entry),
                    format!("{size} bytes is out of range"),
                )
                .label("expected 8KiB to 16MiB")
                .help(self.help),
            );
            return None;
        }
        Some(size as usize)
    }
}

/// The declared defaults, for tests that change one limit
/// (`Limits { max_connections: 2, ..Limits::default() }`): read as a file
/// without `limits` reads them.
#[cfg(test)]
impl Default for Limits {
    fn default() -> Self {
        match decode_alone(&KdlNode::new("limits")) {
            (Some(limits), problems) if !problems.iter().any(Problem::is_error) => limits,
            (_, problems) => panic!("the declared limits do not read: {problems:?}"),
        }
    }
}

/// `node` decoded on its own, with what was said about it.
#[cfg(test)]
fn decode_alone(node: &KdlNode) -> (Option<Limits>, Vec<Problem>) {
    let mut problems = super::diag::Problems::default();
    let limits = decode(
        node,
        &mut Reader::new(&mut problems, std::path::PathBuf::from(".")),
    );
    (limits, problems.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sound() {
        o::check_table(OPTIONS).unwrap();
    }

    fn read(kdl: &str) -> (Option<Limits>, Vec<Problem>) {
        let doc: kdl::KdlDocument = kdl.parse().expect("test KDL parses");
        decode_alone(doc.nodes().first().expect("a limits node"))
    }

    #[test]
    fn a_read_buffer_below_the_head_limit_is_a_warning_and_the_head_limit_wins() {
        let (limits, problems) = read("limits { read_buffer \"16KiB\"; }");
        let limits = limits.expect("a warning only");
        assert_eq!(limits.read_buffer_at_most(), 64 * 1024);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(!problems[0].is_error());
        let (limits, problems) =
            read("limits { read_buffer \"256KiB\"; max_header_size \"16KiB\"; }");
        assert_eq!(limits.map(|l| l.read_buffer_at_most()), Some(256 * 1024));
        assert!(problems.is_empty(), "{problems:?}");
    }

    /// Each declared default lands in its own field.
    #[test]
    fn an_unwritten_block_gets_the_declared_defaults() {
        let limits = Limits::default();
        assert_eq!(limits.max_header_size, 64 * 1024);
        assert_eq!(limits.read_buffer, 80 * 1024);
        assert_eq!(limits.read_header_timeout.as_secs(), 10);
        assert_eq!(limits.read_body_timeout.as_secs(), 60);
        assert_eq!(limits.idle_timeout.as_secs(), 120);
        assert_eq!(limits.max_connections, 10_000);
        assert_eq!(limits.h2_max_concurrent_streams, 256);
    }
}
