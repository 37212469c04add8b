//! JSON that survives Windows PowerShell 5.1 unchanged: every non-ASCII character is written as a
//! `\uXXXX` escape, so the file is plain ASCII whatever code page reads it.

use serde::Serialize;

struct AsciiFormatter;

impl serde_json::ser::Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Serialises `value` as ASCII-only JSON.
pub fn to_ascii_json<T: Serialize>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    value.serialize(&mut ser).expect("parameters always serialise");
    String::from_utf8(out).expect("the formatter writes ASCII only")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_becomes_escapes_and_round_trips() {
        let s = "naïve ☃ 𝄞 \"q\" \\ \n";
        let json = to_ascii_json(&s);
        assert!(json.is_ascii(), "{json}");
        assert!(json.contains("\\u00ef") && json.contains("\\ud834\\udd1e"), "{json}");
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
