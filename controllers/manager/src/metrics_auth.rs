//! The secure metrics endpoint, as controller-runtime serves it with
//! `filters.WithAuthenticationAndAuthorization`:
//!
//! - HTTPS with `tls.crt`/`tls.key` from `--metrics-cert-dir`, else a self-signed certificate
//!   generated at start; rustls with the aws-lc-rs provider only, HTTP/1.1.
//! - Every request is authenticated with a `TokenReview` of its bearer token (none, or one the API
//!   server does not authenticate: 401) and authorised with a `SubjectAccessReview` for the user,
//!   verb = the lower-cased HTTP method and `nonResourceAttributes.path` = the request path (denied:
//!   403). An error talking to the API server is a 500.
//! - Results are cached as controller-runtime does: token reviews 1 min, allowed decisions 5 min,
//!   denied ones 30 s. Tokens are kept only as SHA-256 digests and never logged.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::{HeaderMap, Method};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;

/// controller-runtime's `CacheTTL` (authentication), `AllowCacheTTL` and `DenyCacheTTL`.
const TOKEN_TTL: Duration = Duration::from_secs(60);
const ALLOW_TTL: Duration = Duration::from_secs(5 * 60);
const DENY_TTL: Duration = Duration::from_secs(30);
/// controller-runtime's `TokenAccessReviewTimeout`; used for both reviews.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS server configuration: the mounted certificate, or a self-signed one.
pub fn tls_config(cert_dir: Option<&Path>) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (certs, key) = match cert_dir {
        Some(dir) => {
            let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
            let certs = CertificateDer::pem_file_iter(&crt)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading the metrics certificate {}", crt.display()))?;
            anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", crt.display());
            let key = PrivateKeyDer::from_pem_file(&key)
                .with_context(|| format!("reading the metrics key {}", key.display()))?;
            (certs, key)
        }
        None => {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
            let generated =
                rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
            let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
                .map_err(|e| anyhow::anyhow!("the generated key: {e}"))?;
            (vec![generated.cert.der().clone()], key)
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the metrics certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no bearer token, or one the API server does not authenticate.
    Unauthorized,
    /// 403: authenticated as this user, but not allowed.
    Forbidden(String),
    /// 500: a review could not be made.
    Failed(String),
}

#[derive(Clone, Debug)]
struct User {
    name: String,
    uid: Option<String>,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

/// Cached values with the instant they expire.
type Cache<K, V> = Mutex<HashMap<K, (Instant, V)>>;
/// (user, groups, verb, path).
type Decision = (String, Vec<String>, String, String);

/// TokenReview + SubjectAccessReview against the management cluster, with caches.
pub struct Auth {
    client: kube::Client,
    /// By the token's SHA-256 digest.
    tokens: Cache<[u8; 32], Option<User>>,
    decisions: Cache<Decision, bool>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn cached<K: std::hash::Hash + Eq, V: Clone>(cache: &Cache<K, V>, key: &K) -> Option<V> {
    let cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.get(key).filter(|(until, _)| Instant::now() < *until).map(|(_, v)| v.clone())
}

fn remember<K: std::hash::Hash + Eq, V>(cache: &Cache<K, V>, key: K, ttl: Duration, value: V) {
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    cache.retain(|_, (until, _)| now < *until);
    cache.insert(key, (now + ttl, value));
}

impl Auth {
    pub fn new(client: kube::Client) -> Self {
        Self { client, tokens: Mutex::default(), decisions: Mutex::default() }
    }

    /// Whether this request may be served.
    pub async fn check(&self, headers: &HeaderMap, method: &Method, path: &str) -> Result<(), Refusal> {
        let token = bearer(headers).ok_or(Refusal::Unauthorized)?;
        let user = self.authenticate(token).await?.ok_or(Refusal::Unauthorized)?;
        let verb = method.as_str().to_ascii_lowercase();
        if self.authorize(&user, &verb, path).await? {
            Ok(())
        } else {
            tracing::debug!(user = %user.name, verb, path, "metrics request denied");
            Err(Refusal::Forbidden(user.name))
        }
    }

    async fn authenticate(&self, token: &str) -> Result<Option<User>, Refusal> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(user) = cached(&self.tokens, &key) {
            return Ok(user);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), ..Default::default() },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| Refusal::Failed("the TokenReview timed out".into()))?
            .map_err(|e| {
                // The error is the API server's; the request (with the token) is not in it.
                tracing::error!(error = %e, "TokenReview failed");
                Refusal::Failed("Authentication failed".into())
            })?;
        let status = answer.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(u)) if u.username.as_deref().is_some_and(|n| !n.is_empty()) => Some(User {
                name: u.username.unwrap_or_default(),
                uid: u.uid,
                groups: u.groups.unwrap_or_default(),
                extra: u.extra.unwrap_or_default(),
            }),
            _ => None,
        };
        remember(&self.tokens, key, TOKEN_TTL, user.clone());
        Ok(user)
    }

    async fn authorize(&self, user: &User, verb: &str, path: &str) -> Result<bool, Refusal> {
        let key = (user.name.clone(), user.groups.clone(), verb.to_string(), path.to_string());
        if let Some(allowed) = cached(&self.decisions, &key) {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some(verb.to_string()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| Refusal::Failed(format!("Authorization for user {} failed", user.name)))?
            .map_err(|e| {
                tracing::error!(error = %e, user = %user.name, "SubjectAccessReview failed");
                Refusal::Failed(format!("Authorization for user {} failed", user.name))
            })?;
        let allowed = answer.status.is_some_and(|s| s.allowed && s.denied != Some(true));
        remember(&self.decisions, key, if allowed { ALLOW_TTL } else { DENY_TTL }, allowed);
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_like_kubernetes_does() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(hyper::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn a_mounted_certificate_or_a_self_signed_one() {
        let config = tls_config(None).unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        let dir = std::env::temp_dir().join(format!("capwin-metrics-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = rcgen::generate_simple_self_signed(vec!["capwin.example".to_string()]).unwrap();
        std::fs::write(dir.join("tls.crt"), mounted.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), mounted.signing_key.serialize_pem()).unwrap();
        tls_config(Some(&dir)).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["other.example".to_string()]).unwrap();
        std::fs::write(dir.join("tls.key"), other.signing_key.serialize_pem()).unwrap();
        let mismatch = tls_config(Some(&dir)).unwrap_err();
        assert!(format!("{mismatch:#}").contains("do not fit"), "{mismatch:#}");
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = tls_config(Some(Path::new("/nonexistent"))).unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/tls.crt"), "{missing:#}");
    }

    #[test]
    fn caches_expire() {
        let cache: Cache<u8, bool> = Mutex::default();
        remember(&cache, 1, Duration::from_secs(60), true);
        remember(&cache, 2, Duration::ZERO, false);
        assert_eq!(cached(&cache, &1), Some(true));
        assert_eq!(cached(&cache, &2), None);
    }
}
