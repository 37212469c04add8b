//! From an `AWSWindowsMachine` to a running instance: resolve the AMI and subnet, build the
//! launch, and create idempotently (look up by ownership tags first, then `RunInstances` with a
//! deterministic `ClientToken`).

use capwin_api::aws::{AWSWindowsMachineSpec, AwsVolumeType, HttpTokens};

use crate::ec2::{Ec2, Ec2Error, LaunchSpec};
use crate::model::{self, Image, Instance};

/// What the machine's owners tell the shim.
#[derive(Clone, Debug, Default)]
pub struct MachineContext {
    pub cluster: String,
    pub namespace: String,
    pub machine: String,
    pub machine_uid: String,
    /// `Machine.spec.failureDomain` (an availability zone).
    pub failure_domain: Option<String>,
    /// `Machine.spec.version`, e.g. `v1.34.2`.
    pub kubernetes_version: String,
    /// The Windows Server year of the Machine's bootstrap config (2019/2022/2025).
    pub windows_year: String,
    /// Subnets the `AWSCluster` offers, as (id, availability zone); used without `spec.subnet`.
    pub cluster_subnets: Vec<(String, String)>,
    /// The `AWSCluster`'s node security group; used without `spec.securityGroups`.
    pub cluster_node_security_group: Option<String>,
}

/// Why a launch cannot happen; each names the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error("spec.ami.id: AMI {0} does not exist or is not visible to this account")]
    UnknownAmi(String),
    #[error("spec.ami.lookup: no available Windows AMI of owner {owner} matches {pattern}")]
    NoAmiMatch { owner: String, pattern: String },
    #[error("spec.subnet: {0}")]
    NoSubnet(String),
    #[error("spec.securityGroups: no security group given and the AWSCluster has no node security group")]
    NoSecurityGroup,
    #[error("{0}")]
    UserData(#[from] model::UserDataTooLarge),
    #[error("{0}")]
    Ec2(#[from] Ec2Error),
}

impl LaunchError {
    /// The condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownAmi(_) | Self::NoAmiMatch { .. } => "AMINotFound",
            Self::NoSubnet(_) => "SubnetNotFound",
            Self::NoSecurityGroup => "SecurityGroupNotFound",
            Self::UserData(_) => "UserDataTooLarge",
            Self::Ec2(e) if e.throttled() => "Throttled",
            Self::Ec2(_) => "EC2Error",
        }
    }
}

/// The (owner, name pattern) a machine's AMI is looked up by; `None` when it names an AMI ID.
pub fn ami_lookup(spec: &AWSWindowsMachineSpec, ctx: &MachineContext) -> Option<(String, String)> {
    if spec.ami.id.is_some() {
        return None;
    }
    let (owner, pattern) = match &spec.ami.lookup {
        Some(l) => (l.owner.clone(), l.name_pattern.clone()),
        None => (model::DEFAULT_AMI_OWNER.to_string(), model::DEFAULT_AMI_NAME_PATTERN.to_string()),
    };
    Some((owner, model::ami_name_pattern(&pattern, &ctx.windows_year, &ctx.kubernetes_version)))
}

/// The AMI to launch.
pub async fn resolve_ami<E: Ec2>(
    ec2: &E,
    spec: &AWSWindowsMachineSpec,
    ctx: &MachineContext,
) -> Result<Image, LaunchError> {
    let Some((owner, pattern)) = ami_lookup(spec, ctx) else {
        let id = spec.ami.id.clone().unwrap_or_default();
        return ec2.image(&id).await?.ok_or(LaunchError::UnknownAmi(id));
    };
    let found = ec2.find_images(&owner, &pattern).await?;
    model::newest(found).ok_or(LaunchError::NoAmiMatch { owner, pattern })
}

/// How long a look-up's answer is reused.
pub const AMI_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// AMI look-up answers per (credentials, owner, pattern) for [`AMI_CACHE_TTL`]: a
/// MachineDeployment of N machines makes one `DescribeImages`, not N. Keyed by the credentials
/// too, because `self` means another account under another identity.
#[derive(Default)]
pub struct AmiCache(std::sync::Mutex<std::collections::HashMap<AmiKey, (std::time::Instant, Image)>>);

/// (credentials, owner, name pattern).
pub type AmiKey = (String, String, String);

impl AmiCache {
    pub fn get(&self, key: &AmiKey, now: std::time::Instant) -> Option<Image> {
        let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key).filter(|(at, _)| now.saturating_duration_since(*at) < AMI_CACHE_TTL).map(|(_, i)| i.clone())
    }

    pub fn put(&self, key: AmiKey, image: Image, now: std::time::Instant) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < AMI_CACHE_TTL);
        cache.insert(key, (now, image));
    }
}

/// The subnet (and its zone): by ID, by filters, or the cluster's subnet in the failure domain.
pub async fn resolve_subnet<E: Ec2>(
    ec2: &E,
    spec: &AWSWindowsMachineSpec,
    ctx: &MachineContext,
) -> Result<(String, String), LaunchError> {
    let in_zone = |subnets: Vec<(String, String)>| -> Option<(String, String)> {
        match &ctx.failure_domain {
            Some(fd) => subnets.into_iter().find(|(_, az)| az == fd),
            None => subnets.into_iter().next(),
        }
    };
    let zone = ctx.failure_domain.as_deref().unwrap_or("any zone");
    match &spec.subnet {
        Some(r) if r.id.is_some() => {
            let id = r.id.clone().unwrap_or_default();
            let found = ec2.subnets(std::slice::from_ref(&id), &[]).await?;
            in_zone(found).ok_or_else(|| LaunchError::NoSubnet(format!("subnet {id} does not exist in {zone}")))
        }
        Some(r) => {
            let filters: Vec<(String, Vec<String>)> =
                r.filters.clone().unwrap_or_default().into_iter().map(|f| (f.name, f.values)).collect();
            let found = ec2.subnets(&[], &filters).await?;
            in_zone(found).ok_or_else(|| LaunchError::NoSubnet(format!("no subnet matches the filters in {zone}")))
        }
        None => in_zone(ctx.cluster_subnets.clone())
            .ok_or_else(|| LaunchError::NoSubnet(format!("none given and the AWSCluster has no subnet in {zone}"))),
    }
}

/// The `RunInstances` request.
pub fn launch_spec(
    spec: &AWSWindowsMachineSpec,
    ctx: &MachineContext,
    image: &Image,
    subnet_id: &str,
    security_groups: Vec<String>,
    payload: &[u8],
) -> Result<LaunchSpec, LaunchError> {
    let mut tags = model::ownership_tags(&ctx.cluster, &ctx.namespace, &ctx.machine);
    for (k, v) in &spec.additional_tags {
        if !tags.iter().any(|(tk, _)| tk == k) {
            tags.push((k.clone(), v.clone()));
        }
    }
    let rv = &spec.root_volume;
    Ok(LaunchSpec {
        image_id: image.id.clone(),
        instance_type: spec.instance_type.clone(),
        subnet_id: subnet_id.to_string(),
        security_group_ids: security_groups,
        iam_instance_profile: spec.iam_instance_profile.clone(),
        key_name: spec.ssh_key_name.clone(),
        user_data: model::encode_user_data(payload)?,
        client_token: model::client_token(&ctx.machine_uid),
        tags,
        root_device_name: image.root_device_name.clone().unwrap_or_else(|| "/dev/sda1".into()),
        root_volume_gib: rv.size.unwrap_or(128) as i32,
        root_volume_type: match rv.r#type.unwrap_or(AwsVolumeType::Gp3) {
            AwsVolumeType::Gp2 => "gp2",
            AwsVolumeType::Gp3 => "gp3",
            AwsVolumeType::Io1 => "io1",
            AwsVolumeType::Io2 => "io2",
        }
        .into(),
        root_volume_encrypted: rv.encrypted.unwrap_or(true),
        root_volume_kms_key: rv.kms_key_id.clone(),
        http_tokens: match spec.instance_metadata_options.http_tokens {
            HttpTokens::Optional => "optional",
            HttpTokens::Required => "required",
        }
        .into(),
        hop_limit: i32::from(spec.instance_metadata_options.http_put_response_hop_limit.unwrap_or(1)),
    })
}

/// `RunInstances` attempts in one create; every one comes after a fresh tag look-up.
pub const RUN_ATTEMPTS: u32 = 8;

/// Whether a failed `RunInstances` is worth another attempt now: throttling, an EC2 server error,
/// or no answer at all (the instance may exist; the look-up before the next attempt finds it).
pub fn run_again(e: &Ec2Error) -> bool {
    e.throttled()
        || matches!(
            e.code.as_str(),
            "Transport" | "InternalError" | "InternalFailure" | "Unavailable" | "ServiceUnavailable"
        )
}

/// The wait before attempt `n` (1-based) after a failure: 250 ms doubling, at most 4 s.
pub fn run_backoff(n: u32) -> std::time::Duration {
    std::time::Duration::from_millis(250u64.saturating_mul(1 << n.saturating_sub(1).min(4)))
        .min(std::time::Duration::from_secs(4))
}

/// Returns this machine's instance, creating it only when no live one carries its tags. Every
/// `RunInstances` (which the SDK never retries by itself) has the tag look-up in front of it, so a
/// lost answer, a retry or a manager killed between `RunInstances` and recording the ID finds the
/// instance instead of launching a second one, on every endpoint, whether or not it honours
/// `ClientToken`.
pub async fn ensure_instance<E: Ec2>(
    ec2: &E,
    launch: &LaunchSpec,
    ownership: &[(String, String)],
) -> Result<(Instance, bool), LaunchError> {
    let mut attempt = 1;
    loop {
        let found = ec2.find_by_tags(ownership).await?;
        if let Some(i) = model::live_instance(&found) {
            return Ok((i.clone(), false));
        }
        match ec2.run(launch).await {
            Ok(i) => return Ok((i, true)),
            Err(e) if run_again(&e) && attempt < RUN_ATTEMPTS => {
                tokio::time::sleep(run_backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The ownership tags that identify a machine's instance (what [`ensure_instance`] looks up).
pub fn identity_tags(ctx: &MachineContext) -> Vec<(String, String)> {
    model::ownership_tags(&ctx.cluster, &ctx.namespace, &ctx.machine)
        .into_iter()
        .filter(|(k, _)| k.starts_with(model::TAG_PREFIX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// EC2 where the first `lost` RunInstances take effect but their answers are lost.
    #[derive(Default)]
    struct Lossy {
        lost: u32,
        instances: Mutex<Vec<Instance>>,
        runs: Mutex<u32>,
    }

    impl Ec2 for Lossy {
        async fn find_by_tags(&self, _: &[(String, String)]) -> Result<Vec<Instance>, Ec2Error> {
            Ok(self.instances.lock().unwrap().clone())
        }
        async fn describe(&self, _: &str) -> Result<Option<Instance>, Ec2Error> {
            Ok(None)
        }
        async fn run(&self, _: &LaunchSpec) -> Result<Instance, Ec2Error> {
            let mut runs = self.runs.lock().unwrap();
            *runs += 1;
            let i = Instance {
                id: format!("i-{runs}"),
                state: "pending".into(),
                availability_zone: "us-east-1a".into(),
                private_ip: None,
                private_dns: None,
                client_token: None,
                http_tokens: None,
            };
            self.instances.lock().unwrap().push(i.clone());
            if *runs <= self.lost {
                return Err(Ec2Error { operation: "RunInstances", code: "Transport".into(), message: "lost".into() });
            }
            Ok(i)
        }
        async fn terminate(&self, _: &str) -> Result<(), Ec2Error> {
            Ok(())
        }
        async fn find_images(&self, _: &str, _: &str) -> Result<Vec<Image>, Ec2Error> {
            Ok(vec![])
        }
        async fn image(&self, _: &str) -> Result<Option<Image>, Ec2Error> {
            Ok(None)
        }
        async fn subnets(&self, _: &[String], _: &[(String, Vec<String>)]) -> Result<Vec<(String, String)>, Ec2Error> {
            Ok(vec![])
        }
        async fn instance_type(&self, _: &str) -> Result<Option<(i32, i64)>, Ec2Error> {
            Ok(None)
        }
        async fn security_groups(&self, _: &[(String, Vec<String>)]) -> Result<Vec<String>, Ec2Error> {
            Ok(vec![])
        }
        async fn console_output(&self, _: &str) -> Result<Option<String>, Ec2Error> {
            Ok(None)
        }
        async fn require_imds_tokens(&self, _: &str) -> Result<(), Ec2Error> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_lost_answer_is_found_by_the_look_up_not_launched_again() {
        let ec2 = Lossy { lost: 1, ..Default::default() };
        let (i, created) = ensure_instance(&ec2, &LaunchSpec::default(), &[]).await.unwrap();
        assert_eq!((i.id.as_str(), created), ("i-1", false), "adopted, not launched twice");
        assert_eq!(*ec2.runs.lock().unwrap(), 1);
    }

    #[test]
    fn ami_answers_are_reused_for_a_while_per_credentials() {
        let cache = AmiCache::default();
        let t0 = std::time::Instant::now();
        let key = |who: &str| (who.to_string(), "self".to_string(), "capa-ami-windows-2019-?1.34.13-*".to_string());
        let img = Image { id: "ami-1".into(), name: "n".into(), creation_date: "d".into(), root_device_name: None };
        assert!(cache.get(&key(""), t0).is_none());
        cache.put(key(""), img.clone(), t0);
        assert_eq!(cache.get(&key(""), t0 + Duration::from_secs(299)), Some(img));
        assert!(cache.get(&key("team-a"), t0).is_none(), "another identity's `self` is another account");
        assert!(cache.get(&key(""), t0 + AMI_CACHE_TTL).is_none(), "stale after the TTL");
    }

    #[test]
    fn what_is_tried_again_and_how_soon() {
        let e = |code: &str| Ec2Error { operation: "RunInstances", code: code.into(), message: String::new() };
        assert!(run_again(&e("RequestLimitExceeded")) && run_again(&e("Transport")) && run_again(&e("InternalError")));
        assert!(!run_again(&e("InvalidAMIID.NotFound")) && !run_again(&e("UnauthorizedOperation")));
        assert_eq!(run_backoff(1), Duration::from_millis(250));
        assert_eq!(run_backoff(3), Duration::from_secs(1));
        assert_eq!(run_backoff(9), Duration::from_secs(4));
    }
}
