//! Running one tool call for a chat backend: checks, the call, the log line.

use std::time::Instant;

use axum::http::StatusCode;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::description::check_arguments;
use crate::runtime::{CallError, ToolError};

/// Longest accepted user name, in bytes.
const MAX_USER_BYTES: usize = 256;

/// One tool call, as both `/v1` routes receive it.
pub(super) struct Invocation<'a> {
    pub tenant: &'a str,
    pub user: &'a str,
    pub plugin: &'a str,
    pub tool: &'a str,
    pub arguments: Value,
}

impl AppState {
    /// Runs a tool call and logs one line about it: who, what, how long, how it ended. Never
    /// the arguments or the output.
    pub(super) async fn invoke(&self, call: Invocation<'_>) -> Result<Value, ApiError> {
        let started = Instant::now();
        let result = self.run_invocation(&call).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) => err.code,
        };
        tracing::info!(
            plugin = call.plugin,
            tool = call.tool,
            user = call.user,
            tenant = call.tenant,
            elapsed_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            outcome,
            "tool call"
        );
        result
    }

    async fn run_invocation(&self, call: &Invocation<'_>) -> Result<Value, ApiError> {
        check_user(call.user)?;
        let plugin = self.registry.get(call.plugin).ok_or_else(|| {
            ApiError::not_found(format!(
                "no plugin is installed with the id `{}`",
                call.plugin
            ))
        })?;
        let validator = plugin.validators.get(call.tool).ok_or_else(|| {
            ApiError::not_found(format!(
                "the plugin `{}` has no tool named `{}`",
                call.plugin, call.tool
            ))
        })?;

        if let Err(problems) = check_arguments(validator, &call.arguments) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_arguments",
                "the arguments do not match the tool's schema",
            )
            .with("errors", serde_json::to_value(problems).unwrap_or_default()));
        }

        let missing = plugin.missing_settings();
        if !missing.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "plugin_not_configured",
                "the plugin needs settings that an admin has not set",
            )
            .with("missing", missing));
        }

        let _permit = self.calls.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                "too many tool calls are running; retry shortly",
            )
        })?;

        let arguments = call.arguments.to_string();
        let output = self
            .runtime
            .call(&plugin.pre, &plugin.context, call.tool, &arguments)
            .await
            .map_err(|err| call_error(call, err))?;
        serde_json::from_str(&output).map_err(|_| {
            tracing::warn!(
                plugin = call.plugin,
                tool = call.tool,
                "the plugin answered output that is not JSON"
            );
            plugin_failed()
        })
    }
}

fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`user` must be 1 to {MAX_USER_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn plugin_failed() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "plugin_failed",
        "the plugin failed while running the tool",
    )
}

fn call_error(call: &Invocation<'_>, err: CallError) -> ApiError {
    match err {
        CallError::Tool(error) => {
            let (kind, message) = match error {
                ToolError::InvalidArguments(message) => ("invalid_arguments", message),
                ToolError::Upstream(message) => ("upstream", message),
                ToolError::Other(message) => ("other", message),
            };
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "tool_error", message)
                .with("kind", kind)
        }
        CallError::Failed(cause) => {
            tracing::warn!(plugin = call.plugin, tool = call.tool, cause = %cause, "plugin failed");
            plugin_failed()
        }
        CallError::Deadline => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            "the tool call ran past its deadline",
        ),
    }
}
