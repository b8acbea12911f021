//! A plugin that implements the world but whose self-description breaks the published schema:
//! its id has capitals and spaces. The host must refuse it at upload and install nothing.

use keyhole_sdk::{Plugin, Tool, ToolError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// The id the host must refuse: ids are `[a-z0-9][a-z0-9-]{0,30}`.
const INVALID_ID: &str = "Not A Valid Id";

/// The arguments of `noop`: none.
#[derive(Deserialize, JsonSchema)]
struct Noop {}

impl Tool for Noop {
    const NAME: &'static str = "noop";
    const DESCRIPTION: &'static str = "Does nothing.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        Ok(json!({}))
    }
}

fn plugin() -> Plugin {
    Plugin::new(
        INVALID_ID,
        "Bad description",
        env!("CARGO_PKG_VERSION"),
        "Describes itself with an invalid id.",
    )
    .tool::<Noop>()
}

keyhole_sdk::export_plugin!(plugin);
