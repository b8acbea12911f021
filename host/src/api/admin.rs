//! `/admin`: plugins, their settings, and API keys.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::extract::{Admin, ApiJson, Body};
use super::{ApiError, AppState};
use crate::auth::AuthError;
use crate::registry::InstalledPlugin;
use crate::time::rfc3339;

/// A plugin as the admin sees it.
#[derive(Serialize)]
pub(super) struct PluginView {
    id: String,
    name: String,
    version: String,
    description: String,
    tools: Value,
    hosts: Vec<String>,
    settings: Vec<SettingView>,
    installed_at: String,
    sha256: String,
}

#[derive(Serialize)]
struct SettingView {
    name: String,
    description: String,
    required: bool,
    value: Option<String>,
}

impl PluginView {
    fn of(plugin: &InstalledPlugin) -> Self {
        let description = plugin.description();
        let settings = description
            .settings
            .iter()
            .map(|spec| SettingView {
                name: spec.name.clone(),
                description: spec.description.clone(),
                required: spec.required,
                value: plugin.context.settings.get(&spec.name).cloned(),
            })
            .collect();
        Self {
            id: description.id.clone(),
            name: description.name.clone(),
            version: description.version.clone(),
            description: description.description.clone(),
            tools: json!(description.tools),
            hosts: description.hosts.clone(),
            settings,
            installed_at: rfc3339(plugin.record.installed_at),
            sha256: plugin.record.sha256.clone(),
        }
    }
}

pub(super) async fn upload_plugin(
    _: Admin,
    State(state): State<AppState>,
    Body(wasm): Body,
) -> Result<(StatusCode, Json<PluginView>), ApiError> {
    let (plugin, replaced) = state.registry.install(wasm.to_vec()).await?;
    let description = plugin.description();
    tracing::info!(plugin = %description.id, version = %description.version, replaced, "plugin installed");
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(PluginView::of(&plugin))))
}

pub(super) async fn list_plugins(_: Admin, State(state): State<AppState>) -> Json<Value> {
    let plugins: Vec<PluginView> = state
        .registry
        .list()
        .iter()
        .map(|p| PluginView::of(p))
        .collect();
    Json(json!({ "plugins": plugins }))
}

pub(super) async fn get_plugin(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PluginView>, ApiError> {
    let plugin = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no plugin is installed with the id `{id}`")))?;
    Ok(Json(PluginView::of(&plugin)))
}

pub(super) async fn delete_plugin(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.delete(&id).await?;
    tracing::info!(plugin = %id, "plugin deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn put_settings(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(settings): ApiJson<BTreeMap<String, String>>,
) -> Result<Json<PluginView>, ApiError> {
    let plugin = state.registry.set_settings(&id, settings).await?;
    tracing::info!(plugin = %id, "settings replaced");
    Ok(Json(PluginView::of(&plugin)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewApiKey {
    tenant: String,
}

pub(super) async fn create_api_key(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<NewApiKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let auth = state.auth.clone();
    let (record, key) = tokio::task::spawn_blocking(move || auth.create_key(&request.tenant))
        .await
        .map_err(ApiError::internal)?
        .map_err(auth_error)?;
    tracing::info!(key_id = %record.key_id, tenant = %record.tenant, "API key created");
    let body = json!({
        "key_id": record.key_id,
        "tenant": record.tenant,
        "api_key": key.0,
        "created_at": rfc3339(record.created_at),
    });
    Ok((StatusCode::CREATED, Json(body)))
}

pub(super) async fn list_api_keys(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let keys: Vec<Value> = state
        .auth
        .keys()
        .map_err(auth_error)?
        .into_iter()
        .map(|key| {
            json!({
                "key_id": key.key_id,
                "tenant": key.tenant,
                "created_at": rfc3339(key.created_at),
            })
        })
        .collect();
    Ok(Json(json!({ "api_keys": keys })))
}

pub(super) async fn delete_api_key(
    _: Admin,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let auth = state.auth.clone();
    let id = key_id.clone();
    let existed = tokio::task::spawn_blocking(move || auth.revoke_key(&id))
        .await
        .map_err(ApiError::internal)?
        .map_err(auth_error)?;
    if !existed {
        return Err(ApiError::not_found(format!(
            "no API key has the id `{key_id}`"
        )));
    }
    tracing::info!(key_id = %key_id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

fn auth_error(err: AuthError) -> ApiError {
    match err {
        AuthError::InvalidTenant => ApiError::bad_request(err.to_string()),
        other => ApiError::internal(other),
    }
}
