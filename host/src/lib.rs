//! Keyhole runs AI-tool plugins, compiled to WebAssembly components, in a sandbox that lets them
//! act on a user's accounts without ever holding the user's credentials.
//!
//! Admins upload plugins and configure them over the admin API; chat backends list the tools and
//! invoke them for their users over the `/v1` API. Each call runs in a fresh instance; the only
//! way out of it is `wasi:http`, and every request passes through [`egress`], which enforces the
//! hosts the plugin declared.
//!
//! # Layout
//! - [`config`]: the typed configuration, from defaults, a TOML file, environment and flags.
//! - [`description`]: a plugin's self-description: parsing, validation, argument schemas.
//! - [`runtime`]: the wasmtime engine, compiling and caching components, running calls; one file
//!   per WIT interface the host implements (`runtime/host_api.rs` for `keyhole:plugin/host`).
//! - [`egress`]: the `wasi:http` hook and the shared HTTP client behind it.
//! - [`limits`]: what one call may spend, server-wide and per plugin.
//! - [`oauth`]: OAuth 2.0 for plugins: the admin's client, the user's authorization flow, tokens
//!   sealed in the store and refreshed single-flight.
//! - [`vault`]: encryption at rest of tokens and secrets.
//! - [`registry`]: the installed plugins, loaded and ready to instantiate, cached in memory.
//! - [`store`]: durable state behind the [`store::Store`] trait, with a sled implementation.
//! - [`auth`]: the admin token and the chat backends' API keys.
//! - [`api`]: the HTTP API (axum).
//! - [`client`]: the command-line client that talks to a running server.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod description;
pub mod egress;
pub mod limits;
pub mod oauth;
pub mod registry;
pub mod runtime;
pub mod store;
mod time;
pub mod vault;
