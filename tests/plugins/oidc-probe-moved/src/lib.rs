//! `oidc-probe` as a new version whose provider moved its token endpoint to `auth2.oidc.test`:
//! the same id and tools, so that uploading it replaces `oidc-probe` and the tests can check
//! what the host does with the approved client and the users' tokens.

#[path = "../../oidc-probe/src/tools.rs"]
mod tools;

use keyhole_sdk::Plugin;
use keyhole_sdk::oauth::OAuth;

fn plugin() -> Plugin {
    let provider = OAuth::new(
        "https://auth.oidc.test/auth",
        "https://auth2.oidc.test/token",
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
