//! Measuring the scorer on a labelled corpus: a fixed, seeded split of the
//! ham and the spam into a training and a test part (each class split on
//! its own, so both parts keep the corpus's proportions), a model trained
//! on the training part only, and the test part scored three ways (the
//! classifier alone, the rules alone, everything) for spam recall and ham
//! false-positive rate.

use crate::analyze::Analysis;
use crate::bayes;
use crate::model::{Model, Trainer};
use crate::score::Scorer;

/// A labelled message: a name to report it by and its analysis.
pub struct Sample {
    pub name: String,
    pub analysis: Analysis,
}

/// splitmix64: a small, well-mixed, seeded generator, so a split is the
/// same on every machine and every Rust version.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Items with names.
pub type Named<T> = Vec<(String, T)>;

/// Splits `items` (sorted by name first, so directory order does not
/// matter) into (train, test) with `train_fraction` in train.
pub fn split<T>(mut items: Named<T>, seed: u64, train_fraction: f64) -> (Named<T>, Named<T>) {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rng = SplitMix(seed);
    for i in (1..items.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
    let n_train = ((items.len() as f64) * train_fraction.clamp(0.0, 1.0)).round() as usize;
    let test = items.split_off(n_train.min(items.len()));
    (items, test)
}

/// One way of deciding, measured on the test part.
#[derive(Debug, Clone)]
pub struct Row {
    pub method: String,
    pub ham: usize,
    /// Ham called spam: (name, the value the method compared).
    pub false_positives: Vec<(String, f64)>,
    pub spam: usize,
    pub caught: usize,
    /// Spam not called spam: (name, the value the method compared).
    pub missed: Vec<(String, f64)>,
}

impl Row {
    pub fn recall(&self) -> f64 {
        if self.spam == 0 {
            0.0
        } else {
            self.caught as f64 / self.spam as f64
        }
    }
    pub fn false_positive_rate(&self) -> f64 {
        if self.ham == 0 {
            0.0
        } else {
            self.false_positives.len() as f64 / self.ham as f64
        }
    }
}

/// What `weir spam eval` prints.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub train_fraction: f64,
    pub train_ham: usize,
    pub train_spam: usize,
    pub tokens: usize,
    pub threshold: f64,
    pub bayes_cutoff: f64,
    pub rows: Vec<Row>,
    /// The model trained on the training part (a model file).
    pub model: Vec<u8>,
}

impl Report {
    /// The report as a plain-text table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "Split: seed {}, {:.0}% train: {} ham + {} spam trained ({} tokens in the model)\n\n",
            self.seed,
            self.train_fraction * 100.0,
            self.train_ham,
            self.train_spam,
            self.tokens
        );
        out.push_str(&format!(
            "{:<36} {:>8} {:>6} {:>8} {:>8} {:>7} {:>8}\n",
            "method (test part)", "ham", "FP", "FP rate", "spam", "caught", "recall"
        ));
        for r in &self.rows {
            out.push_str(&format!(
                "{:<36} {:>8} {:>6} {:>7.2}% {:>8} {:>7} {:>7.2}%\n",
                r.method,
                r.ham,
                r.false_positives.len(),
                r.false_positive_rate() * 100.0,
                r.spam,
                r.caught,
                r.recall() * 100.0
            ));
        }
        out
    }
}

/// Trains on the training part of `ham` and `spam` and measures on the rest.
/// Settings of an evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub seed: u64,
    pub train_fraction: f64,
    /// The spam threshold of the combined score.
    pub threshold: f64,
    /// The probability at which the classifier alone calls spam.
    pub bayes_cutoff: f64,
    /// Tokens seen in fewer training messages are left out of the model.
    pub min_messages: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { seed: 42, train_fraction: 0.8, threshold: 5.0, bayes_cutoff: 0.9, min_messages: 1 }
    }
}

pub fn evaluate(ham: Vec<Sample>, spam: Vec<Sample>, settings: Settings) -> Report {
    let Settings { seed, train_fraction, threshold, bayes_cutoff, min_messages } = settings;
    let (ham_train, ham_test) = split(ham.into_iter().map(|s| (s.name, s.analysis)).collect(), seed, train_fraction);
    let (spam_train, spam_test) = split(spam.into_iter().map(|s| (s.name, s.analysis)).collect(), seed, train_fraction);
    let mut trainer = Trainer::new();
    for (_, a) in &ham_train {
        trainer.add(&a.tokens, false);
    }
    for (_, a) in &spam_train {
        trainer.add(&a.tokens, true);
    }
    let bytes = trainer.to_bytes(min_messages);
    let model = Model::parse(&bytes).ok();
    let with_model = Scorer::new(model);
    let rules_only = Scorer::new(None);
    // Each method gives a value and the cut-off at which it calls spam.
    type Value<'a> = Box<dyn Fn(&Analysis) -> f64 + 'a>;
    let methods: Vec<(String, f64, Value)> = vec![
        (
            format!("classifier alone (p >= {bayes_cutoff})"),
            bayes_cutoff,
            Box::new(|a: &Analysis| model.map_or(0.0, |m| bayes::classify(&m, &a.tokens).probability)),
        ),
        (format!("rules alone (score >= {threshold})"), threshold, Box::new(|a: &Analysis| rules_only.score(a, &[]).score)),
        (format!("rules + classifier (score >= {threshold})"), threshold, Box::new(|a: &Analysis| with_model.score(a, &[]).score)),
    ];
    let rows = methods
        .into_iter()
        .map(|(method, cutoff, value)| {
            let ham_values: Vec<(String, f64)> = ham_test.iter().map(|(n, a)| (n.clone(), value(a))).collect();
            let spam_values: Vec<(String, f64)> = spam_test.iter().map(|(n, a)| (n.clone(), value(a))).collect();
            Row {
                method,
                ham: ham_test.len(),
                false_positives: ham_values.into_iter().filter(|(_, v)| *v >= cutoff).collect(),
                spam: spam_test.len(),
                caught: spam_values.iter().filter(|(_, v)| *v >= cutoff).count(),
                missed: spam_values.into_iter().filter(|(_, v)| *v < cutoff).collect(),
            }
        })
        .collect();
    Report {
        seed,
        train_fraction,
        train_ham: ham_train.len(),
        train_spam: spam_train.len(),
        tokens: model.map_or(0, |m| m.len()),
        threshold,
        bayes_cutoff,
        rows,
        model: bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_seeded_stable_and_complete() {
        let items: Vec<(String, u32)> = (0..100).map(|i| (format!("m{i:03}"), i)).collect();
        let mut reversed = items.clone();
        reversed.reverse();
        let (a_train, a_test) = split(items.clone(), 42, 0.8);
        let (b_train, b_test) = split(reversed, 42, 0.8);
        assert_eq!((a_train.len(), a_test.len()), (80, 20));
        assert_eq!(a_test, b_test, "input order must not matter");
        assert_eq!(a_train, b_train);
        let (_, c_test) = split(items, 7, 0.8);
        assert_ne!(a_test, c_test, "another seed gives another split");
        let mut all: Vec<u32> = a_train.iter().chain(&a_test).map(|x| x.1).collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }
}
