//! Bad input gets an error naming the field and the reason; nothing is silently defaulted.

mod support;

use std::collections::BTreeMap;

use capwin_api::bootstrap::*;
use capwin_payload::{BootstrapToken, Cloud, ClusterInputs, RenderError, RenderInput};

fn errors_for(spec: &WindowsKubeadmConfigSpec) -> Vec<String> {
    errors_with(spec, &support::cluster())
}

fn errors_with(spec: &WindowsKubeadmConfigSpec, cluster: &ClusterInputs) -> Vec<String> {
    let token = BootstrapToken::parse(support::TOKEN).unwrap();
    let secrets = BTreeMap::new();
    match capwin_payload::render(&RenderInput {
        spec,
        secret_file_contents: &secrets,
        domain_join_secret: None,
        cluster,
        token: &token,
        cloud: Cloud::Azure,
    }) {
        Err(RenderError::Invalid(e)) => e.iter().map(ToString::to_string).collect(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

fn assert_error(spec: &WindowsKubeadmConfigSpec, path: &str, reason_part: &str) {
    let errors = errors_for(spec);
    assert!(
        errors.iter().any(|e| e.starts_with(&format!("{path}: ")) && e.contains(reason_part)),
        "expected `{path}: …{reason_part}…` in {errors:#?}"
    );
}

fn file(path: &str) -> File {
    File { path: path.into(), content: Some("x".into()), ..Default::default() }
}

#[test]
fn file_paths() {
    for (path, reason) in [
        ("relative\\x.txt", "absolute path"),
        (r"C:\k\..\Windows\x", ". or .."),
        (r"C:\k\a|b", "must not contain"),
        (r"C:\k\CON.txt", "reserved Windows device"),
        (r"C:\k\trailing.", "end with a space or a dot"),
        (r"C:\run\capwin\bootstrap.ps1", "reserved for capwin"),
        (r"C:\run\kubeadm\kubeadm-join-config.yaml", "reserved for capwin"),
        ("C:\\k\\new\nline", "control characters"),
    ] {
        let mut s = WindowsKubeadmConfigSpec::default();
        s.files.push(file(path));
        assert_error(&s, "spec.files[0].path", reason);
    }
    let mut s = WindowsKubeadmConfigSpec::default();
    s.files.push(File { path: r"C:\k\long".repeat(40), content: Some("x".into()), ..Default::default() });
    assert_error(&s, "spec.files[0].path", "259");
    let s = WindowsKubeadmConfigSpec { files: vec![file(r"C:\k\a.txt"), file("/k/A.TXT")], ..Default::default() };
    assert_error(&s, "spec.files[1].path", "written twice");
}

#[test]
fn file_content_and_encoding() {
    let mut s = WindowsKubeadmConfigSpec::default();
    s.files.push(File { path: r"C:\k\a".into(), ..Default::default() });
    assert_error(&s, "spec.files[0]", "exactly one of content and contentFrom");
    s.files[0] = File {
        path: r"C:\k\a".into(),
        encoding: Some(FileEncoding::Base64),
        content: Some("not base64!".into()),
        ..Default::default()
    };
    assert_error(&s, "spec.files[0].encoding", "not valid base64");
    s.files[0] = File {
        path: r"C:\k\a".into(),
        encoding: Some(FileEncoding::GzipBase64),
        content: Some("aGVsbG8=".into()),
        ..Default::default()
    };
    assert_error(&s, "spec.files[0].encoding", "not valid gzip");
    s.files[0] = File {
        path: r"C:\k\a".into(),
        permissions: Some("0999".into()),
        content: Some("x".into()),
        ..Default::default()
    };
    assert_error(&s, "spec.files[0].permissions", "octal");
    s.files[0] = File {
        path: r"C:\k\a".into(),
        content_from: Some(FileSource {
            secret: capwin_api::common::SecretKeyRef { name: "s".into(), key: "k".into() },
        }),
        ..Default::default()
    };
    assert_error(&s, "spec.files[0].contentFrom", "not resolved");
}

#[test]
fn kubelet_flags() {
    let arg = |n: &str, v: &str| Arg { name: n.into(), value: v.into() };
    let cases = [
        (arg("pod-infra-container-image", "x"), "name", "removed from kubelet in 1.34"),
        (arg("register-with-taints", "a:NoSchedule"), "name", "set by capwin"),
        (arg("--node-ip", "1.2.3.4"), "name", "without leading dashes"),
        (arg("eviction-hard", "memory.available<1 Gi"), "value", "whitespace"),
        (arg("feature-gates", "WindowsHostProcessContainers=true"), "value", "removed in 1.28"),
        (arg("feature-gates", "WinDSR=false"), "value", "locked to true since 1.34"),
    ];
    for (a, field, reason) in cases {
        let mut s = WindowsKubeadmConfigSpec::default();
        s.join_configuration.node_registration.kubelet_extra_args.push(a);
        assert_error(&s, &format!("spec.joinConfiguration.nodeRegistration.kubeletExtraArgs[0].{field}"), reason);
    }
    // Locked, not removed: naming them `true` is harmless.
    let mut s = WindowsKubeadmConfigSpec::default();
    s.join_configuration.node_registration.kubelet_extra_args.push(arg("feature-gates", "WinDSR=true,WinOverlay=true"));
    let (token, secrets) = (BootstrapToken::parse(support::TOKEN).unwrap(), BTreeMap::new());
    let rendered = capwin_payload::render(&RenderInput {
        spec: &s,
        secret_file_contents: &secrets,
        domain_join_secret: None,
        cluster: &support::cluster(),
        token: &token,
        cloud: Cloud::Azure,
    });
    assert!(rendered.is_ok(), "{rendered:?}");
    let mut s = WindowsKubeadmConfigSpec::default();
    s.join_configuration.node_registration.kubelet_extra_args = vec![arg("v", "2"), arg("v", "4")];
    assert_error(&s, "spec.joinConfiguration.nodeRegistration.kubeletExtraArgs[1].name", "twice");
}

#[test]
fn removed_flags_are_allowed_before_their_removal() {
    // pod-infra-container-image still exists in 1.33.
    let mut s = WindowsKubeadmConfigSpec::default();
    s.join_configuration
        .node_registration
        .kubelet_extra_args
        .push(Arg { name: "pod-infra-container-image".into(), value: "x".into() });
    let mut cluster = support::cluster();
    cluster.kubernetes_version = "v1.33.4".into();
    let token = BootstrapToken::parse(support::TOKEN).unwrap();
    let secrets = BTreeMap::new();
    assert!(
        capwin_payload::render(&RenderInput {
            spec: &s,
            secret_file_contents: &secrets,
            domain_join_secret: None,
            cluster: &cluster,
            token: &token,
            cloud: Cloud::Azure
        })
        .is_ok()
    );
}

#[test]
fn labels_and_taints() {
    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.node.labels.insert("node-role.kubernetes.io/worker".into(), "".into());
    assert_error(&s, "spec.windows.node.labels[node-role.kubernetes.io/worker]", "NodeRestriction");
    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.node.labels.insert("example.com/team".into(), "a b".into());
    assert_error(&s, "spec.windows.node.labels[example.com/team]", "the value");
    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.node.labels.insert("node.kubernetes.io/windows-pool".into(), "a".into());
    s.windows.node.labels.insert("topology.kubernetes.io/zone".into(), "1".into());
    assert!(support::render_with(&s, &BTreeMap::new(), Cloud::Azure).is_ok(), "labels the kubelet may set");
    let mut s = WindowsKubeadmConfigSpec::default();
    s.join_configuration.node_registration.taints.push(Taint {
        key: "bad key".into(),
        value: None,
        effect: TaintEffect::NoSchedule,
    });
    assert_error(&s, "spec.joinConfiguration.nodeRegistration.taints[0].key", "qualified name");
}

#[test]
fn windows_settings() {
    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.containerd.source = ContainerdSource::Download;
    assert_error(&s, "spec.windows.containerd.download", "required");
    s.windows.containerd.download =
        Some(ContainerdDownload { version: "2.1".into(), url: "http://x/y.tgz".into(), sha256: "ABC".into() });
    assert_error(&s, "spec.windows.containerd.download.url", "https://");
    assert_error(&s, "spec.windows.containerd.download.sha256", "64 lower-case hex");
    assert_error(&s, "spec.windows.containerd.download.version", "2.1.4");

    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.containerd.proxy =
        Some(Proxy { http_proxy: Some("proxy.example.com:3128".into()), ..Default::default() });
    assert_error(&s, "spec.windows.containerd.proxy.httpProxy", "http://");

    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.gmsa.ccg_plugin =
        Some(CcgPlugin { url: "https://x/p.dll".into(), sha256: "a".repeat(64), clsid: "nope".into(), app_id: None });
    assert_error(&s, "spec.windows.gmsa.ccgPlugin", "enabled: true");
    assert_error(&s, "spec.windows.gmsa.ccgPlugin.clsid", "GUID");

    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.kube_proxy.mode = KubeProxyMode::None;
    assert_error(&s, "spec.windows.kubeProxy.mode", "needs kube-proxy");

    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.diagnostics.serial_port = Some("COM9".into());
    assert_error(&s, "spec.windows.diagnostics.serialPort", "COM1 to COM4");

    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.hyper_v.sandbox_image = Some("Registry.example.com/pause:1 ; rm".into());
    assert_error(&s, "spec.windows.hyperV.sandboxImage", "needs enabled: true");
    assert_error(&s, "spec.windows.hyperV.sandboxImage", "image reference");
    s.windows.hyper_v.enabled = true;
    for good in [
        "registry.k8s.io/pause:3.10.2",
        "localhost:5000/pause",
        "mcr.microsoft.com/oss/kubernetes/pause:3.10-windows-ltsc2022-amd64",
        &format!("example.com/p@sha256:{}", "a".repeat(64)),
    ] {
        s.windows.hyper_v.sandbox_image = Some(good.into());
        assert!(support::render_with(&s, &BTreeMap::new(), Cloud::Azure).is_ok(), "{good}");
    }
    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.node.labels.insert("capwin.cluster.x-k8s.io/hyperv-isolation".into(), "true".into());
    assert_error(&s, "spec.windows.node.labels (node label 0)", "set by capwin from windows.hyperV.enabled");

    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.gmsa.enabled = true;
    s.windows.gmsa.ccg_plugin = Some(CcgPlugin {
        url: "https://x/p.dll".into(),
        sha256: "a".repeat(64),
        clsid: "{CCC2A336-D7F3-4818-A213-272B7924213E}".into(),
        app_id: Some("557110E1".into()),
    });
    assert_error(&s, "spec.windows.gmsa.ccgPlugin.appId", "GUID");
}

fn domain_join(domain: &str, ou: Option<&str>) -> WindowsKubeadmConfigSpec {
    let mut s = WindowsKubeadmConfigSpec::default();
    s.windows.domain_join = Some(DomainJoin {
        domain: domain.into(),
        organizational_unit: ou.map(Into::into),
        credentials_secret: DomainJoinSecretRef { name: "ad-join".into(), ..Default::default() },
    });
    s
}

fn join_errors(spec: &WindowsKubeadmConfigSpec, account: Option<&capwin_payload::DomainJoinSecret>) -> Vec<String> {
    match support::render_joined(spec, &BTreeMap::new(), account, Cloud::Azure) {
        Err(RenderError::Invalid(e)) => e.iter().map(ToString::to_string).collect(),
        Ok(_) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn domain_join_settings_and_account() {
    let ok = support::ad_secret();
    assert!(
        join_errors(
            &domain_join("corp.example.com", Some("OU=Kubernetes,OU=Servers,DC=corp,DC=example,DC=com")),
            Some(&ok)
        )
        .is_empty()
    );
    assert!(
        join_errors(&domain_join("Corp.Example.com", Some(r"OU=K8s\, Windows,DC=corp,DC=example,DC=com")), Some(&ok))
            .is_empty()
    );
    // The controller did not resolve the Secret.
    let e = join_errors(&domain_join("corp.example.com", None), None);
    assert!(
        e.iter().any(|e| e.starts_with("spec.windows.domainJoin.credentialsSecret: ") && e.contains("not resolved")),
        "{e:?}"
    );
    // Domain and OU.
    let e = join_errors(&domain_join("corp", None), Some(&ok));
    assert!(e.iter().any(|e| e.starts_with("spec.windows.domainJoin.domain: ")), "{e:?}");
    for (ou, reason) in [
        ("OU=K8s,DC=other,DC=com", "must end with the domain's components (DC=corp,DC=example,DC=com)"),
        ("Kubernetes", "distinguished name"),
        ("DC=corp,OU=K8s,DC=example,DC=com", "DC= components must come last"),
        ("DC=corp,DC=example,DC=com", "names the domain itself"),
        ("XX=K8s,DC=corp,DC=example,DC=com", "distinguished name"),
    ] {
        let e = join_errors(&domain_join("corp.example.com", Some(ou)), Some(&ok));
        assert!(
            e.iter().any(|e| e.starts_with("spec.windows.domainJoin.organizationalUnit: ") && e.contains(reason)),
            "{ou}: {e:?}"
        );
    }
    // The account: errors name the key, never the value.
    let bad =
        |u: &str, p: &[u8]| capwin_payload::DomainJoinSecret { username: u.as_bytes().to_vec(), password: p.to_vec() };
    for (account, key, reason) in [
        (bad("join", b"pw"), "username", "DOMAIN\\user or user@domain"),
        (bad("CORP\\join", b"pw\n"), "password", "line break"),
        (bad("CORP\\join", b""), "password", "1 to 256"),
        (bad("CORP\\join", b"\xff\xfe"), "password", "UTF-8"),
        (bad("a@b@c", b"pw"), "username", "domain account"),
    ] {
        let e = join_errors(&domain_join("corp.example.com", None), Some(&account));
        assert!(
            e.iter().any(|e| e.starts_with(&format!("spec.windows.domainJoin.credentialsSecret (key {key}): "))
                && e.contains(reason)),
            "{key}/{reason}: {e:?}"
        );
        for e in &e {
            assert!(!e.contains("join") || e.contains("domainJoin"), "the account leaks into {e}");
            assert!(!e.contains("pw"), "the password leaks into {e}");
        }
    }
    // Custom keys are only names; the account arrives the same way.
    let mut s = domain_join("corp.example.com", None);
    s.windows.domain_join.as_mut().unwrap().credentials_secret.password_key = Some("pass".into());
    let e = join_errors(&s, Some(&bad("join", b"pw")));
    assert!(e.iter().any(|e| e.starts_with("spec.windows.domainJoin.credentialsSecret (key username): ")), "{e:?}");
    assert!(format!("{ok:?}").contains("redacted") && !format!("{ok:?}").contains("S3cret"));
}

#[test]
fn users_and_commands() {
    let mut s = WindowsKubeadmConfigSpec::default();
    s.users.push(User { name: "bad/name".into(), ssh_authorized_keys: vec!["not a key".into()], ..Default::default() });
    s.pre_kubeadm_commands.push("   ".into());
    assert_error(&s, "spec.users[0].name", "1-20 characters");
    assert_error(&s, "spec.users[0].sshAuthorizedKeys[0]", "OpenSSH public key");
    assert_error(&s, "spec.preKubeadmCommands[0]", "empty");
}

#[test]
fn cluster_inputs() {
    let s = WindowsKubeadmConfigSpec::default();
    let mut c = support::cluster();
    c.kubernetes_version = "v1.30.1".into();
    assert!(errors_with(&s, &c).iter().any(|e| e.starts_with("kubernetesVersion: ") && e.contains("1.32 to 1.37")));
    let mut c = support::cluster();
    c.kubernetes_version = "1.34".into();
    assert!(errors_with(&s, &c).iter().any(|e| e.contains("v1.34.2")));
    let mut c = support::cluster();
    c.api_server_endpoint = "no-port".into();
    assert!(errors_with(&s, &c).iter().any(|e| e.starts_with("cluster.spec.controlPlaneEndpoint: ")));
    let mut c = support::cluster();
    c.ca_cert_hashes.clear();
    assert!(
        errors_with(&s, &c).iter().any(|e| e.contains("caCertHashes") && e.contains("unsafeSkipCAVerification")),
        "no silent insecure default"
    );
    let mut skip = WindowsKubeadmConfigSpec::default();
    skip.join_configuration.discovery = Some(Discovery {
        bootstrap_token: Some(BootstrapTokenDiscovery { unsafe_skip_ca_verification: true, ..Default::default() }),
    });
    let token = BootstrapToken::parse(support::TOKEN).unwrap();
    let secrets = BTreeMap::new();
    let p = capwin_payload::render(&RenderInput {
        spec: &skip,
        secret_file_contents: &secrets,
        domain_join_secret: None,
        cluster: &c,
        token: &token,
        cloud: Cloud::Azure,
    })
    .unwrap();
    let files = support::files(&p);
    assert_eq!(support::join_config(&files)["discovery"]["bootstrapToken"]["unsafeSkipCAVerification"], true);
}

#[test]
fn every_error_is_reported_at_once() {
    let mut s = WindowsKubeadmConfigSpec::default();
    s.files.push(file("relative"));
    s.windows.diagnostics.serial_port = Some("COM5".into());
    s.users.push(User { name: "a@b".into(), ..Default::default() });
    assert_eq!(errors_for(&s).len(), 3, "{:#?}", errors_for(&s));
}

#[test]
fn token_parsing_and_redaction() {
    assert!(BootstrapToken::parse("abcdef.0123456789abcdef").is_ok());
    for bad in
        ["abcdef0123456789abcdef", "ABCDEF.0123456789abcdef", "abcde.0123456789abcdef", "abcdef.0123456789abcde!"]
    {
        assert!(BootstrapToken::parse(bad).is_err(), "{bad}");
    }
    let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
    assert!(!format!("{t:?}").contains("0123456789abcdef"), "Debug must not show the secret");
}

#[test]
fn oversized_payloads_fail_naming_the_largest_parts() {
    // Incompressible content: random-looking bytes carried as base64.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..30_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut s = WindowsKubeadmConfigSpec::default();
    s.files.push(File {
        path: r"C:\k\blob.bin".into(),
        content_from: Some(FileSource {
            secret: capwin_api::common::SecretKeyRef { name: "s".into(), key: "k".into() },
        }),
        ..Default::default()
    });
    let secrets = BTreeMap::from([(0, noise)]);
    match support::render_with(&s, &secrets, Cloud::Aws) {
        Err(e @ RenderError::TooLarge { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("EC2 user data") && msg.contains("16384") && msg.contains(r"file C:\k\blob.bin"),
                "{msg}"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Azure's limit is four times larger: the same file fits there.
    assert!(support::render_with(&s, &secrets, Cloud::Azure).is_ok());
}
