//! `route { … }`: matchers and the chain of handlers, each decoded by the
//! handler the registry names.

use kdl::KdlNode;

use crate::config::diag::Problem;
use crate::config::handler::{HandlerKind, MiddlewareConfig, Registry, TerminalConfig};
use crate::config::matchers::{HeaderMatch, PathPattern, RouteMatch};
use crate::config::model::*;

use super::Unfinished;
use crate::config::reader::{arguments, children, name_span, Reader};
use crate::config::value;

/// One handler node, decoded, with its place in the chain.
enum Step {
    Middleware(Option<Box<dyn MiddlewareConfig>>),
    Terminal(Option<Box<dyn TerminalConfig>>),
}

pub(super) fn route(
    node: &KdlNode,
    r: &mut Reader,
    registry: Registry,
    unfinished: &mut Vec<Unfinished>,
) -> Option<Route> {
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
        match registry.find(name) {
            Some(HandlerKind::Middleware { decode, .. }) => {
                steps.push((Step::Middleware(decode(child, r)), child))
            }
            Some(HandlerKind::Terminal { decode, .. }) => {
                steps.push((Step::Terminal(decode(child, r)), child))
            }
            None => {
                ok = false;
                let mut known = vec!["method", "header"];
                known.extend(registry.names().filter(|n| *n != "header"));
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
                    registry.terminal_names().join(", ")
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
            Step::Middleware(Some(m)) => middleware.push(Placed::at(child, m)),
            Step::Terminal(t) => terminal = Some((t, child)),
            Step::Middleware(None) => ok = false,
        }
    }
    let terminal = match terminal {
        Some((t, node)) => t.map(|t| Placed::at(node, t)),
        // An unknown node may well be the misspelled terminal: its own
        // error says so, and a second one would only distract.
        None if !ok => None,
        None => {
            r.push(
                Problem::error(name_span(node), "this route has no handler that answers")
                    .label("no terminal handler")
                    .help(format!(
                        "end the route with one of: {}",
                        registry.terminal_names().join(", ")
                    )),
            );
            None
        }
    };
    match (ok, path, terminal) {
        (true, Some(path), Some(terminal)) => Some(Route {
            matcher: RouteMatch {
                path,
                methods,
                headers,
            },
            middleware,
            terminal,
            span: node.span(),
        }),
        (_, _, terminal) => {
            let mut handlers: Unfinished = middleware.into_iter().map(|p| p.upcast()).collect();
            handlers.extend(terminal.map(|p| p.upcast()));
            unfinished.push(handlers);
            None
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
