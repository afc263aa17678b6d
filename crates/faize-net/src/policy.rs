//! Rules and decisions. Default deny: nothing is reachable unless a rule allows it.
//!
//! A rule is one of:
//! - a preset name (`npm`, see [`crate::presets`]), `all` (the public internet) or `none`;
//! - a domain `example.com` (that name only) or a wildcard `*.example.com` (its subdomains, not
//!   `example.com` itself), optionally with a port: `example.com:443`;
//! - an IPv4 or IPv6 address or CIDR, optionally with a port: `10.0.0.5`, `10.0.0.0/8:5432`,
//!   `[2001:db8::1]:443`, `[2001:db8::/32]`.
//!
//! Private, loopback, link-local (cloud metadata included), shared, multicast and reserved
//! addresses are refused even under `all` and even when an allowed name resolves to them (no DNS
//! rebinding), unless an address rule names them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::presets;

/// A rule that could not be understood; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network rule {rule:?}: {reason}")]
pub struct RuleError {
    pub rule: String,
    pub reason: String,
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// Subdomains of this suffix (the suffix itself excluded).
    Wildcard(String),
    Net(IpNet),
}

/// One rule, with the text it came from (a preset's rules name the preset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    host: Host,
    port: Option<u16>,
    /// What the user wrote that produced this rule (`npm`, `*.example.com:443`).
    pub source: String,
}

/// The answer to "may this be reached?", with the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The rule that allowed it (`all` included), if one did.
    pub rule: Option<String>,
    /// Why, in words, when denied.
    pub reason: Option<String>,
}

impl Decision {
    fn allow(rule: &str) -> Self {
        Self { allowed: true, rule: Some(rule.to_string()), reason: None }
    }
    fn deny(reason: impl Into<String>) -> Self {
        Self { allowed: false, rule: None, reason: Some(reason.into()) }
    }
}

/// An ordered list of rules; default deny.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    all: bool,
}

impl Policy {
    /// Parses rules as written in `networks:` or with `--network`. `None` (no list at all) means
    /// the defaults; an empty list means `none`.
    pub fn parse(rules: Option<&[String]>) -> Result<Self, RuleError> {
        let defaults: Vec<String>;
        let rules = match rules {
            Some(r) => r,
            None => {
                defaults = presets::DEFAULT_RULES.iter().map(|s| s.to_string()).collect();
                &defaults
            }
        };
        let mut policy = Policy::default();
        let has_none = rules.iter().any(|r| r.trim() == "none");
        if has_none && rules.len() > 1 {
            return Err(RuleError { rule: "none".into(), reason: "none cannot be combined with other rules".into() });
        }
        for text in rules {
            policy.add(text)?;
        }
        Ok(policy)
    }

    /// Adds one rule (a live `allow`).
    pub fn add(&mut self, text: &str) -> Result<(), RuleError> {
        let t = text.trim();
        match t {
            "none" => {}
            "all" => self.all = true,
            _ => self.rules.extend(parse_rule(t)?),
        }
        Ok(())
    }

    /// Removes every rule that came from `text` (a live `deny`); true if one did.
    pub fn remove(&mut self, text: &str) -> bool {
        let t = text.trim();
        let before = self.rules.len() + usize::from(self.all);
        if t == "all" {
            self.all = false;
        }
        self.rules.retain(|r| r.source != t);
        before != self.rules.len() + usize::from(self.all)
    }

    /// True when nothing at all is allowed.
    pub fn is_none(&self) -> bool {
        !self.all && self.rules.is_empty()
    }

    /// May `name` be resolved and connected to on `port`? (The addresses it resolves to are
    /// checked again with [`Policy::decide_address`].)
    pub fn decide_name(&self, name: &str, port: Option<u16>) -> Decision {
        let name = match normalize_name(name) {
            Ok(n) => n,
            Err(reason) => return Decision::deny(reason),
        };
        for r in &self.rules {
            let host_ok = match &r.host {
                Host::Exact(d) => *d == name,
                // `s` starts with a dot, so a match has at least one label before it.
                Host::Wildcard(s) => name.len() > s.len() && name.ends_with(s.as_str()),
                Host::Net(_) => false,
            };
            if host_ok && port_ok(r.port, port) {
                return Decision::allow(&r.source);
            }
        }
        if self.all {
            return Decision::allow("all");
        }
        Decision::deny(format!("no rule allows {name}"))
    }

    /// May `ip:port` be connected to? `via_name` is the decision on the name it was resolved
    /// from, if any.
    pub fn decide_address(&self, ip: IpAddr, port: u16, via_name: Option<&Decision>) -> Decision {
        let ip = canonical(ip);
        for r in &self.rules {
            if let Host::Net(net) = &r.host {
                if net.contains(&ip) && port_ok(r.port, Some(port)) {
                    return Decision::allow(&r.source);
                }
            }
        }
        if let Some(why) = forbidden(ip) {
            return Decision::deny(format!("{ip} is {why}; only a rule naming the address can allow it"));
        }
        match via_name {
            Some(d) if d.allowed => d.clone(),
            _ if self.all => Decision::allow("all"),
            _ => Decision::deny(format!("no rule allows {ip}")),
        }
    }
}

fn port_ok(rule: Option<u16>, asked: Option<u16>) -> bool {
    match (rule, asked) {
        (None, _) => true,
        (Some(r), Some(a)) => r == a,
        // A name asked without a port (a DNS lookup) matches a port rule: the port is checked
        // when connecting.
        (Some(_), None) => true,
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Why an address is never reachable by default, if it is not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("the cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else if o[0] == 0 || ip.is_broadcast() || o[0] >= 240 {
        Some("a reserved address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("a benchmarking address (faize uses it for names inside the VM)")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("a reserved address")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("a private (unique local) address")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        Some("a NAT64 address")
    } else {
        None
    }
}

fn err(rule: &str, reason: impl Into<String>) -> RuleError {
    RuleError { rule: rule.into(), reason: reason.into() }
}

/// Lowercases and checks a host name; a trailing dot is dropped.
fn normalize_name(name: &str) -> Result<String, String> {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if n.is_empty() || n.len() > 253 {
        return Err(format!("{name:?} is not a valid host name"));
    }
    for label in n.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{name:?} is not a valid host name"));
        }
    }
    Ok(n)
}

/// Parses one rule that is not `all` or `none`.
fn parse_rule(text: &str) -> Result<Vec<Rule>, RuleError> {
    if text.is_empty() {
        return Err(err(text, "the rule is empty"));
    }
    if let Some(p) = presets::find(text) {
        return Ok(p
            .hosts
            .iter()
            .map(|h| Rule { host: Host::Exact((*h).to_string()), port: None, source: text.to_string() })
            .collect());
    }
    let (host, port) = split_port(text)?;
    let rule = |host| Ok(vec![Rule { host, port, source: text.to_string() }]);
    if let Ok(net) = host.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(err(text, format!("{net} has host bits set: write {}", net.trunc())));
        }
        return rule(Host::Net(net));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return rule(Host::Net(IpNet::from(ip)));
    }
    if host.contains(':') {
        return Err(err(text, "an IPv6 address with a port is written in brackets: [2001:db8::1]:443"));
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if name.contains('*') {
        return Err(err(text, "* can only be the whole first label, as in *.example.com"));
    }
    let name = normalize_name(name).map_err(|e| err(text, e))?;
    let labels = name.split('.').count();
    if wild && labels < 2 {
        return Err(err(text, "a wildcard needs a domain of at least two labels, as in *.example.com"));
    }
    if labels < 2 {
        let presets: Vec<&str> = presets::PRESETS.iter().map(|p| p.name).collect();
        return Err(err(
            text,
            format!("not a preset ({}), all, none, a domain name or an address", presets.join(", ")),
        ));
    }
    if name.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(err(text, "not a valid address or domain name"));
    }
    rule(if wild { Host::Wildcard(format!(".{name}")) } else { Host::Exact(name) })
}

/// Splits `host:port` (`[v6]:port` for IPv6).
fn split_port(text: &str) -> Result<(&str, Option<u16>), RuleError> {
    let parse_port = |p: &str| match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(Some(n as u16)),
        _ => Err(err(text, format!("port {p:?} is not a number from 1 to 65535"))),
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| err(text, "missing ]"))?;
        return match after {
            "" => Ok((host, None)),
            a => Ok((host, parse_port(a.strip_prefix(':').ok_or_else(|| err(text, "expected :PORT after ]"))?)?)),
        };
    }
    match text.matches(':').count() {
        0 => Ok((text, None)),
        1 => {
            let (h, p) = text.split_once(':').expect("one colon");
            Ok((h, parse_port(p)?))
        }
        _ => Ok((text, None)), // a bare IPv6 address or network
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> Policy {
        let rules: Vec<String> = rules.iter().map(|s| s.to_string()).collect();
        Policy::parse(Some(&rules)).unwrap()
    }

    #[test]
    fn invalid_rules_are_errors_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("*.com", "at least two labels"),
            ("a.*.b", "whole first label"),
            ("*", "whole first label"),
            ("exa mple.com", "not a valid host name"),
            ("example.com:70000", "1 to 65535"),
            ("example.com:0", "1 to 65535"),
            ("example.com:http", "1 to 65535"),
            ("nmp", "not a preset"),
            ("", "empty"),
            ("-bad.com", "not a valid host name"),
            ("bad-.com", "not a valid host name"),
            ("a..com", "not a valid host name"),
            ("10.0.0.1/8", "host bits set"),
            ("1.2.3.999", "not a valid address"),
            ("2001:db8::1:443x", "brackets"),
            ("[2001:db8::1]443", "expected :PORT"),
            ("[2001:db8::1", "missing ]"),
            ("exam_ple.com", "not a valid host name"),
        ];
        for (rule, want) in cases {
            let e = Policy::parse(Some(&[rule.to_string()])).unwrap_err();
            assert!(e.to_string().contains(want), "{rule}: {e}");
        }
        let e = Policy::parse(Some(&["none".into(), "npm".into()])).unwrap_err();
        assert!(e.to_string().contains("cannot be combined"));
    }

    /// (rules, name, port, allowed, deciding rule)
    type NameCase<'a> = (&'a [&'a str], &'a str, Option<u16>, bool, Option<&'a str>);

    #[test]
    fn table_of_decisions() {
        let name_cases: &[NameCase] = &[
            (&["example.com"], "example.com", Some(443), true, Some("example.com")),
            (&["example.com"], "EXAMPLE.com.", Some(443), true, Some("example.com")),
            (&["example.com"], "www.example.com", Some(443), false, None),
            (&["*.example.com"], "www.example.com", Some(443), true, Some("*.example.com")),
            (&["*.example.com"], "a.b.example.com", Some(80), true, Some("*.example.com")),
            (&["*.example.com"], "example.com", Some(443), false, None),
            (&["*.example.com"], "badexample.com", Some(443), false, None),
            (&["example.com:443"], "example.com", Some(443), true, Some("example.com:443")),
            (&["example.com:443"], "example.com", Some(80), false, None),
            (&["example.com:443"], "example.com", None, true, Some("example.com:443")),
            (&["npm"], "registry.npmjs.org", Some(443), true, Some("npm")),
            (&["github"], "codeload.github.com", Some(443), true, Some("github")),
            (&["github"], "objects.githubusercontent.com", Some(443), true, Some("github")),
            (&["anthropic"], "api.anthropic.com", Some(443), true, Some("anthropic")),
            (&["debian"], "deb.debian.org", Some(80), true, Some("debian")),
            (&["crates"], "index.crates.io", Some(443), true, Some("crates")),
            (&["go"], "proxy.golang.org", Some(443), true, Some("go")),
            (&["npm"], "evil.example", Some(443), false, None),
            (&["all"], "anything.example", Some(443), true, Some("all")),
            (&["none"], "example.com", Some(443), false, None),
            (&[], "example.com", Some(443), false, None),
            (&["10.0.0.0/8"], "example.com", Some(443), false, None),
            (&["example.com"], "exa mple.com", Some(443), false, None),
        ];
        for (rules, name, port, allowed, rule) in name_cases {
            let d = policy(rules).decide_name(name, *port);
            assert_eq!((d.allowed, d.rule.as_deref()), (*allowed, *rule), "{rules:?} {name} {port:?}");
        }
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let allow_name = Decision::allow("example.com");
        // (rules, address, port, resolved from an allowed name, allowed)
        let addr_cases: &[(&[&str], &str, u16, bool, bool)] = &[
            (&["all"], "93.184.216.34", 443, false, true),
            (&["all"], "127.0.0.1", 80, false, false),
            (&["all"], "169.254.169.254", 80, false, false),
            (&["all"], "10.1.2.3", 22, false, false),
            (&["all"], "172.16.0.1", 22, false, false),
            (&["all"], "192.168.1.1", 80, false, false),
            (&["all"], "100.64.0.1", 80, false, false),
            (&["all"], "198.18.0.5", 80, false, false),
            (&["all"], "::1", 80, false, false),
            (&["all"], "fd00:ec2::254", 80, false, false),
            (&["all"], "fe80::1", 80, false, false),
            (&["all"], "::ffff:127.0.0.1", 80, false, false),
            (&["all"], "2606:4700::1111", 443, false, true),
            (&["example.com"], "127.0.0.1", 443, true, false),
            (&["example.com"], "169.254.169.254", 80, true, false),
            (&["example.com"], "93.184.216.34", 443, true, true),
            (&["example.com"], "93.184.216.34", 443, false, false),
            (&["10.0.0.0/8"], "10.1.2.3", 5432, false, true),
            (&["10.0.0.0/8:5432"], "10.1.2.3", 5432, false, true),
            (&["10.0.0.0/8:5432"], "10.1.2.3", 22, false, false),
            (&["127.0.0.1:8080"], "127.0.0.1", 8080, false, true),
            (&["[2001:db8::/32]:443"], "2001:db8::5", 443, false, true),
            (&["2001:db8::1"], "2001:db8::1", 22, false, true),
            (&["none"], "93.184.216.34", 443, false, false),
        ];
        for (rules, addr, port, via, allowed) in addr_cases {
            let via = via.then_some(&allow_name);
            let d = policy(rules).decide_address(ip(addr), *port, via);
            assert_eq!(d.allowed, *allowed, "{rules:?} {addr}:{port} via name: {} -> {d:?}", via.is_some());
            if !d.allowed {
                assert!(d.reason.is_some());
            }
        }
        assert!(name_cases.len() + addr_cases.len() >= 40);
    }

    #[test]
    fn defaults_empty_and_live_changes() {
        let d = Policy::parse(None).unwrap();
        assert!(d.decide_name("pypi.org", Some(443)).allowed);
        assert!(!d.decide_name("api.openai.com", Some(443)).allowed);
        assert!(Policy::parse(Some(&[])).unwrap().is_none());
        let mut p = policy(&["npm"]);
        p.add("example.com").unwrap();
        assert!(p.decide_name("example.com", Some(443)).allowed);
        assert!(p.remove("example.com"));
        assert!(!p.decide_name("example.com", Some(443)).allowed);
        assert!(!p.remove("example.com"));
        assert!(p.add("*.com").is_err());
    }
}
