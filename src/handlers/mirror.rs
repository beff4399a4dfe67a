//! `mirror "http://staging:8080" ... { options }`: sends a copy of each
//! sampled request to every target, and passes the request on untouched.
//! The engine (backlogs, workers, breaker) is in `crate::mirror`.

use std::sync::Arc;
use std::time::Duration;

use kdl::KdlNode;

use super::{BoxFuture, BuildContext, BuildError, HandlerKind, Middleware, MiddlewareConfig, Next};
use crate::config::reader::{arguments, name_span, Reader, Repeat};
use crate::config::value::{self, UpstreamUrl};
use crate::config::Problem;
use crate::http::{body, hop_by_hop, Request, Response};
use crate::mirror::breaker::BreakerConfig;
use crate::mirror::compare::CompareConfig;
use crate::mirror::policy::{Policy, SampleKey};
use crate::mirror::rewrite::CopyRewrite;
use crate::mirror::target::TargetSettings;
use crate::mirror::tee::{Capture, Tee};
use crate::mirror::{Mirror, MirrorOptions};

pub static KIND: HandlerKind = HandlerKind::Middleware {
    name: "mirror",
    decode,
};

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub urls: Vec<UpstreamUrl>,
    pub options: MirrorOptions,
}

fn decode(node: &KdlNode, r: &mut Reader) -> Option<Box<dyn MiddlewareConfig>> {
    r.no_properties(node);
    let urls = r.urls(&arguments(node));
    let mut ok = urls.is_some();
    let urls = urls.unwrap_or_default();
    let opts = r.options(
        node,
        &[
            ("name", Repeat::Once),
            ("sample", Repeat::Once),
            ("concurrency", Repeat::Once),
            ("backlog", Repeat::Once),
            ("timeout", Repeat::Once),
            ("alert_interval", Repeat::Once),
            ("max_body", Repeat::Once),
            ("max_failures", Repeat::Once),
            ("retry_after", Repeat::Once),
            ("fail_after", Repeat::Once),
            ("header_up", Repeat::Many),
            ("host", Repeat::Once),
            ("tls_ca", Repeat::Once),
            ("tls_server_name", Repeat::Once),
            ("tls_insecure_skip_verify", Repeat::Once),
            ("rewrite", Repeat::Many),
            ("query_set", Repeat::Many),
            ("query_remove", Repeat::Many),
            ("replace_body", Repeat::Many),
            ("compare", Repeat::Once),
            ("methods", Repeat::Once),
            ("marker", Repeat::Once),
            ("max_rps", Repeat::Once),
            ("sample_by", Repeat::Once),
            ("host_suffix", Repeat::Once),
            ("h2c", Repeat::Once),
        ],
    );
    let name = match opts.one("name") {
        Some(n) => r
            .value(n, "a name", value::non_empty_string)
            .filter(|name| r.claim_name("mirror", name, arguments(n)[0].span()))
            .map(Some),
        None => Some(None),
    };
    if arguments(node).is_empty() && opts.one("name").is_none() {
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
    let duration = |r: &mut Reader, key: &str, default: Duration| match opts.one(key) {
        Some(n) => r.value(n, "a duration such as \"2s\"", value::positive_duration),
        None => Some(default),
    };
    let int = |r: &mut Reader, key: &str, max: i128, default: i128| match opts.one(key) {
        Some(n) => r.value(n, &format!("a whole number from 1 to {max}"), |e| {
            value::integer(e, 1, max)
        }),
        None => Some(default),
    };
    let sample = match opts.one("sample") {
        Some(n) => r.value(n, "a fraction from 0 to 1", value::fraction),
        None => Some(1.0),
    };
    let concurrency = int(r, "concurrency", 1024, 4);
    let backlog = int(r, "backlog", 1_000_000, 1024);
    let max_failures = int(r, "max_failures", 1_000_000, 5);
    let timeout = duration(r, "timeout", Duration::from_secs(5));
    let alert_interval = duration(r, "alert_interval", Duration::from_secs(60));
    let retry_after = duration(r, "retry_after", Duration::from_secs(60));
    let fail_after = duration(r, "fail_after", Duration::from_secs(30 * 60));
    let max_body = match opts.one("max_body") {
        Some(n) => r.value(n, "a size such as \"1MiB\"", value::size),
        None => Some(1 << 20),
    };
    let header_up = r.header_ops(&opts.all("header_up"));
    let host = match opts.one("host") {
        Some(n) => r
            .value(
                n,
                "a host name, such as \"staging.internal\"",
                value::host_header,
            )
            .map(Some),
        None => Some(None),
    };
    let tls = crate::http::upstream_tls::UpstreamTls::decode(&opts, r);
    let rewrite = CopyRewrite::decode(
        r,
        &opts.all("rewrite"),
        &opts.all("query_set"),
        &opts.all("query_remove"),
        &opts.all("replace_body"),
    );
    let policy = Policy::decode(opts.one("methods"), opts.one("marker"), r);
    let host_suffix = match (opts.one("host_suffix"), opts.one("host")) {
        (Some(n), Some(host)) => {
            r.push(
                Problem::error(name_span(n), "`host_suffix` and `host` both set the copies' Host")
                    .label("give one")
                    .also(name_span(host), "also sets it"),
            );
            None
        }
        (Some(n), None) => r
            .value(n, "a suffix such as \"-shadow\"", |e| {
                let suffix = value::non_empty_string(e)?;
                match suffix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
                    true => Ok(suffix),
                    false => Err(Problem::error(value::value_span(e), "a host suffix holds letters, digits, `-` and `.` only")
                        .label("not part of a host name")),
                }
            })
            .map(Some),
        (None, _) => Some(None),
    };
    let sample_by = match opts.one("sample_by") {
        Some(n) => SampleKey::decode(n, r).map(Some),
        None => Some(None),
    };
    let max_rps = match opts.one("max_rps") {
        Some(n) => r
            .value(n, "a whole number of copies a second, from 1 to 1000000", |e| {
                value::integer(e, 1, 1_000_000)
            })
            .map(|n| Some(n as u32)),
        None => Some(None),
    };
    let h2c = match opts.one("h2c") {
        Some(n) => r.value(n, "#true or #false", value::boolean),
        None => Some(false),
    };
    let compare = match opts.one("compare") {
        Some(n) => CompareConfig::decode(n, r).map(Some),
        None => Some(None),
    };
    if !ok {
        return None;
    }
    Some(Box::new(MirrorConfig {
        urls,
        options: MirrorOptions {
            name: name?,
            sample: sample?,
            max_body: max_body?,
            alert_interval: alert_interval?,
            header_up,
            rewrite: Arc::new(rewrite?),
            compare: compare?,
            policy: policy?,
            sample_by: sample_by?,
            host_suffix: host_suffix?,
            targets: TargetSettings {
                concurrency: concurrency? as usize,
                backlog: backlog? as usize,
                timeout: timeout?,
                breaker: BreakerConfig {
                    max_failures: max_failures? as u32,
                    retry_after: retry_after?,
                    fail_after: fail_after?,
                },
                host: host?,
                max_rps: max_rps?,
                h2c: h2c?,
            },
            tls: tls?,
        },
    }))
}

impl MiddlewareConfig for MirrorConfig {
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Middleware>, BuildError> {
        let label = self
            .options
            .name
            .clone()
            .unwrap_or_else(|| cx.route.clone());
        let mirror = Mirror::start(self.options.clone(), &self.urls, label, &cx.base_dir).map_err(BuildError)?;
        cx.mirrors.register(mirror.clone());
        Ok(Arc::new(MirrorHandler { mirror }))
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
        if !self.mirror.sampled(&head, &targets) {
            return next.run(Request::from_parts(head, request_body));
        }
        let Some(pending) = self.mirror.pending(&mut head, targets) else {
            return next.run(Request::from_parts(head, request_body));
        };
        let comparison = pending.comparison();
        let limit = self.mirror.copy_timeout();
        let response = if http_body::Body::is_end_stream(&request_body) {
            Capture::new(pending).finish();
            next.run(Request::from_parts(head, request_body))
        } else {
            let (tee, rest) = Tee::new(request_body, Capture::new(pending));
            let req = Request::from_parts(head, body::boxed(tee));
            Box::pin(async move {
                let response = next.run(req).await;
                rest.wait_if_reading(limit).await;
                response
            })
        };
        match comparison {
            None => response,
            Some(comparison) => Box::pin(async move { comparison.watch(response.await) }),
        }
    }
}
