//! The message's header block as plugins see it (unfolded name/value
//! pairs) and the header changes they may ask for: add, remove, replace.
//! Weir's own Received: header (the first `keep` octets) is never touched.

use std::borrow::Cow;

use crate::plugin::wit;

/// Where a message's header section ends: just after the CRLF of its last
/// field (the whole message when there is no empty line).
pub fn header_block_end(body: &[u8]) -> usize {
    // One searcher for the life of the process: building it (choosing and
    // setting up a vector searcher) cost more than the search itself in a
    // section of a few hundred octets.
    static EMPTY_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    EMPTY_LINE.find(body).map(|p| p + 2).unwrap_or(body.len())
}

/// `bytes` as text, bytes that are not UTF-8 replaced. Checking UTF-8
/// first is faster than `String::from_utf8_lossy`'s chunk-by-chunk walk
/// (0.4 µs a message in a profile of the five-plugin pipeline), and
/// almost all mail passes.
pub(crate) fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Header fields: (name, raw field including its CRLF and continuation
/// lines), borrowed from the block: only what a change replaces is copied.
fn fields(block: &[u8]) -> Vec<(Cow<'_, str>, Cow<'_, [u8]>)> {
    let mut out: Vec<(Cow<'_, str>, Cow<'_, [u8]>)> = Vec::new();
    // Where the current field began.
    let mut field_start = 0;
    let mut pos = 0;
    // Each line with its line feed (the last one may lack it), found with
    // memchr rather than a byte-by-byte split.
    let last = block.last().is_some_and(|b| *b != b'\n').then_some(block.len());
    for end in memchr::memchr_iter(b'\n', block).map(|i| i + 1).chain(last) {
        let line = &block[pos..end];
        if (line.starts_with(b" ") || line.starts_with(b"\t")) && !out.is_empty() {
            if let Some(last) = out.last_mut() {
                last.1 = Cow::Borrowed(&block[field_start..end]);
            }
            pos = end;
            continue;
        }
        let name = match memchr::memchr(b':', line) {
            Some(p) => match lossy(&line[..p]) {
                Cow::Borrowed(n) => Cow::Borrowed(n.trim()),
                Cow::Owned(n) => Cow::Owned(n.trim().to_string()),
            },
            None => Cow::Borrowed(""),
        };
        out.push((name, Cow::Borrowed(line)));
        field_start = pos;
        pos = end;
    }
    out
}

/// The headers, unfolded, exactly as the plugin SDK shows them to plugins:
/// the header section plugins are told, through the SDK's own parser.
/// `weir policy test` checks a fixture's expected headers with it.
pub fn parse(body: &[u8]) -> Vec<weir_plugin_sdk::Header> {
    weir_plugin_sdk::parse_headers(&crate::plugin::event::header_section(body))
}

/// Whether any of `changes` adds, removes or replaces a header.
pub fn changes_headers(changes: &[(&str, wit::Change)]) -> bool {
    changes
        .iter()
        .any(|(_, c)| matches!(c, wit::Change::AddHeader(_) | wit::Change::RemoveHeader(_) | wit::Change::ReplaceHeader(_)))
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 76 && n.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// A value that is already folded correctly: every CRLF is followed by
/// whitespace, and there is no other CR or LF. Such values (a
/// DKIM-Signature, whose folding is part of what was signed) are kept as
/// they are.
fn prefolded(value: &str) -> bool {
    let b = value.as_bytes();
    // Most values have no CR at all: one memchr says so. (With one, the
    // check below makes every CR the start of a CRLF.)
    memchr::memchr(b'\r', b).is_some()
        && b.iter().enumerate().all(|(i, c)| match c {
            b'\r' => b.get(i + 1) == Some(&b'\n') && matches!(b.get(i + 2), Some(b' ' | b'\t')),
            b'\n' => i > 0 && b[i - 1] == b'\r',
            c => !c.is_ascii_control() || *c == b'\t',
        })
}

/// A header field as it will be written: CR/LF in the value cannot inject
/// fields, long values are folded.
fn field(name: &str, value: &str) -> Vec<u8> {
    if prefolded(value) {
        return format!("{name}: {value}\r\n").into_bytes();
    }
    // Printable ASCII (most values plugins add) has nothing to replace.
    let clean: Cow<'_, str> = if value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(value.chars().map(|c| if c == '\r' || c == '\n' || (c.is_control() && c != '\t') { ' ' } else { c }).collect())
    };
    let mut out = String::with_capacity(name.len() + value.len() + 8);
    out.push_str(name);
    out.push(':');
    let mut line_len = out.len();
    // The words between spaces (tabs stay inside words), found byte by
    // byte: `str::split(' ')` made a memchr call for each word.
    let bytes = clean.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        if bytes[start] == b' ' {
            start += 1;
            continue;
        }
        let end = bytes[start..].iter().position(|&b| b == b' ').map_or(bytes.len(), |i| start + i);
        // Cut at ASCII spaces: character boundaries.
        let word = &clean[start..end];
        start = end;
        if line_len + 1 + word.len() > 78 && line_len > name.len() + 1 {
            out.push_str("\r\n\t");
            line_len = 1;
        } else {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += word.len();
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Applies header changes to the message; `keep` octets at the front
/// (Weir's Received: header) stay first and unchanged. New fields go right
/// after them; a replaced field takes the place of the first it replaces.
/// Only the header section is rewritten: the body after it stays in its
/// buffer, moved along if the section's length changed, not copied into a
/// new one.
pub fn apply(mut body: Vec<u8>, keep: usize, changes: &[(&str, wit::Change)]) -> Vec<u8> {
    let relevant: Vec<&wit::Change> = changes
        .iter()
        .map(|(_, c)| c)
        .filter(|c| matches!(c, wit::Change::AddHeader(_) | wit::Change::RemoveHeader(_) | wit::Change::ReplaceHeader(_)))
        .collect();
    if relevant.is_empty() {
        return body;
    }
    let keep = keep.min(body.len());
    let end = header_block_end(&body[keep..]) + keep;
    let mut fs = fields(&body[keep..end]);
    let mut added: Vec<Vec<u8>> = Vec::new();
    for c in relevant {
        match c {
            wit::Change::AddHeader(h) if valid_name(&h.name) => added.push(field(&h.name, &h.value)),
            wit::Change::RemoveHeader(n) => fs.retain(|(name, _)| !name.eq_ignore_ascii_case(n)),
            wit::Change::ReplaceHeader(h) if valid_name(&h.name) => {
                let new = field(&h.name, &h.value);
                match fs.iter().position(|(name, _)| name.eq_ignore_ascii_case(&h.name)) {
                    Some(i) => {
                        fs[i] = (Cow::Owned(h.name.clone()), Cow::Owned(new));
                        let mut k = 0;
                        fs.retain(|(name, _)| {
                            let drop = name.eq_ignore_ascii_case(&h.name) && k > i;
                            k += 1;
                            !drop
                        });
                    }
                    None => added.push(new),
                }
            }
            other => tracing::warn!(change = ?other, "header change with an invalid field name ignored"),
        }
    }
    let mut section = Vec::with_capacity(end - keep + added.iter().map(Vec::len).sum::<usize>());
    for a in added {
        section.extend_from_slice(&a);
    }
    for (_, raw) in fs {
        section.extend_from_slice(&raw);
    }
    // Move the rest of the message to where the new section ends, then
    // copy the section in (not `Vec::splice`, which copies octet by octet).
    let (len, new_end) = (body.len(), keep + section.len());
    if new_end != end {
        if new_end > end {
            body.resize(len + (new_end - end), 0);
        }
        body.copy_within(end..len, new_end);
        body.truncate(len - end + new_end);
    }
    body[keep..new_end].copy_from_slice(&section);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(c: wit::Change) -> (&'static str, wit::Change) {
        ("p", c)
    }

    #[test]
    fn prefolded_values_are_kept_and_injection_is_not() {
        assert_eq!(field("DKIM-Signature", "v=1; a=x;\r\n\tb=abc"), b"DKIM-Signature: v=1; a=x;\r\n\tb=abc\r\n");
        let injected = String::from_utf8(field("X-A", "a\r\nBcc: evil@example.com")).unwrap();
        assert!(!injected.contains("\r\nBcc"), "{injected:?}");
        let trailing = String::from_utf8(field("X-A", "a\r\n\t")).unwrap();
        assert!(trailing.ends_with("\r\n") && trailing.matches("\r\n").count() <= 2, "{trailing:?}");
    }

    #[test]
    fn lossy_replaces_only_what_is_not_utf8() {
        assert!(matches!(lossy("Subject: café\r\n".as_bytes()), Cow::Borrowed("Subject: café\r\n")));
        assert_eq!(lossy(b"X-Bin: \xff ok"), "X-Bin: \u{fffd} ok");
    }

    #[test]
    fn values_fold_at_words_whether_printable_ascii_or_not() {
        let words = "word ".repeat(20);
        for (value, first) in [(words.trim_end().to_string(), "word"), (format!("café {}", words.trim_end()), "café")] {
            let f = String::from_utf8(field("X-Long", &value)).unwrap();
            let lines: Vec<&str> = f.split("\r\n").collect();
            assert!(lines.len() > 2 && lines.iter().all(|l| l.len() <= 78), "{f:?}");
            assert!(lines[0].starts_with(&format!("X-Long: {first} ")) && lines[1].starts_with("\tword"), "{f:?}");
            assert_eq!(f.split_whitespace().skip(1).collect::<Vec<_>>().join(" "), value, "nothing but the folding changes");
        }
        assert_eq!(field("X-Tab", "a\tb  c "), b"X-Tab: a\tb c\r\n");
    }

    #[test]
    fn fields_cover_the_block_whatever_its_last_line() {
        for block in [&b""[..], b"A: 1\r\n", b"A: 1\r\n b\r\nB: 2", b"\r\nA: 1\n\tx\nno colon\n", b"A: 1\r\nB"] {
            let fs = fields(block);
            let whole: Vec<u8> = fs.iter().flat_map(|(_, raw)| raw.iter().copied()).collect();
            assert_eq!(whole, block, "{:?}", String::from_utf8_lossy(block));
            // What split_inclusive makes of the lines, continuations joined.
            let starts = block.split_inclusive(|b| *b == b'\n').filter(|l| !(l.starts_with(b" ") || l.starts_with(b"\t"))).count();
            assert_eq!(fs.len(), starts, "{:?}", String::from_utf8_lossy(block));
        }
        let names: Vec<String> = fields(b"A: 1\r\n b\r\nB: 2").into_iter().map(|(n, _)| n.into_owned()).collect();
        assert_eq!(names, ["A", "B"]);
    }

    #[test]
    fn parse_unfolds() {
        let h = parse(b"Subject: a\r\n b\r\nFrom: x@y\r\n\r\nbody");
        assert_eq!(h[0].value, "a b");
        assert_eq!(h[1].name, "From");
        // Not UTF-8: replaced, then parsed by the SDK's rules.
        let h = parse(b"Received: from x\r\n\tby y;  Mon\r\nno colon here\r\n folded under it\r\n: no name\r\nX-Bin: \xff ok\r\nTo:\r\nX-Tabs:\t a \t\x0bb \r\n\r\nX-Body: 1\r\n");
        let got: Vec<(&str, &str)> = h.iter().map(|h| (h.name.as_str(), h.value.as_str())).collect();
        assert_eq!(got, vec![("Received", "from x by y; Mon"), ("X-Bin", "\u{fffd} ok"), ("To", ""), ("X-Tabs", "a b")]);
    }

    #[test]
    fn the_body_stays_in_its_buffer() {
        let mut msg = b"Received: mine\r\nX-Old: 1\r\nSubject: hi\r\n\r\n".to_vec();
        msg.extend(std::iter::repeat_n(b'x', 100_000));
        let (before, len) = (msg.as_ptr(), msg.len());
        let out = apply(msg, 16, &[ch(wit::Change::RemoveHeader("X-Old".into()))]);
        assert_eq!(out.as_ptr(), before, "a shorter section: the body moves up in the same buffer");
        assert_eq!(out.len(), len - b"X-Old: 1\r\n".len());
        assert!(out.starts_with(b"Received: mine\r\nSubject: hi\r\n\r\nxxx") && out.ends_with(b"xxx"));
        // A longer section: the body moves down, whole.
        let out = apply(out, 16, &[ch(wit::Change::AddHeader(wit::Header { name: "X-New".into(), value: "1".into() }))]);
        assert_eq!(out.len(), len - b"X-Old: 1\r\n".len() + b"X-New: 1\r\n".len());
        assert!(out.starts_with(b"Received: mine\r\nX-New: 1\r\nSubject: hi\r\n\r\nxxx"));
        assert!(out[out.len() - 100_000..].iter().all(|&b| b == b'x'));
    }

    #[test]
    fn add_remove_replace() {
        let msg = b"Received: mine\r\nX-Old: 1\r\nSubject: hi\r\nX-Old: 2\r\n\r\nbody\r\nX-Old: not a header\r\n".to_vec();
        let keep = b"Received: mine\r\n".len();
        let out = apply(
            msg,
            keep,
            &[
                ch(wit::Change::AddHeader(wit::Header { name: "X-Added".into(), value: "yes\r\nBcc: evil@x".into() })),
                ch(wit::Change::RemoveHeader("x-old".into())),
                ch(wit::Change::ReplaceHeader(wit::Header { name: "Subject".into(), value: "[SPAM] hi".into() })),
            ],
        );
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s, "Received: mine\r\nX-Added: yes Bcc: evil@x\r\nSubject: [SPAM] hi\r\n\r\nbody\r\nX-Old: not a header\r\n");
    }

    #[test]
    fn untouched_fields_stay_byte_for_byte() {
        let msg = b"Received: mine\r\nDKIM-Signature: v=1;\r\n\tb=abc\r\nX-\xffBin: v\r\nX-Dup: 1\r\n  cont\r\nX-Dup: 2\r\n\r\nbody".to_vec();
        let keep = b"Received: mine\r\n".len();
        let replace = ch(wit::Change::ReplaceHeader(wit::Header { name: "x-dup".into(), value: "new".into() }));
        let out = apply(msg, keep, &[replace, ch(wit::Change::RemoveHeader("X-Absent".into()))]);
        assert_eq!(out, b"Received: mine\r\nDKIM-Signature: v=1;\r\n\tb=abc\r\nX-\xffBin: v\r\nx-dup: new\r\n\r\nbody".to_vec());
    }
}
