//! Pure decisions: what the reconciler should do, given what it observed.

use std::time::{Duration, SystemTime};

use capwin_payload::Cloud;

/// Why the reconciler cannot produce data yet, as a condition reason and message. The message
/// never carries a token, password or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub reason: &'static str,
    pub message: String,
    /// When to look again; `None` waits for a watch event (the thing it waits for has one).
    pub retry: Option<Duration>,
}

impl Blocked {
    pub fn new(reason: &'static str, message: impl Into<String>, retry: Option<Duration>) -> Self {
        Self { reason, message: message.into(), retry }
    }
}

/// What the gates found when the config may proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub endpoint: String,
    pub version: String,
    pub cloud: Cloud,
}

/// The facts the gates look at.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub control_plane_machine: bool,
    pub infrastructure_provisioned: bool,
    pub control_plane_initialized: bool,
    pub endpoint: Option<String>,
    pub version: Option<String>,
    pub infrastructure_kind: Option<String>,
}

/// Gate order follows CABPK: infrastructure, control plane, endpoint; then what the payload needs.
pub fn gates(o: &Observed) -> Result<Ready, Blocked> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Observed {
        Observed {
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
}
