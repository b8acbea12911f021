//! The command-line client: talks to a running server over its HTTP API.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use url::Url;

/// A failed client command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach the server at {url}: {source}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("{status}: {code}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error code.
        code: String,
        /// The error message.
        message: String,
        /// The whole error body.
        body: Value,
    },
    /// A credential the command needs was not given.
    #[error("set {0}")]
    MissingCredential(&'static str),
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An argument is malformed.
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// The fields of an API error beyond its code and message (such as the list of argument
    /// problems), pretty-printed, if there are any.
    pub fn details(&self) -> Option<String> {
        let Self::Api { body, .. } = self else {
            return None;
        };
        let mut error = body.get("error")?.as_object()?.clone();
        error.remove("code");
        error.remove("message");
        if error.is_empty() {
            return None;
        }
        serde_json::to_string_pretty(&error).ok()
    }
}

/// A client of one server.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    admin_token: Option<String>,
    api_key: Option<String>,
}

enum Credential {
    Admin,
    ApiKey,
}

impl Client {
    /// A client of the server at `base`, with the credentials it has.
    pub fn new(base: Url, admin_token: Option<String>, api_key: Option<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base,
            admin_token,
            api_key,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        credential: Credential,
        body: Option<reqwest::Body>,
    ) -> Result<Value, ClientError> {
        let token = match credential {
            Credential::Admin => {
                self.admin_token
                    .as_deref()
                    .ok_or(ClientError::MissingCredential(
                        "KEYHOLE_ADMIN_TOKEN (or --admin-token)",
                    ))?
            }
            Credential::ApiKey => self
                .api_key
                .as_deref()
                .ok_or(ClientError::MissingCredential(
                    "KEYHOLE_API_KEY (or --api-key)",
                ))?,
        };
        let url = self
            .base
            .join(path)
            .map_err(|err| ClientError::Usage(err.to_string()))?;
        let unreachable = |source| ClientError::Unreachable {
            url: self.base.to_string(),
            source,
        };

        let mut request = self.http.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };

        if status.is_success() {
            return Ok(body);
        }
        Err(ClientError::Api {
            status,
            code: body["error"]["code"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            message: body["error"]["message"].as_str().unwrap_or("").to_owned(),
            body,
        })
    }

    async fn send_json(
        &self,
        method: Method,
        path: &str,
        credential: Credential,
        body: &Value,
    ) -> Result<Value, ClientError> {
        self.send(method, path, credential, Some(body.to_string().into()))
            .await
    }

    /// Uploads a plugin.
    pub async fn install_plugin(&self, file: &Path) -> Result<Value, ClientError> {
        let wasm = tokio::fs::read(file)
            .await
            .map_err(|source| ClientError::File {
                path: file.display().to_string(),
                source,
            })?;
        self.send(
            Method::POST,
            "admin/plugins",
            Credential::Admin,
            Some(wasm.into()),
        )
        .await
    }

    /// Lists the installed plugins.
    pub async fn plugins(&self) -> Result<Value, ClientError> {
        self.send(Method::GET, "admin/plugins", Credential::Admin, None)
            .await
    }

    /// Shows one plugin.
    pub async fn plugin(&self, id: &str) -> Result<Value, ClientError> {
        self.send(
            Method::GET,
            &format!("admin/plugins/{id}"),
            Credential::Admin,
            None,
        )
        .await
    }

    /// Uninstalls a plugin.
    pub async fn delete_plugin(&self, id: &str) -> Result<Value, ClientError> {
        self.send(
            Method::DELETE,
            &format!("admin/plugins/{id}"),
            Credential::Admin,
            None,
        )
        .await
    }

    /// Changes some settings of a plugin, keeping the others: `NAME=VALUE` sets one, `NAME=`
    /// unsets it.
    pub async fn update_settings(
        &self,
        id: &str,
        changes: &[String],
    ) -> Result<Value, ClientError> {
        let mut settings = serde_json::Map::new();
        for change in changes {
            let (name, value) = change
                .split_once('=')
                .ok_or_else(|| ClientError::Usage(format!("`{change}` is not NAME=VALUE")))?;
            let value = if value.is_empty() {
                Value::Null
            } else {
                json!(value)
            };
            settings.insert(name.to_owned(), value);
        }
        self.send_json(
            Method::PUT,
            &format!("admin/plugins/{id}/settings"),
            Credential::Admin,
            &Value::Object(settings),
        )
        .await
    }

    /// Creates an API key.
    pub async fn create_api_key(&self, tenant: &str) -> Result<Value, ClientError> {
        self.send_json(
            Method::POST,
            "admin/api-keys",
            Credential::Admin,
            &json!({"tenant": tenant}),
        )
        .await
    }

    /// Lists API keys.
    pub async fn api_keys(&self) -> Result<Value, ClientError> {
        self.send(Method::GET, "admin/api-keys", Credential::Admin, None)
            .await
    }

    /// Revokes an API key.
    pub async fn delete_api_key(&self, key_id: &str) -> Result<Value, ClientError> {
        self.send(
            Method::DELETE,
            &format!("admin/api-keys/{key_id}"),
            Credential::Admin,
            None,
        )
        .await
    }

    /// Lists the tools as a chat backend sees them.
    pub async fn tools(&self) -> Result<Value, ClientError> {
        self.send(Method::GET, "v1/tools", Credential::ApiKey, None)
            .await
    }

    /// Sets a plugin's OAuth client.
    pub async fn set_oauth_client(
        &self,
        plugin: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Value, ClientError> {
        self.send_json(
            Method::PUT,
            &format!("admin/plugins/{plugin}/oauth-client"),
            Credential::Admin,
            &json!({"client_id": client_id, "client_secret": client_secret}),
        )
        .await
    }

    /// A user's connections.
    pub async fn connections(&self, user: &str) -> Result<Value, ClientError> {
        self.send(
            Method::GET,
            &format!("v1/users/{}/connections", encode(user)),
            Credential::ApiKey,
            None,
        )
        .await
    }

    /// Disconnects a user from a plugin.
    pub async fn disconnect(&self, user: &str, plugin: &str) -> Result<Value, ClientError> {
        self.send(
            Method::DELETE,
            &format!("v1/users/{}/connections/{plugin}", encode(user)),
            Credential::ApiKey,
            None,
        )
        .await
    }

    /// Invokes a tool; when the user must authorize first, prints the link on stderr, waits
    /// until the user has connected (at most `wait`), and tries once more. This is the
    /// single-user flow, where whoever runs the command is also the one who authorizes.
    pub async fn invoke_waiting(
        &self,
        plugin: &str,
        tool: &str,
        user: &str,
        arguments: &str,
        wait: Duration,
    ) -> Result<Value, ClientError> {
        let first = self.invoke(plugin, tool, user, arguments).await;
        let Err(ClientError::Api { code, body, .. }) = &first else {
            return first;
        };
        let Some(link) = body["error"]["authorize_url"].as_str() else {
            return first;
        };
        if code != "authorization_required" {
            return first;
        }

        eprintln!(
            "Authorization needed. Open this link in a browser to connect the account:\n{link}"
        );
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let connected = self.connections(user).await?["connections"]
                .as_array()
                .is_some_and(|all| all.iter().any(|c| c["plugin"] == plugin));
            if connected {
                eprintln!("Connected.");
                return self.invoke(plugin, tool, user, arguments).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Usage(
                    "gave up waiting for the authorization".to_owned(),
                ));
            }
        }
    }

    /// Invokes a tool for a user.
    pub async fn invoke(
        &self,
        plugin: &str,
        tool: &str,
        user: &str,
        arguments: &str,
    ) -> Result<Value, ClientError> {
        let arguments: Value = serde_json::from_str(arguments)
            .map_err(|err| ClientError::Usage(format!("--args is not JSON: {err}")))?;
        self.send_json(
            Method::POST,
            &format!("v1/plugins/{plugin}/tools/{tool}/invoke"),
            Credential::ApiKey,
            &json!({"user": user, "arguments": arguments}),
        )
        .await
    }
}

/// Percent-encodes a path segment: user names are chosen by chat backends.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
