//! One score for a message: the rules that hit, the classifier's band and
//! the symbols earlier plugins added (auth-check, dnsbl), each a named
//! symbol with points; the sum is compared with the operator's thresholds.

use std::collections::HashMap;

use crate::analyze::Analysis;
use crate::bayes;
use crate::model::Model;
use crate::rules;

/// The classifier's bands: (symbol, lowest probability, default score).
pub const BAYES_BANDS: &[(&str, f64, f64)] = &[
    ("BAYES_00", 0.0, -1.9),
    ("BAYES_01", 0.01, -0.5),
    ("BAYES_05", 0.05, 0.0),
    ("BAYES_30", 0.3, 1.5),
    ("BAYES_45", 0.45, 3.0),
    ("BAYES_60", 0.6, 4.0),
    ("BAYES_80", 0.8, 5.0),
    ("BAYES_95", 0.95, 5.5),
    ("BAYES_99", 0.99, 6.0),
];

/// A symbol with its points.
#[derive(Debug, Clone, PartialEq)]
pub struct Symbol {
    pub name: String,
    pub score: f64,
}

/// The outcome for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub score: f64,
    /// Every symbol that counted, in order: rules, classifier, others.
    pub symbols: Vec<Symbol>,
    /// The classifier's probability (None without a model).
    pub bayes: Option<f64>,
    /// The classifier's strongest clues.
    pub clues: Vec<(String, f64)>,
}

impl Scored {
    /// "BAYES_99=4,HTML_ONLY=1" for an X-Spam-Status header.
    pub fn tests(&self) -> String {
        self.symbols.iter().map(|s| format!("{}={}", s.name, round(s.score))).collect::<Vec<_>>().join(",")
    }
}

/// Rounded to two decimals, for headers and reports.
pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Is `name` one of the symbols the scorer makes itself?
pub fn is_own_symbol(name: &str) -> bool {
    rules::rule(name).is_some() || BAYES_BANDS.iter().any(|b| b.0.eq_ignore_ascii_case(name))
}

/// Scores messages with a model (optional) and the operator's overrides.
#[derive(Debug, Clone, Default)]
pub struct Scorer<'m> {
    pub model: Option<Model<'m>>,
    /// Score overrides by symbol (rules, BAYES_* bands, or other plugins'
    /// symbols); 0 switches a symbol off. Borrowed: a plugin scores each
    /// message with its configuration's map as it is.
    pub overrides: Option<&'m HashMap<String, f64>>,
}

impl<'m> Scorer<'m> {
    pub fn new(model: Option<Model<'m>>) -> Scorer<'m> {
        Scorer { model, overrides: None }
    }

    fn points(&self, name: &str, default: f64) -> f64 {
        self.overrides.and_then(|o| o.get(name)).copied().unwrap_or(default)
    }

    /// Names in `overrides` that are neither a rule nor a band (they may
    /// still be other plugins' symbols).
    pub fn unknown_overrides(&self) -> Vec<&str> {
        self.overrides.into_iter().flat_map(|o| o.keys()).map(String::as_str).filter(|n| !is_own_symbol(n)).collect()
    }

    /// Scores an analysed message; `others` are earlier plugins' symbols.
    pub fn score(&self, a: &Analysis, others: &[(String, f64)]) -> Scored {
        let mut symbols = Vec::new();
        for r in rules::hits(a) {
            symbols.push(Symbol { name: r.name.to_string(), score: self.points(r.name, r.score) });
        }
        let (mut probability, mut clues) = (None, Vec::new());
        if let Some(model) = &self.model {
            let v = bayes::classify(model, &a.tokens);
            let band = BAYES_BANDS.iter().rev().find(|b| v.probability >= b.1).unwrap_or(&BAYES_BANDS[0]);
            symbols.push(Symbol { name: band.0.to_string(), score: self.points(band.0, band.2) });
            probability = Some(v.probability);
            clues = v.clues;
        }
        for (name, score) in others {
            if !is_own_symbol(name) {
                symbols.push(Symbol { name: name.clone(), score: self.points(name, *score) });
            }
        }
        symbols.retain(|s| s.score != 0.0 || s.name.starts_with("BAYES_"));
        let score = symbols.iter().fold(0.0, |acc, s| acc + s.score);
        Scored { score, symbols, bayes: probability, clues }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::analyze;
    use crate::model::Trainer;

    #[test]
    fn rules_bands_and_other_symbols_add_up() {
        let mut t = Trainer::new();
        for _ in 0..10 {
            t.add(&["subject:winner".to_string(), "prize".into()], true);
            t.add(&["subject:minutes".to_string(), "agenda".into()], false);
        }
        let bytes = t.to_bytes(1);
        let overrides = HashMap::from([("MISSING_FROM".to_string(), 0.0), ("DNSBL_ZEN".to_string(), 1.0)]);
        let model = Model::parse(&bytes).unwrap();
        let mut s = Scorer::new(Some(model));
        let m = analyze(b"Subject: WINNER WINNER WINNER\r\n\r\nclaim your prize\r\n");
        let got = s.score(&m, &[("DNSBL_ZEN".into(), 3.0), ("BAYES_00".into(), -100.0)]);
        let b99 = BAYES_BANDS.iter().find(|b| b.0 == "BAYES_99").map(|b| b.2).unwrap();
        let names: Vec<&str> = got.symbols.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["MISSING_DATE", "MISSING_MESSAGE_ID", "MISSING_FROM", "SUBJ_ALL_CAPS", "BAYES_99", "DNSBL_ZEN"]);
        assert!((got.score - (1.0 + 1.0 + 1.5 + 1.5 + b99 + 3.0)).abs() < 1e-9, "{got:?}");
        // Overrides change points; 0 switches a rule off.
        s.overrides = Some(&overrides);
        let got = s.score(&m, &[("DNSBL_ZEN".into(), 3.0)]);
        assert!((got.score - (1.0 + 1.0 + 1.5 + b99 + 1.0)).abs() < 1e-9, "{got:?}");
        assert_eq!(got.tests(), format!("MISSING_DATE=1,MISSING_MESSAGE_ID=1,SUBJ_ALL_CAPS=1.5,BAYES_99={b99},DNSBL_ZEN=1"));
        assert_eq!(s.unknown_overrides(), ["DNSBL_ZEN"]);
    }
}
