//! The API's one error type: `{"error": {"code", "message", ...}}` with the right status.
//!
//! Client errors carry a precise, safe message. Server errors carry a generic one; their cause
//! is logged once, here, inside the request's span.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::registry::RegistryError;
use crate::runtime::LoadError;
use crate::store::StoreError;

/// An error answered to an API caller.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Safe, human-readable message.
    pub message: String,
    /// Fields specific to the code.
    pub extra: Map<String, Value>,
}

impl ApiError {
    /// An error without extra fields.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// Adds a field specific to the code.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The same error under another code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`, logging the cause, which the caller never sees.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// The `error` object of the body.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".to_owned(), json!(self.code));
        error.insert("message".to_owned(), json!(self.message));
        error.extend(self.extra.clone());
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        Self::internal(err)
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::Load(err) => Self::from(err),
            RegistryError::NotFound(_) => Self::not_found(err.to_string()),
            RegistryError::UnknownSettings(ref names) => {
                let names = names.clone();
                Self::new(StatusCode::BAD_REQUEST, "unknown_setting", err.to_string())
                    .with("names", names)
            }
            RegistryError::Limits(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_limits", err.to_string())
            }
            RegistryError::Store(err) => Self::from(err),
        }
    }
}

impl From<LoadError> for ApiError {
    fn from(err: LoadError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_plugin", err.to_string())
    }
}
