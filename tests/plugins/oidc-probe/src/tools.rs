//! The tools of `oidc-probe`, shared with `oidc-probe-moved`, which differs only in its provider.

use keyhole_sdk::{Tool, ToolError, http};
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
