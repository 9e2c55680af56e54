//! Which IP addresses a callback may reach.
//!
//! A callback URL that comes from a request header is chosen by the client, so without this check
//! the layer would turn the application into a proxy into its operator's private network (cloud
//! metadata at `169.254.169.254`, admin ports on loopback). [`is_public`] is the single rule used
//! both for IP literals at request time and for resolved addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::ConfigError;

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`; a bare address is a single host), to let
/// callbacks reach an internal receiver without allowing every private address. See
/// [`AsyncRequestLayerBuilder::allow_callback_network`](crate::AsyncRequestLayerBuilder::allow_callback_network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
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

impl FromStr for IpNetwork {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::new(format!("{text:?} is not a network in CIDR notation"));
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr = canonical(addr.parse::<IpAddr>().map_err(|_| invalid())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| invalid())?,
            None => max,
        };
        if prefix > max {
            return Err(invalid());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which addresses callbacks may reach: public ones, plus every address when private callbacks
/// are allowed, plus the allow-listed networks.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddressPolicy {
    pub(crate) allow_private: bool,
    pub(crate) allowed: Vec<IpNetwork>,
}

impl AddressPolicy {
    pub(crate) fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip) || self.allowed.iter().any(|net| net.contains(ip))
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is a globally reachable unicast address that a callback may target by default.
///
/// Refused: unspecified, loopback, RFC 1918 private, link-local, CGNAT `100.64/10`, `0/8`,
/// IETF protocol assignments `192.0.0/24`, benchmarking `198.18/15`, documentation ranges,
/// reserved `240/4`, broadcast, multicast; for IPv6 also unique-local `fc00::/7`, site-local,
/// discard-only `100::/64`, documentation `2001:db8::/32` and `3fff::/20`, Teredo, and every form
/// that embeds an IPv4 address (mapped, compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) whose
/// embedded address is refused.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", includes 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // deprecated 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224) // multicast 224/4, reserved 240/4, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Forms that carry an IPv4 address: judge the embedded one.
    if s[..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible; also covers :: and ::1).
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7])); // NAT64 well-known prefix
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded_v4(s[1], s[2])); // 6to4
    }
    !((s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32 (embeds an obfuscated IPv4)
        || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        || (s[0] & 0xfff0) == 0x3ff0 // documentation 3fff::/20
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (s[0] & 0xff00) == 0xff00) // multicast
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

/// Reads an IPv4 address the way browsers and `inet_aton` do: one to four dot-separated parts,
/// each decimal, octal (leading `0`) or hexadecimal (`0x`), the last part filling the remaining
/// bytes (`127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`).
///
/// Returns `None` when `host` is not numeric-looking at all (an ordinary domain name) and
/// `Some(Err(()))` when it looks numeric but is not a valid address: resolvers disagree about such
/// names, so they must be refused rather than looked up.
pub(crate) fn parse_ipv4_lenient(host: &str) -> Option<Result<Ipv4Addr, ()>> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next()?;
    if !looks_numeric(last) {
        return None;
    }
    // At most four parts, each a number (no allocation: this runs for every callback URL).
    let mut numbers = [0u64; 4];
    let mut count = 0;
    for part in host.split('.') {
        if count == numbers.len() {
            return Some(Err(()));
        }
        match parse_part(part) {
            Some(n) => numbers[count] = n,
            None => return Some(Err(())),
        }
        count += 1;
    }
    let numbers = &numbers[..count];
    let (last, init) = numbers.split_last()?;
    if init.iter().any(|&n| n > 255) {
        return Some(Err(()));
    }
    let remaining_bits = 8 * (5 - numbers.len() as u32);
    if remaining_bits < 64 && *last >= 1u64 << remaining_bits {
        return Some(Err(()));
    }
    let mut value = *last;
    for (i, n) in init.iter().enumerate() {
        value |= n << (24 - 8 * i as u32);
    }
    Some(u32::try_from(value).map(Ipv4Addr::from).map_err(|_| ()))
}

fn looks_numeric(part: &str) -> bool {
    let digits = part
        .strip_prefix("0x")
        .or_else(|| part.strip_prefix("0X"))
        .unwrap_or(part);
    !part.is_empty()
        && (digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() < part.len() && digits.bytes().all(|b| b.is_ascii_hexdigit())))
}

fn parse_part(part: &str) -> Option<u64> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // "0x" alone is zero for browsers.
        return (radix == 16).then_some(0);
    }
    if digits.len() > 12 {
        return None; // far beyond 32 bits in any radix; avoids overflow
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn refuses_every_non_public_ipv4_range() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!public(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn accepts_public_ipv4_neighbours_of_refused_ranges() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "169.253.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.0.1",
            "198.20.0.1",
            "223.255.255.254",
        ] {
            assert!(public(ip), "{ip} must be accepted");
        }
    }

    #[test]
    fn refuses_non_public_ipv6_and_embedded_ipv4() {
        for ip in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "3fff::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(!public(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn accepts_public_ipv6_including_embedded_public_ipv4() {
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(public(ip), "{ip} must be accepted");
        }
    }

    #[test]
    fn networks_parse_and_contain() {
        let net: IpNetwork = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let host: IpNetwork = "192.168.1.20".parse().unwrap();
        assert!(host.contains("192.168.1.20".parse().unwrap()));
        assert!(!host.contains("192.168.1.21".parse().unwrap()));
        let v6: IpNetwork = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12:3456::1".parse().unwrap()));
        let all: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("127.0.0.1".parse().unwrap()));
        assert_eq!(v6.to_string(), "fd00::/8");
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "example.com/8",
            "10.0.0.0/x",
            "",
        ] {
            assert!(bad.parse::<IpNetwork>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_policy_opens_only_what_it_names() {
        let policy = AddressPolicy {
            allow_private: false,
            allowed: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(policy.permits("8.8.8.8".parse().unwrap()));
        assert!(policy.permits("10.9.9.9".parse().unwrap()));
        assert!(!policy.permits("127.0.0.1".parse().unwrap()));
        assert!(!policy.permits("192.168.0.1".parse().unwrap()));
        let open = AddressPolicy {
            allow_private: true,
            allowed: vec![],
        };
        assert!(open.permits("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn lenient_ipv4_reads_every_spelling_of_loopback() {
        let loopback = Ipv4Addr::new(127, 0, 0, 1);
        for host in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "0x7f000001",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "0177.1",
            "0x7F.1",
            "127.0.0.1.",
            "017700000001",
        ] {
            assert_eq!(parse_ipv4_lenient(host), Some(Ok(loopback)), "{host}");
        }
    }

    #[test]
    fn lenient_ipv4_leaves_names_alone_and_rejects_bad_numbers() {
        assert_eq!(parse_ipv4_lenient("example.com"), None);
        assert_eq!(parse_ipv4_lenient("1.2.3.example"), None);
        assert_eq!(parse_ipv4_lenient("0xfg"), None);
        for bad in [
            "256.0.0.1",
            "1.2.3.4.5",
            "1.2.3.256",
            "4294967296",
            "09.1",
            "1..1",
            "0x100000000",
        ] {
            assert_eq!(parse_ipv4_lenient(bad), Some(Err(())), "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Every way browsers and `inet_aton` accept to write `ip`, chosen by `style` and `parts`.
    fn spell(ip: Ipv4Addr, parts: usize, style: u8) -> String {
        let n = u32::from(ip);
        let numbers: Vec<u64> = match parts {
            1 => vec![u64::from(n)],
            2 => vec![u64::from(n >> 24), u64::from(n & 0xff_ffff)],
            3 => vec![
                u64::from(n >> 24),
                u64::from((n >> 16) & 0xff),
                u64::from(n & 0xffff),
            ],
            _ => ip.octets().iter().map(|&o| u64::from(o)).collect(),
        };
        numbers
            .iter()
            .enumerate()
            .map(|(i, &x)| match (usize::from(style) + i) % 3 {
                0 => x.to_string(),
                1 => format!("0x{x:x}"),
                _ => format!("0{x:o}"),
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    proptest! {
        #[test]
        fn every_spelling_reads_as_the_same_address(raw: u32, parts in 1usize..=4, style: u8, dot: bool) {
            let ip = Ipv4Addr::from(raw);
            let mut text = spell(ip, parts, style);
            if dot {
                text.push('.');
            }
            prop_assert_eq!(parse_ipv4_lenient(&text), Some(Ok(ip)), "{}", text);
        }

        #[test]
        fn mapped_and_compatible_forms_judge_the_embedded_address(raw: u32) {
            let v4 = Ipv4Addr::from(raw);
            let public = is_public(IpAddr::V4(v4));
            prop_assert_eq!(is_public(IpAddr::V6(v4.to_ipv6_mapped())), public);
            prop_assert_eq!(is_public(IpAddr::V6(v4.to_ipv6_compatible())), public);
            let [a, b, c, d] = v4.octets();
            let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
            prop_assert_eq!(is_public(IpAddr::V6(nat64)), public);
            let six_to_four = Ipv6Addr::new(0x2002, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]), 0, 0, 0, 0, 1);
            prop_assert_eq!(is_public(IpAddr::V6(six_to_four)), public);
        }

        #[test]
        fn the_lenient_parser_never_panics(text in "[0-9a-fA-FxX.]{0,40}") {
            let _ = parse_ipv4_lenient(&text);
        }
    }
}
