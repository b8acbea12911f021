//! A blocking HTTP client over `wasi:http`, the plugin's only way to the network.
//!
//! The host lets a request through only to a host the plugin declared with
//! [`crate::Plugin::host`], and adds the user's credentials on its own; a plugin never sets them.
//! Errors convert into [`ToolError`] with `?`.
//!
//! ```no_run
//! # fn run() -> Result<(), keyhole_sdk::ToolError> {
//! use keyhole_sdk::http;
//!
//! let forecast: serde_json::Value = http::get("https://api.open-meteo.com/v1/forecast")
//!     .query(&[("latitude", "52.52"), ("longitude", "13.41"), ("current", "temperature_2m")])
//!     .send()?
//!     .success()?
//!     .json()?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use waki::header::HeaderName;
use waki::{Client, ErrorCode, Method, RequestBuilder};

use crate::ToolError;

/// Starts a GET request.
pub fn get(url: &str) -> Request {
    Request::new(Method::Get, url)
}

/// Starts a POST request.
pub fn post(url: &str) -> Request {
    Request::new(Method::Post, url)
}

/// Starts a PUT request.
pub fn put(url: &str) -> Request {
    Request::new(Method::Put, url)
}

/// Starts a PATCH request.
pub fn patch(url: &str) -> Request {
    Request::new(Method::Patch, url)
}

/// Starts a DELETE request.
pub fn delete(url: &str) -> Request {
    Request::new(Method::Delete, url)
}

/// A request being built. Nothing is sent before [`Request::send`].
pub struct Request {
    url: String,
    inner: RequestBuilder,
    /// A mistake found while building, reported by `send`.
    invalid: Option<String>,
}

impl Request {
    fn new(method: Method, url: &str) -> Self {
        Self {
            url: url.to_owned(),
            inner: Client::new().request(method, url),
            invalid: None,
        }
    }

    /// Adds a header. An invalid name makes [`Request::send`] fail.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match HeaderName::try_from(name) {
            Ok(name) => self.inner = self.inner.header(name, value),
            Err(_) => self.invalid = Some(format!("`{name}` is not a valid header name")),
        }
        self
    }

    /// Appends query parameters, percent-encoded.
    pub fn query<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> Self {
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        self.inner = self.inner.query(pairs);
        self
    }

    /// Sends `value` as a JSON body.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        self.inner = self.inner.json(value);
        self
    }

    /// Sends the pairs as an `application/x-www-form-urlencoded` body.
    pub fn form<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> Self {
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        self.inner = self.inner.form(pairs);
        self
    }

    /// Sends raw bytes as the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.inner = self.inner.body(body);
        self
    }

    /// Gives up connecting after `timeout`. The host applies its own deadline as well.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.connect_timeout(timeout);
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        let url = self.url;
        if let Some(message) = self.invalid {
            return Err(HttpError {
                url,
                code: None,
                message,
            });
        }
        let response = self.inner.send().map_err(|err| HttpError::new(&url, err))?;
        let status = response.status_code();
        let headers = response.headers().clone();
        let body = response.body().map_err(|err| HttpError::new(&url, err))?;

        Ok(Response {
            url,
            status,
            headers,
            body,
        })
    }
}

/// A response, read in full.
#[derive(Debug)]
pub struct Response {
    url: String,
    status: u16,
    headers: waki::header::HeaderMap,
    body: Vec<u8>,
}

impl Response {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// A header's value, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }

    /// The body as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses the body as JSON; a body of another shape is an upstream failure.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ToolError> {
        serde_json::from_slice(&self.body).map_err(|err| {
            ToolError::upstream(format!("{} answered with unexpected JSON: {err}", self.url))
        })
    }

    /// Passes a 2xx response through and turns any other status into an upstream failure that
    /// quotes the start of the body, where APIs put their error message.
    pub fn success(self) -> Result<Self, ToolError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let text = self.text();
        let excerpt: String = text.chars().take(300).collect();
        Err(ToolError::upstream(format!(
            "{} answered HTTP {}: {excerpt}",
            self.url, self.status
        )))
    }
}

/// A request that could not be completed.
#[derive(Debug)]
pub struct HttpError {
    url: String,
    code: Option<ErrorCode>,
    message: String,
}

impl HttpError {
    fn new(url: &str, error: anyhow::Error) -> Self {
        let code = error.downcast_ref::<ErrorCode>().cloned();
        Self {
            url: url.to_owned(),
            message: format!("{error:#}"),
            code,
        }
    }

    /// Whether the host refused the request, because its host was not declared by the plugin.
    pub fn is_denied(&self) -> bool {
        matches!(self.code, Some(ErrorCode::HttpRequestDenied))
    }

    /// The `wasi:http` error code, when the failure came with one.
    pub fn code(&self) -> Option<&ErrorCode> {
        self.code.as_ref()
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_denied() {
            write!(f, "the host refused the request to {}", self.url)
        } else {
            write!(f, "the request to {} failed: {}", self.url, self.message)
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for ToolError {
    fn from(error: HttpError) -> Self {
        ToolError::upstream(error.to_string())
    }
}
