use std::fmt;

use crate::bindings::exports::keyhole::plugin::tools::ToolError as WitToolError;

/// Why a tool call failed, in words a language model can act on.
///
/// The host passes the kind and the message to the chat backend, which shows them to the model.
/// Never put a secret or a token in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The arguments made no sense to the tool; the message says what to change.
    InvalidArguments(String),
    /// A service the tool depends on failed or answered with an error.
    Upstream(String),
    /// Any other failure.
    Other(String),
}

impl ToolError {
    /// The arguments made no sense to the tool, for example an unknown city.
    pub fn invalid_arguments(message: impl Into<String>) -> Self {
        Self::InvalidArguments(message.into())
    }

    /// A service the tool depends on failed.
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::Upstream(message.into())
    }

    /// Any other failure.
    pub fn other(message: impl Into<String>) -> Self {
        Self::Other(message.into())
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArguments(message) => write!(f, "invalid arguments: {message}"),
            Self::Upstream(message) => write!(f, "upstream failure: {message}"),
            Self::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ToolError {}

impl From<ToolError> for WitToolError {
    fn from(error: ToolError) -> Self {
        match error {
            ToolError::InvalidArguments(message) => Self::InvalidArguments(message),
            ToolError::Upstream(message) => Self::Upstream(message),
            ToolError::Other(message) => Self::Other(message),
        }
    }
}
