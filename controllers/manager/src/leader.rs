//! Leader election through a `coordination.k8s.io/v1` Lease, as controller-runtime does it:
//! acquire when free or expired, renew every 2 s, exit the process when renewal fails for a
//! whole lease duration (a new leader may already be running).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY: Duration = Duration::from_secs(2);

fn identity() -> String {
    let host = std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "capwin".into());
    format!("{host}_{}", std::process::id())
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Blocks until this process holds the lease, then keeps renewing it in the background.
pub async fn acquire(client: Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let me = identity();
    tracing::info!(lease = %format!("{namespace}/{name}"), identity = %me, "waiting for leadership");
    loop {
        if try_acquire(&api, name, &me).await? {
            break;
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::info!(identity = %me, "became leader");
    let (api, name) = (api.clone(), name.to_string());
    tokio::spawn(async move {
        let mut last_ok = std::time::Instant::now();
        loop {
            tokio::time::sleep(RETRY).await;
            match try_acquire(&api, &name, &me).await {
                Ok(true) => last_ok = std::time::Instant::now(),
                Ok(false) | Err(_) if last_ok.elapsed() > LEASE_DURATION => {
                    tracing::error!("lost leadership; exiting so a single leader runs");
                    std::process::exit(1);
                }
                _ => {}
            }
        }
    });
    Ok(())
}

async fn try_acquire(api: &Api<Lease>, name: &str, me: &str) -> anyhow::Result<bool> {
    let spec = json!({"holderIdentity": me, "leaseDurationSeconds": LEASE_DURATION.as_secs(), "renewTime": now(), "acquireTime": now()});
    let Some(lease) = api.get_opt(name).await? else {
        let lease: Lease = serde_json::from_value(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}, "spec": spec}),
        )?;
        return Ok(api.create(&PostParams::default(), &lease).await.is_ok());
    };
    let s = lease.spec.clone().unwrap_or_default();
    let holder = s.holder_identity.clone().unwrap_or_default();
    let expired = match (&s.renew_time, s.lease_duration_seconds) {
        (Some(t), Some(d)) => t.0.as_second() + i64::from(d) < k8s_openapi::jiff::Timestamp::now().as_second(),
        _ => true,
    };
    if holder != me && !expired {
        return Ok(false);
    }
    let mut patch = json!({"metadata": {"resourceVersion": lease.resource_version()}, "spec": {"holderIdentity": me, "leaseDurationSeconds": LEASE_DURATION.as_secs(), "renewTime": now()}});
    if holder != me {
        patch["spec"]["acquireTime"] = json!(now());
    }
    Ok(api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.is_ok())
}
