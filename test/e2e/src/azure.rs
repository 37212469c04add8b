//! The fake ARM server in a scenario: how the manager is pointed at it, and its control API.

use anyhow::Context as _;
use serde_json::Value;

use crate::{Env, repo};

/// The seed's subscription and resource group (`test/kit/azure/seed.json`).
pub const SUBSCRIPTION: &str = "11111111-2222-3333-4444-555555555555";
pub const RESOURCE_GROUP: &str = "capwin-e2e";
/// The manager's service-principal secret in every Azure scenario; no log, event or condition
/// may ever contain it.
pub const CLIENT_SECRET: &str = "e2e-sp-secret-Zq8v2LkT";

impl Env {
    /// Hands the manager the fake ARM: endpoint, Entra ID authority, CA, and a service principal
    /// in the environment (the fake's token endpoint accepts any client).
    pub(crate) fn configure_azure(&mut self, url: &str) -> anyhow::Result<()> {
        let ca = self.kit_script(&repo().join("test/kit/azure/arm.sh"), "ca")?;
        self.manager_args.extend(
            ["--azure-arm-endpoint", url, "--azure-authority-host", url, "--azure-ca-bundle", ca.as_str()]
                .map(String::from),
        );
        for (k, v) in [
            ("AZURE_TENANT_ID", "72f988bf-0000-0000-0000-000000000000"),
            ("AZURE_CLIENT_ID", "capwin-e2e"),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ] {
            self.manager_env.push((k.into(), v.into()));
        }
        self.arm_ca = Some(ca);
        Ok(())
    }

    /// Calls the fake ARM's control API (`/_capwin/...`, see `test/kit/azure/README.md`),
    /// trusting only the kit's CA: `arm("GET", "counts", None)`.
    pub fn arm(&self, method: &str, call: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let base = self.kit_url(crate::CloudKit::Azure).context("no fake ARM started (CloudKit::Azure)")?;
        let ca = self.arm_ca.as_deref().context("no CA")?;
        crate::control_call(&format!("{base}/_capwin/{call}"), method, body, Some(ca))
    }

    /// The resources of a type in the seed's resource group, as ARM renders them
    /// (`Microsoft.Compute/virtualMachines`, `Microsoft.Network/networkInterfaces`,
    /// `Microsoft.Compute/disks`).
    pub fn arm_resources(&self, provider_type: &str) -> anyhow::Result<Vec<Value>> {
        let state = self.arm("GET", "state", None)?;
        let want = provider_type.to_ascii_lowercase();
        let mut out = Vec::new();
        collect(&state, &want, &mut out);
        Ok(out)
    }
}

/// Every object in `v` whose `type` is `provider_type` (case-insensitive) and that has an `id`.
fn collect(v: &Value, provider_type: &str, out: &mut Vec<Value>) {
    match v {
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str).is_some_and(|t| t.to_ascii_lowercase() == provider_type)
                && o.get("id").is_some()
            {
                out.push(v.clone());
                return;
            }
            o.values().for_each(|x| collect(x, provider_type, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, provider_type, out)),
        _ => {}
    }
}
