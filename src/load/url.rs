//! Target URL parsing for the load generator: `ws://host[:port][/path][?query]`.
//!
//! Only the `ws` scheme is accepted, because the generator speaks plain TCP. The host may be a
//! name, an IPv4 address or a bracketed IPv6 address. Name resolution happens in the caller.
#![forbid(unsafe_code)]

/// Port used when the URL names none (RFC 6455 §3).
const DEFAULT_PORT: u16 = 80;

/// A parsed `ws://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// Host as written, without brackets (a name or an IP address).
    pub host: String,
    pub port: u16,
    /// Value for the `Host` header: the host, bracketed if IPv6, with `:port` when the URL
    /// named a port.
    pub authority: String,
    /// Request target: the path (`/` when absent) and the query, if any.
    pub path_and_query: String,
}

/// Why a target URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("URL has a fragment; remove the part from `#`")]
    Fragment,
    #[error(
        "URL contains a space or control character at byte {at}; percent-encode it (%20 for a space)"
    )]
    InvalidCharacter { at: usize },
    #[error("URL has no host; expected ws://host:port/path")]
    HostMissing,
    #[error("URL host {host:?} has an unclosed `[`")]
    HostUnclosed { host: String },
    #[error(
        "URL authority {host:?} has more than one `:`{}",
        if *ipv6 { "; put an IPv6 address in brackets, as in ws://[::1]:8080/ws" } else { "; give one port" }
    )]
    HostColons { host: String, ipv6: bool },
    #[error("URL port {port:?} is not a number from 1 to 65535")]
    PortInvalid { port: String },
    #[error(
        "URL scheme {scheme:?} is not supported; use ws:// (wss:// needs TLS, which the load generator does not speak)"
    )]
    SchemeUnsupported { scheme: String },
    #[error("URL has user information before `@`; put credentials in a token instead")]
    UserInfo,
    #[error("URL {url:?} has no scheme; write it as ws://{url}")]
    SchemeMissing { url: String },
}

impl WsUrl {
    /// Parses `text` as a `ws://` URL.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        // RFC 3986 §2: a URI has no spaces or control characters, and the request line
        // built from it would be malformed (RFC 9112 §3).
        if let Some(at) = text.bytes().position(|byte| byte <= b' ' || byte == 0x7f) {
            return Err(UrlError::InvalidCharacter { at });
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(UrlError::SchemeMissing {
                url: text.to_owned(),
            });
        };
        if !scheme.eq_ignore_ascii_case("ws") {
            return Err(UrlError::SchemeUnsupported {
                scheme: scheme.to_owned(),
            });
        }
        if rest.contains('#') {
            return Err(UrlError::Fragment);
        }

        let target_start = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(target_start);
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port_text) = split_host_port(authority)?;
        if host.is_empty() {
            return Err(UrlError::HostMissing);
        }
        let port = match port_text {
            None => DEFAULT_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(value) if value > 0 => value,
                _ => {
                    return Err(UrlError::PortInvalid {
                        port: port.to_owned(),
                    });
                }
            },
        };

        let path_and_query = match target.strip_prefix('?') {
            Some(_) => format!("/{target}"),
            None if target.is_empty() => "/".to_owned(),
            None => target.to_owned(),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path_and_query,
        })
    }

    /// Request target with `name=value` appended to the query.
    pub fn with_query_param(&self, name: &str, value: &str) -> String {
        let separator = if self.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{separator}{name}={value}", self.path_and_query)
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), UrlError> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(UrlError::HostUnclosed {
                host: authority.to_owned(),
            });
        };
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(UrlError::PortInvalid {
                port: after.to_owned(),
            }),
        };
    }
    match authority.split_once(':') {
        // An IPv6 address has colons and must be in brackets (RFC 3986 §3.2.2).
        Some((_, port)) if port.contains(':') => {
            let is_ipv6 = |text: &str| text.parse::<std::net::Ipv6Addr>().is_ok();
            Err(UrlError::HostColons {
                host: authority.to_owned(),
                ipv6: is_ipv6(authority)
                    || authority
                        .rsplit_once(':')
                        .is_some_and(|(host, _)| is_ipv6(host)),
            })
        }
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbracketed_colons_fail() {
        for (url, hint) in [
            ("ws://::1:8080/ws", "brackets"),
            ("ws://fe80::1/ws", "brackets"),
            ("ws://127.0.0.1:80:81/ws", "one port"),
        ] {
            let err = WsUrl::parse(url).unwrap_err();
            assert!(matches!(err, UrlError::HostColons { .. }), "{url}: {err}");
            assert!(err.to_string().contains(hint), "{url}: {err}");
        }
    }

    #[test]
    fn parse_full_url_splits_parts() {
        let url = WsUrl::parse("ws://127.0.0.1:8080/ws?room=1").unwrap();
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 8080);
        assert_eq!(url.authority, "127.0.0.1:8080");
        assert_eq!(url.path_and_query, "/ws?room=1");
    }

    #[test]
    fn parse_without_port_or_path_uses_defaults() {
        let url = WsUrl::parse("ws://localhost").unwrap();
        assert_eq!(url.port, 80);
        assert_eq!(url.authority, "localhost");
        assert_eq!(url.path_and_query, "/");

        let url = WsUrl::parse("WS://localhost?x=1").unwrap();
        assert_eq!(url.path_and_query, "/?x=1");
    }

    #[test]
    fn parse_ipv6_host_strips_brackets() {
        let url = WsUrl::parse("ws://[::1]:9001/echo").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 9001);
        assert_eq!(url.authority, "[::1]:9001");
        assert_eq!(WsUrl::parse("ws://[::1]/").unwrap().port, 80);
    }

    #[test]
    fn parse_bad_urls_fail_with_reason() {
        let cases = [
            (
                "wss://h/",
                UrlError::SchemeUnsupported {
                    scheme: "wss".to_owned(),
                },
            ),
            (
                "http://h/",
                UrlError::SchemeUnsupported {
                    scheme: "http".to_owned(),
                },
            ),
            (
                "h:80/",
                UrlError::SchemeMissing {
                    url: "h:80/".to_owned(),
                },
            ),
            ("ws://h/a b", UrlError::InvalidCharacter { at: 8 }),
            ("ws://h/\tx", UrlError::InvalidCharacter { at: 7 }),
            ("ws:///path", UrlError::HostMissing),
            ("ws://:80/", UrlError::HostMissing),
            (
                "ws://h:0/",
                UrlError::PortInvalid {
                    port: "0".to_owned(),
                },
            ),
            (
                "ws://h:99999/",
                UrlError::PortInvalid {
                    port: "99999".to_owned(),
                },
            ),
            (
                "ws://[::1/",
                UrlError::HostUnclosed {
                    host: "[::1".to_owned(),
                },
            ),
            (
                "ws://[::1]x/",
                UrlError::PortInvalid {
                    port: "x".to_owned(),
                },
            ),
            ("ws://u:p@h/", UrlError::UserInfo),
            ("ws://h/#frag", UrlError::Fragment),
        ];
        for (text, expected) in cases {
            assert_eq!(WsUrl::parse(text), Err(expected), "{text}");
        }
    }

    #[test]
    fn with_query_param_appends_with_right_separator() {
        let url = WsUrl::parse("ws://h:1/ws").unwrap();
        assert_eq!(
            url.with_query_param("access_token", "t"),
            "/ws?access_token=t"
        );
        let url = WsUrl::parse("ws://h:1/ws?a=b").unwrap();
        assert_eq!(
            url.with_query_param("access_token", "t"),
            "/ws?a=b&access_token=t"
        );
    }
}
