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
//! 169.254.169.254 and fd00:ec2::254.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

/// Why copies may not go to `ip`, if they may not.
pub fn refused_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refused_v4(v4),
            None => refused_v6(v6),
        },
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
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
