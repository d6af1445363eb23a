//! Signed, expiring bearer tokens: `<payload>.<signature>`, both base64url, the payload
//! `{"sub": user id, "exp": unix seconds}` and the signature its HMAC-SHA256 under a key the
//! auth service and the gateway share. The gateway checks a token without calling anyone.
//!
//! A crate of its own so that the gateway checks tokens without linking auth's password
//! hashing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not two base64url parts with a JSON payload.
    #[error("the token is malformed")]
    Malformed,
    /// The signature does not match (forged, altered, or signed with another key).
    #[error("the token's signature is invalid")]
    Forged,
    /// Past its expiry.
    #[error("the token has expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

/// Issues and checks tokens with one key.
#[derive(Clone)]
pub struct Signer {
    key: Arc<[u8]>,
    ttl: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Signer").field("ttl", &self.ttl).finish()
    }
}

/// How long a token lives unless told otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

impl Signer {
    /// A signer with `key`, issuing tokens that live `ttl`.
    pub fn new(key: &[u8], ttl: Duration) -> Self {
        Signer {
            key: key.into(),
            ttl,
        }
    }

    /// A signer with a fresh random key (one process, or tests).
    pub fn random(ttl: Duration) -> Self {
        Signer::new(&random_key(), ttl)
    }

    /// A signer with the key in `path`, creating the file with a random key (mode 0600) when it
    /// does not exist, so that processes started in one directory share it.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or written, or holds fewer than 32 bytes.
    pub fn from_file(path: &Path, ttl: Duration) -> std::io::Result<Self> {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Written whole under a private name, then linked into place: a process starting
            // at the same moment sees either no key or a complete one, never a partial file,
            // and the first link wins.
            let draft = path.with_extension(format!("draft-{}", uuid::Uuid::new_v4()));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let written = options
                .open(&draft)
                .and_then(|mut file| std::io::Write::write_all(&mut file, &random_key()));
            let linked = written.and_then(|()| std::fs::hard_link(&draft, path));
            let _ = std::fs::remove_file(&draft);
            match linked {
                Ok(()) => {}
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let key = std::fs::read(path)?;
        if key.len() < 32 {
            return Err(std::io::Error::other(format!(
                "{}: a token key needs at least 32 bytes, found {}",
                path.display(),
                key.len()
            )));
        }
        Ok(Signer::new(&key, ttl))
    }

    /// A token for `user_id` and its expiry (unix seconds), issued at `now` (unix seconds).
    pub fn issue(&self, user_id: &str, now: i64) -> (String, i64) {
        let exp = now.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX));
        let claims = Claims {
            sub: user_id.to_owned(),
            exp,
        };
        // Serializing two plain fields cannot fail.
        let payload = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signature = B64.encode(self.sign(payload.as_bytes()));
        (format!("{payload}.{signature}"), exp)
    }

    /// The user a token was issued to, if it is genuine and not expired at `now`.
    ///
    /// # Errors
    ///
    /// Why it is refused.
    pub fn verify(&self, token: &str, now: i64) -> Result<String, TokenError> {
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = B64.decode(signature).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        // Checked before the payload is even decoded, in constant time.
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Forged)?;
        let claims: Claims = B64
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims.sub)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }
}

fn random_key() -> Vec<u8> {
    // Two v4 UUIDs: 244 random bits from the operating system's generator.
    [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
        .iter()
        .flat_map(|u| u.as_bytes().to_vec())
        .collect()
}

/// Unix seconds, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The token key flag of auth and the gateway (`tripstream run auth|gateway` and their own
/// binaries).
#[derive(Debug, Clone, clap::Args)]
// No argument group: commands that flatten these flags have their own `Args` group.
#[group(skip)]
pub struct TokenArgs {
    /// The key auth signs tokens with and the gateway checks them with; created with a random
    /// key when missing, so auth and gateway started in one directory share it.
    #[arg(
        long,
        env = "TRIPSTREAM_TOKEN_KEY_FILE",
        default_value = DEFAULT_KEY_FILE
    )]
    pub token_key_file: PathBuf,
}

/// Where the token key is kept unless told otherwise, relative to where the service starts.
pub const DEFAULT_KEY_FILE: &str = ".tripstream/token.key";

/// The token key file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("token key {}: {cause}", path.display())]
pub struct KeyError {
    /// The key file.
    pub path: PathBuf,
    /// Why it could not be read or created (in the message, not a `source`, so chains print
    /// it once).
    pub cause: std::io::Error,
}

impl TokenArgs {
    /// A signer with the key file under `root` (see [`Signer::from_file`]), issuing tokens that
    /// live [`DEFAULT_TTL`].
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the file cannot be read or created, or holds too short a key.
    pub fn signer(&self, root: &Path) -> Result<Signer, KeyError> {
        let path = root.join(&self.token_key_file);
        Signer::from_file(&path, DEFAULT_TTL).map_err(|cause| KeyError { path, cause })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_starting_together_share_one_complete_key_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys/token.key");
        let signers: Vec<Signer> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| Signer::from_file(&path, DEFAULT_TTL).expect("key")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let (token, _) = signers[0].issue("u", 0);
        assert!(
            signers
                .iter()
                .all(|s| s.verify(&token, 1) == Ok("u".into()))
        );
        let left: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .expect("dir")
            .collect();
        assert_eq!(left.len(), 1, "no draft is left behind");
    }

    #[test]
    fn a_token_names_its_user_until_it_expires_and_no_other_key_or_edit_passes() {
        let signer = Signer::new(&[7; 32], Duration::from_secs(60));
        let (token, exp) = signer.issue("u1", 1_000);
        assert_eq!(exp, 1_060);
        assert_eq!(signer.verify(&token, 1_059), Ok("u1".into()));
        assert_eq!(signer.verify(&token, 1_060), Err(TokenError::Expired));
        let other = Signer::new(&[8; 32], Duration::from_secs(60));
        assert_eq!(other.verify(&token, 1_000), Err(TokenError::Forged));
        let (payload, signature) = token.split_once('.').expect("two parts");
        let forged_payload = B64.encode(br#"{"sub":"admin","exp":99999999999}"#);
        assert_eq!(
            signer.verify(&format!("{forged_payload}.{signature}"), 1_000),
            Err(TokenError::Forged)
        );
        assert_eq!(signer.verify(payload, 1_000), Err(TokenError::Malformed));
        assert_eq!(signer.verify("", 1_000), Err(TokenError::Malformed));
        assert_eq!(signer.verify("a.b.c", 1_000), Err(TokenError::Malformed));
    }
}
