//! kubeadm bootstrap tokens in the workload cluster (`kube-system/bootstrap-token-<id>`), as
//! kubeadm itself creates them, plus the pure rules for refreshing them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use capwin_payload::BootstrapToken;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;

/// The group kubeadm's default node bootstrap RBAC is bound to.
pub const NODE_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh random token from the OS CSPRNG.
pub fn generate() -> Result<BootstrapToken, getrandom::Error> {
    let mut bytes = [0u8; 22];
    getrandom::fill(&mut bytes)?;
    // 36 symbols: reject bytes >= 252 so every symbol is equally likely.
    let mut chars = Vec::with_capacity(22);
    let mut pool = bytes.to_vec();
    while chars.len() < 22 {
        match pool.pop() {
            Some(b) if b < 252 => chars.push(ALPHABET[(b % 36) as usize] as char),
            Some(_) => {}
            None => {
                let mut more = [0u8; 16];
                getrandom::fill(&mut more)?;
                pool.extend_from_slice(&more);
            }
        }
    }
    let s: String = chars.into_iter().collect();
    Ok(BootstrapToken { id: s[..6].to_string(), secret: s[6..].to_string() })
}

/// What a data Secret's payload carries in place of the join token once the Node has joined and
/// the token is deleted: the token's id (not secret) and a secret of zeros, which names no live
/// token (`generate` never makes one: 16 zeros are one in 36^16).
pub fn placeholder(id: &str) -> BootstrapToken {
    BootstrapToken { id: id.to_string(), secret: "0".repeat(16) }
}

/// `bootstrap-token-<id>`.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// RFC 3339 UTC, whole seconds (`2026-11-21T20:02:03Z`), as kubeadm writes `expiration`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    i64::try_from(secs).ok().and_then(|s| Timestamp::from_second(s).ok()).map(|ts| ts.to_string()).unwrap_or_default()
}

/// Parses an RFC 3339 timestamp (with an offset, as kubeadm and we write them).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let ts: Timestamp = s.parse().ok()?;
    u64::try_from(ts.as_second()).ok().map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
}

/// The token Secret kubeadm expects.
pub fn secret(token: &BootstrapToken, expires: SystemTime, description: &str) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        ("token-id", token.id.clone()),
        ("token-secret", token.secret.clone()),
        ("expiration", rfc3339(expires)),
        ("usage-bootstrap-authentication", "true".into()),
        ("usage-bootstrap-signing", "true".into()),
        ("auth-extra-groups", NODE_GROUP.into()),
        ("description", description.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(secret_name(&token.id)),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The expiration a token Secret carries.
pub fn expiration(s: &Secret) -> Option<SystemTime> {
    let raw = s.data.as_ref()?.get("expiration")?;
    parse_rfc3339(std::str::from_utf8(&raw.0).ok()?)
}

/// CABPK's rule: refresh when the token would expire before `now + 5/6 TTL`.
pub fn needs_refresh(expires: SystemTime, now: SystemTime, ttl: Duration) -> bool {
    expires < now + ttl.mul_f64(5.0 / 6.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_kubeadm_shaped_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(BootstrapToken::parse(&a.expose()).is_ok() && a != b);
    }

    #[test]
    fn rfc3339_round_trips() {
        for secs in [0u64, 951_782_400, 1_795_291_323, 4_102_444_800] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{}", rfc3339(t));
        }
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_291_323)), "2026-11-21T20:02:03Z");
        assert_eq!(parse_rfc3339("2026-11-21 20:02:03"), None);
    }

    #[test]
    fn the_secret_is_what_kubeadm_reads() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let s = secret(&t, UNIX_EPOCH + Duration::from_secs(1_795_291_323), "d");
        assert_eq!(s.metadata.name.as_deref(), Some("bootstrap-token-abcdef"));
        assert_eq!(s.type_.as_deref(), Some("bootstrap.kubernetes.io/token"));
        let d = s.data.as_ref().unwrap();
        assert_eq!(d["token-secret"].0, b"0123456789abcdef");
        assert_eq!(expiration(&s), Some(UNIX_EPOCH + Duration::from_secs(1_795_291_323)));
    }
}
