//! A plugin that exists to be driven by the OAuth end-to-end tests (`tests/e2e/oauth_flow.rs`):
//! its provider is the loopback OpenID provider of `tests/oauth-server`, reached through egress
//! overrides of `auth.oidc.test` and `api.oidc.test`.

mod tools;

use keyhole_sdk::Plugin;
use keyhole_sdk::oauth::OAuth;

fn plugin() -> Plugin {
    let provider = OAuth::new(
        "https://auth.oidc.test/auth",
        "https://auth.oidc.test/token",
    )
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
    .tool::<tools::Me>()
    .tool::<tools::Public>()
}

keyhole_sdk::export_plugin!(plugin);
