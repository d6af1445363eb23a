//! Which address a request comes from, for throttling: the peer, or, when the peer is a trusted
//! proxy (the gateway), the client its `X-Forwarded-For` names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;

/// A trusted proxy: one address or a network (`10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxy {
    network: IpAddr,
    prefix: u8,
}

impl Proxy {
    /// `127.0.0.1` and `::1`: a gateway on the same host.
    pub fn loopback() -> Vec<Proxy> {
        vec![
            Proxy {
                network: IpAddr::V4(Ipv4Addr::LOCALHOST),
                prefix: 32,
            },
            Proxy {
                network: IpAddr::V6(Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        ]
    }

    /// An address (`10.1.2.3`) or a network (`10.0.0.0/8`, `fd00::/8`).
    ///
    /// # Errors
    ///
    /// A sentence saying what is wrong.
    pub fn parse(text: &str) -> Result<Proxy, String> {
        let (address, prefix) = text
            .split_once('/')
            .map_or((text, None), |(a, p)| (a, Some(p)));
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text}: not an IP address or network"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text}: the prefix must be 0 to {bits}"))?,
        };
        Ok(Proxy { network, prefix })
    }

    /// Whether `ip` is in it.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Proxy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Proxy::parse(text)
    }
}

/// The client of a request from `peer`: the last `X-Forwarded-For` address when `peer` is a
/// trusted proxy (the one it saw; earlier entries are the client's word), else `peer`.
pub fn address(peer: SocketAddr, headers: &HeaderMap, trusted: &[Proxy]) -> IpAddr {
    let peer = peer.ip().to_canonical();
    if !trusted.iter().any(|p| p.contains(peer)) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(|a| a.trim().parse::<IpAddr>().ok())
        .map_or(peer, |a| a.to_canonical())
}

/// What a client is counted as when throttled: its IPv4 address, or its IPv6 /64 network
/// (one subscriber line or host is usually given a whole /64, so counting single addresses
/// would give it 2^64 fresh counts).
pub fn throttle_key(client: IpAddr) -> String {
    match client.to_canonical() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => {
            let network = Ipv6Addr::from(u128::from(ip) & (u128::MAX << 64));
            format!("{network}/64")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_64_and_ipv4_clients_per_address() {
        let key = |ip: &str| throttle_key(ip.parse().expect("ip"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:1:2:3"), key("2001:db8:1:2::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(
            key("::ffff:203.0.113.7"),
            "203.0.113.7",
            "a mapped IPv4 is IPv4"
        );
    }

    #[test]
    fn only_a_trusted_peer_names_the_client() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9".parse().expect("header"),
        );
        let gateway: SocketAddr = "10.1.2.3:5000".parse().expect("addr");
        let trusted = [Proxy::parse("10.0.0.0/8").expect("net")];
        assert_eq!(
            address(gateway, &headers, &trusted),
            "203.0.113.9".parse::<IpAddr>().expect("ip")
        );
        let stranger: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        assert_eq!(
            address(stranger, &headers, &trusted),
            stranger.ip(),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(address(gateway, &HeaderMap::new(), &trusted), gateway.ip());
        assert!(Proxy::parse("10.0.0.0/33").is_err());
        assert!(Proxy::parse("gateway").is_err());
        assert!(
            Proxy::parse("::1")
                .expect("v6")
                .contains("::1".parse().expect("ip"))
        );
    }
}
