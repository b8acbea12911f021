//! `/v1`: what chat backends call.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::extract::{ApiJson, ApiPath, Backend};
use super::invoke::Invocation;
use super::{ApiError, AppState};
use crate::oauth::ConnectionRef;
use crate::time::rfc3339;

/// Separates plugin and tool in the function names chat backends see.
const NAME_SEPARATOR: &str = "__";

/// `GET /v1/tools`: every tool, in the OpenAI function-calling format.
pub(super) async fn list_tools(_: Backend, State(state): State<AppState>) -> Json<Value> {
    let tools: Vec<Value> = state
        .registry
        .list()
        .iter()
        .flat_map(|plugin| {
            let id = plugin.description().id.clone();
            plugin
                .description()
                .tools
                .clone()
                .into_iter()
                .map(move |tool| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": format!("{id}{NAME_SEPARATOR}{}", tool.name),
                            "description": tool.description,
                            "parameters": tool.parameters,
                        }
                    })
                })
        })
        .collect();
    Json(json!({ "tools": tools }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InvokeRequest {
    user: String,
    #[serde(default = "empty_object")]
    arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// `POST /v1/plugins/{id}/tools/{tool}/invoke`.
pub(super) async fn invoke(
    backend: Backend,
    State(state): State<AppState>,
    ApiPath((plugin, tool)): ApiPath<(String, String)>,
    ApiJson(request): ApiJson<InvokeRequest>,
) -> Result<Json<Value>, ApiError> {
    let output = state
        .invoke(Invocation {
            tenant: &backend.tenant,
            user: &request.user,
            plugin: &plugin,
            tool: &tool,
            arguments: request.arguments,
        })
        .await?;
    Ok(Json(json!({ "output": output })))
}

#[derive(Deserialize)]
pub(super) struct ToolCallRequest {
    user: String,
    tool_call: ToolCall,
}

/// An OpenAI tool call, as the model produced it.
#[derive(Deserialize)]
struct ToolCall {
    id: String,
    function: FunctionCall,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: String,
    /// A JSON text, as OpenAI sends it; an object is accepted too.
    #[serde(default)]
    arguments: Value,
}

/// `POST /v1/tool-calls`: runs a model's tool call and answers the tool message to append to
/// the conversation. Failures the model can act on become its content; the header
/// `x-keyhole-outcome` tells the backend how the call ended.
pub(super) async fn tool_call(
    backend: Backend,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ToolCallRequest>,
) -> Response {
    let ToolCallRequest { user, tool_call } = request;
    let result = match parse_call(&tool_call.function) {
        Ok((plugin, tool, arguments)) => {
            state
                .invoke(Invocation {
                    tenant: &backend.tenant,
                    user: &user,
                    plugin,
                    tool,
                    arguments,
                })
                .await
        }
        Err(err) => Err(err),
    };

    let (content, outcome) = match result {
        Ok(Value::String(text)) => (text, "ok"),
        Ok(output) => (output.to_string(), "ok"),
        Err(err) if err.code == "internal" => return err.into_response(),
        Err(err) => (content_for_model(&err), err.code),
    };
    let message = json!({"role": "tool", "tool_call_id": tool_call.id, "content": content});
    let mut response = Json(message).into_response();
    response
        .headers_mut()
        .insert("x-keyhole-outcome", HeaderValue::from_static(outcome));
    response
}

fn parse_call(function: &FunctionCall) -> Result<(&str, &str, Value), ApiError> {
    let (plugin, tool) = function.name.split_once(NAME_SEPARATOR).ok_or_else(|| {
        ApiError::not_found(format!("there is no tool named `{}`", function.name))
    })?;
    let arguments = match &function.arguments {
        Value::Null => empty_object(),
        Value::String(text) if text.trim().is_empty() => empty_object(),
        Value::String(text) => serde_json::from_str(text).map_err(|err| {
            ApiError::bad_request(format!("the arguments are not valid JSON: {err}"))
                .with_code("invalid_arguments")
        })?,
        other => other.clone(),
    };
    Ok((plugin, tool, arguments))
}

/// `GET /v1/users/{user}/connections`: the user's connected plugins, this tenant's only.
pub(super) async fn list_connections(
    backend: Backend,
    State(state): State<AppState>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let plugins: Vec<String> = state
        .registry
        .list()
        .iter()
        .filter(|plugin| plugin.oauth.is_some())
        .map(|plugin| plugin.description().id.clone())
        .collect();
    let connections = state
        .oauth
        .connections_of(&backend.tenant, &user, &plugins)
        .map_err(ApiError::internal)?;
    let connections: Vec<Value> = connections
        .into_iter()
        .map(|connection| {
            json!({
                "plugin": connection.plugin,
                "connected_at": rfc3339(connection.connected_at),
                "expires_at": connection.expires_at.map(rfc3339),
                "scopes": connection.scopes,
            })
        })
        .collect();
    Ok(Json(json!({ "connections": connections })))
}

/// `DELETE /v1/users/{user}/connections/{plugin}`: disconnects, revoking at the provider.
pub(super) async fn disconnect(
    backend: Backend,
    State(state): State<AppState>,
    ApiPath((user, plugin)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let installed = state.registry.get(&plugin);
    let spec = installed.as_ref().and_then(|p| p.oauth.clone());
    // A suspended client must not send its secret to a revocation URL the admin has not
    // approved: the connection is then only forgotten, not revoked at the provider.
    let client = state
        .oauth
        .client(&plugin)
        .map_err(ApiError::internal)?
        .filter(|client| spec.as_deref().is_some_and(|spec| client.is_active(spec)));
    let who = ConnectionRef {
        plugin: plugin.clone(),
        tenant: backend.tenant.clone(),
        user,
    };
    let existed = state
        .oauth
        .disconnect(&who, spec.as_deref(), client.as_ref())
        .await
        .map_err(ApiError::internal)?;
    if !existed {
        return Err(ApiError::not_found(format!(
            "the user has no connection to `{plugin}`"
        )));
    }
    tracing::info!(plugin = %plugin, tenant = %backend.tenant, "user disconnected");
    Ok(StatusCode::NO_CONTENT)
}

/// Words a model can act on: what went wrong and, where it helps, what to change.
fn content_for_model(err: &ApiError) -> String {
    let mut content = format!("Error ({}): {}", err.code, err.message);
    if let Some(Value::Array(problems)) = err.extra.get("errors") {
        for problem in problems {
            let path = problem["path"].as_str().unwrap_or("");
            let message = problem["message"].as_str().unwrap_or("");
            content.push_str(&format!("\n- at `{path}`: {message}"));
        }
    }
    if let Some(kind) = err.extra.get("kind").and_then(Value::as_str) {
        content.push_str(&format!(" (kind: {kind})"));
    }
    if let Some(link) = err.extra.get("authorize_url").and_then(Value::as_str) {
        content = format!(
            "The user has not connected their account for this tool yet. Show them this link to \
             connect it, then try again once they say they are done: {link}"
        );
    }
    content
}
