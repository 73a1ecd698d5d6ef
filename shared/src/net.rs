//! Addressing primitives shared by the tables and the pipeline: IPv4 prefixes,
//! MAC addresses and the L4 protocols nodeplane proxies. Plain values, no I/O.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A MAC address as six bytes, the form the pipeline writes into frames.
pub type Mac = [u8; 6];

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_to_string(mac: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// The transport protocols a Service port can carry.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
}

impl L4Proto {
    /// The IPv4 protocol number.
    pub const fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
            L4Proto::Sctp => 132,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(L4Proto::Tcp),
            17 => Some(L4Proto::Udp),
            132 => Some(L4Proto::Sctp),
            _ => None,
        }
    }

    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(L4Proto::Tcp),
            "UDP" => Some(L4Proto::Udp),
            "SCTP" => Some(L4Proto::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4Proto::Tcp => "TCP",
            L4Proto::Udp => "UDP",
            L4Proto::Sctp => "SCTP",
        })
    }
}

/// An IPv4 prefix such as `198.19.1.0/24`. The address is stored masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("'{0}' is not an IPv4 prefix (want a.b.c.d/len)")]
    Syntax(String),
    #[error("prefix length {0} is over 32")]
    PrefixTooLong(u8),
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError::PrefixTooLong(prefix));
        }
        Ok(Ipv4Cidr {
            network: u32::from(addr) & Self::mask_of(prefix),
            prefix,
        })
    }

    const fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix as u32)
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    pub fn network_u32(&self) -> u32 {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn mask(&self) -> u32 {
        Self::mask_of(self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.contains_u32(u32::from(ip))
    }

    #[inline]
    pub fn contains_u32(&self, ip: u32) -> bool {
        ip & self.mask() == self.network
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| CidrError::Syntax(s.to_string()))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| CidrError::Syntax(s.to_string()))?;
        let prefix: u8 = p.parse().map_err(|_| CidrError::Syntax(s.to_string()))?;
        Ipv4Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c: Ipv4Cidr = "198.19.1.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "198.19.1.0/24");
        assert!(c.contains(Ipv4Addr::new(198, 19, 1, 255)));
        assert!(!c.contains(Ipv4Addr::new(198, 19, 2, 0)));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(
            "1.2.3.4/33".parse::<Ipv4Cidr>(),
            Err(CidrError::PrefixTooLong(33))
        );
        assert!("1.2.3.4".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("02:AA:00:00:01:ff").unwrap();
        assert_eq!(mac_to_string(&m), "02:aa:00:00:01:ff");
        assert!(parse_mac("02:aa:00:00:01").is_none());
        assert!(parse_mac("02:aa:00:00:01:ff:00").is_none());
        assert!(parse_mac("zz:aa:00:00:01:ff").is_none());
    }
}
