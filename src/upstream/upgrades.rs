//! Which `Upgrade` protocols `reverse_proxy` tunnels (its `upgrades`
//! option): WebSocket unless told otherwise, and never `h2c`.
//!
//! Once the upstream answers 101, every later byte of the client's
//! connection goes to it unseen: no route, matcher or handler looks at it
//! again. That is what a WebSocket needs, but an `h2c` upgrade would let
//! the client speak HTTP/2 to the upstream, on any path, past every route
//! rule. So only protocols named here are offered upstream; a request
//! offering none of them goes on as a plain request without its upgrade
//! (as nginx does), and the connection stays teebox's.

use http::HeaderValue;
use kdl::{KdlEntry, KdlNode, KdlValue};

use crate::config::reader::Reader;
use crate::config::value::{self, Parsed};
use crate::config::Problem;

/// The protocol names allowed, lower-cased, without versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrades(Box<[Box<str>]>);

impl Default for Upgrades {
    fn default() -> Self {
        Upgrades(Box::new(["websocket".into()]))
    }
}

impl Upgrades {
    /// `upgrades "websocket" "foo"`, or `upgrades #false` for none; absent,
    /// WebSocket alone.
    pub fn decode(node: Option<&KdlNode>, r: &mut Reader) -> Option<Upgrades> {
        let Some(node) = node else {
            return Some(Upgrades::default());
        };
        r.no_children(node);
        r.no_properties(node);
        let args = r.some_args(
            node,
            "one or more protocol names, such as \"websocket\", or #false for none",
        )?;
        if let [only] = args.as_slice() {
            if matches!(only.value(), KdlValue::Bool(false)) {
                return Some(Upgrades(Box::new([])));
            }
        }
        r.each(&args, protocol_name)
            .map(|names| Upgrades(names.into()))
    }

    /// What to offer upstream of the protocols an `Upgrade` value lists:
    /// those allowed, in the client's order; `None` when that is none.
    pub fn offer(&self, value: &HeaderValue) -> Option<HeaderValue> {
        let (allowed, refused): (Vec<&[u8]>, Vec<&[u8]>) =
            protocols(value).partition(|p| self.allows_one(p));
        match (allowed.is_empty(), refused.is_empty()) {
            (true, _) => None,
            (false, true) => Some(value.clone()),
            (false, false) => HeaderValue::from_bytes(&allowed.join(&b", "[..])).ok(),
        }
    }

    /// Whether the protocols an upstream's 101 switches to are all allowed
    /// (and it names one).
    pub fn allows(&self, value: &HeaderValue) -> bool {
        let mut listed = protocols(value).peekable();
        listed.peek().is_some() && listed.all(|p| self.allows_one(p))
    }

    /// A protocol as an `Upgrade` value lists it (`name[/version]`) is
    /// allowed when its name is, whatever the version.
    fn allows_one(&self, protocol: &[u8]) -> bool {
        let name = protocol.split(|&b| b == b'/').next().unwrap_or_default();
        self.0
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
    }
}

/// The protocols of an `Upgrade` value (a comma-separated list).
fn protocols(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    super::hop_by_hop::list(value.as_bytes())
}

/// One name in `upgrades`: a token (RFC 9110 §7.8), and not `h2c`.
fn protocol_name(entry: &KdlEntry) -> Parsed<Box<str>> {
    let name = value::non_empty_string(entry)?;
    if name.eq_ignore_ascii_case("h2c") {
        return Err(Problem::error(
            value::value_span(entry),
            "`h2c` upgrades are never tunnelled",
        )
        .label("not allowed")
        .help(
            "an h2c tunnel would carry later requests past the routes; \
             for HTTP/2 upstream, set `h2c #true`",
        ));
    }
    if !name.bytes().all(is_tchar) {
        return Err(Problem::error(
            value::value_span(entry),
            format!("`{name}` is not a protocol name"),
        )
        .label("not a protocol name")
        .help("write the name alone, such as \"websocket\": a token, without a version"));
    }
    Ok(name.to_ascii_lowercase().into())
}

/// RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowing(names: &[&str]) -> Upgrades {
        Upgrades(names.iter().map(|&n| n.into()).collect())
    }

    #[test]
    fn offers_only_what_is_allowed() {
        let upgrades = Upgrades::default();
        let offer = |v: &'static str| upgrades.offer(&HeaderValue::from_static(v));
        assert_eq!(offer("websocket").unwrap(), "websocket");
        assert_eq!(offer("WebSocket").unwrap(), "WebSocket");
        assert_eq!(offer("h2c"), None);
        assert_eq!(offer("h2c, websocket").unwrap(), "websocket");
        assert_eq!(offer("foo"), None);
        assert_eq!(offer(" , "), None);
        let more = allowing(&["websocket", "foo"]);
        let offer = |v: &'static str| more.offer(&HeaderValue::from_static(v));
        assert_eq!(offer("h2c, foo/2, websocket").unwrap(), "foo/2, websocket");
        assert_eq!(offer("foobar"), None);
        assert_eq!(
            allowing(&[]).offer(&HeaderValue::from_static("websocket")),
            None
        );
    }

    #[test]
    fn a_switch_must_be_to_allowed_protocols_only() {
        let upgrades = Upgrades::default();
        let allows = |v: &'static str| upgrades.allows(&HeaderValue::from_static(v));
        assert!(allows("websocket"));
        assert!(allows("websocket/13"));
        assert!(!allows("h2c"));
        assert!(!allows("websocket, h2c"));
        assert!(!allows(""));
    }
}
