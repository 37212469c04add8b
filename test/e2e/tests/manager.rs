//! The manager process: probes, metrics (plain and secure), leader election, watch filter.

use std::time::Duration;

use capwin_e2e::{Env, free_port};
use kube::Api;
use serde_json::json;

async fn get(url: &str) -> (u16, String) {
    // A tiny HTTP/1.0 GET, so the test needs no HTTP client crate.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let (host, path) = addr.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0);
    (code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_leader_election_and_watch_filter() {
    let (metrics, health) = (free_port(), free_port());
    let m = format!("127.0.0.1:{metrics}");
    let h = format!("127.0.0.1:{health}");
    let env = Env::start(
        "mgr",
        &[
            "--leader-elect",
            "--leader-election-namespace",
            "e2e-mgr",
            "--metrics-bind-address",
            &m,
            "--health-probe-bind-address",
            &h,
            "--watch-filter",
            "team-a",
        ],
    )
    .await
    .unwrap();
    let ready = env
        .wait("readyz", Duration::from_secs(20), || async {
            let url = format!("http://{h}/readyz");
            Ok(tokio::net::TcpStream::connect(&h).await.ok().map(|_| url))
        })
        .await
        .unwrap();
    env.wait("ready", Duration::from_secs(20), || async { Ok((get(&ready).await.0 == 200).then_some(())) })
        .await
        .unwrap();
    assert_eq!(get(&format!("http://{h}/healthz")).await.0, 200);

    // The Lease names this manager as leader.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(env.mgmt.clone(), "e2e-mgr");
    let lease = leases.get("capwin-manager").await.unwrap();
    assert!(lease.spec.unwrap().holder_identity.unwrap_or_default().contains('_'), "holder is host_pid");

    // Only objects labelled with the watch filter are reconciled.
    for (name, labels) in
        [("filtered-in", json!({"cluster.x-k8s.io/watch-filter": "team-a"})), ("filtered-out", json!({}))]
    {
        env.create(
            "bootstrap.cluster.x-k8s.io",
            "v1alpha1",
            "WindowsKubeadmConfig",
            json!({"metadata": {"name": name, "labels": labels}, "spec": {}}),
        )
        .await
        .unwrap();
    }
    env.wait("the labelled config to be reconciled", Duration::from_secs(20), || async {
        let o = env.configs().get("filtered-in").await?;
        Ok(o.data["status"]["conditions"].is_array().then_some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.configs().get("filtered-out").await.unwrap().data["status"].is_null(),
        "the unlabelled config is left alone"
    );

    let (code, body) = get(&format!("http://{m}/metrics")).await;
    assert_eq!(code, 200);
    assert!(body.contains("capwin_reconciles_total{controller=\"bootstrap\",result=\"blocked\"}"), "{body}");
    assert!(
        body.contains("capwin_reconcile_errors_total{controller=\"bootstrap\",reason=\"WaitingForMachineOwner\"}"),
        "{body}"
    );
    assert!(body.contains("capwin_reconcile_duration_seconds_bucket"), "{body}");
    // The reconcile queue delay (trigger to reconcile start) of the controller that ran, and of
    // no controller this manager does not run.
    let delays = body
        .lines()
        .find(|l| l.starts_with("capwin_reconcile_queue_delay_seconds_count{controller=\"bootstrap\"}"))
        .unwrap_or_else(|| panic!("no queue delay series: {body}"));
    assert!(delays.split_whitespace().last().unwrap().parse::<u64>().unwrap() >= 1, "{delays}");
    assert!(!body.contains("queue_delay_seconds_count{controller=\"AWSWindowsMachine\""), "{body}");
    // Nor the families of controllers it does not run.
    assert!(!body.contains("capwin_aws_") && !body.contains("capwin_azure_"), "{body}");

    // A second manager waits for the lease instead of running controllers.
    let second_log = std::env::temp_dir().join(format!("capwin-second-{}.log", std::process::id()));
    let file = std::fs::File::create(&second_log).unwrap();
    let mut second = tokio::process::Command::new(capwin_e2e::capwin_bin())
        .args(["manager", "--kubeconfig"])
        .arg(env.kubeconfig())
        .args(["--namespace", "e2e-mgr", "--leader-elect", "--leader-election-namespace", "e2e-mgr"])
        .args(["--metrics-bind-address", "0", "--health-probe-bind-address", "0"])
        .stderr(std::process::Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    second.kill().await.unwrap();
    let log = std::fs::read_to_string(&second_log).unwrap();
    std::fs::remove_file(&second_log).ok();
    assert!(log.contains("waiting for leadership") && !log.contains("became leader"), "{log}");
    assert!(env.manager_log().contains("became leader"));
}

#[tokio::test]
async fn bad_flags_fail_fast_with_a_message() {
    let out = tokio::process::Command::new(capwin_e2e::capwin_bin())
        .args(["manager", "--sync-period", "soon"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a duration"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new(capwin_e2e::capwin_bin())
        .args(["manager", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kubeconfig"));
}

/// Failover: the leader is killed (SIGKILL, no release); the standby takes the Lease over within
/// the lease duration (plus one retry period of observation), counts the transition, and never
/// reconciled anything while the other one led.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_the_leader_is_killed_and_never_reconciles_alongside_it() {
    let mut env =
        Env::start("failover", &["--leader-elect", "--leader-election-namespace", "e2e-failover"]).await.unwrap();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(env.mgmt.clone(), "e2e-failover");
    let holder =
        || async { Ok(leases.get_opt("capwin-manager").await?.and_then(|l| l.spec).and_then(|s| s.holder_identity)) };
    let first = env.wait("a leader", Duration::from_secs(20), holder).await.unwrap();

    // The standby, with its own metrics endpoint.
    let metrics = format!("127.0.0.1:{}", free_port());
    let log_path = std::env::temp_dir().join(format!("capwin-standby-{}.log", std::process::id()));
    let mut standby = tokio::process::Command::new(capwin_e2e::capwin_bin())
        .args(["manager", "--kubeconfig"])
        .arg(env.kubeconfig())
        .args(["--namespace", "e2e-failover", "--leader-elect", "--leader-election-namespace", "e2e-failover"])
        .args(["--metrics-bind-address", &metrics, "--metrics-secure=false", "--health-probe-bind-address", "0"])
        .stderr(std::process::Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let standby_id = format!("_{}", standby.id().unwrap());
    env.wait("the standby's metrics", Duration::from_secs(20), || async {
        Ok(tokio::net::TcpStream::connect(&metrics).await.ok().map(|_| ()))
    })
    .await
    .unwrap();

    // While the first leads, only it reconciles.
    let config = |name: &str| json!({"metadata": {"name": name}, "spec": {}});
    env.create("bootstrap.cluster.x-k8s.io", "v1alpha1", "WindowsKubeadmConfig", config("before")).await.unwrap();
    env.wait("the leader to reconcile", Duration::from_secs(20), || async {
        Ok(env.configs().get("before").await?.data["status"]["conditions"].is_array().then_some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, body) = get(&format!("http://{metrics}/metrics")).await;
    assert!(!body.contains("capwin_reconciles_total{"), "the standby reconciled while the leader led: {body}");
    assert!(!std::fs::read_to_string(&log_path).unwrap().contains("became leader"));

    // Kill the leader: no release, its lease simply stops being renewed.
    env.kill_manager().await;
    let killed = std::time::Instant::now();
    let second = env
        .wait("the standby to take over", Duration::from_secs(40), || async {
            Ok(holder().await?.filter(|h| h.ends_with(&standby_id)))
        })
        .await
        .unwrap();
    let took = killed.elapsed();
    eprintln!("failover: {first} -> {second} after {took:?}");
    // Worst case: the last renewal just before the kill, seen up to one retry period later, the
    // lease duration from then, and one more retry period until the standby looks again.
    assert!(took <= Duration::from_secs(2 + 15 + 2 + 2), "took over after {took:?} (lease 15 s, retry 2 s)");
    assert!(took >= Duration::from_secs(8), "took over after {took:?}: before the old lease could have expired");
    let lease = leases.get("capwin-manager").await.unwrap().spec.unwrap();
    assert_eq!(lease.lease_transitions, Some(1), "one holder change");

    // The new leader reconciles.
    env.create("bootstrap.cluster.x-k8s.io", "v1alpha1", "WindowsKubeadmConfig", config("after")).await.unwrap();
    env.wait("the new leader to reconcile", Duration::from_secs(20), || async {
        Ok(env.configs().get("after").await?.data["status"]["conditions"].is_array().then_some(()))
    })
    .await
    .unwrap();
    let (_, body) = get(&format!("http://{metrics}/metrics")).await;
    assert!(body.contains("capwin_reconciles_total{"), "{body}");
    standby.kill().await.unwrap();
    let _ = std::fs::remove_file(&log_path);
}

/// An HTTPS client that accepts the manager's self-signed certificate (test only).
fn https() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTPS client")
}

/// GET https://ADDR/metrics, with a bearer token when given: (status, body); 0 when no answer.
async fn scrape_https(client: &reqwest::Client, addr: &str, token: Option<&str>) -> (u16, String) {
    let mut req = client.get(format!("https://{addr}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(resp) => (resp.status().as_u16(), resp.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Secure metrics, the manager's default: HTTPS with a self-signed certificate (none mounted);
/// a scrape is authenticated with a TokenReview and authorised with a SubjectAccessReview for
/// GET /metrics. A ServiceAccount bound to a metrics-reader ClusterRole (as Prometheus would be)
/// gets the series, no token or an unknown one gets 401, a known token without the binding 403.
/// Runs unchanged against a real cluster (ServiceAccount tokens from TokenRequests); only the
/// kit's fixed user token is skipped there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_metrics_need_a_token_that_may_get_metrics() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use kube::api::{DeleteParams, PostParams};

    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::start("secmetrics", &["--metrics-bind-address", &addr, "--metrics-secure", "true"]).await.unwrap();
    let ns = env.namespace.clone();
    let pp = PostParams::default();

    // The RBAC a Prometheus install has: the components' metrics-reader rule, bound to its
    // ServiceAccount (and, in the kit, to the group of the kit's user token).
    let name = format!("capwin-e2e-metrics-reader-{}", std::process::id());
    let roles: Api<ClusterRole> = Api::all(env.mgmt.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(env.mgmt.clone());
    let role: ClusterRole = serde_json::from_value(json!({"metadata": {"name": name},
        "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}))
    .unwrap();
    roles.create(&pp, &role).await.unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({"metadata": {"name": name},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
    "subjects": [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": ns},
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": capwin_e2e::KIT_GROUP},
    ]}))
    .unwrap();
    bindings.create(&pp, &binding).await.unwrap();

    let sas: Api<ServiceAccount> = Api::namespaced(env.mgmt.clone(), &ns);
    let mut tokens = Vec::new();
    for sa in ["prometheus", "stranger"] {
        let body: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap();
        match sas.create(&pp, &body).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {} // a real cluster's namespace from an earlier run
            Err(e) => panic!("creating ServiceAccount {sa}: {e}"),
        }
        let request = TokenRequest::default();
        let answer = sas.create_token_request(sa, &pp, &request).await.unwrap();
        tokens.push(answer.status.unwrap().token);
    }
    let (prometheus, stranger) = (tokens[0].clone(), tokens[1].clone());

    // Something to count: one reconciled config.
    env.create(
        "bootstrap.cluster.x-k8s.io",
        "v1alpha1",
        "WindowsKubeadmConfig",
        json!({"metadata": {"name": "counted"}, "spec": {}}),
    )
    .await
    .unwrap();
    let client = https();
    let body = env
        .wait("a scrape with the ServiceAccount token", Duration::from_secs(30), || async {
            let (code, body) = scrape_https(&client, &addr, Some(&prometheus)).await;
            Ok((code == 200 && body.contains("capwin_reconciles_total{controller=\"bootstrap\"")).then_some(body))
        })
        .await
        .unwrap();
    assert!(body.contains("capwin_reconcile_duration_seconds_bucket"), "{body}");
    assert!(!body.contains("capwin_aws_") && !body.contains("capwin_azure_"), "{body}");

    // No token, a malformed header, an unknown token: 401.
    assert_eq!(scrape_https(&client, &addr, None).await.0, 401);
    assert_eq!(scrape_https(&client, &addr, Some("not-a-token")).await.0, 401);
    let basic = client.get(format!("https://{addr}/metrics")).basic_auth("u", Some("p")).send().await.unwrap();
    assert_eq!(basic.status().as_u16(), 401);
    // A token the API server authenticates, without the binding: 403 naming the user.
    let (code, body) = scrape_https(&client, &addr, Some(&stranger)).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(&format!("system:serviceaccount:{ns}:stranger")), "{body}");
    // Plain HTTP on the secure port gets nothing.
    let plain = reqwest::Client::new().get(format!("http://{addr}/metrics")).send().await;
    assert!(plain.map(|r| r.status().as_u16() != 200).unwrap_or(true));

    if env.is_real() {
        println!("skipped in real mode: the kit's fixed user token (a real cluster knows no such token)");
    } else {
        let (code, body) = scrape_https(&client, &addr, Some(capwin_e2e::KIT_USER_TOKEN)).await;
        assert_eq!(code, 200, "a user allowed through its group: {body}");
    }
    let log = env.manager_log();
    assert!(log.contains("serving /metrics over HTTPS"), "{log}");
    for t in [&prometheus, &stranger] {
        assert!(!log.contains(t.as_str()), "a token in the manager's log");
    }

    // Cluster-scoped objects do not go with the scenario's namespace.
    let _ = bindings.delete(&name, &DeleteParams::default()).await;
    let _ = roles.delete(&name, &DeleteParams::default()).await;
}

/// Each manager registers only the series of the controllers it runs: an azure-only manager
/// exports no bootstrap or aws families (the bootstrap controller's used to show with zeros).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_exports_only_its_controllers_series() {
    let addr = format!("127.0.0.1:{}", free_port());
    let env = Env::start("onlyown", &["--controllers", "azure", "--metrics-bind-address", &addr]).await.unwrap();
    let body = env
        .wait("metrics", Duration::from_secs(20), || async {
            if tokio::net::TcpStream::connect(&addr).await.is_err() {
                return Ok(None);
            }
            let (code, body) = get(&format!("http://{addr}/metrics")).await;
            Ok((code == 200).then_some(body))
        })
        .await
        .unwrap();
    assert!(body.contains("capwin_azure_"), "{body}");
    for other in ["capwin_aws_", "capwin_bootstrap_tokens", "capwin_payload_bytes", "capwin_reconciles_total"] {
        assert!(!body.contains(other), "{other} in an azure-only manager's metrics: {body}");
    }
}
