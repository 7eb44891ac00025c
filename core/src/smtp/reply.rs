//! SMTP replies: a basic code (RFC 5321), an enhanced status code
//! (RFC 3463, announced by ENHANCEDSTATUSCODES, RFC 2034) and text, written
//! on the wire as one or more lines.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `None` for replies RFC 2034 exempts: the greeting, HELO/EHLO and
    /// intermediate (3xx) replies.
    pub enhanced: Option<String>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced.to_string()),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced status code.
    pub fn bare(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply without enhanced codes (EHLO).
    pub fn multiline(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    pub fn is_permanent_error(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form to `out`. Text is cleaned of CR and LF so a
    /// value echoed from the client can never inject a reply line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Written straight into `out`, a byte at a time only where a CR or
        // LF has to go: a reply is written for every command, and building
        // it char by char in a String of its own cost about 2000
        // instructions a line.
        let n = self.lines.len().max(1);
        let code = self.code.min(999);
        let digits = [b'0' + (code / 100) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8];
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            out.extend_from_slice(&digits);
            out.push(if i + 1 == n { b' ' } else { b'-' });
            if let Some(e) = &self.enhanced {
                push_clean(out, e);
                out.push(b' ');
            }
            push_clean(out, text);
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.write_to(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Appends `text` with each CR and LF made a space.
fn push_clean(out: &mut Vec<u8>, text: &str) {
    let mut rest = text.as_bytes();
    while let Some(at) = memchr::memchr2(b'\r', b'\n', rest) {
        out.extend_from_slice(&rest[..at]);
        out.push(b' ');
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

/// Replies used in more than one place.
pub mod canned {
    use super::Reply;

    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0", "OK")
    }
    pub fn bad_sequence(what: &str) -> Reply {
        Reply::new(503, "5.5.1", format!("Bad sequence of commands: {what}"))
    }
    pub fn line_too_long() -> Reply {
        Reply::new(500, "5.5.2", "Line too long: command lines are limited to 512 octets")
    }
    pub fn too_many_errors() -> Reply {
        Reply::new(421, "4.7.0", "Too many errors, closing connection")
    }
    pub fn timeout() -> Reply {
        Reply::new(421, "4.4.2", "Timeout exceeded, closing connection")
    }
    pub fn shutting_down() -> Reply {
        Reply::new(421, "4.3.2", "Service shutting down, try again later")
    }
    pub fn too_large(max: u64) -> Reply {
        Reply::new(
            552,
            "5.3.4",
            format!("Message size exceeds the fixed maximum of {max} octets"),
        )
    }
    pub fn auth_required() -> Reply {
        Reply::new(530, "5.7.0", "Authentication required")
    }
    pub fn tls_required() -> Reply {
        Reply::new(530, "5.7.0", "Must issue a STARTTLS command first")
    }
    pub fn encryption_required() -> Reply {
        Reply::new(
            538,
            "5.7.11",
            "Encryption required for requested authentication mechanism",
        )
    }
    pub fn auth_failed() -> Reply {
        Reply::new(535, "5.7.8", "Authentication credentials invalid")
    }
    pub fn queue_failed() -> Reply {
        Reply::new(451, "4.3.0", "Local error in processing: queue write failed, try again later")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced_code() {
        assert_eq!(Reply::new(250, "2.0.0", "OK").to_wire(), "250 2.0.0 OK\r\n");
    }

    #[test]
    fn multiline_uses_dashes_and_no_enhanced_code() {
        let r = Reply::multiline(250, vec!["host".into(), "PIPELINING".into(), "SIZE 10".into()]);
        assert_eq!(r.to_wire(), "250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
    }

    #[test]
    fn text_cannot_inject_lines() {
        let r = Reply::new(501, "5.5.2", "bad <a\r\n250 ok>");
        assert_eq!(r.to_wire(), "501 5.5.2 bad <a  250 ok>\r\n");
        let r = Reply { code: 451, enhanced: Some("4.3.0\r\n".into()), lines: vec!["\n\ré".into(), "x\r".into()] };
        assert_eq!(r.to_wire(), "451-4.3.0     é\r\n451 4.3.0   x \r\n");
        // No line at all still makes one reply line.
        assert_eq!(Reply::multiline(220, Vec::new()).to_wire(), "220 \r\n");
    }
}
