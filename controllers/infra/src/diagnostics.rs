//! The payload's serial-console lines (EC2 `GetConsoleOutput`, Azure boot diagnostics) read into
//! the machine's `NodeBootstrap` condition until its Node exists, at most once a minute per
//! machine: the text changes once per bootstrap step, minutes apart, and both clouds throttle
//! these reads per account or subscription.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use capwin_api::common::{InfraMachineStatus, condition_reason, now_rfc3339, set_condition};
use capwin_payload::serial::{self, Phase};

use crate::metrics::Metrics;

/// Condition type for what the serial console says about bootstrap, before the Node exists.
/// Separate from `Ready`: `Ready` is the VM's state, and a failed join does not change it.
pub const NODE_BOOTSTRAP: &str = "NodeBootstrap";
/// How often one machine's serial console is read while its Node has not joined.
pub const READ_INTERVAL: Duration = Duration::from_secs(60);

/// Whether the console may be read again, given the last read (or attempt) of this machine.
pub fn should_read(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|l| now.saturating_duration_since(l) >= READ_INTERVAL)
}

/// The `NodeBootstrap` condition (status, reason, message) for a console report.
pub fn bootstrap_condition(r: &serial::Report) -> (bool, &'static str, String) {
    match r.phase {
        Phase::Failed { .. } => (false, "BootstrapFailed", r.summary()),
        Phase::Running => (false, "BootstrapInProgress", r.summary()),
        Phase::Succeeded => (true, "BootstrapSucceeded", r.summary()),
    }
}

/// Sets `NodeBootstrap` from console text; returns the event note when this read newly found a
/// failure. Text without any record changes nothing.
pub fn apply_console(text: &str, status: &mut InfraMachineStatus, generation: Option<i64>) -> Option<String> {
    let report = serial::parse(text)?;
    let (ok, reason, msg) = bootstrap_condition(&report);
    let changed = condition_reason(&status.conditions, NODE_BOOTSTRAP) != Some(reason);
    set_condition(&mut status.conditions, NODE_BOOTSTRAP, ok, reason, &msg, generation, &now_rfc3339());
    (reason == "BootstrapFailed" && changed).then_some(msg)
}

/// The Node exists: `NodeBootstrap` says so, and the console is not read again.
pub fn node_joined(status: &mut InfraMachineStatus, node: &str, generation: Option<i64>) {
    let msg = serial::clean(&format!("node {node} joined"));
    set_condition(&mut status.conditions, NODE_BOOTSTRAP, true, "NodeJoined", &msg, generation, &now_rfc3339());
}

/// Annotation on an infrastructure machine naming the serial port its bootstrap writes to, read
/// from the payload when the VM is created (the payload is not read again afterwards).
pub const SERIAL_PORT_ANNOTATION: &str = "capwin.cluster.x-k8s.io/serial-port";

/// The value of [`SERIAL_PORT_ANNOTATION`] for a payload: its port (`COM2`), `none` when serial
/// diagnostics are off, `None` when the payload does not say.
pub fn port_annotation(payload: &[u8]) -> Option<String> {
    match serial::written_port(payload) {
        serial::WrittenPort::Port(p) => Some(p),
        serial::WrittenPort::Off => Some("none".into()),
        serial::WrittenPort::Unknown => None,
    }
}

fn written(annotation: Option<&str>) -> serial::WrittenPort {
    match annotation {
        Some("none") => serial::WrittenPort::Off,
        Some(p) => serial::WrittenPort::Port(p.to_string()),
        None => serial::WrittenPort::Unknown,
    }
}

/// What a report does about the serial console: until the Machine's Node exists, read it (at
/// most once per [`READ_INTERVAL`] per machine, through `read`) into `NodeBootstrap`; once it
/// exists, say so and stop reading. Returns the requeue cap (while still reading) and, when this
/// read newly found a failure, the note for a Warning event.
#[allow(clippy::too_many_arguments)]
pub async fn follow<F, Fut>(
    slots: &Slots,
    metrics: &Metrics,
    cloud: capwin_payload::Cloud,
    port: Option<&str>,
    node: Option<&str>,
    uid: &str,
    status: &mut InfraMachineStatus,
    generation: Option<i64>,
    read: F,
) -> (Option<Duration>, Option<String>)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    if let Some(node) = node {
        slots.forget(uid);
        node_joined(status, node, generation);
        return (None, None);
    }
    // A console that cannot show the bootstrap's records is not read (each read is a cloud call).
    if let Err(why) = serial::console_watch(cloud, &written(port)) {
        set_condition(
            &mut status.conditions,
            NODE_BOOTSTRAP,
            false,
            "ConsoleNotWatched",
            &why,
            generation,
            &now_rfc3339(),
        );
        return (None, None);
    }
    if !slots.take(uid, Instant::now(), should_read) {
        return (Some(READ_INTERVAL), None);
    }
    metrics.diagnostics_reads.inc();
    let note = match read().await {
        Some(text) => apply_console(&text, status, generation),
        None => None,
    };
    (Some(READ_INTERVAL), note)
}

/// Per-machine time slots (by machine UID): taking one when due counts an attempt as a read, so a
/// failing call is not retried faster than the interval.
#[derive(Default)]
pub struct Slots(Mutex<HashMap<String, Instant>>);

impl Slots {
    pub fn take(&self, uid: &str, now: Instant, due: impl Fn(Option<Instant>, Instant) -> bool) -> bool {
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !due(slots.get(uid).copied(), now) {
            return false;
        }
        slots.insert(uid.to_string(), now);
        true
    }

    pub fn forget(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_the_bootstrap_wrote_to_decides_whether_the_console_is_read() {
        use capwin_payload::Cloud;
        assert!(serial::console_watch(Cloud::Azure, &written(Some("COM2"))).is_ok());
        assert!(serial::console_watch(Cloud::Aws, &written(Some("COM1"))).is_ok());
        let why = serial::console_watch(Cloud::Azure, &written(Some("COM1"))).unwrap_err();
        assert!(why.contains("COM1") && why.contains("COM2"), "{why}");
        assert!(serial::console_watch(Cloud::Aws, &written(Some("none"))).is_err());
        assert!(serial::console_watch(Cloud::Azure, &written(None)).is_ok(), "an older machine is read anyway");
        assert_eq!(port_annotation(b"not a payload"), None);
    }

    #[test]
    fn the_console_is_read_at_most_once_per_interval() {
        let t0 = Instant::now();
        assert!(should_read(None, t0));
        assert!(!should_read(Some(t0), t0 + Duration::from_secs(59)));
        assert!(should_read(Some(t0), t0 + READ_INTERVAL));
        let slots = Slots::default();
        assert!(slots.take("u", t0, should_read));
        assert!(!slots.take("u", t0 + Duration::from_secs(1), should_read), "an attempt counts as a read");
        assert!(slots.take("v", t0, should_read), "per machine");
        slots.forget("u");
        assert!(slots.take("u", t0 + Duration::from_secs(1), should_read));
    }

    #[test]
    fn a_failure_sets_the_condition_once_and_asks_for_one_event() {
        let mut status = InfraMachineStatus::default();
        let text = "boot\r\nCAPWIN-BOOTSTRAP {\"step\":\"join\",\"status\":\"failed\",\"message\":\"kubeadm.exe exited with code 1\"}\r\n";
        let note = apply_console(text, &mut status, Some(1)).expect("a failure is news");
        assert!(note.contains("join") && note.contains("kubeadm.exe exited with code 1"), "{note}");
        assert_eq!(condition_reason(&status.conditions, NODE_BOOTSTRAP), Some("BootstrapFailed"));
        assert_eq!(apply_console(text, &mut status, Some(1)), None, "the same failure is not news again");
        assert_eq!(apply_console("no records here", &mut status, Some(1)), None);
        assert_eq!(condition_reason(&status.conditions, NODE_BOOTSTRAP), Some("BootstrapFailed"));
        let running = "CAPWIN-BOOTSTRAP {\"step\":\"preamble\",\"status\":\"running\",\"message\":\"\"}\n";
        assert_eq!(apply_console(running, &mut status, Some(1)), None);
        assert_eq!(condition_reason(&status.conditions, NODE_BOOTSTRAP), Some("BootstrapInProgress"));
    }

    fn report(text: &str) -> serial::Report {
        serial::parse(text).expect("a record")
    }

    #[test]
    fn console_reports_become_the_node_bootstrap_condition() {
        let failed = report(
            "CAPWIN-BOOTSTRAP {\"step\":\"join\",\"status\":\"failed\",\"message\":\"kubeadm.exe exited with code 1\"}",
        );
        assert_eq!(
            bootstrap_condition(&failed),
            (false, "BootstrapFailed", "step join exited 80: kubeadm.exe exited with code 1".to_string())
        );
        let running = report("CAPWIN-BOOTSTRAP {\"step\":\"containerd\",\"status\":\"running\",\"message\":\"\"}");
        assert_eq!(bootstrap_condition(&running), (false, "BootstrapInProgress", "at step containerd".to_string()));
        let done =
            report("CAPWIN-BOOTSTRAP {\"step\":\"done\",\"status\":\"succeeded\",\"message\":\"node ip-10-0-0-7\"}");
        assert_eq!(
            bootstrap_condition(&done),
            (true, "BootstrapSucceeded", "bootstrap succeeded: node ip-10-0-0-7".to_string())
        );
    }

    #[test]
    fn condition_messages_stay_bounded_and_free_of_tokens() {
        let long = format!(
            "CAPWIN-BOOTSTRAP {{\"step\":\"join\",\"status\":\"failed\",\"message\":\"abcdef.0123456789abcdef {}\"}}",
            "\\u001b[31m x".repeat(500)
        );
        let (_, _, msg) = bootstrap_condition(&report(&long));
        assert!(msg.chars().count() <= serial::MESSAGE_LIMIT, "{}", msg.len());
        assert!(!msg.contains("0123456789abcdef") && !msg.chars().any(char::is_control), "{msg}");
    }
}
