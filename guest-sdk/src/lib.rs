//! Write [Keyhole](https://github.com/keyhole-dev/keyhole) plugins in Rust.
//!
//! A Keyhole plugin is a WebAssembly component that offers tools to a language model. The host
//! runs each call in a fresh sandbox, lets it reach only the hosts it declared, and attaches the
//! user's credentials to its requests, so the plugin itself never holds a secret.
//!
//! With this crate a plugin is a set of argument structs, one [`Tool`] impl each, a
//! [`Plugin`] description that lists them, and [`export_plugin!`]:
//!
//! ```no_run
//! use keyhole_sdk::{Plugin, Tool, ToolError, http};
//! use schemars::JsonSchema;
//! use serde::Deserialize;
//!
//! /// The arguments of `get_ip`; a doc comment on a field becomes its description in the schema.
//! #[derive(Deserialize, JsonSchema)]
//! struct GetIp {
//!     /// Whether to answer the IPv6 address instead of the IPv4 one.
//!     #[serde(default)]
//!     ipv6: bool,
//! }
//!
//! impl Tool for GetIp {
//!     const NAME: &'static str = "get_ip";
//!     const DESCRIPTION: &'static str = "The public IP address the plugin's requests come from.";
//!     type Output = serde_json::Value;
//!
//!     fn run(self) -> Result<Self::Output, ToolError> {
//!         let host = if self.ipv6 { "api6.ipify.org" } else { "api.ipify.org" };
//!         Ok(http::get(&format!("https://{host}?format=json")).send()?.success()?.json()?)
//!     }
//! }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new("my-ip", "My IP", env!("CARGO_PKG_VERSION"), "Looks up the public IP address.")
//!         .host("api.ipify.org")
//!         .host("api6.ipify.org")
//!         .tool::<GetIp>()
//! }
//!
//! keyhole_sdk::export_plugin!(plugin);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (the crate type must be
//! `cdylib`) and upload `target/wasm32-wasip2/release/<name>.wasm` to the server.
//!
//! # Layout
//! - [`plugin`]: the self-description and the dispatch of calls to tools.
//! - [`error`]: [`ToolError`], the typed failure a tool returns.
//! - [`http`]: a blocking HTTP client over `wasi:http`, the plugin's only way out.
//! - [`log`] and [`setting`]: the host's logging and the admin's settings.
//! - [`oauth`]: declaring an OAuth 2.0 provider, and the placeholders the host fills in.

mod error;
pub mod http;
pub mod log;
pub mod oauth;
mod plugin;
mod settings;

pub use error::ToolError;
pub use plugin::{Plugin, Setting, Tool};
pub use settings::{required_setting, setting};

/// Generated bindings of the `keyhole:plugin` world. Not part of the API: use the wrappers.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "keyhole:plugin/plugin",
        pub_export_macro: true,
        default_bindings_module: "::keyhole_sdk::bindings",
    });
}

/// Glue used by [`export_plugin!`]. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::exports::keyhole::plugin::tools::{Guest, ToolError as WitToolError};
    pub use crate::plugin::{call, describe};
}

/// Exports a plugin: `export_plugin!(f)` where `f` is a `fn() -> Plugin` that describes it.
///
/// The host calls the function once at upload to read the description, and again in each call to
/// find the tool; keep it cheap and free of side effects.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:path) => {
        const _: () = {
            struct KeyholeExport;

            impl $crate::__private::Guest for KeyholeExport {
                fn describe() -> ::std::string::String {
                    $crate::__private::describe(&$plugin())
                }

                fn call(
                    tool: ::std::string::String,
                    arguments: ::std::string::String,
                ) -> ::std::result::Result<::std::string::String, $crate::__private::WitToolError>
                {
                    $crate::__private::call(&$plugin(), &tool, &arguments)
                }
            }

    $crate::bindings::export!(KeyholeExport with_types_in $crate::bindings);
        };
    };
}
