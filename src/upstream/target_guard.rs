//! Where copies may go: the guard against using runtime mirror targets for
//! server-side request forgery (SSRF).
//!
//! A target added through the admin endpoint is checked when it is added
//! (its host must be a plain name or a canonical address, and every address
//! it resolves to must be allowed), and copies re-check names when they
//! connect (a name that later resolves elsewhere, DNS rebinding, is
//! refused). Refused unless an `allow_target` pattern names the address
//! itself: unspecified, link-local (where cloud metadata services live),
//! multicast and broadcast addresses, and the metadata addresses
//! 169.254.169.254, 100.100.100.200 and fd00:ec2::254; the same for the
//! IPv4 address inside an IPv6 one (mapped, compatible, translated, NAT64,
//! 6to4, Teredo and ISATAP forms), where a translator or relay delivers it.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

/// Why copies may not go to an address: what kind of address it is, and
/// for an IPv6 address that carries an IPv4 one, which and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub kind: &'static str,
    pub embedded: Option<(Ipv4Addr, Embedding)>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)?;
        match self.embedded {
            Some((v4, how)) => write!(f, " ({v4} inside {})", how.name()),
            None => Ok(()),
        }
    }
}

/// The IPv6 forms that carry an IPv4 address a packet ends up going to
/// (directly, or through a translator or relay on the way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`
    Mapped,
    /// `::a.b.c.d` (deprecated, still routed by some stacks)
    Compatible,
    /// `64:ff9b::/96` (RFC 6052) and `64:ff9b:1::/48` (RFC 8215)
    Nat64,
    /// `2002:AABB:CCDD::/48` (RFC 3056)
    SixToFour,
    /// `2001:0::/32`, the client address inverted in the last 32 bits
    /// (RFC 4380)
    Teredo,
    /// `::ffff:0:a.b.c.d` (RFC 2765's IPv4-translated form, for SIIT)
    Translated,
    /// An interface identifier `[0-3]00:5efe:a.b.c.d` under any prefix
    /// (RFC 5214): an ISATAP tunnel sends to the IPv4 address
    Isatap,
}

impl Embedding {
    fn name(self) -> &'static str {
        match self {
            Embedding::Mapped => "an IPv4-mapped address",
            Embedding::Compatible => "an IPv4-compatible address",
            Embedding::Nat64 => "a NAT64 address",
            Embedding::SixToFour => "a 6to4 address",
            Embedding::Teredo => "a Teredo address",
            Embedding::Translated => "an IPv4-translated address",
            Embedding::Isatap => "an ISATAP address",
        }
    }
}

/// Why copies may not go to `ip`, if they may not. An IPv6 address that
/// carries an IPv4 one is refused if either is: a translator or relay
/// would deliver the copy to the IPv4 address.
pub fn refused_ip(ip: IpAddr) -> Option<Refused> {
    let plain = |kind| Refused {
        kind,
        embedded: None,
    };
    match ip {
        IpAddr::V4(v4) => refused_v4(v4).map(plain),
        IpAddr::V6(v6) => refused_v6(v6).map(plain).or_else(|| {
            embedded_v4(v6).into_iter().find_map(|(v4, how)| {
                refused_v4(v4).map(|kind| Refused {
                    kind,
                    embedded: Some((v4, how)),
                })
            })
        }),
    }
}

/// The IPv4 addresses `ip` may carry. More than one for the local-use
/// NAT64 prefix, whose operator picks where the IPv4 address sits, and for
/// an ISATAP identifier under a prefix that carries one too.
fn embedded_v4(ip: Ipv6Addr) -> Vec<(Ipv4Addr, Embedding)> {
    let o = ip.octets();
    let v4 = |a: [u8; 4]| Ipv4Addr::from(a);
    let last = v4([o[12], o[13], o[14], o[15]]);
    let seg = ip.segments();
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return vec![(mapped, Embedding::Mapped)];
    }
    if seg[..6] == [0; 6] {
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        return match u32::from(last) {
            0 | 1 => Vec::new(),
            _ => vec![(last, Embedding::Compatible)],
        };
    }
    let mut found = by_prefix(seg, o, last);
    // The identifier is independent of the prefix, so it may come with one
    // of the forms above.
    if seg[4] & 0xfcff == 0 && seg[5] == 0x5efe {
        found.push((last, Embedding::Isatap));
    }
    found
}

/// The IPv4 addresses that the prefix of `ip` (its segments `seg` and
/// octets `o`) says it carries.
fn by_prefix(seg: [u16; 8], o: [u8; 16], last: Ipv4Addr) -> Vec<(Ipv4Addr, Embedding)> {
    let v4 = |a: [u8; 4]| Ipv4Addr::from(a);
    match seg {
        [0, 0, 0, 0, 0xffff, 0, _, _] => vec![(last, Embedding::Translated)],
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => vec![(last, Embedding::Nat64)],
        [0x64, 0xff9b, 1, ..] => {
            // RFC 8215's local-use prefix is the operator's to divide: the
            // IPv4 address follows a /48, /56, /64 or /96 prefix (RFC 6052
            // §2.2). A shorter form fits only if its zero bits (64-71 and
            // the suffix after the address) are zero, and each reading that
            // fits is checked. When one does, a /96 reading of x.0.0.0 is
            // that zero suffix, not an address.
            let u_zero = o[8] == 0;
            let shorter = [
                ([o[6], o[7], o[9], o[10]], &o[11..]),
                ([o[7], o[9], o[10], o[11]], &o[12..]),
                ([o[9], o[10], o[11], o[12]], &o[13..]),
            ];
            let mut found: Vec<_> = shorter
                .into_iter()
                .filter(|(_, suffix)| u_zero && suffix.iter().all(|b| *b == 0))
                .map(|(addr, _)| (v4(addr), Embedding::Nat64))
                .collect();
            if found.is_empty() || o[13..] != [0, 0, 0] {
                found.insert(0, (last, Embedding::Nat64));
            }
            found
        }
        [0x2002, ..] => vec![(v4([o[2], o[3], o[4], o[5]]), Embedding::SixToFour)],
        [0x2001, 0, ..] => vec![(Ipv4Addr::from(!u32::from(last)), Embedding::Teredo)],
        _ => Vec::new(),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    // AWS, GCP, Azure, Oracle and others; Alibaba Cloud's own.
    const METADATA: [Ipv4Addr; 2] = [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(100, 100, 100, 200),
    ];
    if METADATA.contains(&ip) {
        Some("a cloud metadata address")
    } else if ip.is_unspecified() || ip.octets()[0] == 0 {
        Some("an unspecified address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    const AWS_METADATA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    if ip == AWS_METADATA {
        Some("a cloud metadata address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_unicast_link_local() {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// A host must be a name, a bracketed IPv6 address or a dotted-quad IPv4
/// address: `2130706433`, `0177.0.0.1` or `0x7f.1` are refused, since
/// resolvers read them in different ways (all are 127.0.0.1 to some).
pub fn check_host_form(host: &str) -> Result<(), String> {
    if host.starts_with('[') {
        return Ok(());
    }
    let last = host
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .unwrap_or_default();
    let numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last.len() > 1 && last[..2].eq_ignore_ascii_case("0x"));
    if numeric && host.parse::<Ipv4Addr>().is_err() {
        return Err(format!(
            "`{host}` is a numeric host in a form other than a.b.c.d; write the address as a.b.c.d"
        ));
    }
    Ok(())
}

/// The DNS resolver of a connector: the system's, and for copies, without
/// the addresses [`refused_ip`] names. (An address written literally in a
/// URL never goes through here; it was checked when the target was added.)
#[derive(Clone)]
pub struct Resolver {
    inner: GaiResolver,
    guard: bool,
}

impl Resolver {
    pub fn new(guard: bool) -> Self {
        Resolver {
            inner: GaiResolver::new(),
            guard,
        }
    }
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard;
        let host = name.to_string();
        let resolving = self.inner.call(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = resolving.await?.collect();
            if !guard {
                return Ok(addrs.into_iter());
            }
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| refused_ip(a.ip()).is_none())
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{host} resolves only to addresses copies may not go to"),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_the_guard_names() {
        for ip in [
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "fe80::1",
            "ff02::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(refused_ip(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.1", "192.0.2.7", "::1", "2001:db8::1"] {
            assert!(refused_ip(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn ipv4_inside_ipv6_gets_the_ipv4_rules() {
        let cases = [
            ("100.100.100.200", Some("a cloud metadata address")),
            ("fd00:ec2::254", Some("a cloud metadata address")),
            (
                "::169.254.169.254",
                Some(
                    "a cloud metadata address (169.254.169.254 inside an IPv4-compatible address)",
                ),
            ),
            (
                "::ffff:100.100.100.200",
                Some("a cloud metadata address (100.100.100.200 inside an IPv4-mapped address)"),
            ),
            (
                "64:ff9b::a9fe:a9fe",
                Some("a cloud metadata address (169.254.169.254 inside a NAT64 address)"),
            ),
            (
                "64:ff9b::6464:64c8",
                Some("a cloud metadata address (100.100.100.200 inside a NAT64 address)"),
            ),
            (
                "64:ff9b:1::a9fe:a9fe",
                Some("a cloud metadata address (169.254.169.254 inside a NAT64 address)"),
            ),
            // The local-use NAT64 prefix at /48, /56 and /64 (RFC 6052 §2.2).
            (
                "64:ff9b:1:a9fe:a9:fe00::",
                Some("a cloud metadata address (169.254.169.254 inside a NAT64 address)"),
            ),
            (
                "64:ff9b:1:aa9:fe:a9fe::",
                Some("a cloud metadata address (169.254.169.254 inside a NAT64 address)"),
            ),
            (
                "64:ff9b:1:0:a9:fea9:fe00:0",
                Some("a cloud metadata address (169.254.169.254 inside a NAT64 address)"),
            ),
            (
                "2002:a9fe:a9fe::1",
                Some("a cloud metadata address (169.254.169.254 inside a 6to4 address)"),
            ),
            (
                "2002:e000:1::",
                Some("a multicast address (224.0.0.1 inside a 6to4 address)"),
            ),
            (
                "2001:0:4136:e378:8000:63bf:5601:5601",
                Some("a cloud metadata address (169.254.169.254 inside a Teredo address)"),
            ),
            (
                "2001::ffff:ffff",
                Some("an unspecified address (0.0.0.0 inside a Teredo address)"),
            ),
            (
                "::a9fe:101",
                Some("a link-local address (169.254.1.1 inside an IPv4-compatible address)"),
            ),
            (
                "::ffff:0:a9fe:a9fe",
                Some(
                    "a cloud metadata address (169.254.169.254 inside an IPv4-translated address)",
                ),
            ),
            (
                "2001:db8::5efe:a9fe:a9fe",
                Some("a cloud metadata address (169.254.169.254 inside an ISATAP address)"),
            ),
            (
                "2001:db8::200:5efe:6464:64c8",
                Some("a cloud metadata address (100.100.100.200 inside an ISATAP address)"),
            ),
            // 6to4 of an allowed address, ISATAP of a refused one.
            (
                "2002:a0a:a0a::5efe:a9fe:a9fe",
                Some("a cloud metadata address (169.254.169.254 inside an ISATAP address)"),
            ),
            ("2001:db8::5efe:a0a:a0a", None),
            ("2001:db8::400:5efe:a9fe:a9fe", None),
            ("::ffff:0:a0a:a0a", None),
            ("::1", None),
            ("::", Some("an unspecified address")),
            ("::7f00:1", None),
            ("64:ff9b::a0a:a0a", None),
            // 10.10.10.10 at /96; its last 32 bits rule out the shorter forms.
            ("64:ff9b:1:0:0:0:a0a:a0a", None),
            // 10.10.10.10 at /48, whose zero suffix is no /96 0.0.0.0.
            ("64:ff9b:1:a0a:a:a00::", None),
            ("2002:a0a:a0a::1", None),
            ("2001:0:4136:e378:8000:63bf:f5f5:f5f5", None),
            ("2001:db8::a9fe:a9fe", None),
            ("100.100.100.201", None),
        ];
        let mut wrong = Vec::new();
        for (ip, want) in cases {
            let got = refused_ip(ip.parse().unwrap()).map(|r| r.to_string());
            if got.as_deref() != want {
                wrong.push(format!("{ip}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn odd_numeric_hosts_are_refused() {
        for host in [
            "2130706433",
            "0177.0.0.1",
            "0x7f.1",
            "127.1",
            "0x7f000001",
            "1.2.3.04",
        ] {
            assert!(check_host_form(host).is_err(), "{host}");
        }
        for host in [
            "127.0.0.1",
            "staging.internal",
            "[::1]",
            "host-1",
            "v2.example.com",
        ] {
            assert!(check_host_form(host).is_ok(), "{host}");
        }
    }
}
