//! The binary's client commands, run against a live server as an operator would.
//!
//! They find the server in `--server` or `KEYHOLE_URL`, the admin token in `KEYHOLE_ADMIN_TOKEN`
//! and the API key in `KEYHOLE_API_KEY`; they print the API's JSON answer on stdout (`plugin
//! settings` prints the plugin's settings), and on failure exit non-zero with the error on stderr.

use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::harness::{
    ApiKey, KEYHOLE, Keyhole, ReplyExt, guests, install_weather, remove_keyhole_env,
};

/// `keyhole ARGS` for the server under test, with nothing of the developer's environment.
fn keyhole_command(keyhole: &Keyhole, args: &[&str]) -> Command {
    let mut command = Command::new(KEYHOLE);
    remove_keyhole_env(&mut command);
    command.args(args).env("KEYHOLE_URL", keyhole.base_url());
    command
}

/// Runs a command with the admin token.
async fn as_admin(keyhole: &Keyhole, args: &[&str]) -> Result<Output> {
    let mut command = keyhole_command(keyhole, args);
    command.env("KEYHOLE_ADMIN_TOKEN", keyhole.admin_token());
    Ok(command.output().await?)
}

/// Runs a command with an API key.
async fn with_api_key(keyhole: &Keyhole, key: &ApiKey, args: &[&str]) -> Result<Output> {
    let mut command = keyhole_command(keyhole, args);
    command.env("KEYHOLE_API_KEY", &key.secret);
    Ok(command.output().await?)
}

/// The JSON a successful command printed.
fn printed_json(output: &Output) -> Result<Value> {
    ensure!(
        output.status.success(),
        "the command failed with {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "stdout is not JSON: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str().context("the test needs UTF-8 paths")
}

#[tokio::test]
async fn cli_installs_and_lists_plugins() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    let wasm = utf8(guests().await?.weather_path())?;

    let installed = as_admin(&keyhole, &["plugin", "install", wasm]).await?;
    let listed = as_admin(&keyhole, &["plugin", "list"]).await?;

    assert_eq!(printed_json(&installed)?["id"], "weather");
    let plugins = printed_json(&listed)?["plugins"].take();
    assert_eq!(plugins.as_array().map(Vec::len), Some(1), "{plugins}");
    assert_eq!(plugins[0]["id"], "weather");
    Ok(())
}

#[tokio::test]
async fn cli_changes_settings_one_at_a_time() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    let wasm = utf8(guests().await?.probe_path())?;
    printed_json(&as_admin(&keyhole, &["plugin", "install", wasm]).await?)?;

    // A value is everything after the first `=`.
    let set = [
        "plugin",
        "settings",
        "probe",
        "greeting=hello there",
        "mood=a=b",
    ];
    let settings = printed_json(&as_admin(&keyhole, &set).await?)?;
    assert_eq!(setting_value(&settings, "greeting"), json!("hello there"));
    assert_eq!(setting_value(&settings, "mood"), json!("a=b"));

    // Settings not named are kept; `NAME=` unsets one.
    let unset = ["plugin", "settings", "probe", "mood="];
    let settings = printed_json(&as_admin(&keyhole, &unset).await?)?;
    assert_eq!(setting_value(&settings, "greeting"), json!("hello there"));
    assert_eq!(setting_value(&settings, "mood"), Value::Null);

    let key = keyhole.create_api_key("acme").await?;
    let echoed = keyhole.invoke(&key, "probe", "echo", json!({"text": "x"}));
    let output = echoed.await?.expect(200)?["output"].take();
    assert_eq!(
        output,
        json!({"text": "x", "greeting": "hello there", "mood": null})
    );
    Ok(())
}

/// The value of one setting in the list `keyhole plugin settings` prints.
fn setting_value(settings: &Value, name: &str) -> Value {
    let found = settings
        .as_array()
        .into_iter()
        .flatten()
        .find(|setting| setting["name"] == name);
    match found {
        Some(setting) => setting["value"].clone(),
        None => panic!("no setting `{name}` in {settings}"),
    }
}

#[tokio::test]
async fn cli_creates_an_api_key_that_reaches_the_tools() -> Result<()> {
    let keyhole = Keyhole::start().await?;

    let args = ["api-key", "create", "--tenant", "acme"];
    let created = printed_json(&as_admin(&keyhole, &args).await?)?;

    assert_eq!(created["tenant"], "acme");
    let secret = created["api_key"].as_str().context("the key is printed")?;
    let tools = keyhole
        .request(Method::GET, "/v1/tools")
        .bearer_auth(secret);
    tools.reply().await?.expect(200)?;
    Ok(())
}

#[tokio::test]
async fn cli_invokes_a_tool_with_an_api_key() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let args = ["invoke", "weather", "current_weather", "--user", "alice"];
    let args = [&args[..], &["--args", r#"{"city":"Berlin"}"#]].concat();
    let invoked = printed_json(&with_api_key(&keyhole, &key, &args).await?)?;

    assert_eq!(invoked["output"]["place"], "Berlin");
    assert_eq!(invoked["output"]["current"]["temperature_2m"], 3.4);
    Ok(())
}

#[tokio::test]
async fn cli_finds_the_server_from_its_flag() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;

    let base_url = keyhole.base_url();
    let mut command = keyhole_command(&keyhole, &["plugin", "list", "--server", &base_url]);
    let output = command
        .env_remove("KEYHOLE_URL")
        .env("KEYHOLE_ADMIN_TOKEN", keyhole.admin_token())
        .output()
        .await?;

    assert_eq!(printed_json(&output)?["plugins"][0]["id"], "weather");
    Ok(())
}

#[tokio::test]
async fn cli_failure_exits_non_zero_with_the_error_on_stderr() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let unknown_tool = [
        "invoke", "weather", "nope", "--user", "alice", "--args", "{}",
    ];
    let mut wrong_token = keyhole_command(&keyhole, &["plugin", "list"]);
    wrong_token.env("KEYHOLE_ADMIN_TOKEN", "not-the-token");

    for output in [
        with_api_key(&keyhole, &key, &unknown_tool).await?,
        wrong_token.output().await?,
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "the command succeeded; stderr: {stderr}"
        );
        assert!(
            !stderr.trim().is_empty(),
            "the command failed without saying why"
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.is_empty(), "a failed command printed {stdout}");
    }
    Ok(())
}
