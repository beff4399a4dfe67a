//! From a KDL document to a [`Config`], collecting every problem on the way.

mod cross_checks;
mod global;
mod route;
mod site;
mod syntax;

use std::path::PathBuf;

use kdl::{KdlDocument, KdlNode};
use miette::SourceSpan;

use super::diag::{Problem, Problems};
use super::handler::{HandlerConfig, Registry};
use super::model::*;
use super::options::Table;
use super::reader::{name_span, Reader};
use super::value;

pub use syntax::syntax_problems;

/// The handlers of a route left out of the config because it, or its site,
/// has errors. They are still checked, so that `validate` shows their
/// warnings beside those errors.
type Unfinished = Vec<Placed<dyn HandlerConfig>>;

/// A block of the site file itself, rather than a handler's, with its
/// declared options.
#[derive(Debug)]
pub struct FileBlock {
    pub name: &'static str,
    /// Where it is written, for `teebox validate --explain`.
    pub written: &'static str,
    pub options: &'static Table,
}

/// Every block of the site file whose options are declared, outer blocks
/// first. (`route` is the matchers and the handler chain: see the
/// handlers' own tables.)
pub static BLOCKS: &[FileBlock] = &[
    FileBlock {
        name: "global",
        written: "global { … }, at most once",
        options: global::OPTIONS,
    },
    FileBlock {
        name: "log",
        written: "global { log level=… format=… }",
        options: global::LOG_OPTIONS,
    },
    FileBlock {
        name: "limits",
        written: "global { limits { … } }",
        options: super::limits::OPTIONS,
    },
    FileBlock {
        name: "admin",
        written: "global { admin ADDRESS { … } }",
        options: global::ADMIN_OPTIONS,
    },
    FileBlock {
        name: "site",
        written: "site ADDRESS… { … }, one or more",
        options: site::OPTIONS,
    },
    FileBlock {
        name: "tls",
        written: "site … { tls cert=… key=… }",
        options: site::TLS_OPTIONS,
    },
];

/// The block of the site file named `name`.
pub fn block(name: &str) -> Option<&'static FileBlock> {
    BLOCKS.iter().find(|b| b.name == name)
}

/// Decodes a parsed document. Returns `None` when any error was recorded.
pub fn document(
    doc: &KdlDocument,
    base_dir: PathBuf,
    source: super::Source,
    registry: Registry,
    problems: &mut Problems,
) -> Option<Config> {
    let mut r = Reader::new(problems, base_dir.clone());
    let mut global_node: Option<&KdlNode> = None;
    let mut sites = Vec::new();
    let mut unfinished = Vec::new();
    let mut site_count = 0;
    let mut unknown = false;
    for node in doc.nodes() {
        match node.name().value() {
            "global" => {
                if let Some(first) = global_node {
                    r.push(
                        Problem::error(name_span(node), "duplicate `global` block")
                            .label("second global")
                            .also(name_span(first), "first global")
                            .help("put every global option in one `global` block"),
                    );
                    continue;
                }
                global_node = Some(node);
            }
            "site" => {
                site_count += 1;
                sites.extend(site::site(
                    node,
                    &mut r,
                    &base_dir,
                    registry,
                    &mut unfinished,
                ));
            }
            other => {
                unknown = true;
                let p =
                    Problem::error(name_span(node), format!("unknown top-level node `{other}`"))
                        .label("unknown node");
                r.push(match value::suggest(other, ["global", "site"]) {
                    Some(near) => p.help(format!("did you mean `{near}`?")),
                    None => p.help("the top level holds one `global` block and `site` blocks"),
                });
            }
        }
    }
    // A file without `global` reads as one with an empty block: every
    // option gets its declared default.
    let global = global::global(global_node.unwrap_or(&KdlNode::new("global")), &mut r);
    if site_count == 0 && !unknown {
        r.push(
            Problem::error(SourceSpan::new(0.into(), 0), "no `site` block: nothing to serve")
                .help("add one, e.g. site \"127.0.0.1:8080\" { route \"/*\" { respond 200 \"hello\\n\" } }"),
        );
    }
    cross_checks::shared_addresses(&sites, &mut r);
    if let Some(admin) = global.as_ref().and_then(|g| g.admin.as_ref()) {
        cross_checks::admin_address(&admin.address, &sites, &mut r);
    }
    cross_checks::handler_checks(&sites, &unfinished, &mut r);
    super::habits::single_quotes(doc)
        .into_iter()
        .for_each(|p| r.push(p));
    if r.has_errors() {
        return None;
    }
    Some(Config {
        source,
        path: None,
        base_dir,
        global: global?,
        sites,
    })
}
