//! From a KDL document to a [`Config`], collecting every problem on the way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use kdl::{KdlDocument, KdlError, KdlNode};
use miette::SourceSpan;

use super::diag::{Problem, Problems};
use super::matchers::{HeaderMatch, HostPattern, PathPattern, RouteMatch};
use super::model::*;
use super::reader::{arguments, children, name_span, Reader, Repeat};
use super::value::{self, Spanned};
use crate::handlers::{self, HandlerKind, MiddlewareConfig, TerminalConfig};
use crate::passwords;

/// Turns kdl's syntax errors into problems, with a clearer word for the most
/// common habits from elsewhere: KDL v1's bare `true`, `false` and `null`,
/// and nginx's `# comments`.
pub fn syntax_problems(text: &str, err: &KdlError) -> Vec<Problem> {
    let mut bare_words = Vec::new();
    let mut others = Vec::new();
    let mut comment_lines = Vec::new();
    for d in &err.diagnostics {
        let span = d.span;
        let found = text
            .get(span.offset()..span.offset() + span.len())
            .unwrap_or("");
        let message = d.message.as_deref().unwrap_or("");
        if super::habits::is_hash_comment(message, found) {
            // kdl may stumble more than once on one comment's words.
            let line = text
                .get(..span.offset())
                .map_or(0, |t| t.matches('\n').count());
            if !comment_lines.contains(&line) {
                comment_lines.push(line);
                bare_words.push(super::habits::hash_comment(SourceSpan::new(
                    span.offset().into(),
                    1,
                )));
            }
            continue;
        }
        if let Some(word) = ["true", "false", "null"].into_iter().find(|w| *w == found) {
            bare_words.push(
                Problem::error(span, format!("bare `{word}` is not a KDL v2 value"))
                    .label(format!("use #{word}"))
                    .help(format!(
                        "KDL v2 writes booleans and null with a #: use #{word} (or \"{word}\" if you meant a string)"
                    )),
            );
            continue;
        }
        let message = d.message.clone().unwrap_or_else(|| "invalid KDL".into());
        let digits = !found.is_empty() && found.bytes().all(|b| b.is_ascii_digit());
        let known = match message.as_str() {
            "No closing '}' for child block" => Some((
                "unclosed block: this `{` has no matching `}`",
                "opened here",
                "add the missing `}`",
            )),
            "Unexpected newline in single-line quoted string" => Some((
                "unclosed string",
                "not closed on this line",
                "close it with \" on the same line; a multi-line string starts and ends with \"\"\" on lines of their own",
            )),
            "Expected quoted string" if found.starts_with("\"\"\"") => Some((
                "unclosed multi-line string",
                "opened here",
                "end it with \"\"\" on a line of its own",
            )),
            "Expected end of document" if found == "}" => Some((
                "unexpected `}`: no block is open here",
                "nothing to close",
                "remove it, or look for a block closed too early above",
            )),
            _ if digits => Some((
                "number out of range",
                "too large",
                "integers must fit in 128 bits; no option takes one this large",
            )),
            _ => None,
        };
        let cascade = matches!(
            message.as_str(),
            "No closing '}' for child block"
                | "Closing '}' was not found after nodes"
                | "Expected end of document"
        );
        others.push((
            cascade,
            match known {
                Some((message, label, help)) => {
                    Problem::error(span, message).label(label).help(help)
                }
                None => {
                    let p = Problem::error(span, format!("KDL syntax error: {message}"))
                        .label(d.label.clone().unwrap_or_else(|| "here".into()));
                    match &d.help {
                        Some(help) => p.help(help.clone()),
                        None => p,
                    }
                }
            },
        ));
    }
    // After a real syntax error kdl's recovery reports follow-on errors
    // that only confuse; the first one is the one to fix. Bare `true` and
    // friends, and `#` comments, are independent of each other, so each
    // is kept.
    // A block left open is often the echo of another mistake inside it.
    others.sort_by_key(|(cascade, p)| (*cascade, p.span().offset()));
    bare_words.extend(others.into_iter().take(1).map(|(_, p)| p));
    bare_words
}

/// Decodes a parsed document. Returns `None` when any error was recorded.
pub fn document(
    doc: &KdlDocument,
    base_dir: PathBuf,
    source: super::Source,
    problems: &mut Problems,
) -> Option<Config> {
    let mut r = Reader::new(problems, base_dir.clone());
    let mut global_node: Option<&KdlNode> = None;
    let mut sites = Vec::new();
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
                sites.extend(site(node, &mut r, &base_dir));
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
    let global = match global_node {
        Some(node) => global(node, &mut r),
        None => Some(Global {
            log: LogConfig::default(),
            grace_period: DEFAULT_GRACE_PERIOD,
            admin: None,
            limits: Limits::default(),
        }),
    };
    if site_count == 0 && !unknown {
        r.push(
            Problem::error(SourceSpan::new(0.into(), 0), "no `site` block: nothing to serve")
                .help("add one, e.g. site \"127.0.0.1:8080\" { route \"/*\" { respond 200 \"hello\\n\" } }"),
        );
    }
    check_shared_addresses(&sites, &mut r);
    if let Some(admin) = global.as_ref().and_then(|g| g.admin.as_ref()) {
        check_admin_address(&admin.address, &sites, &mut r);
    }
    warn_self_mirrors(doc, &sites, &mut r);
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

fn global(node: &KdlNode, r: &mut Reader) -> Option<Global> {
    r.no_properties(node);
    r.args_only(
        node,
        0,
        "options go inside the block: global { grace_period \"10s\" }",
    );
    let opts = r.options(
        node,
        &[
            ("admin", Repeat::Once),
            ("log", Repeat::Once),
            ("grace_period", Repeat::Once),
            ("limits", Repeat::Once),
        ],
    );
    let log = opts
        .one("log")
        .map(|n| log(n, r))
        .unwrap_or(Some(LogConfig::default()));
    let grace_period = opts
        .one("grace_period")
        .map(|n| r.value(n, "a duration such as \"10s\"", value::duration))
        .unwrap_or(Some(DEFAULT_GRACE_PERIOD));
    let admin = opts.one("admin").map(|n| admin(n, r));
    let limits = opts
        .one("limits")
        .map(|n| super::limits::decode(n, r))
        .unwrap_or(Some(Limits::default()));
    Some(Global {
        log: log?,
        grace_period: grace_period?,
        limits: limits?,
        admin: match admin {
            Some(a) => Some(a?),
            None => None,
        },
    })
}

fn log(node: &KdlNode, r: &mut Reader) -> Option<LogConfig> {
    r.no_children(node);
    r.known_properties(node, &["level", "format"]);
    let args = r.args_only(node, 0, "write log level=\"info\" format=\"text\"");
    // Each property is checked whatever the others hold: every mistake is
    // reported in one run.
    let level = match node.entry("level") {
        Some(entry) => r
            .check(value::one_of(
                entry,
                &["trace", "debug", "info", "warn", "error"],
            ))
            .map(Some),
        None => Some(None),
    };
    let format = match node.entry("format") {
        Some(entry) => r
            .check(value::one_of(entry, &["text", "json"]))
            .map(|f| match f {
                "json" => LogFormat::Json,
                _ => LogFormat::Text,
            }),
        None => Some(LogFormat::default()),
    };
    args?;
    Some(LogConfig {
        level: level?,
        format: format?,
    })
}

fn admin(node: &KdlNode, r: &mut Reader) -> Option<AdminConfig> {
    r.no_properties(node);
    let address = r
        .args_only(node, 1, "one listen address, such as \"127.0.0.1:2019\"")
        .and_then(|args| {
            r.check(
                value::listen_address(args[0]).map(|a| Spanned::new(a, value::value_span(args[0]))),
            )
        });
    let opts = r.options(
        node,
        &[
            ("user", Repeat::Many),
            ("users_file", Repeat::Once),
            ("allow_target", Repeat::Once),
            ("state_file", Repeat::Once),
            ("healthz_public", Repeat::Once),
        ],
    );
    let mut users_ok = true;
    let mut users = Vec::new();
    for user in opts.all("user") {
        match admin_user(user, r) {
            Some(user) => users.push(user),
            None => users_ok = false,
        }
    }
    let users_file = opts.one("users_file").map(|n| {
        let (path, span) = file_path(n, r)?;
        match passwords::read_users_file(&r.resolve(&path)) {
            Ok(mut from_file) => {
                users.append(&mut from_file);
                Some(path)
            }
            Err(err) => {
                users_file_problems(err, span, r);
                None
            }
        }
    });
    let allow_target = match opts.one("allow_target") {
        Some(n) => {
            r.no_children(n);
            r.no_properties(n);
            r.some_args(n, "one or more URL patterns")
                .and_then(|args| r.each(&args, value::non_empty_string))
        }
        None => Some(Vec::new()),
    };
    let state = opts.one("state_file").map(|n| {
        let entry = r.args(n, 1, "a file path")?.first().copied()?;
        let path = r.file_to_write(entry, "state_file")?;
        let span = value::value_span(entry);
        let full = r.resolve(&path);
        // The state is saved through a symlink only to a file that exists
        // (see `safe_write`): every change would be refused at runtime.
        if crate::safe_write::is_dangling_link(&full) {
            r.push(
                Problem::error(
                    span,
                    format!(
                        "{} is a symlink to a file that does not exist",
                        full.display()
                    ),
                )
                .label("runtime changes could not be saved here")
                .help("point the link at a file that exists, or give the path of the file itself"),
            );
            return None;
        }
        match crate::state_file::Saved::read(&full) {
            Ok(saved) => Some((path, saved)),
            Err(why) => {
                r.push(
                    Problem::error(span, why)
                        .label("the runtime changes saved here cannot be restored"),
                );
                None
            }
        }
    });
    let healthz_public = match opts.one("healthz_public") {
        Some(n) => r.value(n, "#true or #false", value::boolean),
        None => Some(true),
    };
    let users_file = match users_file {
        Some(file) => Some(file?),
        None => None,
    };
    let (state_file, saved_state) = match state {
        Some(state) => state.map(|(path, saved)| (Some(path), saved))?,
        None => (None, crate::state_file::Saved::default()),
    };
    if let (Some(addr), true) = (&address, users_ok) {
        if !addr.value.ip().is_loopback() && users.is_empty() {
            let why = match users_file {
                Some(_) => "its users_file names no users",
                None => "reachable from other hosts, with no credentials",
            };
            r.push(
                Problem::error(addr.span, format!("the admin endpoint on {} has no users", addr.value))
                    .label(why)
                    .help("add user \"NAME\" \"HASH\" (make the hash with `teebox hash-password`) or users_file, or listen on 127.0.0.1"),
            );
            return None;
        }
    }
    if !users_ok {
        return None;
    }
    Some(AdminConfig {
        address: address?,
        users,
        users_file,
        allow_target: allow_target?,
        state_file,
        saved_state,
        healthz_public: healthz_public?,
    })
}

/// `user "NAME" "HASH"`, the hash checked as the endpoint will use it.
fn admin_user(node: &KdlNode, r: &mut Reader) -> Option<(String, passwords::BcryptHash)> {
    let args = r.args(node, 2, "a user name and a bcrypt hash")?;
    let name =
        r.check(value::non_empty_string(args[0]).and_then(|name| {
            passwords::check_user_name(&name)
                .map(|()| name)
                .map_err(|why| {
                    Problem::error(value::value_span(args[0]), why)
                .label("not a user name")
                .help("HTTP Basic ends the user name at the first `:`: choose a name without one")
                })
        }));
    let hash = r.check(value::non_empty_string(args[1]).and_then(|hash| {
        passwords::BcryptHash::parse(&hash).map_err(|why| {
            let problem = Problem::error(
                value::value_span(args[1]),
                format!("{why}: make one with `teebox hash-password`"),
            );
            match why {
                passwords::HashError::TooCostly(_) => problem
                    .label("too slow to check")
                    .help("`teebox hash-password` makes hashes of cost 12"),
                _ => problem.label("not a bcrypt hash").help(
                    "the site file holds a bcrypt hash of the password, never the password itself",
                ),
            }
        })
    }));
    Some((name?, hash?))
}

fn users_file_problems(err: passwords::UsersFileError, span: SourceSpan, r: &mut Reader) {
    let format =
        "each line is name:bcrypt-hash; make a hash with `teebox hash-password` (or htpasswd -B)";
    match err {
        passwords::UsersFileError::BadLines { path, lines } => {
            for line in lines {
                r.push(
                    Problem::error(
                        span,
                        format!("{}:{}: {}", path.display(), line.number, line.why),
                    )
                    .label("in this users_file")
                    .help(format),
                );
            }
        }
        other => r.push(
            Problem::error(span, other.to_string())
                .label("cannot be used")
                .help(format!(
                    "{format}; a relative path starts at the site file's directory"
                )),
        ),
    }
}

/// An option's file path, relative to the site file, and where it is written.
fn file_path(node: &KdlNode, r: &mut Reader) -> Option<(PathBuf, SourceSpan)> {
    let entry = r.args(node, 1, "a file path")?.first().copied()?;
    r.check(value::non_empty_string(entry))
        .map(|p| (PathBuf::from(p), value::value_span(entry)))
}

fn site(node: &KdlNode, r: &mut Reader, base_dir: &std::path::Path) -> Option<Site> {
    r.no_properties(node);
    let addresses = match r.some_args(
        node,
        "one or more listen addresses, such as \"127.0.0.1:8080\"",
    ) {
        Some(args) => {
            let mut seen: Vec<Spanned<SocketAddr>> = Vec::new();
            for entry in args {
                let Some(addr) = r.check(value::listen_address(entry)) else {
                    continue;
                };
                let span = value::value_span(entry);
                if let Some(first) = seen.iter().find(|a| a.value == addr) {
                    r.push(
                        Problem::error(span, format!("address {addr} is listed twice"))
                            .label("again")
                            .also(first.span, "first here"),
                    );
                    continue;
                }
                seen.push(Spanned::new(addr, span));
            }
            Some(seen)
        }
        None => None,
    };
    if node.children().is_none() {
        r.push(
            Problem::error(
                name_span(node),
                "`site` needs a block with at least one `route`",
            )
            .label("no block")
            .help("site \"127.0.0.1:8080\" { route \"/*\" { respond 200 } }"),
        );
        return None;
    }
    let opts = r.options(
        node,
        &[
            ("host", Repeat::Once),
            ("tls", Repeat::Once),
            ("access_log", Repeat::Once),
            ("http_redirect", Repeat::Once),
            ("route", Repeat::Many),
        ],
    );
    let hosts = match opts.one("host") {
        Some(n) => {
            r.no_children(n);
            r.no_properties(n);
            r.some_args(n, "one or more host names").and_then(|args| {
                r.each(&args, |e| {
                    HostPattern::parse(e).map(|h| Spanned::new(h, value::value_span(e)))
                })
            })
        }
        None => Some(Vec::new()),
    };
    let tls = opts.one("tls").map(|n| tls(n, r, base_dir));
    let http_redirect = match opts.one("http_redirect") {
        Some(n) => {
            let addr = r.value(n, "a plain listen address, such as \":80\"", |e| {
                value::listen_address(e).map(|a| Spanned::new(a, value::value_span(e)))
            });
            if addr.is_some() && opts.one("tls").is_none() {
                r.push(
                    Problem::error(name_span(n), "`http_redirect` sends clients to this site's https:// URL, but the site has no `tls`")
                        .label("nothing to redirect to")
                        .help("add tls cert=\"...\" key=\"...\" to the site"),
                );
            }
            addr.map(Some)
        }
        None => Some(None),
    };
    let access_log = opts.one("access_log").map(|n| {
        let entry = r
            .args(n, 1, "\"stdout\", \"stderr\" or a file path")?
            .first()
            .copied()?;
        match r.check(value::non_empty_string(entry))?.as_str() {
            "stdout" => Some(AccessLogTarget::Stdout),
            "stderr" => Some(AccessLogTarget::Stderr),
            _ => r
                .file_to_write(entry, "access log")
                .map(AccessLogTarget::File),
        }
    });
    let route_nodes = opts.all("route");
    if route_nodes.is_empty() {
        r.push(
            Problem::error(name_span(node), "this site has no `route`")
                .label("no routes")
                .help("add route \"/*\" { ... } to answer requests"),
        );
    }
    let routes: Vec<Option<Route>> = route_nodes.iter().map(|n| route(n, r)).collect();
    let routes: Option<Vec<Route>> = routes.into_iter().collect();
    Some(Site {
        addresses: addresses?,
        hosts: hosts?,
        tls: match tls {
            Some(t) => Some(t?),
            None => None,
        },
        access_log: match access_log {
            Some(a) => Some(a?),
            None => None,
        },
        http_redirect: http_redirect?,
        routes: routes?,
        span: node.span(),
    })
}

fn tls(node: &KdlNode, r: &mut Reader, base_dir: &std::path::Path) -> Option<Spanned<TlsConfig>> {
    r.no_children(node);
    r.known_properties(node, &["cert", "key", "default"]);
    // Arguments here are most likely the cert and key written without
    // their names: "needs cert=" after that would only say it again.
    r.args_only(node, 0, "write tls cert=\"site.pem\" key=\"site-key.pem\"")?;
    let mut path = |key: &str| match node.entry(key) {
        Some(entry) => r
            .check(value::non_empty_string(entry))
            .map(|p| (PathBuf::from(p), value::value_span(entry))),
        None => {
            r.push(
                Problem::error(name_span(node), format!("`tls` needs {key}=\"...\""))
                    .label(format!("no {key}"))
                    .help("write tls cert=\"site.pem\" key=\"site-key.pem\""),
            );
            None
        }
    };
    let cert = path("cert");
    let key = path("key");
    let default = match node.entry("default") {
        Some(entry) => r.check(value::boolean(entry)),
        None => Some(false),
    };
    let ((cert, cert_span), (key, _)) = (cert?, key?);
    // Relative paths resolve against the site file's directory.
    let certified =
        match crate::certs::load_certified_key(&base_dir.join(&cert), &base_dir.join(&key)) {
            Ok(certified) => certified,
            Err(why) => {
                r.push(
                Problem::error(cert_span, why)
                    .label("unusable certificate or key")
                    .help(
                        "give a PEM certificate chain and the PEM private key that belongs to it",
                    ),
            );
                return None;
            }
        };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if let Some(expiry) = crate::certs::not_after(&certified).filter(|t| *t < now) {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(expiry.max(0) as u64);
        r.push(
            Problem::warning(
                cert_span,
                format!(
                    "the certificate expired on {}",
                    humantime::format_rfc3339_seconds(when)
                ),
            )
            .label("expired")
            .help("clients will refuse it: renew it, then reload"),
        );
    }
    Some(Spanned::new(
        TlsConfig {
            cert,
            key,
            default: default?,
            certified,
        },
        node.span(),
    ))
}

/// One handler node, decoded, with its place in the chain.
enum Step {
    Middleware(Option<Box<dyn MiddlewareConfig>>),
    Terminal(Option<Box<dyn TerminalConfig>>),
}

fn route(node: &KdlNode, r: &mut Reader) -> Option<Route> {
    r.no_properties(node);
    let path = r
        .args_only(node, 1, "one path pattern, such as \"/api/*\" or \"/*\"")
        .and_then(|args| r.check(PathPattern::parse(args[0])));
    if node.children().is_none() {
        r.push(
            Problem::error(name_span(node), "`route` needs a block of handlers")
                .label("no block")
                .help("route \"/*\" { respond 200 \"hello\\n\" }"),
        );
        return None;
    }
    let mut methods = Vec::new();
    let mut headers = Vec::new();
    let mut steps: Vec<(Step, &KdlNode)> = Vec::new();
    let mut ok = true;
    for child in children(node) {
        let name = child.name().value();
        // `header` with a block edits response headers; without one it is a
        // matcher on request headers (see README).
        let is_matcher = name == "method" || (name == "header" && child.children().is_none());
        if is_matcher {
            let matched = route_matcher(child, r, &mut methods, &mut headers).is_some();
            if let (true, Some((_, first))) = (matched, steps.first()) {
                r.push(matcher_among_handlers(child, first));
            }
            ok &= matched;
            continue;
        }
        match handlers::find(name) {
            Some(HandlerKind::Middleware { decode, .. }) => {
                steps.push((Step::Middleware(decode(child, r)), child))
            }
            Some(HandlerKind::Terminal { decode, .. }) => {
                steps.push((Step::Terminal(decode(child, r)), child))
            }
            None => {
                ok = false;
                let mut known = vec!["method", "header"];
                known.extend(
                    handlers::REGISTRY
                        .iter()
                        .map(|k| k.name())
                        .filter(|n| *n != "header"),
                );
                let known = known.into_iter();
                let p = Problem::error(
                    name_span(child),
                    format!("unknown handler or matcher `{name}`"),
                )
                .label("unknown");
                r.push(match value::suggest(name, known.clone()) {
                    Some(near) => p.help(format!("did you mean `{near}`?")),
                    None => p.help(format!(
                        "a route holds: {}",
                        known.collect::<Vec<_>>().join(", ")
                    )),
                });
            }
        }
    }
    warn_body_limits(steps.iter().map(|(_, n)| *n), r);
    let mut middleware = Vec::new();
    let mut terminal: Option<(Option<Box<dyn TerminalConfig>>, &KdlNode)> = None;
    for (step, child) in steps {
        if let Some((_, end)) = &terminal {
            ok = false;
            let (this, end_span, end) = (child.name().value(), name_span(end), end.name().value());
            let help = match step {
                Step::Middleware(_) => format!("move `{this}` before `{end}`"),
                Step::Terminal(_) => format!(
                    "a route ends with exactly one of {}: remove one, or give it a route of its own",
                    handlers::terminal_names().join(", ")
                ),
            };
            r.push(
                Problem::error(
                    name_span(child),
                    format!("`{this}` comes after `{end}`, which ends the chain"),
                )
                .label("never runs")
                .also(end_span, "the chain ends here")
                .help(help),
            );
            continue;
        }
        match step {
            Step::Middleware(Some(m)) => middleware.push(m),
            Step::Terminal(t) => terminal = Some((t, child)),
            Step::Middleware(None) => ok = false,
        }
    }
    let terminal = match terminal {
        Some((t, _)) => t,
        // An unknown node may well be the misspelled terminal: its own
        // error says so, and a second one would only distract.
        None if !ok => None,
        None => {
            r.push(
                Problem::error(name_span(node), "this route has no handler that answers")
                    .label("no terminal handler")
                    .help(format!(
                        "end the route with one of: {}",
                        handlers::terminal_names().join(", ")
                    )),
            );
            None
        }
    };
    if !ok {
        return None;
    }
    Some(Route {
        matcher: RouteMatch {
            path: path?,
            methods,
            headers,
        },
        middleware,
        terminal: terminal?,
        span: node.span(),
    })
}

/// `request_body` after a `mirror` works (a refused request is not
/// copied) but the mirror reads and buffers the body before the limit is
/// checked; a second `request_body` is one limit too many.
fn warn_body_limits<'n>(handlers: impl Iterator<Item = &'n KdlNode>, r: &mut Reader) {
    let mut mirror: Option<&KdlNode> = None;
    let mut limit: Option<&KdlNode> = None;
    for node in handlers {
        match node.name().value() {
            "mirror" => mirror = mirror.or(Some(node)),
            "request_body" => {
                if let Some(first) = limit {
                    r.push(
                        Problem::warning(name_span(node), "a second `request_body` in this route")
                            .label("another limit")
                            .also(name_span(first), "the first")
                            .help("keep one: the smaller max_size is the one that holds"),
                    );
                    continue;
                }
                limit = Some(node);
                if let Some(mirror) = mirror {
                    r.push(
                        Problem::warning(name_span(node), "`request_body` comes after `mirror`")
                            .label("checked after the mirror has started copying the body")
                            .also(name_span(mirror), "the mirror")
                            .help("move `request_body` before `mirror`: a body over the limit is then refused before any of it is read for a copy"),
                    );
                }
            }
            _ => {}
        }
    }
}

/// A matcher written after a handler still decides for the whole route,
/// which is seldom what its place says: most likely a `header` meant to
/// set a response header, written without its block.
fn matcher_among_handlers(matcher: &KdlNode, first_handler: &KdlNode) -> Problem {
    let name = matcher.name().value();
    let first = first_handler.name().value();
    let args = arguments(matcher);
    let help = match (name, args.as_slice()) {
        // A name and a value: the very shape of a response header to set.
        ("header", [header, value]) => format!(
            "to set a response header, give it a block: header {{ {} {} }}; to match requests, move it above `{first}`",
            header.to_string().trim(),
            value.to_string().trim()
        ),
        _ => format!("move it above `{first}`"),
    };
    Problem::warning(
        name_span(matcher),
        format!("`{name}` here is a request matcher: it decides whether the whole route runs"),
    )
    .label("a matcher among the handlers")
    .also(name_span(first_handler), "the handlers begin here")
    .help(help)
}

fn route_matcher(
    node: &KdlNode,
    r: &mut Reader,
    methods: &mut Vec<http::Method>,
    headers: &mut Vec<HeaderMatch>,
) -> Option<()> {
    r.no_properties(node);
    if node.name().value() == "method" {
        let args = r.some_args(node, "one or more methods, such as \"GET\" \"POST\"")?;
        methods.extend(r.each(&args, value::method)?);
        return Some(());
    }
    let args = arguments(node);
    let Some((name, wanted)) = args.split_first() else {
        r.push(
            Problem::error(name_span(node), "`header` needs a header name")
                .label("missing argument")
                .help("match with header \"X-Canary\" \"1\"; edit response headers with header { \"X-Frame-Options\" \"DENY\" }"),
        );
        return None;
    };
    let text = r.check(value::non_empty_string(name))?;
    if text.starts_with(['-', '+']) {
        r.push(
            Problem::error(
                name.span(),
                format!("`header \"{text}\"` without a block is a request matcher"),
            )
            .label("not a header name")
            .help(format!(
                "to edit response headers, write header {{ \"{text}\" }}"
            )),
        );
        return None;
    }
    let header = r.check(value::header_name(name))?;
    let values = r.each(wanted, value::string)?;
    headers.push(HeaderMatch {
        name: header,
        values,
    });
    Some(())
}

/// A mirror target that is one of the file's own listen addresses sends
/// copies back into teebox. The loop marker stops them being copied again,
/// but it is rarely meant, so `validate` says so.
fn warn_self_mirrors(doc: &KdlDocument, sites: &[Site], r: &mut Reader) {
    let listening: Vec<SocketAddr> = sites
        .iter()
        .flat_map(|s| s.addresses.iter().map(|a| a.value))
        .collect();
    let is_ours = |url: &value::UpstreamUrl| {
        let ip = match url.authority.host() {
            "localhost" => Some(std::net::Ipv4Addr::LOCALHOST.into()),
            _ => url.ip_literal(),
        };
        ip.is_some_and(|ip| {
            listening.iter().any(|l| {
                l.port() == url.port()
                    && (l.ip() == ip || (l.ip().is_unspecified() && ip.is_loopback()))
            })
        })
    };
    let mut stack: Vec<&KdlNode> = doc.nodes().iter().collect();
    while let Some(node) = stack.pop() {
        if let Some(children) = node.children() {
            stack.extend(children.nodes());
        }
        if node.name().value() != "mirror" {
            continue;
        }
        let target_nodes = children(node)
            .iter()
            .filter(|c| c.name().value() == "target")
            .flat_map(arguments);
        for entry in arguments(node).into_iter().chain(target_nodes) {
            let Ok(url) = value::upstream_url(entry) else {
                continue;
            };
            if is_ours(&url) {
                r.push(
                    Problem::warning(
                        value::value_span(entry),
                        "this mirror target is one of this file's own listen addresses",
                    )
                    .label("copies come back to this teebox")
                    .help("fine for a self-contained demo; the loop marker keeps copies from being copied again"),
                );
            }
        }
    }
}

/// The admin endpoint needs an address of its own: `run` could not bind it
/// beside a site (or `http_redirect`) on the same one.
fn check_admin_address(admin: &Spanned<SocketAddr>, sites: &[Site], r: &mut Reader) {
    let taken = sites
        .iter()
        .flat_map(|site| site.addresses.iter().chain(&site.http_redirect))
        .find(|addr| same_port_binding(admin.value, addr.value));
    if let Some(addr) = taken {
        r.push(
            Problem::error(
                admin.span,
                format!(
                    "the admin endpoint's {} takes the port of {}, which a site listens on",
                    admin.value, addr.value
                ),
            )
            .label("cannot be bound as well")
            .also(addr.span, "a site listens here")
            .help("give the admin endpoint a port of its own, such as \"127.0.0.1:2019\""),
        );
    }
}

/// Whether two listeners could not both be bound: one port, and the same
/// address or a wildcard that covers the other.
fn same_port_binding(a: SocketAddr, b: SocketAddr) -> bool {
    (a.port() != 0 && a == b) || covers(a, b) || covers(b, a)
}

/// Whether `wild` is a wildcard address that takes `other`'s port on every
/// interface (`[::]` takes IPv4 too): `other` could not be bound beside it.
fn covers(wild: SocketAddr, other: SocketAddr) -> bool {
    wild.ip().is_unspecified()
        && wild.port() == other.port()
        && other.port() != 0
        && (wild.is_ipv6() || other.is_ipv4())
}

/// Sites may share an address only when `host` tells them apart; one site
/// per address may leave `host` out and catches every other name.
fn check_shared_addresses(sites: &[Site], r: &mut Reader) {
    let mut by_addr: HashMap<SocketAddr, Vec<(&Site, SourceSpan)>> = HashMap::new();
    for site in sites {
        for addr in &site.addresses {
            by_addr
                .entry(addr.value)
                .or_default()
                .push((site, addr.span));
        }
    }
    for site in sites {
        if let Some(redirect) = &site.http_redirect {
            if let Some((_, span)) = by_addr.get(&redirect.value).and_then(|s| s.first()) {
                r.push(
                    Problem::error(
                        redirect.span,
                        format!("{} is already a site's listen address", redirect.value),
                    )
                    .label("cannot also redirect")
                    .also(*span, "served here")
                    .help("give http_redirect an address of its own, such as \":80\""),
                );
            }
        }
    }
    let mut addrs: Vec<_> = by_addr.into_iter().collect();
    addrs.sort_by_key(|(_, sites)| sites[0].1.offset());
    // A wildcard address takes its port on every interface: a specific
    // address with the same port could not be bound beside it.
    for (wild, sharing) in addrs.iter().filter(|(a, _)| a.ip().is_unspecified()) {
        for (other, other_sites) in addrs.iter().filter(|(a, _)| a != wild) {
            if covers(*wild, *other) {
                r.push(
                    Problem::error(other_sites[0].1, format!("{other} overlaps {wild}, which already takes port {} on every interface", wild.port()))
                        .label("cannot be bound as well")
                        .also(sharing[0].1, "every interface")
                        .help(format!("list the sites on {wild} and tell them apart with `host`, or use a specific address for both")),
                );
            }
        }
    }
    for (addr, sharing) in &addrs {
        let with_tls: Vec<_> = sharing.iter().filter(|(s, _)| s.tls.is_some()).collect();
        if !with_tls.is_empty() && with_tls.len() < sharing.len() {
            let plain = sharing
                .iter()
                .find(|(s, _)| s.tls.is_none())
                .map(|(_, span)| *span);
            if let Some(plain) = plain {
                r.push(
                    Problem::error(plain, format!("{addr} serves HTTPS for another site, but this one has no `tls`"))
                        .label("plain HTTP on a TLS address")
                        .also(with_tls[0].1, "this site has `tls`")
                        .help("give every site on the address `tls`, or listen on another address for plain HTTP"),
                );
            }
        }
        let defaults: Vec<_> = with_tls
            .iter()
            .filter(|(s, _)| s.tls.as_ref().is_some_and(|t| t.default))
            .collect();
        if defaults.len() > 1 {
            r.push(
                Problem::error(
                    defaults[1].1,
                    format!("two sites on {addr} are the TLS default"),
                )
                .label("second default")
                .also(defaults[0].1, "first default")
                .help("mark one site per address with default=#true"),
            );
        }
    }
    for (addr, sharing) in addrs {
        let mut catch_all: Option<SourceSpan> = None;
        let mut names: Vec<&Spanned<HostPattern>> = Vec::new();
        for (site, span) in sharing {
            if site.hosts.is_empty() {
                match catch_all {
                    Some(first) => r.push(
                        Problem::error(span, format!("two sites listen on {addr} and neither has `host`"))
                            .label("second site without host")
                            .also(first, "first site without host")
                            .help("give each site on a shared address a `host`, e.g. host \"api.example.com\""),
                    ),
                    None => catch_all = Some(span),
                }
                continue;
            }
            for host in &site.hosts {
                if let Some(first) = names.iter().find(|h| h.value == host.value) {
                    r.push(
                        Problem::error(host.span, format!("host `{}` is served twice on {addr}", host.value))
                            .label("second site for this host")
                            .also(first.span, "first site for this host")
                            .help("each name may belong to one site per address; merge the two sites' routes"),
                    );
                } else {
                    names.push(host);
                }
            }
        }
    }
}
