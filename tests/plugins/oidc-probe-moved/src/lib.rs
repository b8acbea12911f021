//! `oidc-probe` as a new version whose provider moved its token endpoint to `auth2.oidc.test`:
//! the same id and tools, so that uploading it replaces `oidc-probe` and the tests can check
//! what the host does with the approved client and the users' tokens.

#[path = "../../oidc-probe/src/probe.rs"]
mod probe;

fn plugin() -> keyhole_sdk::Plugin {
    probe::plugin("https://auth2.oidc.test/token")
}

keyhole_sdk::export_plugin!(plugin);
