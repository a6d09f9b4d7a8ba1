//! SIP and SIPS URIs: parsing (RFC 3261 §19.1.1, §25.1), comparison (§19.1.4)
//! and the GRUU rules of RFC 5627.
//!
//! Written here rather than taken from a crate: the stable `sip-uri` 0.2
//! compares structurally (parameter order and case count, not §19.1.4),
//! prints an escaped reserved character in the user part unescaped
//! (`sip:a%3bb@x` becomes `sip:a;b@x`, another URI) and accepts spaces in the
//! user part; its §19.1.4 equivalence exists only in a release candidate.
//! Verification of transfers rests on this comparison, so it is small,
//! strict and tested case by case against the RFC's examples.

use std::fmt;
use std::net::Ipv6Addr;

/// A parsed `sip:` or `sips:` URI in canonical form: escapes of unreserved
/// characters decoded, other escapes upper-case, host and parameter names
/// lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    secure: bool,
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    params: Vec<(String, Option<String>)>,
    headers: Vec<(String, String)>,
}

/// Why text is not a SIP URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a valid SIP URI: {reason}")]
pub struct UriError {
    input: String,
    reason: String,
}

/// Parameters that, present in one URI, must be present and equal in the
/// other for the two to be equivalent (§19.1.4).
const STRICT_PARAMS: [&str; 5] = ["user", "ttl", "method", "maddr", "transport"];

fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()".contains(c)
}

/// Canonicalises one component: checks every character against `allowed`
/// (besides unreserved characters and escapes), decodes escapes of
/// unreserved characters and upper-cases the others.
fn canonical(text: &str, allowed: &str, what: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            let hex: String = chars.by_ref().take(2).collect();
            let byte = u8::from_str_radix(&hex, 16)
                .ok()
                .filter(|_| hex.len() == 2)
                .ok_or_else(|| format!("bad escape %{hex} in the {what}"))?;
            let decoded = char::from(byte);
            if byte.is_ascii() && is_unreserved(decoded) {
                out.push(decoded);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else if is_unreserved(c) || allowed.contains(c) {
            out.push(c);
        } else {
            return Err(format!("character {c:?} is not allowed in the {what}"));
        }
    }
    Ok(out)
}

impl std::str::FromStr for SipUri {
    type Err = UriError;

    fn from_str(input: &str) -> Result<Self, UriError> {
        Self::parse_inner(input).map_err(|reason| UriError {
            input: input.to_owned(),
            reason,
        })
    }
}

impl SipUri {
    fn parse_inner(input: &str) -> Result<Self, String> {
        let (scheme, rest) = input
            .split_once(':')
            .ok_or("no scheme (expected sip: or sips:)")?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "sip" => false,
            "sips" => true,
            _ => return Err(format!("scheme {scheme:?} is not sip or sips")),
        };
        let (before_headers, headers_text) = match rest.split_once('?') {
            Some((a, b)) => (a, Some(b)),
            None => (rest, None),
        };
        // Parameter values cannot contain '@', so the last one ends the
        // userinfo.
        let (userinfo, host_and_params) = match before_headers.rfind('@') {
            Some(at) => (Some(&before_headers[..at]), &before_headers[at + 1..]),
            None => (None, before_headers),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some("") => return Err("empty user part before @".into()),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                if user.is_empty() {
                    return Err("empty user part".into());
                }
                (
                    Some(canonical(user, "&=+$,;?/", "user part")?),
                    password
                        .map(|p| canonical(p, "&=+$,", "password"))
                        .transpose()?,
                )
            }
        };
        let mut parts = host_and_params.split(';');
        let hostport = parts.next().unwrap_or_default();
        let (host, port) = parse_hostport(hostport)?;
        let mut params = Vec::new();
        for param in parts {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (param, None),
            };
            if name.is_empty() {
                return Err("empty parameter name".into());
            }
            let name = canonical(name, "[]/:&+$", "parameter name")?.to_ascii_lowercase();
            let value = value
                .map(|v| canonical(v, "[]/:&+$", &format!("value of parameter {name}")))
                .transpose()?;
            if params.iter().any(|(n, _)| *n == name) {
                return Err(format!("parameter {name} appears twice"));
            }
            params.push((name, value));
        }
        let mut headers = Vec::new();
        if let Some(text) = headers_text {
            for header in text.split('&') {
                let (name, value) = header
                    .split_once('=')
                    .ok_or_else(|| format!("header {header:?} has no value"))?;
                headers.push((
                    canonical(name, "[]/?:+$", "header name")?.to_ascii_lowercase(),
                    canonical(value, "[]/?:+$", "header value")?,
                ));
            }
        }
        Ok(Self {
            secure,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// `sips:`?
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The user part, canonical.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The host, lower-case; IPv6 in brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A parameter: `None` if absent, `Some(None)` if present without value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        let name = name.to_ascii_lowercase();
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_deref())
    }

    /// The same URI without parameter `name`.
    pub fn without_param(&self, name: &str) -> Self {
        let name = name.to_ascii_lowercase();
        let mut uri = self.clone();
        uri.params.retain(|(n, _)| *n != name);
        uri
    }

    /// What every URI equivalent to this one shares (scheme, user, host
    /// case-folded, port): a key to find candidates by, before
    /// [`SipUri::equivalent`] decides.
    pub fn equivalence_key(&self) -> (bool, Option<String>, String, Option<u16>) {
        (
            self.secure,
            self.user.clone(),
            self.host.to_ascii_lowercase(),
            self.port,
        )
    }

    /// RFC 3261 §19.1.4 equivalence.
    pub fn equivalent(&self, other: &Self) -> bool {
        let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (None, None) => true,
            _ => false,
        };
        if self.secure != other.secure
            || self.user != other.user
            || self.password != other.password
            || self.host != other.host
            || self.port != other.port
        {
            return false;
        }
        for (name, value) in &self.params {
            match other.params.iter().find(|(n, _)| n == name) {
                Some((_, other_value)) if !same(value, other_value) => return false,
                None if STRICT_PARAMS.contains(&name.as_str()) => return false,
                Some(_) | None => {}
            }
        }
        for (name, _) in &other.params {
            if STRICT_PARAMS.contains(&name.as_str()) && self.param(name).is_none() {
                return false;
            }
        }
        let header_set = |uri: &Self| {
            let mut set: Vec<(String, String)> = uri
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.to_ascii_lowercase()))
                .collect();
            set.sort();
            set
        };
        header_set(self) == header_set(other)
    }
}

fn parse_hostport(text: &str) -> Result<(String, Option<u16>), String> {
    if text.is_empty() {
        return Err("empty host".into());
    }
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (addr, rest) = v6.split_once(']').ok_or("unclosed [ in IPv6 host")?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        (
            format!("[{addr}]"),
            rest.strip_prefix(':')
                .map(str::to_owned)
                .or_else(|| (!rest.is_empty()).then(|| rest.to_owned())),
        )
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host.to_ascii_lowercase(), Some(port.to_owned())),
            None => (text.to_ascii_lowercase(), None),
        }
    };
    if !host.starts_with('[') {
        let valid = !host.is_empty()
            && host.split('.').enumerate().all(|(i, label)| {
                (!label.is_empty() || i > 0)
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(format!("{host:?} is not a host name or IP address"));
        }
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port {p:?} is not a number 1-65535"))?,
        ),
    };
    Ok((host, port))
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(user) = &self.user {
            f.write_str(user)?;
            if let Some(password) = &self.password {
                write!(f, ":{password}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        for (name, value) in &self.params {
            match value {
                Some(value) => write!(f, ";{name}={value}")?,
                None => write!(f, ";{name}")?,
            }
        }
        for (i, (name, value)) in self.headers.iter().enumerate() {
            write!(f, "{}{name}={value}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// Parameters of a header value (after the closing `>`), names lower-case.
pub type HeaderParams = Vec<(String, Option<String>)>;

/// Parses a URI as it appears in a Contact or To header value: a bare URI,
/// or `"Display Name" <URI>;header-params` / `Name <URI>`. Parameters after
/// the closing `>` belong to the header (`+sip.instance`, `expires`, …) and
/// are returned separately; a bare URI keeps all its parameters.
pub fn parse_name_addr(text: &str) -> Result<(SipUri, HeaderParams), UriError> {
    let error = |reason: &str| UriError {
        input: text.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = text.trim();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut open = None;
    for (i, c) in trimmed.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => {
                open = Some(i);
                break;
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(error("unterminated quoted display name"));
    }
    let Some(open) = open else {
        return Ok((trimmed.parse()?, Vec::new()));
    };
    let after = &trimmed[open + 1..];
    let close = after.find('>').ok_or_else(|| error("missing closing >"))?;
    let uri: SipUri = after[..close].trim().parse()?;
    let mut header_params = Vec::new();
    let tail = after[close + 1..].trim();
    if !tail.is_empty() {
        let tail = tail
            .strip_prefix(';')
            .ok_or_else(|| error("unexpected text after >"))?;
        for param in split_outside_quotes(tail, ';') {
            let param = param.trim();
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"').to_owned())),
                None => (param, None),
            };
            header_params.push((name.to_ascii_lowercase(), value));
        }
    }
    Ok((uri, header_params))
}

fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == '"' {
            in_quotes = !in_quotes;
        } else if c == separator && !in_quotes {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// What a URI is as a GRUU (RFC 5627).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gruu {
    /// `gr=<instance>`: the AOR is the URI without `gr`.
    Public {
        /// The AOR it belongs to.
        aor: SipUri,
    },
    /// `gr` without a value: opaque, known only through a binding.
    Temporary,
    /// No `gr` parameter.
    NotAGruu,
}

/// Classifies a URI as a GRUU.
pub fn classify(uri: &SipUri) -> Gruu {
    match uri.param("gr") {
        Some(Some(_)) => Gruu::Public {
            aor: uri.without_param("gr"),
        },
        Some(None) => Gruu::Temporary,
        None => Gruu::NotAGruu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> SipUri {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rfc_3261_equivalent_pairs() {
        // §19.1.4's examples of equivalent URIs.
        for (a, b) in [
            (
                "sip:%61lice@atlanta.com;transport=TCP",
                "sip:alice@AtLanTa.CoM;Transport=tcp",
            ),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
            (
                "sip:carol@chicago.com;newparam=5",
                "sip:carol@chicago.com;security=on",
            ),
            (
                "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
                "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
            ),
            (
                "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
                "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
            ),
        ] {
            assert!(uri(a).equivalent(&uri(b)), "{a} ≡ {b}");
            assert!(uri(b).equivalent(&uri(a)), "{b} ≡ {a}");
        }
    }

    #[test]
    fn rfc_3261_non_equivalent_pairs() {
        for (a, b) in [
            (
                "SIP:ALICE@AtLanTa.CoM;Transport=udp",
                "sip:alice@AtLanTa.CoM;Transport=UDP",
            ),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
            (
                "sip:bob@biloxi.com",
                "sip:bob@biloxi.com:6000;transport=tcp",
            ),
            (
                "sip:carol@chicago.com",
                "sip:carol@chicago.com?Subject=next%20meeting",
            ),
            ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
            ("sip:alice@example.com", "sips:alice@example.com"),
            ("sip:a%3bb@example.com", "sip:a;b@example.com"),
        ] {
            assert!(!uri(a).equivalent(&uri(b)), "{a} ≢ {b}");
            assert!(!uri(b).equivalent(&uri(a)), "{b} ≢ {a}");
        }
    }

    #[test]
    fn escapes_are_canonical_and_round_trip() {
        assert_eq!(
            uri("sip:%61lice@example.com").to_string(),
            "sip:alice@example.com"
        );
        assert_eq!(
            uri("sip:a%3bb@example.com").to_string(),
            "sip:a%3Bb@example.com"
        );
        assert_eq!(uri("sip:bob@[2001:DB8:0::1]:5061").host(), "[2001:db8::1]");
        let text = "sips:+1555;cpc=x:pw@host.example;maddr=10.0.0.1;lr?h=v";
        assert_eq!(uri(text).to_string(), text);
    }

    #[test]
    fn malformed_uris_say_what_is_wrong() {
        for (input, reason) in [
            ("alice@example.com", "no scheme"),
            ("tel:+15551234567", "not sip or sips"),
            ("sip:", "empty host"),
            ("sip:alice@", "empty host"),
            ("sip:@example.com", "empty user"),
            ("sip:al ice@example.com", "not allowed in the user part"),
            ("sip:alice@exa mple.com", "not a host name"),
            ("sip:alice@example.com:99999", "port"),
            ("sip:alice@[::1", "unclosed"),
            ("sip:alice@example.com;gr;gr", "twice"),
            ("sip:alice%4@example.com", "bad escape"),
            ("sip:alice@-bad-.com", "not a host name"),
        ] {
            let error = input.parse::<SipUri>().expect_err(input).to_string();
            assert!(error.contains(reason), "{input}: {error}");
        }
    }

    #[test]
    fn contact_header_values() {
        let (contact, params) = parse_name_addr(
            r#""Alice's \"Desk\" <phone>" <sip:alice@example.com;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>;+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";expires=3600"#,
        )
        .expect("contact");
        assert_eq!(
            contact.param("gr"),
            Some(Some("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"))
        );
        assert_eq!(params[0].0, "+sip.instance");
        assert_eq!(params[1], ("expires".into(), Some("3600".into())));
        let (bare, none) = parse_name_addr(" sip:bob@example.com;gr ").expect("bare");
        assert_eq!(classify(&bare), Gruu::Temporary);
        assert!(none.is_empty());
        let (plain, _) = parse_name_addr("Bob <sips:bob@example.com>").expect("plain");
        assert!(plain.is_secure());
        assert!(parse_name_addr("Bob <sip:bob@example.com").is_err());
        assert!(parse_name_addr("\"Bob <sip:bob@example.com>").is_err());
    }

    #[test]
    fn gruu_classification() {
        let public = uri("sip:alice@example.com;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6");
        match classify(&public) {
            Gruu::Public { aor } => assert!(aor.equivalent(&uri("sip:alice@EXAMPLE.com"))),
            other @ (Gruu::Temporary | Gruu::NotAGruu) => panic!("{other:?}"),
        }
        assert_eq!(
            classify(&uri(
                "sip:tgruu.7hs==jd7vnzga5w7fajsc7-ajd6fabz0f8g5@example.com;gr"
            )),
            Gruu::Temporary
        );
        assert_eq!(classify(&uri("sip:alice@example.com")), Gruu::NotAGruu);
    }
}
