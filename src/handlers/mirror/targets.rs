//! A mirror's targets: the options each target is run with, declared once
//! for the mirror (every target's defaults) and for a `target "URL" { … }`
//! node (its own), and the list of targets the file gives.
//!
//! The mirror's table lists these same `Spec`s; a `target` node reads each
//! with the mirror's value as its fallback, so an option it leaves out is
//! the mirror's, and each default is written once, in its declaration.

use std::borrow::Cow;

use http::HeaderValue;
use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use crate::config::options::{
    self as o, Block, Duration, Fraction, Int, Spec, Table, Unset, Url, Value,
};
use crate::config::reader::{arguments, name_span, Reader};
use crate::config::value;
use crate::config::Problem;
use crate::handlers::upstream_options as up;
use crate::message::header_ops::HeaderOps;
use crate::mirror::breaker::BreakerConfig;
use crate::mirror::target::{TargetSettings, TargetSpec};
use crate::upstream::url::UpstreamUrl;

/// What a `target` node takes, in the order its diagnostics list it: its
/// URL, and the options it may set over its mirror's.
pub static OPTIONS: &Table = &[
    &URL,
    &SAMPLE,
    &CONCURRENCY,
    &BACKLOG,
    &TIMEOUT,
    &MAX_FAILURES,
    &RETRY_AFTER,
    &FAIL_AFTER,
    &up::HEADER_UP,
    &HOST,
    &MAX_RPS,
    &up::H2C,
];

static URL: Spec<Url> = Spec::argument(
    "url",
    Url {
        expects: "one target URL, such as \"http://canary:9000\"",
    },
    Unset::Required,
    "The target; a URL is listed once, as a mirror argument or as a target.",
);

pub static SAMPLE: Spec<Fraction> = Spec::once(
    "sample",
    Fraction,
    Unset::Default("1"),
    "Share of matching requests copied; a target's is a share of all of them, within the mirror's.",
);

pub static CONCURRENCY: Spec<Int> = Spec::once(
    "concurrency",
    Int { min: 1, max: 1024 },
    Unset::Default("4"),
    "Workers per target: copies in flight per target.",
);

pub static BACKLOG: Spec<Int> = Spec::once(
    "backlog",
    Int {
        min: 1,
        max: 1_000_000,
    },
    Unset::Default("1024"),
    "Copies held per target, queued and in flight; over it they are dropped and counted.",
);

pub static TIMEOUT: Spec<Duration> = Spec::once(
    "timeout",
    Duration::POSITIVE,
    Unset::Default("5s"),
    "The whole copy exchange, connecting included.",
);

pub static MAX_FAILURES: Spec<Int> = Spec::once(
    "max_failures",
    Int {
        min: 1,
        max: 1_000_000,
    },
    Unset::Default("5"),
    "Consecutive failures that pause a target.",
);

pub static RETRY_AFTER: Spec<Duration> = Spec::once(
    "retry_after",
    Duration::POSITIVE,
    Unset::Default("1m"),
    "A paused target gets one probe copy after this.",
);

pub static FAIL_AFTER: Spec<Duration> = Spec::once(
    "fail_after",
    Duration::POSITIVE,
    Unset::Default("30m"),
    "A target failing this long is removed.",
);

pub static HOST: Spec<Host> = Spec::once(
    "host",
    Host,
    Unset::Means("the target URL's host and port as written"),
    "The Host of copies.",
);

pub static MAX_RPS: Spec<Int> = Spec::once(
    "max_rps",
    Int {
        min: 1,
        max: 1_000_000,
    },
    Unset::Means("none"),
    "Copies a second at most, per target; those over it are dropped and counted.",
);

/// The options a target is run with, each as written in `opts`, else
/// `mirror`'s for a `target` node, else (for the mirror itself, `mirror`
/// being `None`) the declared default. `header_up` is left to the caller:
/// the mirror's goes on every copy, a target's only on its own.
pub fn settings(
    opts: &Block,
    r: &mut Reader,
    mirror: Option<&TargetSettings>,
) -> Option<TargetSettings> {
    let sample = inherit(opts, r, &SAMPLE, mirror.map(|m| m.sample));
    let concurrency = inherit(opts, r, &CONCURRENCY, mirror.map(|m| m.concurrency as i128));
    let backlog = inherit(opts, r, &BACKLOG, mirror.map(|m| m.backlog as i128));
    let timeout = inherit(opts, r, &TIMEOUT, mirror.map(|m| m.timeout));
    let breaker = mirror.map(|m| &m.breaker);
    let max_failures = inherit(
        opts,
        r,
        &MAX_FAILURES,
        breaker.map(|b| i128::from(b.max_failures)),
    );
    let retry_after = inherit(opts, r, &RETRY_AFTER, breaker.map(|b| b.retry_after));
    let fail_after = inherit(opts, r, &FAIL_AFTER, breaker.map(|b| b.fail_after));
    let host = inherit_optional(opts, r, &HOST, mirror.and_then(|m| m.host.clone()));
    let max_rps = inherit_optional(
        opts,
        r,
        &MAX_RPS,
        mirror.and_then(|m| m.max_rps.map(i128::from)),
    );
    let h2c = inherit(opts, r, &up::H2C, mirror.map(|m| m.h2c));
    Some(TargetSettings {
        sample: sample?,
        concurrency: concurrency? as usize,
        backlog: backlog? as usize,
        timeout: timeout?,
        breaker: BreakerConfig {
            max_failures: max_failures? as u32,
            retry_after: retry_after?,
            fail_after: fail_after?,
        },
        host: host?,
        max_rps: max_rps?.map(|n| n as u32),
        h2c: h2c?,
        header_up: HeaderOps::default(),
    })
}

/// An option with a default: as written, else `inherited`, else declared.
fn inherit<V: Value>(
    opts: &Block,
    r: &mut Reader,
    spec: &Spec<V>,
    inherited: Option<V::Out>,
) -> Option<V::Out> {
    match inherited {
        Some(value) => opts.get_or(r, spec, value),
        None => opts.get(r, spec),
    }
}

/// An option whose absence means "none": as written, else `inherited`.
fn inherit_optional<V: Value>(
    opts: &Block,
    r: &mut Reader,
    spec: &Spec<V>,
    inherited: Option<V::Out>,
) -> Option<Option<V::Out>> {
    Some(opts.maybe(r, spec)?.map(|given| given.value).or(inherited))
}

/// The mirror's targets, as the file lists them.
pub struct Listed<'a, 'n> {
    /// The mirror's node and its options, read against `table`.
    pub node: &'n KdlNode,
    pub opts: &'a Block<'n>,
    pub table: &'static Table,
    /// Its arguments, and their URLs when every one is valid.
    pub args: &'a [&'n KdlEntry],
    pub urls: Option<Vec<UpstreamUrl>>,
    /// Its settings, when valid: every target's defaults.
    pub settings: Option<&'a TargetSettings>,
    /// The `target` nodes.
    pub nodes: Vec<&'n KdlNode>,
}

/// Every target the mirror lists: its arguments, run with the mirror's
/// settings, then its `target` nodes. A URL may be listed once, whichever
/// way; the second listing is the one reported. Every URL as written, with
/// its span, goes to `seen`.
pub fn specs(
    listed: Listed,
    seen: &mut Vec<(UpstreamUrl, SourceSpan)>,
    r: &mut Reader,
) -> Option<Vec<TargetSpec>> {
    // Broken mirror settings are reported already; the declared defaults
    // (a mirror block with nothing written) stand in, so that the `target`
    // nodes are still checked.
    let defaults;
    let base = match listed.settings {
        Some(settings) => settings,
        None => {
            defaults = settings(&o::on(listed.node, listed.table), r, None)?;
            &defaults
        }
    };
    *seen = match &listed.urls {
        // `urls` is every argument, in order, when it is `Some`.
        Some(urls) => urls
            .iter()
            .cloned()
            .zip(listed.args.iter().map(|a| value::value_span(a)))
            .collect(),
        None => Vec::new(),
    };
    let mut specs: Option<Vec<TargetSpec>> = listed.urls.map(|urls| {
        urls.into_iter()
            .map(|url| TargetSpec {
                url,
                settings: base.clone(),
            })
            .collect()
    });
    let mirror_sample = listed.opts.node(&SAMPLE);
    for node in &listed.nodes {
        let spec = target_node(node, listed.table, base, mirror_sample, seen, r);
        match (spec, specs.as_mut()) {
            (Some(spec), Some(specs)) => specs.push(spec),
            _ => specs = None,
        }
    }
    listed.settings.and(specs)
}

/// One `target "URL" { … }` node. `mirror` is the mirror's table: its own
/// options written here get a message of their own, as they are known,
/// just not per target.
fn target_node(
    node: &KdlNode,
    mirror: &'static Table,
    base: &TargetSettings,
    mirror_sample: Option<&KdlNode>,
    seen: &mut Vec<(UpstreamUrl, SourceSpan)>,
    r: &mut Reader,
) -> Option<TargetSpec> {
    r.no_properties(node);
    let url = r.args_only(node, 1, &URL.expects()).and_then(|args| {
        let url = URL.read_entry(args[0], r)?;
        let span = value::value_span(args[0]);
        if let Some((first, first_span)) = seen.iter().find(|(u, _)| *u == url) {
            r.push(value::listed_twice(
                &url,
                span,
                first,
                *first_span,
                "list each URL once: in the mirror's arguments or as a `target`",
            ));
            return None;
        }
        seen.push((url.clone(), span));
        Some(url)
    });
    let (opts, misplaced) = o::read_among(node, OPTIONS, mirror, r);
    for option in misplaced {
        r.push(not_per_target(option));
    }
    let settings = settings(&opts, r, Some(base));
    let header_up = up::header_up(&opts, r);
    let sample_fits = match (opts.node(&SAMPLE), &settings) {
        (Some(own), Some(settings)) if settings.sample > base.sample => {
            r.push(sample_over_mirror(own, mirror_sample, base.sample));
            false
        }
        _ => true,
    };
    let mut settings = settings.filter(|_| sample_fits)?;
    settings.header_up = header_up;
    Some(TargetSpec {
        url: url?,
        settings,
    })
}

/// One of the mirror's own options, written inside a `target`.
fn not_per_target(option: &KdlNode) -> Problem {
    let name = option.name().value();
    let own: Vec<&str> = OPTIONS
        .iter()
        .filter(|d| d.place() == o::Place::Child)
        .map(|d| d.name())
        .collect();
    Problem::error(
        name_span(option),
        format!("`{name}` is an option of the whole mirror, not of one target"),
    )
    .label("not per target")
    .help(format!(
        "move it into `mirror`; a `target` takes: {}",
        own.join(", ")
    ))
}

/// A target is only offered what its mirror sampled, so its own `sample`
/// (a share of all requests, like the mirror's) cannot be larger.
fn sample_over_mirror(own: &KdlNode, mirror_sample: Option<&KdlNode>, mirror: f64) -> Problem {
    let own_span = arguments(own).first().map_or(name_span(own), |a| a.span());
    let p = Problem::error(
        own_span,
        format!("a target cannot sample more than its mirror ({mirror})"),
    )
    .label("more than the mirror's")
    .help("a target's `sample` is a share of all requests, taken from those the mirror sampled: raise the mirror's `sample` and give the other targets theirs");
    match mirror_sample {
        Some(n) => p.also(
            arguments(n).first().map_or(name_span(n), |a| a.span()),
            "the mirror's",
        ),
        None => p,
    }
}

/// `host "staging.internal"`: the Host copies carry.
#[derive(Debug)]
pub struct Host;

impl Value for Host {
    type Out = HeaderValue;
    fn describe(&self) -> Cow<'static, str> {
        "host name, with an optional port".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a host name, such as \"staging.internal\"".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<HeaderValue> {
        r.check(value::host_header(entry))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::config::diag::Problems;

    fn node(text: &str) -> KdlNode {
        text.parse().expect("KDL")
    }

    #[test]
    fn the_options_are_sound() {
        o::check_table(OPTIONS).unwrap();
    }

    /// What a target gets when neither its mirror nor its `target` node
    /// says: the declared defaults, as the README's table shows them.
    #[test]
    fn a_mirror_without_options_runs_its_targets_with_the_declared_defaults() {
        let mirror = node("mirror \"http://staging:8080\"");
        let mut problems = Problems::default();
        let mut r = Reader::new(&mut problems, PathBuf::from("."));
        let opts = o::read(&mirror, crate::handlers::mirror::OPTIONS, &mut r);
        let s = settings(&opts, &mut r, None).expect("the defaults are valid");
        assert_eq!(s.sample, 1.0);
        assert_eq!((s.concurrency, s.backlog), (4, 1024));
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.breaker.max_failures, 5);
        assert_eq!(s.breaker.retry_after, Duration::from_secs(60));
        assert_eq!(s.breaker.fail_after, Duration::from_secs(30 * 60));
        assert_eq!((s.host, s.max_rps, s.h2c), (None, None, false));
        assert!(problems.into_vec().is_empty());
    }

    #[test]
    fn a_target_takes_what_it_leaves_out_from_its_mirror() {
        let mirror = node(
            "mirror \"http://staging:8080\" { timeout \"2s\"; max_rps 10; host \"m.internal\"; h2c #true; }",
        );
        let target = node("target \"http://canary:9000\" { sample 0.5; host \"t.internal\"; }");
        let mut problems = Problems::default();
        let mut r = Reader::new(&mut problems, PathBuf::from("."));
        let mirror_opts = o::read(&mirror, crate::handlers::mirror::OPTIONS, &mut r);
        let base = settings(&mirror_opts, &mut r, None).expect("valid");
        let (opts, misplaced) =
            o::read_among(&target, OPTIONS, crate::handlers::mirror::OPTIONS, &mut r);
        assert!(misplaced.is_empty());
        let own = settings(&opts, &mut r, Some(&base)).expect("valid");
        assert_eq!(own.sample, 0.5);
        assert_eq!(own.timeout, Duration::from_secs(2));
        assert_eq!(own.max_rps, Some(10));
        assert_eq!(own.host, Some(HeaderValue::from_static("t.internal")));
        assert!(own.h2c);
        assert_eq!(own.concurrency, 4);
        assert!(problems.into_vec().is_empty());
    }
}
