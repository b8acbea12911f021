//! A user's connection to a plugin's provider: sealed tokens, refreshed when due.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::token_request::Grant;
use super::token_response::TokenSet;
use super::{OAuth, OAuthClient, OAuthError};
use crate::description::OAuthSpec;
use crate::store::Space;
use crate::time::now_unix;
use crate::vault::Secret;

/// Refresh a token this many seconds before it expires, so that a call never starts with a
/// token that dies in the middle of it.
const REFRESH_MARGIN_SECS: u64 = 60;

/// Whose connection: a user of a tenant, to a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRef {
    /// The plugin's id.
    pub plugin: String,
    /// The tenant of the API key that names the user.
    pub tenant: String,
    /// The end user, as the chat backend names them.
    pub user: String,
}

impl ConnectionRef {
    /// The record's key. Plugin ids and tenants cannot hold a newline, and user names hold no
    /// control characters, so the key is unambiguous.
    fn key(&self) -> String {
        format!("{}\n{}\n{}", self.plugin, self.tenant, self.user)
    }
}

/// What a chat backend may see of a connection: no tokens.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    /// The plugin's id.
    pub plugin: String,
    /// When the user authorized, Unix seconds.
    pub connected_at: u64,
    /// When the current access token expires, Unix seconds, if known.
    pub expires_at: Option<u64>,
    /// The scopes the provider granted, as it wrote them.
    pub scopes: Option<String>,
}

/// The sealed record.
#[derive(Serialize, Deserialize)]
struct Connection {
    access_token: String,
    refresh_token: Option<String>,
    expires_at: Option<u64>,
    scope: Option<String>,
    connected_at: u64,
}

impl Connection {
    fn from_tokens(tokens: TokenSet, previous: Option<&Connection>) -> Self {
        let now = now_unix();
        Self {
            access_token: tokens.access_token,
            // A refresh answer without a refresh token means: keep using the old one.
            refresh_token: tokens
                .refresh_token
                .or_else(|| previous.and_then(|p| p.refresh_token.clone())),
            expires_at: tokens.expires_in.map(|seconds| now.saturating_add(seconds)),
            scope: tokens
                .scope
                .or_else(|| previous.and_then(|p| p.scope.clone())),
            connected_at: previous.map_or(now, |p| p.connected_at),
        }
    }

    fn is_due(&self) -> bool {
        self.expires_at
            .is_some_and(|expires| expires <= now_unix() + REFRESH_MARGIN_SECS)
    }
}

impl OAuth {
    fn load(&self, who: &ConnectionRef) -> Result<Option<Connection>, OAuthError> {
        let key = who.key();
        let Some(sealed) = self.store.get(Space::Connections, &key)? else {
            return Ok(None);
        };
        let json = self.vault.unseal(&key, &sealed)?;
        let connection =
            serde_json::from_slice(&json).map_err(|_| crate::store::StoreError::Corrupt {
                key: "connections/…".to_owned(),
                reason: "not a connection record".to_owned(),
            })?;
        Ok(Some(connection))
    }

    fn save(&self, who: &ConnectionRef, connection: &Connection) -> Result<(), OAuthError> {
        let key = who.key();
        let json = serde_json::to_vec(connection).expect("records serialize");
        self.store
            .put(Space::Connections, &key, &self.vault.seal(&key, &json))?;
        Ok(())
    }

    /// Stores the tokens of a completed authorization.
    pub(super) fn connect(&self, who: &ConnectionRef, tokens: TokenSet) -> Result<(), OAuthError> {
        self.save(who, &Connection::from_tokens(tokens, None))
    }

    /// Whether the user has a connection to the plugin.
    pub fn is_connected(&self, who: &ConnectionRef) -> Result<bool, OAuthError> {
        Ok(self.store.get(Space::Connections, &who.key())?.is_some())
    }

    /// The user's access token, refreshed first when it expires within a minute; `None` when
    /// the user has not authorized, or the authorization is gone (the connection is then
    /// deleted).
    pub async fn access_token(
        &self,
        who: &ConnectionRef,
        spec: &OAuthSpec,
        client: &OAuthClient,
    ) -> Result<Option<Secret>, OAuthError> {
        match self.load(who)? {
            None => Ok(None),
            Some(connection) if !connection.is_due() => Ok(Some(Secret(connection.access_token))),
            Some(_) => self.refresh(who, spec, client, None).await,
        }
    }

    /// Refreshes after the provider's API refused `stale` with 401. If another call has
    /// refreshed meanwhile, its token is answered without a second refresh.
    pub async fn refresh_after_unauthorized(
        &self,
        who: &ConnectionRef,
        spec: &OAuthSpec,
        client: &OAuthClient,
        stale: &str,
    ) -> Result<Option<Secret>, OAuthError> {
        self.refresh(who, spec, client, Some(stale)).await
    }

    /// Refreshes under the connection's lock; whoever waited on the lock finds the new token
    /// and uses it. The new tokens are stored before anyone uses them.
    async fn refresh(
        &self,
        who: &ConnectionRef,
        spec: &OAuthSpec,
        client: &OAuthClient,
        stale: Option<&str>,
    ) -> Result<Option<Secret>, OAuthError> {
        let lock = self.lock_for(who);
        let _guard = lock.lock().await;

        let Some(current) = self.load(who)? else {
            return Ok(None);
        };
        let still_needed = match stale {
            Some(stale) => current.access_token == stale,
            None => current.is_due(),
        };
        if !still_needed {
            return Ok(Some(Secret(current.access_token)));
        }
        let Some(refresh_token) = current.refresh_token.as_deref() else {
            tracing::info!(plugin = %who.plugin, tenant = %who.tenant, "token expired without a refresh token; authorization required");
            self.forget(who)?;
            return Ok(None);
        };

        match self
            .request_tokens(spec, client, Grant::Refresh { refresh_token })
            .await
        {
            Ok(tokens) => {
                let renewed = Connection::from_tokens(tokens, Some(&current));
                self.save(who, &renewed)?;
                tracing::info!(plugin = %who.plugin, tenant = %who.tenant, "token refreshed");
                Ok(Some(Secret(renewed.access_token)))
            }
            Err(OAuthError::InvalidGrant) => {
                tracing::info!(plugin = %who.plugin, tenant = %who.tenant, "refresh refused (invalid_grant); connection deleted");
                self.forget(who)?;
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    fn lock_for(&self, who: &ConnectionRef) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.refreshing.lock().expect("refresh lock table");
        // Drop locks nobody holds, so that the table does not grow with every user ever seen.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(who.key()).or_default().clone()
    }

    fn forget(&self, who: &ConnectionRef) -> Result<bool, OAuthError> {
        Ok(self.store.take(Space::Connections, &who.key())?.is_some())
    }

    /// The user's connections among `plugins`, without tokens.
    pub fn connections_of(
        &self,
        tenant: &str,
        user: &str,
        plugins: &[String],
    ) -> Result<Vec<ConnectionView>, OAuthError> {
        let mut views = Vec::new();
        for plugin in plugins {
            let who = ConnectionRef {
                plugin: plugin.clone(),
                tenant: tenant.to_owned(),
                user: user.to_owned(),
            };
            if let Some(connection) = self.load(&who)? {
                views.push(ConnectionView {
                    plugin: plugin.clone(),
                    connected_at: connection.connected_at,
                    expires_at: connection.expires_at,
                    scopes: connection.scope,
                });
            }
        }
        Ok(views)
    }

    /// Deletes a connection, revoking its token at the provider first when possible; answers
    /// whether there was one.
    pub async fn disconnect(
        &self,
        who: &ConnectionRef,
        spec: Option<&OAuthSpec>,
        client: Option<&OAuthClient>,
    ) -> Result<bool, OAuthError> {
        let Some(connection) = self.load(who)? else {
            return Ok(false);
        };
        if let (Some(spec), Some(client)) = (spec, client) {
            match &connection.refresh_token {
                Some(refresh) => self.revoke(spec, client, refresh, "refresh_token").await,
                None => {
                    self.revoke(spec, client, &connection.access_token, "access_token")
                        .await
                }
            }
        }
        self.forget(who)
    }

    /// Drops every user's connection to a plugin.
    pub fn drop_connections(&self, plugin: &str) -> Result<usize, OAuthError> {
        Ok(self
            .store
            .remove_prefix(Space::Connections, &format!("{plugin}\n"))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(access: &str, refresh: Option<&str>, scope: Option<&str>) -> TokenSet {
        TokenSet {
            access_token: access.to_owned(),
            refresh_token: refresh.map(str::to_owned),
            expires_in: Some(3600),
            scope: scope.map(str::to_owned),
        }
    }

    #[test]
    fn a_refresh_answer_without_a_refresh_token_keeps_the_old_one() {
        let first = Connection::from_tokens(tokens("a1", Some("r1"), Some("read")), None);

        let refreshed = Connection::from_tokens(tokens("a2", None, None), Some(&first));

        assert_eq!(refreshed.access_token, "a2");
        assert_eq!(refreshed.refresh_token.as_deref(), Some("r1"));
        assert_eq!(refreshed.scope.as_deref(), Some("read"));
        assert_eq!(refreshed.connected_at, first.connected_at);
    }

    #[test]
    fn a_rotated_refresh_token_replaces_the_old_one() {
        let first = Connection::from_tokens(tokens("a1", Some("r1"), None), None);

        let refreshed = Connection::from_tokens(tokens("a2", Some("r2"), None), Some(&first));

        assert_eq!(refreshed.refresh_token.as_deref(), Some("r2"));
    }

    #[test]
    fn a_token_is_due_a_minute_before_it_expires_and_never_without_an_expiry() {
        let mut connection = Connection::from_tokens(tokens("a", None, None), None);
        assert!(!connection.is_due());

        connection.expires_at = Some(now_unix() + REFRESH_MARGIN_SECS - 1);
        assert!(connection.is_due());

        connection.expires_at = None;
        assert!(!connection.is_due());
    }
}
