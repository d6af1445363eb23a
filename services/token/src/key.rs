//! Auth's token signing keys: Ed25519 keys with ids (`kid`), kept as PKCS#8 PEM files in one
//! directory, the newest file signing and all of them published as a JWKS.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::Claims;

/// A key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key file or the key directory could not be read or written.
    #[error("token key {}: {cause}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why (in the message, not a `source`, so chains print it once).
        cause: std::io::Error,
    },
    /// A key file does not hold an Ed25519 key in PKCS#8 PEM, or its name is no key id.
    #[error("token key {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system gave no randomness for a new key.
    #[error("no randomness for a token key: {0}")]
    Random(String),
    /// Signing failed.
    #[error("a token cannot be signed: {0}")]
    Sign(String),
}

/// One signing key and its id.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    public: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private half.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's generator, with a fresh id.
    ///
    /// # Errors
    ///
    /// [`KeyError::Random`] when the operating system gives no randomness.
    pub fn generate() -> Result<Self, KeyError> {
        SigningKey::from_dalek(new_kid()?, &fresh()?).map_err(KeyError::Sign)
    }

    fn from_dalek(kid: String, key: &ed25519_dalek::SigningKey) -> Result<Self, String> {
        let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
        Ok(SigningKey {
            kid,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            public: key.verifying_key().to_bytes(),
        })
    }

    /// The key's id, the `kid` of the tokens it signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                key_id: Some(self.kid.clone()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: B64.encode(self.public),
            }),
        }
    }

    pub(crate) fn sign(&self, claims: &impl serde::Serialize) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// A fresh Ed25519 key: any 32 random bytes are one.
fn fresh() -> Result<ed25519_dalek::SigningKey, KeyError> {
    let mut seed = [0; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// A key id: the time in nanoseconds and 32 random bits, so that ids sort by age (while the
/// clock does not go back) and two hosts never make the same one.
fn new_kid() -> Result<String, KeyError> {
    let mut tag = [0; 4];
    getrandom::fill(&mut tag).map_err(|e| KeyError::Random(e.to_string()))?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{nanos:020}-{tag}"))
}

/// Whether `kid` can name a key file and travel in a token header unescaped.
fn is_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Signing keys, oldest first: the last signs, all are published. Never empty.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

impl KeyRing {
    /// A ring of one fresh key.
    ///
    /// # Errors
    ///
    /// [`KeyError::Random`] when the operating system gives no randomness.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(KeyRing {
            keys: vec![SigningKey::generate()?],
        })
    }

    /// The keys in `dir` (every `<kid>.pem`), oldest first by the file's modification time, so
    /// the newest file signs (names break ties); when it holds none, one fresh key is written
    /// there first (`first.pem`, mode 0600). By time, not name: an operator's key
    /// (`ops-2026.pem`) sorts after every generated id by name and would keep signing after a
    /// rotation.
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`] when the directory cannot be read or written, [`KeyError::Invalid`] for
    /// a file that holds no Ed25519 PKCS#8 PEM key or whose name is no key id (letters, digits,
    /// `-`, `_`, `.`; at most 64).
    pub fn from_dir(dir: &Path) -> Result<Self, KeyError> {
        let mut keys = read_dir(dir)?;
        if keys.is_empty() {
            // Under one name, so that instances starting together on an empty directory make
            // one key between them: the first link wins and the others read it. With a key
            // each, each would sign with a key the others do not publish.
            write_key(dir, FIRST_KID)?;
            keys = read_dir(dir)?;
        }
        if keys.is_empty() {
            return Err(KeyError::Invalid {
                path: dir.to_owned(),
                reason: "no key was found after writing one".into(),
            });
        }
        Ok(KeyRing { keys })
    }

    /// Writes a fresh key to `dir` (created when missing) as `<kid>.pem`, mode 0600, its file
    /// newer than every key file there (even under a coarse or stepped-back clock), so the key
    /// signs from the next start on; returns its id.
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`] when the file cannot be written, [`KeyError::Random`] without
    /// randomness.
    pub fn add_to_dir(dir: &Path) -> Result<String, KeyError> {
        let kid = new_kid()?;
        write_key(dir, &kid)?;
        Ok(kid)
    }

    /// The key that signs.
    pub fn newest(&self) -> &SigningKey {
        // Never empty: every constructor makes one key and `retire` keeps the newest.
        &self.keys[self.keys.len() - 1]
    }

    /// Every key's id, oldest first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(SigningKey::kid).collect()
    }

    /// The public keys.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(SigningKey::jwk).collect(),
        }
    }

    pub(crate) fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        self.newest().sign(claims)
    }

    pub(crate) fn push(&mut self, key: SigningKey) {
        self.keys.push(key);
    }

    pub(crate) fn retire(&mut self, kid: &str) -> bool {
        let newest = self.newest().kid.clone();
        let before = self.keys.len();
        self.keys.retain(|k| k.kid != kid || k.kid == newest);
        self.keys.len() < before
    }
}

/// The id of the key a directory gets when it has none.
const FIRST_KID: &str = "first";

/// Writes a fresh key to `dir` (created when missing) as `<kid>.pem`, mode 0600, newer than
/// every key file there. A file of that name already there is left as it is (another process
/// wrote it first).
fn write_key(dir: &Path, kid: &str) -> Result<(), KeyError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |cause| KeyError::Io { path, cause }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let pem = fresh()?
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| KeyError::Sign(e.to_string()))?;
    let path = dir.join(format!("{kid}.pem"));
    // A draft name of its own per writer, so two writers of one kid do not meet before the link.
    let draft = dir.join(format!(".{kid}.{}.draft", new_kid()?));
    // Written whole under a private name, then linked into place: a process reading the
    // directory at the same moment sees no key or a complete one, never a partial file.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&draft)
        .and_then(|mut file| std::io::Write::write_all(&mut file, pem.as_bytes()));
    let newest = newest_stamp(dir)?;
    // Stamped explicitly: the kernel's own stamp is coarse (a clock tick), so a key written
    // right after another could share its time; a second past the newest survives file
    // systems that keep whole seconds.
    let stamp = newest.map_or_else(std::time::SystemTime::now, |newest| {
        std::time::SystemTime::now().max(newest + std::time::Duration::from_secs(1))
    });
    let stamped = written.and_then(|()| set_modified(&draft, stamp));
    let linked = stamped.and_then(|()| match std::fs::hard_link(&draft, &path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = std::fs::remove_file(&draft);
    linked.map_err(io(&path))
}

fn set_modified(path: &Path, at: std::time::SystemTime) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_modified(at)
}

/// The latest modification time of the key files in `dir`.
fn newest_stamp(dir: &Path) -> Result<Option<std::time::SystemTime>, KeyError> {
    Ok(key_files(dir)?.into_iter().map(|(stamp, _)| stamp).max())
}

/// The key files in `dir` with their modification times, oldest first (names break ties).
fn key_files(dir: &Path) -> Result<Vec<(std::time::SystemTime, PathBuf)>, KeyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(cause) => {
            return Err(KeyError::Io {
                path: dir.to_owned(),
                cause,
            });
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|cause| KeyError::Io {
                path: dir.to_owned(),
                cause,
            })?
            .path();
        if path.extension().is_some_and(|e| e == "pem") {
            let stamp = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(|cause| KeyError::Io {
                    path: path.clone(),
                    cause,
                })?;
            paths.push((stamp, path));
        }
    }
    paths.sort();
    Ok(paths)
}

fn read_dir(dir: &Path) -> Result<Vec<SigningKey>, KeyError> {
    key_files(dir)?
        .into_iter()
        .map(|(_, path)| read_key(&path))
        .collect()
}

fn read_key(path: &Path) -> Result<SigningKey, KeyError> {
    let invalid = |reason: String| KeyError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let kid = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| is_kid(s))
        .ok_or_else(|| {
            invalid(
                "the file name must be <kid>.pem, the kid letters, digits, -, _ or . (at most 64)"
                    .into(),
            )
        })?
        .to_owned();
    let pem = std::fs::read_to_string(path).map_err(|cause| KeyError::Io {
        path: path.to_owned(),
        cause,
    })?;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| invalid(format!("not an Ed25519 private key in PKCS#8 PEM: {e}")))?;
    SigningKey::from_dalek(kid, &key).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_directory_is_made_once_read_back_and_rotated_by_adding_a_file() {
        let dir = tempfile::tempdir().expect("dir");
        let keys = dir.path().join("keys");
        let first = KeyRing::from_dir(&keys).expect("made");
        let again = KeyRing::from_dir(&keys).expect("read back");
        assert_eq!(first.kids(), again.kids(), "the key is made once");
        assert_eq!(first.jwks(), again.jwks());
        let added = KeyRing::add_to_dir(&keys).expect("added");
        let rotated = KeyRing::from_dir(&keys).expect("read");
        assert_eq!(rotated.kids().len(), 2);
        assert_eq!(rotated.newest().kid(), added, "the added key signs");
        let left: Vec<_> = std::fs::read_dir(&keys).expect("dir").collect();
        assert_eq!(left.len(), 2, "no draft is left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(keys.join(format!("{added}.pem")))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "only the owner reads a key");
        }
    }

    #[test]
    fn instances_starting_together_on_an_empty_directory_share_one_key() {
        let dir = tempfile::tempdir().expect("dir");
        let keys = dir.path().join("keys");
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let rings: Vec<_> = (0..8)
            .map(|_| {
                let (keys, start) = (keys.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    KeyRing::from_dir(&keys).expect("made or read")
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("joined"))
            .collect();
        for ring in &rings {
            assert_eq!(
                ring.kids(),
                vec![FIRST_KID],
                "every instance signs with the one key"
            );
            assert_eq!(ring.jwks(), rings[0].jwks());
        }
        let files: Vec<_> = std::fs::read_dir(&keys).expect("dir").collect();
        assert_eq!(files.len(), 1, "one key file and no draft: {files:?}");
    }

    #[test]
    fn a_key_openssl_wrote_is_read_and_published_with_its_public_half() {
        // `openssl genpkey -algorithm ed25519`; the public half from `openssl pkey -pubout`.
        // A key made for this test only.
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIDy55rS/3TIaEPfeGiOI2HARqmP5T1dkesFujzW1Or7i\n\
                   -----END PRIVATE KEY-----\n";
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("ops-2026.pem"), pem).expect("written");
        let ring = KeyRing::from_dir(dir.path()).expect("read");
        let jwks = serde_json::to_value(ring.jwks()).expect("json");
        assert_eq!(
            jwks,
            serde_json::json!({"keys": [{
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": "ops-2026",
                "x": "W1cZ00DIOzQlHzLPEdBMxx6nr1EvUChSxhhp3aMIo5A"
            }]})
        );
    }

    #[test]
    fn rotating_beside_an_operator_named_key_makes_the_new_key_sign() {
        let dir = tempfile::tempdir().expect("dir");
        let pem = fresh()
            .expect("key")
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("pem");
        // Named by an operator, so it sorts after every generated id by name.
        std::fs::write(dir.path().join("ops-2026.pem"), pem.as_bytes()).expect("written");
        let before = KeyRing::from_dir(dir.path()).expect("read");
        assert_eq!(before.newest().kid(), "ops-2026");
        let added = KeyRing::add_to_dir(dir.path()).expect("added");
        let rotated = KeyRing::from_dir(dir.path()).expect("read");
        assert_eq!(rotated.kids(), ["ops-2026", added.as_str()]);
        assert_eq!(rotated.newest().kid(), added, "the added key signs");
        let again = KeyRing::add_to_dir(dir.path()).expect("added");
        let twice = KeyRing::from_dir(dir.path()).expect("read");
        assert_eq!(twice.newest().kid(), again, "each rotation's key signs");
    }

    #[test]
    fn a_file_that_is_no_key_is_refused_with_its_name() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("k1.pem"), "not a key").expect("written");
        let error = KeyRing::from_dir(dir.path()).expect_err("refused");
        assert!(error.to_string().contains("k1.pem"), "{error}");
        assert!(error.to_string().contains("PKCS#8"), "{error}");
    }
}
