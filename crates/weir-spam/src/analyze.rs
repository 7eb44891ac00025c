//! One parse of a message into what the scorer needs: the classifier's
//! tokens (words of the decoded text parts, a few header fields, URL hosts)
//! and the facts the rules look at (Date and Message-ID present, From and
//! Reply-To, HTML-only, links, GTUBE).

use std::collections::HashSet;

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// The GTUBE test string (SpamAssassin's "EICAR for spam").
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// Text beyond this many octets per part is not tokenised (it changes a
/// score little and would cost time on large messages).
const MAX_TEXT_PER_PART: usize = 128 * 1024;
/// Parts looked at, at most.
const MAX_PARTS: usize = 64;

/// A link in an HTML part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The host of the href, lower-case (None: not an http(s) URL).
    pub host: Option<String>,
    /// The host a URL-looking anchor text shows, if it shows one.
    pub shown_host: Option<String>,
}

/// What the rules and the classifier see of one message.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// The classifier's tokens, each once.
    pub tokens: Vec<String>,
    /// mail-parser could make sense of it at all.
    pub parsed: bool,
    pub has_date: bool,
    pub has_message_id: bool,
    pub subject: Option<String>,
    /// Address of the (first) From: mailbox, lower-case.
    pub from: Option<String>,
    /// Address of the (first) Reply-To: mailbox, lower-case.
    pub reply_to: Option<String>,
    /// Sent through a mailing list (List-* headers, Precedence: list).
    pub is_list: bool,
    pub has_text_part: bool,
    pub has_html_part: bool,
    /// Octets of decoded text (HTML converted to text).
    pub text_len: usize,
    pub links: Vec<Link>,
    /// An HTML form or script.
    pub html_form: bool,
    /// Hosts of every http(s) URL in the text parts and hrefs.
    pub url_hosts: Vec<String>,
    pub gtube: bool,
}

/// The domain part of an address, lower-case.
pub fn domain_of(addr: &str) -> Option<&str> {
    addr.rsplit_once('@').map(|(_, d)| d.trim_end_matches('>')).filter(|d| !d.is_empty())
}

/// The last two labels of a host name ("mail.example.com" → "example.com"),
/// the host itself for IP literals. Good enough to compare two hosts
/// without a public-suffix list.
pub fn base_domain(host: &str) -> &str {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host;
    }
    let mut dots = host.rmatch_indices('.');
    match (dots.next(), dots.next()) {
        (Some(_), Some((i, _))) => &host[i + 1..],
        _ => host,
    }
}

/// Analyses a whole message (headers and body, as received).
pub fn analyze(raw: &[u8]) -> Analysis {
    let raw = strip_mbox_line(raw);
    let mut a = Analysis::default();
    let mut tokens = TokenSet::default();
    a.gtube = contains(raw, GTUBE.as_bytes());
    let Some(msg) = MessageParser::default().parse(raw) else {
        tokens.words(&String::from_utf8_lossy(&raw[..raw.len().min(MAX_TEXT_PER_PART)]), "");
        tokens.add("parse:failed".into());
        a.tokens = tokens.into_vec();
        return a;
    };
    a.parsed = true;
    a.has_date = msg.date().is_some();
    a.has_message_id = msg.message_id().is_some_and(|m| !m.is_empty());
    a.subject = msg.subject().map(str::to_string);
    if let Some(s) = &a.subject {
        tokens.words(s, "subject:");
    } else {
        tokens.add("subject:none".into());
    }
    match msg.from().and_then(|f| f.first()) {
        Some(f) => {
            let addr = f.address().map(str::to_ascii_lowercase);
            if let Some(addr) = &addr {
                tokens.add(format!("from:addr:{addr}"));
                if let Some(d) = domain_of(addr) {
                    tokens.add(format!("from:domain:{d}"));
                }
            }
            match f.name() {
                Some(n) if !n.trim().is_empty() => tokens.words(n, "from:name:"),
                _ => tokens.add("from:noname".into()),
            }
            a.from = addr;
        }
        None => tokens.add("from:none".into()),
    }
    let to = msg.to().map_or(0, |t| t.iter().count());
    let cc = msg.cc().map_or(0, |t| t.iter().count());
    tokens.add(format!("to:count:{}", to.min(10)));
    if cc > 0 {
        tokens.add(format!("cc:count:{}", cc.min(10)));
    }
    a.reply_to = msg.reply_to().and_then(|r| r.first()).and_then(|r| r.address()).map(str::to_ascii_lowercase);
    if a.reply_to.is_some() {
        tokens.add("reply-to:yes".into());
    }
    for name in ["X-Mailer", "User-Agent"] {
        if let Some(m) = msg.header_raw(name) {
            let first = m.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
            tokens.add(format!("mailer:{first}"));
        }
    }
    // Which header fields are present says much about the software that
    // wrote the message (mailing-list managers, mail clients, bulk mailers).
    // Filters' own verdict headers are left out: anyone can forge them.
    for (name, _) in msg.headers_raw() {
        let name = name.to_ascii_lowercase();
        if !name.starts_with("x-spam") {
            tokens.add(format!("header:{name}"));
        }
        if matches!(name.as_str(), "list-id" | "list-post" | "mailing-list" | "list-unsubscribe") {
            a.is_list = true;
        }
    }
    if msg.header_raw("Precedence").is_some_and(|p| matches!(p.trim().to_ascii_lowercase().as_str(), "list" | "bulk")) {
        a.is_list = true;
    }
    if let Some(ct) = msg.content_type() {
        tokens.add(format!("ctype:{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase());
    }

    for part in msg.parts.iter().take(MAX_PARTS) {
        if let Some(cs) = part.content_type().and_then(|c| c.attribute("charset")) {
            tokens.add(format!("charset:{}", cs.to_ascii_lowercase()));
        }
        match &part.body {
            PartType::Text(t) => {
                a.has_text_part = true;
                let t = cut(t, MAX_TEXT_PER_PART);
                a.text_len += t.len();
                a.gtube |= t.contains(GTUBE);
                tokens.words(t, "");
                url_hosts(&t.to_ascii_lowercase(), &mut a.url_hosts, &mut tokens);
            }
            PartType::Html(h) => {
                a.has_html_part = true;
                let h = cut(h, MAX_TEXT_PER_PART);
                let text = mail_parser::decoders::html::html_to_text(h);
                a.text_len += text.len();
                a.gtube |= text.contains(GTUBE);
                tokens.words(&text, "");
                html_facts(h, &mut a, &mut tokens);
            }
            PartType::Binary(_) | PartType::InlineBinary(_) => {
                let ct = part.content_type().map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or(""))).unwrap_or_default();
                tokens.add(format!("attachment:{}", ct.to_ascii_lowercase()));
                if let Some(ext) = part.attachment_name().and_then(|n| n.rsplit_once('.')).map(|(_, e)| e.to_ascii_lowercase()) {
                    tokens.add(format!("attachment:.{ext}"));
                }
            }
            PartType::Message(_) => tokens.add("attachment:message".into()),
            PartType::Multipart(_) => {}
        }
    }
    for h in &a.url_hosts {
        tokens.add(format!("url:{h}"));
        tokens.add(format!("url:{}", base_domain(h)));
    }
    a.tokens = tokens.into_vec();
    a
}

/// Corpora in mbox-per-file form start with a "From " separator line.
fn strip_mbox_line(raw: &[u8]) -> &[u8] {
    if raw.starts_with(b"From ") {
        if let Some(i) = raw.iter().position(|&b| b == b'\n') {
            return &raw[i + 1..];
        }
    }
    raw
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// At most `max` octets of `s`, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// A set of tokens.
#[derive(Default)]
struct TokenSet(HashSet<String>);

impl TokenSet {
    fn add(&mut self, t: String) {
        self.0.insert(t);
    }

    fn into_vec(self) -> Vec<String> {
        let mut v: Vec<String> = self.0.into_iter().collect();
        v.sort_unstable();
        v
    }

    /// Words of a text: split on white space, outer punctuation trimmed,
    /// lower-cased; 3 to 12 characters kept as they are, longer ones
    /// summarised (e-mail domains, or "skip:" with the first character and
    /// the length in tens), as SpamBayes does.
    fn words(&mut self, text: &str, prefix: &str) {
        for w in text.split_whitespace() {
            let w = w.trim_matches(|c: char| !c.is_alphanumeric() && !matches!(c, '$' | '%' | '€' | '£'));
            let n = w.chars().count();
            if n < 3 {
                continue;
            }
            let lw = w.to_lowercase();
            if n <= 12 {
                self.add(format!("{prefix}{lw}"));
            } else if let Some((_, d)) = lw.rsplit_once('@') {
                self.add(format!("{prefix}email:{}", base_domain(d)));
            } else if lw.starts_with("http") || lw.starts_with("www.") {
                // URL hosts are collected separately.
                self.add(format!("{prefix}proto:{}", if lw.starts_with("https") { "https" } else { "http" }));
            } else {
                let first = lw.chars().next().unwrap_or('?');
                self.add(format!("{prefix}skip:{first} {}", n / 10 * 10));
            }
            // Shouting is a signal of its own.
            if n >= 4 && w.chars().all(|c| !c.is_lowercase()) && w.chars().any(|c| c.is_uppercase()) {
                self.add(format!("{prefix}upper:{}", if n <= 12 { lw.as_str() } else { "long" }));
            }
        }
    }
}

/// The host of an http(s) URL starting at `url` (scheme included).
fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .or_else(|| url.strip_prefix("HTTP://"))
        .or_else(|| url.strip_prefix("HTTPS://"))?;
    let end = rest.find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '>' | '<') || c.is_whitespace()).unwrap_or(rest.len());
    let authority = &rest[..end];
    // user:pass@host — the host is after the last '@'.
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let host = host.split(':').next().unwrap_or(host).trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')).then_some(host)
}

/// Hosts of every http(s) URL in a text.
/// Hosts of every http(s) URL in a text (already ASCII lower-cased), and
/// tokens of their paths.
fn url_hosts(lower: &str, out: &mut Vec<String>, tokens: &mut TokenSet) {
    for (i, _) in lower.match_indices("http") {
        if let Some(h) = url_host(&lower[i..]) {
            let rest = &lower[i..];
            let end = rest.find(|c: char| matches!(c, '"' | '\'' | '>' | '<') || c.is_whitespace()).unwrap_or(rest.len());
            let after_host = rest[..end].find(h.as_str()).map(|p| p + h.len()).unwrap_or(end);
            for piece in rest[after_host..end].split(|c: char| !c.is_ascii_alphanumeric()).filter(|p| (2..=20).contains(&p.len())).take(8) {
                tokens.add(format!("url:path:{piece}"));
            }
            if !out.contains(&h) && out.len() < 100 {
                out.push(h);
            }
        }
    }
}

/// Links, URL hosts and a few tag tokens of an HTML part.
fn html_facts(html: &str, a: &mut Analysis, tokens: &mut TokenSet) {
    // ASCII lower-casing keeps byte offsets, so positions found in `lower`
    // index `html` too.
    let lower = html.to_ascii_lowercase();
    // The tags used (spam is often built by HTML generators of its own).
    for (i, _) in lower.match_indices('<').take(5000) {
        let name: String = lower[i + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '/' || *c == '!').take(12).collect();
        let name = name.trim_start_matches('/');
        if !name.is_empty() {
            a.html_form |= name == "form" || name == "script";
            tokens.add(format!("html:{name}"));
        }
    }
    url_hosts(&lower, &mut a.url_hosts, tokens);
    let mut from = 0;
    while let Some(i) = lower[from..].find("<a ") {
        let start = from + i;
        let Some(close) = lower[start..].find('>') else { break };
        let tag = &lower[start..start + close];
        let host = tag.find("href").and_then(|h| {
            let v = tag[h + 4..].trim_start().strip_prefix('=')?.trim_start();
            let v = v.trim_start_matches(['"', '\'']);
            url_host(v)
        });
        let text_start = start + close + 1;
        let text_end = lower[text_start..].find("</a").map(|e| text_start + e).unwrap_or_else(|| {
            // No closing tag: at most 500 octets, on a character boundary.
            let mut e = lower.len().min(text_start + 500);
            while !lower.is_char_boundary(e) {
                e -= 1;
            }
            e
        });
        let anchor = mail_parser::decoders::html::html_to_text(&html[text_start..text_end]);
        let anchor = anchor.trim().to_ascii_lowercase();
        let shown_host = shown_host(&anchor);
        if a.links.len() < 200 {
            a.links.push(Link { host, shown_host });
        }
        from = text_end.max(start + 3);
    }
}

/// The host an anchor text shows, when it reads like a URL or a domain
/// ("http://bank.example/login", "www.bank.example").
fn shown_host(anchor: &str) -> Option<String> {
    if anchor.contains(char::is_whitespace) {
        return None;
    }
    if let Some(h) = url_host(anchor) {
        return Some(h);
    }
    let host = anchor.split('/').next()?;
    (host.starts_with("www.") && host.len() > 6 && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_parts_and_finds_links() {
        let m = "From: \"Bank\" <Alert@Bank.Example>\r\nReply-To: x@other.example\r\nSubject: URGENT notice\r\n\
                 MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
                 <p>Verify your acc=\r\nount <a href=3D\"http://10.1.2.3/login\">http://www.bank.example/login</a></p>\r\n";
        let a = analyze(m.as_bytes());
        assert!(a.parsed && !a.has_date && !a.has_message_id);
        assert!(a.has_html_part && !a.has_text_part);
        assert_eq!(a.from.as_deref(), Some("alert@bank.example"));
        assert_eq!(a.reply_to.as_deref(), Some("x@other.example"));
        assert!(a.tokens.contains(&"account".to_string()), "{:?}", a.tokens);
        assert!(a.tokens.contains(&"subject:urgent".to_string()));
        assert!(a.tokens.contains(&"subject:upper:urgent".to_string()));
        assert!(a.tokens.contains(&"from:domain:bank.example".to_string()));
        assert_eq!(a.links, vec![Link { host: Some("10.1.2.3".into()), shown_host: Some("www.bank.example".into()) }]);
        assert!(a.url_hosts.contains(&"10.1.2.3".to_string()));
    }

    #[test]
    fn gtube_in_a_base64_part_is_found() {
        use std::fmt::Write;
        let body = format!("Hello\r\n{GTUBE}\r\n");
        let mut b64 = String::new();
        // A tiny base64 encoder for the test (no dependency).
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for c in body.as_bytes().chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for k in 0..4 {
                if k <= c.len() {
                    b64.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut m = String::new();
        write!(m, "Subject: t\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n").unwrap();
        assert!(!m.contains("GTUBE"));
        assert!(analyze(m.as_bytes()).gtube);
    }

    #[test]
    fn mbox_separator_is_not_a_header() {
        let a = analyze(b"From someone@example.com  Thu Aug 22 13:17:22 2002\nSubject: hi there\nDate: Thu, 22 Aug 2002 13:17:22 +0000\n\nbody words\n");
        assert!(a.has_date);
        assert_eq!(a.subject.as_deref(), Some("hi there"));
    }

    #[test]
    fn an_unclosed_link_before_multibyte_text_does_not_split_a_character() {
        let html = format!("<a href=\"http://x.example/\">{}", "é".repeat(400));
        let m = format!("Subject: t\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n");
        for pad in 0..3 {
            let a = analyze(format!("{}{m}", "X-Pad: ".to_string() + &"a".repeat(pad) + "\r\n").as_bytes());
            assert_eq!(a.links.len(), 1);
        }
        let a = analyze(format!("Subject: t\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<a href=x>a{}\r\n", "é".repeat(400)).as_bytes());
        assert_eq!(a.links.len(), 1);
    }

    #[test]
    fn base_domains() {
        assert_eq!(base_domain("a.b.example.com"), "example.com");
        assert_eq!(base_domain("example.com"), "example.com");
        assert_eq!(base_domain("10.0.0.1"), "10.0.0.1");
    }
}
