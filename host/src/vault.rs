//! Encryption at rest for secrets: OAuth tokens, client secrets, secret settings, pending flows.
//!
//! Each record is sealed with XChaCha20-Poly1305 under the server's master key, with the
//! record's own key as associated data, so that a sealed value copied under another key does
//! not open. The master key comes from `KEYHOLE_MASTER_KEY` (64 hex digits) or from the file
//! `master.key` in the data directory, created with mode 0600 on the first start.

use std::fmt;
use std::io::{Read, Write};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt, PermissionsExt};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;

/// The key file's name in the data directory.
const KEY_FILE: &str = "master.key";
const NONCE_LEN: usize = 24;

/// A secret string: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why the vault could not open or a record could not be unsealed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The master key is not 64 hex digits.
    #[error("the master key must be 64 hex digits (32 bytes)")]
    BadKey,
    /// The key file could not be read or created.
    #[error("cannot use the key file {KEY_FILE}: {0}")]
    KeyFile(std::io::Error),
    /// A sealed record is damaged, or was sealed under another key or for another record.
    #[error("a sealed record does not open with this master key")]
    Unseal,
}

/// Seals and opens records with the master key.
pub struct Vault {
    cipher: XChaCha20Poly1305,
}

impl Vault {
    /// Opens the vault with `env_key` if given, or else with the key file in `dir`, creating
    /// it on the first start.
    pub fn open(dir: &Dir, env_key: Option<&str>) -> Result<Self, VaultError> {
        let hex_key = match env_key {
            Some(key) => key.trim().to_owned(),
            None => read_or_create_key_file(dir)?,
        };
        let bytes = hex::decode(&hex_key).map_err(|_| VaultError::BadKey)?;
        if bytes.len() != 32 {
            return Err(VaultError::BadKey);
        }
        Ok(Self {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&bytes)),
        })
    }

    /// Encrypts `plaintext` for the record named `record_key`.
    pub fn seal(&self, record_key: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: record_key.as_bytes(),
        };
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Decrypts what [`Vault::seal`] made for the same `record_key`.
    pub fn unseal(&self, record_key: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.len() < NONCE_LEN {
            return Err(VaultError::Unseal);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: record_key.as_bytes(),
        };
        self.cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| VaultError::Unseal)
    }
}

fn read_or_create_key_file(dir: &Dir) -> Result<String, VaultError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    match dir.open_with(KEY_FILE, &options) {
        Ok(mut file) => {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            let hex_key = hex::encode(key);
            file.write_all(hex_key.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(VaultError::KeyFile)?;
            dir.open(".")
                .and_then(|this| this.sync_all())
                .map_err(VaultError::KeyFile)?;
            tracing::info!(file = KEY_FILE, "created the master key");
            Ok(hex_key)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut file = dir.open(KEY_FILE).map_err(VaultError::KeyFile)?;
            let mode = file
                .metadata()
                .map_err(VaultError::KeyFile)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = KEY_FILE,
                    mode = format!("{mode:o}"),
                    "the master key file is readable by others; chmod 600 it"
                );
            }
            let mut hex_key = String::new();
            file.read_to_string(&mut hex_key)
                .map_err(VaultError::KeyFile)?;
            Ok(hex_key)
        }
        Err(err) => Err(VaultError::KeyFile(err)),
    }
}

#[cfg(test)]
mod tests {
    use cap_std::ambient_authority;

    use super::*;

    fn dir() -> (tempfile::TempDir, Dir) {
        let temp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(temp.path(), ambient_authority()).unwrap();
        (temp, dir)
    }

    #[test]
    fn sealed_records_open_only_under_their_own_key() {
        let (_temp, dir) = dir();
        let vault = Vault::open(&dir, None).unwrap();
        let sealed = vault.seal("connections/a", b"token-123");
        assert!(!sealed.windows(9).any(|w| w == b"token-123"));
        assert_eq!(
            vault.unseal("connections/a", &sealed).unwrap(),
            b"token-123"
        );
        assert!(vault.unseal("connections/b", &sealed).is_err());

        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(vault.unseal("connections/a", &damaged).is_err());
    }

    #[test]
    fn the_key_file_is_private_and_reused() {
        let (temp, dir) = dir();
        let sealed = Vault::open(&dir, None).unwrap().seal("k", b"v");
        let mode = std::fs::metadata(temp.path().join(KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let again = Vault::open(&dir, None).unwrap();
        assert_eq!(again.unseal("k", &sealed).unwrap(), b"v");
    }

    #[test]
    fn an_environment_key_must_be_32_bytes() {
        let (_temp, dir) = dir();
        assert!(Vault::open(&dir, Some("abcd")).is_err());
        assert!(Vault::open(&dir, Some(&"zz".repeat(32))).is_err());
        assert!(Vault::open(&dir, Some(&"ab".repeat(32))).is_ok());
    }
}
