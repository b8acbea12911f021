//! Posts Slack messages as the user, with the user's own authorization (a Slack user token).
//!
//! The host runs Slack's OAuth v2 flow and adds the user's token to requests to `slack.com`; the
//! plugin never sees it.

use keyhole_sdk::oauth::OAuth;
use keyhole_sdk::{Plugin, Tool, ToolError, http};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// The arguments of `post_message`.
#[derive(Deserialize, JsonSchema)]
struct PostMessage {
    /// The channel: an id such as `C024BE91L`, or a name such as `#general`.
    channel: String,
    /// The message, in Slack's mrkdwn.
    text: String,
}

/// Slack's answer: HTTP 200 either way, with `ok` saying whether it worked.
#[derive(Deserialize)]
struct Posted {
    ok: bool,
    error: Option<String>,
    channel: Option<String>,
    ts: Option<String>,
}

impl Tool for PostMessage {
    const NAME: &'static str = "post_message";
    const DESCRIPTION: &'static str =
        "Posts a message to a Slack channel as the user; the user must be a member of it.";
    const REQUIRES_AUTHORIZATION: bool = true;
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let posted: Posted = http::post("https://slack.com/api/chat.postMessage")
            .json(&json!({ "channel": self.channel, "text": self.text }))
            .send()?
            .success()?
            .json()?;
        if posted.ok {
            return Ok(json!({ "channel": posted.channel, "ts": posted.ts }));
        }

        let error = posted.error.unwrap_or_default();
        Err(match error.as_str() {
            "channel_not_found" | "not_in_channel" | "is_archived" | "msg_too_long" => {
                ToolError::invalid_arguments(format!("Slack refused the message: {error}"))
            }
            _ => ToolError::upstream(format!("Slack answered `{error}`")),
        })
    }
}

fn plugin() -> Plugin {
    // Slack's v2 flow asks for a user token's scopes in `user_scope`, with no `scope` at all, and
    // answers that token under `authed_user`. Its `auth.revoke` is not RFC 7009, so none is set.
    let slack = OAuth::new(
        "https://slack.com/oauth/v2/authorize",
        "https://slack.com/api/oauth.v2.access",
    )
    .param("user_scope", "chat:write")
    .comma_separated_scopes()
    .client_secret_in_body()
    .token_path("/authed_user")
    .api_host("slack.com");

    Plugin::new(
        "slack",
        "Slack",
        env!("CARGO_PKG_VERSION"),
        "Posts messages to Slack as the user.",
    )
    .oauth(slack)
    .tool::<PostMessage>()
}

keyhole_sdk::export_plugin!(plugin);
