//! What survives a restart, and what an acknowledged write survives: a crash right after it.

use anyhow::Result;
use serde_json::json;

use crate::harness::{GREETING, Keyhole, current_weather, guests, install_probe, install_weather};

#[tokio::test]
async fn plugins_settings_and_keys_survive_a_restart() -> Result<()> {
    let mut keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;
    let revoked = keyhole.create_api_key("acme").await?;
    let path = format!("/admin/api-keys/{}", revoked.key_id);
    keyhole.admin_delete(&path).await?.expect(204)?;

    let status = keyhole.stop().await?;
    assert!(
        status.success(),
        "keyhole exited with {status} after SIGTERM"
    );
    keyhole.restart().await?;

    let weather = current_weather(&keyhole, &key, "Berlin").await?;
    assert_eq!(weather.expect(200)?["output"]["place"], "Berlin");
    let echoed = keyhole
        .invoke(&key, "probe", "echo", json!({"text": "again"}))
        .await?;
    assert_eq!(echoed.expect(200)?["output"]["greeting"], GREETING);
    let refused = keyhole.api_get(&revoked, "/v1/tools").await?;
    refused.expect_error(401, "unauthorized")?;
    Ok(())
}

#[tokio::test]
async fn acknowledged_writes_survive_a_crash() -> Result<()> {
    let mut keyhole = Keyhole::start().await?;
    let key = keyhole.create_api_key("acme").await?;
    install_probe(&keyhole).await?;
    let view = keyhole
        .upload(guests().await?.weather()?)
        .await?
        .expect(201)?;

    // SIGKILL leaves no time to flush: whatever was acknowledged must already be on disk.
    keyhole.kill().await?;
    keyhole.restart().await?;

    let found = keyhole
        .admin_get("/admin/plugins/weather")
        .await?
        .expect(200)?;
    assert_eq!(found["sha256"], view["sha256"]);
    let weather = current_weather(&keyhole, &key, "Berlin").await?;
    assert_eq!(weather.expect(200)?["output"]["place"], "Berlin");
    let echoed = keyhole
        .invoke(&key, "probe", "echo", json!({"text": "again"}))
        .await?;
    assert_eq!(echoed.expect(200)?["output"]["greeting"], GREETING);
    Ok(())
}

#[tokio::test]
async fn deleted_plugin_stays_deleted_after_a_crash() -> Result<()> {
    let mut keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    keyhole
        .admin_delete("/admin/plugins/weather")
        .await?
        .expect(204)?;

    keyhole.kill().await?;
    keyhole.restart().await?;

    let reply = keyhole.admin_get("/admin/plugins/weather").await?;
    reply.expect_error(404, "not_found")?;
    Ok(())
}
