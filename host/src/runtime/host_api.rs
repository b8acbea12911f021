//! `keyhole:plugin/host`: logging and settings for a running plugin.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::CallState;
use super::bindings::keyhole::plugin::host::{Host, LogLevel};

/// Longest single log message; longer ones are cut.
const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// Total log output of one call; messages past it are dropped, with one notice.
const MAX_CALL_LOG_BYTES: usize = 64 * 1024;

/// The host API's per-call state.
pub(crate) struct HostApi {
    plugin: Arc<str>,
    call: u64,
    settings: Arc<BTreeMap<String, String>>,
    logged: usize,
}

impl HostApi {
    pub(crate) fn new(
        plugin: Arc<str>,
        call: u64,
        settings: Arc<BTreeMap<String, String>>,
    ) -> Self {
        Self {
            plugin,
            call,
            settings,
            logged: 0,
        }
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        if self.logged >= MAX_CALL_LOG_BYTES {
            return;
        }
        let message = truncate(
            message,
            MAX_MESSAGE_BYTES.min(MAX_CALL_LOG_BYTES - self.logged),
        );
        self.logged += message.len();

        let (plugin, call) = (&*self.plugin, self.call);
        match level {
            LogLevel::Trace => tracing::trace!(target: "plugin", plugin, call, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", plugin, call, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugin", plugin, call, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", plugin, call, "{message}"),
            LogLevel::Error => tracing::error!(target: "plugin", plugin, call, "{message}"),
        }
        if self.logged >= MAX_CALL_LOG_BYTES {
            tracing::warn!(
                plugin,
                call,
                "the plugin's log output reached its cap; the rest is dropped"
            );
        }
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Host for CallState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.host.log(level, &message);
    }

    fn get_setting(&mut self, name: String) -> Option<String> {
        self.host.settings.get(&name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_at_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
