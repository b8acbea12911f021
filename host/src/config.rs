//! The server's configuration: one typed struct, filled from defaults, then a TOML file
//! (`--config`), then environment variables and flags, each layer overriding the one before.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use url::Url;

use crate::limits::{CallLimits, ServerLimits};

/// Everything `keyhole serve` needs to know.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Directory of the sled store and the files beside it.
    pub data_dir: PathBuf,
    /// The URL users reach the server at, when it differs from the listen address (behind a
    /// proxy). Links the server hands out are built from it.
    pub public_url: Option<Url>,
    /// Largest accepted plugin upload, in bytes.
    pub max_upload_bytes: usize,
    /// Largest accepted JSON request body, in bytes.
    pub max_request_bytes: usize,
    /// Wall-clock deadline of one tool call, in milliseconds.
    pub call_timeout_ms: u64,
    /// Calls running at once, server-wide; the instance pool is sized for it.
    pub max_concurrent_calls: u32,
    /// Calls of one plugin running at once, so that one busy plugin cannot take every slot;
    /// unset, a plugin may use them all.
    pub max_concurrent_calls_per_plugin: Option<u32>,
    /// Largest linear memory one plugin instance may grow to, in bytes.
    pub max_memory_bytes: usize,
    /// Largest tool result, in bytes of JSON.
    pub max_result_bytes: usize,
    /// Bytes of log messages one call may write.
    pub max_log_bytes: usize,
    /// How long an authorization link, and the flow it starts, stay valid, in seconds.
    pub oauth_flow_ttl_secs: u64,
    /// Outgoing HTTP from plugins.
    pub egress: EgressConfig,
}

/// How plugins' outgoing requests leave the host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Origins whose requests go to another address instead, for tests and demos that must run
    /// without the internet. Requests keep their `Host` header.
    pub overrides: Vec<EgressOverride>,
    /// PEM files of extra root certificates to trust besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// Deadline of one outgoing request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Largest request or response body a plugin may send or receive, in bytes.
    pub max_body_bytes: usize,
    /// Outgoing requests one call may make.
    pub max_requests_per_call: u32,
    /// Hosts plugins may reach over plain http (`host` or `host:port`, `*.suffix` allowed);
    /// every other request must be https. Meant for services inside a trusted network, which
    /// must still be public addresses or overridden origins.
    pub http_hosts: Vec<String>,
}

impl Default for Config {
    /// The defaults are the safe ones: loopback only, a 10 s call deadline, 32 MiB uploads.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            data_dir: PathBuf::from("keyhole-data"),
            public_url: None,
            max_upload_bytes: 32 * 1024 * 1024,
            max_request_bytes: 1024 * 1024,
            call_timeout_ms: 10_000,
            max_concurrent_calls: 128,
            max_concurrent_calls_per_plugin: None,
            max_memory_bytes: 64 * 1024 * 1024,
            max_result_bytes: 1024 * 1024,
            max_log_bytes: 64 * 1024,
            oauth_flow_ttl_secs: crate::oauth::DEFAULT_FLOW_TTL_SECS,
            egress: EgressConfig::default(),
        }
    }
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            overrides: Vec::new(),
            ca_files: Vec::new(),
            request_timeout_ms: 10_000,
            max_body_bytes: 10 * 1024 * 1024,
            max_requests_per_call: 64,
            http_hosts: Vec::new(),
        }
    }
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            message: source.to_string(),
        })
    }

    /// The deadline of one tool call.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// The limits of calls, before any plugin's overrides.
    pub fn limits(&self) -> ServerLimits {
        let per_plugin = self
            .max_concurrent_calls_per_plugin
            .unwrap_or(self.max_concurrent_calls)
            .min(self.max_concurrent_calls);
        ServerLimits {
            defaults: CallLimits {
                call_timeout_ms: self.call_timeout_ms,
                max_memory_bytes: self.max_memory_bytes as u64,
                max_result_bytes: self.max_result_bytes as u64,
                max_log_bytes: self.max_log_bytes as u64,
                max_concurrent_calls: per_plugin,
                request_timeout_ms: self.egress.request_timeout_ms,
                max_body_bytes: self.egress.max_body_bytes as u64,
                max_requests_per_call: self.egress.max_requests_per_call,
            },
            max_concurrent_calls: self.max_concurrent_calls,
        }
    }

    /// The URL the server is reached at: `public_url`, or else the listen address.
    pub fn public_url(&self, bound: SocketAddr) -> Url {
        self.public_url.clone().unwrap_or_else(|| {
            Url::parse(&format!("http://{bound}")).expect("a socket address forms a valid URL")
        })
    }
}

/// Sends requests for one origin to another address: `https://api.example.com=https://127.0.0.1:9443`.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressOverride {
    /// The origin a plugin names, as `scheme://host[:port]`.
    pub from: Url,
    /// Where its requests go instead.
    pub to: Url,
}

impl EgressOverride {
    /// Whether `url` belongs to the overridden origin.
    pub fn matches(&self, url: &Url) -> bool {
        url.scheme() == self.from.scheme()
            && url.host_str() == self.from.host_str()
            && url.port_or_known_default() == self.from.port_or_known_default()
    }
}

impl fmt::Debug for EgressOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}",
            self.from.origin().ascii_serialization(),
            self.to
        )
    }
}

impl FromStr for EgressOverride {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ConfigError::Override {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (from, to) = text
            .split_once('=')
            .ok_or_else(|| invalid("expected ORIGIN=URL"))?;
        let from = Url::parse(from).map_err(|_| invalid("the origin is not a URL"))?;
        let to = Url::parse(to).map_err(|_| invalid("the target is not a URL"))?;
        if from.host_str().is_none() || to.host_str().is_none() {
            return Err(invalid("both sides need a host"));
        }
        if from.path() != "/" || to.path() != "/" {
            return Err(invalid("give origins only, without a path"));
        }
        Ok(Self { from, to })
    }
}

impl<'de> Deserialize<'de> for EgressOverride {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// An egress override is malformed.
    #[error("invalid egress override `{text}`: {reason}")]
    Override {
        /// The override as given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_override_and_matches_its_origin_only() {
        let rule: EgressOverride = "https://api.example.com=https://127.0.0.1:9443"
            .parse()
            .unwrap();
        assert!(rule.matches(&Url::parse("https://api.example.com/v1/x?y=1").unwrap()));
        assert!(rule.matches(&Url::parse("https://api.example.com:443/").unwrap()));
        assert!(!rule.matches(&Url::parse("http://api.example.com/").unwrap()));
        assert!(!rule.matches(&Url::parse("https://api.example.com:8443/").unwrap()));
        assert!(!rule.matches(&Url::parse("https://evil.example.com/").unwrap()));
    }

    #[test]
    fn refuses_malformed_overrides() {
        for text in [
            "https://a.example",
            "nope=https://b",
            "https://a/path=https://b",
            "https://a=b",
        ] {
            assert!(text.parse::<EgressOverride>().is_err(), "{text}");
        }
    }

    #[test]
    fn reads_toml_over_defaults_and_refuses_unknown_keys() {
        let config: Config = toml::from_str(
            "listen = \"127.0.0.1:9000\"\n[egress]\noverrides = [\"https://a.example=https://127.0.0.1:1\"]\n",
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.egress.overrides.len(), 1);
        assert_eq!(config.call_timeout_ms, 10_000);

        assert!(toml::from_str::<Config>("lisen = \"127.0.0.1:9000\"").is_err());
    }
}
