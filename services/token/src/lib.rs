//! Bearer tokens as JWTs (RFC 7519) signed with Ed25519 (`EdDSA`): auth signs with the newest of
//! its keys ([`KeyRing`], [`Issuer`]) and publishes every public key as a JWKS; the gateway checks
//! tokens against that key set ([`Verifier`]) and so never holds a key that could mint one.
//!
//! A crate of its own so that the gateway checks tokens without linking auth's password
//! hashing.

pub mod key;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use key::{KeyError, KeyRing};
pub use verify::Verifier;

/// Who issues tokens: their `iss` claim.
pub const ISSUER: &str = "tripstream-auth";

/// Whom tokens are for: their `aud` claim.
pub const AUDIENCE: &str = "tripstream-api";

/// How long a token lives unless told otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The longest life the issuer gives a token: a verifier refuses a token whose `exp` lies further
/// ahead than this (plus [`LEEWAY`]), whatever its signature, so that a leaked key or a bug in
/// an issuer cannot make tokens that outlive a key rotation.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The clock difference between issuer and verifier that is tolerated, in seconds.
pub const LEEWAY: u64 = 30;

/// Where the JWKS is served, under the issuer's base URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a JWT: not three base64url parts, no `kid`, or claims that do not parse, among them
    /// claims lacking `sub`, `iss`, `aud`, `iat` or `exp`.
    #[error("the token is malformed")]
    Malformed,
    /// The signature does not match, or names a key the issuer does not publish.
    #[error("the token's signature is invalid")]
    Forged,
    /// Past its expiry.
    #[error("the token has expired")]
    Expired,
    /// Its `exp` lies further ahead than the issuer's maximum lifetime, or its `iat` in the
    /// future.
    #[error("the token's lifetime exceeds the issuer's maximum of {} s", MAX_TTL.as_secs())]
    Lifetime,
    /// A claim present but wrong: `iss` or `aud` not ours, or `sub` empty (`iat` and `exp` are
    /// [`TokenError::Lifetime`] and [`TokenError::Expired`]).
    #[error("the token's {0} claim is invalid")]
    Claim(&'static str),
    /// The issuer's public keys cannot be fetched, so the token cannot be checked now.
    #[error("the token cannot be checked now: {0}")]
    Unavailable(String),
}

impl TokenError {
    /// Whether the same token may pass later: only when the keys could not be fetched.
    pub fn is_retriable(&self) -> bool {
        matches!(self, TokenError::Unavailable(_))
    }
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// [`ISSUER`].
    pub iss: String,
    /// [`AUDIENCE`].
    pub aud: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

/// Issues tokens with the newest key of a [`KeyRing`] it shares with whoever rotates it.
#[derive(Debug, Clone)]
pub struct Issuer {
    keys: Arc<RwLock<KeyRing>>,
    ttl: Duration,
}

impl Issuer {
    /// An issuer signing with `keys`, issuing tokens that live `ttl` (at most [`MAX_TTL`]).
    pub fn new(keys: KeyRing, ttl: Duration) -> Self {
        Issuer {
            keys: Arc::new(RwLock::new(keys)),
            ttl: ttl.min(MAX_TTL),
        }
    }

    /// An issuer with one fresh key (one process, or tests).
    ///
    /// # Errors
    ///
    /// When the operating system gives no randomness.
    pub fn random(ttl: Duration) -> Result<Self, KeyError> {
        Ok(Issuer::new(KeyRing::generate()?, ttl))
    }

    /// How long the tokens it issues live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for `user_id` and its expiry (unix seconds), issued at `now` (unix seconds).
    ///
    /// # Errors
    ///
    /// When the key cannot sign (never for a key the ring accepted).
    pub fn issue(&self, user_id: &str, now: i64) -> Result<(String, i64), KeyError> {
        let exp = now.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX));
        let claims = Claims {
            sub: user_id.to_owned(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp,
        };
        let token = self.read().sign(&claims)?;
        Ok((token, exp))
    }

    /// The public keys, as served at [`JWKS_PATH`].
    pub fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        self.read().jwks()
    }

    /// Adds a fresh key, which signs from now on; the older keys stay published, so tokens
    /// they signed still pass until they expire. Returns the new key's id.
    ///
    /// # Errors
    ///
    /// When the operating system gives no randomness.
    pub fn rotate(&self) -> Result<String, KeyError> {
        let key = key::SigningKey::generate()?;
        let kid = key.kid().to_owned();
        self.write().push(key);
        Ok(kid)
    }

    /// Stops publishing the key `kid` (never the newest, which signs). Tokens it signed fail
    /// once verifiers refresh their key set.
    pub fn retire(&self, kid: &str) -> bool {
        self.write().retire(kid)
    }

    /// The id of the key that signs.
    pub fn signing_kid(&self) -> String {
        self.read().newest().kid().to_owned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        // A panic while holding the lock leaves the ring whole: every write is one push or
        // one removal.
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeyRing> {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Unix seconds, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The token key flags of auth (`tripstream run auth` and its own binary).
#[derive(Debug, Clone, clap::Args)]
// No argument group: commands that flatten these flags have their own `Args` group.
#[group(skip)]
pub struct TokenArgs {
    /// Auth's token signing keys: a directory of Ed25519 keys as PKCS#8 PEM files named
    /// `<kid>.pem` (what `openssl genpkey -algorithm ed25519` writes); created with one key when
    /// empty. Auth signs with the newest file (by modification time; `touch` one to make it
    /// sign) and publishes them all at
    /// /.well-known/jwks.json. The gateway needs no key.
    #[arg(long, env = "TRIPSTREAM_TOKEN_KEYS", default_value = DEFAULT_KEY_DIR)]
    pub token_keys: PathBuf,
    /// Add a fresh key to --token-keys before starting, which then signs; the older keys stay
    /// published until their files are removed (after the tokens they signed have expired).
    #[arg(long)]
    pub rotate_token_key: bool,
}

/// Where the token keys are kept unless told otherwise, relative to where auth starts.
pub const DEFAULT_KEY_DIR: &str = ".tripstream/token-keys";

impl TokenArgs {
    /// An issuer with the key directory under `root` (see [`KeyRing::from_dir`]), rotated first
    /// when asked, issuing tokens that live [`DEFAULT_TTL`].
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the directory cannot be read or written, or holds an unusable key.
    pub fn issuer(&self, root: &Path) -> Result<Issuer, KeyError> {
        let dir = root.join(&self.token_keys);
        if self.rotate_token_key {
            KeyRing::add_to_dir(&dir)?;
        }
        let keys = KeyRing::from_dir(&dir)?;
        tracing::info!(
            kid = keys.newest().kid(),
            keys = keys.kids().len(),
            dir = %dir.display(),
            "token key that signs"
        );
        Ok(Issuer::new(keys, DEFAULT_TTL))
    }
}
