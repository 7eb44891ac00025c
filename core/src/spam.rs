//! The `weir spam` commands: train the spam-score plugin's model from
//! directories of ham and spam (`train`), measure recall and false
//! positives on a seeded split of a labelled corpus (`eval`), and show how
//! a message scores and why (`score`). The analysis, rules and classifier
//! are the `weir-spam` crate's, the same code the plugin runs.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Subcommand;
use weir_spam::eval::{self, Sample};
use weir_spam::{analyze, Model, Scorer, Trainer};

#[derive(Subcommand)]
pub enum SpamCommand {
    /// Train a model file from directories of ham and spam (one message per file).
    Train {
        /// Directory of ham (repeatable).
        #[arg(long, required = true, value_name = "DIR")]
        ham: Vec<PathBuf>,
        /// Directory of spam (repeatable).
        #[arg(long, required = true, value_name = "DIR")]
        spam: Vec<PathBuf>,
        /// The model file to write.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: PathBuf,
        /// Leave out tokens seen in fewer messages than this (smaller file).
        #[arg(long, default_value_t = 1)]
        min_messages: u32,
    },
    /// Train on a seeded split of a labelled corpus and report spam recall
    /// and ham false positives on the rest, as a table.
    Eval {
        #[arg(long, required = true, value_name = "DIR")]
        ham: Vec<PathBuf>,
        #[arg(long, required = true, value_name = "DIR")]
        spam: Vec<PathBuf>,
        /// Seed of the split: the same seed gives the same split everywhere.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Share of each class used for training.
        #[arg(long, default_value_t = 0.8)]
        train_fraction: f64,
        /// Score at which a message counts as spam (the plugin's `spam` threshold).
        #[arg(long, default_value_t = 5.0)]
        threshold: f64,
        /// Probability at which the classifier alone calls a message spam.
        #[arg(long, default_value_t = 0.9)]
        bayes_cutoff: f64,
        /// Also list the misclassified messages.
        #[arg(long)]
        show_errors: bool,
        /// Leave tokens seen in fewer training messages out of the model.
        #[arg(long, default_value_t = 1)]
        min_messages: u32,
        /// Write the model trained on the training part to this file.
        #[arg(long, value_name = "FILE")]
        model_out: Option<PathBuf>,
    },
    /// Score messages with a model and show the symbols that counted.
    Score {
        #[arg(long, short = 'm', value_name = "FILE")]
        model: Option<PathBuf>,
        /// Message files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// println! that gives up quietly when stdout is gone (`weir spam score ... | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub fn run(cmd: SpamCommand) -> Result<()> {
    match cmd {
        SpamCommand::Train { ham, spam, output, min_messages } => {
            let mut trainer = Trainer::new();
            for (dirs, is_spam) in [(&ham, false), (&spam, true)] {
                for s in read_corpus(dirs)? {
                    trainer.add(&s.analysis.tokens, is_spam);
                }
            }
            let (h, s) = trainer.messages();
            if h == 0 || s == 0 {
                bail!("training needs both ham and spam; found {h} ham and {s} spam messages");
            }
            let bytes = trainer.to_bytes(min_messages);
            let model = Model::parse(&bytes).map_err(|e| anyhow!(e))?;
            let tmp = output.with_extension("tmp");
            std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &output).with_context(|| format!("writing {}", output.display()))?;
            out!("trained on {h} ham and {s} spam: {} tokens, {} octets, written to {}", model.len(), bytes.len(), output.display());
            Ok(())
        }
        SpamCommand::Eval { ham, spam, seed, train_fraction, threshold, bayes_cutoff, show_errors, min_messages, model_out } => {
            if !(0.0..1.0).contains(&train_fraction) || train_fraction == 0.0 {
                bail!("--train-fraction must be between 0 and 1");
            }
            let settings = eval::Settings { seed, train_fraction, threshold, bayes_cutoff, min_messages };
            let report = eval::evaluate(read_corpus(&ham)?, read_corpus(&spam)?, settings);
            let _ = write!(std::io::stdout(), "{}", report.table());
            if let Some(p) = model_out {
                std::fs::write(&p, &report.model).with_context(|| format!("writing {}", p.display()))?;
            }
            if show_errors {
                for r in &report.rows {
                    out!("\n{}:", r.method);
                    for (f, v) in &r.false_positives {
                        out!("  false positive: {f} ({v:.3})");
                    }
                    for (f, v) in &r.missed {
                        out!("  missed spam:    {f} ({v:.3})");
                    }
                }
            }
            Ok(())
        }
        SpamCommand::Score { model, files } => {
            let bytes = match &model {
                Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
                None => None,
            };
            let model = bytes.as_deref().map(Model::parse).transpose().map_err(|e| anyhow!(e))?;
            let scorer = Scorer::new(model);
            for f in files {
                let raw = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                let s = scorer.score(&analyze(&raw), &[]);
                let bayes = s.bayes.map(|p| format!(" bayes={p:.4}")).unwrap_or_default();
                out!("{}: score={:.2}{bayes} tests={}", f.display(), s.score, s.tests());
                for (t, p) in s.clues.iter().take(10) {
                    out!("    {p:.3} {t}");
                }
            }
            Ok(())
        }
    }
}

/// Every regular file under the directories, analysed (in parallel).
fn read_corpus(dirs: &[PathBuf]) -> Result<Vec<Sample>> {
    let mut files = Vec::new();
    for d in dirs {
        list_files(d, &mut files).with_context(|| format!("reading the corpus directory {}", d.display()))?;
    }
    files.sort();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = files.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<Sample>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|f| {
                            let raw = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
                            Ok(Sample { name: f.display().to_string(), analysis: analyze(&raw) })
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("analysing a message panicked")))).collect()
    });
    let mut out = Vec::with_capacity(files.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let ty = e.file_type()?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if ty.is_dir() {
            list_files(&e.path(), out)?;
        } else if ty.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}
