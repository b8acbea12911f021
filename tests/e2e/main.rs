//! End-to-end tests: the real `keyhole` binary, real plugins built from source, and a local
//! HTTPS upstream standing in for the services the plugins call.
//!
//! Every test starts its own server on a free loopback port with its own data directory, so the
//! tests run in parallel and share nothing but the built plugins.
//!
//! # Layout
//! - [`harness`]: the server process, the upstream, the plugin builds.
//! - [`api`]: the admin and chat-backend API with working plugins.
//! - [`auth`]: admin token, API keys and tenants.
//! - [`bad_input`]: what the server refuses, and how.
//! - [`egress`]: which requests leave the sandbox.
//! - [`oauth_examples`]: the OAuth example plugins through the whole authorization flow.
//! - [`oauth_flow`]: the OAuth flow against a real authorization server, edge cases included.
//! - [`hostile`]: hostile plugins, each contained, the server still serving.
//! - [`limits`]: per-plugin limits set by the admin, and scratch space.
//! - [`durability`]: what survives a restart or a crash.
//! - [`cli`]: the client commands of the binary.

mod api;
mod auth;
mod bad_input;
mod cli;
mod durability;
mod egress;
mod harness;
mod hostile;
mod limits;
mod oauth_examples;
mod oauth_flow;
