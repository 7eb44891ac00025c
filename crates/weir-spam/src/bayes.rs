//! The statistical classifier: Gary Robinson's token probabilities with his
//! chi-square ("Fisher") combining, as SpamBayes uses it. Each known token
//! gets a spam probability smoothed towards 0.5 by how often it was seen;
//! the strongest clues (furthest from 0.5) are combined into one
//! probability in [0, 1] that is near 0 for ham, near 1 for spam, and near
//! 0.5 when the evidence is weak or points both ways.

use crate::model::Model;

/// Strength of the prior (Robinson's s) and its value (x).
const S: f64 = 0.45;
const X: f64 = 0.5;
/// Tokens closer than this to 0.5 are not clues.
const MIN_DISTANCE: f64 = 0.1;
/// At most this many clues are combined.
const MAX_CLUES: usize = 300;

/// What the classifier says about a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Probability that the message is spam.
    pub probability: f64,
    /// The clues used, strongest first: (token, its spam probability).
    pub clues: Vec<(String, f64)>,
}

/// A token's smoothed spam probability, if the model knows it.
pub fn token_probability(model: &Model, token: &str) -> Option<f64> {
    let (ham, spam) = model.counts(token)?;
    let ham_ratio = ham as f64 / model.ham as f64;
    let spam_ratio = spam as f64 / model.spam as f64;
    if ham_ratio + spam_ratio == 0.0 {
        return None;
    }
    let p = spam_ratio / (ham_ratio + spam_ratio);
    let n = (ham + spam) as f64;
    Some((S * X + n * p) / (S + n))
}

/// Classifies a message's tokens.
pub fn classify(model: &Model, tokens: &[String]) -> Verdict {
    let mut clues: Vec<(String, f64)> = tokens
        .iter()
        .filter_map(|t| token_probability(model, t).map(|p| (t.clone(), p)))
        .filter(|(_, p)| (p - 0.5).abs() >= MIN_DISTANCE)
        .collect();
    clues.sort_by(|a, b| (b.1 - 0.5).abs().total_cmp(&(a.1 - 0.5).abs()).then_with(|| a.0.cmp(&b.0)));
    clues.truncate(MAX_CLUES);
    Verdict { probability: combine(clues.iter().map(|c| c.1)), clues }
}

/// Chi-square combining of token probabilities (0.5 when there are none).
pub fn combine(probs: impl Iterator<Item = f64>) -> f64 {
    let (mut ln_ham, mut ln_spam, mut n) = (0.0f64, 0.0f64, 0usize);
    for p in probs {
        let p = p.clamp(1e-6, 1.0 - 1e-6);
        ln_ham += p.ln();
        ln_spam += (1.0 - p).ln();
        n += 1;
    }
    if n == 0 {
        return 0.5;
    }
    let s = 1.0 - chi2_q(-2.0 * ln_spam, 2 * n);
    let h = 1.0 - chi2_q(-2.0 * ln_ham, 2 * n);
    ((s - h + 1.0) / 2.0).clamp(0.0, 1.0)
}

/// P(chi² ≥ x2) with `v` (even) degrees of freedom.
fn chi2_q(x2: f64, v: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..v / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Trainer;

    fn toks(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn chi2_known_values() {
        // With 2 degrees of freedom Q is exp(-x/2).
        assert!((chi2_q(3.0, 2) - (-1.5f64).exp()).abs() < 1e-12);
        // Q(x=4, v=4) = e^-2 (1 + 2)
        assert!((chi2_q(4.0, 4) - 3.0 * (-2.0f64).exp()).abs() < 1e-12);
    }

    #[test]
    fn separates_what_it_was_taught() {
        let mut t = Trainer::new();
        for _ in 0..20 {
            t.add(&toks("viagra cheap offer click"), true);
            t.add(&toks("meeting agenda minutes review"), false);
        }
        let bytes = t.to_bytes(1);
        let m = Model::parse(&bytes).unwrap();
        let spam = classify(&m, &toks("cheap viagra click here"));
        let ham = classify(&m, &toks("agenda for the review meeting"));
        let unknown = classify(&m, &toks("nothing known here"));
        assert!(spam.probability > 0.95, "{spam:?}");
        assert!(ham.probability < 0.05, "{ham:?}");
        assert_eq!(unknown.probability, 0.5);
        assert!(unknown.clues.is_empty());
        let mixed = classify(&m, &toks("viagra cheap meeting agenda"));
        assert!((0.2..0.8).contains(&mixed.probability), "{mixed:?}");
    }
}
