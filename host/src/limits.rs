//! What one call of a plugin may spend: time, memory, output, outgoing requests, log lines,
//! and how many of its calls may run at once.
//!
//! The server's configuration sets the defaults ([`CallLimits`]); an admin may override any of
//! them for one plugin ([`LimitOverrides`], `PUT /admin/plugins/{id}/limits`). An override may
//! lower a limit or raise it, except where the server sized a shared resource for its own value:
//! a plugin's memory stays within the instance pool's slots, and its concurrency within the
//! server-wide cap.

use serde::{Deserialize, Serialize};

/// The limits one call runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CallLimits {
    /// Wall-clock deadline of the whole call, in milliseconds.
    pub call_timeout_ms: u64,
    /// Largest linear memory (and table, in bytes of elements) an instance may grow to.
    pub max_memory_bytes: u64,
    /// Largest tool result, in bytes of JSON.
    pub max_result_bytes: u64,
    /// Bytes of log messages one call may write; later messages are dropped.
    pub max_log_bytes: u64,
    /// Calls of the plugin running at once; more are answered `busy`.
    pub max_concurrent_calls: u32,
    /// Deadline of one outgoing request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Largest body of one outgoing request or of its response, in bytes.
    pub max_body_bytes: u64,
    /// Outgoing requests one call may make.
    pub max_requests_per_call: u32,
}

/// An admin's overrides for one plugin; a field left out takes the server's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// See [`CallLimits::call_timeout_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout_ms: Option<u64>,
    /// See [`CallLimits::max_memory_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    /// See [`CallLimits::max_result_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_result_bytes: Option<u64>,
    /// See [`CallLimits::max_log_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_log_bytes: Option<u64>,
    /// See [`CallLimits::max_concurrent_calls`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_calls: Option<u32>,
    /// See [`CallLimits::request_timeout_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// See [`CallLimits::max_body_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// See [`CallLimits::max_requests_per_call`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_call: Option<u32>,
}

/// An override the server cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Zero would make every call fail.
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    /// Over what the server sized a shared resource for, or over a sane bound.
    #[error("`{name}` may be at most {max} on this server")]
    TooHigh {
        /// The limit.
        name: &'static str,
        /// Its ceiling.
        max: u64,
    },
}

/// Bounds that keep an override sane even where no shared resource caps it.
const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;
const MAX_BYTES: u64 = 1 << 30;
const MAX_REQUESTS: u64 = 10_000;

/// The server's limits: the defaults of every call, and the server-wide cap on calls at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// What a call of a plugin without overrides runs under.
    pub defaults: CallLimits,
    /// Calls running at once, server-wide; the instance pool is sized for it.
    pub max_concurrent_calls: u32,
}

impl ServerLimits {
    /// A plugin's limits: the defaults with `overrides` applied, each checked against its
    /// ceiling.
    pub fn for_plugin(&self, overrides: &LimitOverrides) -> Result<CallLimits, LimitError> {
        let pick = |name: &'static str, value: Option<u64>, default: u64, max: u64| match value {
            None => Ok(default),
            Some(0) => Err(LimitError::Zero(name)),
            Some(value) if value > max => Err(LimitError::TooHigh { name, max }),
            Some(value) => Ok(value),
        };
        let (o, d) = (overrides, &self.defaults);
        Ok(CallLimits {
            call_timeout_ms: pick(
                "call_timeout_ms",
                o.call_timeout_ms,
                d.call_timeout_ms,
                MAX_TIMEOUT_MS,
            )?,
            // The pool's memory slots are as large as the server's limit, and no larger.
            max_memory_bytes: pick(
                "max_memory_bytes",
                o.max_memory_bytes,
                d.max_memory_bytes,
                d.max_memory_bytes,
            )?,
            max_result_bytes: pick(
                "max_result_bytes",
                o.max_result_bytes,
                d.max_result_bytes,
                MAX_BYTES,
            )?,
            max_log_bytes: pick("max_log_bytes", o.max_log_bytes, d.max_log_bytes, MAX_BYTES)?,
            // Only as many as the server-wide cap, which sized the instance pool.
            max_concurrent_calls: pick(
                "max_concurrent_calls",
                o.max_concurrent_calls.map(u64::from),
                u64::from(d.max_concurrent_calls),
                u64::from(self.max_concurrent_calls),
            )? as u32,
            request_timeout_ms: pick(
                "request_timeout_ms",
                o.request_timeout_ms,
                d.request_timeout_ms,
                MAX_TIMEOUT_MS,
            )?,
            max_body_bytes: pick(
                "max_body_bytes",
                o.max_body_bytes,
                d.max_body_bytes,
                MAX_BYTES,
            )?,
            max_requests_per_call: pick(
                "max_requests_per_call",
                o.max_requests_per_call.map(u64::from),
                u64::from(d.max_requests_per_call),
                MAX_REQUESTS,
            )? as u32,
        })
    }
}

impl CallLimits {
    /// The call's deadline.
    pub fn call_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.call_timeout_ms)
    }

    /// One outgoing request's deadline.
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }
}

/// Converts a byte count to `usize`, saturating on 32-bit hosts.
pub(crate) fn bytes(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerLimits {
        ServerLimits {
            defaults: defaults(),
            max_concurrent_calls: 64,
        }
    }

    fn defaults() -> CallLimits {
        CallLimits {
            call_timeout_ms: 10_000,
            max_memory_bytes: 64 << 20,
            max_result_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
            max_concurrent_calls: 16,
            request_timeout_ms: 10_000,
            max_body_bytes: 10 << 20,
            max_requests_per_call: 64,
        }
    }

    #[test]
    fn no_overrides_keeps_the_server_limits() {
        assert_eq!(
            server().for_plugin(&LimitOverrides::default()),
            Ok(defaults())
        );
    }

    #[test]
    fn overrides_lower_and_raise_limits_within_their_ceilings() {
        let overrides = LimitOverrides {
            call_timeout_ms: Some(60_000),
            max_memory_bytes: Some(16 << 20),
            max_concurrent_calls: Some(40),
            max_requests_per_call: Some(500),
            ..LimitOverrides::default()
        };
        let limits = server().for_plugin(&overrides).unwrap();
        assert_eq!(limits.call_timeout_ms, 60_000);
        assert_eq!(limits.max_memory_bytes, 16 << 20);
        assert_eq!(limits.max_concurrent_calls, 40);
        assert_eq!(limits.max_requests_per_call, 500);
        assert_eq!(limits.max_result_bytes, defaults().max_result_bytes);
    }

    #[test]
    fn refuses_zero_and_what_the_server_did_not_size_for() {
        let memory = LimitOverrides {
            max_memory_bytes: Some(128 << 20),
            ..LimitOverrides::default()
        };
        assert_eq!(
            server().for_plugin(&memory),
            Err(LimitError::TooHigh {
                name: "max_memory_bytes",
                max: 64 << 20
            })
        );
        let calls = LimitOverrides {
            max_concurrent_calls: Some(65),
            ..LimitOverrides::default()
        };
        assert!(server().for_plugin(&calls).is_err());
        let zero = LimitOverrides {
            call_timeout_ms: Some(0),
            ..LimitOverrides::default()
        };
        assert_eq!(
            server().for_plugin(&zero),
            Err(LimitError::Zero("call_timeout_ms"))
        );
    }

    #[test]
    fn unknown_override_names_are_refused() {
        let parsed: Result<LimitOverrides, _> =
            serde_json::from_str(r#"{"call_timeout_ms": 5, "cpu": 1}"#);
        assert!(parsed.is_err());
    }
}
