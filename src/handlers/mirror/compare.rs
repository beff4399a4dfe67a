//! The mirror's `compare { … }` block, read into the engine's
//! [`CompareConfig`].

use kdl::KdlNode;

use crate::config::reader::{arguments, name_span, Reader, Repeat};
use crate::config::value;
use crate::config::Problem;
use crate::diff::{CompareRules, JsonPath};
use crate::mirror::compare::CompareConfig;

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
    let opts = r.options(
        node,
        &[
            ("headers", Repeat::Many),
            ("ignore", Repeat::Many),
            ("diff_log", Repeat::Once),
            ("log_rate", Repeat::Once),
        ],
    );
    let mut ok = true;
    let mut headers = Vec::new();
    for n in opts.all("headers") {
        r.no_children(n);
        r.no_properties(n);
        match r.each(&arguments(n), value::header_name) {
            Some(mut names) => headers.append(&mut names),
            None => ok = false,
        }
    }
    let mut ignore = Vec::new();
    for n in opts.all("ignore") {
        r.no_children(n);
        r.no_properties(n);
        let paths = r.each(&arguments(n), |entry| {
            let text = value::non_empty_string(entry)?;
            JsonPath::parse(&text).map_err(|why| {
                Problem::error(value::value_span(entry), "not a JSON path")
                    .label(why)
                    .help(
                        "write paths such as \"$.ts\", \"$.items[*].id\" or \"$.meta.request_id\"",
                    )
            })
        });
        match paths {
            Some(mut paths) => ignore.append(&mut paths),
            None => ok = false,
        }
    }
    // `None`: no diff log; `Some(None)`: one was given but is invalid.
    let diff_log = opts.one("diff_log").map(|n| {
        let args = r.args(n, 1, "a file path, such as \"diffs.jsonl\"")?;
        r.file_to_write(args[0], "diff log")
    });
    let log_rate = match opts.one("log_rate") {
        Some(n) => r.value(n, "a whole number from 1 to 100000", |e| {
            value::integer(e, 1, 100_000)
        }),
        None => Some(10),
    };
    if !ok {
        return None;
    }
    Some(CompareConfig {
        rules: CompareRules { headers, ignore },
        diff_log: diff_log.map_or(Some(None), |d| d.map(Some))?,
        log_rate: log_rate? as u32,
    })
}
