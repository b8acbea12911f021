//! The admin's OAuth client for a plugin: its id, its sealed secret, and what the admin approved.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::{OAuth, OAuthError};
use crate::description::OAuthSpec;
use crate::store::Space;
use crate::time::now_unix;
use crate::vault::Secret;

/// A plugin's OAuth client, secret unsealed.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    /// The client id, public.
    pub client_id: String,
    /// The client secret; never leaves the host except to the token endpoint.
    pub secret: Secret,
    /// The [`OAuthSpec::approval_fingerprint`] the admin approved by setting the client.
    pub approved: String,
}

impl OAuthClient {
    /// Whether the client may be used with this version of the plugin: the admin approved
    /// exactly these endpoints, hosts and scopes.
    pub fn is_active(&self, spec: &OAuthSpec) -> bool {
        self.approved == spec.approval_fingerprint()
    }
}

#[derive(Serialize, Deserialize)]
struct ClientRecord {
    client_id: String,
    /// The secret, sealed, in base64.
    secret: String,
    approved: String,
    set_at: u64,
}

fn record_key(plugin: &str) -> String {
    format!("oauth-client\n{plugin}")
}

impl OAuth {
    /// Sets a plugin's client, approving what the plugin declares now.
    pub fn set_client(
        &self,
        plugin: &str,
        spec: &OAuthSpec,
        client_id: &str,
        secret: &Secret,
    ) -> Result<(), OAuthError> {
        let sealed = self
            .vault
            .seal(&record_key(plugin), secret.expose().as_bytes());
        let record = ClientRecord {
            client_id: client_id.to_owned(),
            secret: STANDARD.encode(sealed),
            approved: spec.approval_fingerprint(),
            set_at: now_unix(),
        };
        let bytes = serde_json::to_vec(&record).expect("records serialize");
        self.store.put(Space::OAuthClients, plugin, &bytes)?;
        Ok(())
    }

    /// A plugin's client, if the admin set one.
    pub fn client(&self, plugin: &str) -> Result<Option<OAuthClient>, OAuthError> {
        let Some(bytes) = self.store.get(Space::OAuthClients, plugin)? else {
            return Ok(None);
        };
        let corrupt = |reason: &str| crate::store::StoreError::Corrupt {
            key: format!("oauth_clients/{plugin}"),
            reason: reason.to_owned(),
        };
        let record: ClientRecord =
            serde_json::from_slice(&bytes).map_err(|_| corrupt("not a client record"))?;
        let sealed = STANDARD
            .decode(&record.secret)
            .map_err(|_| corrupt("the secret is not base64"))?;
        let secret = self.vault.unseal(&record_key(plugin), &sealed)?;
        let secret = String::from_utf8(secret).map_err(|_| corrupt("the secret is not UTF-8"))?;
        Ok(Some(OAuthClient {
            client_id: record.client_id,
            secret: Secret(secret),
            approved: record.approved,
        }))
    }

    /// Removes a plugin's client; answers whether there was one.
    pub fn delete_client(&self, plugin: &str) -> Result<bool, OAuthError> {
        Ok(self.store.take(Space::OAuthClients, plugin)?.is_some())
    }
}
