//! Batched instance reads: the machines of one EC2 client that look at their instances at about
//! the same time share one `DescribeInstances` (CAPA reads one instance per machine per
//! reconcile; with a thousand machines that is a thousand calls per pass).
//!
//! [`Batched`] wraps an [`Ec2`] and coalesces, for a short window, the calls that only differ in
//! which machine they ask about:
//! - `find_by_tags` with capwin's ownership tags (the look-up before `RunInstances` and the
//!   duplicate sweep): one call with the machine tag's values listed (`tag:…/machine`);
//! - `describe(id)`: one call with the `instance-id` filter listing every id (a filter, not
//!   `InstanceIds`: an unknown id in `InstanceIds` fails the whole call).
//!
//! Idempotency stays as strong as before: each caller gets exactly what its own call would have
//! returned (the same filters, narrowed to its machine), from a read made after its request.
//! Every other call passes through.
//!
//! Every call, batched or not, also goes through one [`EndpointGate`]: when EC2 throttles or
//! does not answer, the machines of this client wait together and go on together.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use capwin_infra::EndpointGate;

use crate::ec2::{Ec2, Ec2Error, LaunchSpec};
use crate::model::{Image, Instance, TAG_PREFIX};

/// A batched read's answer: each instance with the key it was asked for.
type Answer = Arc<Result<Vec<(String, Instance)>, Ec2Error>>;

/// One window's callers of one query shape.
struct Pending {
    keys: BTreeSet<String>,
    done: watch::Sender<Option<Answer>>,
}

/// Coalesces calls of the same shape (`group`) that differ in one key.
#[derive(Default)]
struct Coalescer(Mutex<HashMap<String, Pending>>);

impl Coalescer {
    /// The instances for `key`: the first caller of a window waits `window`, makes one call with
    /// every key that joined meanwhile, and hands each its share.
    async fn get<F, Fut>(
        &self,
        window: Duration,
        group: String,
        key: String,
        query: F,
    ) -> Result<Vec<Instance>, Ec2Error>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<Vec<(String, Instance)>, Ec2Error>>,
    {
        let follower = {
            let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match pending.get_mut(&group) {
                Some(p) => {
                    p.keys.insert(key.clone());
                    Some(p.done.subscribe())
                }
                None => {
                    let (done, _) = watch::channel(None);
                    pending.insert(group.clone(), Pending { keys: BTreeSet::from([key.clone()]), done });
                    None
                }
            }
        };
        let result = match follower {
            Some(mut rx) => {
                // A leader that went away (its reconcile cancelled) must not strand its
                // followers: after a generous wait, ask alone.
                let shared = {
                    let waited =
                        tokio::time::timeout(window + Duration::from_secs(30), rx.wait_for(Option::is_some)).await;
                    match waited {
                        Ok(Ok(v)) => v.clone(),
                        _ => None,
                    }
                };
                match shared {
                    Some(r) => r,
                    None => Arc::new(query(vec![key.clone()]).await),
                }
            }
            None => {
                tokio::time::sleep(window).await;
                let p = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&group);
                let keys: Vec<String> =
                    p.as_ref().map(|p| p.keys.iter().cloned().collect()).unwrap_or_else(|| vec![key.clone()]);
                let result = Arc::new(query(keys).await);
                if let Some(p) = p {
                    let _ = p.done.send(Some(result.clone()));
                }
                result
            }
        };
        match result.as_ref() {
            Ok(all) => Ok(all.iter().filter(|(k, _)| *k == key).map(|(_, i)| i.clone()).collect()),
            Err(e) => Err(e.clone()),
        }
    }
}

/// The machine tag of capwin's ownership tags (`…/machine` = `<namespace>.<machine>`).
pub fn machine_tag_key() -> String {
    format!("{TAG_PREFIX}/machine")
}

/// An [`Ec2`] whose per-machine instance reads are batched.
pub struct Batched<E> {
    inner: E,
    window: Duration,
    by_tags: Coalescer,
    by_id: Coalescer,
    gate: EndpointGate,
}

impl<E: Ec2> Batched<E> {
    /// Callers within `window` of the first share one call.
    pub fn new(inner: E, window: Duration) -> Self {
        Self {
            inner,
            window,
            by_tags: Coalescer::default(),
            by_id: Coalescer::default(),
            gate: EndpointGate::default(),
        }
    }

    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// `call` once the gate is open; its outcome opens or closes the gate.
    async fn gated<T>(&self, call: impl Future<Output = Result<T, Ec2Error>>) -> Result<T, Ec2Error> {
        self.gate.wait().await;
        let r = call.await;
        match &r {
            Err(e) if e.throttled() || e.code == "Transport" => self.gate.trouble(None),
            _ => self.gate.answered(),
        }
        r
    }
}

impl<E: Ec2> Ec2 for Batched<E> {
    async fn find_by_tags(&self, tags: &[(String, String)]) -> Result<Vec<Instance>, Ec2Error> {
        let key = machine_tag_key();
        let Some((_, machine)) = tags.iter().find(|(k, _)| *k == key) else {
            return self.gated(self.inner.find_by_tags(tags)).await;
        };
        let mut fixed: Vec<(String, String)> = tags.iter().filter(|(k, _)| *k != key).cloned().collect();
        fixed.sort();
        let group = format!("{fixed:?}");
        self.by_tags
            .get(self.window, group, machine.clone(), |values| async move {
                self.gated(self.inner.find_by_tag_values(&fixed, &key, &values)).await
            })
            .await
    }

    async fn describe(&self, id: &str) -> Result<Option<Instance>, Ec2Error> {
        let found = self
            .by_id
            .get(self.window, String::new(), id.to_string(), |ids| async move {
                let found = self.gated(self.inner.describe_ids(&ids)).await?;
                Ok(found.into_iter().map(|i| (i.id.clone(), i)).collect())
            })
            .await?;
        Ok(found.into_iter().next())
    }

    async fn run(&self, spec: &LaunchSpec) -> Result<Instance, Ec2Error> {
        self.gated(self.inner.run(spec)).await
    }
    async fn terminate(&self, id: &str) -> Result<(), Ec2Error> {
        self.gated(self.inner.terminate(id)).await
    }
    async fn find_images(&self, owner: &str, pattern: &str) -> Result<Vec<Image>, Ec2Error> {
        self.gated(self.inner.find_images(owner, pattern)).await
    }
    async fn image(&self, id: &str) -> Result<Option<Image>, Ec2Error> {
        self.gated(self.inner.image(id)).await
    }
    async fn subnets(
        &self,
        ids: &[String],
        filters: &[(String, Vec<String>)],
    ) -> Result<Vec<(String, String)>, Ec2Error> {
        self.gated(self.inner.subnets(ids, filters)).await
    }
    async fn instance_type(&self, name: &str) -> Result<Option<(i32, i64)>, Ec2Error> {
        self.gated(self.inner.instance_type(name)).await
    }
    async fn security_groups(&self, filters: &[(String, Vec<String>)]) -> Result<Vec<String>, Ec2Error> {
        self.gated(self.inner.security_groups(filters)).await
    }
    async fn console_output(&self, id: &str) -> Result<Option<String>, Ec2Error> {
        self.gated(self.inner.console_output(id)).await
    }
    async fn require_imds_tokens(&self, id: &str) -> Result<(), Ec2Error> {
        self.gated(self.inner.require_imds_tokens(id)).await
    }
    async fn describe_ids(&self, ids: &[String]) -> Result<Vec<Instance>, Ec2Error> {
        self.gated(self.inner.describe_ids(ids)).await
    }
    async fn find_by_tag_values(
        &self,
        fixed: &[(String, String)],
        key: &str,
        values: &[String],
    ) -> Result<Vec<(String, Instance)>, Ec2Error> {
        self.gated(self.inner.find_by_tag_values(fixed, key, values)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// EC2 with instances `i-<machine>` for machines `m0`…, counting the calls that reach it.
    #[derive(Default)]
    struct Fleet {
        calls: AtomicUsize,
    }

    fn inst(id: &str) -> Instance {
        Instance {
            id: id.into(),
            state: "running".into(),
            availability_zone: "us-east-1a".into(),
            private_ip: None,
            private_dns: None,
            client_token: None,
            http_tokens: None,
        }
    }

    impl Ec2 for Fleet {
        async fn find_by_tags(&self, tags: &[(String, String)]) -> Result<Vec<Instance>, Ec2Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let m = tags.iter().find(|(k, _)| *k == machine_tag_key()).map(|(_, v)| v.clone()).unwrap_or_default();
            Ok(if m == "ns.gone" { vec![] } else { vec![inst(&format!("i-{m}"))] })
        }
        async fn describe(&self, id: &str) -> Result<Option<Instance>, Ec2Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok((id != "i-missing").then(|| inst(id)))
        }
        async fn describe_ids(&self, ids: &[String]) -> Result<Vec<Instance>, Ec2Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(ids.iter().filter(|i| *i != "i-missing").map(|i| inst(i)).collect())
        }
        async fn find_by_tag_values(
            &self,
            _fixed: &[(String, String)],
            _key: &str,
            values: &[String],
        ) -> Result<Vec<(String, Instance)>, Ec2Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(values.iter().filter(|v| *v != "ns.gone").map(|v| (v.clone(), inst(&format!("i-{v}")))).collect())
        }
        async fn run(&self, _: &LaunchSpec) -> Result<Instance, Ec2Error> {
            unreachable!()
        }
        async fn terminate(&self, _: &str) -> Result<(), Ec2Error> {
            unreachable!()
        }
        async fn find_images(&self, _: &str, _: &str) -> Result<Vec<Image>, Ec2Error> {
            unreachable!()
        }
        async fn image(&self, _: &str) -> Result<Option<Image>, Ec2Error> {
            unreachable!()
        }
        async fn subnets(&self, _: &[String], _: &[(String, Vec<String>)]) -> Result<Vec<(String, String)>, Ec2Error> {
            unreachable!()
        }
        async fn instance_type(&self, _: &str) -> Result<Option<(i32, i64)>, Ec2Error> {
            unreachable!()
        }
        async fn security_groups(&self, _: &[(String, Vec<String>)]) -> Result<Vec<String>, Ec2Error> {
            unreachable!()
        }
        async fn console_output(&self, _: &str) -> Result<Option<String>, Ec2Error> {
            unreachable!()
        }
        async fn require_imds_tokens(&self, _: &str) -> Result<(), Ec2Error> {
            unreachable!()
        }
    }

    fn tags(m: &str) -> Vec<(String, String)> {
        vec![(format!("{TAG_PREFIX}/cluster/c"), "owned".into()), (machine_tag_key(), format!("ns.{m}"))]
    }

    #[tokio::test]
    async fn concurrent_reads_share_one_call_and_each_gets_its_own_answer() {
        let ec2 = Arc::new(Batched::new(Fleet::default(), Duration::from_millis(50)));
        let mut tasks = Vec::new();
        for m in ["a", "b", "c", "gone"] {
            let ec2 = ec2.clone();
            tasks.push(tokio::spawn(async move { (m, ec2.find_by_tags(&tags(m)).await.unwrap()) }));
        }
        for t in tasks {
            let (m, found) = t.await.unwrap();
            let ids: Vec<String> = found.into_iter().map(|i| i.id).collect();
            let want: Vec<String> = if m == "gone" { vec![] } else { vec![format!("i-ns.{m}")] };
            assert_eq!(ids, want, "{m}");
        }
        assert_eq!(ec2.inner().calls.load(Ordering::SeqCst), 1);

        let mut tasks = Vec::new();
        for id in ["i-1", "i-2", "i-missing"] {
            let ec2 = ec2.clone();
            tasks.push(tokio::spawn(async move { (id, ec2.describe(id).await.unwrap()) }));
        }
        for t in tasks {
            let (id, found) = t.await.unwrap();
            assert_eq!(found.map(|i| i.id), (id != "i-missing").then(|| id.to_string()));
        }
        assert_eq!(ec2.inner().calls.load(Ordering::SeqCst), 2, "one more call for the three ids");
    }

    #[tokio::test]
    async fn calls_in_later_windows_and_other_shapes_are_not_merged() {
        let ec2 = Batched::new(Fleet::default(), Duration::from_millis(10));
        ec2.find_by_tags(&tags("a")).await.unwrap();
        ec2.find_by_tags(&tags("b")).await.unwrap();
        // Without the machine tag the call passes through as it is.
        ec2.find_by_tags(&[(format!("{TAG_PREFIX}/cluster/c"), "owned".into())]).await.unwrap();
        assert_eq!(ec2.inner().calls.load(Ordering::SeqCst), 3);
    }
}
