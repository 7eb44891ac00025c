//! Hand-written rules on headers and body. Each rule is a named symbol
//! with a default score (SpamAssassin's convention: 5 points is spam);
//! an operator may change any score, and 0 switches a rule off.

use crate::analyze::{base_domain, domain_of, Analysis};

/// A rule: its symbol, default score and what it means.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub name: &'static str,
    pub score: f64,
    pub description: &'static str,
    test: fn(&Analysis) -> bool,
}

/// Every rule, in the order they are reported.
pub const RULES: &[Rule] = &[
    Rule {
        name: "GTUBE",
        score: 1000.0,
        description: "the GTUBE test string",
        test: |a| a.gtube,
    },
    Rule {
        name: "MISSING_DATE",
        score: 1.0,
        description: "no Date: header",
        test: |a| a.parsed && !a.has_date,
    },
    Rule {
        name: "MISSING_MESSAGE_ID",
        score: 1.0,
        description: "no Message-ID: header",
        test: |a| a.parsed && !a.has_message_id,
    },
    Rule {
        name: "MISSING_FROM",
        score: 1.5,
        description: "no usable From: address",
        test: |a| a.parsed && a.from.is_none(),
    },
    Rule {
        name: "MISSING_SUBJECT",
        score: 0.5,
        description: "no Subject: header",
        test: |a| a.parsed && a.subject.is_none(),
    },
    Rule {
        name: "FROM_REPLYTO_DIFFER",
        score: 0.5,
        description: "Reply-To: is in another domain than From: (not on a mailing list)",
        test: |a| !a.is_list && match (a.from.as_deref().and_then(domain_of), a.reply_to.as_deref().and_then(domain_of)) {
            (Some(f), Some(r)) => base_domain(f) != base_domain(r),
            _ => false,
        },
    },
    Rule {
        name: "HTML_ONLY",
        score: 1.0,
        description: "HTML with no plain-text alternative",
        test: |a| a.has_html_part && !a.has_text_part,
    },
    Rule {
        name: "SUBJ_ALL_CAPS",
        score: 1.5,
        description: "Subject: is all capitals",
        test: |a| {
            a.subject.as_deref().is_some_and(|s| {
                let letters: Vec<char> = s.chars().filter(|c| c.is_alphabetic()).collect();
                letters.len() >= 8 && letters.iter().all(|c| c.is_uppercase())
            })
        },
    },
    Rule {
        name: "SUBJ_EXCLAIM",
        score: 0.5,
        description: "Subject: has several exclamation marks",
        test: |a| a.subject.as_deref().is_some_and(|s| s.matches('!').count() >= 2),
    },
    Rule {
        name: "LINK_TEXT_MISMATCH",
        score: 2.5,
        description: "a link's text shows one site and its target is another",
        test: |a| {
            a.links.iter().any(|l| match (&l.host, &l.shown_host) {
                (Some(h), Some(s)) => base_domain(h) != base_domain(s),
                _ => false,
            })
        },
    },
    Rule {
        name: "URL_NUMERIC_IP",
        score: 1.5,
        description: "a link to a bare IP address",
        test: |a| a.url_hosts.iter().any(|h| h.parse::<std::net::IpAddr>().is_ok()),
    },
    Rule {
        name: "HTML_FORM",
        score: 1.0,
        description: "an HTML form or script in the message",
        test: |a| a.html_form,
    },
    Rule {
        name: "EMPTY_BODY",
        score: 1.0,
        description: "no text at all",
        test: |a| a.parsed && a.text_len == 0,
    },
];

/// Looks a rule up by name.
pub fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.name.eq_ignore_ascii_case(name))
}

/// The rules that hit, with their default scores.
pub fn hits(a: &Analysis) -> Vec<&'static Rule> {
    RULES.iter().filter(|r| (r.test)(a)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::analyze;

    fn names(m: &str) -> Vec<&'static str> {
        hits(&analyze(m.as_bytes())).iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_clean_message_hits_nothing() {
        let m = "From: Ann <ann@example.org>\r\nTo: bob@example.net\r\nSubject: Lunch on Friday\r\n\
                 Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nShall we meet at noon?\r\n";
        assert!(names(m).is_empty(), "{:?}", names(m));
    }

    #[test]
    fn each_rule_can_hit() {
        let m = "From: <a@shop.example>\r\nReply-To: b@elsewhere.example\r\nSubject: FREE MONEY FOR YOU!!\r\n\
                 Content-Type: text/html\r\n\r\n<a href=\"http://192.0.2.7/x\">www.mybank.example</a><form action=x>\r\n";
        let got = names(m);
        for want in ["MISSING_DATE", "MISSING_MESSAGE_ID", "FROM_REPLYTO_DIFFER", "HTML_ONLY", "SUBJ_ALL_CAPS", "SUBJ_EXCLAIM", "LINK_TEXT_MISMATCH", "URL_NUMERIC_IP", "HTML_FORM"] {
            assert!(got.contains(&want), "{want} missing from {got:?}");
        }
        assert!(!got.contains(&"GTUBE"));
        let gtube = format!("Subject: test\r\n\r\n{}\r\n", crate::analyze::GTUBE);
        assert!(names(&gtube).contains(&"GTUBE"));
        assert!(names("X-Nothing: 1\r\n\r\n").contains(&"EMPTY_BODY"));
    }

    #[test]
    fn same_site_links_and_reply_to_are_fine() {
        let m = "From: <a@lists.example.org>\r\nReply-To: list@example.org\r\nSubject: Weekly digest\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
                 Message-ID: <2@example.org>\r\nContent-Type: text/html\r\n\r\n<a href=\"https://www.example.org/a\">www.example.org</a> hello\r\n";
        let got = names(m);
        assert!(!got.contains(&"LINK_TEXT_MISMATCH") && !got.contains(&"FROM_REPLYTO_DIFFER"), "{got:?}");
    }
}
