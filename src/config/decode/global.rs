//! `global { … }`: log, grace period, limits and the admin endpoint. The
//! options of `global`, `log` and `admin` are declared here once (see
//! [`crate::config::options`]); `limits`' in [`crate::config::limits`].
//!
//! A block that is not written (no `global`, no `log`, no `limits`) is read
//! as an empty one: its options then get their declared defaults, which are
//! written nowhere else.

use std::borrow::Cow;
use std::path::PathBuf;

use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use crate::config::diag::Problem;
use crate::config::limits;
use crate::config::model::*;
use crate::config::options::{self as o, Spec, Table, Unset, Value};
use crate::config::reader::Reader;
use crate::config::value;
use crate::passwords;

/// What `global` takes, in the order its diagnostics list it.
pub static OPTIONS: &Table = &[&ADMIN, &LOG, &GRACE_PERIOD, &LIMITS];

static ADMIN: Spec<o::Nested> = Spec::once(
    "admin",
    o::Nested(ADMIN_OPTIONS),
    Unset::Means("no endpoint"),
    "The admin endpoint: runtime targets, reload, metrics and health.",
);

static LOG: Spec<o::Nested> = Spec::once(
    "log",
    o::Nested(LOG_OPTIONS),
    Unset::Means("each option's default"),
    "Process logs, on stderr.",
);

static GRACE_PERIOD: Spec<o::Duration> = Spec::once(
    "grace_period",
    o::Duration::ANY,
    Unset::Default("10s"),
    "After SIGTERM/SIGINT, how long requests in flight may finish, then queued copies.",
);

static LIMITS: Spec<o::Nested> = Spec::once(
    "limits",
    o::Nested(limits::OPTIONS),
    Unset::Means("each option's default"),
    "Connection and request limits of every listener.",
);

/// What `log` takes: properties of its node.
pub static LOG_OPTIONS: &Table = &[&LEVEL, &FORMAT];

static LEVEL: Spec<o::OneOf> = Spec::property(
    "level",
    o::OneOf(&["trace", "debug", "info", "warn", "error"]),
    Unset::Default("info"),
    "The least severe of teebox's own logs written; RUST_LOG overrides it.",
);

static FORMAT: Spec<o::OneOf> = Spec::property(
    "format",
    o::OneOf(&["text", "json"]),
    Unset::Default("text"),
    "Process and access logs as text lines or JSON objects.",
);

/// What `admin` takes, in the order its diagnostics list it.
pub static ADMIN_OPTIONS: &Table = &[
    &ADDRESS,
    &USER,
    &USERS_FILE,
    &ALLOW_TARGET,
    &STATE_FILE,
    &HEALTHZ_PUBLIC,
];

static ADDRESS: Spec<o::ListenAddress> = Spec::argument(
    "address",
    o::ListenAddress {
        expects: "one listen address, such as \"127.0.0.1:2019\"",
    },
    Unset::Required,
    "Where the endpoint listens; on an address other than loopback it needs users.",
);

static USER: Spec<User> = Spec::many(
    "user",
    User,
    Unset::Means("none"),
    "A user allowed in: a name and a bcrypt hash (teebox hash-password).",
);

static USERS_FILE: Spec<UsersFile> = Spec::once(
    "users_file",
    UsersFile,
    Unset::Means("none"),
    "More users, as name:bcrypt-hash lines, read with the site file.",
);

static ALLOW_TARGET: Spec<Patterns> = Spec::once(
    "allow_target",
    Patterns,
    Unset::Means("any URL"),
    "URL patterns a runtime target must match (* matches any run of characters).",
);

static STATE_FILE: Spec<StateFile> = Spec::once(
    "state_file",
    StateFile,
    Unset::Means("none"),
    "Keeps runtime target changes, restored at start (its directory must exist).",
);

static HEALTHZ_PUBLIC: Spec<o::Flag> = Spec::once(
    "healthz_public",
    o::Flag,
    Unset::Default("#true"),
    "GET /healthz answers without credentials.",
);

/// `global`'s node, or an empty one for a file without it.
pub(super) fn global(node: &KdlNode, r: &mut Reader) -> Option<Global> {
    r.no_properties(node);
    r.args_only(
        node,
        0,
        "options go inside the block: global { grace_period \"10s\" }",
    );
    let opts = o::read(node, OPTIONS, r);
    let log = log(opts.node(&LOG).unwrap_or(&KdlNode::new("log")), r);
    let grace_period = opts.get(r, &GRACE_PERIOD);
    let admin = opts.node(&ADMIN).map(|n| admin(n, r));
    let limits = limits::decode(opts.node(&LIMITS).unwrap_or(&KdlNode::new("limits")), r);
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
    o::check_properties(node, LOG_OPTIONS, r);
    let args = r.args_only(node, 0, "write log level=\"info\" format=\"text\"");
    // Each property is checked whatever the others hold: every mistake is
    // reported in one run.
    let opts = o::on(node, LOG_OPTIONS);
    let level = opts.get(r, &LEVEL);
    let format = opts.get(r, &FORMAT).map(|f| match f {
        "json" => LogFormat::Json,
        _ => LogFormat::Text,
    });
    args?;
    Some(LogConfig {
        level: level?,
        format: format?,
    })
}

fn admin(node: &KdlNode, r: &mut Reader) -> Option<AdminConfig> {
    r.no_properties(node);
    let address = r
        .args_only(node, 1, &ADDRESS.expects())
        .and_then(|args| ADDRESS.read_entry(args[0], r));
    let opts = o::read(node, ADMIN_OPTIONS, r);
    let mut users = opts.every(r, &USER);
    let users_ok = users.len() == opts.nodes(&USER).len();
    let users_file = opts.maybe(r, &USERS_FILE).map(|file| {
        file.map(|file| {
            let (path, mut from_file) = file.value;
            users.append(&mut from_file);
            path
        })
    });
    let allow_target = opts
        .maybe(r, &ALLOW_TARGET)
        .map(|patterns| patterns.map_or_else(Vec::new, |p| p.value));
    let state = opts.maybe(r, &STATE_FILE);
    let healthz_public = opts.get(r, &HEALTHZ_PUBLIC);
    let users_file = users_file?;
    let (state_file, saved_state) = match state? {
        Some(state) => {
            let (path, saved) = state.value;
            (Some(path), saved)
        }
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
#[derive(Debug)]
struct User;

impl Value for User {
    type Out = (String, passwords::BcryptHash);
    fn describe(&self) -> Cow<'static, str> {
        "\"NAME\" \"bcrypt hash\"".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a user name and a bcrypt hash".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<Self::Out> {
        let args = r.args(node, 2, &self.expects())?;
        let name = r.check(value::non_empty_string(args[0]).and_then(|name| {
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
}

/// `users_file PATH`: its path as written, and every user in it, read and
/// checked with the site file.
#[derive(Debug)]
struct UsersFile;

impl Value for UsersFile {
    type Out = (PathBuf, Vec<(String, passwords::BcryptHash)>);
    fn describe(&self) -> Cow<'static, str> {
        "file path, relative to the site file".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a file path".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        let path = PathBuf::from(r.check(value::non_empty_string(entry))?);
        match passwords::read_users_file(&r.resolve(&path)) {
            Ok(users) => Some((path, users)),
            Err(err) => {
                users_file_problems(err, value::value_span(entry), r);
                None
            }
        }
    }
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

/// `allow_target PATTERN…`: one or more URL patterns.
#[derive(Debug)]
struct Patterns;

impl Value for Patterns {
    type Out = Vec<String>;
    fn describe(&self) -> Cow<'static, str> {
        "URL patterns".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "one or more URL patterns".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<Self::Out> {
        r.no_children(node);
        r.no_properties(node);
        r.some_args(node, &self.expects())
            .and_then(|args| r.each(&args, value::non_empty_string))
    }
}

/// `state_file PATH`: a file teebox writes, and what it holds now, which
/// the endpoint restores when it starts.
#[derive(Debug)]
struct StateFile;

impl Value for StateFile {
    type Out = (PathBuf, crate::state_file::Saved);
    fn describe(&self) -> Cow<'static, str> {
        "file path, relative to the site file".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a file path".into()
    }
    fn entry(&self, name: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        let path = r.file_to_write(entry, name)?;
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diag::Problems;

    #[test]
    fn the_tables_are_sound() {
        o::check_table(OPTIONS).unwrap();
    }

    fn read(text: &str) -> Global {
        let node: KdlNode = text.parse().unwrap();
        let mut problems = Problems::default();
        let global = global(&node, &mut Reader::new(&mut problems, PathBuf::from(".")));
        assert!(!problems.has_errors(), "{:?}", problems.into_vec());
        global.unwrap()
    }

    /// A file without `global`, `log` or `limits` gets what the
    /// declarations say, as an empty block does.
    #[test]
    fn unwritten_blocks_get_the_declared_defaults() {
        for text in ["global", "global { }", "global { log; limits { }; }"] {
            let global = read(text);
            assert_eq!(global.grace_period, std::time::Duration::from_secs(10));
            assert_eq!(global.log.level, "info");
            assert_eq!(global.log.format, LogFormat::Text);
            assert_eq!(global.limits, Limits::default());
            assert!(global.admin.is_none());
        }
    }

    #[test]
    fn written_options_win() {
        let global = read(
            "global { grace_period \"0s\"; log level=\"debug\" format=\"json\"; admin \"127.0.0.1:2019\" { healthz_public #false; allow_target \"http://a:*\"; }; }",
        );
        assert_eq!(global.grace_period, std::time::Duration::ZERO);
        assert_eq!(
            (global.log.level, global.log.format),
            ("debug", LogFormat::Json)
        );
        let admin = global.admin.unwrap();
        assert_eq!(admin.address.value.port(), 2019);
        assert!(!admin.healthz_public);
        assert_eq!(admin.allow_target, ["http://a:*"]);
        assert!(admin.users.is_empty() && admin.state_file.is_none());
    }
}
