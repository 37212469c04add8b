//! Hostile strings in every user field either reach the node exactly as given or are rejected
//! with an error naming the field. Each generated spec is rendered and read back: by our own
//! parsing (many cases) and by cloudbase-init's parser (a sample of them).

mod support;

use std::collections::BTreeMap;

use base64::Engine;
use capwin_api::bootstrap::*;
use capwin_payload::{Cloud, RenderError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Fragments that break naive quoting in YAML, JSON, PowerShell, cmd.exe and Jinja.
fn hostile() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("`".to_string()),
        Just("$(whoami)".to_string()),
        Just("${env:PATH}".to_string()),
        Just("{{ v1.instance_id }}".to_string()),
        Just("{% raw %}".to_string()),
        Just("%PATH%".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("\t".to_string()),
        Just(" ".to_string()),
        Just("\\".to_string()),
        Just("# ".to_string()),
        Just(": ".to_string()),
        Just("- ".to_string()),
        Just("&&".to_string()),
        Just("|".to_string()),
        Just("^".to_string()),
        Just("ü".to_string()),
        Just("☃".to_string()),
        Just("𝄞".to_string()),
        Just("yes".to_string()),
        Just("null".to_string()),
        Just("0x1F".to_string()),
        Just("@@CAPWIN_NODE_IP@@".to_string()),
        any::<char>().prop_map(|c| c.to_string()),
        "[a-zA-Z0-9._-]{1,12}",
        "[a-z]{300}",
    ];
    prop::collection::vec(fragment, 0..12).prop_map(|v| v.concat())
}

/// A spec whose user-controlled strings are all hostile.
fn hostile_spec() -> impl Strategy<Value = (WindowsKubeadmConfigSpec, BTreeMap<usize, Vec<u8>>)> {
    (
        (hostile(), hostile(), hostile(), hostile(), hostile()),
        (hostile(), hostile(), hostile(), hostile(), hostile()),
        (hostile(), hostile(), hostile(), prop::collection::vec(any::<u8>(), 0..256)),
        (
            prop_oneof![
                Just(CniFlavour::CalicoVxlan),
                Just(CniFlavour::FlannelVxlan),
                Just(CniFlavour::FlannelHostGw),
                Just(CniFlavour::None)
            ],
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (content, path_part, pre, post, gecos),
                (arg_value, label_value, taint_key, proxy_tail, dropin),
                (defender_part, node_name, label_key, secret_bytes),
                (cni, os_taint),
            )| {
                let mut s = WindowsKubeadmConfigSpec::default();
                s.windows.cni.flavour = cni;
                s.windows.node.os_taint = os_taint;
                s.files.push(File {
                    path: format!(r"C:\k\{path_part}.txt"),
                    permissions: Some("0644".into()),
                    content: Some(content),
                    ..Default::default()
                });
                s.files.push(File {
                    path: r"C:\k\secret.bin".into(),
                    permissions: Some("0600".into()),
                    content_from: Some(FileSource {
                        secret: capwin_api::common::SecretKeyRef { name: "s".into(), key: "k".into() },
                    }),
                    ..Default::default()
                });
                s.pre_kubeadm_commands = vec![pre];
                s.post_kubeadm_commands = vec![post];
                s.users.push(User {
                    name: "capi".into(),
                    gecos: Some(gecos),
                    groups: vec!["Administrators".into()],
                    ssh_authorized_keys: vec![],
                });
                s.join_configuration
                    .node_registration
                    .kubelet_extra_args
                    .push(Arg { name: "eviction-hard".into(), value: arg_value });
                s.join_configuration.node_registration.taints.push(Taint {
                    key: taint_key,
                    value: None,
                    effect: TaintEffect::NoExecute,
                });
                s.join_configuration.node_registration.name = Some(node_name);
                s.windows.node.labels.insert(label_key, label_value);
                s.windows.containerd.proxy = Some(Proxy {
                    http_proxy: Some(format!("http://proxy.example.com:3128/{proxy_tail}")),
                    ..Default::default()
                });
                s.windows.containerd.config_drop_ins.push(ContainerdDropIn { name: "mirrors".into(), content: dropin });
                s.windows.defender.exclude_paths.push(format!(r"D:\data\{defender_part}"));
                let mut secrets = BTreeMap::new();
                secrets.insert(1, secret_bytes);
                (s, secrets)
            },
        )
}

/// Fields a hostile value may be rejected for; anything else rejected is a bug.
const REJECTABLE: &[&str] = &[
    "spec.files[0].path",
    "spec.files[0].content",
    "spec.preKubeadmCommands[0]",
    "spec.postKubeadmCommands[0]",
    "spec.users[0].gecos",
    "spec.joinConfiguration.nodeRegistration.kubeletExtraArgs[0].value",
    "spec.joinConfiguration.nodeRegistration.taints[0].key",
    "spec.joinConfiguration.nodeRegistration.name",
    "spec.windows.node.labels[",
    "spec.windows.containerd.proxy.httpProxy",
    "spec.windows.defender.excludePaths[0]",
    "spec.files[1].content",
];

/// Checks a payload's files against the spec that made it; `files` come from our parse or
/// cloudbase-init's.
fn assert_exact(
    spec: &WindowsKubeadmConfigSpec,
    secrets: &BTreeMap<usize, Vec<u8>>,
    files: &BTreeMap<String, Vec<u8>>,
) {
    let user_file = capwin_payload::validate::windows_path(&spec.files[0].path).unwrap();
    assert_eq!(files[&user_file], spec.files[0].content.as_ref().unwrap().as_bytes(), "inline file content");
    assert_eq!(files[r"C:\k\secret.bin"], secrets[&1], "Secret file content");
    let dropin = &spec.windows.containerd.config_drop_ins[0];
    assert_eq!(files[r"C:\run\capwin\containerd-mirrors.toml"], dropin.content.as_bytes(), "drop-in");
    let params = support::params(files);
    assert!(std::str::from_utf8(&files[capwin_payload::PARAMS_PATH]).unwrap().is_ascii(), "parameters are ASCII");
    assert_eq!(params["preKubeadmCommands"][0], spec.pre_kubeadm_commands[0].as_str());
    assert_eq!(params["postKubeadmCommands"][0], spec.post_kubeadm_commands[0].as_str());
    assert_eq!(params["privateFiles"][0], r"C:\k\secret.bin");
    let proxy = spec.windows.containerd.proxy.as_ref().unwrap().http_proxy.as_ref().unwrap();
    assert_eq!(params["containerd"]["proxyEnvironment"][0], format!("HTTP_PROXY={proxy}"));
    let def = capwin_payload::validate::windows_path(&spec.windows.defender.exclude_paths[0]).unwrap();
    assert!(params["defender"]["paths"].as_array().unwrap().iter().any(|p| p == def.as_str()), "defender path");
    let arg = &spec.join_configuration.node_registration.kubelet_extra_args[0];
    assert!(
        params["kubeletFlags"].as_array().unwrap().iter().any(|f| *f == format!("--{}={}", arg.name, arg.value)),
        "kubelet flag"
    );
    let join = support::join_config(files);
    let args = join["nodeRegistration"]["kubeletExtraArgs"].as_sequence().unwrap();
    assert!(
        args.iter().any(|a| a["name"] == arg.name.as_str() && a["value"] == arg.value.as_str()),
        "kubeletExtraArgs"
    );
    let taint = &spec.join_configuration.node_registration.taints[0];
    assert!(
        join["nodeRegistration"]["taints"].as_sequence().unwrap().iter().any(|t| t["key"] == taint.key.as_str()),
        "taint"
    );
    let (k, v) = spec.windows.node.labels.iter().next().unwrap();
    let labels = args.iter().find(|a| a["name"] == "node-labels").unwrap()["value"].as_str().unwrap().to_string();
    assert!(labels.split(',').any(|l| l == format!("{k}={v}")), "label {k}={v} in {labels}");
    assert_eq!(join["nodeRegistration"]["name"], spec.join_configuration.node_registration.name.as_deref().unwrap());
}

fn check(
    spec: &WindowsKubeadmConfigSpec,
    secrets: &BTreeMap<usize, Vec<u8>>,
    cloud: Cloud,
) -> Option<capwin_payload::Payload> {
    match support::render_with(spec, secrets, cloud) {
        Ok(p) => {
            assert_exact(spec, secrets, &support::files(&p));
            Some(p)
        }
        Err(RenderError::Invalid(errors)) => {
            for e in &errors {
                assert!(
                    REJECTABLE.iter().any(|r| e.path.starts_with(r)),
                    "rejected a field that holds no hostile value: {e}"
                );
                assert!(!e.reason.is_empty(), "an error without a reason: {e:?}");
            }
            None
        }
        Err(e @ RenderError::TooLarge { .. }) => panic!("hostile values are small; unexpected {e}"),
    }
}

#[test]
fn hostile_values_round_trip_or_are_rejected_by_field() {
    let mut runner = TestRunner::new(Config { cases: 384, failure_persistence: None, ..Config::default() });
    let rejected = std::cell::Cell::new(0u32);
    runner
        .run(&hostile_spec(), |(spec, mut secrets)| {
            for cloud in [Cloud::Azure, Cloud::Aws] {
                // As generated: every field hostile, so usually something is rejected, by name.
                if check(&spec, &secrets, cloud).is_none() {
                    rejected.set(rejected.get() + 1);
                }
            }
            // Hostile content where exact delivery is promised: must render, byte for byte.
            let acceptable = make_acceptable(spec);
            secrets.entry(1).and_modify(|b| b.retain(|x| *x != b'@'));
            for cloud in [Cloud::Azure, Cloud::Aws] {
                prop_assert!(
                    check(&acceptable, &secrets, cloud).is_some(),
                    "rejected: {:?}",
                    support::render_with(&acceptable, &secrets, cloud).err()
                );
            }
            Ok(())
        })
        .unwrap();
    assert!(rejected.get() > 0, "no hostile spec was ever rejected; the generator is too tame");
}

/// Sanitises a hostile spec until it is accepted, keeping the hostile content where the renderer
/// promises exact delivery (file contents, commands, gecos, drop-ins, flag values, URLs).
fn make_acceptable(mut spec: WindowsKubeadmConfigSpec) -> WindowsKubeadmConfigSpec {
    spec.files[0].path = r"C:\k\file.txt".into();
    spec.join_configuration.node_registration.name = Some("win-node".into());
    spec.join_configuration.node_registration.taints[0].key = "example.com/hostile".into();
    spec.windows.node.labels = BTreeMap::from([("example.com/role".into(), "windows".into())]);
    spec.windows.defender.exclude_paths = vec![r"D:\data".into()];
    let clean = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace() && !c.is_control() && *c != '"' && *c != '\'')
            .collect::<String>()
            .replace("@@CAPWIN_", "")
    };
    let a = &mut spec.join_configuration.node_registration.kubelet_extra_args[0];
    a.value = clean(&a.value);
    let p = spec.windows.containerd.proxy.as_mut().unwrap();
    p.http_proxy = Some(clean(p.http_proxy.as_ref().unwrap()));
    let c = spec.files[0].content.as_mut().unwrap();
    *c = c.replace("@@CAPWIN_", "@@capwin_");
    for cmd in spec.pre_kubeadm_commands.iter_mut().chain(spec.post_kubeadm_commands.iter_mut()) {
        *cmd = cmd.replace('\0', "");
        if cmd.trim().is_empty() {
            cmd.push_str("Write-Output ok");
        }
    }
    spec.users[0].gecos = spec.users[0].gecos.as_ref().map(|g| g.chars().filter(|c| !c.is_control()).collect());
    spec
}

#[test]
fn hostile_payloads_pass_cloudbase_init_exactly() {
    let cases = std::env::var("CAPWIN_HOSTILE_CBI_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&hostile_spec(), |(spec, mut secrets)| {
            let spec = make_acceptable(spec);
            secrets.entry(1).and_modify(|b| b.retain(|x| *x != b'@'));
            for cloud in [Cloud::Azure, Cloud::Aws] {
                let payload = check(&spec, &secrets, cloud).unwrap_or_else(|| {
                    panic!("sanitised spec rejected: {:?}", support::render_with(&spec, &secrets, cloud).err())
                });
                let report = support::assert_cbi_accepts(&payload.bytes, "hostile payload");
                let files = support::cbi_files(&report);
                assert_exact(&spec, &secrets, &files);
                assert_eq!(
                    report["users"][0]["full_name"],
                    spec.users[0].gecos.as_deref().unwrap(),
                    "gecos as cloudbase-init sees it"
                );
                // What kubeadm's YAML 1.1 decoder sees in the join configuration.
                let join = support::yaml11(&files[capwin_payload::JOIN_CONFIG_PATH]);
                let arg = &spec.join_configuration.node_registration.kubelet_extra_args[0];
                let args = join["nodeRegistration"]["kubeletExtraArgs"].as_array().unwrap();
                assert!(
                    args.iter().any(|a| a["name"] == arg.name.as_str() && a["value"] == arg.value.as_str()),
                    "YAML 1.1 view of {arg:?}: {args:?}"
                );
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn user_file_encodings_are_decoded_before_delivery() {
    let raw = "line one\r\nline two ü\n".as_bytes();
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(raw).unwrap();
        base64::engine::general_purpose::STANDARD.encode(e.finish().unwrap())
    };
    let mut spec = WindowsKubeadmConfigSpec::default();
    spec.files.push(File {
        path: "/k/a.txt".into(),
        encoding: Some(FileEncoding::Base64),
        content: Some(b64),
        ..Default::default()
    });
    spec.files.push(File {
        path: "C:/k/b.txt".into(),
        encoding: Some(FileEncoding::GzipBase64),
        content: Some(gz),
        ..Default::default()
    });
    let p = support::render(&spec, Cloud::Azure);
    let report = support::assert_cbi_accepts(&p.bytes, "encoded files");
    let files = support::cbi_files(&report);
    assert_eq!(files[r"C:\k\a.txt"], raw);
    assert_eq!(files[r"C:\k\b.txt"], raw);
}

/// Hostile domain-join Secret contents (issue 13): each account either reaches the node's private
/// account file exactly, and nowhere else in the payload, or is rejected naming the Secret key;
/// no error ever shows the account or the password.
#[test]
fn hostile_domain_join_secrets_reach_only_their_file_or_are_rejected_without_echo() {
    let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
    let mut spec = WindowsKubeadmConfigSpec::default();
    spec.windows.domain_join = Some(DomainJoin {
        domain: "corp.example.com".into(),
        credentials_secret: DomainJoinSecretRef { name: "ad-join".into(), ..Default::default() },
        ..Default::default()
    });
    let (accepted, rejected) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let account = (prop_oneof![Just("CORP\\"), Just(""), Just("x@")], hostile(), hostile());
    runner
        .run(&account, |(prefix, user, pass)| {
            // Unique markers, so a leak cannot hide behind a common substring.
            let username = format!("{prefix}{user}Uq7mark");
            let password = format!("{pass}Pw3mark");
            let secret = capwin_payload::DomainJoinSecret {
                username: username.clone().into_bytes(),
                password: password.clone().into_bytes(),
            };
            match support::render_joined(&spec, &BTreeMap::new(), Some(&secret), Cloud::Azure) {
                Ok(p) => {
                    accepted.set(accepted.get() + 1);
                    let files = support::files(&p);
                    let account: serde_json::Value =
                        serde_json::from_slice(&files[capwin_payload::node::DOMAIN_JOIN_PATH]).unwrap();
                    prop_assert_eq!(&account["username"], &serde_json::json!(username));
                    prop_assert_eq!(&account["password"], &serde_json::json!(password));
                    for (path, bytes) in &files {
                        if path != capwin_payload::node::DOMAIN_JOIN_PATH {
                            let text = String::from_utf8_lossy(bytes);
                            prop_assert!(!text.contains("Pw3mark"), "the password leaked into {}", path);
                        }
                    }
                }
                Err(RenderError::Invalid(errors)) => {
                    rejected.set(rejected.get() + 1);
                    for e in &errors {
                        let text = e.to_string();
                        prop_assert!(text.starts_with("spec.windows.domainJoin.credentialsSecret"), "{}", text);
                        prop_assert!(
                            !text.contains("Pw3mark") && !text.contains("Uq7mark"),
                            "an error echoes the account: {}",
                            text
                        );
                    }
                }
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
            Ok(())
        })
        .unwrap();
    let (accepted, rejected) = (accepted.get(), rejected.get());
    assert!(
        accepted > 0 && rejected > 0,
        "the generator must hit both sides: {accepted} accepted, {rejected} rejected"
    );
}
