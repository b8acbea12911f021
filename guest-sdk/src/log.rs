//! Log messages into the host's log, tagged with the plugin, the call and the level.
//!
//! Each message is truncated to 4 KiB and a call's total log output is capped by the host.
//! Never log tokens, secrets or the user's data.
//!
//! ```no_run
//! keyhole_sdk::log::info(format!("fetched {} events", 3));
//! ```

use crate::bindings::keyhole::plugin::host::{self, LogLevel};

/// Logs at trace level.
pub fn trace(message: impl AsRef<str>) {
    host::log(LogLevel::Trace, message.as_ref());
}

/// Logs at debug level.
pub fn debug(message: impl AsRef<str>) {
    host::log(LogLevel::Debug, message.as_ref());
}

/// Logs at info level.
pub fn info(message: impl AsRef<str>) {
    host::log(LogLevel::Info, message.as_ref());
}

/// Logs at warn level.
pub fn warn(message: impl AsRef<str>) {
    host::log(LogLevel::Warn, message.as_ref());
}

/// Logs at error level.
pub fn error(message: impl AsRef<str>) {
    host::log(LogLevel::Error, message.as_ref());
}
