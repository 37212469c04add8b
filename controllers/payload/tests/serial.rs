//! The serial-console parser on arbitrary and realistic console text: it never panics, what it
//! hands on is always fit for a condition message, and a record survives any surrounding noise.

use capwin_payload::serial::{self, MARKER, MESSAGE_LIMIT, Phase};
use proptest::prelude::*;

/// Console noise: text that looks like records, line breaks, control characters, multi-byte text.
fn noise() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just(MARKER.to_string()),
        Just("{\"step\":\"join\",\"status\":\"failed\",\"message\":\"".to_string()),
        Just("\"}".to_string()),
        Just("\r\n".to_string()),
        Just("\n".to_string()),
        Just("\r".to_string()),
        Just("\u{0}\u{1b}[0m\u{7f}".to_string()),
        Just("\u{202e}é☃𝄞".to_string()),
        Just("abcdef.0123456789abcdef".to_string()),
        "[ -~]{0,40}",
        any::<String>(),
    ];
    prop::collection::vec(fragment, 0..30).prop_map(|v| v.concat())
}

fn fit_for_a_condition(s: &str) -> bool {
    s.chars().count() <= MESSAGE_LIMIT
        && !s.chars().any(|c| c.is_control())
        && !has_isolated_token(s)
        && !s.contains('\u{202e}')
}

/// The noise's token, not glued to more `[a-z0-9]` on either side (then it is not token-shaped).
fn has_isolated_token(s: &str) -> bool {
    let tok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    s.match_indices("abcdef.0123456789abcdef")
        .any(|(i, m)| !tok(s[..i].chars().next_back()) && !tok(s[i + m.len()..].chars().next()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_and_output_is_clean(text in noise()) {
        if let Some(r) = serial::parse(&text) {
            prop_assert!(fit_for_a_condition(&r.summary()), "{:?}", r.summary());
            prop_assert!(fit_for_a_condition(&r.message), "{:?}", r.message);
            prop_assert!(!r.step.is_empty() && r.step.len() <= 32);
            prop_assert!(r.runs >= 1);
            if let Phase::Failed { exit_code, message } = &r.phase {
                prop_assert!((10..=99).contains(exit_code));
                prop_assert!(fit_for_a_condition(message));
            }
        }
    }

    #[test]
    fn a_final_record_on_its_own_line_wins_over_any_prefix(text in noise(), msg in any::<String>()) {
        let record = serde_json::json!({"step": "kubelet", "status": "failed", "message": msg});
        let console = format!("{text}\n{MARKER}{record}\r\n");
        let r = serial::parse(&console).expect("the record is read");
        prop_assert_eq!(r.step.as_str(), "kubelet");
        let Phase::Failed { exit_code, message } = r.phase else { panic!("not a failure") };
        prop_assert_eq!(exit_code, 60);
        prop_assert!(fit_for_a_condition(&message));
    }
}

/// What EC2 returns for a Windows instance: EC2Launch's own lines, then ours, CRLF.
#[test]
fn a_windows_console_as_ec2_shows_it() {
    let console = "2026/11/12 10:00:01Z: Windows sysprep configuration complete.\r\n\
        2026/11/12 10:00:02Z: Message: Waiting for meta-data accessibility...\r\n\
        2026/11/12 10:00:03Z: Message: Meta-data is now available.\r\n\
        CAPWIN-BOOTSTRAP {\"step\":\"preamble\",\"status\":\"running\",\"message\":\"\"}\r\n\
        CAPWIN-BOOTSTRAP {\"step\":\"acl\",\"status\":\"running\",\"message\":\"\"}\r\n\
        CAPWIN-BOOTSTRAP {\"step\":\"host\",\"status\":\"running\",\"message\":\"\"}\r\n\
        CAPWIN-BOOTSTRAP {\"step\":\"binaries\",\"status\":\"running\",\"message\":\"\"}\r\n\
        CAPWIN-BOOTSTRAP {\"step\":\"binaries\",\"status\":\"failed\",\"message\":\"curl.exe exited with code 22\"}\r\n\
        2026/11/12 10:04:00Z: Message: Windows is Ready to use\r\n";
    let r = serial::parse(console).unwrap();
    assert_eq!(r.summary(), "step binaries exited 30: curl.exe exited with code 22");
    assert_eq!(r.runs, 1);
}
