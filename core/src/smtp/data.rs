//! The DATA content decoder: finds the one true end of data (`<CRLF>.<CRLF>`),
//! undoes dot-stuffing, and watches for what the SMTP-smuggling family
//! (CVE-2023-51764/5/6) relies on — a bare CR or bare LF. Such a byte never
//! ends DATA; depending on the listener it fails the transaction or is
//! stored as CRLF. It also enforces the message size and the 1000-octet line
//! limit (RFC 5321 §4.5.3.1.6) without ever buffering more than the limit.

use crate::config::BareLineEndings;

/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
pub const MAX_TEXT_LINE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line. `strict` is true when the previous line ended
    /// with a real CRLF (or this is the first line), the only place where a
    /// lone "." can end the data.
    LineStart { strict: bool },
    /// Saw "." at the start of a line.
    Dot { strict: bool },
    /// Saw "." then CR at the start of a line.
    DotCr { strict: bool },
    /// Inside a line.
    Mid,
    /// Inside a line, just after CR.
    Cr,
}

/// What the decoder found wrong with the content, checked at end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    TooLarge,
    BareLineEnding,
    LineTooLong,
}

pub struct DataDecoder {
    state: State,
    body: Vec<u8>,
    /// Size limit for `body` beyond the bytes it already held at creation.
    limit: usize,
    base: usize,
    too_large: bool,
    bare_policy: BareLineEndings,
    saw_bare: bool,
    reject_long_lines: bool,
    line_len: usize,
    long_line: bool,
    /// Octets of content seen (after unstuffing), stored or not.
    pub seen: u64,
}

impl DataDecoder {
    /// `body` may already hold a prefix (the Received: header), which does
    /// not count against `max_size`.
    pub fn new(
        body: Vec<u8>,
        max_size: u64,
        bare_policy: BareLineEndings,
        reject_long_lines: bool,
    ) -> Self {
        let base = body.len();
        DataDecoder {
            state: State::LineStart { strict: true },
            body,
            limit: usize::try_from(max_size).unwrap_or(usize::MAX),
            base,
            too_large: false,
            bare_policy,
            saw_bare: false,
            reject_long_lines,
            line_len: 0,
            long_line: false,
            seen: 0,
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.seen += bytes.len() as u64;
        if self.too_large {
            return;
        }
        if self.body.len() - self.base + bytes.len() > self.limit {
            self.too_large = true;
            // Free what was collected: this message will be refused.
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    fn count_line(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > MAX_TEXT_LINE {
            self.long_line = true;
        }
    }

    fn end_line(&mut self) {
        self.line_len = 0;
    }

    /// A bare CR or LF was seen (the byte itself is `b`).
    fn bare(&mut self, b: u8) {
        self.saw_bare = true;
        match self.bare_policy {
            BareLineEndings::Normalize => {
                self.count_line(1);
                self.emit(b"\r\n");
                self.end_line();
                self.state = State::LineStart { strict: false };
            }
            BareLineEndings::Reject => {
                // Kept as it came; the transaction will be refused anyway.
                self.count_line(1);
                self.emit(&[b]);
                self.state = State::Mid;
            }
        }
    }

    /// Feeds bytes from the wire. Returns `Some(n)` when the end of data was
    /// found after consuming `n` bytes of `input` (the rest belongs to the
    /// command stream); `None` when all of `input` was consumed.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Mid => {
                    // Fast path: copy up to the next CR or LF in one go.
                    let rest = &input[i..];
                    match memchr::memchr2(b'\r', b'\n', rest) {
                        None => {
                            self.count_line(rest.len());
                            self.emit(rest);
                            return None;
                        }
                        Some(p) => {
                            self.count_line(p);
                            self.emit(&rest[..p]);
                            i += p;
                            let b = input[i];
                            i += 1;
                            if b == b'\r' {
                                self.state = State::Cr;
                            } else {
                                self.bare(b'\n');
                            }
                        }
                    }
                }
                State::Cr => {
                    let b = input[i];
                    if b == b'\n' {
                        i += 1;
                        self.count_line(2);
                        self.emit(b"\r\n");
                        self.end_line();
                        self.state = State::LineStart { strict: true };
                    } else {
                        // The CR stood alone; `b` is looked at again in Mid.
                        self.bare(b'\r');
                    }
                }
                State::LineStart { strict } => {
                    if input[i] == b'.' {
                        i += 1;
                        self.count_line(1);
                        self.state = State::Dot { strict };
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot { strict } => {
                    let b = input[i];
                    if b == b'\r' {
                        i += 1;
                        self.state = State::DotCr { strict };
                    } else if b == b'\n' {
                        // A lone "." ended by a bare LF: content, never the end.
                        i += 1;
                        self.emit(b".");
                        self.bare(b'\n');
                    } else {
                        // Dot-stuffing: the leading dot goes, the rest stays.
                        self.state = State::Mid;
                    }
                }
                State::DotCr { strict } => {
                    let b = input[i];
                    if b == b'\n' {
                        i += 1;
                        if strict {
                            return Some(i);
                        }
                        // ".\r\n" after a normalised bare ending: a content line.
                        self.count_line(2);
                        self.emit(b".\r\n");
                        self.end_line();
                        self.state = State::LineStart { strict: true };
                    } else {
                        self.emit(b".");
                        self.bare(b'\r');
                    }
                }
            }
        }
        None
    }

    /// After the end was found: the stored message, or what is wrong with it.
    pub fn finish(self) -> Result<Vec<u8>, DataProblem> {
        if self.too_large {
            Err(DataProblem::TooLarge)
        } else if self.saw_bare && self.bare_policy == BareLineEndings::Reject {
            Err(DataProblem::BareLineEnding)
        } else if self.long_line && self.reject_long_lines {
            Err(DataProblem::LineTooLong)
        } else {
            Ok(self.body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(policy: BareLineEndings, chunks: &[&[u8]]) -> (Option<usize>, Result<Vec<u8>, DataProblem>) {
        let mut d = DataDecoder::new(Vec::new(), 1 << 20, policy, true);
        let mut end = None;
        for (k, c) in chunks.iter().enumerate() {
            if let Some(n) = d.feed(c) {
                end = Some(n + k * 1000);
                break;
            }
        }
        (end, d.finish())
    }

    fn decode(input: &[u8]) -> (Option<usize>, Result<Vec<u8>, DataProblem>) {
        run(BareLineEndings::Reject, &[input])
    }

    #[test]
    fn plain_message_ends_at_crlf_dot_crlf() {
        let (end, body) = decode(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(end, Some(b"Subject: x\r\n\r\nhello\r\n.\r\n".len()));
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\nhello\r\n");
    }

    #[test]
    fn empty_message() {
        let (end, body) = decode(b".\r\n");
        assert_eq!(end, Some(3));
        assert_eq!(body.unwrap(), b"");
    }

    #[test]
    fn dot_stuffing_is_undone() {
        let (end, body) = decode(b"..leading\r\n...two\r\n.\r\n");
        assert!(end.is_some());
        assert_eq!(body.unwrap(), b".leading\r\n..two\r\n");
    }

    #[test]
    fn end_split_across_reads() {
        let input = b"a\r\nb\r\n.\r\n";
        for split in 1..input.len() {
            let mut d = DataDecoder::new(Vec::new(), 100, BareLineEndings::Reject, true);
            assert_eq!(d.feed(&input[..split]), None, "split {split}");
            let n = d.feed(&input[split..]).expect("end found");
            assert_eq!(split + n, input.len());
            assert_eq!(d.finish().unwrap(), b"a\r\nb\r\n");
        }
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        for evil in [
            &b"a\n.\nMAIL FROM:<x>\r\n"[..],
            b"a\n.\r\nMAIL FROM:<x>\r\n",
            b"a\r\n.\nMAIL FROM:<x>\r\n",
            b"a\r.\rMAIL FROM:<x>\r\n",
            b"a\r.\r\nMAIL FROM:<x>\r\n",
            b"a\r\n.\rMAIL FROM:<x>\r\n",
        ] {
            for policy in [BareLineEndings::Reject, BareLineEndings::Normalize] {
                let mut d = DataDecoder::new(Vec::new(), 1000, policy, true);
                assert_eq!(d.feed(evil), None, "{:?} ended DATA under {policy:?}", String::from_utf8_lossy(evil));
                // The real end still works afterwards.
                assert_eq!(d.feed(b"\r\n.\r\n"), Some(5));
                let r = d.finish();
                match policy {
                    BareLineEndings::Reject => assert_eq!(r, Err(DataProblem::BareLineEnding)),
                    BareLineEndings::Normalize => {
                        let body = r.unwrap();
                        // Every line ending in the stored message is CRLF.
                        for (i, b) in body.iter().enumerate() {
                            if *b == b'\n' {
                                assert!(i > 0 && body[i - 1] == b'\r', "bare LF stored: {body:?}");
                            }
                            if *b == b'\r' {
                                assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR stored: {body:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn normalize_converts_bare_endings() {
        let (end, body) = run(BareLineEndings::Normalize, &[b"a\nb\rc\r\n.\r\n"]);
        assert!(end.is_some());
        assert_eq!(body.unwrap(), b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn size_limit() {
        let mut d = DataDecoder::new(b"Received: x\r\n".to_vec(), 10, BareLineEndings::Reject, true);
        assert_eq!(d.feed(b"0123456789\r\n.\r\n"), Some(15));
        assert_eq!(d.finish(), Err(DataProblem::TooLarge));
        let mut d = DataDecoder::new(b"Received: x\r\n".to_vec(), 12, BareLineEndings::Reject, true);
        assert_eq!(d.feed(b"0123456789\r\n.\r\n"), Some(15));
        assert_eq!(d.finish().unwrap(), b"Received: x\r\n0123456789\r\n");
    }

    #[test]
    fn line_length_limit() {
        let mut ok = vec![b'x'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(decode(&ok).1.is_ok());
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&long).1, Err(DataProblem::LineTooLong));
        let mut d = DataDecoder::new(Vec::new(), 1 << 20, BareLineEndings::Reject, false);
        assert!(d.feed(&long).is_some());
        assert!(d.finish().is_ok());
    }

    #[test]
    fn byte_at_a_time_matches_whole() {
        let input = b"A: b\r\n..x\r\n\r\nbody\r\n.\r\n";
        let mut d = DataDecoder::new(Vec::new(), 1000, BareLineEndings::Reject, true);
        let mut ended = false;
        for (i, b) in input.iter().enumerate() {
            if let Some(n) = d.feed(std::slice::from_ref(b)) {
                assert_eq!(n, 1);
                assert_eq!(i + 1, input.len());
                ended = true;
            }
        }
        assert!(ended);
        assert_eq!(d.finish().unwrap(), b"A: b\r\n.x\r\n\r\nbody\r\n");
    }
}
