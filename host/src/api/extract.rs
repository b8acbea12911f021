//! Extractors: who is calling, and JSON bodies with the API's own errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bytes::BytesMut;
use futures::StreamExt;
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

/// A plugin upload's bytes, within the upload limit.
pub(super) struct Upload(pub(super) Bytes);

impl FromRequest<AppState> for Upload {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        read_body(request, state.limits.upload).await.map(Upload)
    }
}

/// How much of an oversized body is read and dropped before answering 413, so that the client,
/// still sending, gets the answer instead of a reset connection.
const MAX_DRAIN_BYTES: usize = 256 * 1024 * 1024;

/// Reads a body up to `limit` bytes; a larger one is answered 413 `too_large`.
async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = request.into_body().into_data_stream();
    let mut body = BytesMut::new();
    let mut received = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|err| ApiError::bad_request(format!("cannot read the request body: {err}")))?;
        received += chunk.len();
        if received > limit + MAX_DRAIN_BYTES {
            break;
        }
        if received <= limit {
            body.extend_from_slice(&chunk);
        }
    }
    if received > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is over the limit of {limit} bytes"),
        ));
    }
    Ok(body.freeze())
}

/// A JSON body, whatever its content type says, with the API's own errors.
pub(super) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(request, state.limits.json).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|err| ApiError::bad_request(json_problem(&err)))
    }
}

/// Path parameters, with the API's own error when they do not decode.
pub(super) struct ApiPath<T>(pub(super) T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|_| {
                ApiError::bad_request("the URL path is not valid UTF-8 or has the wrong shape")
            })
    }
}

/// What is wrong with a JSON body, without quoting any of its values: serde's messages for a
/// wrong type quote the value, which may be a secret (a setting) or a user's data.
fn json_problem(err: &serde_json::Error) -> String {
    let message = err.to_string();
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        return format!(
            "the body is not the expected JSON: a field has the wrong type (line {}, column {})",
            err.line(),
            err.column()
        );
    }
    format!("the body is not the expected JSON: {message}")
}
