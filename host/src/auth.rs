//! Who is calling: the admin, by the admin token, or a chat backend, by one of its API keys.
//!
//! Neither credential is stored: only its SHA-256. A fast hash is enough because both are 256-bit
//! random strings, not passwords; it keeps the check off the hot path's profile. Hashes are
//! compared in constant time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{ApiKeyRecord, Store, StoreError};
use crate::time::now_unix;

const ADMIN_HASH_KEY: &str = "admin_token_sha256";
const API_KEY_PREFIX: &str = "kh_";
const ADMIN_TOKEN_PREFIX: &str = "kha_";

/// The shortest admin token accepted from the environment.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Who a request comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin.
    Admin,
    /// A chat backend, acting for users of its tenant.
    Backend {
        /// The key's id.
        key_id: String,
        /// The tenant the key belongs to.
        tenant: String,
    },
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admin => f.write_str("Admin"),
            Self::Backend { key_id, tenant } => write!(f, "Backend({key_id}, {tenant})"),
        }
    }
}

/// A credential shown once, at creation. Its `Debug` does not print it.
pub struct ShownOnce(pub String);

impl fmt::Debug for ShownOnce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShownOnce(..)")
    }
}

/// Why a credential could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admin token from the environment is too short to be safe.
    #[error("KEYHOLE_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LEN} characters")]
    WeakAdminToken,
    /// The admin token from the environment starts like an API key, so it would never be
    /// recognised as the admin's.
    #[error("KEYHOLE_ADMIN_TOKEN must not start with `{API_KEY_PREFIX}`, which marks API keys")]
    AdminTokenLooksLikeApiKey,
    /// A tenant name outside `[A-Za-z0-9_.-]{1,64}`.
    #[error("a tenant is 1 to 64 letters, digits, `_`, `.` or `-`")]
    InvalidTenant,
}

/// Checks credentials and manages API keys. Keys are cached in memory; the store is the truth.
pub struct Auth {
    store: Arc<dyn Store>,
    admin_sha256: [u8; 32],
    keys: RwLock<HashMap<String, ApiKeyRecord>>,
}

impl Auth {
    /// Loads the credentials. With `admin_token` (from `KEYHOLE_ADMIN_TOKEN`) that token becomes
    /// the admin token; without it, the stored one stays, and on first start a new one is made
    /// and returned so that it can be shown once.
    pub fn open(
        store: Arc<dyn Store>,
        admin_token: Option<&str>,
    ) -> Result<(Self, Option<ShownOnce>), AuthError> {
        let mut shown = None;
        let admin_sha256 = match (admin_token, store.meta(ADMIN_HASH_KEY)?) {
            (Some(token), _) => {
                if token.len() < MIN_ADMIN_TOKEN_LEN {
                    return Err(AuthError::WeakAdminToken);
                }
                if token.starts_with(API_KEY_PREFIX) {
                    return Err(AuthError::AdminTokenLooksLikeApiKey);
                }
                let hash = sha256(token);
                store.put_meta(ADMIN_HASH_KEY, &hash)?;
                hash
            }
            (None, Some(stored)) => {
                stored
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt {
                        key: ADMIN_HASH_KEY.to_owned(),
                        reason: "not a SHA-256".to_owned(),
                    })?
            }
            (None, None) => {
                let token = format!("{ADMIN_TOKEN_PREFIX}{}", random_hex(32));
                let hash = sha256(&token);
                store.put_meta(ADMIN_HASH_KEY, &hash)?;
                shown = Some(ShownOnce(token));
                hash
            }
        };

        let keys = store
            .api_keys()?
            .into_iter()
            .map(|key| (key.key_id.clone(), key))
            .collect();
        let auth = Self {
            store,
            admin_sha256,
            keys: RwLock::new(keys),
        };
        Ok((auth, shown))
    }

    /// Identifies the holder of a bearer credential, or `None` for an unknown one.
    pub fn identify(&self, bearer: &str) -> Option<Caller> {
        if let Some(rest) = bearer.strip_prefix(API_KEY_PREFIX) {
            let (key_id, secret) = rest.split_once('_')?;
            let keys = self.keys.read().expect("key cache lock");
            let key = keys.get(key_id)?;
            let expected = hex::decode(&key.secret_sha256).ok()?;
            let matches: bool = sha256(secret).as_slice().ct_eq(&expected).into();
            return matches.then(|| Caller::Backend {
                key_id: key.key_id.clone(),
                tenant: key.tenant.clone(),
            });
        }

        let matches: bool = sha256(bearer).ct_eq(&self.admin_sha256).into();
        matches.then_some(Caller::Admin)
    }

    /// Creates an API key for `tenant`; the returned secret is shown once and never again.
    pub fn create_key(&self, tenant: &str) -> Result<(ApiKeyRecord, ShownOnce), AuthError> {
        let valid = (1..=64).contains(&tenant.len())
            && tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(AuthError::InvalidTenant);
        }

        let key_id = random_hex(6);
        let secret = random_hex(32);
        let record = ApiKeyRecord {
            key_id: key_id.clone(),
            tenant: tenant.to_owned(),
            secret_sha256: hex::encode(sha256(&secret)),
            created_at: now_unix(),
        };
        self.store.put_api_key(&record)?;
        self.keys
            .write()
            .expect("key cache lock")
            .insert(key_id.clone(), record.clone());
        Ok((
            record,
            ShownOnce(format!("{API_KEY_PREFIX}{key_id}_{secret}")),
        ))
    }

    /// Every API key, without secrets.
    pub fn keys(&self) -> Result<Vec<ApiKeyRecord>, AuthError> {
        Ok(self.store.api_keys()?)
    }

    /// Revokes a key at once; answers whether it existed.
    pub fn revoke_key(&self, key_id: &str) -> Result<bool, AuthError> {
        let existed = self.store.delete_api_key(key_id)?;
        self.keys.write().expect("key cache lock").remove(key_id);
        Ok(existed)
    }
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn open(dir: &std::path::Path, token: Option<&str>) -> (Auth, Option<ShownOnce>) {
        // sled's background flusher lets go of the directory lock shortly after the last
        // handle is dropped; a reopen right away may have to wait for it.
        let mut attempts = 0;
        let store = loop {
            match SledStore::open(dir) {
                Ok(store) => break Arc::new(store),
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => panic!("{err}"),
            }
        };
        Auth::open(store, token).unwrap()
    }

    #[test]
    fn first_start_makes_an_admin_token_that_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, shown) = open(dir.path(), None);
        let token = shown.expect("a new token on first start").0;
        assert_eq!(auth.identify(&token), Some(Caller::Admin));
        drop(auth);

        let (auth, shown) = open(dir.path(), None);
        assert!(shown.is_none());
        assert_eq!(auth.identify(&token), Some(Caller::Admin));
        assert_eq!(auth.identify("kha_wrong"), None);
    }

    #[test]
    fn api_keys_identify_their_tenant_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = open(dir.path(), Some("an-admin-token-for-tests"));
        let (record, key) = auth.create_key("acme").unwrap();
        let caller = Caller::Backend {
            key_id: record.key_id.clone(),
            tenant: "acme".to_owned(),
        };
        assert_eq!(auth.identify(&key.0), Some(caller));
        assert_eq!(auth.identify(&format!("{}x", key.0)), None);
        assert_eq!(
            auth.identify("an-admin-token-for-tests"),
            Some(Caller::Admin)
        );

        assert!(auth.revoke_key(&record.key_id).unwrap());
        assert_eq!(auth.identify(&key.0), None);
    }

    #[test]
    fn refuses_weak_tokens_and_odd_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        assert!(matches!(
            Auth::open(store.clone(), Some("short")),
            Err(AuthError::WeakAdminToken)
        ));
        let (auth, _) = Auth::open(store, None).unwrap();
        for tenant in ["", "a b", "ä", &"x".repeat(65)] {
            assert!(auth.create_key(tenant).is_err(), "{tenant}");
        }
    }
}
