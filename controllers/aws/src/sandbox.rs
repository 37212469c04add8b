//! What `capwin sandbox` needs from a local EC2 endpoint (moto) before capwin's AWS machines can
//! launch: the network CAPA's `AWSCluster` controller would have made (a VPC, a private and a
//! public subnet, the node security group), the IAM instance profiles
//! `clusterawsadm bootstrap iam` would have made, and the SSH key pair a user would have
//! imported. Lives here because this is the one crate that links the AWS SDK.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A subnet as CAPA lists it in `AWSCluster.spec.network.subnets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// `subnet-…`
    pub id: String,
    pub availability_zone: String,
    pub cidr_block: String,
    pub is_public: bool,
}

/// What was made, for the `AWSCluster`'s spec and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub vpc_id: String,
    pub vpc_cidr: String,
    pub subnets: Vec<Subnet>,
    /// `(id, name)` of the node security group (CAPA: `<cluster>-node`).
    pub node_security_group: (String, String),
}

/// A failed seeding call.
#[derive(Debug, thiserror::Error)]
#[error("seeding {what}: {message}")]
pub struct SeedError {
    pub what: &'static str,
    pub message: String,
}

fn seed_err<E: ProvideErrorMetadata>(what: &'static str, e: E) -> SeedError {
    SeedError {
        what,
        message: format!(
            "{}: {}",
            e.code().unwrap_or("Transport"),
            e.message().unwrap_or("no answer from the endpoint")
        ),
    }
}

/// The VPC layout, CAPA's defaults for one availability zone: the VPC `10.0.0.0/16`, a private
/// subnet for the machines and a public one for the load balancer and NAT gateway.
pub const VPC_CIDR: &str = "10.0.0.0/16";
const PRIVATE_CIDR: &str = "10.0.0.0/19";
const PUBLIC_CIDR: &str = "10.0.32.0/20";

/// CAPA's ownership tags, so the resources read like CAPA's in `DescribeVpcs` and friends.
pub fn capa_tags(cluster: &str, name: &str, role: &str) -> Vec<(String, String)> {
    vec![
        ("Name".into(), name.into()),
        (format!("sigs.k8s.io/cluster-api-provider-aws/cluster/{cluster}"), "owned".into()),
        ("sigs.k8s.io/cluster-api-provider-aws/role".into(), role.into()),
    ]
}

fn tagged(kind: ResourceType, tags: Vec<(String, String)>) -> TagSpecification {
    let tags = tags.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
    TagSpecification::builder().resource_type(kind).set_tags(Some(tags)).build()
}

/// An SDK client for a local endpoint with fixed test credentials (moto checks no signatures),
/// independent of whatever AWS credentials the user's environment holds.
pub async fn local_client(endpoint: &str, region: &str) -> aws_sdk_ec2::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::new("testing", "testing", None, None, "sandbox"))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&config)
}

/// Creates the VPC, subnets and node security group of `cluster` in availability zone `az`.
pub async fn seed_network(endpoint: &str, region: &str, cluster: &str, az: &str) -> Result<Network, SeedError> {
    let ec2 = local_client(endpoint, region).await;
    let vpc = ec2
        .create_vpc()
        .cidr_block(VPC_CIDR)
        .tag_specifications(tagged(ResourceType::Vpc, capa_tags(cluster, &format!("{cluster}-vpc"), "common")))
        .send()
        .await
        .map_err(|e| seed_err("VPC", e))?;
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).unwrap_or_default().to_string();
    let mut subnets = Vec::new();
    for (cidr, is_public) in [(PRIVATE_CIDR, false), (PUBLIC_CIDR, true)] {
        let role = if is_public { "public" } else { "private" };
        let name = format!("{cluster}-subnet-{role}-{az}");
        let out = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(cidr)
            .availability_zone(az)
            .tag_specifications(tagged(ResourceType::Subnet, capa_tags(cluster, &name, role)))
            .send()
            .await
            .map_err(|e| seed_err("subnet", e))?;
        let id = out.subnet().and_then(|s| s.subnet_id()).unwrap_or_default().to_string();
        subnets.push(Subnet { id, availability_zone: az.into(), cidr_block: cidr.into(), is_public });
    }
    let sg_name = format!("{cluster}-node");
    let sg = ec2
        .create_security_group()
        .group_name(&sg_name)
        .description("Kubernetes cluster nodes (capwin sandbox)")
        .vpc_id(&vpc_id)
        .tag_specifications(tagged(ResourceType::SecurityGroup, capa_tags(cluster, &sg_name, "node")))
        .send()
        .await
        .map_err(|e| seed_err("security group", e))?;
    let sg_id = sg.group_id().unwrap_or_default().to_string();
    Ok(Network { vpc_id, vpc_cidr: VPC_CIDR.into(), subnets, node_security_group: (sg_id, sg_name) })
}

/// Creates an SSH key pair (EC2 `CreateKeyPair`), as a user would have before using the template.
pub async fn seed_key_pair(endpoint: &str, region: &str, name: &str) -> Result<(), SeedError> {
    let ec2 = local_client(endpoint, region).await;
    match ec2.create_key_pair().key_name(name).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("InvalidKeyPair.Duplicate") => Ok(()),
        Err(e) => Err(seed_err("key pair", e)),
    }
}

/// The IAM `CreateInstanceProfile` request body (Query API).
pub fn instance_profile_request(name: &str) -> String {
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("Action=CreateInstanceProfile&InstanceProfileName={encoded}&Version=2010-05-08")
}

/// Creates an IAM instance profile on a local endpoint. moto refuses `RunInstances` naming a
/// profile its IAM does not know, and this crate links no IAM SDK (it would cost minutes of
/// build for one call), so this is one plain HTTP POST: moto routes it to IAM by the credential
/// scope and checks no signature.
pub async fn seed_instance_profile(endpoint: &str, region: &str, name: &str) -> Result<(), SeedError> {
    let err = |message: String| SeedError { what: "IAM instance profile", message };
    let authority = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| err(format!("{endpoint}: only a plain http:// local endpoint is seeded")))?
        .trim_end_matches('/');
    let body = instance_profile_request(name);
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/iam/aws4_request, SignedHeaders=host, Signature=00\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| err(e.to_string()))?;
    stream.write_all(request.as_bytes()).await.map_err(|e| err(e.to_string()))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.map_err(|e| err(e.to_string()))?;
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    if status == "200" || answer.contains("<Code>EntityAlreadyExists</Code>") {
        return Ok(());
    }
    Err(err(format!("HTTP {status}: {}", answer.lines().last().unwrap_or_default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_profile_names_are_form_encoded() {
        assert_eq!(
            instance_profile_request("nodes.cluster-api-provider-aws.sigs.k8s.io"),
            "Action=CreateInstanceProfile&InstanceProfileName=nodes.cluster-api-provider-aws.sigs.k8s.io&Version=2010-05-08"
        );
        assert!(instance_profile_request("a b&c").contains("InstanceProfileName=a%20b%26c&"));
    }

    #[test]
    fn tags_read_like_capa_ones() {
        let t = capa_tags("demo", "demo-node", "node");
        assert!(t.contains(&("sigs.k8s.io/cluster-api-provider-aws/cluster/demo".into(), "owned".into())));
        assert_eq!(t[0], ("Name".into(), "demo-node".into()));
    }
}
