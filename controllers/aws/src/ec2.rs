//! The one seam to EC2: the calls the shim makes, behind a trait, and their `aws-sdk-ec2`
//! implementation. Retries: the SDK's standard mode retries `RequestLimitExceeded` and 5xx with
//! backoff for every call but `RunInstances`, which is tried again only by
//! [`crate::launch::ensure_instance`], after a look-up by the machine's tags (a retried
//! `RunInstances` whose first answer was lost would launch a second instance on endpoints that
//! ignore `ClientToken`); what is left comes back as an [`Ec2Error`] the reconciler requeues
//! with its own backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceType, ResourceType, Tag, TagSpecification,
    VolumeType,
};

use crate::metrics::Metrics;
use crate::model::{Image, Instance};

/// An EC2 failure, reduced to what decisions need. Never carries credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("EC2 {operation}: {code}: {message}")]
pub struct Ec2Error {
    pub operation: &'static str,
    /// EC2's error code, e.g. `InvalidAMIID.NotFound`, `RequestLimitExceeded`, or `Transport`.
    pub code: String,
    pub message: String,
}

impl Ec2Error {
    pub fn throttled(&self) -> bool {
        matches!(self.code.as_str(), "RequestLimitExceeded" | "Throttling" | "ThrottlingException")
    }
    pub fn not_found(&self) -> bool {
        self.code.ends_with(".NotFound")
    }
}

fn err<E: ProvideErrorMetadata + std::fmt::Debug>(operation: &'static str, e: E) -> Ec2Error {
    let code = e.code().unwrap_or("Transport").to_string();
    let message = e.message().map(String::from).unwrap_or_else(|| "no response from the EC2 endpoint".into());
    Ec2Error { operation, code, message }
}

/// Everything `RunInstances` is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaunchSpec {
    pub image_id: String,
    pub instance_type: String,
    pub subnet_id: String,
    pub security_group_ids: Vec<String>,
    pub iam_instance_profile: Option<String>,
    pub key_name: Option<String>,
    /// Base64 user data.
    pub user_data: String,
    pub client_token: String,
    pub tags: Vec<(String, String)>,
    pub root_device_name: String,
    pub root_volume_gib: i32,
    pub root_volume_type: String,
    pub root_volume_encrypted: bool,
    pub root_volume_kms_key: Option<String>,
    /// `optional` or `required`.
    pub http_tokens: String,
    pub hop_limit: i32,
}

/// The EC2 calls the shim makes.
pub trait Ec2: Send + Sync {
    /// Instances carrying every one of these tags (any state).
    fn find_by_tags(&self, tags: &[(String, String)]) -> impl Future<Output = Result<Vec<Instance>, Ec2Error>> + Send;
    fn describe(&self, id: &str) -> impl Future<Output = Result<Option<Instance>, Ec2Error>> + Send;
    fn run(&self, spec: &LaunchSpec) -> impl Future<Output = Result<Instance, Ec2Error>> + Send;
    fn terminate(&self, id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// Windows images of `owner` whose name matches `pattern` (`*`/`?` wildcards).
    fn find_images(&self, owner: &str, pattern: &str) -> impl Future<Output = Result<Vec<Image>, Ec2Error>> + Send;
    fn image(&self, id: &str) -> impl Future<Output = Result<Option<Image>, Ec2Error>> + Send;
    /// Subnets by ID or filters: (id, availability zone).
    fn subnets(
        &self,
        ids: &[String],
        filters: &[(String, Vec<String>)],
    ) -> impl Future<Output = Result<Vec<(String, String)>, Ec2Error>> + Send;
    /// vCPUs and memory (MiB) of an instance type, `None` when EC2 does not know the type.
    fn instance_type(&self, name: &str) -> impl Future<Output = Result<Option<(i32, i64)>, Ec2Error>> + Send;
    /// Security group IDs matching filters (e.g. `group-name`, `vpc-id`, `tag:…`).
    fn security_groups(
        &self,
        filters: &[(String, Vec<String>)],
    ) -> impl Future<Output = Result<Vec<String>, Ec2Error>> + Send;
    /// The serial console text (decoded), if any.
    fn console_output(&self, id: &str) -> impl Future<Output = Result<Option<String>, Ec2Error>> + Send;
    /// Sets the instance's metadata service to `httpTokens: required` (IMDSv2 only), leaving
    /// the other options as they are.
    fn require_imds_tokens(&self, id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// The instances among `ids` that exist (any state), in one read where the endpoint allows.
    fn describe_ids(&self, ids: &[String]) -> impl Future<Output = Result<Vec<Instance>, Ec2Error>> + Send {
        async move {
            let mut out = Vec::new();
            for id in ids {
                out.extend(self.describe(id).await?);
            }
            Ok(out)
        }
    }
    /// Instances carrying every `fixed` tag and tag `key` with one of `values`, each with the
    /// value it carries, in one read where the endpoint allows.
    fn find_by_tag_values(
        &self,
        fixed: &[(String, String)],
        key: &str,
        values: &[String],
    ) -> impl Future<Output = Result<Vec<(String, Instance)>, Ec2Error>> + Send {
        async move {
            let mut out = Vec::new();
            for v in values {
                let mut tags = fixed.to_vec();
                tags.push((key.to_string(), v.clone()));
                out.extend(self.find_by_tags(&tags).await?.into_iter().map(|i| (v.clone(), i)));
            }
            Ok(out)
        }
    }
}

/// EC2 allows at most 200 values per filter.
const FILTER_VALUES: usize = 200;

/// The `aws-sdk-ec2` implementation.
#[derive(Clone)]
pub struct SdkEc2 {
    client: aws_sdk_ec2::Client,
}

/// Static credentials (from a per-cluster identity Secret). `Debug` hides the secret.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticCredentials({}, <redacted>)", self.access_key_id)
    }
}

impl SdkEc2 {
    /// Sets `httpTokens: optional` (IMDSv1 allowed). Not used by the controller: for tests and
    /// for an operator undoing the lock-down by hand (which the controller reverts unless the
    /// machine opts out).
    pub async fn allow_imds_v1(&self, id: &str) -> Result<(), Ec2Error> {
        self.client
            .modify_instance_metadata_options()
            .instance_id(id)
            .http_tokens(HttpTokensState::Optional)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| err("ModifyInstanceMetadataOptions", e))
    }

    /// The default credential chain (environment, profile, IRSA/web identity, instance role) or
    /// static credentials; `AWS_ENDPOINT_URL` (or `endpoint`) points it at another endpoint.
    pub async fn new(region: &str, endpoint: Option<&str>, credentials: Option<StaticCredentials>) -> Self {
        let provider = credentials.map(|c| {
            aws_credential_types::provider::SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
                c.access_key_id,
                c.secret_access_key,
                c.session_token,
                None,
                "capwin-identity",
            ))
        });
        Self::with_provider(region, endpoint, provider).await
    }

    /// Like [`SdkEc2::new`] with any credentials provider (`None`: the default chain), e.g. an
    /// assumed role's ([`crate::identity`]).
    pub async fn with_provider(
        region: &str,
        endpoint: Option<&str>,
        provider: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    ) -> Self {
        let mut loader = sdk_loader(region, endpoint);
        if let Some(p) = provider {
            loader = loader.credentials_provider(p);
        }
        Self { client: aws_sdk_ec2::Client::new(&loader.load().await) }
    }
}

/// The SDK configuration every capwin AWS client shares: region, standard retries, generous
/// timeouts, credentials cached until 5 minutes before they expire (so assumed-role
/// credentials are renewed ahead of time), and the endpoint (`endpoint`, else
/// `AWS_ENDPOINT_URL`).
pub fn sdk_loader(region: &str, endpoint: Option<&str>) -> aws_config::ConfigLoader {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
        // Generous connect and per-attempt limits: a loaded endpoint is slow, not gone.
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .operation_attempt_timeout(std::time::Duration::from_secs(60))
                .build(),
        )
        .identity_cache(
            aws_config::identity::IdentityCache::lazy().buffer_time(std::time::Duration::from_secs(300)).build(),
        );
    // The standard override, read explicitly so it works whatever the SDK's config sources.
    let from_env = std::env::var("AWS_ENDPOINT_URL").ok().filter(|e| !e.is_empty());
    if let Some(e) = endpoint.map(String::from).or(from_env) {
        loader = loader.endpoint_url(e);
    }
    loader
}

fn instance(i: &aws_sdk_ec2::types::Instance) -> Instance {
    Instance {
        id: i.instance_id().unwrap_or_default().to_string(),
        state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
        availability_zone: i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_string(),
        private_ip: i.private_ip_address().map(String::from),
        private_dns: i.private_dns_name().filter(|d| !d.is_empty()).map(String::from),
        client_token: i.client_token().filter(|t| !t.is_empty()).map(String::from),
        http_tokens: i.metadata_options().and_then(|m| m.http_tokens()).map(|t| t.as_str().to_string()),
    }
}

fn image(i: &aws_sdk_ec2::types::Image) -> Image {
    Image {
        id: i.image_id().unwrap_or_default().to_string(),
        name: i.name().unwrap_or_default().to_string(),
        creation_date: i.creation_date().unwrap_or_default().to_string(),
        root_device_name: i.root_device_name().map(String::from),
    }
}

impl Ec2 for SdkEc2 {
    async fn find_by_tags(&self, tags: &[(String, String)]) -> Result<Vec<Instance>, Ec2Error> {
        let mut req = self.client.describe_instances();
        for (k, v) in tags {
            req = req.filters(Filter::builder().name(format!("tag:{k}")).values(v).build());
        }
        let out = req.send().await.map_err(|e| err("DescribeInstances", e))?;
        Ok(out.reservations().iter().flat_map(|r| r.instances()).map(instance).collect())
    }

    async fn describe_ids(&self, ids: &[String]) -> Result<Vec<Instance>, Ec2Error> {
        let mut out = Vec::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let filter = Filter::builder().name("instance-id").set_values(Some(chunk.to_vec())).build();
            let mut pages = self.client.describe_instances().filters(filter).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| err("DescribeInstances", e))?;
                out.extend(page.reservations().iter().flat_map(|r| r.instances()).map(instance));
            }
        }
        Ok(out)
    }

    async fn find_by_tag_values(
        &self,
        fixed: &[(String, String)],
        key: &str,
        values: &[String],
    ) -> Result<Vec<(String, Instance)>, Ec2Error> {
        let mut out = Vec::new();
        for chunk in values.chunks(FILTER_VALUES) {
            let mut req = self.client.describe_instances();
            for (k, v) in fixed {
                req = req.filters(Filter::builder().name(format!("tag:{k}")).values(v).build());
            }
            req = req.filters(Filter::builder().name(format!("tag:{key}")).set_values(Some(chunk.to_vec())).build());
            let mut pages = req.into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| err("DescribeInstances", e))?;
                for i in page.reservations().iter().flat_map(|r| r.instances()) {
                    let value = i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
                    if let Some(v) = value {
                        out.push((v.to_string(), instance(i)));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn describe(&self, id: &str) -> Result<Option<Instance>, Ec2Error> {
        match self.client.describe_instances().instance_ids(id).send().await {
            Ok(out) => Ok(out.reservations().iter().flat_map(|r| r.instances()).map(instance).next()),
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(None),
            Err(e) => Err(err("DescribeInstances", e)),
        }
    }

    async fn run(&self, s: &LaunchSpec) -> Result<Instance, Ec2Error> {
        let tags: Vec<Tag> = s.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        let mut req = self
            .client
            .run_instances()
            .image_id(&s.image_id)
            .instance_type(InstanceType::from(s.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .subnet_id(&s.subnet_id)
            .user_data(&s.user_data)
            .client_token(&s.client_token)
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_tokens(HttpTokensState::from(s.http_tokens.as_str()))
                    .http_put_response_hop_limit(s.hop_limit)
                    .build(),
            )
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(&s.root_device_name)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(s.root_volume_gib)
                            .volume_type(VolumeType::from(s.root_volume_type.as_str()))
                            .encrypted(s.root_volume_encrypted)
                            .set_kms_key_id(s.root_volume_kms_key.clone())
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags.clone())).build(),
            )
            .tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(tags)).build(),
            );
        for sg in &s.security_group_ids {
            req = req.security_group_ids(sg);
        }
        if let Some(p) = &s.iam_instance_profile {
            req = req.iam_instance_profile(IamInstanceProfileSpecification::builder().name(p).build());
        }
        if let Some(k) = &s.key_name {
            req = req.key_name(k);
        }
        // No SDK-level retry of RunInstances: a retry after a lost answer would launch a second
        // instance on every endpoint that ignores ClientToken (moto and other EC2-compatible
        // ones). The caller looks the machine's instance up by its tags before every attempt, so
        // a lost answer costs one reconcile, never an instance.
        let once =
            aws_sdk_ec2::config::Builder::default().retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled());
        let out = req.customize().config_override(once).send().await.map_err(|e| err("RunInstances", e))?;
        out.instances().first().map(instance).ok_or_else(|| Ec2Error {
            operation: "RunInstances",
            code: "EmptyResponse".into(),
            message: "RunInstances returned no instance".into(),
        })
    }

    async fn terminate(&self, id: &str) -> Result<(), Ec2Error> {
        match self.client.terminate_instances().instance_ids(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(e) => Err(err("TerminateInstances", e)),
        }
    }

    async fn find_images(&self, owner: &str, pattern: &str) -> Result<Vec<Image>, Ec2Error> {
        let out = self
            .client
            .describe_images()
            .owners(owner)
            .filters(Filter::builder().name("name").values(pattern).build())
            .filters(Filter::builder().name("platform").values("windows").build())
            .filters(Filter::builder().name("state").values("available").build())
            .send()
            .await
            .map_err(|e| err("DescribeImages", e))?;
        Ok(out.images().iter().map(image).collect())
    }

    async fn image(&self, id: &str) -> Result<Option<Image>, Ec2Error> {
        match self.client.describe_images().image_ids(id).send().await {
            Ok(out) => Ok(out.images().first().map(image)),
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) => Ok(None),
            Err(e) => Err(err("DescribeImages", e)),
        }
    }

    async fn subnets(
        &self,
        ids: &[String],
        filters: &[(String, Vec<String>)],
    ) -> Result<Vec<(String, String)>, Ec2Error> {
        let mut req = self.client.describe_subnets().set_subnet_ids((!ids.is_empty()).then(|| ids.to_vec()));
        for (name, values) in filters {
            req = req.filters(Filter::builder().name(name).set_values(Some(values.clone())).build());
        }
        match req.send().await {
            Ok(out) => Ok(out
                .subnets()
                .iter()
                .map(|s| {
                    (
                        s.subnet_id().unwrap_or_default().to_string(),
                        s.availability_zone().unwrap_or_default().to_string(),
                    )
                })
                .collect()),
            Err(e) if e.code() == Some("InvalidSubnetID.NotFound") => Ok(vec![]),
            Err(e) => Err(err("DescribeSubnets", e)),
        }
    }

    async fn instance_type(&self, name: &str) -> Result<Option<(i32, i64)>, Ec2Error> {
        match self.client.describe_instance_types().instance_types(InstanceType::from(name)).send().await {
            Ok(out) => Ok(out.instance_types().first().map(|t| {
                (
                    t.v_cpu_info().and_then(|v| v.default_v_cpus()).unwrap_or(0),
                    t.memory_info().and_then(|m| m.size_in_mib()).unwrap_or(0),
                )
            })),
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidInstanceType")) => Ok(None),
            Err(e) => Err(err("DescribeInstanceTypes", e)),
        }
    }

    async fn security_groups(&self, filters: &[(String, Vec<String>)]) -> Result<Vec<String>, Ec2Error> {
        let mut req = self.client.describe_security_groups();
        for (name, values) in filters {
            req = req.filters(Filter::builder().name(name).set_values(Some(values.clone())).build());
        }
        let out = req.send().await.map_err(|e| err("DescribeSecurityGroups", e))?;
        Ok(out.security_groups().iter().filter_map(|g| g.group_id().map(String::from)).collect())
    }

    async fn console_output(&self, id: &str) -> Result<Option<String>, Ec2Error> {
        let out =
            self.client.get_console_output().instance_id(id).send().await.map_err(|e| err("GetConsoleOutput", e))?;
        Ok(out.output().map(decode_console))
    }

    async fn require_imds_tokens(&self, id: &str) -> Result<(), Ec2Error> {
        self.client
            .modify_instance_metadata_options()
            .instance_id(id)
            .http_tokens(HttpTokensState::Required)
            .http_endpoint(InstanceMetadataEndpointState::Enabled)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| err("ModifyInstanceMetadataOptions", e))
    }
}

/// `GetConsoleOutput`'s `Output` is base64 of the console bytes (not necessarily UTF-8, maybe
/// wrapped): line breaks inside the base64 are skipped, bad bytes become U+FFFD, and text that is
/// not base64 at all reads as no output rather than an error (diagnostics are best effort).
pub fn decode_console(b64: &str) -> String {
    use base64::Engine;
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(compact).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Counts calls per operation: the EC2 call budget per machine lifecycle is measured with it.
/// Each client keeps its own counts ([`Counting::snapshot`]); with [`Counting::with_metrics`] the
/// calls also go to the controller's Prometheus counters, shared by every client (the manager's
/// own and one per identity Secret).
pub struct Counting<E> {
    pub inner: E,
    pub counts: Arc<[AtomicU64; OPERATIONS.len()]>,
    metrics: Option<Arc<Metrics>>,
}

/// Seam calls in [`Counting::counts`] order, as (name, EC2 API operation).
pub const OPERATIONS: [(&str, &str); 11] = [
    ("DescribeInstances(tags)", "DescribeInstances"),
    ("DescribeInstances(id)", "DescribeInstances"),
    ("RunInstances", "RunInstances"),
    ("TerminateInstances", "TerminateInstances"),
    ("DescribeImages(lookup)", "DescribeImages"),
    ("DescribeImages(id)", "DescribeImages"),
    ("DescribeSubnets", "DescribeSubnets"),
    ("GetConsoleOutput", "GetConsoleOutput"),
    ("DescribeSecurityGroups", "DescribeSecurityGroups"),
    ("DescribeInstanceTypes", "DescribeInstanceTypes"),
    ("ModifyInstanceMetadataOptions", "ModifyInstanceMetadataOptions"),
];

impl<E: Ec2> Counting<E> {
    pub fn new(inner: E) -> Self {
        Self { inner, counts: Arc::new(Default::default()), metrics: None }
    }
    pub fn with_metrics(inner: E, metrics: Arc<Metrics>) -> Self {
        Self { metrics: Some(metrics), ..Self::new(inner) }
    }
    fn hit<T>(&self, i: usize, r: Result<T, Ec2Error>) -> Result<T, Ec2Error> {
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            let result = match &r {
                Ok(_) => "ok",
                Err(e) if e.throttled() => "throttled",
                Err(_) => "error",
            };
            m.call(OPERATIONS[i].1, result);
        }
        r
    }
    /// `(call, count)` for every call made at least once.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        OPERATIONS
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (*n, self.counts[i].load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }
}

impl<E: Ec2> Ec2 for Counting<E> {
    async fn find_by_tags(&self, tags: &[(String, String)]) -> Result<Vec<Instance>, Ec2Error> {
        self.hit(0, self.inner.find_by_tags(tags).await)
    }
    async fn describe(&self, id: &str) -> Result<Option<Instance>, Ec2Error> {
        self.hit(1, self.inner.describe(id).await)
    }
    async fn run(&self, spec: &LaunchSpec) -> Result<Instance, Ec2Error> {
        self.hit(2, self.inner.run(spec).await)
    }
    async fn terminate(&self, id: &str) -> Result<(), Ec2Error> {
        self.hit(3, self.inner.terminate(id).await)
    }
    async fn find_images(&self, owner: &str, pattern: &str) -> Result<Vec<Image>, Ec2Error> {
        self.hit(4, self.inner.find_images(owner, pattern).await)
    }
    async fn image(&self, id: &str) -> Result<Option<Image>, Ec2Error> {
        self.hit(5, self.inner.image(id).await)
    }
    async fn subnets(
        &self,
        ids: &[String],
        filters: &[(String, Vec<String>)],
    ) -> Result<Vec<(String, String)>, Ec2Error> {
        self.hit(6, self.inner.subnets(ids, filters).await)
    }
    async fn console_output(&self, id: &str) -> Result<Option<String>, Ec2Error> {
        self.hit(7, self.inner.console_output(id).await)
    }
    async fn security_groups(&self, filters: &[(String, Vec<String>)]) -> Result<Vec<String>, Ec2Error> {
        self.hit(8, self.inner.security_groups(filters).await)
    }
    async fn instance_type(&self, name: &str) -> Result<Option<(i32, i64)>, Ec2Error> {
        self.hit(9, self.inner.instance_type(name).await)
    }
    async fn require_imds_tokens(&self, id: &str) -> Result<(), Ec2Error> {
        self.hit(10, self.inner.require_imds_tokens(id).await)
    }
    async fn describe_ids(&self, ids: &[String]) -> Result<Vec<Instance>, Ec2Error> {
        self.hit(1, self.inner.describe_ids(ids).await)
    }
    async fn find_by_tag_values(
        &self,
        fixed: &[(String, String)],
        key: &str,
        values: &[String],
    ) -> Result<Vec<(String, Instance)>, Ec2Error> {
        self.hit(0, self.inner.find_by_tag_values(fixed, key, values).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_output_decoding() {
        use base64::Engine;
        let text = "line one\r\nCAPWIN-BOOTSTRAP {\"step\":\"join\"}\r\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(text);
        assert_eq!(decode_console(&b64), text);
        // Wrapped base64 (as some tools print it) and surrounding whitespace.
        let wrapped: String =
            b64.as_bytes().chunks(10).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n");
        assert_eq!(decode_console(&format!("  {wrapped}\n")), text);
        // Invalid UTF-8 survives as replacement characters; garbage is no output.
        let bytes = base64::engine::general_purpose::STANDARD.encode([b'o', b'k', 0xff, b'!']);
        assert_eq!(decode_console(&bytes), "ok\u{fffd}!");
        assert_eq!(decode_console("not base64 at all!"), "");
    }

    struct Fixed;
    impl Ec2 for Fixed {
        async fn find_by_tags(&self, _: &[(String, String)]) -> Result<Vec<Instance>, Ec2Error> {
            Err(Ec2Error { operation: "DescribeInstances", code: "RequestLimitExceeded".into(), message: "".into() })
        }
        async fn describe(&self, _: &str) -> Result<Option<Instance>, Ec2Error> {
            Ok(None)
        }
        async fn run(&self, _: &LaunchSpec) -> Result<Instance, Ec2Error> {
            Err(Ec2Error { operation: "RunInstances", code: "InternalError".into(), message: "".into() })
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
    async fn counting_counts_every_call_under_its_operation() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::metrics::register(&mut registry);
        let c = Counting::with_metrics(Fixed, metrics);
        let _ = c.find_by_tags(&[]).await;
        let _ = c.describe("i-1").await;
        let _ = c.describe("i-1").await;
        let _ = c.run(&LaunchSpec::default()).await;
        let _ = c.terminate("i-1").await;
        let _ = c.find_images("o", "p").await;
        let _ = c.image("ami-1").await;
        let _ = c.subnets(&[], &[]).await;
        let _ = c.console_output("i-1").await;
        let _ = c.security_groups(&[]).await;
        let _ = c.instance_type("m6i.xlarge").await;
        let _ = c.require_imds_tokens("i-1").await;
        let snap = c.snapshot();
        assert_eq!(snap.len(), OPERATIONS.len(), "every seam call has its own slot: {snap:?}");
        assert_eq!(snap.iter().find(|(n, _)| *n == "DescribeInstances(id)").unwrap().1, 2);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        let line =
            |op: &str, result: &str| format!("capwin_aws_ec2_calls_total{{operation=\"{op}\",result=\"{result}\"}}");
        assert!(out.contains(&format!("{} 2", line("DescribeInstances", "ok"))), "{out}");
        assert!(out.contains(&format!("{} 1", line("DescribeInstances", "throttled"))), "{out}");
        assert!(out.contains(&format!("{} 1", line("RunInstances", "error"))), "{out}");
        assert!(out.contains(&format!("{} 2", line("DescribeImages", "ok"))), "{out}");
        for op in [
            "DescribeSecurityGroups",
            "DescribeInstanceTypes",
            "GetConsoleOutput",
            "TerminateInstances",
            "DescribeSubnets",
            "ModifyInstanceMetadataOptions",
        ] {
            assert!(out.contains(&format!("{} 1", line(op, "ok"))), "{op}: {out}");
        }
    }
}
