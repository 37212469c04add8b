//! What a reconcile reads: the config, its owners from the Machine and Cluster caches, its data
//! Secret from the labelled-Secret cache ([`observe`]), and, only when [`crate::plan::plan`] asks
//! for it, the cluster's and the spec's Secrets, the token in the workload cluster and a fresh
//! token ([`read`]). Nothing here writes.

use std::collections::BTreeMap;

use capwin_api::bootstrap::WindowsKubeadmConfig;
use capwin_payload::{BootstrapToken, DomainJoinSecret, Redacted};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use crate::plan::{Blocked, DataSecret, Need, Observed, Owners};
use crate::reconcile::{
    Context, Error, INPUTS_ANNOTATION, TOKEN_ID_ANNOTATION, TOKEN_KEY, blocked, unreachable_workload,
};
use crate::views::{self, ClusterView, MachineView};
use crate::{ca, token};
use std::time::Duration;

/// What one reconcile has seen: the facts [`crate::plan::plan`] decides on, and the workload
/// client `act` uses (made from the kubeconfig Secret once the plan asked for it).
pub struct Seen {
    pub facts: Observed,
    pub workload: Option<Client>,
}

/// Reads what every reconcile decides on. No I/O but the caches' first-list wait, and one fresh
/// read (below) of the data Secret.
pub async fn observe(cfg: &WindowsKubeadmConfig, ctx: &Context) -> Result<Seen, Error> {
    let ns = cfg.namespace().unwrap_or_default();
    let name = cfg.name_any();
    let owner =
        cfg.owner_references().iter().find(|o| o.kind == "Machine" && o.api_version.starts_with("cluster.x-k8s.io/"));
    let owners = match owner {
        None => Owners::NoOwnerRef,
        Some(owner) => match ctx.cache.machine(&ns, &owner.name).await {
            None => Owners::MachineMissing(owner.name.clone()),
            Some(m) => {
                let machine = MachineView::of(&m);
                match machine.cluster_name.clone() {
                    None => Owners::NoClusterName(owner.name.clone()),
                    Some(c) => match ctx.cache.cluster(&ns, &c).await {
                        None => Owners::ClusterMissing(c),
                        Some(cluster) => Owners::Found { machine, cluster: ClusterView::of(&cluster) },
                    },
                }
            }
        },
    };
    let paused = cfg.annotations().contains_key(views::PAUSED_ANNOTATION);
    let created = cfg.status.as_ref().and_then(|s| s.initialization.as_ref()).and_then(|i| i.data_secret_created);
    let existing = match secret_in_cache(ctx, &ns, &name).await {
        Some(s) => Some(s),
        // Status says the Secret was written but the cache has not seen it yet (it lags our
        // own write by a watch event): only a fresh read tells "not yet seen" from "gone", and
        // a wrong "gone" would mint a second token.
        // Only for a config the plan gets that far with (owned, not paused).
        None if created == Some(true)
            && matches!(&owners, Owners::Found { cluster, .. } if !cluster.paused)
            && !paused =>
        {
            Api::<Secret>::namespaced(ctx.client.clone(), &ns).get_opt(&name).await?
        }
        None => None,
    };
    let data = existing.as_ref().map(|s| data_secret(cfg, s));
    let known_expiry = data.as_ref().and_then(|d| d.token.as_ref()).and_then(|t| ctx.expiry_of(&t.id));
    let facts = Observed {
        name,
        generation: cfg.metadata.generation,
        spec: cfg.spec.clone(),
        status: cfg.status.clone(),
        paused_annotation: paused,
        owners,
        data,
        known_expiry,
        ..Default::default()
    };
    Ok(Seen { facts, workload: None })
}

/// Reads what the plan asked for into `seen`. A missing or malformed input is recorded as the
/// [`Blocked`] it causes; only a failing API call is an error.
pub async fn read(need: Need, cfg: &WindowsKubeadmConfig, ctx: &Context, seen: &mut Seen) -> Result<(), Error> {
    let ns = cfg.namespace().unwrap_or_default();
    let cluster = match &seen.facts.owners {
        Owners::Found { machine, .. } => machine.cluster_name.clone().unwrap_or_default(),
        _ => String::new(),
    };
    let o = &mut seen.facts;
    match need {
        Need::CaSecret => o.ca_hashes = Some(or_blocked(cluster_ca_hashes(ctx, &ns, &cluster).await)?),
        Need::Kubeconfig => {
            let client = or_blocked(workload_client(ctx, &ns, &cluster).await)?;
            o.workload = Some(client.as_ref().map(|_| ()).map_err(Blocked::clone));
            seen.workload = client.ok();
        }
        // The expiry of a token this process did not set (a restart, a move): a fresh read in
        // the workload cluster, once; the expiry is remembered from then on.
        Need::WorkloadToken => {
            let id = o.data.as_ref().and_then(|d| d.token.as_ref()).map(|t| t.id.clone()).unwrap_or_default();
            let found = match &seen.workload {
                Some(w) => Api::<Secret>::namespaced(w.clone(), "kube-system")
                    .get_opt(&token::secret_name(&id))
                    .await
                    .map(|s| s.as_ref().map(token::expiration))
                    .map_err(|e| unreachable_workload(&cluster, e)),
                None => Err(Blocked::new("InternalError", "no workload client", Some(Duration::from_secs(10)))),
            };
            o.workload_token = Some(found);
        }
        Need::Files => o.files = Some(or_blocked(resolve_content_from(cfg, ctx).await.map(Redacted))?),
        Need::DomainJoin => o.domain_join = Some(or_blocked(resolve_domain_join(cfg, ctx).await)?),
        Need::FreshToken => o.fresh_token = Some(token::generate().map_err(|e| Error::Random(e.to_string()))?),
    }
    Ok(())
}

/// A block becomes a fact for the plan; any other error ends the reconcile.
fn or_blocked<T>(r: Result<T, Error>) -> Result<Result<T, Blocked>, Error> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(Error::Blocked(b)) => Ok(Err(b)),
        Err(e) => Err(e),
    }
}

/// The data Secret's facts.
fn data_secret(cfg: &WindowsKubeadmConfig, s: &Secret) -> DataSecret {
    let data = s.data.as_ref();
    let uid = cfg.uid();
    DataSecret {
        has_token_key: data.is_some_and(|d| d.contains_key(TOKEN_KEY)),
        token: stored_token(s),
        has_value: data.is_some_and(|d| d.contains_key("value")),
        value_digest: value_digest(s),
        token_id: s.annotations().get(TOKEN_ID_ANNOTATION).cloned(),
        inputs_digest: s.annotations().get(INPUTS_ANNOTATION).cloned(),
        owned: s.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true)),
        other_owners: s.owner_references().iter().filter(|o| o.controller != Some(true)).cloned().collect(),
    }
}

/// The join token a data Secret holds.
pub(crate) fn stored_token(s: &Secret) -> Option<BootstrapToken> {
    let raw = s.data.as_ref()?.get(TOKEN_KEY)?;
    BootstrapToken::parse(std::str::from_utf8(&raw.0).ok()?).ok()
}

/// A Secret from the cache of labelled Secrets; one without the `cluster.x-k8s.io/cluster-name`
/// label is outside the cache and is read by GET (a fresh read the cache cannot answer).
pub(crate) async fn cached_secret(ctx: &Context, ns: &str, name: &str) -> Result<Option<Secret>, Error> {
    if let Some(s) = secret_in_cache(ctx, ns, name).await {
        return Ok(Some(s));
    }
    Ok(Api::<Secret>::namespaced(ctx.client.clone(), ns).get_opt(name).await?)
}

/// A labelled Secret as the cache holds it, once the Secret watch has listed.
async fn secret_in_cache(ctx: &Context, ns: &str, name: &str) -> Option<Secret> {
    ctx.secrets.wait_until_ready().await.ok()?;
    ctx.secrets.get(&ObjectRef::new(name).within(ns)).map(|s| s.as_ref().clone())
}

/// What the Secret cache keeps of a data Secret's payload: a digest, not the bytes (a thousand
/// payloads of tens of KiB each would be most of the manager's memory). Only this controller's
/// data Secrets are slimmed; the CA and kubeconfig Secrets are read in full.
const CACHED_DIGEST_PREFIX: &[u8] = b"capwin-cache-digest:";

pub(crate) fn slim_secret(s: &mut Secret) {
    capwin_runtime::strip_managed_fields(s);
    let ours = s.annotations().contains_key(INPUTS_ANNOTATION)
        || s.annotations().contains_key(TOKEN_ID_ANNOTATION)
        || s.owner_references().iter().any(|o| o.kind == "WindowsKubeadmConfig");
    if let Some(v) = s.data.as_mut().and_then(|d| d.get_mut("value"))
        && ours
    {
        let digest = capwin_runtime::hash_of(&v.0.as_slice());
        v.0 = [CACHED_DIGEST_PREFIX, format!("{digest:016x}").as_bytes()].concat();
    }
}

/// The digest of a data Secret's payload: the cache's digest, or of the bytes a GET returned.
pub(crate) fn value_digest(s: &Secret) -> Option<u64> {
    let v = s.data.as_ref()?.get("value")?.0.as_slice();
    match v.strip_prefix(CACHED_DIGEST_PREFIX) {
        Some(hex) => u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok(),
        None => Some(capwin_runtime::hash_of(&v)),
    }
}

async fn cluster_ca_hashes(ctx: &Context, ns: &str, cluster: &str) -> Result<Vec<String>, Error> {
    let name = format!("{cluster}-ca");
    let Some(s) = cached_secret(ctx, ns, &name).await? else {
        return Err(blocked("MissingCASecret", format!("Secret {name} does not exist"), Some(Duration::from_secs(15))));
    };
    let Some(crt) = s.data.as_ref().and_then(|d| d.get("tls.crt")) else {
        return Err(blocked("InvalidCASecret", format!("Secret {name} has no tls.crt"), Some(Duration::from_secs(30))));
    };
    ca::ca_cert_hashes(&crt.0).map_err(|e| {
        blocked("InvalidCASecret", format!("Secret {name} key tls.crt: {e}"), Some(Duration::from_secs(30)))
    })
}

/// The workload cluster's client, made from `<cluster>-kubeconfig` (no network: the client is
/// kept per cluster until the Secret changes).
pub(crate) async fn workload_client(ctx: &Context, ns: &str, cluster: &str) -> Result<Client, Error> {
    let name = format!("{cluster}-kubeconfig");
    let Some(s) = cached_secret(ctx, ns, &name).await? else {
        return Err(blocked(
            "MissingKubeconfigSecret",
            format!("Secret {name} does not exist"),
            Some(Duration::from_secs(15)),
        ));
    };
    let version = s.metadata.resource_version.clone().unwrap_or_default();
    let key = (ns.to_string(), cluster.to_string());
    if let Some((v, c)) = ctx.workload.0.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
        && *v == version
    {
        return Ok(c.clone());
    }
    let invalid = |why: String| {
        blocked("InvalidKubeconfigSecret", format!("Secret {name} key value: {why}"), Some(Duration::from_secs(30)))
    };
    let raw = s.data.as_ref().and_then(|d| d.get("value")).ok_or_else(|| invalid("missing".into()))?;
    let text = std::str::from_utf8(&raw.0).map_err(|_| invalid("not UTF-8".into()))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text).map_err(|_| invalid("not a kubeconfig".into()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|_| invalid("unusable kubeconfig".into()))?;
    let client = Client::try_from(config).map_err(|_| invalid("cannot build a client from it".into()))?;
    ctx.workload.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (version, client.clone()));
    Ok(client)
}

/// The `files[].contentFrom` Secrets' contents: from the cache when labelled with the cluster
/// name (as capwin's and CAPI's are), else by GET.
async fn resolve_content_from(cfg: &WindowsKubeadmConfig, ctx: &Context) -> Result<BTreeMap<usize, Vec<u8>>, Error> {
    let ns = cfg.namespace().unwrap_or_default();
    let mut out = BTreeMap::new();
    for (i, f) in cfg.spec.files.iter().enumerate() {
        let Some(from) = &f.content_from else { continue };
        let r = &from.secret;
        let Some(s) = cached_secret(ctx, &ns, &r.name).await? else {
            return Err(blocked(
                "MissingFileSecret",
                format!("spec.files[{i}].contentFrom: Secret {} does not exist", r.name),
                Some(Duration::from_secs(30)),
            ));
        };
        let Some(v) = s.data.as_ref().and_then(|d| d.get(&r.key)) else {
            return Err(blocked(
                "MissingFileSecret",
                format!("spec.files[{i}].contentFrom: Secret {} has no key {}", r.name, r.key),
                Some(Duration::from_secs(30)),
            ));
        };
        out.insert(i, v.0.clone());
    }
    Ok(out)
}

/// The domain join account of `spec.windows.domainJoin`, read from its Secret like
/// `files[].contentFrom`. Errors name the Secret and key, never a value.
async fn resolve_domain_join(cfg: &WindowsKubeadmConfig, ctx: &Context) -> Result<Option<DomainJoinSecret>, Error> {
    let Some(join) = &cfg.spec.windows.domain_join else { return Ok(None) };
    let r = &join.credentials_secret;
    let missing = |what: String| {
        blocked(
            "MissingDomainJoinSecret",
            format!("spec.windows.domainJoin.credentialsSecret: {what}"),
            Some(Duration::from_secs(30)),
        )
    };
    let Some(s) = cached_secret(ctx, &cfg.namespace().unwrap_or_default(), &r.name).await? else {
        return Err(missing(format!("Secret {} does not exist", r.name)));
    };
    let key = |k: &str| s.data.as_ref().and_then(|d| d.get(k)).map(|v| v.0.clone());
    let (Some(username), Some(password)) = (key(r.username_key()), key(r.password_key())) else {
        return Err(missing(format!("Secret {} needs the keys {} and {}", r.name, r.username_key(), r.password_key())));
    };
    Ok(Some(DomainJoinSecret { username, password }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn data_secret(value: &[u8], annotated: bool) -> Secret {
        let mut s = Secret {
            data: Some(BTreeMap::from([
                ("value".to_string(), ByteString(value.to_vec())),
                (TOKEN_KEY.to_string(), ByteString(b"abcdef.0123456789abcdef".to_vec())),
            ])),
            ..Default::default()
        };
        if annotated {
            s.metadata.annotations = Some(BTreeMap::from([(INPUTS_ANNOTATION.to_string(), "d".to_string())]));
        }
        s
    }

    #[test]
    fn the_cache_keeps_a_payload_digest_that_compares_like_the_bytes() {
        let payload = vec![7u8; 40_000];
        let fetched = data_secret(&payload, true);
        let mut cached = fetched.clone();
        slim_secret(&mut cached);
        let kept = &cached.data.as_ref().unwrap()["value"].0;
        assert!(kept.len() < 64, "the payload is not kept: {} bytes", kept.len());
        assert_eq!(value_digest(&cached), value_digest(&fetched), "cached and fetched compare alike");
        assert_eq!(value_digest(&fetched), Some(capwin_runtime::hash_of(&payload.as_slice())));
        assert_ne!(value_digest(&cached), value_digest(&data_secret(&[8u8; 40_000], true)));
        assert!(cached.data.as_ref().unwrap().contains_key(TOKEN_KEY), "other keys stay");

        // Not a data Secret of this controller (a kubeconfig): kept whole.
        let mut kubeconfig = data_secret(b"apiVersion: v1", false);
        slim_secret(&mut kubeconfig);
        assert_eq!(kubeconfig.data.unwrap()["value"].0, b"apiVersion: v1");
    }

    #[test]
    fn the_data_secret_is_read_into_facts() {
        let cfg = WindowsKubeadmConfig {
            metadata: kube::api::ObjectMeta { uid: Some("u1".into()), ..Default::default() },
            spec: Default::default(),
            status: None,
        };
        let mut s = data_secret(b"payload", true);
        s.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                uid: "u1".into(),
                controller: Some(true),
                ..Default::default()
            },
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference { uid: "x".into(), ..Default::default() },
        ]);
        let d = super::data_secret(&cfg, &s);
        assert!(d.has_token_key && d.has_value && d.owned);
        assert_eq!(d.token.map(|t| t.id), Some("abcdef".into()));
        assert_eq!(d.inputs_digest.as_deref(), Some("d"));
        assert_eq!(d.other_owners.len(), 1, "only the other, non-controller reference");
    }
}
