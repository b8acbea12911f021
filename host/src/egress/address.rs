//! Which network addresses a request may reach.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is a public unicast address: not loopback, private, link-local (which holds the
/// cloud metadata service at 169.254.169.254), shared, multicast, unspecified or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => is_public_v4(mapped),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b);
    let reserved = a >= 240;
    let this_network = a == 0;
    let protocol_assignments = a == 192 && b == 0 && c == 0;
    let benchmarking = a == 198 && (b == 18 || b == 19);
    let relay_anycast = a == 192 && b == 88 && c == 99;
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || shared
        || reserved
        || this_network
        || protocol_assignments
        || benchmarking
        || relay_anycast)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let first = segments[0];
    let unique_local = first & 0xfe00 == 0xfc00;
    let link_local = first & 0xffc0 == 0xfe80;
    let site_local = first & 0xffc0 == 0xfec0;
    // `::a.b.c.d` (IPv4-compatible, deprecated) and `::ffff:0:a.b.c.d` (IPv4-translated).
    let embeds_ipv4 = segments[..6] == [0; 6] || segments[..6] == [0, 0, 0, 0, 0xffff, 0];
    let documentation = first == 0x2001 && ip.segments()[1] == 0x0db8;
    // NAT64 and 6to4 embed IPv4 addresses that could be private.
    let translated = first == 0x0064 || first == 0x2002;
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || unique_local
        || link_local
        || site_local
        || embeds_ipv4
        || documentation
        || translated)
}

/// A resolver that drops every non-public address, so that a public name pointing at an
/// internal address (DNS rebinding included) never gets a connection: the check happens on the
/// addresses the client actually connects to, not on an earlier lookup.
pub struct PublicOnlyResolver;

/// The error a name with only non-public addresses resolves to.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` resolves only to addresses that plugins may not reach")]
pub(super) struct ProhibitedAddress(String);

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|err| io::Error::new(err.kind(), err))?
                .collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(ProhibitedAddress(host)) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.254",
            "192.88.99.1",
            "::a00:1",
            "::8.8.8.8",
            "::ffff:0:a00:1",
            "fec0::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_loopback() {
        let name: Name = "localhost".parse().unwrap();
        let err = PublicOnlyResolver
            .resolve(name)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("may not reach"), "{err}");
    }
}
