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

/// The AMI to launch.
pub async fn resolve_ami<E: Ec2>(
    ec2: &E,
    spec: &AWSWindowsMachineSpec,
    ctx: &MachineContext,
) -> Result<Image, LaunchError> {
    if let Some(id) = &spec.ami.id {
        return ec2.image(id).await?.ok_or_else(|| LaunchError::UnknownAmi(id.clone()));
    }
    let (owner, pattern) = match &spec.ami.lookup {
        Some(l) => (l.owner.clone(), l.name_pattern.clone()),
        None => (model::DEFAULT_AMI_OWNER.to_string(), model::DEFAULT_AMI_NAME_PATTERN.to_string()),
    };
    let pattern = model::ami_name_pattern(&pattern, &ctx.windows_year, &ctx.kubernetes_version);
    let found = ec2.find_images(&owner, &pattern).await?;
    model::newest(found).ok_or(LaunchError::NoAmiMatch { owner, pattern })
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

/// Returns this machine's instance, creating it only when no live one carries its tags. A
/// manager killed between `RunInstances` and recording the ID finds the instance by its tags
/// on the next pass, so one machine never gets two instances.
pub async fn ensure_instance<E: Ec2>(
    ec2: &E,
    launch: &LaunchSpec,
    ownership: &[(String, String)],
) -> Result<(Instance, bool), LaunchError> {
    let found = ec2.find_by_tags(ownership).await?;
    if let Some(i) = model::live_instance(&found) {
        return Ok((i.clone(), false));
    }
    Ok((ec2.run(launch).await?, true))
}

/// The ownership tags that identify a machine's instance (what [`ensure_instance`] looks up).
pub fn identity_tags(ctx: &MachineContext) -> Vec<(String, String)> {
    model::ownership_tags(&ctx.cluster, &ctx.namespace, &ctx.machine)
        .into_iter()
        .filter(|(k, _)| k.starts_with(model::TAG_PREFIX))
        .collect()
}
