//! The README is the contract of the site file, the CLI and the admin
//! endpoint, and the examples are its runnable half. These tests keep what
//! of them can be checked mechanically true:
//!
//! - every ```kdl block of the README is valid (a fragment is checked inside
//!   the smallest site file that can hold it), and so is every example;
//! - the `teebox validate` run the README shows is what `validate` prints,
//!   and every link to a heading (`](#…)`) finds it;
//! - every option a block takes is in that block's README table, and every
//!   option a table lists is taken. What a block takes is read from the
//!   diagnostic an unknown option gets (``"`mirror` takes: …"``), so these
//!   tests check the lists users are shown, not a copy of them; a handler
//!   whose options are declared (`config::options`), and each block of the
//!   site file (`global`, `site`, `tls`, …), has a table that lists exactly
//!   its declarations, with their defaults;
//! - every handler has its section, every metric family `/metrics` prints
//!   (and every `outcome`/`result` label value) is in the metrics table,
//!   every counter of `GET /targets` in the counters table, every command
//!   and flag of `teebox --help` in the command table;
//! - the cohorts `examples/mirror-policy.kdl` promises in its comment are
//!   the ones its mirror picks.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{base_url, client, Backend, Client, Reply, TempDir};
use teebox::config::options::{self, Unset};
use teebox::config::Style;
use teebox::handlers::{HandlerKind, REGISTRY};

fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(crate_root().join(path))
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn readme() -> String {
    read("README.md")
}

// ---------------------------------------------------------------------------
// Reading the README's Markdown: sections, tables, code blocks.

/// A fenced code block: its info string (`kdl`), its first line's number in
/// the file, and its text.
struct Block {
    lang: String,
    line: usize,
    text: String,
}

fn code_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        match (open.take(), line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    lang: info.trim().to_string(),
                    line: i + 2,
                    text: String::new(),
                })
            }
            (Some(block), Some(_)) => blocks.push(block),
            (Some(mut block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
                open = Some(block);
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The text under the heading line `heading` (written out whole, such as
/// "### `mirror` (middleware)") up to the next heading of its level or
/// above. Lines in code blocks are not headings.
fn section<'a>(markdown: &'a str, heading: &str) -> &'a str {
    let level = heading.bytes().take_while(|b| *b == b'#').count();
    let mut start = None;
    let mut fenced = false;
    let mut offset = 0;
    for line in markdown.split_inclusive('\n') {
        let text = line.trim_end();
        if text.starts_with("```") {
            fenced = !fenced;
        }
        let depth = text.bytes().take_while(|b| *b == b'#').count();
        let is_heading = !fenced && depth > 0 && text.as_bytes().get(depth) == Some(&b' ');
        match start {
            None if is_heading && text == heading => start = Some(offset + line.len()),
            Some(from) if is_heading && depth <= level => return &markdown[from..offset],
            _ => {}
        }
        offset += line.len();
    }
    match start {
        Some(from) => &markdown[from..],
        None => panic!("README.md has no heading {heading:?}"),
    }
}

/// A table's cells, split at every `|` not escaped as `\|`.
fn cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = line.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                cells.last_mut().unwrap().push('|');
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    if cells.last().is_some_and(|c| c.trim().is_empty()) {
        cells.pop();
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

/// The rows (below the header) of the table in `text` whose header's first
/// cell is `first_header`.
fn table(text: &str, first_header: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let starts_table = line.starts_with('|') && (i == 0 || !lines[i - 1].starts_with('|'));
        if starts_table && cells(line).first().map(String::as_str) == Some(first_header) {
            return lines[i + 2..]
                .iter()
                .take_while(|l| l.starts_with('|'))
                .map(|l| cells(l))
                .collect();
        }
    }
    panic!("no table with a first column {first_header:?} in:\n{text}");
}

/// The `code spans` of a piece of Markdown.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The leading name of a code span (`tls cert=PATH` → `tls`), if it starts
/// with one.
fn leading_name(span: &str) -> Option<&str> {
    let end = span
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(span.len());
    let rest = &span[end..];
    (end > 0 && (rest.is_empty() || rest.starts_with([' ', '=']))).then(|| &span[..end])
}

/// The names a table documents: the leading name of every code span in the
/// first cell of every row (`tls cert=PATH …` documents `tls`; a row such
/// as "upstreams (arguments)" documents none).
fn documented(rows: &[Vec<String>]) -> BTreeSet<String> {
    rows.iter()
        .flat_map(|row| code_spans(&row[0]).into_iter().filter_map(leading_name))
        .map(str::to_string)
        .collect()
}

/// The row whose first cell's first code span starts with `name`.
fn row<'a>(rows: &'a [Vec<String>], name: &str) -> &'a [String] {
    rows.iter()
        .find(|row| code_spans(&row[0]).first().and_then(|s| leading_name(s)) == Some(name))
        .unwrap_or_else(|| panic!("no row for `{name}` in {rows:#?}"))
}

/// The properties written as `name=` in some code span of `text`.
fn properties(text: &str) -> BTreeSet<String> {
    code_spans(text)
        .into_iter()
        .flat_map(|span| span.split([' ', '[', ']']))
        .filter_map(|word| word.split_once('='))
        .filter(|(name, _)| leading_name(name) == Some(name))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// `text` without what it says in parentheses (`state` (`active` or
/// `paused`) → `state`).
fn outside_parentheses(text: &str) -> String {
    let mut depth = 0usize;
    text.chars()
        .filter(|c| {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => return depth == 0,
            }
            false
        })
        .collect()
}

/// The names in every code span of `text` (`` `sample`, `h2c` ``).
fn names_in(text: &str) -> BTreeSet<String> {
    code_spans(text)
        .into_iter()
        .filter_map(leading_name)
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// What the code accepts, as its diagnostics say.

const PROBE: &str = "zzzz";

fn problems(kdl: &str) -> Vec<teebox::config::Problem> {
    match teebox::config::parse(
        "probe.kdl",
        kdl,
        std::env::temp_dir(),
        teebox::handlers::REGISTRY,
    ) {
        Ok(_) => panic!("the probe was accepted:\n{kdl}"),
        Err(err) => err.problems,
    }
}

/// The help of the problem whose message starts with `message`, from the
/// part after `after` on, split into names.
fn listed_in_help(kdl: &str, message: &str, after: &str) -> BTreeSet<String> {
    let problems = problems(kdl);
    let help = problems
        .iter()
        .find(|p| p.message().starts_with(message))
        .and_then(|p| p.help_text())
        .unwrap_or_else(|| panic!("no {message:?} with a help in {problems:#?}"));
    let (_, list) = help
        .split_once(after)
        .unwrap_or_else(|| panic!("{help:?} has no {after:?}"));
    list.split(", ").map(str::to_string).collect()
}

/// The options the block `block` takes, as an unknown option in it is told.
fn options_of(block: &str, kdl: &str) -> BTreeSet<String> {
    listed_in_help(
        kdl,
        &format!("unknown option `{PROBE}` in `{block}`"),
        &format!("`{block}` takes: "),
    )
}

/// The properties `node` takes, as an unknown property on it is told.
fn properties_of(node: &str, kdl: &str) -> BTreeSet<String> {
    listed_in_help(
        kdl,
        &format!("unknown property `{PROBE}` on `{node}`"),
        "expected one of: ",
    )
}

/// A site file with `chain` as the handlers of its only route.
fn in_route(chain: &str) -> String {
    format!("site \"127.0.0.1:0\" {{\n    route \"/*\" {{\n{chain}\n    }}\n}}\n")
}

/// A site file with `global` as its global block.
fn with_global(global: &str) -> String {
    format!("global {{\n{global}\n}}\n{}", in_route("respond 200"))
}

fn mirror_with(options: &str) -> String {
    in_route(&format!(
        "mirror \"http://127.0.0.1:1\" {{\n{options}\n}}\nrespond 200"
    ))
}

/// Asserts that a README table lists exactly what the code takes.
fn assert_same(what: &str, in_readme: &BTreeSet<String>, in_code: &BTreeSet<String>) {
    let missing: Vec<_> = in_code.difference(in_readme).collect();
    let unknown: Vec<_> = in_readme.difference(in_code).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{what}: the README and the code disagree\n  taken but not in the README: {missing:?}\n  in the README but not taken: {unknown:?}"
    );
}

// ---------------------------------------------------------------------------
// The site files shown are valid.

/// A self-signed certificate and its key, as PEM files at `cert` and `key`.
fn write_certificate(dir: &Path, cert: &str, key: &str) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    for (name, pem) in [
        (cert, made.cert.pem()),
        (key, made.key_pair.serialize_pem()),
    ] {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, pem).unwrap();
    }
}

/// What the README's site files refer to, so that they can be read whole:
/// the TLS section's certificates and the admin endpoint's users file.
fn readme_files() -> TempDir {
    let dir = TempDir::new("readme-kdl");
    write_certificate(dir.path(), "certs/api.pem", "certs/api-key.pem");
    write_certificate(dir.path(), "certs/shop.pem", "certs/shop-key.pem");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(dir.join("admin.htpasswd"), format!("ops2:{hash}\n")).unwrap();
    // Files teebox writes must go in directories that exist.
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    dir
}

/// A README block as a whole site file: a `site` or `global` block as it
/// is (a `global` alone gets a site), a `route` inside a site, handlers
/// inside a route that ends with `respond 200` unless they end themselves.
fn as_site_file(block: &str) -> String {
    let doc: kdl::KdlDocument = block
        .parse()
        .unwrap_or_else(|e| panic!("not KDL: {e:?}\n{block}"));
    let names: Vec<&str> = doc.nodes().iter().map(|n| n.name().value()).collect();
    let terminal = |name: &str| {
        REGISTRY
            .iter()
            .any(|k| k.name() == name && matches!(k, HandlerKind::Terminal { .. }))
    };
    match names.as_slice() {
        [] => panic!("an empty kdl block"),
        names if names.contains(&"site") => block.to_string(),
        names if names.iter().all(|n| *n == "global") => {
            format!("{block}{}", in_route("respond 200"))
        }
        names if names.iter().all(|n| *n == "route") => {
            format!("site \"127.0.0.1:0\" {{\n{block}}}\n")
        }
        [.., last] if terminal(last) => in_route(block),
        _ => in_route(&format!("{block}respond 200")),
    }
}

#[test]
fn every_kdl_block_of_the_readme_is_valid() {
    let readme = readme();
    let files = readme_files();
    let blocks: Vec<Block> = code_blocks(&readme)
        .into_iter()
        .filter(|b| b.lang.split_whitespace().next() == Some("kdl"))
        .collect();
    assert!(blocks.len() > 10, "found only {} kdl blocks", blocks.len());
    // A block fenced some other way (indented, in a list; with `~~~`) is
    // not read by `code_blocks`: were there one, it would go unchecked.
    let kdl_fences: Vec<usize> = readme
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim_start();
            ["```", "~~~"].iter().any(|fence| {
                line.strip_prefix(fence).is_some_and(|info| {
                    info.trim_start_matches(['`', '~'])
                        .split_whitespace()
                        .next()
                        == Some("kdl")
                })
            })
        })
        .map(|(i, _)| i + 2)
        .collect();
    let checked: Vec<usize> = blocks.iter().map(|b| b.line).collect();
    assert_eq!(
        checked, kdl_fences,
        "the first lines of the kdl blocks checked, and of every kdl fence in README.md"
    );
    let mut failures = Vec::new();
    for block in &blocks {
        let file = as_site_file(&block.text);
        let name = format!("README.md:{}", block.line);
        if let Err(err) = teebox::config::parse(
            &name,
            &file,
            files.path().to_path_buf(),
            teebox::handlers::REGISTRY,
        ) {
            failures.push(format!(
                "{}\n--- as checked ---\n{file}",
                err.render(Style::Plain)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_example_is_valid() {
    let dir = crate_root().join("examples");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list examples/: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|x| x == "kdl"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 6, "found only {examples:?}");
    let readme = readme();
    let mut failures = Vec::new();
    for path in &examples {
        let name = path.file_name().unwrap().to_string_lossy();
        if !readme.contains(&format!("(examples/{name})")) {
            failures.push(format!("examples/{name} is not linked from the README"));
        }
        if let Err(err) = teebox::config::load(path, teebox::handlers::REGISTRY) {
            failures.push(match err {
                teebox::config::LoadError::Invalid(err) => err.render(Style::Plain),
                other => other.to_string(),
            });
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The `teebox validate` run under **`validate`**: the file it shows gives
/// exactly the output it shows.
#[test]
fn the_readme_validate_run_is_what_validate_prints() {
    let readme = readme();
    let run = code_blocks(&readme)
        .into_iter()
        .find(|b| b.text.starts_with("$ cat site.kdl\n"))
        .expect("the README shows a `teebox validate` run");
    let (file, rest) = run.text["$ cat site.kdl\n".len()..]
        .split_once("$ teebox validate site.kdl\n")
        .expect("the run validates site.kdl");
    let (shown, status) = rest.split_once("$ echo $?\n").expect("the run shows $?");
    let err = match teebox::config::parse(
        "site.kdl",
        file,
        std::env::temp_dir(),
        teebox::handlers::REGISTRY,
    ) {
        Ok(_) => panic!("the README's invalid site.kdl is valid"),
        Err(err) => err,
    };
    let printed = err.render(Style::Plain);
    assert_eq!(
        printed, shown,
        "README.md:{}: the validate run differs from what validate prints",
        run.line
    );
    assert_eq!(status, "1\n");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// made dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

#[test]
fn every_link_within_the_readme_has_its_heading() {
    let readme = readme();
    let mut fenced = false;
    let mut anchors = BTreeSet::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            anchors.insert(anchor(line));
        }
    }
    let broken: Vec<&str> = readme
        .split("](#")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|target| !anchors.contains(*target))
        .collect();
    assert!(broken.is_empty(), "links to no heading: {broken:?}");
}

// ---------------------------------------------------------------------------
// Option tables against the options taken.

#[test]
fn global_limits_and_admin_options_are_documented() {
    let readme = readme();
    let rows = table(section(&readme, "### `global`"), "option");
    assert_same(
        "`global` table",
        &documented(&rows),
        &options_of("global", &with_global(PROBE)),
    );
    assert_same(
        "`global`'s `log` row",
        &properties(&row(&rows, "log")[0]),
        &properties_of("log", &with_global(&format!("log {PROBE}=1"))),
    );
    let admin = options_of(
        "admin",
        &with_global(&format!("admin \"127.0.0.1:0\" {{ {PROBE} 1; }}")),
    );
    let admin_row = row(&rows, "admin").join(" | ");
    let undocumented: Vec<_> = admin
        .iter()
        .filter(|name| !names_in(&admin_row).contains(*name))
        .collect();
    assert!(
        undocumented.is_empty(),
        "`global`'s `admin` row does not name the admin options {undocumented:?}: {admin_row}"
    );
    let limits = table(section(&readme, "## Security and limits"), "option");
    assert_same(
        "limits table",
        &documented(&limits),
        &options_of("limits", &with_global(&format!("limits {{ {PROBE} 1; }}"))),
    );
}

#[test]
fn site_options_are_documented() {
    let readme = readme();
    let rows = table(section(&readme, "### `site`"), "option");
    let site = |line: &str| {
        format!("site \"127.0.0.1:0\" {{\n{line}\nroute \"/*\" {{ respond 200; }}\n}}\n")
    };
    assert_same(
        "`site` table",
        &documented(&rows),
        &options_of("site", &site(&format!("{PROBE} 1"))),
    );
    assert_same(
        "`site`'s `tls` row",
        &properties(&row(&rows, "tls")[0]),
        &properties_of("tls", &site(&format!("tls {PROBE}=1"))),
    );
}

/// The README section holding each block's table: the first table in it
/// whose first column is "option".
fn block_section(block: &str) -> &'static str {
    match block {
        "global" => "### `global`",
        "log" => "#### Process logs (`log`)",
        "limits" => "## Security and limits",
        "admin" => "## The admin endpoint",
        "site" => "### `site`",
        "tls" => "## TLS",
        other => panic!("tests/docs.rs does not know where `{other}`'s table is: add it"),
    }
}

/// Each block of the site file has a README table that lists exactly its
/// declared options, each with the declared default, as a handler's does.
#[test]
fn block_tables_are_their_declarations() {
    let readme = readme();
    for block in teebox::config::BLOCKS {
        let heading = block_section(block.name);
        let rows = table(section(&readme, heading), "option");
        let differences = table_differences(&rows, block.options);
        assert!(
            differences.is_empty(),
            "{heading}: the README's table of `{}` and its declaration differ:\n  {}",
            block.name,
            differences.join("\n  ")
        );
    }
}

#[test]
fn every_handler_has_its_section() {
    let readme = readme();
    for kind in REGISTRY {
        let role = match kind {
            HandlerKind::Middleware { .. } => "middleware",
            HandlerKind::Terminal { .. } => "terminal",
        };
        section(&readme, &format!("### `{}` ({role})", kind.name()));
    }
    let chain = section(&readme, "### `route`");
    let paragraph = chain
        .split("\n\n")
        .find(|p| p.starts_with("**The handler chain.**"))
        .expect("`route` explains the handler chain");
    let named = names_in(paragraph);
    for kind in REGISTRY {
        assert!(
            named.contains(kind.name()),
            "the handler chain paragraph does not name `{}`:\n{paragraph}",
            kind.name()
        );
    }
}

#[test]
fn handler_options_are_documented() {
    let readme = readme();
    let proxy = table(section(&readme, "### `reverse_proxy` (terminal)"), "option");
    assert_same(
        "`reverse_proxy` table",
        &documented(&proxy),
        &options_of(
            "reverse_proxy",
            &in_route(&format!(
                "reverse_proxy \"http://127.0.0.1:1\" {{ {PROBE} 1; }}"
            )),
        ),
    );
    let record = table(section(&readme, "### `record` (middleware)"), "option");
    assert_same(
        "`record` table",
        &documented(&record),
        &options_of(
            "record",
            &in_route(&format!(
                "record \"traffic.jsonl\" {{ {PROBE} 1; }}\nrespond 200"
            )),
        ),
    );
    let rewrite = table(section(&readme, "### `rewrite` (middleware)"), "form");
    let rewrite_forms: String = rewrite.iter().map(|r| r[0].clone()).collect();
    let rewrite_properties = properties_of(
        "rewrite",
        &in_route(&format!("rewrite {PROBE}=\"/\"\nrespond 200")),
    );
    assert_same(
        "`rewrite` table",
        &properties(&rewrite_forms),
        &rewrite_properties,
    );
    let request_body = section(&readme, "### `request_body` (middleware)");
    let shown: BTreeSet<String> = code_blocks(request_body)
        .iter()
        .flat_map(|b| {
            b.text
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|word| Some(word.split_once('=')?.0.to_string()))
        .collect();
    assert_same(
        "`request_body` section",
        &shown,
        &properties_of(
            "request_body",
            &in_route(&format!("request_body {PROBE}=1\nrespond 200")),
        ),
    );
    let compare = table(
        section(&readme, "### Comparing responses (`compare`)"),
        "option",
    );
    assert_same(
        "`compare` table",
        &documented(&compare),
        &options_of(
            "compare",
            &mirror_with(&format!("compare {{ {PROBE} 1; }}")),
        ),
    );
}

/// How a README table names an option, as the reference does: the
/// leading name of the first code span (with its `=` for a property:
/// `` `max_size=` ``), or the cell itself without one ("upstreams
/// (arguments)").
fn row_name(cell: &str) -> String {
    match code_spans(cell).first() {
        Some(span) => match leading_name(span) {
            Some(name) if span[name.len()..].starts_with('=') => format!("{name}="),
            Some(name) => name.to_string(),
            None => span.to_string(),
        },
        None => cell.to_string(),
    }
}

/// A declared default as a README table shows it: a value as code
/// (`` `60s` ``), what no value means as words ("system roots").
fn shown_default(unset: Unset) -> String {
    match unset {
        Unset::Default(text) => format!("`{text}`"),
        other => other.shown().to_string(),
    }
}

/// How `rows` (a README table) and `declared` (a declared table) differ:
/// an option with no row, a row with no option, or another default.
fn table_differences(rows: &[Vec<String>], declared: &options::Table) -> Vec<String> {
    let in_readme: BTreeMap<String, String> = rows
        .iter()
        .map(|row| (row_name(&row[0]), row[2].clone()))
        .collect();
    let in_code: BTreeMap<String, String> = declared
        .iter()
        .map(|d| (options::shown_name(*d), shown_default(d.unset())))
        .collect();
    let mut differences = Vec::new();
    if in_readme.len() != rows.len() {
        differences.push("an option has two rows".to_string());
    }
    for (name, default) in &in_code {
        match in_readme.get(name) {
            None => differences.push(format!("{name}: declared, but has no row")),
            Some(shown) if shown != default => differences.push(format!(
                "{name}: the README's default is {shown:?}, the declared one {default:?}"
            )),
            Some(_) => {}
        }
    }
    for name in in_readme.keys().filter(|n| !in_code.contains_key(*n)) {
        differences.push(format!("{name}: has a row, but is not declared"));
    }
    differences
}

/// The heading (outside code blocks) that names a block in code between
/// parentheses, as "### Comparing responses (`compare`)" does.
fn heading_naming(markdown: &str, block: &str) -> Option<String> {
    let needle = format!("(`{block}`)");
    let mut fenced = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') && line.contains(&needle) {
            return Some(line.to_string());
        }
    }
    None
}

/// Every handler whose options are declared has a table in its README
/// section that lists exactly those options, each with the declared
/// default: the declaration (printed by `validate --explain`) is the
/// source, the README follows it. So does a nested block's table (in the
/// section whose heading names the block: "Comparing responses
/// (`compare`)"), unless the block takes only its parent's options over
/// (a mirror's `target`): the parent's rows are then its documentation.
#[test]
fn handler_tables_are_their_declarations() {
    let readme = readme();
    let mut declared_handlers = 0;
    let mut nested_tables = 0;
    for kind in REGISTRY {
        let declared = kind.options();
        declared_handlers += 1;
        let role = match kind.is_terminal() {
            true => "terminal",
            false => "middleware",
        };
        let heading = format!("### `{}` ({role})", kind.name());
        let rows = table(section(&readme, &heading), "option");
        let differences = table_differences(&rows, declared);
        assert!(
            differences.is_empty(),
            "{heading}: the README's table and the declaration differ:\n  {}",
            differences.join("\n  ")
        );
        for block in declared.iter() {
            let Some(inner) = block.nested() else {
                continue;
            };
            let of_parent = |d: &dyn options::Declaration| {
                declared
                    .iter()
                    .any(|p| p.name() == d.name() && p.place() == d.place())
            };
            let takes_over = inner
                .iter()
                .filter(|d| d.place() == options::Place::Child)
                .all(|d| of_parent(*d));
            if takes_over {
                continue;
            }
            nested_tables += 1;
            let heading = heading_naming(&readme, block.name()).unwrap_or_else(|| {
                panic!(
                    "`{}`'s `{}` block has no README section naming it (`{}`)",
                    kind.name(),
                    block.name(),
                    block.name()
                )
            });
            let rows = table(section(&readme, &heading), "option");
            let differences = table_differences(&rows, inner);
            assert!(
                differences.is_empty(),
                "{heading}: the README's table and the declaration differ:\n  {}",
                differences.join("\n  ")
            );
        }
    }
    assert!(
        declared_handlers >= 7,
        "only {declared_handlers} handlers are declared"
    );
    assert!(
        nested_tables >= 1,
        "no nested block's table was checked (`compare`'s should be)"
    );
}

#[test]
fn mirror_and_target_options_are_documented() {
    let readme = readme();
    let rows = table(section(&readme, "### `mirror` (middleware)"), "option");
    assert_same(
        "`mirror` table",
        &documented(&rows),
        &options_of("mirror", &mirror_with(&format!("{PROBE} 1"))),
    );
    assert_same(
        "`mirror`'s `replace_body` row",
        &properties(&row(&rows, "replace_body")[0]),
        &properties_of(
            "replace_body",
            &mirror_with(&format!("replace_body {PROBE}=\"a\"")),
        ),
    );
    assert_same(
        "`mirror`'s `rewrite` row",
        &properties(&row(&rows, "rewrite").join(" ")),
        &properties_of("rewrite", &mirror_with(&format!("rewrite {PROBE}=\"/\""))),
    );
    let target = listed_in_help(
        &mirror_with("target \"http://127.0.0.1:2\" { name \"x\"; }"),
        "`name` is an option of the whole mirror",
        "a `target` takes: ",
    );
    // The `target` row names them in parentheses, the section on targets
    // in its first sentence.
    let target_row = row(&rows, "target").join(" ");
    let (_, listed) = target_row
        .split_once("options of its own (")
        .expect("the `target` row lists the options of a target");
    assert_same(
        "`mirror`'s `target` row",
        &names_in(listed.split(')').next().unwrap_or_default()),
        &target,
    );
    let targets = section(&readme, "#### Targets with options of their own");
    let sentence = targets
        .split_once("A `target` node adds a target run with its own ")
        .and_then(|(_, rest)| rest.split(';').next())
        .expect("the section on targets lists their options");
    assert_same("the section on targets", &names_in(sentence), &target);
}

// ---------------------------------------------------------------------------
// What the admin endpoint prints, against its tables.

fn admin_get(
    running: &teebox::server::Running,
    path: &str,
    json: bool,
) -> http::Request<teebox::message::Body> {
    let url = format!(
        "http://{}{path}",
        running.admin_addr().expect("an admin endpoint")
    );
    let mut builder = client::req("GET", &url);
    if json {
        builder = builder.header("accept", "application/json");
    }
    builder.body(client::full("")).unwrap()
}

#[tokio::test]
async fn metrics_and_target_counters_are_documented() {
    let shadow = Backend::ok().await;
    let primary = Backend::ok().await;
    let running = common::start(&format!(
        "global {{\n  admin \"127.0.0.1:0\"\n}}\nsite \"127.0.0.1:0\" {{\n  route \"/*\" {{\n    mirror {:?} {{\n      compare {{ headers \"Content-Type\"; }}\n    }}\n    reverse_proxy {:?}\n  }}\n}}\n",
        shadow.url(),
        primary.url()
    ))
    .await;
    // One request through, so that every family has a sample.
    client::get(&format!("{}/x", base_url(&running))).await;
    shadow.wait_for(1).await;
    let metrics = Client::http1()
        .send(admin_get(&running, "/metrics", false))
        .await
        .expect("/metrics")
        .text();

    let readme = readme();
    let rows = table(section(&readme, "### Metrics and health"), "metric");
    let families: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    assert_same("metrics table", &documented(&rows), &families);
    // Every value an enumerated label takes is in its family's row.
    let mut missing = BTreeSet::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let family = line.split(['{', ' ']).next().unwrap_or_default();
        for label in ["outcome", "result", "class"] {
            let Some((_, rest)) = line.split_once(&format!("{label}=\"")) else {
                continue;
            };
            let value = rest.split('"').next().unwrap_or_default();
            let documented = row(&rows, family).join(" | ");
            let named = names_in(&documented).contains(value)
                || (label == "class" && documented.contains("`1xx`…`5xx`"));
            if !named {
                missing.insert(format!("{family}{{{label}=\"{value}\"}}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "label values the metrics table does not name: {missing:?}"
    );

    let json = Client::http1()
        .send(admin_get(&running, "/targets", true))
        .await
        .expect("/targets")
        .text();
    let targets: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let target = &targets[0];
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object()
            .unwrap_or_else(|| panic!("not an object: {v}"))
            .keys()
            .cloned()
            .collect()
    };
    let runtime = section(&readme, "## The admin endpoint");
    let described = runtime
        .split("\n\n")
        .find(|p| p.contains("The JSON list has one object per target"))
        .expect("the README describes the JSON list of targets");
    let described = described
        .split_once("The JSON list has one object per target")
        .map_or("", |(_, rest)| rest);
    assert_same(
        "`GET /targets` fields",
        &names_in(&outside_parentheses(described)),
        &keys(target),
    );
    let guaranteed = section(&readme, "## Mirroring: what is guaranteed");
    let mut counters = documented(&table(guaranteed, "counter"));
    // A histogram on /metrics, not a counter of /targets.
    counters.remove("latency");
    assert_same("counters table", &counters, &keys(&target["counters"]));
    // `/targets` shows the comparison's counts as `/metrics` labels them.
    let compared = keys(&target["compare"]);
    let named = names_in(&row(&rows, "teebox_mirror_compare_total").join(" | "));
    let missing: Vec<_> = compared.iter().filter(|k| !named.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "`compare` counts of /targets the metrics table does not name: {missing:?}"
    );
}

// ---------------------------------------------------------------------------
// The command line.

fn teebox_help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_teebox"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run teebox {args:?}: {e}"));
    assert!(output.status.success(), "teebox {args:?} failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn every_command_and_flag_is_documented() {
    let readme = readme();
    let rows = table(section(&readme, "## Command line"), "command");
    let help = teebox_help(&["--help"]);
    let commands: Vec<&str> = help
        .split_once("Commands:\n")
        .expect("teebox --help lists commands")
        .1
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 5, "{help}");
    let mut missing = Vec::new();
    for command in commands {
        let row = rows
            .iter()
            .find(|r| r[0].starts_with(&format!("`teebox {command}")));
        let Some(row) = row else {
            missing.push(format!("teebox {command}"));
            continue;
        };
        let help = teebox_help(&[command, "--help"]);
        let flags: BTreeSet<&str> = help
            .split_whitespace()
            .map(|w| w.trim_end_matches([',', ':', ')', '.']))
            .filter(|w| w.starts_with("--") && *w != "--help")
            .collect();
        for flag in flags {
            if !row[0].contains(flag) {
                missing.push(format!("teebox {command} {flag}"));
            }
        }
    }
    for flag in ["--version"] {
        if !rows.iter().any(|r| r[0].contains(flag)) {
            missing.push(format!("teebox {flag}"));
        }
    }
    assert!(
        missing.is_empty(),
        "the command table does not show {missing:?}"
    );
}

// ---------------------------------------------------------------------------
// The examples' walkthroughs.

/// `examples/mirror-policy.kdl`'s mirror, sent the requests its comment
/// shows: alice is outside the cohort, carol in staging's fifth only, noah
/// in the canary's twentieth too, a 404 and a write are never copied.
#[tokio::test]
async fn mirror_policy_example_copies_what_its_comment_says() {
    let example = read("examples/mirror-policy.kdl");
    for promise in [
        "'X-User-Id: alice'",
        "'X-User-Id: carol'",
        "'X-User-Id: noah'",
        "/missing",
        "-X POST",
    ] {
        assert!(
            example.contains(promise),
            "the example's comment no longer shows {promise}: update this test with it"
        );
    }
    let prod = Backend::with(|req| match req.uri.path() {
        "/missing" => Reply::ok("not here\n").status(404),
        _ => Reply::ok("hello from prod\n"),
    })
    .await;
    let staging = Backend::ok().await;
    let canary = Backend::ok().await;
    // The example's own front half (its mirror and admin endpoint), on
    // port 0 and in front of recording backends instead of its own sites.
    let (front, _) = example
        .split_once("// prod")
        .expect("the example's sites are marked // prod");
    let kdl = front
        .replace("127.0.0.1:2019", "127.0.0.1:0")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8081", &prod.authority())
        .replace("127.0.0.1:8082", &staging.authority())
        .replace("127.0.0.1:8083", &canary.authority());
    let running = common::start(&kdl).await;
    let base = base_url(&running);
    let client = Client::http1();
    for (method, path, user) in [
        ("GET", "/catalog/1", Some("alice")),
        ("GET", "/catalog/1", Some("carol")),
        ("GET", "/catalog/1", Some("noah")),
        ("GET", "/missing", Some("carol")),
        ("POST", "/orders", Some("carol")),
    ] {
        let mut req = client::req(method, &format!("{base}{path}"));
        if let Some(user) = user {
            req = req.header("x-user-id", user);
        }
        let resp = client
            .send(req.body(client::full("{}")).unwrap())
            .await
            .expect("an answer");
        assert_eq!(resp.status, if path == "/missing" { 404 } else { 200 });
    }
    // Every request is accounted for on each target before anything is
    // compared: sent, or counted as not copied.
    let counters = |running: &teebox::server::Running| {
        let request = admin_get(running, "/targets", true);
        async move {
            let json = Client::http1()
                .send(request)
                .await
                .expect("/targets")
                .text();
            let targets: serde_json::Value = serde_json::from_str(&json).expect("JSON");
            targets
                .as_array()
                .expect("a list")
                .iter()
                .map(|t| {
                    (
                        t["url"].as_str().unwrap().to_string(),
                        t["counters"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let accounted = |c: &serde_json::Value| {
        [
            "succeeded",
            "sampled_out",
            "skipped_method",
            "primary_filtered",
        ]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or(0))
        .sum::<u64>()
    };
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    let settled = loop {
        let now = counters(&running).await;
        if now.iter().all(|(_, c)| accounted(c) == 5) {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "copies not accounted for: {now:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let of = |url: String| {
        settled
            .iter()
            .find(|(u, _)| *u == url)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("no target {url} in {settled:#?}"))
    };
    let expect = |c: &serde_json::Value, sent: u64, sampled_out: u64, filtered: u64| {
        assert_eq!(
            (
                c["sent"].as_u64(),
                c["sampled_out"].as_u64(),
                c["primary_filtered"].as_u64(),
                c["skipped_method"].as_u64()
            ),
            (Some(sent), Some(sampled_out), Some(filtered), Some(1)),
            "{c:#}"
        );
    };
    // Staging: carol and noah; alice sampled out; carol's 404 filtered.
    expect(&of(staging.url()), 2, 1, 1);
    // The canary: noah only.
    expect(&of(canary.url()), 1, 3, 0);
    let users = |backend: &Backend| -> Vec<String> {
        backend
            .requests()
            .iter()
            .map(|r| r.header("x-user-id").unwrap_or("-").to_string())
            .collect()
    };
    assert_eq!(users(&staging), ["carol", "noah"]);
    assert_eq!(users(&canary), ["noah"]);
    let port = running.addr().port();
    for copy in staging.requests() {
        assert_eq!(
            copy.header("host"),
            Some(format!("127.0.0.1-shadow:{port}").as_str())
        );
    }
    let copy = canary.only();
    assert_eq!(copy.header("host"), Some("canary.internal"));
    assert_eq!(copy.header("x-canary"), Some("1"));
}
