//! Leader election through a `coordination.k8s.io/v1` Lease with client-go's semantics
//! (`k8s.io/client-go/tools/leaderelection`, what controller-runtime uses):
//!
//! - lease duration 15 s, renew deadline 10 s, retry period 2 s. The leader gives up (and the
//!   process exits, so its Deployment restarts it as a candidate) when it has not renewed for
//!   the renew deadline, 5 s before any candidate may take over: an old and a new leader never
//!   overlap.
//! - A candidate judges expiry by its *own* clock: from when it last saw the record change, not
//!   from the `renewTime` the holder wrote, so clock skew between nodes cannot shorten a lease.
//! - Every write carries the `resourceVersion` it read (optimistic concurrency): two candidates
//!   acting on the same record cannot both win.
//! - `leaseTransitions` counts holder changes; `acquireTime` is the current holder's start.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// How long a holder's claim lasts after its last renewal, as every candidate sees it.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// The leader stops leading when it could not renew for this long (< [`LEASE_DURATION`]).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a candidate tries to acquire and the leader renews.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

fn identity() -> String {
    let host = std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "capwin".into());
    format!("{host}_{}", std::process::id())
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// The part of a Lease record whose change restarts a candidate's expiry clock.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    pub holder: Option<String>,
    pub renew_time: Option<String>,
    pub transitions: i32,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let s = lease.spec.clone().unwrap_or_default();
        Self {
            holder: s.holder_identity.filter(|h| !h.is_empty()),
            renew_time: s.renew_time.map(|t| t.0.to_string()),
            transitions: s.lease_transitions.unwrap_or(0),
        }
    }
}

/// What a candidate has seen: the last record and when (by its own clock) it last changed.
#[derive(Debug, Default)]
pub struct Observation {
    record: Option<Record>,
    changed_at: Option<Instant>,
}

impl Observation {
    /// Takes in the record read at `now`.
    pub fn observe(&mut self, record: Record, now: Instant) {
        if self.record.as_ref() != Some(&record) {
            self.record = Some(record);
            self.changed_at = Some(now);
        }
    }

    /// Whether `me` may write itself into the record now: nobody holds it, `me` does, or the
    /// holder has not renewed for a whole lease duration as this candidate has watched it.
    pub fn may_acquire(&self, me: &str, now: Instant) -> bool {
        let Some(record) = &self.record else { return true };
        match record.holder.as_deref() {
            None => true,
            Some(h) if h == me => true,
            Some(_) => self.changed_at.is_none_or(|at| now.saturating_duration_since(at) >= LEASE_DURATION),
        }
    }
}

/// The spec to write when `me` takes or renews the lease over `previous`.
pub fn claim(previous: Option<&LeaseSpec>, me: &str, at: MicroTime) -> LeaseSpec {
    let prev = previous.cloned().unwrap_or_default();
    let ours = prev.holder_identity.as_deref() == Some(me);
    let had_holder = prev.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: if ours { prev.acquire_time.clone() } else { Some(at.clone()) },
        renew_time: Some(at),
        lease_transitions: Some(prev.lease_transitions.unwrap_or(0) + i32::from(!ours && had_holder)),
        ..prev
    }
}

/// One attempt to take or keep the lease: `Ok(true)` when `me` holds it afterwards.
async fn try_hold(api: &Api<Lease>, name: &str, me: &str, seen: &mut Observation) -> anyhow::Result<bool> {
    let Some(lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() },
            spec: Some(claim(None, me, now())),
        };
        return Ok(api.create(&PostParams::default(), &lease).await.is_ok());
    };
    seen.observe(Record::of(&lease), Instant::now());
    if !seen.may_acquire(me, Instant::now()) {
        return Ok(false);
    }
    let mut next = lease.clone();
    next.spec = Some(claim(lease.spec.as_ref(), me, now()));
    // `replace` sends the resourceVersion read above: a concurrent writer makes this a 409.
    Ok(api.replace(&lease.name_any(), &PostParams::default(), &next).await.is_ok())
}

/// Blocks until this process holds the lease, then keeps renewing it in the background; exits
/// the process when it could not renew for [`RENEW_DEADLINE`] or finds another holder.
pub async fn acquire(client: Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let me = identity();
    tracing::info!(lease = %format!("{namespace}/{name}"), identity = %me, "waiting for leadership");
    let mut seen = Observation::default();
    loop {
        match try_hold(&api, name, &me, &mut seen).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "could not read the lease; trying again"),
        }
        tokio::time::sleep(RETRY_PERIOD).await;
    }
    tracing::info!(identity = %me, "became leader");
    let name = name.to_string();
    tokio::spawn(async move {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(RETRY_PERIOD).await;
            match try_hold(&api, &name, &me, &mut seen).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) if seen.record.as_ref().is_some_and(|r| r.holder.as_deref() != Some(me.as_str())) => {
                    tracing::error!(identity = %me, "another manager holds the lease; exiting so a single leader runs");
                    std::process::exit(1);
                }
                _ => {}
            }
            if renewed.elapsed() >= RENEW_DEADLINE {
                tracing::error!(identity = %me, "could not renew the lease within the renew deadline; exiting so a single leader runs");
                std::process::exit(1);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renew: &str) -> Record {
        Record { holder: Some(holder.into()), renew_time: Some(renew.into()), transitions: 0 }
    }

    #[test]
    fn the_leader_gives_up_before_anyone_may_take_over() {
        const { assert!(RENEW_DEADLINE.as_secs() + RETRY_PERIOD.as_secs() < LEASE_DURATION.as_secs()) };
    }

    #[test]
    fn expiry_is_judged_by_the_candidates_own_clock() {
        let t0 = Instant::now();
        let mut seen = Observation::default();
        assert!(seen.may_acquire("b", t0), "nothing seen yet: try");
        seen.observe(record("a", "10:00:00"), t0);
        assert!(!seen.may_acquire("b", t0 + Duration::from_secs(14)));
        // The holder renews: the clock restarts, whatever time it wrote.
        seen.observe(record("a", "09:00:00"), t0 + Duration::from_secs(14));
        assert!(!seen.may_acquire("b", t0 + Duration::from_secs(28)));
        assert!(seen.may_acquire("b", t0 + Duration::from_secs(29)), "15 s without a change");
        // An unchanged record does not restart it.
        seen.observe(record("a", "09:00:00"), t0 + Duration::from_secs(29));
        assert!(seen.may_acquire("b", t0 + Duration::from_secs(29)));
        assert!(seen.may_acquire("a", t0), "the holder may always renew");
        seen.observe(Record::default(), t0);
        assert!(seen.may_acquire("b", t0), "released");
    }

    #[test]
    fn claims_count_transitions_and_keep_the_acquire_time_on_renewal() {
        let at = |s: i64| MicroTime(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
        let first = claim(None, "a", at(100));
        assert_eq!((first.lease_transitions, first.acquire_time.clone()), (Some(0), Some(at(100))));
        let renewed = claim(Some(&first), "a", at(110));
        assert_eq!((renewed.lease_transitions, renewed.acquire_time.clone()), (Some(0), Some(at(100))));
        assert_eq!(renewed.renew_time, Some(at(110)));
        let taken = claim(Some(&renewed), "b", at(130));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!((taken.lease_transitions, taken.acquire_time), (Some(1), Some(at(130))));
        assert_eq!(taken.lease_duration_seconds, Some(15));
    }
}
