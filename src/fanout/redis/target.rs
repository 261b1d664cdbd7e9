//! Where the Redis master is: a fixed address (REDIS_HOST/REDIS_PORT or REDIS_URL) or whatever
//! the sentinels (REDIS_SENTINELS + REDIS_MASTER_NAME) say it is now. Asked again on every
//! (re)connect, so a failover is followed.

use redis::{
    Client, RedisConnectionInfo, RedisResult,
    sentinel::{Sentinel, SentinelNodeConnectionInfo},
};
use thiserror::Error;

use crate::config::{Config, parse_sentinels};

/// A configuration that cannot reach Redis.
#[derive(Debug, Error)]
pub enum TargetError {
    /// The URL or address does not parse.
    #[error("invalid Redis address: {0}")]
    Invalid(String),
}

/// How to find the current master.
#[derive(Clone)]
pub enum Target {
    /// A fixed server.
    Direct {
        /// `redis://` or `rediss://` URL (may carry credentials).
        url: String,
    },
    /// Discovered through Sentinel.
    Sentinel {
        /// `redis://host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
        /// Password for the master, if any.
        password: Option<String>,
    },
}

impl Target {
    /// The target `cfg` describes, or `None` when Redis is not configured.
    pub fn from_config(cfg: &Config) -> Result<Option<Target>, TargetError> {
        if let Some(list) = &cfg.redis_sentinels {
            let sentinels = parse_sentinels(list)
                .map_err(TargetError::Invalid)?
                .into_iter()
                .map(|(host, port)| format!("redis://{host}:{port}/"))
                .collect();
            return Ok(Some(Target::Sentinel {
                sentinels,
                master: cfg.redis_master_name.clone().unwrap_or_default(),
                password: cfg.redis_password.clone(),
            }));
        }
        let url = match (&cfg.redis_url, &cfg.redis_host) {
            (Some(url), _) => url.clone(),
            (None, Some(host)) => {
                let auth = cfg
                    .redis_password
                    .as_deref()
                    .map(|p| format!(":{}@", percent_encode(p)))
                    .unwrap_or_default();
                format!("redis://{auth}{host}:{}/", cfg.redis_port)
            }
            (None, None) => return Ok(None),
        };
        Client::open(url.as_str()).map_err(|e| TargetError::Invalid(e.to_string()))?;
        Ok(Some(Target::Direct { url }))
    }

    /// A client for the current master.
    pub fn client(&self) -> RedisResult<Client> {
        match self {
            Target::Direct { url } => Client::open(url.as_str()),
            Target::Sentinel {
                sentinels,
                master,
                password,
            } => {
                let mut sentinel = Sentinel::build(sentinels.clone())?;
                let mut node = SentinelNodeConnectionInfo::default();
                if let Some(pw) = password {
                    node = node
                        .set_redis_connection_info(RedisConnectionInfo::default().set_password(pw));
                }
                sentinel.master_for(master, Some(&node))
            }
        }
    }

    /// For logs: where it points, without credentials.
    pub fn describe(&self) -> String {
        match self {
            Target::Direct { url } => match url.split_once('@') {
                Some((scheme_auth, rest)) => {
                    let scheme = scheme_auth.split("://").next().unwrap_or("redis");
                    format!("{scheme}://<credentials>@{rest}")
                }
                None => url.clone(),
            },
            Target::Sentinel {
                sentinels, master, ..
            } => format!("sentinel master {master:?} via {}", sentinels.join(",")),
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for a URL's userinfo).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut all = vec!["gw", "--jwt-secret", "0123456789abcdef0123456789abcdef"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn builds_targets_from_config() {
        assert!(Target::from_config(&cfg(&[])).unwrap().is_none());
        let t = Target::from_config(&cfg(&["--redis-host", "r1", "--redis-port", "7000"]))
            .unwrap()
            .unwrap();
        assert!(matches!(&t, Target::Direct { url } if url == "redis://r1:7000/"));
        let t = Target::from_config(&cfg(&["--redis-host", "r1", "--redis-password", "p@ss w"]))
            .unwrap()
            .unwrap();
        assert!(matches!(&t, Target::Direct { url } if url == "redis://:p%40ss%20w@r1:6379/"));
        assert_eq!(t.describe(), "redis://<credentials>@r1:6379/");
        let t = Target::from_config(&cfg(&[
            "--redis-sentinels",
            "s1:26379,s2:26380",
            "--redis-master-name",
            "mymaster",
        ]))
        .unwrap()
        .unwrap();
        assert!(matches!(&t, Target::Sentinel { sentinels, master, .. }
                if sentinels == &["redis://s1:26379/", "redis://s2:26380/"] && master == "mymaster"));
    }
}
