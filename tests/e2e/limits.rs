//! Per-plugin limits set by the admin, and the scratch space a plugin may ask for.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Keyhole, ReplyExt, install_probe};

async fn put_limits(
    keyhole: &Keyhole,
    plugin: &str,
    limits: Value,
) -> Result<crate::harness::Reply> {
    keyhole
        .admin(Method::PUT, &format!("/admin/plugins/{plugin}/limits"))
        .json(&limits)
        .reply()
        .await
}

#[tokio::test]
async fn the_plugin_view_shows_the_server_limits_until_the_admin_overrides_them() -> Result<()> {
    let keyhole = Keyhole::start_with(&["--call-timeout-ms", "7000"]).await?;
    install_probe(&keyhole).await?;

    let view = keyhole
        .admin_get("/admin/plugins/probe")
        .await?
        .expect(200)?;

    assert_eq!(view["limits"]["call_timeout_ms"], 7000, "{view}");
    assert_eq!(view["limits"]["max_result_bytes"], 1024 * 1024, "{view}");
    assert_eq!(view["limits"]["overridden"], json!({}), "{view}");
    Ok(())
}

#[tokio::test]
async fn a_lower_result_limit_fails_only_that_plugins_larger_results() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let view = put_limits(&keyhole, "probe", json!({"max_result_bytes": 200}))
        .await?
        .expect(200)?;
    assert_eq!(view["limits"]["max_result_bytes"], 200, "{view}");
    assert_eq!(
        view["limits"]["overridden"],
        json!({"max_result_bytes": 200})
    );

    let short = keyhole
        .invoke(&key, "probe", "echo", json!({"text": "short"}))
        .await?;
    short.expect(200)?;
    let long = keyhole
        .invoke(&key, "probe", "echo", json!({"text": "x".repeat(300)}))
        .await?;
    let error = long.expect_error(500, "plugin_failed")?;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("size limit"),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn limits_survive_a_restart_and_an_empty_object_restores_the_defaults() -> Result<()> {
    let mut keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    put_limits(
        &keyhole,
        "probe",
        json!({"call_timeout_ms": 1500, "max_requests_per_call": 3}),
    )
    .await?
    .expect(200)?;

    keyhole.restart().await?;
    let view = keyhole
        .admin_get("/admin/plugins/probe")
        .await?
        .expect(200)?;
    assert_eq!(view["limits"]["call_timeout_ms"], 1500, "{view}");
    assert_eq!(view["limits"]["max_requests_per_call"], 3, "{view}");

    let view = put_limits(&keyhole, "probe", json!({}))
        .await?
        .expect(200)?;
    assert_eq!(view["limits"]["call_timeout_ms"], 10_000, "{view}");
    assert_eq!(view["limits"]["overridden"], json!({}));
    Ok(())
}

#[tokio::test]
async fn limits_the_server_cannot_honour_are_refused_and_change_nothing() -> Result<()> {
    let keyhole = Keyhole::start_with(&["--max-concurrent-calls", "8"]).await?;
    install_probe(&keyhole).await?;

    for (limits, needle) in [
        (json!({"max_memory_bytes": 1u64 << 31}), "max_memory_bytes"),
        (json!({"max_concurrent_calls": 9}), "max_concurrent_calls"),
        (json!({"call_timeout_ms": 0}), "call_timeout_ms"),
    ] {
        let reply = put_limits(&keyhole, "probe", limits.clone()).await?;
        let error = reply.expect_error(400, "invalid_limits")?;
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{limits}: {error}"
        );
    }
    let unknown = put_limits(&keyhole, "probe", json!({"cpu_percent": 5})).await?;
    unknown.expect_error(400, "bad_request")?;
    let missing = put_limits(&keyhole, "nobody", json!({})).await?;
    missing.expect_error(404, "not_found")?;

    let view = keyhole
        .admin_get("/admin/plugins/probe")
        .await?
        .expect(200)?;
    assert_eq!(view["limits"]["overridden"], json!({}), "{view}");
    Ok(())
}

#[tokio::test]
async fn each_call_gets_its_own_empty_scratch_directory_and_nothing_else() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    for _ in 0..2 {
        let reply = keyhole.invoke(&key, "probe", "scratch", json!({})).await?;
        let output = &reply.expect(200)?["output"];

        // The file the previous call wrote is gone, and nothing outside was readable.
        assert_eq!(output["found"], json!([]), "{output}");
        assert_eq!(output["read_back"], "from this call", "{output}");
        assert_eq!(output["escaped_to"], json!([]), "{output}");
    }

    let scratch = keyhole.data_dir().join("scratch");
    let left = std::fs::read_dir(&scratch)
        .with_context(|| format!("reading {}", scratch.display()))?
        .count();
    assert_eq!(left, 0, "the calls' directories are removed");
    Ok(())
}

#[tokio::test]
async fn a_plugins_request_deadline_fails_the_request_not_the_call() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    keyhole
        .upload(crate::harness::guests().await?.hostile()?)
        .await?
        .expect(201)?;
    let key = keyhole.create_api_key("acme").await?;
    put_limits(&keyhole, "hostile", json!({"request_timeout_ms": 300}))
        .await?
        .expect(200)?;

    // The upstream never answers `hang`; the call's deadline is the server's 10 s.
    let started = std::time::Instant::now();
    let reply = keyhole.invoke(&key, "hostile", "hang", json!({})).await?;

    let error = reply.expect_error(422, "tool_error")?;
    assert_eq!(error["kind"], "upstream", "{error}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the request ran to the call's deadline: {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn the_config_file_sets_limits_and_flags_override_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("keyhole.toml");
    std::fs::write(
        &path,
        "call_timeout_ms = 4321\nmax_log_bytes = 2048\n[egress]\nmax_requests_per_call = 7\n",
    )?;
    let path = path.to_str().context("a UTF-8 path")?;
    let keyhole = Keyhole::start_with(&["--config", path, "--call-timeout-ms", "5555"]).await?;
    install_probe(&keyhole).await?;

    let view = keyhole
        .admin_get("/admin/plugins/probe")
        .await?
        .expect(200)?;

    assert_eq!(view["limits"]["call_timeout_ms"], 5555, "{view}");
    assert_eq!(view["limits"]["max_log_bytes"], 2048, "{view}");
    assert_eq!(view["limits"]["max_requests_per_call"], 7, "{view}");
    Ok(())
}
