//! Requests to the provider's token and revocation endpoints, shaped the way it wants them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Map, Value};

use super::token_response::{TokenResponseError, TokenSet, parse_token_response};
use super::{OAuth, OAuthClient, OAuthError};
use crate::description::{ClientAuth, OAuthSpec, TokenRequestFormat};
use crate::egress::send_once_more_if_closed;

/// The largest token endpoint answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What is exchanged for tokens.
pub(super) enum Grant<'a> {
    /// An authorization code, with the PKCE verifier when PKCE is on.
    Code {
        code: &'a str,
        verifier: Option<&'a str>,
        redirect_uri: &'a str,
    },
    /// A refresh token.
    Refresh { refresh_token: &'a str },
}

impl OAuth {
    /// Asks the token endpoint for tokens.
    pub(super) async fn request_tokens(
        &self,
        spec: &OAuthSpec,
        client: &OAuthClient,
        grant: Grant<'_>,
    ) -> Result<TokenSet, OAuthError> {
        let mut params: Vec<(&str, &str)> = match &grant {
            Grant::Code {
                code,
                verifier,
                redirect_uri,
            } => {
                let mut params = vec![
                    ("grant_type", "authorization_code"),
                    ("code", *code),
                    ("redirect_uri", *redirect_uri),
                ];
                if let Some(verifier) = verifier {
                    params.push(("code_verifier", verifier));
                }
                params
            }
            Grant::Refresh { refresh_token } => {
                vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", *refresh_token),
                ]
            }
        };

        let request = self
            .egress
            .host_request(reqwest::Method::POST, &spec.token_url)
            .map_err(|reason| OAuthError::Transport(format!("the token URL is refused: {reason}")))?
            .header(ACCEPT, "application/json");
        let request = match spec.client_auth {
            ClientAuth::Basic => request.header(AUTHORIZATION, basic_auth(client)),
            ClientAuth::Form => {
                params.push(("client_id", &client.client_id));
                params.push(("client_secret", client.secret.expose()));
                request
            }
        };
        let request = match spec.token_request_format {
            TokenRequestFormat::Form => request
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form(&params)),
            TokenRequestFormat::Json => request
                .header(CONTENT_TYPE, "application/json")
                .body(json(&params)),
        };

        // Should the provider have read a repeated request after all, a spent refresh token
        // makes the second attempt fail with `invalid_grant`, where the first failure would
        // have led anyway.
        let response = send_once_more_if_closed(request, true)
            .await
            .map_err(|err| OAuthError::Transport(without_url(err)))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = read_capped(response).await?;

        parse_token_response(status, content_type.as_deref(), &body, &spec.token_path).map_err(
            |err| match err {
                TokenResponseError::InvalidGrant { .. } => OAuthError::InvalidGrant,
                other => OAuthError::Provider(other.to_string()),
            },
        )
    }

    /// Revokes a token at the provider (RFC 7009), if it declares a revocation endpoint.
    /// Failure is logged, not fatal: the host forgets the token either way.
    pub(super) async fn revoke(
        &self,
        spec: &OAuthSpec,
        client: &OAuthClient,
        token: &str,
        hint: &str,
    ) {
        let Some(url) = &spec.revocation_url else {
            return;
        };
        let mut params = vec![("token", token), ("token_type_hint", hint)];
        let request = match self.egress.host_request(reqwest::Method::POST, url) {
            Ok(request) => request,
            Err(reason) => {
                tracing::warn!(reason, "the revocation URL is refused");
                return;
            }
        };
        let request = match spec.client_auth {
            ClientAuth::Basic => request.header(AUTHORIZATION, basic_auth(client)),
            ClientAuth::Form => {
                params.push(("client_id", &client.client_id));
                params.push(("client_secret", client.secret.expose()));
                request
            }
        };
        let result = request
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form(&params))
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => tracing::warn!(
                status = response.status().as_u16(),
                "token revocation refused"
            ),
            Err(err) => tracing::warn!(error = %without_url(err), "token revocation failed"),
        }
    }
}

/// HTTP Basic as RFC 6749 §2.3.1 wants it: id and secret form-encoded first.
fn basic_auth(client: &OAuthClient) -> String {
    let encode =
        |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let pair = format!(
        "{}:{}",
        encode(&client.client_id),
        encode(client.secret.expose())
    );
    format!("Basic {}", STANDARD.encode(pair))
}

fn form(params: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

fn json(params: &[(&str, &str)]) -> String {
    let object: Map<String, Value> = params
        .iter()
        .map(|(name, value)| ((*name).to_owned(), Value::String((*value).to_owned())))
        .collect();
    Value::Object(object).to_string()
}

/// A client error's message without its URL, whose query could hold a code.
fn without_url(err: reqwest::Error) -> String {
    err.without_url().to_string()
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, OAuthError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| OAuthError::Transport(without_url(err)))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(OAuthError::Transport(
                "the token answer is too large".to_owned(),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::http::HeaderMap;
    use axum::routing::post;
    use cap_std::ambient_authority;
    use cap_std::fs::Dir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::EgressConfig;
    use crate::description::Description;
    use crate::egress::Egress;
    use crate::store::SledStore;
    use crate::vault::{Secret, Vault};

    /// What the token endpoint received.
    #[derive(Debug, Clone, Default)]
    struct Seen {
        headers: HeaderMap,
        body: String,
    }

    /// A token endpoint on loopback that records the request and answers `answer`.
    async fn token_endpoint(answer: &'static str) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = Router::new().route(
            "/token",
            post(move |headers: HeaderMap, body: String| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push(Seen { headers, body });
                    ([("content-type", "application/json")], answer)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{address}"), seen)
    }

    /// A token endpoint that reads the first request and closes its connection without an
    /// answer, as a server closing an idle keep-alive connection does, and answers on the next
    /// connection. Counts the connections.
    async fn endpoint_dropping_the_first_connection() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    let mut request = vec![0u8; 8192];
                    let _ = socket.read(&mut request).await;
                    if first {
                        return;
                    }
                    let body = r#"{"access_token":"at","token_type":"Bearer"}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        (format!("http://{address}"), connections)
    }

    fn spec(client_auth: &str, format: &str) -> OAuthSpec {
        let description = serde_json::json!({
            "description_version": 1, "id": "p", "name": "P", "version": "1", "description": "",
            "tools": [{"name": "t", "description": "T", "parameters": {"type": "object"}}],
            "oauth": {
                "authorization_url": "https://provider.test/auth",
                "token_url": "https://provider.test/token",
                "api_hosts": ["api.provider.test"],
                "client_auth": client_auth,
                "token_request_format": format
            }
        });
        Description::parse(&description.to_string())
            .unwrap()
            .oauth
            .unwrap()
    }

    fn oauth(endpoint: &str, dir: &std::path::Path) -> OAuth {
        let config = EgressConfig {
            overrides: vec![format!("https://provider.test={endpoint}").parse().unwrap()],
            ..EgressConfig::default()
        };
        let store = Arc::new(SledStore::open(&dir.join("store")).unwrap());
        let data = Dir::open_ambient_dir(dir, ambient_authority()).unwrap();
        let vault = Arc::new(Vault::open(&data, None).unwrap());
        let egress = Arc::new(Egress::new(&config).unwrap());
        let public = url::Url::parse("http://127.0.0.1:1").unwrap();
        OAuth::new(store, vault, egress, public, 600)
    }

    fn client() -> OAuthClient {
        OAuthClient {
            client_id: "client id".to_owned(),
            secret: Secret("s3cret+/=".to_owned()),
            approved: String::new(),
        }
    }

    async fn exchange(client_auth: &str, format: &str) -> Seen {
        let (endpoint, seen) =
            token_endpoint(r#"{"access_token":"at","token_type":"Bearer","expires_in":60}"#).await;
        let dir = tempfile::tempdir().unwrap();
        let oauth = oauth(&endpoint, dir.path());
        let grant = Grant::Code {
            code: "the-code",
            verifier: Some("the-verifier"),
            redirect_uri: "http://127.0.0.1:1/oauth/callback",
        };
        let tokens = oauth
            .request_tokens(&spec(client_auth, format), &client(), grant)
            .await
            .unwrap();
        assert_eq!(tokens.access_token, "at");
        seen.lock().unwrap()[0].clone()
    }

    #[tokio::test]
    async fn a_connection_closed_before_any_answer_is_retried_once() {
        let (endpoint, connections) = endpoint_dropping_the_first_connection().await;
        let dir = tempfile::tempdir().unwrap();
        let oauth = oauth(&endpoint, dir.path());
        let grant = Grant::Refresh {
            refresh_token: "rt",
        };

        let tokens = oauth
            .request_tokens(&spec("basic", "form"), &client(), grant)
            .await
            .unwrap();

        assert_eq!(tokens.access_token, "at");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn basic_client_authentication_sends_the_secret_only_in_the_header() {
        let seen = exchange("basic", "form").await;
        let expected = STANDARD.encode("client+id:s3cret%2B%2F%3D");
        assert_eq!(seen.headers["authorization"], format!("Basic {expected}"));
        assert!(!seen.body.contains("client_secret"), "{}", seen.body);
        assert!(!seen.body.contains("client_id"), "{}", seen.body);
        assert_eq!(
            seen.headers["content-type"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(seen.headers["accept"], "application/json");
        let form: Vec<(String, String)> = url::form_urlencoded::parse(seen.body.as_bytes())
            .into_owned()
            .collect();
        for pair in [
            ("grant_type", "authorization_code"),
            ("code", "the-code"),
            ("code_verifier", "the-verifier"),
            ("redirect_uri", "http://127.0.0.1:1/oauth/callback"),
        ] {
            assert!(
                form.contains(&(pair.0.to_owned(), pair.1.to_owned())),
                "{form:?}"
            );
        }
    }

    #[tokio::test]
    async fn form_client_authentication_sends_the_secret_only_in_the_body() {
        let seen = exchange("form", "form").await;
        assert!(seen.headers.get("authorization").is_none());
        let form: Vec<(String, String)> = url::form_urlencoded::parse(seen.body.as_bytes())
            .into_owned()
            .collect();
        assert!(form.contains(&("client_id".to_owned(), "client id".to_owned())));
        assert!(form.contains(&("client_secret".to_owned(), "s3cret+/=".to_owned())));
    }

    #[tokio::test]
    async fn json_token_requests_send_a_json_body() {
        let seen = exchange("form", "json").await;
        assert_eq!(seen.headers["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
        assert_eq!(body["grant_type"], "authorization_code");
        assert_eq!(body["code_verifier"], "the-verifier");
        assert_eq!(body["client_secret"], "s3cret+/=");
    }
}
