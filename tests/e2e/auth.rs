//! Who may call what: the admin token on `/admin`, API keys on `/v1`, and nothing else.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::json;

use crate::harness::{ApiKey, Keyhole, ReplyExt, install_probe};

#[tokio::test]
async fn requests_without_credentials_are_unauthorized() -> Result<()> {
    let keyhole = Keyhole::start().await?;

    for (method, path) in [
        (Method::GET, "/admin/plugins"),
        (Method::GET, "/admin/api-keys"),
        (Method::GET, "/v1/tools"),
        (Method::POST, "/v1/tool-calls"),
    ] {
        let reply = keyhole.request(method, path).reply().await?;
        reply.expect_error(401, "unauthorized")?;
    }
    Ok(())
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    let wrong = format!("{}x", keyhole.admin_token());

    let admin = keyhole
        .request(Method::GET, "/admin/plugins")
        .bearer_auth(&wrong);
    admin.reply().await?.expect_error(401, "unauthorized")?;
    let api = keyhole
        .request(Method::GET, "/v1/tools")
        .bearer_auth("kh_not_a_key");
    api.reply().await?.expect_error(401, "unauthorized")?;
    // The right token under another scheme is no bearer credential.
    let basic = keyhole
        .request(Method::GET, "/admin/plugins")
        .header("authorization", format!("Basic {}", keyhole.admin_token()));
    basic.reply().await?.expect_error(401, "unauthorized")?;
    Ok(())
}

#[tokio::test]
async fn admin_token_on_the_chat_api_is_forbidden() -> Result<()> {
    let keyhole = Keyhole::start().await?;

    let reply = keyhole.admin_get("/v1/tools").await?;

    reply.expect_error(403, "forbidden")?;
    Ok(())
}

#[tokio::test]
async fn api_key_on_the_admin_api_is_forbidden() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    let key = keyhole.create_api_key("acme").await?;

    let reply = keyhole.api_get(&key, "/admin/plugins").await?;

    reply.expect_error(403, "forbidden")?;
    Ok(())
}

#[tokio::test]
async fn revoked_api_key_is_unauthorized() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    let key = keyhole.create_api_key("acme").await?;
    keyhole.api_get(&key, "/v1/tools").await?.expect(200)?;

    let path = format!("/admin/api-keys/{}", key.key_id);
    keyhole.admin_delete(&path).await?.expect(204)?;

    let reply = keyhole.api_get(&key, "/v1/tools").await?;
    reply.expect_error(401, "unauthorized")?;
    let again = keyhole.admin_delete(&path).await?;
    again.expect_error(404, "not_found")?;
    Ok(())
}

#[tokio::test]
async fn api_keys_of_every_tenant_reach_the_tools() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let acme = keyhole.create_api_key("acme").await?;
    let globex = keyhole.create_api_key("globex").await?;

    for key in [&acme, &globex] {
        let reply = keyhole
            .invoke(key, "probe", "echo", json!({"text": "hi"}))
            .await?;
        assert_eq!(reply.expect(200)?["output"]["text"], "hi");
    }
    Ok(())
}

#[tokio::test]
async fn api_key_is_shown_once_and_never_listed() -> Result<()> {
    let keyhole = Keyhole::start().await?;

    let created = keyhole
        .admin(Method::POST, "/admin/api-keys")
        .json(&json!({"tenant": "acme"}))
        .reply()
        .await?
        .expect(201)?;
    assert_eq!(created["tenant"], "acme");
    assert!(created["created_at"].is_string(), "{created}");
    let secret = created["api_key"]
        .as_str()
        .context("the new key is shown")?;
    assert!(secret.starts_with("kh_"), "{created}");
    let other: ApiKey = keyhole.create_api_key("globex").await?;

    let reply = keyhole.admin_get("/admin/api-keys").await?;

    let listed = reply.expect(200)?;
    assert!(
        !reply.text.contains(secret),
        "the listing shows a secret: {reply}"
    );
    assert!(
        !reply.text.contains(&other.secret),
        "the listing shows a secret: {reply}"
    );
    let keys = listed["api_keys"]
        .as_array()
        .context("api_keys is a list")?;
    assert_eq!(keys.len(), 2, "{reply}");
    for key in keys {
        let fields = key.as_object().context("each key is an object")?;
        let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["created_at", "key_id", "tenant"], "{reply}");
    }
    let acme = keys.iter().find(|key| key["key_id"] == created["key_id"]);
    assert_eq!(
        acme.map(|key| &key["tenant"]),
        Some(&json!("acme")),
        "{reply}"
    );
    Ok(())
}
