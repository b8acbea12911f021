//! What the server refuses, and that each refusal says precisely why without echoing data.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::json;

use crate::harness::{Keyhole, ReplyExt, guests, install_probe, install_weather};

#[tokio::test]
async fn upload_that_is_not_wasm_is_an_invalid_plugin() -> Result<()> {
    let keyhole = Keyhole::start().await?;

    for bytes in [b"this is not webassembly".to_vec(), Vec::new()] {
        let reply = keyhole.upload(bytes).await?;
        reply.expect_error(400, "invalid_plugin")?;
    }
    Ok(())
}

#[tokio::test]
async fn core_module_upload_is_an_invalid_plugin() -> Result<()> {
    let keyhole = Keyhole::start().await?;

    // The smallest valid core module: the magic number and version 1, no sections.
    let reply = keyhole.upload(b"\0asm\x01\0\0\0".to_vec()).await?;

    reply.expect_error(400, "invalid_plugin")?;
    Ok(())
}

#[tokio::test]
async fn truncated_component_upload_is_an_invalid_plugin() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    let mut wasm = guests().await?.weather()?;
    wasm.truncate(wasm.len() / 2);

    let reply = keyhole.upload(wasm).await?;

    reply.expect_error(400, "invalid_plugin")?;
    let list = keyhole.admin_get("/admin/plugins").await?.expect(200)?;
    assert_eq!(list["plugins"], json!([]), "a broken upload was installed");
    Ok(())
}

#[tokio::test]
async fn upload_over_the_size_limit_is_too_large() -> Result<()> {
    let keyhole = Keyhole::start_with(&["--max-upload-bytes", "1000000"]).await?;

    let reply = keyhole.upload(vec![0; 2_000_000]).await?;

    reply.expect_error(413, "too_large")?;
    // The limit holds back only what exceeds it.
    let weather = guests().await?.weather()?;
    assert!(
        weather.len() < 1_000_000,
        "the weather plugin outgrew the test's limit"
    );
    keyhole.upload(weather).await?.expect(201)?;
    Ok(())
}

#[tokio::test]
async fn arguments_violating_the_schema_are_rejected_without_echoing_them() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;
    let value = "bad-value-93c1";

    let reply = keyhole
        .invoke(&key, "probe", "echo", json!({"text": [value]}))
        .await?;

    let error = reply.expect_error(400, "invalid_arguments")?;
    assert!(
        !reply.text.contains(value),
        "the error echoes the argument: {reply}"
    );
    let errors = error["errors"].as_array().context("errors is a list")?;
    assert!(!errors.is_empty(), "{reply}");
    for entry in errors {
        assert!(
            entry["path"].is_string() && entry["message"].is_string(),
            "{reply}"
        );
    }
    assert!(
        errors.iter().any(|entry| entry["path"] == "/text"),
        "{reply}"
    );

    let bad_kind = keyhole
        .invoke(&key, "probe", "fail", json!({"kind": value}))
        .await?;
    bad_kind.expect_error(400, "invalid_arguments")?;
    assert!(
        !bad_kind.text.contains(value),
        "the error echoes the argument: {bad_kind}"
    );
    let missing = keyhole.invoke(&key, "probe", "echo", json!({})).await?;
    missing.expect_error(400, "invalid_arguments")?;
    Ok(())
}

#[tokio::test]
async fn request_body_that_is_not_json_is_a_bad_request() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let invoke = keyhole
        .api(&key, Method::POST, "/v1/plugins/probe/tools/echo/invoke")
        .header("content-type", "application/json")
        .body("{not json");
    invoke.reply().await?.expect_error(400, "bad_request")?;
    let tool_call = keyhole
        .api(&key, Method::POST, "/v1/tool-calls")
        .header("content-type", "application/json")
        .body("[1, 2");
    tool_call.reply().await?.expect_error(400, "bad_request")?;
    let settings = keyhole
        .admin(Method::PUT, "/admin/plugins/probe/settings")
        .header("content-type", "application/json")
        .body("greeting=hi");
    settings.reply().await?.expect_error(400, "bad_request")?;
    Ok(())
}

#[tokio::test]
async fn request_body_missing_a_field_is_a_bad_request() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let no_user = keyhole
        .api(&key, Method::POST, "/v1/plugins/probe/tools/echo/invoke")
        .json(&json!({"arguments": {"text": "hi"}}));
    no_user.reply().await?.expect_error(400, "bad_request")?;
    let no_tool_call = keyhole
        .api(&key, Method::POST, "/v1/tool-calls")
        .json(&json!({"user": "alice"}));
    no_tool_call
        .reply()
        .await?
        .expect_error(400, "bad_request")?;
    let no_tenant = keyhole
        .admin(Method::POST, "/admin/api-keys")
        .json(&json!({}));
    no_tenant.reply().await?.expect_error(400, "bad_request")?;
    Ok(())
}

#[tokio::test]
async fn tool_call_with_malformed_arguments_asks_the_model_to_fix_them() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    // The model wrote the arguments: the backend gets a message for it, not an HTTP error.
    for arguments in [r#"{"text": "#, r#"{"text": 42}"#] {
        let reply = keyhole.tool_call(&key, "probe__echo", arguments).await?;

        let body = reply.expect(200)?;
        let outcome = reply.header("x-keyhole-outcome");
        assert_eq!(outcome, Some("invalid_arguments"), "{reply}");
        assert_eq!(body["tool_call_id"], "call_1");
        assert!(
            body["content"]
                .as_str()
                .is_some_and(|text| !text.is_empty()),
            "{reply}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn unknown_plugin_tool_or_route_is_not_found() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let no_plugin = keyhole
        .invoke(&key, "nope", "current_weather", json!({}))
        .await?;
    no_plugin.expect_error(404, "not_found")?;
    let no_tool = keyhole.invoke(&key, "weather", "nope", json!({})).await?;
    no_tool.expect_error(404, "not_found")?;
    let no_view = keyhole.admin_get("/admin/plugins/nope").await?;
    no_view.expect_error(404, "not_found")?;
    let no_settings = keyhole.configure("nope", json!({})).await?;
    no_settings.expect_error(404, "not_found")?;
    let no_route = keyhole.api_get(&key, "/v1/nope").await?;
    no_route.expect_error(404, "not_found")?;
    Ok(())
}

/// Fails unless no plugin is installed.
async fn nothing_installed(keyhole: &Keyhole) -> Result<()> {
    let list = keyhole.admin_get("/admin/plugins").await?.expect(200)?;
    anyhow::ensure!(
        list["plugins"] == json!([]),
        "something was installed: {list}"
    );
    Ok(())
}

#[tokio::test]
async fn component_for_another_world_is_an_invalid_plugin() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    let guests = guests().await?;

    let command = keyhole.upload(guests.other_world()?).await?;
    let error = command.expect_error(400, "invalid_plugin")?;
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("keyhole:plugin"), "{message}");

    let foreign = keyhole.upload(guests.foreign_import()?).await?;
    let error = foreign.expect_error(400, "invalid_plugin")?;
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`acme:vault/keys@0.1.0`"),
        "the refusal names the import: {message}"
    );

    nothing_installed(&keyhole).await
}

#[tokio::test]
async fn invalid_self_description_is_an_invalid_plugin() -> Result<()> {
    let keyhole = Keyhole::start().await?;

    let reply = keyhole.upload(guests().await?.bad_description()?).await?;

    let error = reply.expect_error(400, "invalid_plugin")?;
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("id"),
        "the refusal says what is wrong: {message}"
    );
    nothing_installed(&keyhole).await
}

#[tokio::test]
async fn oversized_json_body_is_too_large_and_runs_nothing() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;
    let text = "x".repeat(2 * 1024 * 1024);

    let reply = keyhole
        .api(&key, Method::POST, "/v1/plugins/probe/tools/echo/invoke")
        .json(&json!({"user": "alice", "arguments": {"text": text}}))
        .reply()
        .await?;

    reply.expect_error(413, "too_large")?;
    let echoed = keyhole
        .invoke(&key, "probe", "echo", json!({"text": "small"}))
        .await?;
    assert_eq!(echoed.expect(200)?["output"]["text"], "small");
    Ok(())
}
