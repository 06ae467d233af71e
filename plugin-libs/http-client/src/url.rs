//! `http://HOST[:PORT][/PATH][?QUERY]`, as a connector's `url` setting gives it.

use std::fmt;
use std::net::Ipv6Addr;

/// An `http://` URL split into what a request needs. The host stays as written: an IP
/// address connects directly, a name needs DNS (which a sandbox may refuse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// A name, an IPv4 address, or an IPv6 address in brackets.
    host: String,
    port: u16,
    /// The request target: the path (at least `/`) and the query.
    target: String,
}

impl Url {
    /// Parses an `http://` URL. `https://` is refused (no TLS here), as are credentials in
    /// the URL (send them as a header instead).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} is not a URL of the form http://HOST[:PORT]/PATH"))?;
        if scheme.eq_ignore_ascii_case("https") {
            return Err(format!(
                "{text:?}: https is not supported (no TLS in this client); use http://, through \
                 a TLS-terminating proxy if the server only speaks https"
            ));
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!("{text:?}: the scheme must be http, not {scheme:?}"));
        }
        // The fragment is the client's business; it never goes to the server.
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (authority, target) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(format!(
                "{text:?}: credentials in the URL are not supported; send them as a header \
                 (header.Authorization=...)"
            ));
        }
        let (host, port) = split_host_port(authority).map_err(|e| format!("{text:?}: {e}"))?;
        let target = match target {
            "" => "/".to_owned(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_owned(),
        };
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "{text:?}: the path contains spaces or control characters; percent-encode them"
            ));
        }
        Ok(Self { host, port, target })
    }

    /// The host as written in the URL (IPv6 addresses in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path and query, as the request line carries them.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The `Host` header: the host, with the port unless it is the default.
    pub fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host to resolve or connect to: without the brackets of an IPv6 address.
    pub(crate) fn connect_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.target)
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (inside, after) = bracketed
                .split_once(']')
                .ok_or("the IPv6 address has no closing ]")?;
            inside
                .parse::<Ipv6Addr>()
                .map_err(|_| format!("{inside:?} is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or("expected :PORT after ]")?),
            };
            (format!("[{inside}]"), port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        },
    };
    if host.is_empty() {
        return Err("the URL has no host".to_owned());
    }
    let name_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if !host.starts_with('[') && !host.chars().all(name_chars) {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    let port = match port {
        None => 80,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("{port:?} is not a port (1 to 65535)")),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_host_port_and_target() {
        let url = Url::parse("http://127.0.0.1:8080/api/v1?since=3#top").unwrap();
        assert_eq!(url.host(), "127.0.0.1");
        assert_eq!(url.port(), 8080);
        assert_eq!(url.target(), "/api/v1?since=3");
        assert_eq!(url.authority(), "127.0.0.1:8080");
        assert_eq!(url.to_string(), "http://127.0.0.1:8080/api/v1?since=3");

        let url = Url::parse("HTTP://sensors.local").unwrap();
        assert_eq!((url.port(), url.target()), (80, "/"));
        assert_eq!(url.authority(), "sensors.local");
        assert_eq!(Url::parse("http://h?x=1").unwrap().target(), "/?x=1");

        let url = Url::parse("http://[::1]:9000/x").unwrap();
        assert_eq!((url.host(), url.connect_host()), ("[::1]", "::1"));
        assert_eq!(url.authority(), "[::1]:9000");
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        let error = |text: &str| Url::parse(text).unwrap_err();
        assert!(error("https://example.com/").contains("https is not supported"));
        assert!(error("ftp://example.com/").contains("scheme must be http"));
        assert!(error("example.com/path").contains("not a URL"));
        assert!(error("http://user:pw@host/").contains("credentials"));
        assert!(error("http://host:0/").contains("not a port"));
        assert!(error("http://host:99999/").contains("not a port"));
        assert!(error("http://:80/").contains("no host"));
        assert!(error("http://[::1/").contains("closing ]"));
        assert!(error("http://[zz]/").contains("not an IPv6"));
        assert!(error("http://a b/").contains("not a host"));
        assert!(error("http://host/a b").contains("percent-encode"));
    }
}
