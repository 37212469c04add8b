//! Pure decisions: what the reconciler should do, given what it observed ([`plan`]: from an
//! [`Observed`] to the steps, the status and the requeue of one reconcile), unit-tested here.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use capwin_api::bootstrap::{BootstrapInitialization, WindowsKubeadmConfigSpec, WindowsKubeadmConfigStatus};
use capwin_payload::{BootstrapToken, Cloud, ClusterInputs, DomainJoinSecret, Redacted, RenderError, RenderInput};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::views::{ClusterView, MachineView};
use crate::{conditions, token};

/// Why the reconciler cannot produce data yet: the one blocked type of every controller.
pub use capwin_runtime::Blocked;

/// What the gates found when the config may proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub endpoint: String,
    pub version: String,
    pub cloud: Cloud,
}

/// The facts the gates look at.
#[derive(Debug, Clone, Default)]
pub struct GateFacts {
    pub control_plane_machine: bool,
    pub infrastructure_provisioned: bool,
    pub control_plane_initialized: bool,
    pub endpoint: Option<String>,
    pub version: Option<String>,
    pub infrastructure_kind: Option<String>,
}

/// Gate order follows CABPK: infrastructure, control plane, endpoint; then what the payload needs.
pub fn gates(o: &GateFacts) -> Result<Ready, Blocked> {
    if o.control_plane_machine {
        return Err(Blocked::new(
            "ControlPlaneNotSupported",
            "the owning Machine is a control-plane Machine; Windows nodes only join as workers",
            None,
        ));
    }
    if !o.infrastructure_provisioned {
        return Err(Blocked::new(
            "WaitingForClusterInfrastructure",
            "the Cluster's infrastructure is not provisioned yet",
            None,
        ));
    }
    if !o.control_plane_initialized {
        return Err(Blocked::new(
            "WaitingForControlPlaneInitialized",
            "the Cluster's control plane is not initialized yet",
            Some(Duration::from_secs(30)),
        ));
    }
    let endpoint = o.endpoint.clone().ok_or_else(|| {
        Blocked::new(
            "MissingControlPlaneEndpoint",
            "Cluster.spec.controlPlaneEndpoint has no host or port",
            Some(Duration::from_secs(10)),
        )
    })?;
    let version = o.version.clone().ok_or_else(|| {
        Blocked::new(
            "MissingKubernetesVersion",
            "Machine.spec.version is empty; the payload needs the Kubernetes version",
            Some(Duration::from_secs(60)),
        )
    })?;
    let cloud = match o.infrastructure_kind.as_deref() {
        Some(k) if k.starts_with("AWS") => Cloud::Aws,
        Some(k) if k.starts_with("Azure") => Cloud::Azure,
        other => {
            return Err(Blocked::new(
                "UnsupportedInfrastructure",
                format!(
                    "Machine.spec.infrastructureRef.kind {:?} is neither an Azure nor an AWS kind",
                    other.unwrap_or("")
                ),
                None,
            ));
        }
    };
    Ok(Ready { endpoint, version, cloud })
}

/// What to do with the join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAction {
    /// No token yet: mint one and render with it.
    Mint,
    /// The token in the data Secret is gone from the workload cluster and the VM has not
    /// booted with it: mint a new one and re-render.
    Rotate,
    /// The token is gone but the VM already carries it: recreate the same token.
    Recreate,
    /// Push the expiry out.
    Refresh,
    /// The Node has joined: delete the token.
    Delete,
    Keep,
}

/// The token facts.
#[derive(Debug, Clone, Copy)]
pub struct TokenState {
    /// The data Secret holds a token.
    pub have_token: bool,
    /// Its Secret in the workload cluster exists, with this expiry.
    pub workload_expiry: Option<Option<SystemTime>>,
    pub vm_provisioned: bool,
    pub node_joined: bool,
}

pub fn token_action(t: TokenState, now: SystemTime, ttl: Duration) -> TokenAction {
    if t.node_joined {
        return if t.workload_expiry.is_some() { TokenAction::Delete } else { TokenAction::Keep };
    }
    if !t.have_token {
        return TokenAction::Mint;
    }
    match t.workload_expiry {
        None if t.vm_provisioned => TokenAction::Recreate,
        None => TokenAction::Rotate,
        Some(None) => TokenAction::Refresh,
        Some(Some(exp)) if crate::token::needs_refresh(exp, now, ttl) => TokenAction::Refresh,
        Some(Some(_)) => TokenAction::Keep,
    }
}

/// Re-render only before the VM has the payload: afterwards the Secret stays as the VM saw it.
/// Payloads are compared by digest (the Secret cache keeps no payload bytes).
pub fn should_write(existing: Option<u64>, rendered: u64, vm_provisioned: bool) -> bool {
    match existing {
        None => true,
        Some(old) => old != rendered && !vm_provisioned,
    }
}

/// After the join, the data Secret is rewritten while it still holds the token key or a payload
/// that differs from the one rendered with the placeholder token (`rendered`; `None` when the
/// spec no longer renders, then only the key goes).
pub fn scrub_after_join(has_token_key: bool, old_value: Option<u64>, rendered: Option<u64>) -> bool {
    has_token_key || rendered.is_some_and(|r| old_value != Some(r))
}

// ---------------------------------------------------------------------------------------------
// One reconcile's plan: from what was observed to what to do, the status and the requeue.
// ---------------------------------------------------------------------------------------------

/// How looking up the config's owners went.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Owners {
    /// No owner reference to a CAPI Machine yet (CAPI sets it).
    #[default]
    NoOwnerRef,
    /// The owning Machine (named) is not in the cache.
    MachineMissing(String),
    /// The owning Machine (named) has no `spec.clusterName`.
    NoClusterName(String),
    /// The Machine's Cluster (named) is not in the cache.
    ClusterMissing(String),
    Found {
        machine: MachineView,
        cluster: ClusterView,
    },
}

/// The existing data Secret, as far as decisions go (the cache keeps a digest of its payload,
/// not the bytes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataSecret {
    /// The `bootstrap-token` key is there (only the post-join scrub removes it).
    pub has_token_key: bool,
    /// The token under that key, when it parses.
    pub token: Option<BootstrapToken>,
    /// The `value` key is there.
    pub has_value: bool,
    /// Digest of `value` (the cache's, or of the bytes a GET returned).
    pub value_digest: Option<u64>,
    /// The token-id annotation (the id is not secret).
    pub token_id: Option<String>,
    /// The inputs-digest annotation: what `value` was rendered from.
    pub inputs_digest: Option<String>,
    /// The config's controller owner reference is on it.
    pub owned: bool,
    /// Its owner references that are not controllers (kept when ours is re-asserted).
    pub other_owners: Vec<OwnerReference>,
}

/// The contents of `spec.files[].contentFrom` Secrets, by file index. `Debug` never shows them.
pub type FileContents = Redacted<BTreeMap<usize, Vec<u8>>>;

/// What a reconcile decides on. The config, its owners (from the Machine and Cluster caches),
/// its data Secret and the token expiry this process remembers are read up front; the rest is
/// read only when [`plan`] asks for it ([`Need`]; `None` here: not read), so a config waiting at a
/// gate reads no Secret and a finished one renders nothing.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub name: String,
    pub generation: Option<i64>,
    pub spec: WindowsKubeadmConfigSpec,
    pub status: Option<WindowsKubeadmConfigStatus>,
    /// The config's `cluster.x-k8s.io/paused` annotation.
    pub paused_annotation: bool,
    pub owners: Owners,
    pub data: Option<DataSecret>,
    /// The expiry this process gave the data Secret's token, when it did.
    pub known_expiry: Option<SystemTime>,
    /// `<cluster>-ca`: the CA's public-key hashes, or why there are none.
    pub ca_hashes: Option<Result<Vec<String>, Blocked>>,
    /// `<cluster>-kubeconfig`: a workload-cluster client is at hand, or why not.
    pub workload: Option<Result<(), Blocked>>,
    /// The token's Secret in the workload cluster: `Ok(None)` absent, `Ok(Some(expiry))` there.
    pub workload_token: Option<Result<Option<Option<SystemTime>>, Blocked>>,
    pub files: Option<Result<FileContents, Blocked>>,
    /// The domain join account (`None` inside: the spec has no domain join).
    pub domain_join: Option<Result<Option<DomainJoinSecret>, Blocked>>,
    /// A new random token, for a mint.
    pub fresh_token: Option<BootstrapToken>,
}

/// What [`plan`] needs read before it can decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    CaSecret,
    Kubeconfig,
    /// The token's Secret in the workload cluster (its expiry is not known to this process:
    /// a restart, a move).
    WorkloadToken,
    Files,
    DomainJoin,
    FreshToken,
}

/// What to do with the join token in the workload cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenStep {
    Keep,
    /// Create the token's Secret: a new token (`minted`), or the VM's own again. `announce`: a
    /// replacement gets its own event (the first is told in the `DataSecretWritten` event).
    Create {
        token: BootstrapToken,
        minted: bool,
        announce: bool,
    },
    /// Push the expiry out.
    Refresh(BootstrapToken),
    /// The Node has joined.
    Delete(BootstrapToken),
}

/// What to do with the data Secret.
#[derive(Clone, Debug, PartialEq)]
pub enum DataStep {
    Keep,
    /// Create (`exists == false`) or patch the data Secret with this payload.
    Write {
        payload: Redacted<Vec<u8>>,
        token: BootstrapToken,
        inputs_digest: String,
        cloud: Cloud,
        exists: bool,
    },
    /// Same bytes from new inputs (a spec edit that changes nothing rendered): remember the
    /// inputs, so the next pass neither reads nor renders.
    RecordInputs(String),
    /// After the join: drop the token key, and replace `value` with the payload rendered with
    /// the placeholder token when it rendered.
    Scrub {
        value: Option<Redacted<Vec<u8>>>,
    },
}

/// Where the reconcile ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The data Secret exists: `Ready=True` (`Joined` once the Node has).
    Ready { joined: bool },
    /// `Ready=False` with the reason (or `Paused=True`), an event when the reason is new.
    Blocked(Blocked),
}

/// When to look again.
#[derive(Clone, Debug, PartialEq)]
pub enum Requeue {
    AwaitChange,
    After(Duration),
    /// Blocked: the reconcile's one backoff rule stretches `retry` (`capwin_runtime::Backoff`).
    Blocked(Blocked),
}

/// The one status write of a reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    pub status: WindowsKubeadmConfigStatus,
    /// A Warning event is due: the blocking reason is new (never for a pause).
    pub warn: bool,
    pub requeue: Requeue,
}

/// The decision of one reconcile. Steps run in this order: token, owner reference, data Secret,
/// then the status commit.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub token: TokenStep,
    /// Re-assert the config's controller owner reference on the data Secret (as CABPK does).
    pub ensure_owner: bool,
    pub data: DataStep,
    /// Size of a payload rendered this pass (for the payload-size metric).
    pub rendered_bytes: Option<usize>,
    pub outcome: Outcome,
    pub commit: Commit,
}

/// A plan: read something more, or act.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant, reason = "one per reconcile, on the stack, never stored")]
pub enum Plan {
    Read(Need),
    Act(Decision),
}

/// What a scrubbed payload carries in place of the domain join account after the join.
static DOMAIN_JOIN_PLACEHOLDER: std::sync::LazyLock<DomainJoinSecret> = std::sync::LazyLock::new(|| DomainJoinSecret {
    username: b"redacted\\redacted".to_vec(),
    password: b"redacted".to_vec(),
});

impl Decision {
    fn new(o: &Observed, outcome: Outcome, now: SystemTime, ttl: Duration) -> Self {
        let commit = commit(o, &outcome, now, ttl);
        Self {
            token: TokenStep::Keep,
            ensure_owner: false,
            data: DataStep::Keep,
            rendered_bytes: None,
            outcome,
            commit,
        }
    }
}

/// The order of decisions (CABPK's, plus what the VM's payload freezes): owners, pause, gates,
/// the cluster's CA and kubeconfig, the join, the token, then render and write only what
/// changed. `now` and `ttl` time the token and the conditions.
pub fn plan(o: &Observed, now: SystemTime, ttl: Duration) -> Plan {
    let blocked = |b: Blocked| Plan::Act(Decision::new(o, Outcome::Blocked(b), now, ttl));
    let ready = |joined: bool| Decision::new(o, Outcome::Ready { joined }, now, ttl);
    let (machine, cluster) = match &o.owners {
        Owners::NoOwnerRef => {
            let why = "no CAPI Machine owns this config yet; nothing to do until one does";
            return blocked(Blocked::new("WaitingForMachineOwner", why, None));
        }
        Owners::MachineMissing(m) => {
            let why = format!("the owning Machine {m} does not exist");
            return blocked(Blocked::new("WaitingForMachineOwner", why, Some(Duration::from_secs(30))));
        }
        Owners::NoClusterName(m) => {
            return blocked(Blocked::new("MissingClusterName", format!("Machine {m} has no spec.clusterName"), None));
        }
        Owners::ClusterMissing(c) => {
            let why = format!("Cluster {c} does not exist");
            return blocked(Blocked::new("WaitingForCluster", why, Some(Duration::from_secs(30))));
        }
        Owners::Found { machine, cluster } => (machine, cluster),
    };
    if o.paused_annotation || cluster.paused {
        let why = if o.paused_annotation {
            "the config carries the cluster.x-k8s.io/paused annotation"
        } else {
            "Cluster.spec.paused is true"
        };
        return blocked(Blocked::new("Paused", why, None));
    }
    let gated = gates(&GateFacts {
        control_plane_machine: machine.control_plane,
        infrastructure_provisioned: cluster.infrastructure_provisioned,
        control_plane_initialized: cluster.control_plane_initialized,
        endpoint: cluster.endpoint.clone(),
        version: machine.version.clone(),
        infrastructure_kind: machine.infrastructure_kind.clone(),
    });
    let gate = match gated {
        Ok(r) => r,
        Err(b) if o.data.is_none() => return blocked(b),
        // Once data exists, only token upkeep matters; the gates were passed before.
        Err(_) => Ready {
            endpoint: cluster.endpoint.clone().unwrap_or_default(),
            version: machine.version.clone().unwrap_or_default(),
            cloud: if machine.infrastructure_kind.as_deref().unwrap_or_default().starts_with("AWS") {
                Cloud::Aws
            } else {
                Cloud::Azure
            },
        },
    };
    let ca_hashes = match &o.ca_hashes {
        None => return Plan::Read(Need::CaSecret),
        Some(Err(b)) => return blocked(b.clone()),
        Some(Ok(h)) => h.clone(),
    };
    match &o.workload {
        None => return Plan::Read(Need::Kubeconfig),
        Some(Err(b)) => return blocked(b.clone()),
        Some(Ok(())) => {}
    }
    let inputs = ClusterInputs {
        api_server_endpoint: gate.endpoint.clone(),
        ca_cert_hashes: ca_hashes,
        kubernetes_version: gate.version.clone(),
        pod_cidrs: cluster.pod_cidrs.clone(),
        service_cidrs: cluster.service_cidrs.clone(),
    };
    if machine.joined
        && let Some(data) = &o.data
    {
        return after_join(o, data, &inputs, gate.cloud, ready(true));
    }
    // Only the post-join scrub removes the token key: a data Secret without it belongs to a Node
    // that joined. After `clusterctl move` the Machine's status (its nodeRef) is empty until CAPI
    // finds the Node again; the config stays Joined and neither mints a token nor rewrites.
    if let Some(d) = &o.data
        && d.has_value
        && !d.has_token_key
    {
        return Plan::Act(Decision { ensure_owner: !d.owned, ..ready(true) });
    }

    let current = o.data.as_ref().and_then(|d| d.token.clone());
    let workload_expiry = match (&current, o.known_expiry) {
        (Some(_), Some(exp)) => Some(Some(exp)),
        (Some(_), None) => match &o.workload_token {
            None => return Plan::Read(Need::WorkloadToken),
            Some(Err(b)) => return blocked(b.clone()),
            Some(Ok(found)) => *found,
        },
        (None, _) => None,
    };
    let action = token_action(
        TokenState {
            have_token: current.is_some(),
            workload_expiry,
            vm_provisioned: machine.provisioned,
            node_joined: machine.joined,
        },
        now,
        ttl,
    );
    let (token_step, tok) = match (action, &current) {
        (TokenAction::Mint | TokenAction::Rotate, _) => match &o.fresh_token {
            None => return Plan::Read(Need::FreshToken),
            Some(t) => (TokenStep::Create { token: t.clone(), minted: true, announce: o.data.is_some() }, t.clone()),
        },
        (TokenAction::Recreate, Some(t)) => {
            (TokenStep::Create { token: t.clone(), minted: false, announce: false }, t.clone())
        }
        (TokenAction::Refresh, Some(t)) => (TokenStep::Refresh(t.clone()), t.clone()),
        // A joined machine with a data Secret never gets here (`after_join` deletes its token).
        (_, Some(t)) => (TokenStep::Keep, t.clone()),
        (_, None) => {
            return blocked(Blocked::new(
                "InternalError",
                "no token and nothing to mint one from",
                Some(Duration::from_secs(10)),
            ));
        }
    };
    // Blocked before the payload is written: a new token would reach no one (and the next pass
    // would mint another), so it is not made; upkeep of the one the VM holds still happens.
    let blocked_with_upkeep = |b: Blocked| {
        let token = if matches!(token_step, TokenStep::Create { minted: true, .. }) {
            TokenStep::Keep
        } else {
            token_step.clone()
        };
        Plan::Act(Decision { token, ..Decision::new(o, Outcome::Blocked(b), now, ttl) })
    };
    let provisioned = machine.provisioned;
    let joined = machine.joined;

    // Rendered already from these very inputs: nothing to read or render.
    let digest = inputs_digest(&o.spec, &inputs, &tok, gate.cloud);
    let token_changed = current.as_ref() != Some(&tok);
    if let Some(d) = &o.data
        && !token_changed
        && d.inputs_digest.as_ref() == Some(&digest)
    {
        return Plan::Act(Decision { token: token_step, ensure_owner: !d.owned, ..ready(joined) });
    }

    let files = match &o.files {
        None => return Plan::Read(Need::Files),
        Some(Err(b)) => return blocked_with_upkeep(b.clone()),
        Some(Ok(f)) => f,
    };
    let domain_join = match &o.domain_join {
        None => return Plan::Read(Need::DomainJoin),
        Some(Err(b)) => return blocked_with_upkeep(b.clone()),
        Some(Ok(d)) => d.as_ref(),
    };
    let rendered = capwin_payload::render(&RenderInput {
        spec: &o.spec,
        secret_file_contents: &files.0,
        domain_join_secret: domain_join,
        cluster: &inputs,
        token: &tok,
        cloud: gate.cloud,
    });
    let frozen = o.data.is_some() && provisioned;
    let payload = match rendered {
        Ok(p) => p.bytes,
        Err(e @ RenderError::Invalid(_)) if !frozen => {
            return blocked_with_upkeep(Blocked::new("InvalidSpec", e.to_string(), Some(Duration::from_secs(60))));
        }
        Err(e @ RenderError::TooLarge { .. }) if !frozen => {
            let retry = Some(Duration::from_secs(60));
            return blocked_with_upkeep(Blocked::new("PayloadTooLarge", e.to_string(), retry));
        }
        // The VM already has its payload; a later spec change cannot reach it anyway.
        Err(_) => return Plan::Act(Decision { token: token_step, ..ready(joined) }),
    };

    let old_value = o.data.as_ref().and_then(|d| d.value_digest);
    let new_value = capwin_runtime::hash_of(&payload.as_slice());
    let rendered_bytes = Some(payload.len());
    let (data, ensure_owner) = match &o.data {
        d if d.is_none() || should_write(old_value, new_value, provisioned) || (token_changed && !provisioned) => (
            DataStep::Write {
                payload: Redacted(payload),
                token: tok,
                inputs_digest: digest,
                cloud: gate.cloud,
                exists: d.is_some(),
            },
            false,
        ),
        Some(d) if d.inputs_digest.as_ref() != Some(&digest) && !provisioned => {
            (DataStep::RecordInputs(digest), !d.owned)
        }
        Some(d) => (DataStep::Keep, !d.owned),
        None => (DataStep::Keep, false),
    };
    Plan::Act(Decision { token: token_step, ensure_owner, data, rendered_bytes, ..ready(joined) })
}

/// The Node has joined: the join token is deleted from the workload cluster, and the data Secret
/// keeps nothing live. Its `bootstrap-token` key goes, and `value` is rendered again with
/// [`token::placeholder`] in place of the token, so no copy of a join credential outlives its use
/// here (the VM's own copy, in its user data / custom data, names a token that no longer exists).
fn after_join(o: &Observed, data: &DataSecret, inputs: &ClusterInputs, cloud: Cloud, joined: Decision) -> Plan {
    if !data.has_token_key {
        // Scrubbed on an earlier pass: no Secret reads and no render again.
        return Plan::Act(joined);
    }
    // A file Secret that cannot be read renders without it: the token goes all the same.
    let files = match &o.files {
        None => return Plan::Read(Need::Files),
        Some(f) => f.as_ref().map(|f| f.0.clone()).unwrap_or_default(),
    };
    let id = data.token.as_ref().map(|t| t.id.clone()).or_else(|| data.token_id.clone());
    let placeholder = token::placeholder(id.as_deref().unwrap_or("000000"));
    // A spec that no longer renders (changed after the VM got its payload) keeps the old value.
    let rendered = capwin_payload::render(&RenderInput {
        spec: &o.spec,
        secret_file_contents: &files,
        // The domain join account has served too: the scrubbed payload names none.
        domain_join_secret: o.spec.windows.domain_join.as_ref().map(|_| &*DOMAIN_JOIN_PLACEHOLDER),
        cluster: inputs,
        token: &placeholder,
        cloud,
    })
    .ok()
    .map(|p| p.bytes);
    let rendered_digest = rendered.as_ref().map(|r| capwin_runtime::hash_of(&r.as_slice()));
    let scrub = scrub_after_join(data.has_token_key, data.value_digest, rendered_digest);
    Plan::Act(Decision {
        token: data.token.clone().map_or(TokenStep::Keep, TokenStep::Delete),
        data: if scrub { DataStep::Scrub { value: rendered.map(Redacted) } } else { DataStep::Keep },
        ..joined
    })
}

/// The digest of what a payload is rendered from: the spec, the cluster's inputs, the token's
/// id (never its secret) and the cloud. Secrets named by the spec are not in it: like CABPK, a
/// changed file Secret reaches machines rendered after a spec change, not existing ones.
pub fn inputs_digest(
    spec: &WindowsKubeadmConfigSpec,
    inputs: &ClusterInputs,
    tok: &BootstrapToken,
    cloud: Cloud,
) -> String {
    use sha2::Digest;
    let spec = serde_json::to_string(spec).unwrap_or_default();
    let text = format!("{spec}\n{inputs:?}\n{}\n{}", tok.id, cloud.as_str());
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The status an outcome commits, and when to look again. Blocked: `Ready=False` (and
/// `DataSecretAvailable=False` while there is no data) with the reason, or only `Paused=True`;
/// ready: the data Secret's name, `Ready=True` and, until the join, a look every third of the
/// token's lifetime (its upkeep).
pub fn commit(o: &Observed, outcome: &Outcome, now: SystemTime, ttl: Duration) -> Commit {
    let mut status = o.status.clone().unwrap_or_default();
    let now = token::rfc3339(now);
    let generation = o.generation;
    match outcome {
        Outcome::Blocked(b) => {
            let before = conditions::reason(&status.conditions, "Ready").map(String::from);
            let paused = b.reason == "Paused";
            let (reason, message) = if paused { ("Paused", b.message.as_str()) } else { ("NotPaused", "") };
            conditions::set(&mut status.conditions, "Paused", paused, reason, message, generation, &now);
            if !paused {
                let data_ok = status.initialization.as_ref().and_then(|i| i.data_secret_created) == Some(true);
                let ready = data_ok && b.reason == "Joined";
                conditions::set(&mut status.conditions, "Ready", ready, b.reason, &b.message, generation, &now);
                if !data_ok {
                    let c = &mut status.conditions;
                    conditions::set(c, "DataSecretAvailable", false, b.reason, &b.message, generation, &now);
                }
            }
            // Waiting for an input is the normal course of a create (the condition says it),
            // not trouble: no event, as the machine controllers do.
            let waiting = b.reason.starts_with("WaitingFor");
            let warn = !paused && !waiting && before.as_deref() != Some(b.reason);
            Commit { status, warn, requeue: Requeue::Blocked(b.clone()) }
        }
        Outcome::Ready { joined } => {
            status.data_secret_name = Some(o.name.clone());
            status.initialization = Some(BootstrapInitialization { data_secret_created: Some(true) });
            status.observed_generation = generation;
            let c = &mut status.conditions;
            conditions::set(c, "DataSecretAvailable", true, "DataSecretAvailable", "", generation, &now);
            conditions::set(c, "Paused", false, "NotPaused", "", generation, &now);
            let (reason, message) = if *joined {
                ("Joined", "the Node has joined; the join token is deleted")
            } else {
                ("DataSecretAvailable", "bootstrap data is ready; waiting for the Node to join")
            };
            conditions::set(c, "Ready", true, reason, message, generation, &now);
            let requeue = if *joined { Requeue::AwaitChange } else { Requeue::After(ttl / 3) };
            Commit { status, warn: false, requeue }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> GateFacts {
        GateFacts {
            control_plane_machine: false,
            infrastructure_provisioned: true,
            control_plane_initialized: true,
            endpoint: Some("10.0.0.4:6443".into()),
            version: Some("v1.34.2".into()),
            infrastructure_kind: Some("AzureWindowsMachine".into()),
        }
    }

    #[test]
    fn gates_in_cabpk_order() {
        assert_eq!(gates(&ok()).unwrap().cloud, Cloud::Azure);
        let mut o = ok();
        o.infrastructure_kind = Some("AWSWindowsMachine".into());
        assert_eq!(gates(&o).unwrap().cloud, Cloud::Aws);
        o.infrastructure_kind = Some("VSphereMachine".into());
        assert_eq!(gates(&o).unwrap_err().reason, "UnsupportedInfrastructure");
        let mut o = ok();
        o.infrastructure_provisioned = false;
        o.control_plane_initialized = false;
        let b = gates(&o).unwrap_err();
        assert_eq!(
            (b.reason, b.retry),
            ("WaitingForClusterInfrastructure", None),
            "no spinning: the Cluster watch wakes us"
        );
        o.infrastructure_provisioned = true;
        assert_eq!(gates(&o).unwrap_err().reason, "WaitingForControlPlaneInitialized");
        let mut o = ok();
        o.endpoint = None;
        assert_eq!(gates(&o).unwrap_err().reason, "MissingControlPlaneEndpoint");
        let mut o = ok();
        o.version = None;
        assert_eq!(gates(&o).unwrap_err().reason, "MissingKubernetesVersion");
        let mut o = ok();
        o.control_plane_machine = true;
        assert_eq!(gates(&o).unwrap_err().reason, "ControlPlaneNotSupported");
    }

    #[test]
    fn token_lifecycle() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(900);
        let st = |have, exp: Option<Option<SystemTime>>, vm, node| TokenState {
            have_token: have,
            workload_expiry: exp,
            vm_provisioned: vm,
            node_joined: node,
        };
        assert_eq!(token_action(st(false, None, false, false), now, ttl), TokenAction::Mint);
        assert_eq!(token_action(st(true, Some(Some(now + ttl)), false, false), now, ttl), TokenAction::Keep);
        // Refresh once the token expires sooner than 5/6 of the TTL from now.
        assert_eq!(
            token_action(st(true, Some(Some(now + ttl.mul_f64(0.8))), true, false), now, ttl),
            TokenAction::Refresh
        );
        assert_eq!(token_action(st(true, Some(None), true, false), now, ttl), TokenAction::Refresh);
        assert_eq!(token_action(st(true, None, false, false), now, ttl), TokenAction::Rotate);
        assert_eq!(token_action(st(true, None, true, false), now, ttl), TokenAction::Recreate);
        assert_eq!(token_action(st(true, Some(Some(now)), true, true), now, ttl), TokenAction::Delete);
        assert_eq!(token_action(st(true, None, true, true), now, ttl), TokenAction::Keep);
    }

    #[test]
    fn after_the_join_the_secret_is_scrubbed_once() {
        assert!(scrub_after_join(true, Some(1), Some(2)), "first time");
        assert!(scrub_after_join(true, Some(1), None), "the key goes even when the spec no longer renders");
        assert!(!scrub_after_join(false, Some(2), Some(2)), "then nothing to do");
        assert!(scrub_after_join(false, Some(1), Some(2)), "a payload still unlike the scrubbed one");
        assert!(!scrub_after_join(false, Some(1), None));
    }

    #[test]
    fn payload_is_frozen_once_the_vm_has_it() {
        assert!(should_write(None, 1, true));
        assert!(should_write(Some(1), 2, false));
        assert!(!should_write(Some(1), 2, true));
        assert!(!should_write(Some(1), 1, false));
    }

    // ---- the reconcile plan -----------------------------------------------------------------

    const NOW_SECS: u64 = 1_800_000_000;
    const TTL: Duration = Duration::from_secs(900);
    const HASH: &str = "sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn tok(id: &str) -> BootstrapToken {
        BootstrapToken::parse(&format!("{id}.0123456789abcdef")).unwrap()
    }

    fn spec(v: serde_json::Value) -> WindowsKubeadmConfigSpec {
        serde_json::from_value(v).unwrap()
    }

    fn found(joined: bool, provisioned: bool) -> Owners {
        Owners::Found {
            machine: MachineView {
                name: "w-0".into(),
                cluster_name: Some("c".into()),
                version: Some("v1.34.2".into()),
                infrastructure_kind: Some("AzureWindowsMachine".into()),
                control_plane: false,
                joined,
                provisioned,
            },
            cluster: ClusterView {
                name: "c".into(),
                paused: false,
                infrastructure_provisioned: true,
                control_plane_initialized: true,
                endpoint: Some("10.0.0.4:6443".into()),
                pod_cidrs: vec!["192.168.0.0/16".into()],
                service_cidrs: vec!["10.96.0.0/12".into()],
            },
        }
    }

    /// A config of a Machine whose Cluster is up, before anything was made.
    fn fresh() -> Observed {
        Observed {
            name: "w-0".into(),
            generation: Some(1),
            spec: spec(serde_json::json!({})),
            owners: found(false, false),
            ..Default::default()
        }
    }

    fn cluster_mut(o: &mut Observed) -> &mut ClusterView {
        match &mut o.owners {
            Owners::Found { cluster, .. } => cluster,
            _ => unreachable!(),
        }
    }

    fn machine_mut(o: &mut Observed) -> &mut MachineView {
        match &mut o.owners {
            Owners::Found { machine, .. } => machine,
            _ => unreachable!(),
        }
    }

    /// Plans to the end, answering each read the plan asks for (a live token, present Secrets)
    /// unless the test set the answer; returns the decision and the reads asked, in order.
    fn decide(o: &Observed) -> (Decision, Vec<Need>) {
        let mut o = o.clone();
        let mut asked = Vec::new();
        loop {
            match plan(&o, now(), TTL) {
                Plan::Act(d) => return (d, asked),
                Plan::Read(need) => {
                    assert!(!asked.contains(&need), "{need:?} asked twice");
                    asked.push(need);
                    match need {
                        Need::CaSecret => o.ca_hashes = Some(Ok(vec![HASH.into()])),
                        Need::Kubeconfig => o.workload = Some(Ok(())),
                        Need::WorkloadToken => o.workload_token = Some(Ok(Some(Some(now() + TTL)))),
                        Need::Files => o.files = Some(Ok(Redacted(BTreeMap::new()))),
                        Need::DomainJoin => o.domain_join = Some(Ok(None)),
                        Need::FreshToken => o.fresh_token = Some(tok("newtok")),
                    }
                }
            }
        }
    }

    fn blocked_reason(d: &Decision) -> &'static str {
        match &d.outcome {
            Outcome::Blocked(b) => b.reason,
            other => panic!("not blocked: {other:?}"),
        }
    }

    fn ready_reason(d: &Decision) -> String {
        conditions::reason(&d.commit.status.conditions, "Ready").unwrap().to_string()
    }

    /// The config after its first pass wrote the data Secret (as the cache then shows it).
    fn written() -> Observed {
        let (d, _) = decide(&fresh());
        let DataStep::Write { payload, token, inputs_digest, .. } = d.data else { panic!("{:?}", d.data) };
        Observed {
            status: Some(d.commit.status),
            data: Some(DataSecret {
                has_token_key: true,
                token_id: Some(token.id.clone()),
                token: Some(token),
                has_value: true,
                value_digest: Some(capwin_runtime::hash_of(&payload.0.as_slice())),
                inputs_digest: Some(inputs_digest),
                owned: true,
                other_owners: vec![],
            }),
            known_expiry: Some(now() + TTL),
            ..fresh()
        }
    }

    #[test]
    fn the_first_pass_mints_renders_and_writes_once() {
        let (d, asked) = decide(&fresh());
        assert_eq!(
            asked,
            [Need::CaSecret, Need::Kubeconfig, Need::FreshToken, Need::Files, Need::DomainJoin],
            "CABPK's order; the workload token is not read when there is none"
        );
        assert_eq!(d.token, TokenStep::Create { token: tok("newtok"), minted: true, announce: false });
        let DataStep::Write { exists, token, .. } = &d.data else { panic!("{:?}", d.data) };
        assert!(!exists && *token == tok("newtok"));
        assert!(d.rendered_bytes.is_some_and(|n| n > 0));
        assert_eq!(ready_reason(&d), "DataSecretAvailable");
        let s = &d.commit.status;
        assert_eq!(s.data_secret_name.as_deref(), Some("w-0"));
        assert_eq!(s.initialization.as_ref().and_then(|i| i.data_secret_created), Some(true));
        assert_eq!(d.commit.requeue, Requeue::After(TTL / 3), "token upkeep until the join");
    }

    #[test]
    fn owners_missing_block_with_their_reason_and_read_nothing() {
        let cases = [
            (Owners::NoOwnerRef, "WaitingForMachineOwner", None),
            (Owners::MachineMissing("w-0".into()), "WaitingForMachineOwner", Some(Duration::from_secs(30))),
            (Owners::NoClusterName("w-0".into()), "MissingClusterName", None),
            (Owners::ClusterMissing("c".into()), "WaitingForCluster", Some(Duration::from_secs(30))),
        ];
        for (owners, reason, retry) in cases {
            let (d, asked) = decide(&Observed { owners, ..fresh() });
            assert!(asked.is_empty());
            assert_eq!(d.commit.requeue, Requeue::Blocked(Blocked { reason, retry, message: d.commit_message() }));
            assert_eq!((d.token.clone(), d.data.clone()), (TokenStep::Keep, DataStep::Keep));
            assert_eq!(d.commit.warn, !reason.starts_with("WaitingFor"), "trouble is told in an event, waiting is not");
            let s = &d.commit.status;
            assert_eq!(conditions::reason(&s.conditions, "DataSecretAvailable"), Some(reason), "no data yet");
            assert_eq!(conditions::reason(&s.conditions, "Paused"), Some("NotPaused"));
        }
    }

    impl Decision {
        fn commit_message(&self) -> String {
            match &self.outcome {
                Outcome::Blocked(b) => b.message.clone(),
                _ => String::new(),
            }
        }
    }

    #[test]
    fn a_pause_sets_only_paused_and_says_which() {
        let mut by_cluster = written();
        cluster_mut(&mut by_cluster).paused = true;
        let by_annotation = Observed { paused_annotation: true, ..by_cluster.clone() };
        for (o, why) in [(by_cluster, "Cluster.spec.paused"), (by_annotation, "annotation")] {
            let (d, asked) = decide(&o);
            assert!(asked.is_empty() && d.token == TokenStep::Keep && d.data == DataStep::Keep);
            assert_eq!(blocked_reason(&d), "Paused");
            assert!(d.commit_message().contains(why), "{}", d.commit_message());
            assert!(!d.commit.warn, "no event for a pause");
            let c = &d.commit.status.conditions;
            assert_eq!(conditions::reason(c, "Paused"), Some("Paused"));
            assert_eq!(conditions::reason(c, "Ready"), Some("DataSecretAvailable"), "Ready is left alone");
        }
    }

    #[test]
    fn a_gate_blocks_until_data_exists_then_only_upkeep_matters() {
        let mut o = fresh();
        cluster_mut(&mut o).control_plane_initialized = false;
        let (d, asked) = decide(&o);
        assert_eq!(blocked_reason(&d), "WaitingForControlPlaneInitialized");
        assert!(asked.is_empty(), "no Secret is read at a gate");
        // The same gate once the data Secret exists: the config goes on (its token is kept up).
        let mut o = written();
        cluster_mut(&mut o).control_plane_initialized = false;
        o.known_expiry = Some(now() + Duration::from_secs(60));
        let (d, _) = decide(&o);
        assert_eq!(ready_reason(&d), "DataSecretAvailable");
        assert_eq!(d.token, TokenStep::Refresh(o.data.unwrap().token.unwrap()));
    }

    #[test]
    fn cluster_secrets_block_in_order() {
        let ca = Blocked::new("MissingCASecret", "Secret c-ca does not exist", None);
        let (d, asked) = decide(&Observed { ca_hashes: Some(Err(ca)), ..fresh() });
        assert_eq!((blocked_reason(&d), asked), ("MissingCASecret", vec![]), "the kubeconfig is not read");
        let kc = Blocked::new("InvalidKubeconfigSecret", "Secret c-kubeconfig key value: missing", None);
        let (d, _) = decide(&Observed { workload: Some(Err(kc)), ..fresh() });
        assert_eq!(blocked_reason(&d), "InvalidKubeconfigSecret");
    }

    #[test]
    fn an_unchanged_config_reads_and_renders_nothing() {
        let (d, asked) = decide(&written());
        assert_eq!(asked, [Need::CaSecret, Need::Kubeconfig], "no file Secret, no token read, no render");
        assert_eq!((d.token.clone(), d.data.clone(), d.ensure_owner), (TokenStep::Keep, DataStep::Keep, false));
        assert_eq!(d.rendered_bytes, None);
        assert_eq!(d.commit.status, written().status.unwrap(), "nothing to commit");
        // Our owner reference gone (a move, a person): put back, nothing else.
        let mut o = written();
        o.data.as_mut().unwrap().owned = false;
        assert!(decide(&o).0.ensure_owner);
    }

    #[test]
    fn a_token_of_unknown_expiry_is_read_once_and_an_unreachable_cluster_blocks() {
        let o = Observed { known_expiry: None, ..written() };
        let (d, asked) = decide(&o);
        assert_eq!(asked.last(), Some(&Need::WorkloadToken));
        assert_eq!(d.token, TokenStep::Keep, "read as live and fresh");
        let unreachable = Blocked::new("WorkloadClusterUnreachable", "the workload cluster of c ...", None);
        let (d, _) = decide(&Observed { workload_token: Some(Err(unreachable)), ..o });
        assert_eq!(blocked_reason(&d), "WorkloadClusterUnreachable");
        assert_eq!(ready_reason(&d), "WorkloadClusterUnreachable");
        let c = &d.commit.status.conditions;
        assert_eq!(conditions::reason(c, "DataSecretAvailable"), Some("DataSecretAvailable"), "the data is there");
    }

    #[test]
    fn a_token_gone_before_the_vm_has_it_is_replaced_and_the_payload_rewritten() {
        let o = Observed { known_expiry: None, workload_token: Some(Ok(None)), ..written() };
        let (d, asked) = decide(&Observed { fresh_token: Some(tok("second")), ..o.clone() });
        assert!(!asked.contains(&Need::FreshToken), "set by the test");
        assert_eq!(d.token, TokenStep::Create { token: tok("second"), minted: true, announce: true });
        let DataStep::Write { exists, token, .. } = &d.data else { panic!("{:?}", d.data) };
        assert!(*exists && *token == tok("second"), "token changed: the Secret is patched");
        assert!(decide(&o).1.contains(&Need::FreshToken));
    }

    #[test]
    fn a_token_gone_after_the_vm_has_it_is_recreated_as_it_was() {
        let mut o = Observed { known_expiry: None, workload_token: Some(Ok(None)), ..written() };
        machine_mut(&mut o).provisioned = true;
        let (d, asked) = decide(&o);
        let held = o.data.unwrap().token.unwrap();
        assert!(!asked.contains(&Need::FreshToken));
        assert_eq!(d.token, TokenStep::Create { token: held, minted: false, announce: false });
        assert_eq!(d.data, DataStep::Keep, "same token, same inputs: no render");
    }

    #[test]
    fn a_token_near_expiry_or_without_one_is_refreshed() {
        let o = Observed { known_expiry: Some(now() + TTL.mul_f64(0.5)), ..written() };
        assert!(matches!(decide(&o).0.token, TokenStep::Refresh(_)));
        let o = Observed { known_expiry: None, workload_token: Some(Ok(Some(None))), ..written() };
        assert!(matches!(decide(&o).0.token, TokenStep::Refresh(_)));
    }

    #[test]
    fn a_spec_change_rewrites_before_the_vm_boots_and_never_after() {
        let mut o = written();
        o.spec = spec(serde_json::json!({"verbosity": 7}));
        let (d, asked) = decide(&o);
        assert!(asked.contains(&Need::Files), "new inputs: rendered");
        assert!(matches!(&d.data, DataStep::Write { exists: true, .. }), "{:?}", d.data);
        assert_eq!(d.token, TokenStep::Keep);

        machine_mut(&mut o).provisioned = true;
        let (d, _) = decide(&o);
        assert_eq!(d.data, DataStep::Keep, "the booted VM's payload is frozen, digest too");
        assert!(d.rendered_bytes.is_some());
        assert_eq!(ready_reason(&d), "DataSecretAvailable");
    }

    #[test]
    fn the_same_bytes_from_new_inputs_only_record_the_inputs() {
        let mut o = written();
        o.data.as_mut().unwrap().inputs_digest = Some("older".into());
        let (d, _) = decide(&o);
        let DataStep::RecordInputs(digest) = &d.data else { panic!("{:?}", d.data) };
        assert_eq!(Some(digest), written().data.unwrap().inputs_digest.as_ref());
        machine_mut(&mut o).provisioned = true;
        assert_eq!(decide(&o).0.data, DataStep::Keep, "not after the VM has it");
    }

    #[test]
    fn an_unrenderable_spec_blocks_before_the_vm_has_a_payload_and_mints_nothing() {
        let bad = spec(serde_json::json!({"joinConfiguration": {"nodeRegistration": {"kubeletExtraArgs": [
            {"name": "pod-infra-container-image", "value": "x"}]}}}));
        let (d, _) = decide(&Observed { spec: bad.clone(), ..fresh() });
        assert_eq!(blocked_reason(&d), "InvalidSpec");
        assert_eq!((d.token.clone(), d.data.clone()), (TokenStep::Keep, DataStep::Keep), "no token for no payload");
        assert_eq!(
            d.commit.requeue,
            Requeue::Blocked(Blocked::new("InvalidSpec", d.commit_message(), Some(Duration::from_secs(60))))
        );
        // Before the VM boots, an existing config blocks too; after, its payload stays as it was.
        let o = Observed { spec: bad, ..written() };
        assert_eq!(blocked_reason(&decide(&o).0), "InvalidSpec");
        let mut o = Observed { known_expiry: Some(now() + Duration::from_secs(60)), ..o };
        machine_mut(&mut o).provisioned = true;
        let (d, _) = decide(&o);
        assert_eq!(ready_reason(&d), "DataSecretAvailable");
        assert_eq!(d.data, DataStep::Keep);
        assert!(matches!(d.token, TokenStep::Refresh(_)), "the VM's token is still kept alive");
    }

    #[test]
    fn a_missing_file_secret_blocks_but_keeps_the_vms_token_alive() {
        let missing = Blocked::new("MissingFileSecret", "spec.files[0].contentFrom: Secret nope does not exist", None);
        let (d, _) = decide(&Observed { files: Some(Err(missing.clone())), ..fresh() });
        assert_eq!((blocked_reason(&d), d.token.clone()), ("MissingFileSecret", TokenStep::Keep));
        let mut o = written();
        o.spec = spec(serde_json::json!({"verbosity": 3}));
        o.known_expiry = Some(now());
        o.files = Some(Err(missing));
        let (d, _) = decide(&o);
        assert_eq!(blocked_reason(&d), "MissingFileSecret");
        assert!(matches!(d.token, TokenStep::Refresh(_)));
        let dj = Blocked::new("MissingDomainJoinSecret", "spec.windows.domainJoin.credentialsSecret: ...", None);
        let (d, _) = decide(&Observed { domain_join: Some(Err(dj)), ..fresh() });
        assert_eq!(blocked_reason(&d), "MissingDomainJoinSecret");
    }

    #[test]
    fn after_the_join_the_token_is_deleted_and_the_secret_scrubbed_once() {
        let mut o = written();
        machine_mut(&mut o).joined = true;
        machine_mut(&mut o).provisioned = true;
        let held = o.data.as_ref().unwrap().token.clone().unwrap();
        let (d, asked) = decide(&o);
        assert_eq!(asked, [Need::CaSecret, Need::Kubeconfig, Need::Files], "no domain join account, no fresh token");
        assert_eq!(d.token, TokenStep::Delete(held));
        let DataStep::Scrub { value: Some(v) } = &d.data else { panic!("{:?}", d.data) };
        assert!(String::from_utf8_lossy(&v.0).contains("newtok.0000000000000000"), "the placeholder names the token");
        assert_eq!(ready_reason(&d), "Joined");
        assert_eq!(d.commit.requeue, Requeue::AwaitChange);
        // A file Secret gone since: scrubbed all the same.
        let gone = Blocked::new("MissingFileSecret", "...", None);
        assert!(matches!(decide(&Observed { files: Some(Err(gone)), ..o.clone() }).0.data, DataStep::Scrub { .. }));
        // Scrubbed: nothing more, nothing read.
        let d0 = o.data.as_mut().unwrap();
        (d0.has_token_key, d0.token) = (false, None);
        let (d, asked) = decide(&o);
        assert_eq!(asked, [Need::CaSecret, Need::Kubeconfig]);
        assert_eq!((ready_reason(&d), d.token, d.data), ("Joined".into(), TokenStep::Keep, DataStep::Keep));
    }

    #[test]
    fn a_moved_cluster_without_a_node_yet_stays_joined() {
        // After `clusterctl move`: the data Secret has no token key, the Machine no nodeRef yet,
        // and the status is empty.
        let mut o = written();
        let d0 = o.data.as_mut().unwrap();
        (d0.has_token_key, d0.token, d0.owned) = (false, None, false);
        o.status = None;
        o.known_expiry = None;
        let (d, asked) = decide(&o);
        assert_eq!(asked, [Need::CaSecret, Need::Kubeconfig], "no token read, no fresh token");
        assert_eq!((d.token.clone(), d.data.clone()), (TokenStep::Keep, DataStep::Keep));
        assert!(d.ensure_owner, "the moved Secret's owner reference is re-asserted");
        assert_eq!(ready_reason(&d), "Joined");
        assert_eq!(d.commit.status.data_secret_name.as_deref(), Some("w-0"), "status re-derived");
    }

    #[test]
    fn a_joined_machine_without_data_is_an_internal_error() {
        let mut o = fresh();
        machine_mut(&mut o).joined = true;
        assert_eq!(blocked_reason(&decide(&o).0), "InternalError");
    }

    #[test]
    fn a_block_warns_once_per_reason() {
        let o = fresh();
        let b = Blocked::new("MissingCASecret", "Secret c-ca does not exist", Some(Duration::from_secs(15)));
        let first = commit(&o, &Outcome::Blocked(b.clone()), now(), TTL);
        assert!(first.warn);
        let again = Observed { status: Some(first.status.clone()), ..fresh() };
        let second = commit(&again, &Outcome::Blocked(b), now() + TTL, TTL);
        assert!(!second.warn, "the same reason again: no event");
        assert_eq!(second.status, first.status, "nor a status write: times of unchanged conditions are kept");
        let waiting = Blocked::new("WaitingForControlPlaneInitialized", "not yet", Some(Duration::from_secs(15)));
        assert!(!commit(&o, &Outcome::Blocked(waiting), now(), TTL).warn, "waiting for an input is no trouble");
    }
}
