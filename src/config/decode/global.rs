//! `global { … }`: log, grace period, limits and the admin endpoint.

use std::path::PathBuf;

use kdl::KdlNode;
use miette::SourceSpan;

use crate::config::diag::Problem;
use crate::config::model::*;
use crate::config::reader::{Reader, Repeat};
use crate::config::value::{self, Spanned};
use crate::passwords;

pub(super) fn global(node: &KdlNode, r: &mut Reader) -> Option<Global> {
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
        .map(|n| crate::config::limits::decode(n, r))
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
