//! `mirror "http://staging:8080" ... { options }`: sends a copy of each
//! sampled request to every target, and passes the request on untouched.
//! The engine (backlogs, workers, breaker) is in `crate::mirror`; this
//! handler reads the node into the engine's settings (the copy edits, the
//! policy and `compare` each in a file of their own) and runs it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body::SizeHint;
use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use super::upstream_options as up;
use super::{
    BoxFuture, BuildContext, BuildError, FileView, HandlerConfig, HandlerKind, HandlerState,
    Middleware, MiddlewareConfig, Next, Published,
};
use crate::config::reader::{arguments, name_span, Options, Reader, Repeat};
use crate::config::value;
use crate::config::Problem;
use crate::message::body::BodyRefusal;
use crate::message::header_ops::HeaderOps;
use crate::message::{body, Request, Response};
use crate::mirror::breaker::BreakerConfig;
use crate::mirror::target::{TargetSettings, TargetSpec};
use crate::mirror::tee::{Abandon, Capture, Tee};
use crate::mirror::{Mirror, MirrorOptions};
use crate::upstream::hop_by_hop;
use crate::upstream::url::UpstreamUrl;

pub static KIND: HandlerKind = HandlerKind::Middleware {
    name: "mirror",
    decode,
    options: None,
};

mod compare;
mod copy_edits;
mod policy;

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// The targets the file lists: the mirror's arguments (with the
    /// mirror's settings), then its `target` nodes.
    pub targets: Vec<TargetSpec>,
    /// Every target URL as written, for the file-wide check.
    pub written: Vec<(UpstreamUrl, SourceSpan)>,
    pub options: MirrorOptions,
}

/// Options a `target` node may set over its mirror's; the mirror takes
/// them too, as every target's defaults.
const TARGET_OPTIONS: &[(&str, Repeat)] = &[
    ("sample", Repeat::Once),
    ("concurrency", Repeat::Once),
    ("backlog", Repeat::Once),
    ("timeout", Repeat::Once),
    ("max_failures", Repeat::Once),
    ("retry_after", Repeat::Once),
    ("fail_after", Repeat::Once),
    up::HEADER_UP.key(),
    ("host", Repeat::Once),
    ("max_rps", Repeat::Once),
    up::H2C.key(),
];

/// Options of the mirror as a whole.
const MIRROR_OPTIONS: &[(&str, Repeat)] = &[
    ("name", Repeat::Once),
    ("alert_interval", Repeat::Once),
    ("max_body", Repeat::Once),
    up::TLS_CA.key(),
    up::TLS_SERVER_NAME.key(),
    up::TLS_INSECURE_SKIP_VERIFY.key(),
    ("rewrite", Repeat::Many),
    ("query_set", Repeat::Many),
    ("query_remove", Repeat::Many),
    ("replace_body", Repeat::Many),
    ("compare", Repeat::Once),
    ("methods", Repeat::Once),
    ("marker", Repeat::Once),
    ("sample_by", Repeat::Once),
    ("host_suffix", Repeat::Once),
    ("primary_status", Repeat::Once),
    ("target", Repeat::Many),
];

/// What a target gets when neither its mirror nor its `target` node says.
fn default_settings() -> TargetSettings {
    TargetSettings {
        sample: 1.0,
        concurrency: 4,
        backlog: 1024,
        timeout: Duration::from_secs(5),
        breaker: BreakerConfig {
            max_failures: 5,
            retry_after: Duration::from_secs(60),
            fail_after: Duration::from_secs(30 * 60),
        },
        host: None,
        max_rps: None,
        h2c: false,
        header_up: HeaderOps::default(),
    }
}

fn decode(node: &KdlNode, r: &mut Reader) -> Option<Box<dyn MiddlewareConfig>> {
    r.no_properties(node);
    let args = arguments(node);
    let urls = r.urls(&args);
    let mut ok = urls.is_some();
    let known: Vec<(&'static str, Repeat)> = [MIRROR_OPTIONS, TARGET_OPTIONS].concat();
    let opts = r.options(node, &known);
    let name = match opts.one("name") {
        Some(n) => r
            .value(n, "a name", value::non_empty_string)
            .filter(|name| r.claim_name("mirror", name, arguments(n)[0].span()))
            .map(Some),
        None => Some(None),
    };
    if args.is_empty() && opts.one("name").is_none() && opts.all("target").is_empty() {
        r.push(
            Problem::error(
                name_span(node),
                "`mirror` needs a target URL, or a `name` to take targets from the admin endpoint",
            )
            .label("no targets")
            .help("write mirror \"http://staging:8080\", or mirror { name \"staging\" }"),
        );
        ok = false;
    }
    let settings = target_settings(&opts, r, &default_settings());
    let alert_interval = match opts.one("alert_interval") {
        Some(n) => r.value(n, "a duration such as \"2s\"", value::positive_duration),
        None => Some(Duration::from_secs(60)),
    };
    let max_body = match opts.one("max_body") {
        Some(n) => r.value(n, "a size such as \"1MiB\"", value::size),
        None => Some(1 << 20),
    };
    let header_up = r.header_ops(&opts.all("header_up"));
    let tls = up::tls(&opts, r);
    let edits = copy_edits::decode(
        r,
        &opts.all("rewrite"),
        &opts.all("query_set"),
        &opts.all("query_remove"),
        &opts.all("replace_body"),
    );
    let policy = policy::methods_and_marker(opts.one("methods"), opts.one("marker"), r);
    let host_suffix = host_suffix(&opts, r);
    let sample_by = match opts.one("sample_by") {
        Some(n) => policy::sample_by(n, r).map(Some),
        None => Some(None),
    };
    let primary_status = match opts.one("primary_status") {
        Some(n) => policy::primary_status(n, r).map(|f| Some(Arc::new(f))),
        None => Some(None),
    };
    let compare = match opts.one("compare") {
        Some(n) => compare::decode(n, r).map(Some),
        None => Some(None),
    };
    let mut written = Vec::new();
    let targets = target_specs(
        &args,
        urls,
        &opts.all("target"),
        settings.as_ref(),
        opts.one("sample"),
        &mut written,
        r,
    );
    if !ok {
        return None;
    }
    Some(Box::new(MirrorConfig {
        targets: targets?,
        written,
        options: MirrorOptions {
            name: name?,
            max_body: max_body?,
            alert_interval: alert_interval?,
            header_up,
            edits: Arc::new(edits?),
            compare: compare?,
            policy: policy?,
            sample_by: sample_by?,
            host_suffix: host_suffix?,
            primary_status: primary_status?,
            targets: settings?,
            tls: tls?,
        },
    }))
}

/// The options a target is run with, each from `opts` if given there,
/// else from `base` (the built-in defaults for a mirror, the mirror's
/// settings for a `target` node). `header_up` is left to the caller: the
/// mirror's goes on every copy, a target's only on its own.
fn target_settings(
    opts: &Options,
    r: &mut Reader,
    base: &TargetSettings,
) -> Option<TargetSettings> {
    let duration = |r: &mut Reader, key: &str, default: Duration| match opts.one(key) {
        Some(n) => r.value(n, "a duration such as \"2s\"", value::positive_duration),
        None => Some(default),
    };
    let int = |r: &mut Reader, key: &str, max: i128, default: usize| match opts.one(key) {
        Some(n) => r
            .value(n, &format!("a whole number from 1 to {max}"), |e| {
                value::integer(e, 1, max)
            })
            .map(|n| n as usize),
        None => Some(default),
    };
    let sample = match opts.one("sample") {
        Some(n) => r.value(n, "a fraction from 0 to 1", value::fraction),
        None => Some(base.sample),
    };
    let concurrency = int(r, "concurrency", 1024, base.concurrency);
    let backlog = int(r, "backlog", 1_000_000, base.backlog);
    let max_failures = int(
        r,
        "max_failures",
        1_000_000,
        base.breaker.max_failures as usize,
    );
    let timeout = duration(r, "timeout", base.timeout);
    let retry_after = duration(r, "retry_after", base.breaker.retry_after);
    let fail_after = duration(r, "fail_after", base.breaker.fail_after);
    let host = match opts.one("host") {
        Some(n) => r
            .value(
                n,
                "a host name, such as \"staging.internal\"",
                value::host_header,
            )
            .map(Some),
        None => Some(base.host.clone()),
    };
    let max_rps = match opts.one("max_rps") {
        Some(n) => r
            .value(
                n,
                "a whole number of copies a second, from 1 to 1000000",
                |e| value::integer(e, 1, 1_000_000),
            )
            .map(|n| Some(n as u32)),
        None => Some(base.max_rps),
    };
    let h2c = match opts.one("h2c") {
        Some(n) => r.value(n, "#true or #false", value::boolean),
        None => Some(base.h2c),
    };
    Some(TargetSettings {
        sample: sample?,
        concurrency: concurrency?,
        backlog: backlog?,
        timeout: timeout?,
        breaker: BreakerConfig {
            max_failures: max_failures? as u32,
            retry_after: retry_after?,
            fail_after: fail_after?,
        },
        host: host?,
        max_rps: max_rps?,
        h2c: h2c?,
        header_up: base.header_up.clone(),
    })
}

/// `host_suffix`, which may not come with the mirror's `host`.
fn host_suffix(opts: &Options, r: &mut Reader) -> Option<Option<String>> {
    match (opts.one("host_suffix"), opts.one("host")) {
        (Some(n), Some(host)) => {
            r.push(
                Problem::error(
                    name_span(n),
                    "`host_suffix` and `host` both set the copies' Host",
                )
                .label("give one")
                .also(name_span(host), "also sets it"),
            );
            None
        }
        (Some(n), None) => r
            .value(n, "a suffix such as \"-shadow\"", |e| {
                let suffix = value::non_empty_string(e)?;
                match suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    true => Ok(suffix),
                    false => Err(Problem::error(
                        value::value_span(e),
                        "a host suffix holds letters, digits, `-` and `.` only",
                    )
                    .label("not part of a host name")),
                }
            })
            .map(Some),
        (None, _) => Some(None),
    }
}

/// Every target the mirror lists: its arguments, run with the mirror's
/// settings, then its `target` nodes. A URL may be listed once, whichever
/// way; the second listing is the one reported.
fn target_specs(
    args: &[&KdlEntry],
    urls: Option<Vec<UpstreamUrl>>,
    nodes: &[&KdlNode],
    mirror: Option<&TargetSettings>,
    mirror_sample: Option<&KdlNode>,
    seen: &mut Vec<(UpstreamUrl, SourceSpan)>,
    r: &mut Reader,
) -> Option<Vec<TargetSpec>> {
    // Broken mirror settings are reported already; the defaults stand in
    // so the `target` nodes are still checked.
    let fallback = default_settings();
    let base = mirror.unwrap_or(&fallback);
    *seen = match &urls {
        // `urls` is every argument, in order, when it is `Some`.
        Some(urls) => urls
            .iter()
            .cloned()
            .zip(args.iter().map(|a| value::value_span(a)))
            .collect(),
        None => Vec::new(),
    };
    let mut specs: Option<Vec<TargetSpec>> = urls.map(|urls| {
        urls.into_iter()
            .map(|url| TargetSpec {
                url,
                settings: base.clone(),
            })
            .collect()
    });
    for node in nodes {
        let spec = target_node(node, base, mirror_sample, seen, r);
        match (spec, specs.as_mut()) {
            (Some(spec), Some(specs)) => specs.push(spec),
            _ => specs = None,
        }
    }
    mirror.and(specs)
}

/// One `target "URL" { … }` node.
fn target_node(
    node: &KdlNode,
    mirror: &TargetSettings,
    mirror_sample: Option<&KdlNode>,
    seen: &mut Vec<(UpstreamUrl, SourceSpan)>,
    r: &mut Reader,
) -> Option<TargetSpec> {
    r.no_properties(node);
    let url = r
        .args_only(node, 1, "one target URL, such as \"http://canary:9000\"")
        .and_then(|args| {
            let url = r.check(value::upstream_url(args[0]))?;
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
    let opts = target_options(node, r);
    let settings = target_settings(&opts, r, mirror);
    let header_up = r.header_ops(&opts.all("header_up"));
    let sample_fits = match (opts.one("sample"), &settings) {
        (Some(own), Some(settings)) if settings.sample > mirror.sample => {
            r.push(sample_over_mirror(own, mirror_sample, mirror.sample));
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

/// A `target` node's options. One of the mirror's own options there gets
/// its own message: it is known, just not per target.
fn target_options<'n>(node: &'n KdlNode, r: &mut Reader) -> Options<'n> {
    let mirror_only = MIRROR_OPTIONS.iter().map(|(name, _)| (*name, Repeat::Many));
    let known: Vec<(&'static str, Repeat)> =
        TARGET_OPTIONS.iter().copied().chain(mirror_only).collect();
    let opts = r.options(node, &known);
    for (name, _) in MIRROR_OPTIONS {
        for misplaced in opts.all(name) {
            r.push(
                Problem::error(
                    name_span(misplaced),
                    format!("`{name}` is an option of the whole mirror, not of one target"),
                )
                .label("not per target")
                .help(format!(
                    "move it into `mirror`; a `target` takes: {}",
                    TARGET_OPTIONS
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
        }
    }
    opts
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

impl HandlerConfig for MirrorConfig {
    /// A target that is one of the file's own listen addresses sends
    /// copies back into teebox. The loop marker stops them being copied
    /// again, but it is rarely meant, so `validate` says so.
    fn check(&self, file: &FileView<'_>, problems: &mut Vec<Problem>) {
        let is_ours = |url: &UpstreamUrl| {
            let ip = match url.authority.host() {
                "localhost" => Some(std::net::Ipv4Addr::LOCALHOST.into()),
                _ => url.ip_literal(),
            };
            ip.is_some_and(|ip| {
                file.listen.iter().any(|l| {
                    l.port() == url.port()
                        && (l.ip() == ip || (l.ip().is_unspecified() && ip.is_loopback()))
                })
            })
        };
        for (url, span) in &self.written {
            if is_ours(url) {
                problems.push(
                    Problem::warning(
                        *span,
                        "this mirror target is one of this file's own listen addresses",
                    )
                    .label("copies come back to this teebox")
                    .help("fine for a self-contained demo; the loop marker keeps copies from being copied again"),
                );
            }
        }
    }

    /// The body is read for the copy as it streams to the primary.
    fn reads_body_ahead(&self) -> bool {
        true
    }
}

impl MiddlewareConfig for MirrorConfig {
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Middleware>, BuildError> {
        let label = self
            .options
            .name
            .clone()
            .unwrap_or_else(|| cx.route.clone());
        let mirror = Mirror::start(
            self.options.clone(),
            &self.targets,
            label,
            &cx.base_dir,
            &cx.metrics,
        )
        .map_err(BuildError)?;
        cx.published.publish(Arc::new(MirrorState(mirror.clone())));
        Ok(Arc::new(MirrorHandler { mirror }))
    }
}

/// A mirror's engine, as the server and the admin endpoint see it.
pub struct MirrorState(pub Arc<Mirror>);

/// The running mirrors a build published, in file order.
pub fn mirrors(published: &Published) -> Vec<Arc<Mirror>> {
    published
        .of::<MirrorState>()
        .into_iter()
        .map(|state| state.0.clone())
        .collect()
}

impl HandlerState for MirrorState {
    /// Runtime targets follow a mirror's `name` across reloads.
    fn key(&self) -> Option<&str> {
        self.0.name()
    }

    /// The targets added and removed at runtime stay added and removed;
    /// the admin endpoint then drops those its new `allow_target` refuses.
    /// (Counters carry over by themselves: they live in the registry.)
    fn carry_over(&self, old: &dyn HandlerState) {
        let Some(old) = old.as_any().downcast_ref::<MirrorState>() else {
            return;
        };
        let (added, removed) = old.0.runtime_changes();
        for url in &removed {
            self.0.remove_target(url);
        }
        for url in added {
            self.0.add_target(url);
        }
    }

    /// Copies queued by the last requests are sent by `deadline`.
    fn drain(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(self.0.drain(deadline))
    }

    /// A connection per worker of every target.
    fn connections(&self) -> usize {
        self.0.targets().iter().map(|t| t.workers()).sum()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

pub struct MirrorHandler {
    mirror: Arc<Mirror>,
}

impl Middleware for MirrorHandler {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        let targets = self.mirror.targets();
        if targets.is_empty() {
            return next.run(req);
        }
        if hop_by_hop::upgrade_protocol(req.headers()).is_some() {
            self.mirror.count_upgrade();
            return next.run(req);
        }
        if self.mirror.skips(req.method(), req.headers(), &targets) {
            return next.run(req);
        }
        let (mut head, request_body) = req.into_parts();
        let Some(targets) = self.mirror.choose(&head, next.conn(), targets) else {
            return next.run(Request::from_parts(head, request_body));
        };
        let Some(pending) = self.mirror.pending(&mut head, next.conn(), targets) else {
            return next.run(Request::from_parts(head, request_body));
        };
        let comparison = pending.comparison();
        let verdict = pending.verdict();
        let limit = self.mirror.copy_timeout();
        let size = http_body::Body::size_hint(&request_body);
        let response = if http_body::Body::is_end_stream(&request_body) {
            // No body, nothing for a later `request_body` to refuse.
            Capture::new(pending, &SizeHint::with_exact(0), BodyRefusal::default()).finish();
            next.run(Request::from_parts(head, request_body))
        } else if size.lower() > pending.max_body() {
            // Longer than `max_body` by its own Content-Length: no copy can
            // come of it, so nothing is teed, nor read on for the copy
            // after a `respond`.
            pending.abandon(Abandon::TooLarge);
            next.run(Request::from_parts(head, request_body))
        } else {
            let refusal = body_refusal(&mut head.extensions);
            let (tee, rest) = Tee::new(request_body, Capture::new(pending, &size, refusal));
            let req = Request::from_parts(head, body::boxed(tee));
            Box::pin(async move {
                let response = next.run(req).await;
                rest.wait_if_reading(limit).await;
                response
            })
        };
        // With `primary_status`: the copy goes out, or not, as the head
        // passes; the client's response is not held for it.
        let response = match verdict {
            None => response,
            Some(verdict) => Box::pin(async move {
                let response = response.await;
                verdict.judge(&response);
                response
            }),
        };
        match comparison {
            None => response,
            Some(comparison) => Box::pin(async move { comparison.watch(response.await) }),
        }
    }
}

/// The request's [`BodyRefusal`], shared by every mirror in the chain:
/// whichever `request_body` comes after them refuses the body for all.
fn body_refusal(extensions: &mut http::Extensions) -> BodyRefusal {
    if let Some(refusal) = extensions.get::<BodyRefusal>() {
        return refusal.clone();
    }
    let refusal = BodyRefusal::default();
    extensions.insert(refusal.clone());
    refusal
}
