//! Reading the bootstrap script's serial-console lines back: what the cloud shows before the
//! Node exists (EC2 `GetConsoleOutput`, Azure boot diagnostics).
//!
//! `bootstrap.ps1` writes one line per step and one at the end of a run to the serial port:
//!
//! ```text
//! CAPWIN-BOOTSTRAP {"step":"join","status":"running","message":""}
//! CAPWIN-BOOTSTRAP {"step":"join","status":"failed","message":"kubeadm.exe exited with code 1"}
//! CAPWIN-BOOTSTRAP {"step":"done","status":"succeeded","message":"node ip-10-0-0-7"}
//! ```
//!
//! The line carries no exit code; the script derives it from the step (`$Steps`), and so does
//! [`step_exit_code`] (a test keeps the two tables equal). A `code` field is read when present.
//!
//! Pure: text in, a [`Report`] out. The console is untrusted, lossy text (a ring buffer that may
//! start mid-line, other writers interleaved, CRLF or LF, several boots), so everything that is
//! not a well-formed record is skipped, and what comes out is cleaned for a condition message.
//!
//! Which port the records travel on is decided per cloud ([`crate::node::serial_port`]); the
//! infrastructure side finds the port a payload writes to with [`written_port`] and decides with
//! [`console_watch`] whether that cloud's console can show it.
//!
//! While cloudbase-init runs the script it holds its own logging port open (Windows opens COM
//! ports exclusively; `cloudbaseinit/utils/log.py` `SerialPortHandler` keeps the port for the
//! whole run), so the script cannot open that port itself. It then prints each record to its
//! standard output instead, which cloudbase-init logs when the script exits (`User_data stdout`)
//! to its handlers, the serial port included: the records arrive, at the end of the run.

use serde::Deserialize;

use crate::Cloud;

/// The marker that starts every record.
pub const MARKER: &str = "CAPWIN-BOOTSTRAP ";
/// Longest message handed on (characters), so a condition or event stays readable.
pub const MESSAGE_LIMIT: usize = 512;

/// The script's step → exit code table (`$Steps` in `bootstrap.ps1`); 99 for anything else.
pub const STEP_EXIT_CODES: &[(&str, i32)] = &[
    ("preamble", 10),
    ("acl", 11),
    ("host", 20),
    ("domain", 21),
    ("binaries", 30),
    ("version", 31),
    ("containerd", 40),
    ("network", 50),
    ("nodeip", 51),
    ("nodename", 52),
    ("routes", 53),
    ("kubelet", 60),
    ("users", 61),
    ("gmsa", 62),
    ("prekubeadm", 65),
    ("apiserver", 70),
    ("join", 80),
    ("postjoin", 90),
    ("postkubeadm", 91),
];

/// The exit code `bootstrap.ps1` ends with when `step` fails.
pub fn step_exit_code(step: &str) -> i32 {
    STEP_EXIT_CODES.iter().find(|(s, _)| *s == step).map_or(99, |(_, c)| *c)
}

/// The serial port a rendered payload's script writes its records to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WrittenPort {
    /// This port (`COM1` … `COM4`).
    Port(String),
    /// Serial diagnostics are off (`spec.windows.diagnostics.serialPort: none`).
    Off,
    /// Not a capwin payload, or one this version cannot read.
    Unknown,
}

/// Reads the port from a payload as the renderer made it (the Secret's `value`): the
/// `serialPort` of its `bootstrap.json`. Pure; never fails, [`WrittenPort::Unknown`] instead.
pub fn written_port(payload: &[u8]) -> WrittenPort {
    use base64::Engine;
    use std::io::Read;
    let gunzip = |b: &[u8]| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b).read_to_end(&mut out).ok().map(|_| out)
    };
    let doc = if payload.starts_with(&[0x1f, 0x8b]) { gunzip(payload) } else { Some(payload.to_vec()) };
    let Some(body) = doc.as_deref().and_then(|d| d.strip_prefix(b"#cloud-config\n")) else {
        return WrittenPort::Unknown;
    };
    let Ok(v) = serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(body) else { return WrittenPort::Unknown };
    let Some(entry) = v["write_files"]
        .as_sequence()
        .and_then(|files| files.iter().find(|f| f["path"].as_str() == Some(crate::PARAMS_PATH)))
    else {
        return WrittenPort::Unknown;
    };
    let content = entry["content"].as_str().unwrap_or_default();
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.decode(t).ok();
    let params = match entry.get("encoding").and_then(|e| e.as_str()) {
        None => Some(content.as_bytes().to_vec()),
        Some("b64") => b64(content),
        Some("gz+b64") => b64(content).and_then(|z| gunzip(&z)),
        Some(_) => None,
    };
    let Some(json) = params.and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok()) else {
        return WrittenPort::Unknown;
    };
    match json.get("serialPort") {
        Some(serde_json::Value::String(p)) if p.len() == 4 && p.starts_with("COM") => WrittenPort::Port(p.clone()),
        Some(serde_json::Value::Null) => WrittenPort::Off,
        _ => WrittenPort::Unknown,
    }
}

/// Whether the infrastructure side should read the cloud's console for a payload's records:
/// `Ok` to read; `Err` with the reason (for the `NodeBootstrap` condition) when it would show
/// nothing. An unknown payload is read anyway (the records may be there).
pub fn console_watch(cloud: Cloud, written: &WrittenPort) -> Result<(), String> {
    let shown = crate::node::console_port(cloud);
    match written {
        WrittenPort::Port(p) if p == shown => Ok(()),
        WrittenPort::Port(p) => Err(format!(
            "the bootstrap writes its progress to {p}, but the {} console shows {shown}; set spec.windows.diagnostics.serialPort to {shown} or leave it unset",
            match cloud {
                Cloud::Aws => "EC2",
                Cloud::Azure => "Azure boot diagnostics",
            }
        )),
        WrittenPort::Off => Err("serial diagnostics are off (spec.windows.diagnostics.serialPort: none)".into()),
        WrittenPort::Unknown => Ok(()),
    }
}

/// Where the last run of the script is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Still going (or died without a final line: a reboot, a killed process).
    Running,
    /// Joined (or found itself already joined).
    Succeeded,
    /// Failed at `step` (of the report) with this exit code and message.
    Failed { exit_code: i32, message: String },
}

/// What the console says about bootstrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The step of the last record (`done` after success).
    pub step: String,
    pub phase: Phase,
    /// How many runs of the script the text shows (a run starts with step `preamble`); a
    /// record before any `preamble` (the buffer cut it off) counts as one run.
    pub runs: usize,
    /// The cleaned message of the last record (empty for most progress lines).
    pub message: String,
}

impl Report {
    /// One line for a condition message, e.g. `step join exited 80: kubeadm.exe exited with code 1`.
    pub fn summary(&self) -> String {
        let text = match &self.phase {
            Phase::Failed { exit_code, message } if message.is_empty() => {
                format!("step {} exited {exit_code}", self.step)
            }
            Phase::Failed { exit_code, message } => format!("step {} exited {exit_code}: {message}", self.step),
            Phase::Running => format!("at step {}", self.step),
            Phase::Succeeded if self.message.is_empty() => "bootstrap succeeded".to_string(),
            Phase::Succeeded => format!("bootstrap succeeded: {}", self.message),
        };
        clean(&text)
    }
}

#[derive(Deserialize)]
struct Record {
    step: String,
    status: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<i64>,
}

/// Parses console text; `None` when it holds no record at all. The last run wins: a failure
/// followed by a reboot and a new run that is still going reads as running.
pub fn parse(console: &str) -> Option<Report> {
    let mut report: Option<Report> = None;
    let mut runs = 0usize;
    for line in console.split(['\n', '\r']) {
        // Records glued together (a lost newline) are split at each marker.
        for chunk in line.split(MARKER).skip(1) {
            let Some(rec) = first_json_object(chunk) else { continue };
            let step = clean_step(&rec.step);
            if step.is_empty() {
                continue;
            }
            let message = clean(rec.message.as_deref().unwrap_or_default());
            let phase = match rec.status.as_str() {
                "running" => Phase::Running,
                "succeeded" => Phase::Succeeded,
                "failed" => {
                    // Only the script's own range (10-99); anything else is the table's answer.
                    let exit_code = rec
                        .code
                        .and_then(|c| i32::try_from(c).ok())
                        .filter(|c| (10..=99).contains(c))
                        .unwrap_or_else(|| step_exit_code(&step));
                    Phase::Failed { exit_code, message: message.clone() }
                }
                _ => continue,
            };
            if (step == "preamble" && phase == Phase::Running) || runs == 0 {
                runs += 1;
            }
            report = Some(Report { step, phase, runs, message });
        }
    }
    report
}

/// The first JSON object at the start of `s`; trailing text (another writer's bytes) is ignored,
/// a cut-off object is not a record.
fn first_json_object(s: &str) -> Option<Record> {
    let s = s.trim_start();
    if !s.starts_with('{') {
        return None;
    }
    serde_json::Deserializer::from_str(s).into_iter::<Record>().next()?.ok()
}

/// Step names are the script's identifiers: lower-case letters and digits, at most 32.
fn clean_step(s: &str) -> String {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return String::new();
    }
    s.to_string()
}

/// Makes untrusted console text fit for a condition message: control and bidi characters go
/// (line breaks and tabs become spaces), runs of spaces collapse, anything shaped like a kubeadm
/// bootstrap token is redacted (the script already redacts; this is the second belt), and the
/// result is cut to [`MESSAGE_LIMIT`] characters.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MESSAGE_LIMIT * 4));
    for c in s.chars() {
        let c = if c.is_whitespace() { ' ' } else { c };
        if c.is_control() || is_bidi_or_invisible(c) {
            continue;
        }
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    let out = redact_tokens(out.trim_end());
    if out.chars().count() <= MESSAGE_LIMIT {
        return out;
    }
    let mut cut: String = out.chars().take(MESSAGE_LIMIT - 1).collect();
    cut.push('…');
    cut
}

fn is_bidi_or_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Replaces `[a-z0-9]{6}.[a-z0-9]{16}` (not inside a longer run of such characters) with
/// `<redacted>`.
fn redact_tokens(s: &str) -> String {
    let b = s.as_bytes();
    let tok = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i + 23 <= b.len() {
        let starts_run = i == 0 || !tok(b[i - 1]);
        let shaped = b[i..i + 6].iter().all(|x| tok(*x))
            && b[i + 6] == b'.'
            && b[i + 7..i + 23].iter().all(|x| tok(*x))
            && (i + 23 == b.len() || !tok(b[i + 23]));
        if starts_run && shaped {
            out.push_str(&s[copied..i]);
            out.push_str("<redacted>");
            i += 23;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: &str, status: &str, message: &str) -> String {
        format!("{MARKER}{}", serde_json::json!({"step": step, "status": status, "message": message}))
    }

    #[test]
    fn no_records_is_none() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("Linux version 5.10 ...\r\n[    0.000000] Command line: ro root=LABEL=/\n"), None);
        assert_eq!(parse("CAPWIN-BOOTSTRAP\nCAPWIN-BOOTSTRAP \nCAPWIN-BOOTSTRAP not json\n"), None);
    }

    #[test]
    fn progress_is_the_last_step() {
        let text = [rec("preamble", "running", ""), rec("acl", "running", ""), rec("host", "running", "")].join("\n");
        let r = parse(&text).unwrap();
        assert_eq!((r.step.as_str(), &r.phase, r.runs), ("host", &Phase::Running, 1));
        assert_eq!(r.summary(), "at step host");
    }

    #[test]
    fn failure_carries_step_exit_code_and_message() {
        let text = [
            rec("preamble", "running", ""),
            rec("join", "running", ""),
            rec("join", "failed", "kubeadm.exe exited with code 1"),
        ]
        .join("\r\n");
        let r = parse(&text).unwrap();
        assert_eq!(r.step, "join");
        assert_eq!(r.phase, Phase::Failed { exit_code: 80, message: "kubeadm.exe exited with code 1".into() });
        assert_eq!(r.summary(), "step join exited 80: kubeadm.exe exited with code 1");
    }

    #[test]
    fn a_code_field_is_used_when_in_the_scripts_range() {
        let line = |code: i64| {
            format!("{MARKER}{}", serde_json::json!({"step": "join", "status": "failed", "message": "x", "code": code}))
        };
        assert!(matches!(parse(&line(81)).unwrap().phase, Phase::Failed { exit_code: 81, .. }));
        // 1001-1003 would be a reboot request; 0 is success: neither is a failure code.
        assert!(matches!(parse(&line(1001)).unwrap().phase, Phase::Failed { exit_code: 80, .. }));
        assert!(matches!(parse(&line(0)).unwrap().phase, Phase::Failed { exit_code: 80, .. }));
        assert!(matches!(parse(&line(i64::MAX)).unwrap().phase, Phase::Failed { exit_code: 80, .. }));
    }

    #[test]
    fn unknown_steps_fail_with_99() {
        let r = parse(&rec("somethingnew", "failed", "")).unwrap();
        assert_eq!(r.phase, Phase::Failed { exit_code: 99, message: String::new() });
        assert_eq!(r.summary(), "step somethingnew exited 99");
    }

    #[test]
    fn success() {
        let text = [rec("preamble", "running", ""), rec("done", "succeeded", "node ip-10-0-0-7")].join("\n");
        let r = parse(&text).unwrap();
        assert_eq!((r.step.as_str(), &r.phase), ("done", &Phase::Succeeded));
        assert_eq!(r.summary(), "bootstrap succeeded: node ip-10-0-0-7");
        let r = parse(&rec("acl", "succeeded", "already joined")).unwrap();
        assert_eq!(r.phase, Phase::Succeeded);
    }

    #[test]
    fn the_last_run_wins() {
        // Run 1 fails at join; the VM reboots; run 2 is at containerd.
        let text = [
            rec("preamble", "running", ""),
            rec("join", "running", ""),
            rec("join", "failed", "timed out"),
            "Windows is starting".to_string(),
            rec("preamble", "running", ""),
            rec("containerd", "running", ""),
        ]
        .join("\r\n");
        let r = parse(&text).unwrap();
        assert_eq!((r.step.as_str(), &r.phase, r.runs), ("containerd", &Phase::Running, 2));

        // Run 2 fails elsewhere: that failure is the one reported.
        let text = format!("{text}\r\n{}\r\n", rec("containerd", "failed", "service did not start"));
        let r = parse(&text).unwrap();
        assert_eq!(r.phase, Phase::Failed { exit_code: 40, message: "service did not start".into() });
        assert_eq!(r.runs, 2);

        // Run 3 succeeds (sentinel): earlier failures are history.
        let text = format!("{text}{}\n{}\n", rec("preamble", "running", ""), rec("acl", "succeeded", "already joined"));
        let r = parse(&text).unwrap();
        assert_eq!((r.phase, r.runs), (Phase::Succeeded, 3));
    }

    #[test]
    fn a_buffer_that_starts_mid_run_counts_one_run() {
        let text = format!("ING\",\"message\":\"\"}}\n{}\n{}", rec("join", "running", ""), rec("join", "failed", "x"));
        let r = parse(&text).unwrap();
        assert_eq!(r.runs, 1);
        assert!(matches!(r.phase, Phase::Failed { exit_code: 80, .. }));
    }

    #[test]
    fn garbage_and_partial_lines_are_skipped() {
        let text = [
            rec("preamble", "running", ""),
            rec("network", "running", ""),
            // Cut off by the console buffer or a reset.
            format!("{MARKER}{{\"step\":\"network\",\"status\":\"fai"),
            // Not a JSON object, wrong types, missing fields, unknown status, bad step names.
            format!("{MARKER}[1,2,3]"),
            format!("{MARKER}\"failed\""),
            format!("{MARKER}{{\"step\":5,\"status\":\"failed\"}}"),
            format!("{MARKER}{{\"status\":\"failed\"}}"),
            rec("network", "exploded", "x"),
            rec("", "failed", "x"),
            rec("Join", "failed", "x"),
            rec("join;rm", "failed", "x"),
            rec(&"a".repeat(33), "failed", "x"),
            "\u{0}\u{0}\u{1b}[2J random bytes \u{fffd}\u{fffd}".to_string(),
            "CAPWIN-BOOTSTRAP{\"step\":\"join\",\"status\":\"failed\"}".to_string(),
        ]
        .join("\n");
        let r = parse(&text).unwrap();
        assert_eq!((r.step.as_str(), &r.phase), ("network", &Phase::Running));
    }

    #[test]
    fn records_after_other_text_and_glued_records_are_read() {
        // EC2Launch or a kernel may prefix its own text; a lost newline glues two records.
        let text = format!(
            "2026/11/12 10:00:01Z: {}{}   trailing junk\n",
            rec("preamble", "running", ""),
            rec("host", "failed", "no network")
        );
        let r = parse(&text).unwrap();
        assert_eq!(r.phase, Phase::Failed { exit_code: 20, message: "no network".into() });
        // Trailing text after the object does not spoil it.
        let r = parse(&format!("{} <- end", rec("host", "running", ""))).unwrap();
        assert_eq!(r.step, "host");
    }

    #[test]
    fn crlf_lf_and_lone_cr_all_split_lines() {
        for sep in ["\n", "\r\n", "\r", "\n\r\n"] {
            let text = [rec("preamble", "running", ""), rec("join", "failed", "x")].join(sep);
            let r = parse(&text).unwrap();
            assert!(matches!(r.phase, Phase::Failed { exit_code: 80, .. }), "{sep:?}");
            assert_eq!(r.message, "x");
        }
    }

    #[test]
    fn powershell_json_escapes_are_understood() {
        // Windows PowerShell 5.1's ConvertTo-Json escapes < > ' & as \u003c and friends.
        let line = r#"CAPWIN-BOOTSTRAP {"step":"apiserver","status":"failed","message":"GET https://10.0.0.4:6443/healthz \u003cunreachable\u003e \u0027x\u0027 \u0026 more\nsecond line"}"#;
        let r = parse(line).unwrap();
        assert_eq!(
            r.phase,
            Phase::Failed {
                exit_code: 70,
                message: "GET https://10.0.0.4:6443/healthz <unreachable> 'x' & more second line".into()
            }
        );
    }

    #[test]
    fn messages_are_cleaned_and_bounded() {
        let long = "é".repeat(2000);
        let r = parse(&rec("join", "failed", &long)).unwrap();
        let Phase::Failed { message, .. } = &r.phase else { panic!() };
        assert_eq!(message.chars().count(), MESSAGE_LIMIT);
        assert!(message.ends_with('…'));
        assert!(r.summary().chars().count() <= MESSAGE_LIMIT);

        assert_eq!(clean("a\u{1b}[31mred\u{7}\u{0}\tb\r\nc  d \u{202e}evil\u{200b}"), "a[31mred b c d evil");
        assert_eq!(clean("   "), "");
        assert_eq!(clean(&"x".repeat(MESSAGE_LIMIT)), "x".repeat(MESSAGE_LIMIT));
    }

    #[test]
    fn token_shaped_text_is_redacted() {
        assert_eq!(clean("token abcdef.0123456789abcdef used"), "token <redacted> used");
        assert_eq!(clean("abcdef.0123456789abcdef"), "<redacted>");
        assert_eq!(clean("x=abcdef.0123456789abcdef,y=uvwxyz.0123456789abcdef"), "x=<redacted>,y=<redacted>");
        // Not token-shaped: longer runs, upper case, wrong lengths.
        for s in [
            "xabcdef.0123456789abcdef",
            "abcdef.0123456789abcdefx",
            "ABCDEF.0123456789ABCDEF",
            "abcde.0123456789abcdef",
        ] {
            assert_eq!(clean(s), s);
        }
        let r = parse(&rec("join", "failed", "bad token abcdef.0123456789abcdef")).unwrap();
        assert_eq!(r.summary(), "step join exited 80: bad token <redacted>");
        assert!(!r.summary().contains("0123456789abcdef"));
    }

    #[test]
    fn the_console_is_watched_only_where_it_shows_the_records() {
        // Defect 1: the infrastructure side reads the port the payload was written for.
        let port = |p: &str| WrittenPort::Port(p.into());
        assert_eq!(console_watch(Cloud::Azure, &port("COM2")), Ok(()));
        assert_eq!(console_watch(Cloud::Aws, &port("COM1")), Ok(()));
        let e = console_watch(Cloud::Azure, &port("COM1")).unwrap_err();
        assert!(e.contains("COM1") && e.contains("Azure boot diagnostics console shows COM2"), "{e}");
        assert!(console_watch(Cloud::Aws, &WrittenPort::Off).unwrap_err().contains("serialPort: none"));
        assert_eq!(console_watch(Cloud::Aws, &WrittenPort::Unknown), Ok(()));
        assert_eq!(written_port(b"not a payload"), WrittenPort::Unknown);
        assert_eq!(written_port(b"#cloud-config\nruncmd: []\n"), WrittenPort::Unknown);
        let doc = |params: &str| {
            format!(
                "#cloud-config\nwrite_files:\n- path: \"C:\\\\run\\\\capwin\\\\bootstrap.json\"\n  content: '{params}'\n"
            )
        };
        assert_eq!(written_port(doc(r#"{"serialPort":"COM3"}"#).as_bytes()), port("COM3"));
        assert_eq!(written_port(doc(r#"{"serialPort":null}"#).as_bytes()), WrittenPort::Off);
        assert_eq!(written_port(&crate::budget::gzip(doc(r#"{"serialPort":"COM1"}"#).as_bytes())), port("COM1"));
        assert_eq!(written_port(doc(r#"{"serialPort":"COM1; rm"}"#).as_bytes()), WrittenPort::Unknown);
    }

    #[test]
    fn step_codes_match_the_script() {
        // The `$Steps = @{ ... }` table of bootstrap.ps1, read from the script itself.
        let script = crate::BOOTSTRAP_SOURCE;
        let start = script.find("$Steps = @{").expect("the step table");
        let body = &script[start..start + script[start..].find('}').unwrap()];
        let mut from_script: Vec<(String, i32)> = body
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.trim().trim_matches('\'').to_string(), v.trim().parse().ok()?))
            })
            .collect();
        from_script.sort();
        let mut ours: Vec<(String, i32)> = STEP_EXIT_CODES.iter().map(|(s, c)| (s.to_string(), *c)).collect();
        ours.sort();
        assert_eq!(from_script, ours);
        assert_eq!(step_exit_code("nope"), 99);
        // The script's record format is what the parser reads.
        assert!(script.contains("Write-Serial ('CAPWIN-BOOTSTRAP ' + ($record | ConvertTo-Json -Compress))"));
        assert!(script.contains("[ordered]@{ step = $script:CurrentStep; status = $Status; message ="));
    }
}
