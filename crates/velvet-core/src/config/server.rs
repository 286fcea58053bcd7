//! `server:` beyond `listen` (design §10): connection limits and the proxies trusted to name
//! the client's address.

use super::decode::{Cx, Map};
use std::time::Duration;

/// The server's limits and trusted proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Peers allowed to name the client address in `X-Forwarded-For`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a request's headers may take to arrive.
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the listen queue.
    pub max_connections: usize,
    /// Event streams open at once per client address.
    pub max_streams_per_client: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: vec![],
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_streams_per_client: 64,
        }
    }
}

impl ServerConfig {
    /// The client's address: the peer, unless the peer is a trusted proxy, in which case the
    /// rightmost `X-Forwarded-For` hop that is not itself a trusted proxy.
    pub fn client_ip(
        &self,
        peer: std::net::IpAddr,
        forwarded_for: Option<&str>,
    ) -> std::net::IpAddr {
        let trusted = |ip: &std::net::IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        let Some(header) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in header.rsplit(',') {
            match hop.trim().parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(&ip) {
                        break;
                    }
                }
                // A hop that is not an address ends what can be believed.
                Err(_) => break,
            }
        }
        client
    }
}

pub(super) fn decode(cx: &mut Cx, s: &Map) -> ServerConfig {
    let mut out = ServerConfig::default();
    if let Some(list) = s.str_list(cx, "trusted_proxies") {
        for (i, text) in list.iter().enumerate() {
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => out.trusted_proxies.push(n),
                Err(_) => cx.err(
                    &format!("server.trusted_proxies[{i}]"),
                    s.get("trusted_proxies").expect("present").span(),
                    format!("`{text}` is not an address or CIDR such as 10.0.0.0/8"),
                ),
            }
        }
    }
    if let Some(d) = s.duration(cx, "header_timeout") {
        if d < Duration::from_millis(100) || d > Duration::from_secs(300) {
            cx.err(
                "server.header_timeout",
                s.get("header_timeout").expect("present").span(),
                "must be between 100ms and 5m",
            );
        } else {
            out.header_timeout = d;
        }
    }
    if let Some(n) = s.uint(cx, "max_connections", 1, 1_000_000) {
        out.max_connections = n as usize;
    }
    if let Some(n) = s.uint(cx, "max_streams_per_client", 1, 100_000) {
        out.max_streams_per_client = n as usize;
    }
    out
}
