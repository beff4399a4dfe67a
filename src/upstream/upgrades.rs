//! Which `Upgrade` protocols `reverse_proxy` tunnels (its `upgrades`
//! option, WebSocket by default): those listed, and never `h2c`.
//!
//! Once the upstream answers 101, every later byte of the client's
//! connection goes to it unseen: no route, matcher or handler looks at it
//! again. That is what a WebSocket needs, but an `h2c` upgrade would let
//! the client speak HTTP/2 to the upstream, on any path, past every route
//! rule. So only protocols named here are offered upstream; a request
//! offering none of them goes on as a plain request without its upgrade
//! (as nginx does), and the connection stays teebox's.

use http::HeaderValue;

/// The protocol names allowed, lower-cased, without versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrades(Box<[Protocol]>);

/// One protocol name `upgrades` may allow: a token (RFC 9110 §7.8), and
/// never `h2c`, whoever builds the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol(Box<str>);

/// Why a name cannot be a [`Protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadProtocol {
    /// `h2c`: a tunnel would carry later requests past the routes.
    H2c,
    /// Not a token, or a name with its version.
    NotAToken,
}

impl Protocol {
    pub fn new(name: &str) -> Result<Protocol, BadProtocol> {
        if name.eq_ignore_ascii_case("h2c") {
            return Err(BadProtocol::H2c);
        }
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(BadProtocol::NotAToken);
        }
        Ok(Protocol(name.to_ascii_lowercase().into()))
    }
}

impl Upgrades {
    /// Exactly these protocols (none: no upgrade is tunnelled).
    pub fn allowing(protocols: Vec<Protocol>) -> Upgrades {
        Upgrades(protocols.into())
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
            .any(|n| name.eq_ignore_ascii_case(n.0.as_bytes()))
    }
}

/// The protocols of an `Upgrade` value (a comma-separated list).
fn protocols(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    super::hop_by_hop::list(value.as_bytes())
}

/// RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowing(names: &[&str]) -> Upgrades {
        Upgrades::allowing(names.iter().map(|n| Protocol::new(n).unwrap()).collect())
    }

    #[test]
    fn offers_only_what_is_allowed() {
        let upgrades = allowing(&["websocket"]);
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
    fn h2c_and_names_with_versions_are_never_protocols() {
        assert_eq!(Protocol::new("H2C"), Err(BadProtocol::H2c));
        assert_eq!(Protocol::new("websocket/13"), Err(BadProtocol::NotAToken));
        assert_eq!(Protocol::new(""), Err(BadProtocol::NotAToken));
        assert_eq!(Protocol::new("WebSocket").unwrap().0.as_ref(), "websocket");
    }

    #[test]
    fn a_switch_must_be_to_allowed_protocols_only() {
        let upgrades = allowing(&["websocket"]);
        let allows = |v: &'static str| upgrades.allows(&HeaderValue::from_static(v));
        assert!(allows("websocket"));
        assert!(allows("websocket/13"));
        assert!(!allows("h2c"));
        assert!(!allows("websocket, h2c"));
        assert!(!allows(""));
    }
}
