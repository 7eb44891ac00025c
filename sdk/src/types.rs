//! Plain Rust types mirroring the WIT `types` interface, used by plugin
//! code and by the native test harness alike.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Connect,
    Helo,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    Route,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connection {
    pub remote_ip: String,
    pub remote_port: u16,
    pub local_addr: String,
    pub listener: String,
    pub tls_version: Option<String>,
    pub tls_cipher: Option<String>,
    pub reverse_dns: Option<String>,
    pub helo: Option<String>,
    pub auth_user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Envelope {
    pub sender: Option<String>,
    pub sender_params: Vec<Param>,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// What a stage sees: the connection, the envelope, at rcpt-to the
/// recipient being decided, the tags and symbols earlier steps set, and at
/// data and route the message's size and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    pub stage: Stage,
    pub connection: Connection,
    pub envelope: Envelope,
    pub recipient: Option<String>,
    pub recipient_params: Vec<Param>,
    pub tags: Vec<(String, String)>,
    pub symbols: Vec<(String, f64)>,
    pub size: u64,
    /// The header section as the message holds it (empty outside data and route).
    header_section: String,
    /// Its fields, parsed when first asked for.
    headers: std::cell::OnceCell<Vec<Header>>,
}

impl Context {
    /// A session's context before anything is known: what a plugin sees
    /// grows from here as the host tells it what happened.
    pub fn new(stage: Stage) -> Context {
        Context {
            stage,
            connection: Connection::default(),
            envelope: Envelope::default(),
            recipient: None,
            recipient_params: Vec::new(),
            tags: Vec::new(),
            symbols: Vec::new(),
            size: 0,
            header_section: String::new(),
            headers: std::cell::OnceCell::new(),
        }
    }

    /// Sets the message's header section (every field up to the empty line).
    pub fn set_header_section(&mut self, section: String) {
        self.header_section = section;
        self.headers = std::cell::OnceCell::new();
    }

    /// The message's header section as it holds it: folded, CRLF line ends.
    pub fn header_section(&self) -> &str {
        &self.header_section
    }

    /// The message's header fields, unfolded, in order (empty outside data
    /// and route).
    pub fn headers(&self) -> &[Header] {
        self.headers.get_or_init(|| parse_headers(&self.header_section))
    }

    /// The first header of that name (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<&str> {
        if self.headers.get().is_none() {
            // Most values are one line of single-spaced words: those are
            // found in the section as they stand, with no parse.
            if let Ok(v) = find_plain_header(&self.header_section, name) {
                return v;
            }
        }
        self.headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Sum of the score symbols so far.
    pub fn score(&self) -> f64 {
        // Not `sum()`: an empty f64 sum is -0.0, which prints as "-0".
        self.symbols.iter().fold(0.0, |total, (_, s)| total + s)
    }
}

/// The fields of a header section, unfolded: a folded value becomes one
/// line, and runs of white space in it one space. Lines without a field
/// name (and what is folded under them) are left out; an empty line ends
/// the section. Weir checks plugins' fixtures (`weir policy test`) with the
/// same rules.
pub fn parse_headers(section: &str) -> Vec<Header> {
    let mut out: Vec<Header> = Vec::new();
    // Whether a field has begun, and whether it is kept (has a name).
    let (mut begun, mut kept) = (false, false);
    for line in crate::util::lines_inclusive(section) {
        if line == "\r\n" || line == "\n" {
            break;
        }
        if begun && (line.starts_with(' ') || line.starts_with('\t')) {
            if let (true, Some(h)) = (kept, out.last_mut()) {
                push_words(&mut h.value, line);
            }
            continue;
        }
        begun = true;
        kept = false;
        if let Some(colon) = line.bytes().position(|b| b == b':') {
            let name = line[..colon].trim();
            if !name.is_empty() {
                let mut value = String::with_capacity(line.len() - colon);
                push_words(&mut value, &line[colon + 1..]);
                out.push(Header { name: name.to_string(), value });
                kept = true;
            }
        }
    }
    out
}

/// The first field named `name` in a header section, when its value reads
/// the same unfolded (one line, ASCII words single-spaced): what
/// [`parse_headers`] would make of it, found without building every field.
/// Err: the value must be unfolded, so ask the parse.
fn find_plain_header<'a>(section: &'a str, name: &str) -> Result<Option<&'a str>, ()> {
    let mut begun = false;
    let mut lines = crate::util::lines_inclusive(section).peekable();
    while let Some(line) = lines.next() {
        if line == "\r\n" || line == "\n" {
            break;
        }
        if begun && (line.starts_with(' ') || line.starts_with('\t')) {
            continue;
        }
        begun = true;
        // Most lines name other fields. One whose first byte `trim` keeps
        // (ASCII, not white space) names `name` only if it begins with it:
        // the rest are passed over without looking for their colon.
        let Some(&first) = line.as_bytes().first() else {
            continue;
        };
        if !name.is_empty()
            && first.is_ascii()
            && !char::from(first).is_whitespace()
            && !line.as_bytes().get(..name.len()).is_some_and(|p| p.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        if !field.trim().eq_ignore_ascii_case(name) {
            continue;
        }
        let folded = lines.peek().is_some_and(|next| next.starts_with(' ') || next.starts_with('\t'));
        // One pass: printable ASCII words, one space between them. (What
        // `trim_ascii` leaves that `trim` would not, a vertical tab at an
        // end, makes the value not plain: the parse then decides.)
        let v = value.trim_ascii();
        let mut previous = 0u8;
        let plain = v.bytes().all(|b| {
            let ok = b.is_ascii() && !matches!(b, b'\t' | b'\r' | b'\n' | b'\x0b' | b'\x0c') && !(b == b' ' && previous == b' ');
            previous = b;
            ok
        });
        return if folded || !plain { Err(()) } else { Ok(Some(v)) };
    }
    Ok(None)
}

/// Appends the words of `raw` to `value`, one space between words.
fn push_words(value: &mut String, raw: &str) {
    if !raw.is_ascii() {
        for w in raw.split_whitespace() {
            if !value.is_empty() {
                value.push(' ');
            }
            value.push_str(w);
        }
        return;
    }
    // ASCII (nearly every header): words found byte by byte, copied whole.
    // The white space is what `split_whitespace` splits ASCII on.
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0b' | b'\x0c');
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !is_space(bytes[i]) {
            i += 1;
        }
        if i > start {
            if !value.is_empty() {
                value.push(' ');
            }
            // ASCII throughout, so any index is a character boundary.
            value.push_str(&raw[start..i]);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Continue,
    Accept,
    Reject(Reply),
    Tempfail(Reply),
    Discard,
    Quarantine(String),
    Disconnect(Reply),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    AddHeader(Header),
    RemoveHeader(String),
    ReplaceHeader(Header),
    SetSender(String),
    AddRecipient(String),
    RemoveRecipient(String),
    RewriteRecipient(String, String),
    SetRoute(String),
    AddSymbol(String, f64),
    SetTag(String, String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub changes: Vec<Change>,
}

impl Decision {
    /// No objection: the next step decides.
    pub fn next() -> Decision {
        Decision { verdict: Verdict::Continue, reason: None, changes: Vec::new() }
    }
    pub fn accept() -> Decision {
        Decision { verdict: Verdict::Accept, ..Decision::next() }
    }
    pub fn reject(code: u16, enhanced: &str, text: &str) -> Decision {
        Decision {
            verdict: Verdict::Reject(Reply { code, enhanced: enhanced.into(), text: text.into() }),
            reason: Some(text.into()),
            changes: Vec::new(),
        }
    }
    pub fn tempfail(code: u16, enhanced: &str, text: &str) -> Decision {
        Decision {
            verdict: Verdict::Tempfail(Reply { code, enhanced: enhanced.into(), text: text.into() }),
            reason: Some(text.into()),
            changes: Vec::new(),
        }
    }
    pub fn discard() -> Decision {
        Decision { verdict: Verdict::Discard, ..Decision::next() }
    }
    pub fn quarantine(reason: &str) -> Decision {
        Decision { verdict: Verdict::Quarantine(reason.into()), reason: Some(reason.into()), changes: Vec::new() }
    }
    pub fn disconnect(code: u16, enhanced: &str, text: &str) -> Decision {
        Decision {
            verdict: Verdict::Disconnect(Reply { code, enhanced: enhanced.into(), text: text.into() }),
            reason: Some(text.into()),
            changes: Vec::new(),
        }
    }
    pub fn because(mut self, reason: impl Into<String>) -> Decision {
        self.reason = Some(reason.into());
        self
    }
    pub fn with(mut self, change: Change) -> Decision {
        self.changes.push(change);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_without_symbols_scores_zero_not_minus_zero() {
        let mut c = Context::new(Stage::Data);
        assert_eq!(format!("{}", c.score()), "0");
        c.symbols.push(("A".into(), 0.5));
        c.symbols.push(("B".into(), -2.0));
        assert_eq!(c.score(), -1.5);
    }

    #[test]
    fn headers_unfold_as_the_server_shows_them() {
        let h = parse_headers("Received: from x\r\n\tby y;  Mon\r\nno colon here\r\n folded under it\r\n: no name\r\nX-Bin: \u{fffd} ok\r\nTo:\r\nX-Tabs:\t a \t\x0bb \r\n\r\nX-Body: 1\r\n");
        let got: Vec<(&str, &str)> = h.iter().map(|h| (h.name.as_str(), h.value.as_str())).collect();
        assert_eq!(got, vec![("Received", "from x by y; Mon"), ("X-Bin", "\u{fffd} ok"), ("To", ""), ("X-Tabs", "a b")]);
        // The ASCII path gives what split_whitespace gives.
        for raw in ["  a  b ", "\t", "", "a", " x\r\n\ty\r\n", "a\x0cb"] {
            let mut v = String::new();
            push_words(&mut v, raw);
            assert_eq!(v, raw.split_whitespace().collect::<Vec<_>>().join(" "), "{raw:?}");
        }
        let mut c = Context::new(Stage::Data);
        c.set_header_section("Subject: a\r\n b\r\n\r\n".into());
        assert_eq!(c.header("subject"), Some("a b"));
        // header() finds plain values without a parse, and agrees with it.
        let section = "X-Lead: x\r\n\tFrom: folded, not a field\r\nNo colon\r\nFrom : <a@b>\r\nSubject:  two  spaces \r\nTo: x\r\n y\r\nX-U: \u{e9}t\u{e9}\r\nX-Empty:\r\nX-Tab: a\tb\r\n\r\nX-After: no\r\n";
        let parsed = parse_headers(section);
        for name in ["from", "FROM", "subject", "to", "x-u", "x-empty", "x-tab", "x-lead", "x-after", "missing", "no colon"] {
            let expected = parsed.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str());
            let mut c = Context::new(Stage::Data);
            c.set_header_section(section.into());
            assert_eq!(c.header(name), expected, "{name}");
        }
        // Lines that begin with white space or a byte that is not ASCII,
        // names before a space and a colon, values with a vertical tab or
        // a run of spaces: found as the parse finds them.
        let odd = " X-First: lead\r\nSubject : a b\r\n\u{e9}X: 1\r\nX-Vt: a\x0b\r\nX-Run: a  b\r\nX-Sub: c\r\nX-Subject: no\r\n\r\n";
        let parsed = parse_headers(odd);
        for name in ["x-first", "subject", "\u{e9}x", "x-vt", "x-run", "x-sub", "x-subject", "x", "sub"] {
            let expected = parsed.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str());
            let mut c = Context::new(Stage::Data);
            c.set_header_section(odd.into());
            assert_eq!(c.header(name), expected, "{name}");
        }
        assert_eq!(find_plain_header(odd, "subject"), Ok(Some("a b")));
        assert_eq!(find_plain_header(odd, "x-run"), Err(()), "a run of spaces: parsed");
        assert_eq!(find_plain_header(section, "from"), Ok(Some("<a@b>")));
        assert_eq!(find_plain_header(section, "to"), Err(()), "folded: parsed");
        c.set_header_section(String::new());
        assert!(c.headers().is_empty(), "a new section is parsed anew");
    }
}
