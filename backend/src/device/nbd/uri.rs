//! NBD URIs, as QEMU and libnbd spell them: `nbd://host[:port]/export` (TCP) and
//! `nbd+unix:///export?socket=/path` (unix socket).

use std::path::PathBuf;

use thiserror::Error;

/// The standard NBD port.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an export is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdAddress {
    Tcp {
        host: String,
        port: u16,
        export: String,
    },
    Unix {
        socket: PathBuf,
        export: String,
    },
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "{uri:?} is not an NBD URI: {reason} (nbd://host[:port]/export or nbd+unix:///export?socket=/path)"
)]
pub struct UriError {
    uri: String,
    reason: &'static str,
}

impl NbdAddress {
    pub fn export(&self) -> &str {
        match self {
            Self::Tcp { export, .. } | Self::Unix { export, .. } => export,
        }
    }

    /// Whether `s` looks like an NBD URI (rather than a path).
    pub fn is_uri(s: &str) -> bool {
        s.starts_with("nbd://") || s.starts_with("nbd+unix://")
    }

    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let fail = |reason| UriError {
            uri: uri.to_string(),
            reason,
        };
        if let Some(rest) = uri.strip_prefix("nbd+unix://") {
            let (path, query) = rest.split_once('?').ok_or(fail("no ?socket= query"))?;
            if !path.is_empty() && !path.starts_with('/') {
                return Err(fail("a unix URI has no host"));
            }
            let export = path.strip_prefix('/').unwrap_or("").to_string();
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .filter(|s| !s.is_empty())
                .ok_or(fail("no socket= in the query"))?;
            return Ok(Self::Unix {
                socket: PathBuf::from(socket),
                export,
            });
        }
        let rest = uri.strip_prefix("nbd://").ok_or(fail("unknown scheme"))?;
        if rest.contains('?') {
            return Err(fail("a TCP URI takes no query"));
        }
        let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(fail("unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(fail("no host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| fail("bad port"))?,
        };
        Ok(Self::Tcp {
            host: host.to_string(),
            port,
            export: export.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_uris() {
        assert_eq!(
            NbdAddress::parse("nbd://10.0.0.2/vm1").unwrap(),
            NbdAddress::Tcp {
                host: "10.0.0.2".into(),
                port: DEFAULT_PORT,
                export: "vm1".into()
            }
        );
        assert_eq!(
            NbdAddress::parse("nbd://[::1]:2000/a/b").unwrap(),
            NbdAddress::Tcp {
                host: "::1".into(),
                port: 2000,
                export: "a/b".into()
            }
        );
        assert_eq!(
            NbdAddress::parse("nbd+unix:///d?socket=/run/nbd.sock").unwrap(),
            NbdAddress::Unix {
                socket: "/run/nbd.sock".into(),
                export: "d".into()
            }
        );
        assert_eq!(
            NbdAddress::parse("nbd+unix://?socket=/s").unwrap().export(),
            ""
        );
    }

    #[test]
    fn refuses_what_is_not_an_nbd_uri() {
        for bad in [
            "/dev/sda",
            "nbd://",
            "nbd://:10809/x",
            "nbd://h:port/x",
            "nbd://h:99999/x",
            "nbd://h/x?socket=/s",
            "nbd+unix:///d",
            "nbd+unix:///d?socket=",
            "nbd+unix://host/d?socket=/s",
            "nbd://[::1/x",
        ] {
            assert!(NbdAddress::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(NbdAddress::is_uri("nbd+unix:///d?socket=/s"));
        assert!(!NbdAddress::is_uri("images/a.img"));
    }
}
