//! Small helpers most policy plugins need: address parts, domain lists,
//! IP networks, the address in a From: header, sliding-window rate
//! counters on the kv store, and counting a byte in a body.

use std::net::IpAddr;

/// The domain of an address (lowercased); empty for the null sender.
pub fn domain_of(address: &str) -> String {
    address.rsplit_once('@').map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase()).unwrap_or_default()
}

/// The local part of an address.
pub fn local_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(l, _)| l).unwrap_or(address)
}

/// Whether `domain` is in `list`: entries match exactly, and an entry
/// starting with "." matches every subdomain ("." + "example.com").
pub fn domain_in(domain: &str, list: &[String]) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    list.iter().any(|e| {
        let e = e.to_ascii_lowercase();
        match e.strip_prefix('.') {
            Some(parent) => d.ends_with(&e) || d == parent,
            None => d == e,
        }
    })
}

/// An IP network such as 192.0.2.0/24 or 2001:db8::/32 (a bare address is
/// a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub len: u8,
}

impl Network {
    pub fn parse(s: &str) -> Result<Network, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("{s:?} is not an IP network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l.trim().parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(|| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Network { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    }
}

/// Parses a list of networks, keeping the good ones and the errors apart.
pub fn networks(list: &[String]) -> (Vec<Network>, Vec<String>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for s in list {
        match Network::parse(s) {
            Ok(n) => good.push(n),
            Err(e) => bad.push(e),
        }
    }
    (good, bad)
}

/// Whether the address text `ip` is in any of `nets`.
pub fn ip_in(ip: &str, nets: &[Network]) -> bool {
    ip.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|a| nets.iter().any(|n| n.contains(a)))
}

/// The addresses in an address-list header value such as
/// `"Ann Example" <ann@example.com>, bob@example.org` (lowercased domains).
pub fn header_addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_quote = false;
    let mut depth = 0;
    let mut cur = String::new();
    let mut parts = Vec::new();
    for c in value.chars() {
        match c {
            '"' if depth == 0 => in_quote = !in_quote,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote && depth > 0 => depth -= 1,
            ',' if !in_quote && depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        if depth == 0 && c != ')' {
            cur.push(c);
        }
    }
    parts.push(cur);
    for p in parts {
        let addr = match (p.rfind('<'), p.rfind('>')) {
            (Some(a), Some(b)) if a < b => p[a + 1..b].trim().to_string(),
            _ => p.split_whitespace().find(|w| w.contains('@')).unwrap_or("").trim_matches('"').to_string(),
        };
        if let Some((l, d)) = addr.rsplit_once('@') {
            if !l.is_empty() && !d.is_empty() {
                out.push(format!("{l}@{}", d.to_ascii_lowercase()));
            }
        }
    }
    out
}

/// Adds `n` to a sliding-window counter in the kv store (grants: kv,
/// clock) and returns the estimated count over the last `window_secs`,
/// including `n`. Two fixed buckets are kept and the previous one is
/// weighted by how much of it still lies in the window.
pub fn window_add(key: &str, window_secs: u64, n: i64) -> f64 {
    let window_ms = window_secs.max(1) * 1000;
    let now = crate::host::now_ms();
    let bucket = now / window_ms;
    let ttl = u32::try_from(window_secs.saturating_mul(2)).unwrap_or(u32::MAX);
    let cur = if n != 0 {
        crate::host::kv::incr(&format!("{key}#{bucket}"), n, Some(ttl))
    } else {
        read_counter(&format!("{key}#{bucket}"))
    };
    let prev = read_counter(&format!("{key}#{}", bucket.saturating_sub(1)));
    let elapsed = (now % window_ms) as f64 / window_ms as f64;
    cur as f64 + prev as f64 * (1.0 - elapsed)
}

/// How many times `byte` occurs in `haystack` (e.g. `b'\n'` in a body for
/// its lines), sixteen bytes at a time in a plugin (WebAssembly's vector
/// instructions), eight natively. A byte-by-byte loop costs about half
/// a nanosecond a byte in a plugin (the compiled loop checks the time
/// budget at every turn), several microseconds for a 10 KB message.
pub fn count_byte(haystack: &[u8], byte: u8) -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        simd::count_byte(haystack, byte)
    }
    #[cfg(not(target_arch = "wasm32"))]
    count_byte_by_words(haystack, byte)
}

/// [`count_byte`] eight bytes at a time, in plain integer operations.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
fn count_byte_by_words(haystack: &[u8], byte: u8) -> usize {
    let mut words = haystack.chunks_exact(8);
    let n: usize = words.by_ref().map(|w| matches_in_word(w, byte).count_ones() as usize).sum();
    n + words.remainder().iter().filter(|&&b| b == byte).count()
}

/// The high bit of each byte of `word` (eight bytes, read little-endian)
/// that is `byte`, and no other bit.
fn matches_in_word(word: &[u8], byte: u8) -> u64 {
    const LOW7: u64 = u64::from_le_bytes([0x7f; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let mut b = [0u8; 8];
    b.copy_from_slice(word);
    // A byte of x is zero exactly where `byte` was. For each byte v,
    // (v & 0x7f) + 0x7f sets its high bit when its low seven bits are not
    // all zero (and cannot carry into the next byte); or-ing v in adds its
    // own high bit: the high bit stays clear only where v == 0.
    let x = u64::from_le_bytes(b) ^ u64::from_le_bytes([byte; 8]);
    !(((x & LOW7) + LOW7) | x) & HIGH
}

/// WebAssembly's 128-bit vector instructions, in this function only (the
/// plugin is not built for simd128 as a whole: LLVM's vectorising of short
/// loops measured slower). Every engine Weir runs has them; wasmtime turns
/// them into SSE/AVX or NEON.
#[cfg(target_arch = "wasm32")]
mod simd {
    use core::arch::wasm32::*;

    /// Sixteen bytes a step: a lane of `acc` counts the matches in its
    /// column, for at most 255 steps before it is added up.
    #[target_feature(enable = "simd128")]
    pub fn count_byte(haystack: &[u8], byte: u8) -> usize {
        let pattern = u8x16_splat(byte);
        let mut blocks = haystack.chunks_exact(16);
        let mut total = 0;
        loop {
            let mut acc = u8x16_splat(0);
            let mut steps = 0;
            for b in blocks.by_ref().take(255) {
                // SAFETY: `b` is 16 readable bytes; v128.load needs no alignment.
                let v = unsafe { v128_load(b.as_ptr().cast::<v128>()) };
                // A match is 0xff, -1: subtracting it counts one.
                acc = u8x16_sub(acc, u8x16_eq(v, pattern));
                steps += 1;
            }
            let pairs = u16x8_extadd_pairwise_u8x16(acc);
            let quads = u32x4_extadd_pairwise_u16x8(pairs);
            total += (u32x4_extract_lane::<0>(quads) + u32x4_extract_lane::<1>(quads) + u32x4_extract_lane::<2>(quads) + u32x4_extract_lane::<3>(quads)) as usize;
            if steps < 255 {
                break;
            }
        }
        total + blocks.remainder().iter().filter(|&&b| b == byte).count()
    }
}

/// Where `byte` first occurs in `haystack`, eight bytes at a time (see
/// [`count_byte`]): a line's end in a header section or a body, faster
/// than `memchr`, which wasm32 runs four bytes at a time.
pub fn find_byte(haystack: &[u8], byte: u8) -> Option<usize> {
    let mut words = haystack.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        // Little-endian: the lowest bit set marks the first match.
        let found = matches_in_word(w, byte);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words.remainder().iter().position(|&b| b == byte).map(|i| at + i)
}

/// The lines of `text`, each with its line feed: what
/// `text.split_inclusive('\n')` gives, found with [`find_byte`].
pub fn lines_inclusive(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // A line feed is one byte of its own in UTF-8: the cut is at a
        // character boundary.
        let end = find_byte(rest.as_bytes(), b'\n').map_or(rest.len(), |i| i + 1);
        let (line, after) = rest.split_at(end);
        rest = after;
        Some(line)
    })
}

fn read_counter(key: &str) -> i64 {
    crate::host::kv::get(key).and_then(|v| String::from_utf8(v).ok()?.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_domains() {
        let n = Network::parse("192.0.2.0/24").unwrap();
        assert!(n.contains("192.0.2.9".parse().unwrap()));
        assert!(n.contains("::ffff:192.0.2.9".parse().unwrap()));
        assert!(!n.contains("192.0.3.9".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(domain_in("Mail.Example.COM", &[".example.com".into()]));
        assert!(!domain_in("badexample.com", &[".example.com".into()]));
        assert!(domain_in("example.com", &["example.com".into()]));
    }

    #[test]
    fn count_byte_matches_a_byte_loop() {
        // Lengths around the word size, the needle at mixed positions, and bytes
        // whose other bits could carry (0x80, 0xff, the needle ± 1).
        let bytes = [b'\n', b'\n' ^ 0x80, 0x0b, 0x09, 0x00, 0x7f, 0x80, 0xff, b'a'];
        for len in 0..40 {
            for seed in 0..bytes.len() {
                let hay: Vec<u8> = (0..len).map(|i| bytes[(i * 7 + seed * 3 + i / 5) % bytes.len()]).collect();
                for needle in [b'\n', 0x00, 0x80, 0xff] {
                    let want = hay.iter().filter(|&&b| b == needle).count();
                    assert_eq!(count_byte_by_words(&hay, needle), want, "{hay:?} {needle}");
                }
            }
        }
        assert_eq!(count_byte(&[b'\n'; 1000], b'\n'), 1000);
        assert_eq!(count_byte(b"line\r\nline\r\n", b'\n'), 2);
    }

    #[test]
    fn find_byte_and_lines_match_the_std_ones() {
        let bytes = [b'\n', b'\n' ^ 0x80, 0x0b, 0x09, 0x00, 0x7f, 0x80, 0xff, b'a', b'a', b'a'];
        for len in 0..40 {
            for seed in 0..bytes.len() {
                let hay: Vec<u8> = (0..len).map(|i| bytes[(i * 7 + seed * 3 + i / 5) % bytes.len()]).collect();
                for needle in [b'\n', 0x00, 0x80, 0xff, b'z'] {
                    assert_eq!(find_byte(&hay, needle), hay.iter().position(|&b| b == needle), "{hay:?} {needle}");
                }
            }
        }
        for text in ["", "\n", "a", "a\n", "a\r\nb", "\n\nx\n", "From: é\r\n\tmore\r\n\r\nbody without end", &"long line ".repeat(20)] {
            let want: Vec<&str> = text.split_inclusive('\n').collect();
            assert_eq!(lines_inclusive(text).collect::<Vec<_>>(), want, "{text:?}");
        }
    }

    #[test]
    fn header_address_lists() {
        assert_eq!(header_addresses(r#""Doe, Ann" <ann@Example.COM>, bob@example.org (Bob)"#), vec!["ann@example.com", "bob@example.org"]);
        assert_eq!(header_addresses("undisclosed-recipients:;"), Vec::<String>::new());
    }
}
