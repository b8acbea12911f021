//! Extractors: who is calling, and JSON bodies with the API's own errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::auth::Caller;

/// The admin, identified by the admin token.
pub(super) struct Admin;

/// A chat backend, identified by one of its API keys.
pub(super) struct Backend {
    /// The tenant whose users it acts for.
    pub(super) tenant: String,
}

fn caller(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let unauthorized =
        |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthorized("send `Authorization: Bearer <token>`"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
    state
        .auth
        .identify(token.trim())
        .ok_or_else(|| unauthorized("unknown or revoked credentials"))
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match caller(parts, state)? {
            Caller::Admin => Ok(Admin),
            Caller::Backend { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "an API key cannot use the admin API; use the admin token",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Backend {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match caller(parts, state)? {
            Caller::Backend { tenant, .. } => Ok(Backend { tenant }),
            Caller::Admin => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the admin token cannot call tools; create an API key with POST /admin/api-keys",
            )),
        }
    }
}

/// The request body as bytes, with a size limit answered as 413 `too_large`.
pub(super) struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(Body)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "the request body is over the size limit",
                    )
                } else {
                    ApiError::bad_request(format!("cannot read the request body: {rejection}"))
                }
            })
    }
}

/// A JSON body, whatever its content type says, with the API's own errors.
pub(super) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Body(bytes) = Body::from_request(request, state).await?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|err| {
            ApiError::bad_request(format!("the body is not the expected JSON: {err}"))
        })
    }
}
