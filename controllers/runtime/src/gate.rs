//! One back-off per cloud endpoint, shared by every machine that calls it. When the endpoint
//! throttles or does not answer, each caller waits at the gate instead of each machine backing
//! off on its own towards minutes: the fleet waits together and goes on together once the
//! endpoint answers again (client-go's and the cloud SDKs' per-client rate limiting, applied to
//! trouble only).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shared state: after trouble, no call before `until`.
#[derive(Debug, Default)]
pub struct EndpointGate(Mutex<GateState>);

#[derive(Debug, Default)]
struct GateState {
    until: Option<Instant>,
    troubles: u32,
}

/// The longest a gate stays closed after one failure.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

impl EndpointGate {
    /// Waits until the gate is open.
    pub async fn wait(&self) {
        let until = self.0.lock().unwrap_or_else(|p| p.into_inner()).until;
        if let Some(t) = until {
            tokio::time::sleep_until(t.into()).await;
        }
    }

    /// The endpoint throttled or did not answer: close the gate for what it asked
    /// (`Retry-After`), else 1 s, doubling with each trouble in a row, at most [`MAX_WAIT`].
    pub fn trouble(&self, retry_after: Option<Duration>) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.troubles = s.troubles.saturating_add(1);
        let wait = retry_after
            .unwrap_or_else(|| Duration::from_secs(1).saturating_mul(1 << (s.troubles - 1).min(5)))
            .min(MAX_WAIT);
        let until = Instant::now() + wait;
        s.until = Some(s.until.map_or(until, |u| u.max(until)));
    }

    /// The endpoint answered: open the gate.
    pub fn answered(&self) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.troubles = 0;
        s.until = None;
    }

    /// How long a call made now would wait.
    pub fn closed_for(&self) -> Duration {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.until.map(|u| u.saturating_duration_since(Instant::now())).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trouble_closes_the_gate_longer_each_time_and_an_answer_opens_it() {
        let g = EndpointGate::default();
        assert_eq!(g.closed_for(), Duration::ZERO);
        g.trouble(None);
        let first = g.closed_for();
        assert!(first > Duration::from_millis(900) && first <= Duration::from_secs(1), "{first:?}");
        g.trouble(None);
        assert!(g.closed_for() > Duration::from_millis(1900), "doubles");
        for _ in 0..10 {
            g.trouble(None);
        }
        assert!(g.closed_for() <= MAX_WAIT, "capped");
        g.answered();
        assert_eq!(g.closed_for(), Duration::ZERO);
        g.trouble(Some(Duration::from_secs(7)));
        assert!(g.closed_for() > Duration::from_secs(6), "Retry-After wins");
    }

    #[tokio::test]
    async fn callers_wait_at_a_closed_gate() {
        let g = EndpointGate::default();
        g.trouble(Some(Duration::from_millis(300)));
        let start = Instant::now();
        g.wait().await;
        assert!(start.elapsed() >= Duration::from_millis(250), "{:?}", start.elapsed());
        let start = Instant::now();
        g.answered();
        g.wait().await;
        assert!(start.elapsed() < Duration::from_millis(50), "open");
    }
}
