//! The HTTP API: the admin's (`/admin`), the chat backends' (`/v1`) and `/healthz`.
//!
//! The routes and their answers are documented in `docs/API.md`.

mod admin;
mod error;
mod extract;
mod invoke;
mod oauth;
mod v1;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use tokio::sync::Semaphore;

use crate::auth::Auth;
use crate::oauth::OAuth;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::store::Store;

pub use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Installed plugins.
    pub registry: Arc<Registry>,
    /// Credentials.
    pub auth: Arc<Auth>,
    /// The wasmtime side.
    pub runtime: Arc<Runtime>,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// OAuth clients, flows and tokens.
    pub oauth: Arc<OAuth>,
    /// Calls in flight; a call that finds none free is answered 429 instead of queueing.
    pub calls: Arc<Semaphore>,
    /// Size limits of request bodies.
    pub limits: BodyLimits,
}

/// Size limits of request bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Plugin uploads.
    pub upload: usize,
    /// JSON requests.
    pub json: usize,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route(
            "/admin/plugins",
            post(admin::upload_plugin).get(admin::list_plugins),
        )
        .route(
            "/admin/plugins/{id}",
            get(admin::get_plugin).delete(admin::delete_plugin),
        )
        .route("/admin/plugins/{id}/settings", put(admin::put_settings))
        .route("/admin/plugins/{id}/limits", put(admin::put_limits))
        .route(
            "/admin/plugins/{id}/oauth-client",
            put(admin::put_oauth_client).delete(admin::delete_oauth_client),
        )
        .route(
            "/oauth/authorize/{link}",
            get(oauth::confirm).post(oauth::authorize),
        )
        .route("/oauth/callback", get(oauth::callback))
        .route("/v1/users/{user}/connections", get(v1::list_connections))
        .route(
            "/v1/users/{user}/connections/{plugin}",
            axum::routing::delete(v1::disconnect),
        )
        .route(
            "/admin/api-keys",
            post(admin::create_api_key).get(admin::list_api_keys),
        )
        .route(
            "/admin/api-keys/{key_id}",
            axum::routing::delete(admin::delete_api_key),
        )
        .route("/v1/tools", get(v1::list_tools))
        .route("/v1/plugins/{id}/tools/{tool}/invoke", post(v1::invoke))
        .route("/v1/tool-calls", post(v1::tool_call))
        // The extractors enforce `BodyLimits` themselves, answering 413 in the API's format.
        .layer(DefaultBodyLimit::disable())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn health(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    state.store.meta("health")?;
    Ok(axum::Json(serde_json::json!({"status": "ok"})))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
