//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and
//! must not be forwarded by a proxy, nor may any header the `Connection`
//! header names.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that are hop-by-hop whether or not `Connection` names them, and
/// `Upgrade`. `Keep-Alive` and `Proxy-Connection` are not standard but are
/// sent by old clients; forwarding them confuses upstreams.
/// `HTTP2-Settings` belongs to an `h2c` upgrade, which is never passed on
/// (see `upgrades.rs`), so it goes even when `Connection` leaves it out.
///
/// `Trailer` is not among them (RFC 9110 §6.6.2 makes it end to end), and
/// hyper only sends trailer fields that it announces.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];
const CONNECTION: usize = 0;
const TE: usize = 5;
const TRANSFER_ENCODING: usize = 6;
const UPGRADE: usize = 7;

/// Headers no `Connection` option removes: teebox sets or checks them
/// itself, so a client (or upstream) that names them would otherwise
/// change what teebox does. `Host` would give way to the upstream's name
/// despite `preserve_host`; `Content-Length` frames the message; the
/// forwarding headers carry the chain of proxies; and the mirror's loop
/// marker keeps copies from being copied again. (`Transfer-Encoding` is
/// hop-by-hop and goes anyway.)
fn never_named(name: &HeaderName) -> bool {
    matches!(name.as_str(), "host" | "content-length")
        || matches!(classify(name), Name::Forwarding)
        || *name == crate::message::SHADOW_MARKER
}

/// What the scan makes of a header name.
enum Name {
    /// `HOP_BY_HOP[i]`.
    HopByHop(usize),
    /// One of the forwarding headers an earlier proxy may have added.
    Forwarding,
    Other,
}

/// This runs for every header of every proxied request and response, so it
/// matches the name's text, and settles most names by their length alone.
fn classify(name: &HeaderName) -> Name {
    let name = name.as_str();
    if !matches!(name.len(), 2 | 7 | 9 | 10 | 14..=19) {
        return Name::Other;
    }
    Name::HopByHop(match name {
        "connection" => CONNECTION,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => TE,
        "transfer-encoding" => TRANSFER_ENCODING,
        "upgrade" => UPGRADE,
        "http2-settings" => 8,
        "forwarded" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" => {
            return Name::Forwarding
        }
        _ => return Name::Other,
    })
}

/// Connection options that name no end-to-end header: `close`, or headers
/// removed anyway. Most requests and responses carry only these, so the
/// common case needs no lookups by name.
const IMPLIED: [&[u8]; 3] = [b"close", b"keep-alive", b"upgrade"];

/// What one pass over a header block found: which hop-by-hop headers are
/// there, what `Connection` and `TE` say, and whether forwarding headers
/// are.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan {
    /// Bit i: `HOP_BY_HOP[i]` is present.
    present: u16,
    /// `Connection` names a header other than the implied options.
    names_others: bool,
    /// `Connection` has the `upgrade` option.
    connection_upgrade: bool,
    /// `TE` lists `trailers`.
    te_trailers: bool,
    /// `Forwarded` or an `X-Forwarded-*` header is there.
    forwarding: bool,
}

impl Scan {
    pub fn of(headers: &HeaderMap) -> Scan {
        let mut scan = Scan::default();
        for (name, value) in headers {
            let i = match classify(name) {
                Name::HopByHop(i) => i,
                Name::Forwarding => {
                    scan.forwarding = true;
                    continue;
                }
                Name::Other => continue,
            };
            scan.present |= 1 << i;
            // As bytes: a value with a byte that is not ASCII (obs-text)
            // still names the headers it names.
            let bytes = value.as_bytes();
            match i {
                // The usual values, without taking the list apart.
                CONNECTION if IMPLIED.iter().any(|t| bytes.eq_ignore_ascii_case(t)) => {
                    scan.connection_upgrade |= bytes.eq_ignore_ascii_case(b"upgrade");
                }
                CONNECTION => {
                    for token in list(bytes) {
                        if token.eq_ignore_ascii_case(b"upgrade") {
                            scan.connection_upgrade = true;
                        } else if !IMPLIED.iter().any(|t| token.eq_ignore_ascii_case(t)) {
                            scan.names_others = true;
                        }
                    }
                }
                TE => {
                    scan.te_trailers |= list(bytes).any(|t| {
                        let coding = t.split(|&b| b == b';').next().unwrap_or_default();
                        coding.trim_ascii().eq_ignore_ascii_case(b"trailers")
                    })
                }
                _ => {}
            }
        }
        scan
    }

    /// The protocol a client asks to switch to, if this is an `Upgrade`
    /// request (`Connection: upgrade` plus an `Upgrade` header).
    pub fn upgrade_protocol(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let asks = self.connection_upgrade && self.present & (1 << UPGRADE) != 0;
        asks.then(|| headers.get(header::UPGRADE).cloned())
            .flatten()
    }

    /// Whether the client's `TE` says it takes trailer fields. `TE` is
    /// hop-by-hop, but teebox passes trailers on in both directions, so it
    /// may say `TE: trailers` upstream for such a client (RFC 9110
    /// §10.1.4): gRPC servers expect it, and HTTP/1.1 servers send trailers
    /// only when told.
    pub fn accepts_trailers(&self) -> bool {
        self.te_trailers
    }

    /// Whether the block has `Forwarded` or `X-Forwarded-*` (an earlier
    /// proxy's), which new values must join or replace.
    pub fn has_forwarding(&self) -> bool {
        self.forwarding
    }

    /// Removes hop-by-hop headers and those named in `Connection` (but
    /// never those [`never_named`] lists). `Upgrade` is removed too; a proxy
    /// that passes an upgrade through puts it back. Only what is there is
    /// removed: most blocks have none, or only `Connection`.
    ///
    /// With `Transfer-Encoding`, `Content-Length` goes too: the message is
    /// framed by its transfer coding, and RFC 9112 §6.3 has a proxy remove
    /// the length before forwarding. Left in, it would frame the body
    /// teebox passes on, cutting it short.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if self.names_others {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|v| list(v.as_bytes()))
                .filter_map(|t| HeaderName::from_bytes(t).ok())
                .filter(|name| !never_named(name))
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            if self.present & (1 << i) != 0 {
                headers.remove(name);
            }
        }
        if self.present & (1 << TRANSFER_ENCODING) != 0 {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
}

/// The protocol a client asks to switch to (see [`Scan::upgrade_protocol`]).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    Scan::of(headers).upgrade_protocol(headers)
}

/// Removes hop-by-hop headers (see [`Scan::strip`]).
pub fn strip(headers: &mut HeaderMap) {
    Scan::of(headers).strip(headers)
}

/// The items of a comma-separated header value.
pub(super) fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn a_connection_value_with_a_byte_past_ascii_still_names_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_bytes(b"X-Secret, caf\xe9").unwrap(),
        );
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn trailers_in_te() {
        let te = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert("te", value.parse().unwrap());
            Scan::of(&h).accepts_trailers()
        };
        assert!(te("trailers"));
        assert!(te("gzip;q=0.5, Trailers"));
        assert!(!te("gzip, deflate"));
        assert!(!te("trailersx"));
        assert!(!Scan::of(&HeaderMap::new()).accepts_trailers());
    }

    #[test]
    fn detects_upgrade() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
        h.remove("connection");
        assert!(upgrade_protocol(&h).is_none());
        // A lone option takes the short way; it must end the same.
        h.insert("connection", "Upgrade".parse().unwrap());
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
        h.insert("connection", "keep-alive".parse().unwrap());
        assert!(upgrade_protocol(&h).is_none());
        let mut lone = h.clone();
        strip(&mut lone);
        assert!(lone.is_empty());
    }

    #[test]
    fn implied_options_do_not_hide_a_named_header() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Keep-Alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn nothing_to_strip_leaves_headers_alone() {
        let mut h = HeaderMap::new();
        h.insert("host", "a".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn connection_never_removes_what_teebox_sets_or_checks() {
        let mut h = HeaderMap::new();
        let named = "Host, Content-Length, Forwarded, X-Forwarded-For, \
                     X-Forwarded-Proto, X-Forwarded-Host, Teebox-Shadow, X-Secret";
        h.insert("connection", named.parse().unwrap());
        for name in named.split(", ") {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
        }
        strip(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "content-length",
                "forwarded",
                "host",
                "teebox-shadow",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
    }

    #[test]
    fn http2_settings_goes_even_when_connection_does_not_name_it() {
        let mut h = HeaderMap::new();
        h.insert("http2-settings", "AAMAAABkAAQAAP__".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn transfer_encoding_takes_content_length_with_it() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "3".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        strip(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut h = HeaderMap::new();
        h.insert("content-length", "3".parse().unwrap());
        strip(&mut h);
        assert_eq!(h.len(), 1);
    }
}
