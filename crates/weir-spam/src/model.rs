//! The trained model file and its trainer.
//!
//! The file is read in place, with no parsing beyond a header check, so a
//! plugin instance (one per SMTP session) can use it at the cost of a copy:
//!
//! ```text
//! "WEIRSPAM"  magic, 8 octets
//! version     u32 LE (1)
//! ham         u32 LE  messages trained as ham
//! spam        u32 LE  messages trained as spam
//! count       u32 LE  entries
//! entries     count × { token hash u64 LE, ham u32 LE, spam u32 LE },
//!             sorted by hash
//! ```
//!
//! A token's counts are the numbers of ham and spam messages it occurs in.
//! Tokens are stored as 64-bit FNV-1a hashes: no text of the training mail
//! is in the file.

use std::collections::HashMap;

const MAGIC: &[u8; 8] = b"WEIRSPAM";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 * 4;
const ENTRY: usize = 16;

/// 64-bit FNV-1a of a token.
pub fn token_hash(token: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in token.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A model file, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Model<'a> {
    pub ham: u32,
    pub spam: u32,
    entries: &'a [u8],
}

impl<'a> Model<'a> {
    /// Checks the header and the length; does not copy.
    pub fn parse(bytes: &'a [u8]) -> Result<Model<'a>, String> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err("not a Weir spam model (bad magic); train one with `weir spam train`".into());
        }
        let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let version = word(8);
        if version != VERSION {
            return Err(format!("spam model version {version} is not supported (expected {VERSION})"));
        }
        let (ham, spam, count) = (word(12), word(16), word(20) as usize);
        let entries = &bytes[HEADER..];
        if count.checked_mul(ENTRY) != Some(entries.len()) {
            return Err(format!("spam model is truncated or padded: {count} entries declared, {} octets of entries", entries.len()));
        }
        if ham == 0 || spam == 0 {
            return Err(format!("spam model was trained on {ham} ham and {spam} spam messages; it needs both"));
        }
        Ok(Model { ham, spam, entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len() / ENTRY
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&self, i: usize) -> (u64, u32, u32) {
        let e = &self.entries[i * ENTRY..(i + 1) * ENTRY];
        let mut h = [0u8; 8];
        h.copy_from_slice(&e[..8]);
        (
            u64::from_le_bytes(h),
            u32::from_le_bytes([e[8], e[9], e[10], e[11]]),
            u32::from_le_bytes([e[12], e[13], e[14], e[15]]),
        )
    }

    /// (ham, spam) message counts of a token, if it was seen in training.
    pub fn counts(&self, token: &str) -> Option<(u32, u32)> {
        let h = token_hash(token);
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (mh, ham, spam) = self.entry(mid);
            match mh.cmp(&h) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some((ham, spam)),
            }
        }
        None
    }
}

/// Counts tokens of training messages and writes a model file.
#[derive(Debug, Default, Clone)]
pub struct Trainer {
    ham: u32,
    spam: u32,
    counts: HashMap<u64, (u32, u32)>,
}

impl Trainer {
    pub fn new() -> Trainer {
        Trainer::default()
    }

    /// Adds one message's tokens (each counted once per message).
    pub fn add(&mut self, tokens: &[String], is_spam: bool) {
        if is_spam {
            self.spam += 1;
        } else {
            self.ham += 1;
        }
        for t in tokens {
            let e = self.counts.entry(token_hash(t)).or_default();
            if is_spam {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
    }

    pub fn messages(&self) -> (u32, u32) {
        (self.ham, self.spam)
    }

    /// The model file. Tokens seen in fewer than `min_messages` messages
    /// are left out (1 keeps every token).
    pub fn to_bytes(&self, min_messages: u32) -> Vec<u8> {
        let mut entries: Vec<(u64, (u32, u32))> =
            self.counts.iter().filter(|(_, (h, s))| h + s >= min_messages.max(1)).map(|(k, v)| (*k, *v)).collect();
        entries.sort_unstable_by_key(|e| e.0);
        let mut out = Vec::with_capacity(HEADER + entries.len() * ENTRY);
        out.extend_from_slice(MAGIC);
        for w in [VERSION, self.ham, self.spam, entries.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for (h, (ham, spam)) in entries {
            out.extend_from_slice(&h.to_le_bytes());
            out.extend_from_slice(&ham.to_le_bytes());
            out.extend_from_slice(&spam.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn round_trip_and_lookup() {
        let mut t = Trainer::new();
        t.add(&toks("cheap pills now"), true);
        t.add(&toks("cheap meeting notes"), false);
        t.add(&toks("meeting agenda"), false);
        let bytes = t.to_bytes(1);
        let m = Model::parse(&bytes).expect("parses");
        assert_eq!((m.ham, m.spam), (2, 1));
        assert_eq!(m.counts("cheap"), Some((1, 1)));
        assert_eq!(m.counts("meeting"), Some((2, 0)));
        assert_eq!(m.counts("pills"), Some((0, 1)));
        assert_eq!(m.counts("absent"), None);
        // Pruning drops tokens seen in a single message.
        let pruned = t.to_bytes(2);
        let m = Model::parse(&pruned).expect("parses");
        assert_eq!(m.len(), 2);
        assert_eq!(m.counts("pills"), None);
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(Model::parse(b"").is_err());
        assert!(Model::parse(b"WEIRSPAM\x02\0\0\0\x01\0\0\0\x01\0\0\0\0\0\0\0").unwrap_err().contains("version"));
        let mut t = Trainer::new();
        t.add(&toks("a b"), true);
        t.add(&toks("c"), false);
        let mut b = t.to_bytes(1);
        b.pop();
        assert!(Model::parse(&b).unwrap_err().contains("truncated"));
        let mut only_spam = Trainer::new();
        only_spam.add(&toks("a"), true);
        assert!(Model::parse(&only_spam.to_bytes(1)).unwrap_err().contains("needs both"));
    }
}
