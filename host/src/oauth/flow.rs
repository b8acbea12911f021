//! The end user's authorization: a link, the browser's trip to the provider, the callback.
//!
//! 1. A call that needs authorization hands out a link, `/oauth/authorize/{link}`, bound to the
//!    tenant, the user and the plugin; it works once and expires.
//! 2. Opening it starts the authorization code flow: a fresh `state` and PKCE verifier are
//!    sealed in the store, the browser gets a random cookie (whose hash the flow keeps) and is
//!    sent to the provider.
//! 3. The callback takes the flow by its `state`, once, checks it has not expired and that the
//!    browser holds the cookie that started it (so nobody can make a victim's browser connect the
//!    attacker's account, or finish a flow started elsewhere), and exchanges the code.
//!
//! Links and states are stored by their SHA-256 only.

use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::token_request::Grant;
use super::{ConnectionRef, OAuth, OAuthClient, OAuthError};
use crate::description::OAuthSpec;
use crate::store::Space;
use crate::time::now_unix;

/// Why a link or a callback was refused. Every variant is safe to show the user.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The link is unknown, used or expired.
    #[error("this authorization link has expired or was already used; ask for a new one")]
    LinkGone,
    /// The callback's state is unknown, used or expired.
    #[error(
        "this authorization is unknown, already finished or expired; start again from the chat"
    )]
    StateGone,
    /// The browser does not hold the cookie of the flow.
    #[error(
        "this authorization was started in another browser; start again from the chat in this one"
    )]
    WrongBrowser,
    /// The callback lacks a parameter.
    #[error("the provider sent the browser back without `{0}`")]
    Missing(&'static str),
    /// The provider reported an error, or the user declined.
    #[error("the provider did not authorize: {0}")]
    Denied(String),
    /// The plugin is gone or has no usable OAuth client any more.
    #[error("this plugin can no longer be authorized; ask an admin")]
    NotConfigured,
    /// Exchanging the code failed.
    #[error(transparent)]
    OAuth(#[from] OAuthError),
}

/// A link handed out to a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkRecord {
    /// Whose authorization it starts.
    pub plugin: String,
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user: String,
    expires_at: u64,
}

/// A flow under way, sealed in the store.
#[derive(Debug, Serialize, Deserialize)]
pub struct PendingFlow {
    /// The plugin, tenant and user.
    pub plugin: String,
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user: String,
    verifier: Option<String>,
    browser_sha256: String,
    expires_at: u64,
}

impl PendingFlow {
    /// Whose connection the flow makes.
    pub fn who(&self) -> ConnectionRef {
        ConnectionRef {
            plugin: self.plugin.clone(),
            tenant: self.tenant.clone(),
            user: self.user.clone(),
        }
    }
}

/// Where to send the browser, and the cookie to give it.
pub struct Started {
    /// The provider's authorization URL with every parameter.
    pub redirect_to: String,
    /// The name of the flow's cookie: see [`flow_cookie_name`].
    pub cookie_name: String,
    /// The value of the flow's cookie.
    pub cookie: String,
}

/// The name of the cookie that binds the flow of `state` to its browser. Each flow has its own,
/// derived from its state, so that a browser can have several authorizations under way (two
/// links opened one after the other) without the second overwriting the first one's cookie.
pub fn flow_cookie_name(state: &str) -> String {
    format!("keyhole_oauth_{}", &sha256_hex(state)[..16])
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The record of a stored link, unless it is missing or expired.
fn live_link(bytes: Option<Vec<u8>>) -> Result<LinkRecord, FlowError> {
    let bytes = bytes.ok_or(FlowError::LinkGone)?;
    let record: LinkRecord = serde_json::from_slice(&bytes).map_err(|_| FlowError::LinkGone)?;
    if record.expires_at <= now_unix() {
        return Err(FlowError::LinkGone);
    }
    Ok(record)
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl OAuth {
    /// Hands out a single-use link that starts the user's authorization.
    pub fn authorization_link(&self, who: &ConnectionRef) -> Result<String, OAuthError> {
        let link = random_token();
        let record = LinkRecord {
            plugin: who.plugin.clone(),
            tenant: who.tenant.clone(),
            user: who.user.clone(),
            expires_at: now_unix().saturating_add(self.flow_ttl_secs),
        };
        let bytes = serde_json::to_vec(&record).expect("records serialize");
        self.store.put(Space::Links, &sha256_hex(&link), &bytes)?;
        Ok(self.url(&format!("oauth/authorize/{link}")))
    }

    /// Whose authorization a link starts, leaving it usable: a link that cannot start a flow
    /// yet (the admin has not set the client) is not used up by trying.
    pub fn peek_link(&self, link: &str) -> Result<LinkRecord, FlowError> {
        let bytes = self
            .store
            .get(Space::Links, &sha256_hex(link))
            .map_err(OAuthError::from)?;
        live_link(bytes)
    }

    /// Takes a link, once: answers whose authorization it starts.
    pub fn open_link(&self, link: &str) -> Result<LinkRecord, FlowError> {
        let bytes = self
            .store
            .take(Space::Links, &sha256_hex(link))
            .map_err(OAuthError::from)?;
        live_link(bytes)
    }

    /// Starts the flow for an opened link: the provider's URL and the browser's cookie.
    pub fn begin(
        &self,
        link: &LinkRecord,
        spec: &OAuthSpec,
        client: &OAuthClient,
    ) -> Result<Started, FlowError> {
        let cookie = random_token();
        let invalid = |_| FlowError::NotConfigured;
        let oauth_client = oauth2::basic::BasicClient::new(ClientId::new(client.client_id.clone()))
            .set_auth_uri(AuthUrl::new(spec.authorization_url.clone()).map_err(invalid)?)
            .set_redirect_uri(RedirectUrl::new(self.redirect_uri()).map_err(invalid)?);

        let mut request = oauth_client.authorize_url(CsrfToken::new_random);
        if !spec.scopes.is_empty() {
            // oauth2 joins scopes with spaces; one scope holding the provider's separator
            // gives the joined string the provider expects.
            request = request.add_scope(Scope::new(spec.scopes.join(&spec.scope_separator)));
        }
        for (name, value) in &spec.authorization_params {
            request = request.add_extra_param(name, value);
        }
        let mut verifier = None;
        if spec.pkce {
            let (challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
            request = request.set_pkce_challenge(challenge);
            verifier = Some(pkce_verifier.secret().clone());
        }
        let (url, state) = request.url();

        let flow = PendingFlow {
            plugin: link.plugin.clone(),
            tenant: link.tenant.clone(),
            user: link.user.clone(),
            verifier,
            browser_sha256: sha256_hex(&cookie),
            expires_at: now_unix().saturating_add(self.flow_ttl_secs),
        };
        let key = sha256_hex(state.secret());
        let json = serde_json::to_vec(&flow).expect("records serialize");
        self.store
            .put(Space::Flows, &key, &self.vault.seal(&key, &json))
            .map_err(OAuthError::from)?;

        Ok(Started {
            redirect_to: url.to_string(),
            cookie_name: flow_cookie_name(state.secret()),
            cookie,
        })
    }

    /// Takes the flow of a callback's `state`, once, and checks its browser and age.
    pub fn take_flow(&self, state: &str, cookie: Option<&str>) -> Result<PendingFlow, FlowError> {
        let key = sha256_hex(state);
        let sealed = self
            .store
            .take(Space::Flows, &key)
            .map_err(OAuthError::from)?
            .ok_or(FlowError::StateGone)?;
        let json = self.vault.unseal(&key, &sealed).map_err(OAuthError::from)?;
        let flow: PendingFlow = serde_json::from_slice(&json).map_err(|_| FlowError::StateGone)?;
        if flow.expires_at <= now_unix() {
            return Err(FlowError::StateGone);
        }

        let presented = sha256_hex(cookie.unwrap_or_default());
        let same_browser: bool = presented
            .as_bytes()
            .ct_eq(flow.browser_sha256.as_bytes())
            .into();
        if cookie.is_none() || !same_browser {
            return Err(FlowError::WrongBrowser);
        }
        Ok(flow)
    }

    /// Removes the links and flows past their lifetime, which nobody can use any more, and
    /// answers how many. Links handed out but never opened would otherwise stay forever.
    pub fn sweep_expired(&self) -> Result<usize, OAuthError> {
        let now = now_unix();
        let mut removed = 0;
        for (key, bytes) in self.store.scan(Space::Links, "")? {
            let expired = serde_json::from_slice::<LinkRecord>(&bytes)
                .map_or(true, |link| link.expires_at <= now);
            if expired && self.store.take(Space::Links, &key)?.is_some() {
                removed += 1;
            }
        }
        for (key, sealed) in self.store.scan(Space::Flows, "")? {
            let expired = self
                .vault
                .unseal(&key, &sealed)
                .ok()
                .and_then(|json| serde_json::from_slice::<PendingFlow>(&json).ok())
                .is_none_or(|flow| flow.expires_at <= now);
            if expired && self.store.take(Space::Flows, &key)?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Exchanges the callback's code and stores the user's tokens.
    pub async fn complete(
        &self,
        flow: &PendingFlow,
        spec: &OAuthSpec,
        client: &OAuthClient,
        code: &str,
    ) -> Result<(), FlowError> {
        let redirect_uri = self.redirect_uri();
        let grant = Grant::Code {
            code,
            verifier: flow.verifier.as_deref(),
            redirect_uri: &redirect_uri,
        };
        let tokens = self.request_tokens(spec, client, grant).await?;
        self.connect(&flow.who(), tokens)?;
        tracing::info!(plugin = %flow.plugin, tenant = %flow.tenant, user = %flow.user, "user connected");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use cap_std::ambient_authority;
    use cap_std::fs::Dir;

    use super::*;
    use crate::config::EgressConfig;
    use crate::description::Description;
    use crate::egress::Egress;
    use crate::store::SledStore;
    use crate::vault::{Secret, Vault};

    fn spec(extra: serde_json::Value) -> OAuthSpec {
        let mut oauth = serde_json::json!({
            "authorization_url": "https://provider.test/authorize",
            "token_url": "https://provider.test/token",
            "api_hosts": ["api.provider.test"],
            "scopes": ["chat:write", "users:read"]
        });
        for (name, value) in extra.as_object().unwrap() {
            oauth[name] = value.clone();
        }
        let description = serde_json::json!({
            "description_version": 1, "id": "p", "name": "P", "version": "1", "description": "",
            "tools": [{"name": "t", "description": "T", "parameters": {"type": "object"}}],
            "oauth": oauth
        });
        Description::parse(&description.to_string())
            .unwrap()
            .oauth
            .unwrap()
    }

    /// The OAuth side over a fresh store, with links and flows living `ttl` seconds.
    fn oauth(dir: &tempfile::TempDir, ttl: u64) -> OAuth {
        let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
        let data = Dir::open_ambient_dir(dir.path(), ambient_authority()).unwrap();
        let vault = Arc::new(Vault::open(&data, None).unwrap());
        let egress = Arc::new(Egress::new(&EgressConfig::default()).unwrap());
        let public = url::Url::parse("https://keyhole.example").unwrap();
        OAuth::new(store, vault, egress, public, ttl)
    }

    fn client() -> OAuthClient {
        OAuthClient {
            client_id: "the-client".into(),
            secret: Secret("never in a URL".into()),
            approved: String::new(),
        }
    }

    fn alice() -> ConnectionRef {
        ConnectionRef {
            plugin: "p".into(),
            tenant: "acme".into(),
            user: "alice".into(),
        }
    }

    /// Begins a flow and answers the query of the provider's URL, and the stored flow.
    fn begin(spec: &OAuthSpec) -> (HashMap<String, String>, PendingFlow) {
        let dir = tempfile::tempdir().unwrap();
        let oauth = oauth(&dir, 600);
        let link = LinkRecord {
            plugin: "p".into(),
            tenant: "acme".into(),
            user: "alice".into(),
            expires_at: now_unix() + 600,
        };
        let started = oauth.begin(&link, spec, &client()).unwrap();
        let url = url::Url::parse(&started.redirect_to).unwrap();
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        let flow = oauth
            .take_flow(&query["state"], Some(&started.cookie))
            .unwrap();
        (query, flow)
    }

    #[test]
    fn the_authorization_url_carries_pkce_state_scopes_and_no_secret() {
        let (query, flow) = begin(&spec(serde_json::json!({})));

        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], "the-client");
        assert_eq!(
            query["redirect_uri"],
            "https://keyhole.example/oauth/callback"
        );
        assert_eq!(query["scope"], "chat:write users:read");
        assert_eq!(query["code_challenge_method"], "S256");
        let verifier = flow.verifier.expect("a PKCE verifier is kept");
        let challenge = oauth2::PkceCodeChallenge::from_code_verifier_sha256(
            &oauth2::PkceCodeVerifier::new(verifier),
        );
        assert_eq!(&query["code_challenge"], challenge.as_str());
        assert!(query["state"].len() >= 16);
        assert!(!query.values().any(|v| v.contains("never in a URL")));
    }

    #[test]
    fn scopes_are_joined_with_the_providers_separator_and_extra_params_added() {
        let spec = spec(serde_json::json!({
            "scope_separator": ",",
            "authorization_params": {"access_type": "offline", "prompt": "consent"}
        }));
        let (query, _) = begin(&spec);

        assert_eq!(query["scope"], "chat:write,users:read");
        assert_eq!(query["access_type"], "offline");
        assert_eq!(query["prompt"], "consent");
    }

    #[test]
    fn a_provider_without_pkce_gets_no_challenge_and_the_exchange_no_verifier() {
        let (query, flow) = begin(&spec(serde_json::json!({"pkce": false})));

        assert!(!query.contains_key("code_challenge"), "{query:?}");
        assert!(!query.contains_key("code_challenge_method"), "{query:?}");
        assert_eq!(flow.verifier, None);
    }

    #[test]
    fn expired_links_and_flows_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let expiring = oauth(&dir, 0);
        let spec = spec(serde_json::json!({}));
        expiring.authorization_link(&alice()).unwrap();
        let record = LinkRecord {
            plugin: "p".into(),
            tenant: "acme".into(),
            user: "alice".into(),
            expires_at: 0,
        };
        expiring.begin(&record, &spec, &client()).unwrap();
        let live = oauth_sharing(&expiring, 600);
        let link = live.authorization_link(&alice()).unwrap();

        assert_eq!(live.sweep_expired().unwrap(), 2);
        assert_eq!(live.sweep_expired().unwrap(), 0);
        let token = link.rsplit('/').next().unwrap();
        assert_eq!(live.open_link(token).unwrap().user, "alice");
    }

    /// Another OAuth side over the same store and vault, with another lifetime.
    fn oauth_sharing(other: &OAuth, ttl: u64) -> OAuth {
        OAuth::new(
            other.store.clone(),
            other.vault.clone(),
            other.egress.clone(),
            other.public_url.clone(),
            ttl,
        )
    }
}
