//! A plugin that implements Keyhole's world but also imports `acme:vault/keys`, an interface
//! outside it. The host must refuse it at upload, naming that import.

use keyhole_sdk::{Plugin, Tool, ToolError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

wit_bindgen::generate!({ path: "wit", world: "foreign" });

/// The arguments of `key`: none.
#[derive(Deserialize, JsonSchema)]
struct Key {}

impl Tool for Key {
    const NAME: &'static str = "key";
    const DESCRIPTION: &'static str = "Answers a key from the foreign vault.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        Ok(json!({ "key": acme::vault::keys::get() }))
    }
}

fn plugin() -> Plugin {
    Plugin::new(
        "foreign-import",
        "Foreign import",
        env!("CARGO_PKG_VERSION"),
        "Imports an interface Keyhole does not provide.",
    )
    .tool::<Key>()
}

keyhole_sdk::export_plugin!(plugin);
