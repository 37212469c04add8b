//! Pure pieces of the EC2 shim: ownership tags, idempotency token, user data, AMI choice,
//! provider IDs and instance-state readings. No network in here.

use base64::Engine;

/// EC2's user-data limit: 16 KiB before base64.
pub const USER_DATA_LIMIT: usize = 16_384;
/// Tag prefix marking what capwin owns.
pub const TAG_PREFIX: &str = "sigs.k8s.io/cluster-api-provider-capwin";
/// Default owner of the Windows AMIs: the account capwin acts as (EC2's owner alias `self`).
/// No public CAPI Windows AMIs exist; users build them with image-builder in their own account
/// (`make build-ami-windows-2019`), so that is where the default look-up searches.
pub const DEFAULT_AMI_OWNER: &str = "self";
/// Default AMI name pattern: what image-builder's AWS builds are named
/// (`capa-ami-windows-2019-v1.34.13-<timestamp>`, `images/capi/packer/ami`), in CAPA's look-up form
/// (`capa-ami-{{.BaseOS}}-?{{.K8sVersion}}-*`: `?` stands for the `v`).
pub const DEFAULT_AMI_NAME_PATTERN: &str = "capa-ami-windows-{{.WindowsVersion}}-?{{.K8sVersion}}-*";

/// An EC2 instance as the shim sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down` or `terminated`.
    pub state: String,
    pub availability_zone: String,
    pub private_ip: Option<String>,
    pub private_dns: Option<String>,
    pub client_token: Option<String>,
    /// The instance's IMDS token mode: `optional` or `required`.
    pub http_tokens: Option<String>,
}

/// An AMI found by a look-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub name: String,
    /// ISO 8601, as EC2 reports it; sorts chronologically as text.
    pub creation_date: String,
    pub root_device_name: Option<String>,
}

/// Tags that mark an instance as this machine's, looked up before every create so a manager
/// killed mid-create never makes a second instance (not every EC2 endpoint honours
/// `ClientToken`; moto does not).
pub fn ownership_tags(cluster: &str, namespace: &str, machine: &str) -> Vec<(String, String)> {
    vec![
        (format!("{TAG_PREFIX}/cluster/{cluster}"), "owned".into()),
        (format!("{TAG_PREFIX}/machine"), format!("{namespace}.{machine}")),
        (format!("{TAG_PREFIX}/role"), "windows-node".into()),
        // What the AWS cloud controller manager looks for.
        (format!("kubernetes.io/cluster/{cluster}"), "owned".into()),
        ("Name".into(), machine.into()),
    ]
}

/// A deterministic `ClientToken` (≤ 64 ASCII characters) from the machine's UID.
pub fn client_token(machine_uid: &str) -> String {
    let clean: String = machine_uid.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let mut t = format!("capwin-{clean}");
    t.truncate(64);
    t
}

/// Why user data cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the bootstrap payload is {size} bytes; EC2 user data is limited to {limit} bytes (the bootstrap provider compresses what it can, so the payload itself must shrink)"
)]
pub struct UserDataTooLarge {
    pub size: usize,
    pub limit: usize,
}

/// The `UserData` parameter: the Secret's `value` base64-encoded (the Rust SDK does not encode).
pub fn encode_user_data(payload: &[u8]) -> Result<String, UserDataTooLarge> {
    if payload.len() > USER_DATA_LIMIT {
        return Err(UserDataTooLarge { size: payload.len(), limit: USER_DATA_LIMIT });
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(payload))
}

/// Substitutes `{{.WindowsVersion}}` (2019/2022/2025) and `{{.K8sVersion}}` (without `v`).
pub fn ami_name_pattern(pattern: &str, windows_year: &str, kubernetes_version: &str) -> String {
    pattern
        .replace("{{.WindowsVersion}}", windows_year)
        .replace("{{.K8sVersion}}", kubernetes_version.trim_start_matches('v'))
}

/// The newest image by creation date (names do not sort: `v1.35.10` < `v1.35.9` as text).
pub fn newest(mut images: Vec<Image>) -> Option<Image> {
    images.sort_by(|a, b| b.creation_date.cmp(&a.creation_date).then(b.name.cmp(&a.name)));
    images.into_iter().next()
}

/// `aws:///<az>/<instance-id>`, what the AWS cloud controller puts on the Node.
pub fn provider_id(i: &Instance) -> String {
    format!("aws:///{}/{}", i.availability_zone, i.id)
}

/// How an instance state reads as the `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateReading {
    Pending,
    Running,
    Stopped,
    /// Gone, and not by us: never silently recreated (Machines are immutable).
    Terminated,
}

pub fn read_state(state: &str) -> StateReading {
    match state {
        "running" => StateReading::Running,
        "pending" => StateReading::Pending,
        "stopping" | "stopped" => StateReading::Stopped,
        _ => StateReading::Terminated,
    }
}

/// What to do about the instance metadata service of a running instance, and its
/// `InstanceMetadataLockedDown` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsLockdown {
    /// Call `ModifyInstanceMetadataOptions` with `httpTokens: required` now.
    pub require_tokens: bool,
    pub locked: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Locks IMDS down to tokens (IMDSv2) once the Node has joined, never before: cloudbase-init
/// needs IMDSv1 to read the user data on the first boot.
pub fn imds_lockdown(enabled: bool, node_joined: bool, http_tokens: Option<&str>) -> ImdsLockdown {
    let state = |require_tokens, locked, reason, message: &str| ImdsLockdown {
        require_tokens,
        locked,
        reason,
        message: message.to_string(),
    };
    if http_tokens == Some("required") {
        return state(
            false,
            true,
            "HttpTokensRequired",
            "the instance metadata service answers only IMDSv2 (token) requests",
        );
    }
    if !enabled {
        return state(
            false,
            false,
            "LockDownDisabled",
            "spec.instanceMetadataOptions.lockDownAfterJoin is false: IMDSv1 stays open to everything on the node",
        );
    }
    if !node_joined {
        return state(
            false,
            false,
            "WaitingForNodeJoin",
            "IMDSv1 stays open until the Node joins: cloudbase-init reads the user data with it",
        );
    }
    state(true, true, "HttpTokensRequired", "the Node joined: the instance metadata service now requires IMDSv2 tokens")
}

/// The instances to terminate among those carrying a machine's tags: every live one except
/// `keep` (the one recorded in spec). Lost `RunInstances` answers or a manager killed mid-create
/// can leave such duplicates on endpoints that ignore `ClientToken`.
pub fn duplicates<'a>(found: &'a [Instance], keep: &str) -> Vec<&'a Instance> {
    found.iter().filter(|i| i.id != keep && !matches!(i.state.as_str(), "terminated" | "shutting-down")).collect()
}

/// Picks this machine's live instance among those carrying its tags (a terminated one does not
/// count; two live ones would be a bug elsewhere, and the oldest is kept).
pub fn live_instance(found: &[Instance]) -> Option<&Instance> {
    found.iter().find(|i| !matches!(i.state.as_str(), "terminated" | "shutting-down"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, state: &str) -> Instance {
        Instance {
            id: id.into(),
            state: state.into(),
            availability_zone: "us-east-1a".into(),
            private_ip: None,
            private_dns: None,
            client_token: None,
            http_tokens: None,
        }
    }

    #[test]
    fn tags_and_tokens_are_deterministic() {
        assert_eq!(ownership_tags("demo", "default", "w-0"), ownership_tags("demo", "default", "w-0"));
        assert!(
            ownership_tags("demo", "ns", "w").iter().any(|(k, v)| k == "kubernetes.io/cluster/demo" && v == "owned")
        );
        let t = client_token("2f1c0e3a-4b5d-4e6f-8a9b-0c1d2e3f4a5b");
        assert_eq!(t, "capwin-2f1c0e3a-4b5d-4e6f-8a9b-0c1d2e3f4a5b");
        assert!(client_token(&"x".repeat(100)).len() == 64);
    }

    #[test]
    fn user_data_limit() {
        assert_eq!(encode_user_data(b"#cloud-config\n").unwrap(), "I2Nsb3VkLWNvbmZpZwo=");
        assert!(encode_user_data(&vec![0u8; USER_DATA_LIMIT]).is_ok());
        let e = encode_user_data(&vec![0u8; USER_DATA_LIMIT + 1]).unwrap_err();
        assert!(e.to_string().contains("16385 bytes") && e.to_string().contains("16384"));
    }

    #[test]
    fn ami_lookup() {
        assert_eq!(ami_name_pattern(DEFAULT_AMI_NAME_PATTERN, "2019", "v1.34.2"), "capa-ami-windows-2019-?1.34.2-*");
        let img = |name: &str, date: &str| Image {
            id: format!("ami-{name}"),
            name: name.into(),
            creation_date: date.into(),
            root_device_name: None,
        };
        let n =
            newest(vec![img("a-v1.35.9", "2026-10-01T00:00:00.000Z"), img("a-v1.35.10", "2026-11-01T00:00:00.000Z")])
                .unwrap();
        assert_eq!(n.name, "a-v1.35.10", "by date, not by name");
        assert!(newest(vec![]).is_none());
    }

    #[test]
    fn imds_is_locked_down_only_after_the_node_joined() {
        let before = imds_lockdown(true, false, Some("optional"));
        assert_eq!((before.require_tokens, before.locked, before.reason), (false, false, "WaitingForNodeJoin"));
        let join = imds_lockdown(true, true, Some("optional"));
        assert_eq!((join.require_tokens, join.locked, join.reason), (true, true, "HttpTokensRequired"));
        let done = imds_lockdown(true, true, Some("required"));
        assert!(!done.require_tokens && done.locked, "nothing to do once required");
        let unknown = imds_lockdown(true, true, None);
        assert!(unknown.require_tokens, "an endpoint that does not report the mode is locked down too");
        let off = imds_lockdown(false, true, Some("optional"));
        assert_eq!((off.require_tokens, off.locked, off.reason), (false, false, "LockDownDisabled"));
        assert!(imds_lockdown(false, true, Some("required")).locked, "launched with required: reported as such");
    }

    #[test]
    fn duplicates_are_the_other_live_instances() {
        let found =
            [inst("i-1", "running"), inst("i-2", "pending"), inst("i-3", "terminated"), inst("i-4", "shutting-down")];
        let d: Vec<&str> = duplicates(&found, "i-1").iter().map(|i| i.id.as_str()).collect();
        assert_eq!(d, ["i-2"]);
        assert_eq!(duplicates(&found, "").len(), 2, "at deletion, every live one goes");
        assert!(duplicates(&[inst("i-1", "running")], "i-1").is_empty());
    }

    #[test]
    fn states_and_ids() {
        assert_eq!(provider_id(&inst("i-0abc", "running")), "aws:///us-east-1a/i-0abc");
        assert_eq!(read_state("pending"), StateReading::Pending);
        assert_eq!(read_state("stopped"), StateReading::Stopped);
        assert_eq!(read_state("shutting-down"), StateReading::Terminated);
        assert_eq!(live_instance(&[inst("i-1", "terminated"), inst("i-2", "running")]).unwrap().id, "i-2");
        assert!(live_instance(&[inst("i-1", "terminated")]).is_none());
    }
}
