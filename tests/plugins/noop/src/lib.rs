//! The plugin `keyhole-bench` measures: `noop` costs only the sandbox, `fetch` adds exactly one
//! outgoing request, so what the benchmark reports is the host's cost and not the plugin's.
//!
//! The id is a fixed-width placeholder, `noop-00`. The benchmark installs twenty copies of this
//! one build under `noop-00` to `noop-19` by rewriting those seven bytes in the `.wasm`, which is
//! faster than twenty builds and leaves the code of every copy the same.

use keyhole_sdk::{Plugin, Tool, ToolError, http};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// The plugin's id; `keyhole-bench` looks for exactly these bytes to make the copies.
const ID: &str = "noop-00";

/// The only URL `fetch` requests; the benchmark overrides its origin to a local upstream.
const UPSTREAM: &str = "https://upstream.bench.test/";

/// The arguments of `noop`: none.
#[derive(Deserialize, JsonSchema)]
struct Noop {}

impl Tool for Noop {
    const NAME: &'static str = "noop";
    const DESCRIPTION: &'static str = "Does nothing and answers an empty object.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        Ok(json!({}))
    }
}

/// The arguments of `fetch`: none.
#[derive(Deserialize, JsonSchema)]
struct Fetch {}

impl Tool for Fetch {
    const NAME: &'static str = "fetch";
    const DESCRIPTION: &'static str = "GETs the benchmark's upstream once and answers its status.";
    type Output = Value;

    fn run(self) -> Result<Value, ToolError> {
        let response = http::get(UPSTREAM).send()?;
        Ok(json!({ "status": response.status() }))
    }
}

fn plugin() -> Plugin {
    Plugin::new(
        ID,
        "No-op",
        env!("CARGO_PKG_VERSION"),
        "Does as little as a plugin can, for benchmarks.",
    )
    .host("upstream.bench.test")
    .tool::<Noop>()
    .tool::<Fetch>()
}

keyhole_sdk::export_plugin!(plugin);
