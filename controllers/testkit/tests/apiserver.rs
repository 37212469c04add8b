//! The in-memory API server, driven by the real kube-rs client, kube-runtime and kubectl.

use std::collections::BTreeMap;
use std::time::Duration;

use capwin_api::bootstrap::{WindowsKubeadmConfig, WindowsKubeadmConfigSpec};
use capwin_testkit::apiserver::{ApiServer, Config};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn server() -> (ApiServer, Client) {
    let server = ApiServer::start(Config {
        crd_paths: vec![
            repo().join("crds/bootstrap"),
            repo().join("crds/infrastructure"),
            repo().join("../shared/capi-crds"),
        ],
        bookmark_interval: Duration::from_millis(200),
        ..Config::default()
    })
    .await
    .unwrap();
    let mut cfg = kube::Config::new(server.url().parse().unwrap());
    cfg.default_namespace = "default".into();
    let client = Client::try_from(cfg).unwrap();
    (server, client)
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    c.data = Some(BTreeMap::from([("k".into(), "v".into())]));
    c
}

fn api_err(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv<K: kube::Resource>(o: &K) -> u64 {
    o.meta().resource_version.as_ref().unwrap().parse().unwrap()
}

#[tokio::test]
async fn crud_metadata_and_concurrency() {
    let (_s, client) = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let a = cms.create(&PostParams::default(), &cm("a", &[])).await.unwrap();
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    let err = cms.create(&PostParams::default(), &cm("a", &[])).await.unwrap_err();
    assert_eq!(api_err(err).1, "AlreadyExists");
    let mut generated = cm("", &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let g = cms.create(&PostParams::default(), &generated).await.unwrap();
    assert!(g.name_any().starts_with("gen-") && g.name_any().len() == 9, "{}", g.name_any());
    assert!(rv(&g) > rv(&a), "resourceVersion is global and monotonic");

    // A no-op write keeps the version.
    let same = cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();
    assert_eq!(rv(&same), rv(&a));
    // A stale replace is a 409.
    let mut stale = a.clone();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "w"}}))).await.unwrap();
    stale.data = Some(BTreeMap::from([("k".into(), "x".into())]));
    let (code, reason, _) = api_err(cms.replace("a", &PostParams::default(), &stale).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    // JSON patch with a failing test is a 422; an absent path tests equal to null.
    let (code, reason, _) = api_err(
        cms.patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "test", "path": "/data/k", "value": "nope"}])).unwrap(),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    cms.patch("a", &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(json!([{"op": "test", "path": "/metadata/finalizers", "value": null}, {"op": "add", "path": "/data/n", "value": "1"}])).unwrap()))
        .await
        .unwrap();
    let (code, reason, _) = api_err(cms.get("missing").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert!(cms.get_opt("missing").await.unwrap().is_none(), "kube's get_opt understands the NotFound reason");

    // Secrets: stringData becomes data.
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let mut s = Secret::default();
    s.metadata.name = Some("s".into());
    s.string_data = Some(BTreeMap::from([("token".into(), "abc".into())]));
    let s = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(s.data.unwrap()["token"].0, b"abc");
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
}

fn wkc(name: &str) -> WindowsKubeadmConfig {
    WindowsKubeadmConfig::new(name, WindowsKubeadmConfigSpec::default())
}

#[tokio::test]
async fn custom_resources_generation_status_and_schema() {
    let (_s, client) = server().await;
    let api: Api<WindowsKubeadmConfig> = Api::default_namespaced(client.clone());
    let mut obj = wkc("w");
    obj.status = Some(Default::default());
    obj.status.as_mut().unwrap().data_secret_name = Some("ignored-on-create".into());
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "status is dropped on create when there is a status subresource");
    // Defaults from the schema were applied.
    assert_eq!(serde_json::to_value(&created.spec).unwrap()["windows"]["cni"]["flavour"], "calico-vxlan");

    let st = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"dataSecretName": "w"}, "spec": {"verbosity": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.as_ref().unwrap().data_secret_name.as_deref(), Some("w"));
    assert_eq!(st.spec.verbosity, None, "the status subresource changes status only");
    assert_eq!(st.metadata.generation, Some(1), "status changes do not bump generation");
    let sp = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"verbosity": 3}, "status": {"dataSecretName": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(sp.metadata.generation, Some(2), "spec changes bump generation");
    assert_eq!(sp.status.unwrap().data_secret_name.as_deref(), Some("w"), "the main resource ignores status");
    let lab = api
        .patch("w", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
        .await
        .unwrap();
    assert_eq!(lab.metadata.generation, Some(2), "metadata changes do not bump generation");

    // Schema validation: 422 Invalid naming the field.
    let (code, reason, message) = api_err(
        api.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"verbosity": 12, "windows": {"cni": {"flavour": "calico"}}}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(message.contains("spec.windows.cni.flavour") && message.contains("spec.verbosity"), "{message}");
    // Unknown fields are pruned, as by a real API server.
    let pruned = api.patch("w", &PatchParams::default(), &Patch::Merge(json!({"spec": {"bogus": 1}}))).await.unwrap();
    assert_eq!(rv(&pruned), rv(&lab), "a write that only adds a pruned field is a no-op");
    // Replace of a custom resource needs a resourceVersion.
    let mut no_rv = pruned.clone();
    no_rv.metadata.resource_version = None;
    assert_eq!(api_err(api.replace("w", &PostParams::default(), &no_rv).await.unwrap_err()).0, 422);
    // Strategic merge patch is refused for custom resources.
    assert_eq!(
        api_err(api.patch("w", &PatchParams::default(), &Patch::Strategic(json!({"spec": {}}))).await.unwrap_err()).0,
        415
    );
}

#[tokio::test]
async fn finalizers_and_garbage_collection() {
    let (_s, client) = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut owner = cm("owner", &[]);
    owner.metadata.finalizers = Some(vec!["capwin.test/hold".into()]);
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let oref = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap(), "controller": true});
    for name in ["dep1", "dep2"] {
        let mut d = cm(name, &[]);
        d.metadata.owner_references = Some(vec![serde_json::from_value(oref.clone()).unwrap()]);
        cms.create(&PostParams::default(), &d).await.unwrap();
    }
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    let held = cms.get("owner").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some(), "a finalizer holds the object with deletionTimestamp set");
    assert!(cms.get_opt("dep1").await.unwrap().is_some(), "background deletion waits until the owner is really gone");
    let (code, _, msg) = api_err(
        cms.patch(
            "owner",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["capwin.test/hold", "new"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(code == 422 && msg.contains("no new finalizers"), "{msg}");
    cms.patch("owner", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    assert!(cms.get_opt("owner").await.unwrap().is_none(), "gone once the last finalizer is removed");
    assert!(
        cms.get_opt("dep1").await.unwrap().is_none() && cms.get_opt("dep2").await.unwrap().is_none(),
        "then its dependents are collected"
    );

    // Orphan propagation keeps dependents and drops their owner references.
    let o2 = cms.create(&PostParams::default(), &cm("owner2", &[])).await.unwrap();
    let mut d = cm("dep3", &[]);
    d.metadata.owner_references = Some(vec![
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": o2.uid().unwrap()}),
        )
        .unwrap(),
    ]);
    cms.create(&PostParams::default(), &d).await.unwrap();
    cms.delete(
        "owner2",
        &DeleteParams { propagation_policy: Some(kube::api::PropagationPolicy::Orphan), ..Default::default() },
    )
    .await
    .unwrap();
    let orphan = cms.get("dep3").await.unwrap();
    assert!(orphan.metadata.owner_references.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn namespaces_and_selectors() {
    let (_s, client) = server().await;
    let in_missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    assert_eq!(api_err(in_missing.create(&PostParams::default(), &cm("x", &[])).await.unwrap_err()).0, 404);
    let nss: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("team".into());
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    cms.create(&PostParams::default(), &cm("a", &[("app", "web"), ("env", "prod")])).await.unwrap();
    cms.create(&PostParams::default(), &cm("b", &[("app", "web"), ("env", "dev")])).await.unwrap();
    cms.create(&PostParams::default(), &cm("c", &[("app", "db")])).await.unwrap();
    let names = |l: Vec<ConfigMap>| l.iter().map(|c| c.name_any()).collect::<Vec<_>>();
    assert_eq!(names(cms.list(&ListParams::default().labels("app=web,env!=dev")).await.unwrap().items), ["a"]);
    assert_eq!(names(cms.list(&ListParams::default().labels("env in (prod,dev)")).await.unwrap().items), ["a", "b"]);
    assert_eq!(names(cms.list(&ListParams::default().labels("!env")).await.unwrap().items), ["c"]);
    assert_eq!(names(cms.list(&ListParams::default().fields("metadata.name=b")).await.unwrap().items), ["b"]);
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(all.list(&ListParams::default().fields("metadata.namespace=team")).await.unwrap().items.len(), 3);
    let page = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = cms
        .list(&ListParams::default().limit(2).continue_token(page.metadata.continue_.as_deref().unwrap()))
        .await
        .unwrap();
    assert_eq!(names(rest.items), ["c"]);
    // Deleting the namespace deletes what is in it.
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    assert!(cms.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert!(nss.get_opt("team").await.unwrap().is_none());
}

#[tokio::test]
async fn watch_resume_bookmarks_and_gone() {
    let (server, client) = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let a = cms.create(&PostParams::default(), &cm("a", &[("w", "1")])).await.unwrap();
    cms.create(&PostParams::default(), &cm("b", &[])).await.unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "2"}}))).await.unwrap();
    // Resume from a's creation: b's ADDED and a's MODIFIED, in order, then bookmarks.
    let mut stream = cms.watch(&WatchParams::default(), &a.resource_version().unwrap()).await.unwrap().boxed();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await.unwrap().unwrap().unwrap() {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.name_any())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.name_any())),
            WatchEvent::Bookmark(_) => seen.push("BOOKMARK".into()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED b", "MODIFIED a", "BOOKMARK"]);
    // A label-filtered watch sees an object leave its selector as DELETED.
    let mut filtered = cms.watch(&WatchParams::default().labels("w=1").disable_bookmarks(), "0").await.unwrap().boxed();
    assert!(matches!(filtered.try_next().await.unwrap().unwrap(), WatchEvent::Added(_)));
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"w": "2"}}}))).await.unwrap();
    assert!(matches!(filtered.try_next().await.unwrap().unwrap(), WatchEvent::Deleted(_)));
    // Too old: 410 Gone as a watch ERROR event.
    server.with_store(|s| s.compact());
    let mut old =
        cms.watch(&WatchParams::default().disable_bookmarks(), &a.resource_version().unwrap()).await.unwrap().boxed();
    match old.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn server_side_apply() {
    let (_s, client) = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pp = PatchParams::apply("ctrl-a");
    let c = cms
        .patch(
            "ssa",
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"x": "1", "y": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(c.data.unwrap().len(), 2, "apply creates");
    cms.patch(
        "ssa",
        &PatchParams::apply("ctrl-b"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"z": "3"}})),
    )
    .await
    .unwrap();
    // ctrl-a stops applying y: it goes; z (ctrl-b's) stays.
    let c = cms
        .patch("ssa", &pp, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"x": "1"}})))
        .await
        .unwrap();
    assert_eq!(c.data.unwrap(), BTreeMap::from([("x".into(), "1".into()), ("z".into(), "3".into())]));
    // ctrl-b applying x with another value conflicts unless forced.
    let clash = Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"x": "9", "z": "3"}}));
    assert_eq!(api_err(cms.patch("ssa", &PatchParams::apply("ctrl-b"), &clash).await.unwrap_err()).0, 409);
    let forced = cms.patch("ssa", &PatchParams::apply("ctrl-b").force(), &clash).await.unwrap();
    assert_eq!(forced.data.unwrap()["x"], "9");
}

#[tokio::test]
async fn kube_runtime_watcher_and_finalizer_helper() {
    use kube::runtime::controller::{Action, Controller};
    use kube::runtime::finalizer::{Event as Fin, finalizer};
    use std::sync::Arc;

    type Log = Arc<std::sync::Mutex<Vec<String>>>;
    type Ctx = Arc<(Api<WindowsKubeadmConfig>, Log)>;
    let (_s, client) = server().await;
    let api: Api<WindowsKubeadmConfig> = Api::default_namespaced(client.clone());
    let log: Log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ctx = Arc::new((api.clone(), log.clone()));
    async fn reconcile(
        obj: Arc<WindowsKubeadmConfig>,
        ctx: Ctx,
    ) -> Result<Action, kube::runtime::finalizer::Error<kube::Error>> {
        let (api, log) = (&ctx.0, ctx.1.clone());
        finalizer(api, "capwin.test/cleanup", obj, |ev| async move {
            match ev {
                Fin::Apply(o) => {
                    log.lock().unwrap().push(format!("apply {}", o.name_any()));
                    api.patch_status(
                        &o.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"dataSecretName": o.name_any()}})),
                    )
                    .await?;
                }
                Fin::Cleanup(o) => log.lock().unwrap().push(format!("cleanup {}", o.name_any())),
            }
            Ok(Action::await_change())
        })
        .await
    }
    let controller = tokio::spawn(
        Controller::new(api.clone(), kube::runtime::watcher::Config::default())
            .run(reconcile, |_, _, _| Action::requeue(Duration::from_secs(1)), ctx)
            .for_each(|_| async {}),
    );
    api.create(&PostParams::default(), &wkc("ctl")).await.unwrap();
    let ready = async {
        loop {
            let o = api.get("ctl").await.unwrap();
            if o.finalizers().contains(&"capwin.test/cleanup".to_string())
                && o.status.is_some_and(|s| s.data_secret_name.is_some())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready).await.expect("finalizer added and status written");
    api.delete("ctl", &DeleteParams::default()).await.unwrap();
    let gone = async {
        while api.get_opt("ctl").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone).await.expect("cleanup ran and the finalizer was removed");
    controller.abort();
    let log = log.lock().unwrap().clone();
    assert!(log.contains(&"apply ctl".to_string()) && log.contains(&"cleanup ctl".to_string()), "{log:?}");
}

#[tokio::test]
async fn crds_created_at_run_time_are_served() {
    let (_s, client) = server().await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}
    })).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let gvk = kube::api::GroupVersionKind::gvk("example.com", "v1", "Widget");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let widgets: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let w: kube::api::DynamicObject = serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 2}}),
    )
    .unwrap();
    widgets.create(&PostParams::default(), &w).await.unwrap();
    let bad: kube::api::DynamicObject = serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}, "spec": {"size": "big"}}),
    )
    .unwrap();
    assert_eq!(api_err(widgets.create(&PostParams::default(), &bad).await.unwrap_err()).0, 422);
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.groups().any(|g| g.name() == "example.com"));
    crds.delete("widgets.example.com", &DeleteParams::default()).await.unwrap();
    assert!(widgets.list(&ListParams::default()).await.is_err(), "the resource goes with its CRD");
}

/// kubectl against the server: get, list with selectors, apply, patch, watch, delete.
#[tokio::test]
async fn kubectl_works_against_it() {
    let (server, _client) = server().await;
    let url = server.url().to_string();
    let kubectl = |args: &[&str]| {
        let url = url.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            let out = tokio::process::Command::new("kubectl")
                .arg(format!("--server={url}"))
                .args(&args)
                .output()
                .await
                .expect("kubectl is part of this machine kind's image; install it to run this test");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
            )
        }
    };
    let sample = repo().join("config/samples/windowskubeadmconfig.yaml");
    let sample = sample.to_str().unwrap();
    let (ok, out) = kubectl(&["apply", "--validate=false", "-f", sample]).await;
    assert!(ok && out.contains("created"), "{out}");
    let (ok, out) = kubectl(&["apply", "--validate=false", "-f", sample]).await;
    assert!(ok && out.contains("unchanged"), "{out}");
    let (ok, out) = kubectl(&["apply", "--server-side", "--validate=false", "--force-conflicts", "-f", sample]).await;
    assert!(ok && out.contains("serverside-applied"), "{out}");
    let (ok, out) =
        kubectl(&["get", "windowskubeadmconfigs", "-A", "-l", "cluster.x-k8s.io/cluster-name=demo", "-o", "name"])
            .await;
    assert!(ok && out.trim() == "windowskubeadmconfig.bootstrap.cluster.x-k8s.io/win-worker-0", "{out}");
    let (ok, out) =
        kubectl(&["patch", "wkc", "win-worker-0", "--type=merge", "-p", r#"{"spec":{"verbosity":7}}"#]).await;
    assert!(ok, "{out}");
    let (ok, out) =
        kubectl(&["get", "wkc", "win-worker-0", "-o", "jsonpath={.spec.verbosity} {.metadata.generation}"]).await;
    assert_eq!((ok, out.trim()), (true, "7 2"));
    let watch = tokio::spawn(kubectl(&["get", "wkc", "--watch", "--request-timeout=3s", "-o", "name"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out) = kubectl(&["delete", "wkc", "win-worker-0"]).await;
    assert!(ok && out.contains("deleted"), "{out}");
    let (_, watched) = watch.await.unwrap();
    assert!(watched.matches("win-worker-0").count() >= 2, "watch saw the object and its deletion: {watched}");
    let (ok, out) = kubectl(&["get", "ns", "-o", "name"]).await;
    assert!(ok && out.contains("namespace/kube-system"), "{out}");
}

/// TokenReview, TokenRequest and SubjectAccessReview, as a metrics endpoint delegates to them.
#[tokio::test]
async fn token_and_subject_access_reviews() {
    use capwin_testkit::apiserver::UserInfo;
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec};
    use k8s_openapi::api::authorization::v1::{
        NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

    let server = ApiServer::start(Config {
        tokens: BTreeMap::from([
            ("alice-token".to_string(), UserInfo::user("alice", &["team-a"])),
            ("bob-token".to_string(), UserInfo::user("bob", &[])),
        ]),
        ..Config::default()
    })
    .await
    .unwrap();
    let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let pp = PostParams::default();
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |token: &str| {
        let reviews = reviews.clone();
        let tr = TokenReview {
            spec: TokenReviewSpec { token: Some(token.into()), ..Default::default() },
            ..Default::default()
        };
        async move { reviews.create(&PostParams::default(), &tr).await.unwrap().status.unwrap() }
    };
    let alice = review("alice-token").await;
    assert_eq!(alice.authenticated, Some(true));
    let user = alice.user.unwrap();
    assert_eq!(user.username.as_deref(), Some("alice"));
    assert_eq!(user.groups.unwrap(), ["team-a", "system:authenticated"]);
    let nobody = review("made-up").await;
    assert_ne!(nobody.authenticated, Some(true));
    assert!(nobody.error.is_some());
    let empty = TokenReview::default();
    assert_eq!(api_err(reviews.create(&pp, &empty).await.unwrap_err()).0, 400);

    // A ServiceAccount's token from a TokenRequest; it dies with the ServiceAccount.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "prometheus"}})).unwrap();
    sas.create(&pp, &sa).await.unwrap();
    let request =
        TokenRequest { spec: TokenRequestSpec { audiences: vec![], ..Default::default() }, ..Default::default() };
    let sa_token = sas.create_token_request("prometheus", &pp, &request).await.unwrap().status.unwrap().token;
    let prom = review(&sa_token).await;
    assert_eq!(prom.authenticated, Some(true));
    let prom_user = prom.user.unwrap();
    assert_eq!(prom_user.username.as_deref(), Some("system:serviceaccount:default:prometheus"));
    assert!(prom_user.groups.as_ref().unwrap().contains(&"system:serviceaccounts:default".to_string()));
    assert_eq!(api_err(sas.create_token_request("nobody", &pp, &request).await.unwrap_err()).0, 404);

    // RBAC: /metrics for a ServiceAccount and a group, a prefix wildcard, resources by a RoleBinding.
    let crs: Api<ClusterRole> = Api::all(client.clone());
    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    fn obj<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
        serde_json::from_value(v).unwrap()
    }
    crs.create(&pp, &obj(json!({"metadata": {"name": "metrics-reader"}, "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]})))
        .await
        .unwrap();
    crs.create(
        &pp,
        &obj(json!({"metadata": {"name": "debug"}, "rules": [{"nonResourceURLs": ["/debug/*"], "verbs": ["*"]}]})),
    )
    .await
    .unwrap();
    let bind = |name: &str, role: &str, subject: serde_json::Value| -> ClusterRoleBinding {
        obj(json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [subject]}))
    };
    crbs.create(
        &pp,
        &bind(
            "prom",
            "metrics-reader",
            json!({"kind": "ServiceAccount", "name": "prometheus", "namespace": "default"}),
        ),
    )
    .await
    .unwrap();
    crbs.create(
        &pp,
        &bind(
            "team-a-debug",
            "debug",
            json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "team-a"}),
        ),
    )
    .await
    .unwrap();
    let roles: Api<Role> = Api::namespaced(client.clone(), "default");
    roles
        .create(&pp, &obj(json!({"metadata": {"name": "cm-reader"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]})))
        .await
        .unwrap();
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), "default");
    rbs.create(
        &pp,
        &obj(json!({"metadata": {"name": "bob-cm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}]})),
    )
    .await
    .unwrap();

    let sars: Api<SubjectAccessReview> = Api::all(client.clone());
    let check = |user: &str, groups: Vec<String>, non: Option<(&str, &str)>, res: Option<(&str, &str, &str)>| {
        let sars = sars.clone();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.into()),
                groups: Some(groups),
                non_resource_attributes: non
                    .map(|(path, verb)| NonResourceAttributes { path: Some(path.into()), verb: Some(verb.into()) }),
                resource_attributes: res.map(|(ns, resource, verb)| ResourceAttributes {
                    namespace: Some(ns.into()),
                    resource: Some(resource.into()),
                    verb: Some(verb.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        async move { sars.create(&PostParams::default(), &sar).await.unwrap().status.unwrap().allowed }
    };
    let prom_groups = prom_user.groups.clone().unwrap();
    let sa_name = "system:serviceaccount:default:prometheus";
    assert!(check(sa_name, prom_groups.clone(), Some(("/metrics", "get")), None).await);
    assert!(!check(sa_name, prom_groups.clone(), Some(("/metrics", "post")), None).await, "verb");
    assert!(!check(sa_name, prom_groups.clone(), Some(("/metricsx", "get")), None).await, "exact path");
    assert!(!check("system:serviceaccount:other:prometheus", vec![], Some(("/metrics", "get")), None).await);
    assert!(!check("alice", vec!["team-a".into()], Some(("/metrics", "get")), None).await, "no binding");
    assert!(check("alice", vec!["team-a".into()], Some(("/debug/pprof", "get")), None).await, "group, prefix");
    assert!(!check("alice", vec![], Some(("/debug/pprof", "get")), None).await, "the group makes it");
    assert!(check("root", vec!["system:masters".into()], Some(("/anything", "delete")), None).await);
    assert!(check("bob", vec![], None, Some(("default", "configmaps", "list"))).await, "RoleBinding");
    assert!(!check("bob", vec![], None, Some(("kube-system", "configmaps", "list"))).await, "other namespace");
    assert!(!check("bob", vec![], None, Some(("default", "secrets", "get"))).await, "other resource");
    let mut both = SubjectAccessReview::default();
    both.spec.user = Some("bob".into());
    assert_eq!(api_err(sars.create(&pp, &both).await.unwrap_err()).0, 422, "no attributes");

    // Deleting the binding revokes; deleting the ServiceAccount kills its token.
    crbs.delete("prom", &DeleteParams::default()).await.unwrap();
    assert!(!check(sa_name, prom_groups, Some(("/metrics", "get")), None).await);
    sas.delete("prometheus", &DeleteParams::default()).await.unwrap();
    assert_ne!(review(&sa_token).await.authenticated, Some(true));
}

/// Issue 15 item 7, first line of defence: every hostile config of the shared table is refused at
/// admission with a 422 naming its field, and the valid one is admitted.
#[tokio::test]
async fn hostile_configs_are_refused_at_admission() {
    use kube::api::{ApiResource, DynamicObject};
    let (_s, client) = server().await;
    let ar = ApiResource::erase::<WindowsKubeadmConfig>(&());
    let api: Api<DynamicObject> = Api::default_namespaced_with(client, &ar);
    let create = |name: &str, spec: &serde_json::Value| {
        let obj: DynamicObject = serde_json::from_value(capwin_testkit::hostile::object(name, spec)).unwrap();
        let api = api.clone();
        async move { api.create(&PostParams::default(), &obj).await }
    };
    let (valid, cases) = capwin_testkit::hostile::windows_kubeadm_configs();
    let admitted = create("valid", &valid).await.unwrap();
    assert_eq!(admitted.data["spec"]["users"][0]["name"], "capi");
    assert!(cases.len() >= 40, "the table covers every rule moved into the schema");
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        match create(&format!("hostile-{i}"), &c.spec).await {
            Ok(_) => failures.push(format!("{}: admitted", c.name)),
            Err(e) => {
                let (code, reason, message) = api_err(e);
                if (code, reason.as_str()) != (422, "Invalid") || !message.contains(&format!("{}: ", c.field)) {
                    failures
                        .push(format!("{}: expected 422 naming {}, got {code} {reason}: {message}", c.name, c.field));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// The kit checks capwin's CEL rules for real: every rule in capwin's CRDs compiles with kube-cel
/// (a rule it could not compile would be skipped, see `schema::validate_cel`).
#[test]
fn cel_rules_of_capwin_crds_compile() {
    let mut rules = 0;
    for dir in ["crds/bootstrap", "crds/infrastructure"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_str().unwrap() == "kustomization.yaml" {
                continue;
            }
            let crd: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for v in crd["spec"]["versions"].as_array().unwrap() {
                let schema = &v["schema"]["openAPIV3Schema"];
                rules += serde_json::to_string(schema).unwrap().matches("\"rule\":").count();
                let mut texts = Vec::new();
                rule_texts(schema, &mut texts);
                for r in &texts {
                    assert!(
                        cel_escapes_ok(r),
                        "{}: a string literal with an escape CEL does not have: {r}",
                        path.display()
                    );
                }
                let compiled = kube_cel::compile_schema(schema);
                let errors: Vec<String> = compiled.compilation_errors().iter().map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{}: {errors:?}", path.display());
                // kube-cel's cost estimate is coarse (per call, not multiplied by enclosing lists);
                // it still catches a rule over an unbounded string or list.
                let mut over = Vec::new();
                over_budget(&compiled, &mut over);
                assert!(over.is_empty(), "{}: {over:?}", path.display());
            }
        }
    }
    assert!(rules >= 20, "capwin's CRDs carry their CEL rules ({rules})");
}

fn over_budget(node: &kube_cel::CompiledSchema, out: &mut Vec<String>) {
    for cr in node.validations.iter().flatten() {
        for w in kube_cel::estimate_rule_cost(&cr.rule.rule, node) {
            if w.kind == kube_cel::WarningKind::CostExceeded {
                out.push(format!("{}: {}", cr.rule.rule, w.message));
            }
        }
    }
    let children = node.properties.values().chain(node.items.as_deref()).chain(node.additional_properties.as_deref());
    for child in children {
        over_budget(child, out);
    }
}

fn rule_texts(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(rules) = m.get("x-kubernetes-validations").and_then(|r| r.as_array()) {
                out.extend(rules.iter().filter_map(|r| r["rule"].as_str().map(String::from)));
            }
            m.values().for_each(|c| rule_texts(c, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| rule_texts(c, out)),
        _ => {}
    }
}

/// CEL string literals know only these escapes (cel-spec); kube-cel also reads others such as
/// `\.`, which kube-apiserver refuses, so the kit checks them itself.
fn cel_escapes_ok(rule: &str) -> bool {
    let mut quote = None;
    let mut chars = rule.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some(_), '\\') if !chars.next().is_some_and(|e| "\\'\"?`abfnrtvxuU01234567".contains(e)) => {
                return false;
            }
            _ => {}
        }
    }
    true
}
