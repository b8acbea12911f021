//! `keyhole:plugin/host`: logging and settings for a running plugin.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::CallState;
use super::bindings::keyhole::plugin::host::{Host, LogLevel};

/// Longest single log message; longer ones are cut.
const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// The host API's per-call state.
pub(crate) struct HostApi {
    plugin: Arc<str>,
    call: u64,
    settings: Arc<BTreeMap<String, String>>,
    /// Total log output of the call; messages past it are dropped, with one notice.
    max_log_bytes: usize,
    logged: usize,
}

impl HostApi {
    pub(crate) fn new(
        plugin: Arc<str>,
        call: u64,
        settings: Arc<BTreeMap<String, String>>,
        max_log_bytes: usize,
    ) -> Self {
        Self {
            plugin,
            call,
            settings,
            max_log_bytes,
            logged: 0,
        }
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        if self.logged >= self.max_log_bytes {
            return;
        }
        let message = truncate(
            message,
            MAX_MESSAGE_BYTES.min(self.max_log_bytes - self.logged),
        );
        self.logged += message.len();
        // A plugin must not forge log lines or colour the operator's terminal.
        let message = escape_controls(message);

        let (plugin, call) = (&*self.plugin, self.call);
        match level {
            LogLevel::Trace => tracing::trace!(target: "plugin", plugin, call, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", plugin, call, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugin", plugin, call, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", plugin, call, "{message}"),
            LogLevel::Error => tracing::error!(target: "plugin", plugin, call, "{message}"),
        }
        if self.logged >= self.max_log_bytes {
            tracing::warn!(
                plugin,
                call,
                "the plugin's log output reached its cap; the rest is dropped"
            );
        }
    }
}

/// Escapes control characters (newlines, escape sequences) so that a message stays one line.
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
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
    fn escapes_control_characters() {
        assert_eq!(
            escape_controls("a\nINFO forged\u{1b}[31m"),
            "a\\nINFO forged\\u{1b}[31m"
        );
        assert_eq!(escape_controls("plain"), "plain");
    }

    #[test]
    fn truncates_at_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
