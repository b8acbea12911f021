//! What the tests drive: the `keyhole` binary ([`server`]), the HTTPS upstream its plugins reach
//! ([`upstream`]) with the OAuth providers it plays ([`providers`]), a real OAuth authorization
//! server and a browser that goes through its flow ([`oauth_server`]), and the plugins themselves,
//! built from source ([`guests`]).

mod guests;
mod oauth_server;
mod providers;
mod server;
mod upstream;

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

pub(crate) use guests::{Guests, guests};
pub(crate) use oauth_server::{OAuthServer, follow_authorization, open_link};
pub(crate) use providers::{
    GITHUB_ACCESS_TOKEN, GITHUB_REPOSITORY, GOOGLE_ACCESS_TOKEN, GOOGLE_REFRESH_TOKEN,
    SLACK_UNKNOWN_CHANNEL, SLACK_USER_TOKEN,
};
pub(crate) use server::{ApiKey, KEYHOLE, Keyhole, Reply, ReplyExt, remove_keyhole_env};

/// The value the tests give the probe's required `greeting` setting.
pub(crate) const GREETING: &str = "hello from the tests";

/// Uploads the weather example.
pub(crate) async fn install_weather(keyhole: &Keyhole) -> Result<()> {
    let wasm = guests().await?.weather()?;
    keyhole.upload(wasm).await?.expect(201)?;
    Ok(())
}

/// Uploads the probe without setting anything: its tools refuse to run until `greeting` is set.
pub(crate) async fn upload_probe(keyhole: &Keyhole) -> Result<()> {
    let wasm = guests().await?.probe()?;
    keyhole.upload(wasm).await?.expect(201)?;
    Ok(())
}

/// Uploads the probe and sets its required setting, so that its tools can run.
pub(crate) async fn install_probe(keyhole: &Keyhole) -> Result<()> {
    upload_probe(keyhole).await?;
    let settings = json!({ "greeting": GREETING });
    keyhole.configure("probe", settings).await?.expect(200)?;
    Ok(())
}

/// Asks the weather example for the current weather in `city`.
pub(crate) async fn current_weather(keyhole: &Keyhole, key: &ApiKey, city: &str) -> Result<Reply> {
    let arguments = json!({ "city": city });
    keyhole
        .invoke(key, "weather", "current_weather", arguments)
        .await
}

/// Every file under `dir`, recursively.
pub(crate) fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(files_under(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// Whether `needle` occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Whether any file of a data directory holds `needle`, byte for byte.
pub(crate) fn data_dir_contains(dir: &Path, needle: &[u8]) -> Result<bool> {
    for file in files_under(dir)? {
        if contains(&std::fs::read(&file)?, needle) {
            return Ok(true);
        }
    }
    Ok(false)
}
