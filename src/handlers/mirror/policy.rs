//! The mirror's `methods`, `marker`, `sample_by` and `primary_status`:
//! which requests it copies, declared here and read into
//! [`crate::mirror::policy`]'s settings.

use std::borrow::Cow;
use std::ops::RangeInclusive;

use http::{HeaderName, Method};
use kdl::{KdlEntry, KdlNode};

use crate::config::options::{Block, Spec, Unset, Value};
use crate::config::reader::{arguments, Reader};
use crate::config::value::{self, Parsed};
use crate::config::Problem;
use crate::mirror::policy::{Policy, SampleKey, StatusFilter};

pub static METHODS: Spec<Methods> = Spec::once(
    "methods",
    Methods,
    Unset::Means("all"),
    "Copy only requests with these methods (others counted skipped_method).",
);

pub static MARKER: Spec<Marker> = Spec::once(
    "marker",
    Marker,
    Unset::Default("\"Teebox-Shadow\""),
    "The header every copy carries; a request that has it is not copied again. #false: none.",
);

pub static SAMPLE_BY: Spec<SampleBy> = Spec::once(
    "sample_by",
    SampleBy,
    Unset::Means("none"),
    "Sticky sampling: requests are in or out by this key's hash, on every instance alike.",
);

pub static PRIMARY_STATUS: Spec<Statuses> = Spec::once(
    "primary_status",
    Statuses,
    Unset::Means("any"),
    "Copy only when the primary answered one of these (others counted primary_filtered).",
);

/// `methods` and `marker`.
pub fn methods_and_marker(opts: &Block, r: &mut Reader) -> Option<Policy> {
    let methods = opts.maybe(r, &METHODS);
    let marker = opts.get(r, &MARKER);
    Some(Policy::new(methods?.map(|m| m.value), marker?))
}

/// `methods "GET" "HEAD"`.
#[derive(Debug)]
pub struct Methods;

impl Value for Methods {
    type Out = Vec<Method>;
    fn describe(&self) -> Cow<'static, str> {
        "methods".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "one or more methods".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<Vec<Method>> {
        r.no_children(node);
        r.no_properties(node);
        let args = arguments(node);
        if args.is_empty() {
            r.push(
                Problem::error(node.name().span(), "`methods` needs one or more methods")
                    .label("missing argument")
                    .help("write methods \"GET\" \"HEAD\""),
            );
            return None;
        }
        r.each(&args, value::method)
    }
}

/// `marker "X-Shadow"`, or `marker #false` for none.
#[derive(Debug)]
pub struct Marker;

impl Value for Marker {
    type Out = Option<HeaderName>;
    fn describe(&self) -> Cow<'static, str> {
        "header name, or #false".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a header name, or #false for none".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        r.check(match entry.value() {
            kdl::KdlValue::Bool(false) => Ok(None),
            _ => value::header_name(entry).map(Some),
        })
    }
}

const SAMPLE_BY_USAGE: &str =
    "write sample_by \"header:X-User-Id\", \"cookie:session\", \"query:user\" or \"client_ip\"";

/// `sample_by "header:X-User-Id"`: where a request's sampling key is.
#[derive(Debug)]
pub struct SampleBy;

impl Value for SampleBy {
    type Out = SampleKey;
    fn describe(&self) -> Cow<'static, str> {
        "\"header:NAME\", \"cookie:NAME\", \"query:NAME\" or \"client_ip\"".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "where the sampling key is".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<SampleKey> {
        r.check(sample_key(entry))
    }
}

fn sample_key(entry: &KdlEntry) -> Parsed<SampleKey> {
    let text = value::non_empty_string(entry)?;
    let bad = |why: &str| {
        Problem::error(value::value_span(entry), why.to_string())
            .label("not a sampling key")
            .help(SAMPLE_BY_USAGE)
    };
    match text.split_once(':') {
        None if text == "client_ip" => Ok(SampleKey::ClientIp),
        Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
            .map(SampleKey::Header)
            .map_err(|_| bad("not a header name after `header:`")),
        Some(("cookie", name)) if !name.is_empty() => Ok(SampleKey::Cookie(name.into())),
        Some(("query", name)) if !name.is_empty() => Ok(SampleKey::Query(name.into())),
        _ => Err(bad("unknown sampling key")),
    }
}

/// `primary_status "2xx" "304"`.
#[derive(Debug)]
pub struct Statuses;

impl Value for Statuses {
    type Out = StatusFilter;
    fn describe(&self) -> Cow<'static, str> {
        "classes \"1xx\" … \"5xx\", or statuses 100–599".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "one or more statuses, such as \"2xx\" \"304\"".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<StatusFilter> {
        primary_status(node, r)
    }
}

const STATUS_USAGE: &str =
    "write a class such as \"2xx\" (1xx to 5xx) or a status such as \"304\" (100 to 599)";

pub fn primary_status(node: &KdlNode, r: &mut Reader) -> Option<StatusFilter> {
    r.no_children(node);
    r.no_properties(node);
    let args = r.some_args(node, &Statuses.expects())?;
    let ranges = r.each(&args, status_range)?;
    Some(StatusFilter::new(ranges))
}

/// One `primary_status` argument: a class (`"2xx"`) or one status
/// (`"304"`, or the integer `304`), as the codes it stands for.
fn status_range(entry: &KdlEntry) -> Parsed<RangeInclusive<u16>> {
    let bad = |why: &str| {
        Problem::error(value::value_span(entry), why.to_string())
            .label("not a status or class")
            .help(STATUS_USAGE)
    };
    let text = match entry.value() {
        kdl::KdlValue::Integer(n) => n.to_string(),
        kdl::KdlValue::String(s) => s.clone(),
        _ => return Err(bad("expected a status or a status class")),
    };
    let bytes = text.as_bytes();
    let class = match bytes {
        [c @ b'1'..=b'5', rest @ ..] if rest.eq_ignore_ascii_case(b"xx") => Some(c - b'0'),
        _ => None,
    };
    if let Some(class) = class {
        let first = u16::from(class) * 100;
        return Ok(first..=first + 99);
    }
    if let [_, rest @ ..] = bytes {
        if rest.eq_ignore_ascii_case(b"xx") {
            return Err(bad("status classes go from 1xx to 5xx"));
        }
    }
    match text.parse::<u16>() {
        Ok(code) if bytes.len() == 3 && (100..600).contains(&code) => Ok(code..=code),
        Ok(_) if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_digit) => {
            Err(bad("statuses go from 100 to 599"))
        }
        _ => Err(bad("not an HTTP status or status class")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(args: &str) -> Option<StatusFilter> {
        let doc: kdl::KdlDocument = format!("primary_status {args}").parse().unwrap();
        let mut problems = crate::config::diag::Problems::default();
        let mut r = Reader::new(&mut problems, std::env::temp_dir());
        primary_status(&doc.nodes()[0], &mut r)
    }

    #[test]
    fn status_filter_takes_classes_and_codes() {
        let f = filter("\"2xx\" \"304\" 418").expect("valid");
        let ok = |c: u16| f.matches(http::StatusCode::from_u16(c).unwrap());
        assert!(ok(200) && ok(204) && ok(299) && ok(304) && ok(418));
        assert!(!ok(199) && !ok(300) && !ok(305) && !ok(404) && !ok(500));
        assert!(filter("\"5XX\"").is_some());
        for bad in [
            "\"6xx\"", "\"2x\"", "\"600\"", "\"20\"", "99", "\"abc\"", "#true", "\"0200\"",
        ] {
            assert!(filter(bad).is_none(), "{bad}");
        }
        assert!(filter("").is_none());
    }

    /// The engine marks copies with this header when no policy says
    /// otherwise (`Policy::default`); the declared default is the same one.
    #[test]
    fn the_declared_marker_is_the_engine_s_default() {
        let mut problems = crate::config::diag::Problems::default();
        let mut r = Reader::new(&mut problems, std::env::temp_dir());
        let at = miette::SourceSpan::from(0..0);
        assert_eq!(
            MARKER.default_value(&mut r, at),
            Some(Some(crate::mirror::policy::DEFAULT_MARKER))
        );
        assert!(problems.into_vec().is_empty());
    }
}
