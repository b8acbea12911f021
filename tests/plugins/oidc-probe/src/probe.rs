//! `oidc-probe` itself, shared with `oidc-probe-moved`, which differs only in its token URL.

use keyhole_sdk::oauth::OAuth;
use keyhole_sdk::{Plugin, Tool, ToolError, http};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// The arguments of `me`: none.
#[derive(Deserialize, JsonSchema)]
pub(crate) struct Me {}

impl Tool for Me {
    const NAME: &'static str = "me";
    const DESCRIPTION: &'static str =
        "Asks the provider's API who the user is; answers the API's status and body.";
    const REQUIRES_AUTHORIZATION: bool = true;
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        // A refusal is an answer too: the tests read the status to see what the API made of the
        // token the host attached.
        let response = http::get("https://api.oidc.test/api/me").send()?;
        let text = response.text();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(json!({ "status": response.status(), "body": body }))
    }
}

/// The arguments of `public`: none.
#[derive(Deserialize, JsonSchema)]
pub(crate) struct Public {}

impl Tool for Public {
    const NAME: &'static str = "public";
    const DESCRIPTION: &'static str =
        "Reads a page of the provider that needs no token; answers its status.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let response = http::get("https://api.oidc.test/test/stats").send()?;
        Ok(json!({ "status": response.status() }))
    }
}

/// The probe, with its provider's token endpoint at `token_url`.
pub(crate) fn plugin(token_url: &'static str) -> Plugin {
    let provider = OAuth::new("https://auth.oidc.test/auth", token_url)
        .revocation_url("https://auth.oidc.test/token/revocation")
        .scope("openid")
        .scope("api:read")
        .api_host("api.oidc.test");

    Plugin::new(
        "oidc-probe",
        "OIDC probe",
        env!("CARGO_PKG_VERSION"),
        "Calls the test provider's API as the user.",
    )
    .oauth(provider)
    .tool::<Me>()
    .tool::<Public>()
}
