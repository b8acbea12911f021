//! A plugin that exists to be driven by the OAuth end-to-end tests (`tests/e2e/oauth_flow.rs`):
//! its provider is the loopback OpenID provider of `tests/oauth-server`, reached through egress
//! overrides of `auth.oidc.test` and `api.oidc.test`.

mod probe;

fn plugin() -> keyhole_sdk::Plugin {
    probe::plugin("https://auth.oidc.test/token")
}

keyhole_sdk::export_plugin!(plugin);
