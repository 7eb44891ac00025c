//! Queue identifiers: 20 upper-case hex digits, the first 12 the
//! millisecond clock, the last 8 a per-process counter that starts at a
//! random value. They sort by arrival, are unique across restarts, and are
//! safe to print anywhere.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: OnceLock<AtomicU32> = OnceLock::new();

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn new_id() -> String {
    let c = COUNTER.get_or_init(|| AtomicU32::new(rand::random()));
    let n = c.fetch_add(1, Ordering::Relaxed);
    format!("{:012X}{:08X}", now_ms() & 0xFFFF_FFFF_FFFF, n)
}

/// Whether `s` has the form of a queue id (used to refuse odd CLI input).
pub fn is_valid(s: &str) -> bool {
    s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_valid() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = new_id();
            assert!(is_valid(&id), "{id}");
            assert!(seen.insert(id));
        }
        assert!(!is_valid("../../etc/passwd"));
    }
}
