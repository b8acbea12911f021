//! Which requests leave the sandbox: only those to hosts the plugin declared, and only through
//! the host's own HTTP client.

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::harness::{ApiKey, GREETING, Keyhole, data_dir_contains, install_probe};

/// A server with the probe installed, and a key to call it with.
async fn start() -> Result<(Keyhole, ApiKey)> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;
    Ok((keyhole, key))
}

/// Runs the probe's `fetch` tool and returns its output.
async fn fetch(keyhole: &Keyhole, key: &ApiKey, url: &str) -> Result<Value> {
    let reply = keyhole
        .invoke(key, "probe", "fetch", json!({ "url": url }))
        .await?;
    Ok(reply.expect(200)?["output"].take())
}

#[tokio::test]
async fn undeclared_host_is_refused_inside_the_guest() -> Result<()> {
    let (keyhole, key) = start().await?;

    let output = fetch(&keyhole, &key, "https://evil.test/").await?;

    assert_eq!(output["denied"], true, "the guest saw {output}");
    assert!(output["error"].is_string(), "{output}");
    keyhole
        .logs()
        .wait_for_line("about the refused request", |line| {
            line.contains("HttpRequestDenied") || line.to_lowercase().contains("denied")
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn undeclared_host_is_refused_even_when_reachable() -> Result<()> {
    let (keyhole, key) = start().await?;
    let port = keyhole.upstream().port();

    // The server can reach both, the first through its override, but the probe declared neither.
    let overridden = fetch(&keyhole, &key, "https://api.open-meteo.com/v1/forecast").await?;
    let direct = fetch(&keyhole, &key, &format!("https://127.0.0.1:{port}/direct")).await?;

    assert_eq!(overridden["denied"], true, "the guest saw {overridden}");
    assert_eq!(direct["denied"], true, "the guest saw {direct}");
    let requests = keyhole.upstream().requests();
    assert!(
        requests.is_empty(),
        "refused requests reached the upstream: {requests:?}"
    );
    Ok(())
}

#[tokio::test]
async fn declared_host_is_reached_through_the_egress_override() -> Result<()> {
    let (keyhole, key) = start().await?;

    let output = fetch(&keyhole, &key, "https://allowed.test/x?page=2").await?;

    assert_eq!(output["status"], 200, "the guest saw {output}");
    let body: Value = serde_json::from_str(output["body"].as_str().context("body is text")?)?;
    assert_eq!(body, json!({"path": "/x"}));
    let seen = keyhole.upstream().request_to("/x")?;
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.query("page").as_deref(), Some("2"));
    Ok(())
}

#[tokio::test]
async fn wildcard_host_admits_its_subdomains() -> Result<()> {
    let (keyhole, key) = start().await?;

    let output = fetch(&keyhole, &key, "https://api.wild.test/w").await?;

    assert_eq!(output["status"], 200, "the guest saw {output}");
    keyhole.upstream().request_to("/w")?;
    Ok(())
}

#[tokio::test]
async fn plugin_requests_carry_no_keyhole_credentials() -> Result<()> {
    let (keyhole, key) = start().await?;

    let output = fetch(&keyhole, &key, "https://allowed.test/headers").await?;

    assert_eq!(output["status"], 200, "the guest saw {output}");
    let seen = keyhole.upstream().request_to("/headers")?;
    for (name, value) in &seen.headers {
        assert!(
            !value.contains(keyhole.admin_token()) && !value.contains(&key.secret),
            "the upstream received a Keyhole credential in `{name}`"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_secret_setting_reaches_only_its_host_and_never_the_plugin() -> Result<()> {
    let (keyhole, key) = start().await?;
    let secret = format!("sk-{}", hex::encode(rand::random::<[u8; 12]>()));
    let view = keyhole
        .configure("probe", json!({ "api_key": secret }))
        .await?
        .expect(200)?;
    let shown = view["settings"]
        .as_array()
        .and_then(|settings| settings.iter().find(|s| s["name"] == "api_key"))
        .context("the view lists the secret setting")?;
    assert_eq!(shown["secret"], true, "{shown}");
    assert_eq!(shown["set"], true, "{shown}");
    assert!(
        !view.to_string().contains(&secret),
        "the view shows the secret"
    );

    let reply = keyhole.invoke(&key, "probe", "keyed", json!({})).await?;
    let output = reply.expect(200)?["output"].take();

    assert_eq!(
        output["readable"],
        Value::Null,
        "the plugin read the secret: {output}"
    );
    assert_eq!(output["own_host"], 200, "{output}");
    assert_eq!(output["elsewhere_denied"], true, "{output}");
    let seen = keyhole.upstream().request_to("/keyed")?;
    assert_eq!(seen.query("key").as_deref(), Some(secret.as_str()));
    assert_eq!(seen.header("x-api-key"), Some(secret.as_str()));
    // An API that echoes the request gives the plugin back the placeholders, not the secret.
    let echoed = keyhole.upstream().request_to("/echo")?;
    assert_eq!(echoed.header("x-api-key"), Some(secret.as_str()));
    let read_back = output["echoed"]["Ok"].as_str().unwrap_or_default();
    assert!(
        read_back.contains(r#""x-api-key","{SETTING:api_key}""#)
            && read_back.contains("key={SETTING:api_key}"),
        "the plugin read back: {output}"
    );
    assert!(
        !output.to_string().contains(&secret),
        "the plugin read the secret back from an echo: {output}"
    );
    assert!(keyhole.upstream().requests_to("/stolen").is_empty());
    assert!(
        !keyhole.logs().text().contains(&secret),
        "the log shows the secret"
    );
    // The plain setting is found in clear, which shows the scan reads the records.
    assert!(data_dir_contains(keyhole.data_dir(), GREETING.as_bytes())?);
    assert!(
        !data_dir_contains(keyhole.data_dir(), secret.as_bytes())?,
        "the data directory holds the secret in clear"
    );
    Ok(())
}
