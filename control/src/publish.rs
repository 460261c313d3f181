//! docker's `--publish` option (docker/cli `opts/port.go`), short and long forms:
//!
//! * short: `[PUBLISHED:]TARGET[/PROTOCOL]`, ports or equal-length ranges
//!   (`8080:80`, `53:53/udp`, `8000-8002:80-82`, `80` — published port assigned later);
//! * long: comma-separated `published=`, `target=`, `protocol=` (`tcp`|`udp`), `mode=`
//!   (`ingress`|`host`).
//!
//! SCTP, which Docker accepts, is refused: swarmgate's load balancer translates TCP and UDP.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

/// Where a port is published (Docker's `mode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PublishMode {
    /// Routing mesh: on every node, load-balanced to any task (the default).
    Ingress,
    /// Only on nodes running a task, straight to that task.
    Host,
}

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortConfig {
    /// Port on the nodes; `None`: to be assigned from the dynamic range.
    pub published: Option<u16>,
    /// Port the tasks listen on.
    pub target: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Ingress or host.
    pub mode: PublishMode,
}

/// A `--publish` value that cannot be used, with what is wrong in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --publish {spec:?}: {reason}")]
pub struct PublishError {
    spec: String,
    reason: String,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        })
    }
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) && !s.starts_with('+') => Ok(p as u16),
        _ => Err(format!("{s:?} is not a port number (1-65535)")),
    }
}

fn range(s: &str) -> Result<(u16, u16), String> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("range {s:?} runs backwards"));
            }
            Ok((a, b))
        }
        None => {
            let p = port(s)?;
            Ok((p, p))
        }
    }
}

fn protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Err("protocol sctp is not supported by swarmgate (tcp or udp)".into()),
        _ => Err(format!("unknown protocol {s:?} (tcp or udp)")),
    }
}

/// Parses one `--publish` value into one or more port configurations.
pub fn parse(spec: &str) -> Result<Vec<PortConfig>, PublishError> {
    let err = |reason: String| PublishError {
        spec: spec.to_owned(),
        reason,
    };
    let s = spec.trim();
    if s.is_empty() {
        return Err(err("empty".into()));
    }
    if s.contains('=') {
        return parse_long(s).map(|p| vec![p]).map_err(err);
    }
    let (ports, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, protocol(proto).map_err(err)?),
        None => (s, Protocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) =
        match parts.as_slice() {
            [t] => (None, range(t).map_err(err)?),
            [p, t] => (Some(range(p).map_err(err)?), range(t).map_err(err)?),
            _ => return Err(err(
                "expected [PUBLISHED:]TARGET[/PROTOCOL]; a host IP cannot be given in swarm mode"
                    .into(),
            )),
        };
    let n = target.1 - target.0;
    if n as usize >= crate::service::MAX_PUBLISHED_PORTS {
        return Err(err(format!(
            "a range publishes at most {} ports",
            crate::service::MAX_PUBLISHED_PORTS
        )));
    }
    if let Some(p) = published {
        if p.1 - p.0 != n {
            return Err(err("published and target ranges differ in length".into()));
        }
    }
    Ok((0..=n)
        .map(|i| PortConfig {
            published: published.map(|p| p.0 + i),
            target: target.0 + i,
            protocol: proto,
            mode: PublishMode::Ingress,
        })
        .collect())
}

fn parse_long(s: &str) -> Result<PortConfig, String> {
    let (mut published, mut target, mut proto, mut mode) =
        (None, None, Protocol::Tcp, PublishMode::Ingress);
    for field in s.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("field {field:?} is not key=value"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "published" => published = Some(port(v.trim())?),
            "target" => target = Some(port(v.trim())?),
            "protocol" => proto = protocol(v.trim())?,
            "mode" => {
                mode = match v.trim().to_ascii_lowercase().as_str() {
                    "ingress" => PublishMode::Ingress,
                    "host" => PublishMode::Host,
                    other => return Err(format!("unknown mode {other:?} (ingress or host)")),
                }
            }
            other => {
                return Err(format!(
                    "unknown field {other:?} (published, target, protocol, mode)"
                ))
            }
        }
    }
    let target = target.ok_or("target= is required")?;
    Ok(PortConfig {
        published,
        target,
        protocol: proto,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(
        published: Option<u16>,
        target: u16,
        protocol: Protocol,
        mode: PublishMode,
    ) -> PortConfig {
        PortConfig {
            published,
            target,
            protocol,
            mode,
        }
    }

    #[test]
    fn short_forms() {
        use {Protocol::*, PublishMode::Ingress};
        assert_eq!(
            parse("8080:80").unwrap(),
            vec![pc(Some(8080), 80, Tcp, Ingress)]
        );
        assert_eq!(
            parse("53:53/udp").unwrap(),
            vec![pc(Some(53), 53, Udp, Ingress)]
        );
        assert_eq!(parse("80").unwrap(), vec![pc(None, 80, Tcp, Ingress)]);
        assert_eq!(
            parse("8000-8002:80-82/UDP").unwrap(),
            (0..3)
                .map(|i| pc(Some(8000 + i), 80 + i, Udp, Ingress))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn long_forms() {
        assert_eq!(
            parse("published=8080,target=80,protocol=udp,mode=host").unwrap(),
            vec![pc(Some(8080), 80, Protocol::Udp, PublishMode::Host)]
        );
        assert_eq!(
            parse("target=80").unwrap(),
            vec![pc(None, 80, Protocol::Tcp, PublishMode::Ingress)]
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (spec, says) in [
            ("", "empty"),
            ("0:80", "not a port number"),
            ("8080:70000", "not a port number"),
            ("8080:80/icmp", "unknown protocol"),
            ("8080:80/sctp", "sctp is not supported"),
            ("1.2.3.4:8080:80", "host IP"),
            ("8000-8002:80-81", "differ in length"),
            ("8002-8000:80-82", "runs backwards"),
            ("published=8080", "target= is required"),
            ("published=8080,target=80,mode=global", "unknown mode"),
            ("published=8080,targte=80", "unknown field"),
            ("published=8080,target", "not key=value"),
            ("+80", "not a port number"),
        ] {
            let e = parse(spec).unwrap_err().to_string();
            assert!(e.contains(says), "{spec:?}: {e}");
            assert!(e.starts_with("invalid --publish"), "{e}");
        }
    }
}
