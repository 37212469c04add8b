//! Performing a [`Decision`]: the only place that writes. The token in the workload cluster,
//! the data Secret's owner reference and contents, then the status, once, through
//! [`commit_status`] (not at all when nothing changed), then the events.

use std::collections::BTreeMap;
use std::time::SystemTime;

use capwin_api::bootstrap::{WindowsKubeadmConfig, WindowsKubeadmConfigStatus};
use capwin_payload::BootstrapToken;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::observe::{Seen, cached_secret, stored_token, workload_client};
use crate::plan::{self, DataStep, Decision, Outcome, Requeue, TokenStep};
use crate::reconcile::{
    Context, Error, FINALIZER, INPUTS_ANNOTATION, TOKEN_ID_ANNOTATION, TOKEN_KEY, WINDOWS_VERSION_ANNOTATION, blocked,
    unreachable_workload,
};
use crate::{token, views};

/// An event to publish once the steps are done.
struct Note {
    type_: EventType,
    reason: &'static str,
    note: String,
}

/// Performs the decision, commits the status once, publishes the events. A step that finds the
/// workload cluster unreachable turns the outcome into that block (as the plan's own blocks
/// are); any other failure ends the reconcile with nothing committed.
pub async fn act(cfg: &WindowsKubeadmConfig, ctx: &Context, seen: &Seen, d: Decision) -> Result<Action, Error> {
    let mut notes = Vec::new();
    let done = perform(cfg, ctx, seen, &d, &mut notes).await;
    let commit = match done {
        Ok(()) => d.commit,
        Err(Error::Blocked(b)) => {
            plan::commit(&seen.facts, &Outcome::Blocked(b), SystemTime::now(), ctx.settings.token_ttl)
        }
        Err(e) => {
            publish_all(ctx, cfg, notes).await;
            return Err(e);
        }
    };
    let committed = commit_status(cfg, ctx, &commit.status).await;
    publish_all(ctx, cfg, notes).await;
    committed?;
    match commit.requeue {
        Requeue::AwaitChange => Ok(Action::await_change()),
        Requeue::After(d) => Ok(Action::requeue(d)),
        Requeue::Blocked(b) => {
            if commit.warn {
                publish(ctx, cfg, EventType::Warning, b.reason, &b.message).await;
            }
            Err(Error::Blocked(b))
        }
    }
}

async fn perform(
    cfg: &WindowsKubeadmConfig,
    ctx: &Context,
    seen: &Seen,
    d: &Decision,
    notes: &mut Vec<Note>,
) -> Result<(), Error> {
    let cluster = match &seen.facts.owners {
        plan::Owners::Found { machine, .. } => machine.cluster_name.clone().unwrap_or_default(),
        _ => String::new(),
    };
    if d.token != TokenStep::Keep {
        // The plan steps a token only once the workload client was made.
        let Some(w) = seen.workload.clone() else {
            return Err(blocked("InternalError", "no workload client for a token step", None));
        };
        token_step(cfg, ctx, w, &cluster, &d.token, notes).await?;
    }
    if let Some(n) = d.rendered_bytes {
        ctx.metrics.payload_bytes.observe(n as f64);
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &cfg.namespace().unwrap_or_default());
    let name = cfg.name_any();
    if d.ensure_owner {
        let mut refs = seen.facts.data.as_ref().map(|s| s.other_owners.clone()).unwrap_or_default();
        refs.push(owner_ref(cfg));
        let patch = json!({"metadata": {"ownerReferences": refs}});
        secrets.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    match &d.data {
        DataStep::Keep => {}
        DataStep::Write { payload, token, inputs_digest, cloud, exists } => {
            write_data_secret(cfg, &secrets, &cluster, &payload.0, token, inputs_digest, *exists).await?;
            let note = format!(
                "wrote bootstrap data Secret {name} ({} bytes, {}) with bootstrap token {}",
                payload.0.len(),
                cloud.as_str(),
                token.id
            );
            notes.push(Note { type_: EventType::Normal, reason: "DataSecretWritten", note });
        }
        DataStep::RecordInputs(digest) => {
            let patch = json!({"metadata": {"annotations": {INPUTS_ANNOTATION: digest}}});
            secrets.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
        DataStep::Scrub { value } => {
            let mut patch = json!({"data": {TOKEN_KEY: null}});
            if let Some(v) = value {
                patch["data"]["value"] = json!(ByteString(v.0.clone()));
            }
            secrets.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
    }
    Ok(())
}

/// Creates, refreshes or deletes the join token's Secret in the workload cluster.
async fn token_step(
    cfg: &WindowsKubeadmConfig,
    ctx: &Context,
    workload: Client,
    cluster: &str,
    step: &TokenStep,
    notes: &mut Vec<Note>,
) -> Result<(), Error> {
    let tokens: Api<Secret> = Api::namespaced(workload, "kube-system");
    let unreachable = |e| Error::Blocked(unreachable_workload(cluster, e));
    let expires = SystemTime::now() + ctx.settings.token_ttl;
    match step {
        TokenStep::Keep => {}
        TokenStep::Create { token: t, minted, announce } => {
            let description =
                format!("capwin: join token for {}/{}", cfg.namespace().unwrap_or_default(), cfg.name_any());
            tokens
                .create(&PostParams::default(), &token::secret(t, expires, &description))
                .await
                .map_err(unreachable)?;
            ctx.metrics.token(if *minted { "minted" } else { "recreated" });
            ctx.set_expiry(&t.id, Some(expires));
            if *announce {
                let note = format!("created bootstrap token {} in the workload cluster", t.id);
                notes.push(Note { type_: EventType::Normal, reason: "BootstrapTokenCreated", note });
            }
        }
        TokenStep::Refresh(t) => {
            let patch = json!({"data": {"expiration": base64_of(&token::rfc3339(expires))}});
            tokens
                .patch(&token::secret_name(&t.id), &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(unreachable)?;
            ctx.metrics.token("refreshed");
            ctx.set_expiry(&t.id, Some(expires));
        }
        TokenStep::Delete(t) => match tokens.delete(&token::secret_name(&t.id), &DeleteParams::default()).await {
            Ok(_) => {
                ctx.metrics.token("deleted");
                ctx.set_expiry(&t.id, None);
                let note = format!("the Node joined; deleted bootstrap token {}", t.id);
                notes.push(Note { type_: EventType::Normal, reason: "BootstrapTokenDeleted", note });
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(unreachable(e)),
        },
    }
    Ok(())
}

/// The one status write of a reconcile; none when the object (or this controller's last write,
/// which the cache may not show yet) already says it.
async fn commit_status(
    cfg: &WindowsKubeadmConfig,
    ctx: &Context,
    status: &WindowsKubeadmConfigStatus,
) -> Result<(), Error> {
    let uid = cfg.uid().unwrap_or_default();
    if cfg.status.as_ref() == Some(status) || ctx.written.already_written(&uid, status) {
        return Ok(());
    }
    let api: Api<WindowsKubeadmConfig> = Api::namespaced(ctx.client.clone(), &cfg.namespace().unwrap_or_default());
    api.patch_status(&cfg.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    ctx.written.written(&uid, status);
    Ok(())
}

async fn publish_all(ctx: &Context, cfg: &WindowsKubeadmConfig, notes: Vec<Note>) {
    for n in notes {
        publish(ctx, cfg, n.type_, n.reason, &n.note).await;
    }
}

async fn publish(ctx: &Context, cfg: &WindowsKubeadmConfig, type_: EventType, reason: &str, note: &str) {
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cfg.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an event");
    }
}

fn owner_ref(cfg: &WindowsKubeadmConfig) -> OwnerReference {
    let mut o = cfg.controller_owner_ref(&()).expect("a stored object has a uid");
    o.block_owner_deletion = Some(true);
    o
}

fn windows_version(cfg: &WindowsKubeadmConfig) -> String {
    serde_json::to_value(cfg.spec.windows.version).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn write_data_secret(
    cfg: &WindowsKubeadmConfig,
    secrets: &Api<Secret>,
    cluster: &str,
    payload: &[u8],
    tok: &BootstrapToken,
    digest: &str,
    exists: bool,
) -> Result<(), Error> {
    let name = cfg.name_any();
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(views::CLUSTER_NAME_LABEL.to_string(), cluster.to_string())])),
            annotations: Some(BTreeMap::from([
                (TOKEN_ID_ANNOTATION.to_string(), tok.id.clone()),
                (INPUTS_ANNOTATION.to_string(), digest.to_string()),
                (WINDOWS_VERSION_ANNOTATION.to_string(), windows_version(cfg)),
            ])),
            owner_references: Some(vec![owner_ref(cfg)]),
            ..Default::default()
        },
        type_: Some("cluster.x-k8s.io/secret".into()),
        data: Some(BTreeMap::from([
            ("value".to_string(), ByteString(payload.to_vec())),
            ("format".to_string(), ByteString(capwin_payload::FORMAT.as_bytes().to_vec())),
            (TOKEN_KEY.to_string(), ByteString(tok.expose().into_bytes())),
        ])),
        ..Default::default()
    };
    let patch = || serde_json::to_value(&secret).expect("a Secret serialises");
    if exists {
        secrets.patch(&name, &PatchParams::default(), &Patch::Merge(patch())).await?;
        return Ok(());
    }
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            secrets.patch(&name, &PatchParams::default(), &Patch::Merge(patch())).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// A data Secret that still held a join token is gone (its config was deleted before the Node
/// joined, and the Secret with it through its owner reference, or someone deleted it): delete the
/// token from the workload cluster too, best effort (it expires on its own otherwise). This is
/// what the old finalizer did, without a write on every config.
pub(crate) async fn forget_token(ctx: &Context, data: &Secret) {
    let Some(tok) = stored_token(data) else { return };
    let ns = data.namespace().unwrap_or_default();
    let cluster = data.labels().get(views::CLUSTER_NAME_LABEL).cloned().unwrap_or_default();
    ctx.set_expiry(&tok.id, None);
    match workload_client(ctx, &ns, &cluster).await {
        Ok(w) => {
            let tokens: Api<Secret> = Api::namespaced(w, "kube-system");
            match tokens.delete(&token::secret_name(&tok.id), &DeleteParams::default()).await {
                Ok(_) => ctx.metrics.token("deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                // The cluster may be going away too; the token expires on its own.
                Err(e) => {
                    tracing::info!(secret = %data.name_any(), error = %e, "could not delete the join token; it will expire")
                }
            }
        }
        Err(e) => {
            tracing::info!(secret = %data.name_any(), error = %e, "workload cluster unavailable; the join token will expire")
        }
    }
}

/// Removes [`FINALIZER`] from a config an earlier version added it to, deleting the join token
/// first when the config is being deleted ([`forget_token`], as for any other config). True
/// when it wrote (the next event continues).
pub(crate) async fn retire_legacy_finalizer(cfg: &WindowsKubeadmConfig, ctx: &Context) -> Result<bool, Error> {
    let finalizers = cfg.finalizers();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(false);
    }
    if cfg.metadata.deletion_timestamp.is_some()
        && let Some(data) = cached_secret(ctx, &cfg.namespace().unwrap_or_default(), &cfg.name_any()).await?
    {
        forget_token(ctx, &data).await;
    }
    let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
    // The resourceVersion makes it a compare-and-swap: another writer's finalizer is never lost.
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": cfg.resource_version()}});
    let api: Api<WindowsKubeadmConfig> = Api::namespaced(ctx.client.clone(), &cfg.namespace().unwrap_or_default());
    api.patch(&cfg.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(true)
}
