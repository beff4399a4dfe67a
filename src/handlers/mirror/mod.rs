//! `mirror "http://staging:8080" ... { options }`: sends a copy of each
//! sampled request to every target, and passes the request on untouched.
//! The engine (backlogs, workers, breaker) is in `crate::mirror`; this
//! handler reads the node into the engine's settings and runs it. Every
//! option is declared once: the mirror's own here, the ones a `target`
//! node may set over the mirror's in `targets` (with the reading of the
//! targets), the copy edits, the policy and `compare` each in a file of
//! their own, and those shared with `reverse_proxy` in
//! `handlers::upstream_options`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http_body::SizeHint;
use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use super::upstream_options as up;
use super::{
    BoxFuture, BuildContext, BuildError, FileView, HandlerConfig, HandlerKind, HandlerState,
    Middleware, MiddlewareConfig, Next, Published,
};
use crate::config::options::{
    self as o, Block, Duration, Nested, Size, Spec, Table, Text, Unset, Url, Value,
};
use crate::config::reader::{arguments, name_span, Reader};
use crate::config::value;
use crate::config::Problem;
use crate::message::body::BodyRefusal;
use crate::message::{body, Request, Response};
use crate::mirror::target::TargetSpec;
use crate::mirror::tee::{Abandon, Capture, Tee};
use crate::mirror::{Mirror, MirrorOptions};
use crate::upstream::hop_by_hop;
use crate::upstream::url::UpstreamUrl;

pub static KIND: HandlerKind = HandlerKind::Middleware {
    name: "mirror",
    decode,
    options: OPTIONS,
};

mod compare;
mod copy_edits;
mod policy;
mod targets;

/// What `mirror` takes, in the order its diagnostics list it: its target
/// URLs, the options of the mirror as a whole, then those a `target` node
/// may set over the mirror's (for which the mirror's are every target's).
pub static OPTIONS: &Table = &[
    &TARGETS,
    &NAME,
    &ALERT_INTERVAL,
    &MAX_BODY,
    &up::TLS_CA,
    &up::TLS_SERVER_NAME,
    &up::TLS_INSECURE_SKIP_VERIFY,
    &copy_edits::REWRITE,
    &copy_edits::QUERY_SET,
    &copy_edits::QUERY_REMOVE,
    &copy_edits::REPLACE_BODY,
    &COMPARE,
    &policy::METHODS,
    &policy::MARKER,
    &policy::SAMPLE_BY,
    &HOST_SUFFIX,
    &policy::PRIMARY_STATUS,
    &TARGET,
    &targets::SAMPLE,
    &targets::CONCURRENCY,
    &targets::BACKLOG,
    &targets::TIMEOUT,
    &targets::MAX_FAILURES,
    &targets::RETRY_AFTER,
    &targets::FAIL_AFTER,
    &up::HEADER_UP,
    &targets::HOST,
    &targets::MAX_RPS,
    &up::H2C,
];

static TARGETS: Spec<Url> = Spec::arguments(
    "targets",
    Url {
        expects: "target URLs, such as \"http://staging:8080\"",
    },
    Unset::Means("none"),
    "Where copies go; without any, a name takes them from the admin endpoint.",
);

static NAME: Spec<Text> = Spec::once(
    "name",
    Text::NON_EMPTY,
    Unset::Means("the route"),
    "Names the mirror in logs and for the admin endpoint; unique in the file.",
);

static ALERT_INTERVAL: Spec<Duration> = Spec::once(
    "alert_interval",
    Duration::POSITIVE,
    Unset::Default("60s"),
    "At most one warning per target per interval.",
);

static MAX_BODY: Spec<Size> = Spec::once(
    "max_body",
    Size,
    Unset::Default("1MiB"),
    "Larger request bodies are not copied (counted); 0 copies bodyless requests only.",
);

static HOST_SUFFIX: Spec<HostSuffix> = Spec::once(
    "host_suffix",
    HostSuffix,
    Unset::Means("none"),
    "The Host of copies is the client's host name plus this, port kept; not with host.",
);

static COMPARE: Spec<Nested> = Spec::once(
    "compare",
    Nested(compare::OPTIONS),
    Unset::Means("none"),
    "Compares each target's response with the primary's; mismatches go to a diff log.",
);

static TARGET: Spec<Nested> = Spec::many(
    "target",
    Nested(targets::OPTIONS),
    Unset::Means("none"),
    "A further target with options of its own; what it leaves out is the mirror's.",
);

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// The targets the file lists: the mirror's arguments (with the
    /// mirror's settings), then its `target` nodes.
    pub targets: Vec<TargetSpec>,
    /// Every target URL as written, for the file-wide check.
    pub written: Vec<(UpstreamUrl, SourceSpan)>,
    pub options: MirrorOptions,
}

fn decode(node: &KdlNode, r: &mut Reader) -> Option<Box<dyn MiddlewareConfig>> {
    r.no_properties(node);
    let args = arguments(node);
    let urls = TARGETS.read_list(&args, r);
    let mut ok = urls.is_some();
    let opts = o::read(node, OPTIONS, r);
    let name = name(&opts, r);
    let target_nodes = opts.nodes(&TARGET);
    if args.is_empty() && opts.node(&NAME).is_none() && target_nodes.is_empty() {
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
    let settings = targets::settings(&opts, r, None);
    let alert_interval = opts.get(r, &ALERT_INTERVAL);
    let max_body = opts.get(r, &MAX_BODY);
    let header_up = up::header_up(&opts, r);
    let tls = up::tls(&opts, r);
    let edits = copy_edits::decode(&opts, r);
    let policy = policy::methods_and_marker(&opts, r);
    let host_suffix = host_suffix(&opts, r);
    let sample_by = opts.maybe(r, &policy::SAMPLE_BY);
    let primary_status = opts.maybe(r, &policy::PRIMARY_STATUS);
    let compare = match opts.node(&COMPARE) {
        Some(n) => compare::decode(n, r).map(Some),
        None => Some(None),
    };
    let mut written = Vec::new();
    let listed = targets::Listed {
        node,
        opts: &opts,
        table: OPTIONS,
        args: &args,
        urls,
        settings: settings.as_ref(),
        nodes: target_nodes,
    };
    let targets = targets::specs(listed, &mut written, r);
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
            sample_by: sample_by?.map(|key| key.value),
            host_suffix: host_suffix?,
            primary_status: primary_status?.map(|filter| Arc::new(filter.value)),
            targets: settings?,
            tls: tls?,
        },
    }))
}

/// `name`, claimed for this mirror: the admin endpoint finds a mirror by
/// it, so no two may share one.
fn name(opts: &Block, r: &mut Reader) -> Option<Option<String>> {
    let Some(given) = opts.maybe(r, &NAME)? else {
        return Some(None);
    };
    let at = opts
        .node(&NAME)
        .and_then(|n| arguments(n).first().map(|a| a.span()))
        .unwrap_or(given.span);
    r.claim_name("mirror", &given.value, at)
        .then_some(Some(given.value))
}

/// `host_suffix`, which may not come with the mirror's `host`.
fn host_suffix(opts: &Block, r: &mut Reader) -> Option<Option<String>> {
    if let (Some(n), Some(host)) = (opts.node(&HOST_SUFFIX), opts.node(&targets::HOST)) {
        r.push(
            Problem::error(
                name_span(n),
                "`host_suffix` and `host` both set the copies' Host",
            )
            .label("give one")
            .also(name_span(host), "also sets it"),
        );
        return None;
    }
    Some(opts.maybe(r, &HOST_SUFFIX)?.map(|suffix| suffix.value))
}

/// Every value of a repeatable option; `None` when one could not be read
/// (each is reported), so that a block with a broken line decodes to
/// nothing, as any other broken option makes it.
fn every<V: Value>(opts: &Block, r: &mut Reader, spec: &Spec<V>) -> Option<Vec<V::Out>> {
    let values = opts.every(r, spec);
    (values.len() == opts.nodes(spec).len()).then_some(values)
}

/// `host_suffix "-shadow"`: letters, digits, `-` and `.`.
#[derive(Debug)]
struct HostSuffix;

impl Value for HostSuffix {
    type Out = String;
    fn describe(&self) -> Cow<'static, str> {
        "letters, digits, -, .".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a suffix such as \"-shadow\"".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<String> {
        let suffix = r.check(value::non_empty_string(entry))?;
        let host_like = suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_like {
            r.push(
                Problem::error(
                    value::value_span(entry),
                    "a host suffix holds letters, digits, `-` and `.` only",
                )
                .label("not part of a host name"),
            );
            return None;
        }
        Some(suffix)
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
