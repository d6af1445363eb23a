//! The verifying side: a token's signature is checked against the issuer's public keys, fetched
//! from its JWKS URL, cached, and fetched again when a token names a key the cache lacks (a
//! rotation) or the cache is older than [`MAX_AGE`] (a retirement); then its claims.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::{AUDIENCE, Claims, ISSUER, LEEWAY, MAX_TTL, TokenError};

/// How long fetched keys are used before they are fetched again, so that a retired key stops
/// passing within this time.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// The least time between two fetches: tokens naming made-up keys make the gateway ask the
/// issuer at most this often.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest token looked at; ours are about 300 bytes.
pub const MAX_TOKEN: usize = 4096;

/// The largest JWKS body read, and the most keys taken from it.
const MAX_JWKS_BYTES: usize = 64 * 1024;
const MAX_KEYS: usize = 32;

/// Checks tokens with the issuer's public keys only.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.inner.source {
            Source::Url { url, .. } => url.as_str(),
            Source::Fixed => "fixed keys",
        };
        f.debug_struct("Verifier")
            .field("source", &source)
            .finish_non_exhaustive()
    }
}

struct Inner {
    source: Source,
    cache: RwLock<Cache>,
    /// One fetch at a time; callers that waited take the keys it brought.
    fetching: tokio::sync::Mutex<()>,
    validation: Validation,
}

enum Source {
    Url { url: String, http: reqwest::Client },
    Fixed,
}

struct Cache {
    keys: HashMap<String, DecodingKey>,
    /// Fetches tried so far: a caller that saw generation `g` and waited for the lock knows a
    /// fetch happened meanwhile when it finds another, and takes that fetch's [`Cache::last`].
    generation: u64,
    /// When keys last arrived: they are fresh for [`MAX_AGE`] from then. A failed fetch leaves
    /// it, so stale keys stay stale and are tried again (at most every [`MIN_INTERVAL`]).
    fetched_at: Option<Instant>,
    /// When a fetch was last tried, whatever its outcome.
    tried_at: Option<Instant>,
    /// The last fetch's outcome, for the callers that waited for it.
    last: Result<(), TokenError>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            keys: HashMap::new(),
            generation: 0,
            fetched_at: None,
            tried_at: None,
            last: Ok(()),
        }
    }
}

impl Cache {
    fn is_fresh(&self) -> bool {
        self.fetched_at.is_some_and(|t| t.elapsed() < MAX_AGE)
    }
}

impl Verifier {
    /// A verifier with the keys published at `jwks_url` (the issuer's base URL and
    /// [`crate::JWKS_PATH`]), fetched with `http` when first needed.
    pub fn new(jwks_url: impl Into<String>, http: reqwest::Client) -> Self {
        Verifier::with_source(
            Source::Url {
                url: jwks_url.into(),
                http,
            },
            Cache::default(),
        )
    }

    /// A verifier with the keys of `jwks` and no other (tests, or keys known in advance).
    pub fn fixed(jwks: &JwkSet) -> Self {
        Verifier::with_source(
            Source::Fixed,
            Cache {
                keys: decoding_keys(jwks),
                generation: 1,
                fetched_at: Some(Instant::now()),
                tried_at: Some(Instant::now()),
                last: Ok(()),
            },
        )
    }

    fn with_source(source: Source, cache: Cache) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        // Not reached while `Claims` needs every field (a token lacking one does not parse), but
        // it keeps them required should a field of `Claims` ever become optional.
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Expiry and lifetime are checked below against the caller's clock.
        validation.validate_exp = false;
        validation.leeway = LEEWAY;
        Verifier {
            inner: Arc::new(Inner {
                source,
                cache: RwLock::new(cache),
                fetching: tokio::sync::Mutex::new(()),
                validation,
            }),
        }
    }

    /// The user a token was issued to, if it is genuine, for this audience, and neither expired
    /// nor longer-lived than [`MAX_TTL`] at `now` (unix seconds).
    ///
    /// # Errors
    ///
    /// Why it is refused; [`TokenError::Unavailable`] when the keys are needed and cannot be
    /// fetched.
    pub async fn verify(&self, token: &str, now: i64) -> Result<String, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Forged);
        }
        let kid = header.kid.ok_or(TokenError::Malformed)?;
        let key = self.key(&kid).await?.ok_or(TokenError::Forged)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &self.inner.validation)
            .map_err(|e| refusal(e.kind()))?
            .claims;
        check_times(&claims, now)?;
        if claims.sub.is_empty() {
            return Err(TokenError::Claim("sub"));
        }
        Ok(claims.sub)
    }

    /// The key `kid`, fetching the key set first when it is unknown or the set is stale. A
    /// failed fetch is an error only when the key is not known at all.
    async fn key(&self, kid: &str) -> Result<Option<DecodingKey>, TokenError> {
        let (known, fresh, generation) = {
            let cache = self.cache();
            (
                cache.keys.get(kid).cloned(),
                cache.is_fresh(),
                cache.generation,
            )
        };
        if fresh && known.is_some() {
            return Ok(known);
        }
        // A known key serves while another caller refreshes a stale set; an unknown one waits.
        let fetched = self.fetch_after(generation, known.is_none()).await;
        match (self.cache().keys.get(kid).cloned(), fetched) {
            (Some(key), _) => Ok(Some(key)),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(None),
        }
    }

    /// Fetches the key set unless a fetch happened since the caller saw `generation` (then that
    /// fetch's outcome is the caller's), or, when the caller need not `wait`, one is under way or
    /// was tried within [`MIN_INTERVAL`].
    async fn fetch_after(&self, generation: u64, wait: bool) -> Result<(), TokenError> {
        let Source::Url { url, http } = &self.inner.source else {
            return Ok(());
        };
        let _one = if wait {
            self.inner.fetching.lock().await
        } else {
            match self.inner.fetching.try_lock() {
                Ok(one) => one,
                Err(_) => return Ok(()),
            }
        };
        let tried_at = {
            let cache = self.cache();
            if cache.generation != generation {
                return cache.last.clone();
            }
            cache.tried_at
        };
        if let Some(pause) = tried_at.and_then(|t| MIN_INTERVAL.checked_sub(t.elapsed())) {
            if !wait {
                // A known key serves; the next caller after the pause tries again.
                return Ok(());
            }
            tokio::time::sleep(pause).await;
        }
        let fetched = fetch(http, url).await;
        let mut cache = self.cache_mut();
        cache.generation += 1;
        cache.tried_at = Some(Instant::now());
        cache.last = match fetched {
            Ok(jwks) => {
                cache.keys = decoding_keys(&jwks);
                cache.fetched_at = cache.tried_at;
                tracing::debug!(keys = cache.keys.len(), %url, "Token keys fetched");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, %url, "Token keys cannot be fetched");
                Err(TokenError::Unavailable(error))
            }
        };
        cache.last.clone()
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        // A panic while holding the lock leaves a whole cache: every write replaces fields.
        self.inner
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cache_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.inner
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn check_times(claims: &Claims, now: i64) -> Result<(), TokenError> {
    let leeway = i64::try_from(LEEWAY).unwrap_or(i64::MAX);
    let max = i64::try_from(MAX_TTL.as_secs()).unwrap_or(i64::MAX);
    if claims.exp.saturating_add(leeway) <= now {
        return Err(TokenError::Expired);
    }
    if claims.iat > now.saturating_add(leeway)
        || claims.exp > now.saturating_add(max).saturating_add(leeway)
        || claims.exp.saturating_sub(claims.iat) > max
    {
        return Err(TokenError::Lifetime);
    }
    Ok(())
}

/// What a `jsonwebtoken` error means for the caller. A missing claim is no `Claim` error:
/// [`Claims`] needs them all, so a token without one fails to parse (`Malformed`) before the
/// library looks for required claims.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TokenError::Forged,
        ErrorKind::InvalidIssuer => TokenError::Claim("iss"),
        ErrorKind::InvalidAudience => TokenError::Claim("aud"),
        _ => TokenError::Malformed,
    }
}

/// The Ed25519 keys of `jwks` with an id; others are not ours and are left out.
fn decoding_keys(jwks: &JwkSet) -> HashMap<String, DecodingKey> {
    jwks.keys
        .iter()
        .filter(|jwk| {
            matches!(&jwk.algorithm, AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519)
        })
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, key))
        })
        .take(MAX_KEYS)
        .collect()
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let mut response = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("the issuer's keys at {url} cannot be fetched: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "the issuer's keys at {url} answer {}",
            response.status()
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the issuer's keys at {url} broke off: {e}"))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "the issuer's keys at {url} are larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("the issuer's keys at {url} are no JWKS: {e}"))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;
    use crate::{Issuer, KeyRing};

    fn issuer() -> Issuer {
        Issuer::new(KeyRing::generate().expect("key"), Duration::from_secs(60))
    }

    /// A token with `claims`, signed by `issuer`'s key.
    fn signed(issuer: &Issuer, claims: &serde_json::Value) -> String {
        issuer.read().newest().sign(claims).expect("signed")
    }

    #[tokio::test]
    async fn a_token_names_its_user_until_it_expires_and_no_other_key_or_edit_passes() {
        let issuer = issuer();
        let verifier = Verifier::fixed(&issuer.jwks());
        let (token, exp) = issuer.issue("u1", 1_000).expect("token");
        assert_eq!(exp, 1_060);
        let leeway = i64::try_from(LEEWAY).expect("small");
        assert_eq!(verifier.verify(&token, 1_000).await, Ok("u1".into()));
        assert_eq!(
            verifier.verify(&token, 1_059 + leeway).await,
            Ok("u1".into())
        );
        assert_eq!(
            verifier.verify(&token, 1_060 + leeway).await,
            Err(TokenError::Expired)
        );
        let other = Verifier::fixed(&self::issuer().jwks());
        assert_eq!(
            other.verify(&token, 1_000).await,
            Err(TokenError::Forged),
            "another issuer's keys"
        );
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = B64.encode(
            serde_json::json!({"sub": "admin", "iss": ISSUER, "aud": AUDIENCE, "iat": 1_000, "exp": 1_060})
                .to_string(),
        );
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(
            verifier.verify(&forged, 1_000).await,
            Err(TokenError::Forged)
        );
        let unsigned = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(verifier.verify(&unsigned, 1_000).await.is_err());
        let hmac = format!(
            "{}.{}.{}",
            B64.encode(r#"{"alg":"HS256","kid":"x"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(verifier.verify(&hmac, 1_000).await, Err(TokenError::Forged));
        for garbage in ["", "a.b", "a.b.c", parts[1], &"x".repeat(MAX_TOKEN + 1)] {
            assert_eq!(
                verifier.verify(garbage, 1_000).await,
                Err(TokenError::Malformed),
                "{garbage}"
            );
        }
    }

    #[tokio::test]
    async fn issuer_audience_and_lifetime_are_checked() {
        let issuer = issuer();
        let verifier = Verifier::fixed(&issuer.jwks());
        let claims = |iss: &str, aud: &str, iat: i64, exp: i64| serde_json::json!({"sub": "u", "iss": iss, "aud": aud, "iat": iat, "exp": exp});
        let now = 10_000_000;
        let day = i64::try_from(MAX_TTL.as_secs()).expect("small");
        for (claims, refused) in [
            (
                claims("someone-else", AUDIENCE, now, now + 60),
                TokenError::Claim("iss"),
            ),
            (
                claims(ISSUER, "another-api", now, now + 60),
                TokenError::Claim("aud"),
            ),
            (
                claims(ISSUER, AUDIENCE, now, now + day + 3_600),
                TokenError::Lifetime,
            ),
            (
                claims(ISSUER, AUDIENCE, now + 3_600, now + 7_200),
                TokenError::Lifetime,
            ),
            (
                claims(ISSUER, AUDIENCE, now - 2 * day, now + 60),
                TokenError::Lifetime,
            ),
            (
                serde_json::json!({"sub": "u", "aud": AUDIENCE, "iat": now, "exp": now + 60}),
                TokenError::Malformed,
            ),
            (
                serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60}),
                TokenError::Malformed,
            ),
            (
                serde_json::json!({"sub": "u", "iss": ISSUER, "iat": now, "exp": now + 60}),
                TokenError::Malformed,
            ),
            (
                serde_json::json!({"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}),
                TokenError::Malformed,
            ),
            (
                serde_json::json!({"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "iat": now}),
                TokenError::Malformed,
            ),
            (
                serde_json::json!({"sub": "", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60}),
                TokenError::Claim("sub"),
            ),
        ] {
            assert_eq!(
                verifier.verify(&signed(&issuer, &claims), now).await,
                Err(refused),
                "{claims}"
            );
        }
        let fine = claims(ISSUER, AUDIENCE, now, now + day);
        assert_eq!(
            verifier.verify(&signed(&issuer, &fine), now).await,
            Ok("u".into())
        );
    }

    /// A verifier whose issuer does not answer: nothing listens at its address.
    fn unreachable() -> Verifier {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bound");
        let address = listener.local_addr().expect("address");
        drop(listener);
        Verifier::new(
            format!("http://{address}{}", crate::JWKS_PATH),
            reqwest::Client::new(),
        )
    }

    #[tokio::test]
    async fn callers_that_waited_for_a_failed_fetch_are_told_it_failed() {
        let verifier = unreachable();
        let seen = verifier.cache().generation;
        // Another caller's fetch fails while this one waits for it.
        let first = verifier.fetch_after(seen, true).await;
        assert!(
            matches!(first, Err(TokenError::Unavailable(_))),
            "{first:?}"
        );
        let waited = verifier.fetch_after(seen, true).await;
        assert!(
            matches!(waited, Err(TokenError::Unavailable(_))),
            "{waited:?}"
        );
        assert_eq!(verifier.cache().generation, seen + 1, "no second fetch");

        let (token, _) = issuer().issue("u", 1_000).expect("token");
        let answers = verify_at_once(&verifier, &token, 8).await;
        for answer in answers {
            assert!(
                matches!(answer, Err(TokenError::Unavailable(_))),
                "{answer:?}"
            );
        }
    }

    async fn verify_at_once(
        verifier: &Verifier,
        token: &str,
        n: usize,
    ) -> Vec<Result<String, TokenError>> {
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let verifier = verifier.clone();
                let token = token.to_owned();
                tokio::spawn(async move { verifier.verify(&token, 1_000).await })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.expect("joined"));
        }
        answers
    }

    #[tokio::test]
    async fn a_failed_fetch_leaves_stale_keys_stale_and_they_still_serve() {
        let issuer = issuer();
        let verifier = unreachable();
        {
            let mut cache = verifier.cache_mut();
            cache.keys = decoding_keys(&issuer.jwks());
            cache.generation = 1;
            // Fetched longer ago than MAX_AGE (when the clock has run that long).
            cache.fetched_at = Instant::now().checked_sub(MAX_AGE + Duration::from_secs(1));
            cache.tried_at = cache.fetched_at;
        }
        let (token, _) = issuer.issue("u", 1_000).expect("token");
        assert_eq!(verifier.verify(&token, 1_000).await, Ok("u".into()));
        let cache = verifier.cache();
        assert_eq!(cache.generation, 2, "a fetch was tried");
        assert!(
            !cache.is_fresh(),
            "a failed fetch does not make the keys fresh for another {MAX_AGE:?}"
        );
    }

    #[test]
    fn an_issuer_never_gives_a_token_a_longer_life_than_the_maximum() {
        let issuer = Issuer::new(
            KeyRing::generate().expect("key"),
            MAX_TTL + Duration::from_secs(1),
        );
        let (_, exp) = issuer.issue("u", 0).expect("token");
        assert_eq!(exp, i64::try_from(MAX_TTL.as_secs()).expect("small"));
    }
}
