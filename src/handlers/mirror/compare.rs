//! The mirror's `compare { … }` block: its options declared, and read into
//! the engine's [`CompareConfig`].

use std::borrow::Cow;

use http::HeaderName;
use kdl::KdlNode;

use super::every;
use crate::config::options::{self as o, FileToWrite, Int, Spec, Table, Unset, Value};
use crate::config::reader::{arguments, name_span, Reader};
use crate::config::value;
use crate::config::Problem;
use crate::diff::{CompareRules, JsonPath};
use crate::mirror::compare::CompareConfig;

/// What `compare` takes, in the order its diagnostics list it.
pub static OPTIONS: &Table = &[&HEADERS, &IGNORE, &DIFF_LOG, &LOG_RATE];

static HEADERS: Spec<HeaderNames> = Spec::many(
    "headers",
    HeaderNames,
    Unset::Means("none"),
    "Headers whose values must match, every value in order.",
);

static IGNORE: Spec<JsonPaths> = Spec::many(
    "ignore",
    JsonPaths,
    Unset::Means("none"),
    "JSON paths left out of both bodies before a JSON comparison.",
);

static DIFF_LOG: Spec<FileToWrite> = Spec::once(
    "diff_log",
    FileToWrite { what: "diff log" },
    Unset::Means("none: mismatches are only counted"),
    "Where mismatches go, one JSON line each (its directory must exist).",
);

static LOG_RATE: Spec<Int> = Spec::once(
    "log_rate",
    Int {
        min: 1,
        max: 100_000,
    },
    Unset::Default("10"),
    "Diff lines a second at most; the mismatches over it are counted, not written.",
);

pub fn decode(node: &KdlNode, r: &mut Reader) -> Option<CompareConfig> {
    r.no_properties(node);
    if !arguments(node).is_empty() {
        r.push(
            Problem::error(
                name_span(node),
                "`compare` takes no arguments, only a block",
            )
            .label("unexpected argument")
            .help("write compare { headers \"Content-Type\"; ignore \"$.ts\" }"),
        );
    }
    let opts = o::read(node, OPTIONS, r);
    let headers = every(&opts, r, &HEADERS);
    let ignore = every(&opts, r, &IGNORE);
    let diff_log = opts.maybe(r, &DIFF_LOG);
    let log_rate = opts.get(r, &LOG_RATE);
    Some(CompareConfig {
        rules: CompareRules {
            headers: headers?.concat(),
            ignore: ignore?.concat(),
        },
        diff_log: diff_log?.map(|path| path.value),
        log_rate: log_rate? as u32,
    })
}

/// `headers "Content-Type" "Cache-Control"`.
#[derive(Debug)]
struct HeaderNames;

impl Value for HeaderNames {
    type Out = Vec<HeaderName>;
    fn describe(&self) -> Cow<'static, str> {
        "header names".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "header names".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<Self::Out> {
        r.no_children(node);
        r.no_properties(node);
        r.each(&arguments(node), value::header_name)
    }
}

/// `ignore "$.ts" "$.items[*].id"`.
#[derive(Debug)]
struct JsonPaths;

impl Value for JsonPaths {
    type Out = Vec<JsonPath>;
    fn describe(&self) -> Cow<'static, str> {
        "JSON paths".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "JSON paths".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<Self::Out> {
        r.no_children(node);
        r.no_properties(node);
        r.each(&arguments(node), |entry| {
            let text = value::non_empty_string(entry)?;
            JsonPath::parse(&text).map_err(|why| {
                Problem::error(value::value_span(entry), "not a JSON path")
                    .label(why)
                    .help(
                        "write paths such as \"$.ts\", \"$.items[*].id\" or \"$.meta.request_id\"",
                    )
            })
        })
    }
}
