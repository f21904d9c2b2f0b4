//! The egress policy: which hosts and addresses a plugin may make flowgate connect to,
//! whether by rerouting a flow (`capabilities.allowed_upstream_hosts`) or by its own
//! outbound HTTP (`capabilities.allowed_outbound_hosts`). Pure: it does no DNS and opens
//! nothing; the network layer resolves a name, asks [`AllowList::check`] about every
//! address, and connects to the one it was given back.
//!
//! Patterns: `*` (any host), `*.example.com` (its subdomains, not itself), an exact
//! name (`hooks.example.com`, `localhost`), or an IP literal (`10.0.0.5`, `::1`,
//! `[::1]`). A name must match a pattern, and then every address it resolves to is
//! classified: public addresses are allowed; loopback, link-local, private (RFC 1918,
//! ULA), CGNAT, unspecified, multicast, broadcast and the IPv4-mapped, -compatible and
//! NAT64 forms of them are refused unless the list *names* that address — it holds the
//! address as an IP literal (an IPv4 literal also names its mapped IPv6 forms), or the
//! request's host is `localhost`, the list holds `localhost`, and the address is
//! loopback. A wildcard never names a special address, so `*` reaches the public
//! internet only, and an exact name that resolves to `10.0.0.5` needs `10.0.0.5` listed
//! too: the operator writes down every internal address a plugin may reach.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One allow-list entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`.
    Any,
    /// `*.example.com`: the domain, lowercase, without the `*.`.
    Subdomains(String),
    /// An exact registered name, lowercase.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

/// A refused allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host pattern {0:?}: use *, *.example.com, a host name or an IP address")]
pub struct PatternError(pub String);

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The host matches no pattern.
    #[error("{host} is not in the allow-list")]
    NotListed {
        /// The host asked for.
        host: String,
    },
    /// The host matches, but an address it resolved to is special and not named.
    #[error("{host} resolved to {addr} ({class}), which the allow-list does not name")]
    Special {
        /// The host asked for.
        host: String,
        /// The refused address.
        addr: IpAddr,
        /// What kind of address it is.
        class: AddressClass,
    },
    /// The name resolved to nothing.
    #[error("{host} resolved to no address")]
    NoAddress {
        /// The host asked for.
        host: String,
    },
}

/// What kind of special address an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `169.254.0.0/16` (cloud metadata lives here), `fe80::/10`.
    LinkLocal,
    /// RFC 1918 `10/8`, `172.16/12`, `192.168/16`; `fc00::/7` (ULA); `fec0::/10`.
    Private,
    /// `100.64.0.0/10` (carrier-grade NAT, RFC 6598).
    SharedNat,
    /// Multicast, broadcast and the reserved `240.0.0.0/4`.
    NotUnicast,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Unspecified => "unspecified",
            AddressClass::Loopback => "loopback",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Private => "private",
            AddressClass::SharedNat => "carrier-grade NAT",
            AddressClass::NotUnicast => "not unicast",
        })
    }
}

/// The class of a special address, or `None` for a public one. IPv6 forms that carry an
/// IPv4 address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`)
/// are classified by the IPv4 address they carry.
pub fn classify(addr: IpAddr) -> Option<AddressClass> {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        (0, _) => AddressClass::Unspecified,
        (127, _) => AddressClass::Loopback,
        (169, 254) => AddressClass::LinkLocal,
        (10, _) | (192, 168) => AddressClass::Private,
        (172, b) if (16..32).contains(&b) => AddressClass::Private,
        (100, b) if (64..128).contains(&b) => AddressClass::SharedNat,
        (a, _) if a >= 224 => AddressClass::NotUnicast,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    let first = ip.segments()[0];
    Some(if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        AddressClass::Private
    } else if first & 0xff00 == 0xff00 {
        AddressClass::NotUnicast
    } else {
        return None;
    })
}

/// The IPv4 address an IPv6 address carries: mapped (`::ffff:0:0/96`), compatible
/// (`::/96` but `::` and `::1`) or NAT64 (`64:ff9b::/96`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_unspecified() && !ip.is_loopback() => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        _ => None,
    }
}

/// An IP literal as hosts and patterns write it (IPv6 with or without brackets).
fn ip_literal(text: &str) -> Option<IpAddr> {
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    bare.parse().ok()
}

/// A parsed allow-list (`allowed_upstream_hosts`, `allowed_outbound_hosts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<Pattern>,
}

impl AllowList {
    /// Parses the entries of a manifest's list.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, PatternError> {
        let mut patterns = Vec::with_capacity(entries.len());
        for entry in entries {
            let raw = entry.as_ref();
            let text = raw.trim().to_ascii_lowercase();
            let is_name = |t: &str| {
                !t.is_empty()
                    && t.len() <= 253
                    && t.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            };
            let pattern = if text == "*" {
                Pattern::Any
            } else if let Some(ip) = ip_literal(&text) {
                Pattern::Ip(ip)
            } else if let Some(domain) = text.strip_prefix("*.")
                && is_name(domain)
            {
                Pattern::Subdomains(domain.to_owned())
            } else if is_name(&text) {
                Pattern::Name(text)
            } else {
                return Err(PatternError(raw.to_owned()));
            };
            patterns.push(pattern);
        }
        Ok(AllowList { patterns })
    }

    /// Whether the list is empty (nothing is allowed).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `host` (a URL's host: a name, an IPv4 literal or a bracketed IPv6 literal)
    /// matches a pattern. The first check, before any DNS; [`AllowList::check`] is the
    /// one that decides.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let literal = ip_literal(&host);
        self.patterns.iter().any(|p| match p {
            Pattern::Any => true,
            Pattern::Ip(ip) => literal.is_some_and(|l| same_ip(l, *ip)),
            Pattern::Name(name) => literal.is_none() && *name == host,
            Pattern::Subdomains(domain) => {
                literal.is_none()
                    && host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
        })
    }

    /// Whether the list names `addr` for `host`: holds it as an IP literal, or holds
    /// `localhost` while `host` is `localhost` and `addr` is loopback.
    fn names(&self, host: &str, addr: IpAddr) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::Ip(ip) => same_ip(*ip, addr),
            Pattern::Name(name) => {
                name == "localhost"
                    && host.eq_ignore_ascii_case("localhost")
                    && classify(addr) == Some(AddressClass::Loopback)
            }
            _ => false,
        })
    }

    /// Decides a destination after DNS: `host` must match a pattern, and every address
    /// in `resolved` must be public or named (one refused address refuses the host, so
    /// a name that answers both a public and a private address cannot be steered to the
    /// private one). Returns the address to connect to: the first one. The caller
    /// connects to exactly that address, with no second lookup.
    pub fn check(&self, host: &str, resolved: &[SocketAddr]) -> Result<SocketAddr, EgressError> {
        if !self.allows_host(host) {
            return Err(EgressError::NotListed { host: host.to_owned() });
        }
        for addr in resolved {
            let ip = addr.ip();
            if let Some(class) = classify(ip)
                && !self.names(host, ip)
            {
                return Err(EgressError::Special { host: host.to_owned(), addr: ip, class });
            }
        }
        resolved.first().copied().ok_or_else(|| EgressError::NoAddress { host: host.to_owned() })
    }
}

/// Equal addresses, an IPv4 address also equal to its mapped IPv6 form.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(entries).expect("valid patterns")
    }

    fn at(ip: &str) -> Vec<SocketAddr> {
        vec![SocketAddr::new(ip.parse().expect("ip"), 80)]
    }

    #[test]
    fn classes() {
        let cases = [
            ("0.0.0.0", Some(AddressClass::Unspecified)),
            ("0.1.2.3", Some(AddressClass::Unspecified)),
            ("127.0.0.1", Some(AddressClass::Loopback)),
            ("127.255.0.9", Some(AddressClass::Loopback)),
            ("169.254.169.254", Some(AddressClass::LinkLocal)),
            ("10.1.2.3", Some(AddressClass::Private)),
            ("172.16.0.1", Some(AddressClass::Private)),
            ("172.31.255.255", Some(AddressClass::Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(AddressClass::Private)),
            ("100.64.0.1", Some(AddressClass::SharedNat)),
            ("100.127.255.255", Some(AddressClass::SharedNat)),
            ("100.128.0.1", None),
            ("224.0.0.1", Some(AddressClass::NotUnicast)),
            ("255.255.255.255", Some(AddressClass::NotUnicast)),
            ("93.184.216.34", None),
            ("::", Some(AddressClass::Unspecified)),
            ("::1", Some(AddressClass::Loopback)),
            ("fe80::1", Some(AddressClass::LinkLocal)),
            ("fc00::1", Some(AddressClass::Private)),
            ("fd12:3456::1", Some(AddressClass::Private)),
            ("ff02::1", Some(AddressClass::NotUnicast)),
            ("::ffff:127.0.0.1", Some(AddressClass::Loopback)),
            ("::ffff:169.254.169.254", Some(AddressClass::LinkLocal)),
            ("::ffff:10.0.0.1", Some(AddressClass::Private)),
            ("::127.0.0.1", Some(AddressClass::Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(AddressClass::LinkLocal)),
            ("::ffff:93.184.216.34", None),
            ("2606:2800:220:1::1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(classify(ip.parse().expect("ip")), want, "{ip}");
        }
    }

    #[test]
    fn host_patterns() {
        let l = list(&["hooks.test", "*.example.com", "10.0.0.5", "[::1]"]);
        assert!(l.allows_host("HOOKS.test"));
        assert!(l.allows_host("api.example.com"));
        assert!(!l.allows_host("example.com"));
        assert!(!l.allows_host("evil-example.com"));
        assert!(!l.allows_host("hooks.test.evil"));
        assert!(l.allows_host("10.0.0.5"));
        assert!(l.allows_host("[::1]"));
        assert!(!l.allows_host("10.0.0.6"));
        assert!(!list(&[]).allows_host("hooks.test"));
        assert!(list(&["*"]).allows_host("anything"));
        for bad in ["", "*.", "a..b", "http://x", "x:80", "*x.com", "a b"] {
            assert!(AllowList::parse(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn special_addresses_need_naming() {
        // A wildcard reaches public addresses only.
        let any = list(&["*"]);
        assert!(any.check("example.com", &at("93.184.216.34")).is_ok());
        for ip in ["127.0.0.1", "169.254.169.254", "10.0.0.1", "::1", "::ffff:127.0.0.1", "100.64.1.1", "0.0.0.0"] {
            let e = any.check("rebind.example", &at(ip)).expect_err(ip);
            assert!(matches!(e, EgressError::Special { .. }), "{ip}: {e}");
        }
        // An IP literal names its address (and the mapped form of an IPv4 one).
        let lit = list(&["127.0.0.1", "hooks.internal", "10.0.0.5"]);
        assert_eq!(lit.check("127.0.0.1", &at("127.0.0.1")), Ok(at("127.0.0.1")[0]));
        assert!(lit.check("127.0.0.1", &at("::ffff:127.0.0.1")).is_ok());
        assert!(lit.check("hooks.internal", &at("10.0.0.5")).is_ok());
        assert!(lit.check("hooks.internal", &at("10.0.0.6")).is_err(), "only the named address");
        assert!(lit.check("hooks.internal", &at("127.0.0.2")).is_err());
        // One refused address refuses the name.
        let mixed = vec![at("93.184.216.34")[0], at("169.254.169.254")[0]];
        assert!(any.check("two.example", &mixed).is_err());
        // localhost names loopback for the host localhost only.
        let local = list(&["localhost", "*"]);
        assert!(local.check("localhost", &at("127.0.0.1")).is_ok());
        assert!(local.check("localhost", &at("::1")).is_ok());
        assert!(local.check("localhost.", &at("127.0.0.1")).is_err());
        assert!(local.check("evil.example", &at("127.0.0.1")).is_err());
        assert!(local.check("localhost", &at("10.0.0.1")).is_err());
        assert!(matches!(any.check("none.example", &[]), Err(EgressError::NoAddress { .. })));
        assert!(matches!(list(&[]).check("x", &at("93.184.216.34")), Err(EgressError::NotListed { .. })));
    }
}
