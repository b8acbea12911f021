//! `/admin`: plugins, their settings, and API keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::extract::{Admin, ApiJson, ApiPath, Upload};
use super::{ApiError, AppState};
use crate::auth::AuthError;
use crate::limits::{CallLimits, LimitOverrides};
use crate::registry::InstalledPlugin;
use crate::time::rfc3339;
use crate::vault::Secret;

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
    #[serde(skip_serializing_if = "Option::is_none")]
    oauth: Option<OAuthView>,
    limits: LimitsView,
    installed_at: String,
    sha256: String,
}

#[derive(Serialize)]
struct SettingView {
    name: String,
    description: String,
    required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    secret: bool,
    /// The value of a plain setting; a secret's value is never shown.
    value: Option<String>,
    /// Whether a secret is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    set: Option<bool>,
}

/// The limits a call of the plugin runs under, and which of them the admin overrode.
#[derive(Serialize)]
struct LimitsView {
    #[serde(flatten)]
    effective: CallLimits,
    overridden: LimitOverrides,
}

/// What the admin approves by setting the OAuth client, and what to register with the provider.
#[derive(Serialize)]
struct OAuthView {
    authorization_url: String,
    token_url: String,
    revocation_url: Option<String>,
    scopes: Vec<String>,
    api_hosts: Vec<String>,
    redirect_uri: String,
    client: Option<OAuthClientView>,
}

#[derive(Serialize)]
struct OAuthClientView {
    client_id: String,
    /// `active`, or `suspended` until the admin approves a new version's changes.
    status: &'static str,
}

impl PluginView {
    fn of(plugin: &InstalledPlugin, state: &AppState) -> Self {
        let description = plugin.description();
        let settings = description
            .settings
            .iter()
            .map(|spec| SettingView {
                name: spec.name.clone(),
                description: spec.description.clone(),
                required: spec.required,
                secret: spec.secret,
                value: (!spec.secret)
                    .then(|| plugin.context.settings.get(&spec.name).cloned())
                    .flatten(),
                set: spec.secret.then(|| plugin.secrets.contains_key(&spec.name)),
            })
            .collect();
        let oauth = plugin.oauth.as_ref().map(|spec| {
            let client = match state.oauth.client(&description.id) {
                Ok(client) => client,
                Err(err) => {
                    tracing::error!(plugin = %description.id, error = %err, "cannot read the OAuth client");
                    None
                }
            };
            OAuthView {
                authorization_url: spec.authorization_url.clone(),
                token_url: spec.token_url.clone(),
                revocation_url: spec.revocation_url.clone(),
                scopes: spec.scopes.clone(),
                api_hosts: spec.api_hosts.clone(),
                redirect_uri: state.oauth.redirect_uri(),
                client: client.map(|client| OAuthClientView {
                    status: if client.is_active(spec) { "active" } else { "suspended" },
                    client_id: client.client_id,
                }),
            }
        });
        Self {
            id: description.id.clone(),
            name: description.name.clone(),
            version: description.version.clone(),
            description: description.description.clone(),
            tools: json!(description.tools),
            hosts: description.hosts.clone(),
            settings,
            oauth,
            limits: LimitsView {
                effective: plugin.context.limits,
                overridden: plugin.overrides.clone(),
            },
            installed_at: rfc3339(plugin.record.installed_at),
            sha256: plugin.record.sha256.clone(),
        }
    }
}

pub(super) async fn upload_plugin(
    _: Admin,
    State(state): State<AppState>,
    Upload(wasm): Upload,
) -> Result<(StatusCode, Json<PluginView>), ApiError> {
    let (plugin, previous) = state.registry.install(wasm.to_vec()).await?;
    let description = plugin.description();
    let replaced = previous.is_some();
    tracing::info!(plugin = %description.id, version = %description.version, replaced, "plugin installed");

    // Tokens must not follow a plugin to a token endpoint or hosts the user never agreed to.
    let old = previous.as_ref().and_then(|p| p.oauth.clone());
    let invalidated = match (old, &plugin.oauth) {
        (Some(old), Some(new)) => old.invalidates_tokens(new),
        (Some(_), None) => true,
        _ => false,
    };
    if invalidated {
        let count = state
            .oauth
            .drop_connections(&description.id)
            .map_err(ApiError::internal)?;
        tracing::info!(plugin = %description.id, connections = count, "token URL or API hosts changed; connections dropped");
    }

    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(PluginView::of(&plugin, &state))))
}

pub(super) async fn list_plugins(_: Admin, State(state): State<AppState>) -> Json<Value> {
    let plugins: Vec<PluginView> = state
        .registry
        .list()
        .iter()
        .map(|p| PluginView::of(p, &state))
        .collect();
    Json(json!({ "plugins": plugins }))
}

pub(super) async fn get_plugin(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PluginView>, ApiError> {
    let plugin = find(&state, &id)?;
    Ok(Json(PluginView::of(&plugin, &state)))
}

pub(super) async fn delete_plugin(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.delete(&id).await?;
    state.oauth.forget_plugin(&id).map_err(ApiError::internal)?;
    tracing::info!(plugin = %id, "plugin deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn put_settings(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(changes): ApiJson<BTreeMap<String, Option<String>>>,
) -> Result<Json<PluginView>, ApiError> {
    let names: Vec<String> = changes.keys().cloned().collect();
    let plugin = state.registry.update_settings(&id, changes).await?;
    tracing::info!(plugin = %id, settings = ?names, "settings changed");
    Ok(Json(PluginView::of(&plugin, &state)))
}

/// Replaces the admin's overrides of the plugin's limits; an empty object restores the
/// server's defaults.
pub(super) async fn put_limits(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(overrides): ApiJson<LimitOverrides>,
) -> Result<Json<PluginView>, ApiError> {
    let plugin = state.registry.set_limits(&id, overrides).await?;
    tracing::info!(plugin = %id, limits = ?plugin.context.limits, "limits changed");
    Ok(Json(PluginView::of(&plugin, &state)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OAuthClientRequest {
    client_id: String,
    client_secret: String,
}

/// Sets the plugin's OAuth client, which is also the admin's approval of where the plugin
/// sends the secret (its token URL) and the users' tokens (its API hosts).
pub(super) async fn put_oauth_client(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<OAuthClientRequest>,
) -> Result<Json<PluginView>, ApiError> {
    let plugin = find(&state, &id)?;
    let spec = plugin.oauth.clone().ok_or_else(|| {
        ApiError::bad_request(format!("the plugin `{id}` declares no OAuth provider"))
    })?;
    let valid =
        |text: &str| !text.is_empty() && text.len() <= 1024 && !text.chars().any(char::is_control);
    if !valid(&request.client_id) || !valid(&request.client_secret) {
        return Err(ApiError::bad_request(
            "`client_id` and `client_secret` must be 1 to 1024 characters without control characters",
        ));
    }

    let oauth = state.oauth.clone();
    let secret = Secret(request.client_secret);
    let client_id = request.client_id;
    let plugin_id = id.clone();
    tokio::task::spawn_blocking(move || oauth.set_client(&plugin_id, &spec, &client_id, &secret))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    tracing::info!(plugin = %id, "OAuth client set");
    Ok(Json(PluginView::of(&plugin, &state)))
}

pub(super) async fn delete_oauth_client(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    find(&state, &id)?;
    if !state.oauth.delete_client(&id).map_err(ApiError::internal)? {
        return Err(ApiError::not_found(format!(
            "the plugin `{id}` has no OAuth client"
        )));
    }
    tracing::info!(plugin = %id, "OAuth client removed");
    Ok(StatusCode::NO_CONTENT)
}

fn find(state: &AppState, id: &str) -> Result<Arc<InstalledPlugin>, ApiError> {
    state
        .registry
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no plugin is installed with the id `{id}`")))
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
    ApiPath(key_id): ApiPath<String>,
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
