//! Running one tool call for a chat backend: checks, the call, the log line.

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::description::check_arguments;
use crate::egress::{Credentials, HostPolicy, Refresher};
use crate::oauth::{ConnectionRef, OAuthError};
use crate::registry::InstalledPlugin;
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

        // Both caps answer at once rather than queue: a chat backend can retry or tell the user,
        // and a flood never piles up waiting calls in the server.
        let busy = |message: &str| {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message)
                .with("retry_after_ms", 1000)
        };
        let _permit = self
            .calls
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy("too many tool calls are running; retry shortly"))?;
        let _plugin_permit = plugin
            .calls
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy("too many calls of this plugin are running; retry shortly"))?;

        let requires_authorization = plugin
            .description()
            .tool(call.tool)
            .is_some_and(|tool| tool.requires_authorization);
        let credentials = self
            .credentials(&plugin, call, requires_authorization)
            .await?;

        let arguments = call.arguments.to_string();
        let result = self
            .runtime
            .call(
                &plugin.pre,
                &plugin.context,
                credentials.clone(),
                call.tool,
                &arguments,
            )
            .await;
        if requires_authorization && credentials.authorization_lost() {
            return Err(self.authorization_required(&who(call))?);
        }
        let output = result.map_err(|err| call_error(call, err))?;
        if output.len() as u64 > plugin.context.limits.max_result_bytes {
            tracing::warn!(
                plugin = call.plugin,
                tool = call.tool,
                bytes = output.len(),
                "the result is over the size limit"
            );
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "plugin_failed",
                "the tool's result is over the size limit",
            ));
        }
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

impl AppState {
    /// The user's token and the plugin's secrets for egress. A tool that requires authorization
    /// runs only with a token; others get one if the user happens to have it.
    async fn credentials(
        &self,
        plugin: &InstalledPlugin,
        call: &Invocation<'_>,
        requires_authorization: bool,
    ) -> Result<Arc<Credentials>, ApiError> {
        let secrets = plugin.secret_settings();
        let Some(spec) = plugin.oauth.clone() else {
            return Ok(Arc::new(Credentials::new(
                HostPolicy::default(),
                None,
                None,
                secrets,
            )));
        };
        let api_hosts = plugin.api_hosts.clone();
        let client = self
            .oauth
            .client(call.plugin)
            .map_err(ApiError::internal)?
            .filter(|client| client.is_active(&spec));
        let Some(client) = client else {
            if requires_authorization {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "oauth_not_configured",
                    "an admin must set (or confirm) the plugin's OAuth client first",
                ));
            }
            return Ok(Arc::new(Credentials::new(api_hosts, None, None, secrets)));
        };

        let who = who(call);
        let token = match self.oauth.access_token(&who, &spec, &client).await {
            Ok(token) => token,
            Err(err) if !requires_authorization => {
                tracing::warn!(plugin = call.plugin, error = %err, "the user's token is unavailable; calling without it");
                None
            }
            Err(err) => return Err(oauth_unavailable(call, &err)),
        };
        if token.is_none() && requires_authorization {
            return Err(self.authorization_required(&who)?);
        }
        let refresher = Refresher {
            oauth: self.oauth.clone(),
            who,
            spec,
            client,
        };
        Ok(Arc::new(Credentials::new(
            api_hosts,
            token,
            Some(refresher),
            secrets,
        )))
    }

    /// 403 `authorization_required` with a fresh link for the user.
    fn authorization_required(&self, who: &ConnectionRef) -> Result<ApiError, ApiError> {
        let link = self
            .oauth
            .authorization_link(who)
            .map_err(ApiError::internal)?;
        Ok(ApiError::new(
            StatusCode::FORBIDDEN,
            "authorization_required",
            "the user must connect their account first, by opening `authorize_url` in a browser",
        )
        .with("authorize_url", link))
    }
}

fn who(call: &Invocation<'_>) -> ConnectionRef {
    ConnectionRef {
        plugin: call.plugin.to_owned(),
        tenant: call.tenant.to_owned(),
        user: call.user.to_owned(),
    }
}

fn oauth_unavailable(call: &Invocation<'_>, err: &OAuthError) -> ApiError {
    tracing::warn!(plugin = call.plugin, error = %err, "cannot get the user's token");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "oauth_unavailable",
        "the plugin's OAuth provider could not renew the user's token; try again later",
    )
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
