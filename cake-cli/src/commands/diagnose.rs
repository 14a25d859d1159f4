//! `cake diagnose`: which layers and KV heads kept a record's needle.
//!
//! Builds the record's prompt as `cake pred` does (template, middle cut to the prompt
//! budget, chat template), locates the needle's tokens in it (the record's `needle` field,
//! carried through with the tokenizer's byte offsets, see `cake_longbench::needle`), runs
//! one prefill with the policy and the record's decode, and writes `diagnosis.json` and a
//! picture of the kept tokens (`diagnosis.svg`, `diagnosis.png`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, ensure};
use cake_core::LayerCache;
use cake_longbench::eval::score_record;
use cake_longbench::record::{LongBenchRecord, read_dataset};
use cake_longbench::{StopRule, locate_needle, registry, token_span};
use cake_models::generate::Generation;
use cake_models::tokenizer::TextStreamer;
use serde::Serialize;

use super::pred::max_length;
use crate::exit::usage_bail;
use crate::plots::{KeptRow, KeptTokens, render};
use crate::session::{Session, greedy_config};
use crate::settings::{PolicyArgs, Settings};

/// Arguments of `cake diagnose`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of LongBench-format `<dataset>.jsonl` files (e.g. written by `cake suite`)
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Dataset (the file's stem), e.g. synth_passkey
    #[arg(long)]
    pub dataset: String,
    /// The record's `_id`
    #[arg(long)]
    pub record: String,
    /// Model: smollm2-135m (default), qwen2.5-coder-0.5b, a .gguf file or a HF folder
    #[arg(long)]
    pub model: Option<String>,
    /// Prompt budget in tokens (middle truncation) [default: as `cake pred`]
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Most tokens to generate [default: the dataset's]
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Folder to write diagnosis.json, diagnosis.svg and diagnosis.png into
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// `diagnosis.json`.
#[derive(Debug, Serialize)]
pub struct Diagnosis {
    /// Record id.
    pub record: String,
    /// Dataset.
    pub dataset: String,
    /// Model name.
    pub model: String,
    /// Policy label, e.g. `cake-c256-w32`.
    pub policy: String,
    /// The resolved settings.
    pub settings: Settings,
    /// Prompt tokens (chat template and special tokens included).
    pub prompt_len: usize,
    /// The prompt budget used for the middle cut.
    pub max_length: usize,
    /// Whether the middle was cut out.
    pub truncated: bool,
    /// The needle and where it sits in the prompt.
    pub needle: NeedleReport,
    /// Per layer, after the prefill: budget, tokens held, per KV head what it kept.
    pub layers: Vec<LayerDiagnosis>,
    /// Per layer, after decoding: tokens held and needle tokens kept per KV head.
    pub after_decode: Vec<LayerAfterDecode>,
    /// The answer.
    pub answer: Answer,
}

/// The needle in `diagnosis.json`.
#[derive(Debug, Serialize)]
pub struct NeedleReport {
    /// Its text.
    pub text: String,
    /// Its first character in the record's context.
    pub char_start: usize,
    /// One past its last character in the context.
    pub char_end: usize,
    /// Its byte range in the prompt text; `null` when the middle cut removed it.
    pub prompt_bytes: Option<(usize, usize)>,
    /// Its first token position in the prompt; `null` when cut out.
    pub token_start: Option<usize>,
    /// One past its last token position; `null` when cut out.
    pub token_end: Option<usize>,
    /// Tokens in its span (0 when cut out).
    pub tokens: usize,
    /// The text of its token span, as decoded.
    pub token_text: Option<String>,
}

/// One layer after the prefill.
#[derive(Debug, Serialize)]
pub struct LayerDiagnosis {
    /// Layer index.
    pub layer: usize,
    /// Budget: prompt tokens kept outside the window (all held tokens for `full`).
    pub budget: usize,
    /// Tokens held per KV head (the report's `held`).
    pub held: usize,
    /// Per KV head.
    pub heads: Vec<HeadDiagnosis>,
}

/// One KV head of a layer.
#[derive(Debug, Serialize)]
pub struct HeadDiagnosis {
    /// KV head index.
    pub head: usize,
    /// Positions kept.
    pub kept: usize,
    /// Of the needle's tokens, how many it kept.
    pub needle_kept: usize,
    /// The kept positions, ascending.
    pub kept_positions: Vec<usize>,
}

/// One layer after decoding.
#[derive(Debug, Serialize)]
pub struct LayerAfterDecode {
    /// Layer index.
    pub layer: usize,
    /// Tokens held per KV head.
    pub held: usize,
    /// Needle tokens kept, per KV head.
    pub needle_kept: Vec<usize>,
}

/// The predicted and the gold answer.
#[derive(Debug, Serialize)]
pub struct Answer {
    /// The generated text.
    pub predicted: String,
    /// The record's gold answers.
    pub gold: Vec<String>,
    /// The dataset's metric on them (0..1, the best over the gold answers); `null` when
    /// the metric cannot score the record.
    pub score: Option<f64>,
}

/// Runs `cake diagnose`.
pub fn run(args: Args) -> Result<()> {
    let settings = Settings::resolve(&args.policy, args.model.as_deref())?;
    let spec = registry::lookup(&args.dataset)?;
    let record = find_record(&args.data_dir, &args.dataset, &args.record)?;
    let device = Default::default();
    let session =
        Session::<cake_models::Cpu>::open_as(settings.model.as_deref(), settings.weights, &device)?;
    let max_length = max_length(&session, args.max_length)?;
    let file = args.data_dir.join(format!("{}.jsonl", args.dataset));
    let located = locate_needle(&record, spec, &session, max_length)
        .with_context(|| format!("diagnosing {}", file.display()))?;
    let text = &located.prompt.text;
    // Ids with each token's byte offsets in the prompt text; the same ids as generation's.
    let encoding = session
        .tokenizer
        .inner()
        .encode(text.as_str(), true)
        .map_err(|e| anyhow!("cannot tokenize the prompt of record {}: {e}", record.id))?;
    let ids = encoding.get_ids().to_vec();
    ensure!(
        ids == session.encode(text)?,
        "the tokenizer's ids with offsets differ from its plain ids on record {}",
        record.id
    );
    let span = located
        .bytes
        .as_ref()
        .and_then(|b| token_span(encoding.get_offsets(), b));
    let needle_text = record.needle.as_ref().map(|n| n.text.clone());
    let needle_text = needle_text.unwrap_or_default();
    if span.is_none() {
        eprintln!(
            "warning: the middle cut to {max_length} tokens removed the needle of record {}",
            record.id
        );
    }

    // One prefill, then the record's decode, as `cake pred` runs it.
    let max_new = args.max_new_tokens.unwrap_or(spec.max_new_tokens);
    let compressor = settings
        .spec
        .compressor::<cake_models::Cpu>(&session.name, session.model.num_layers())?;
    let mut run = Generation::new(&session.model)
        .with_compressor(compressor)
        .with_config(greedy_config(max_new, &StopRule::for_dataset(spec)))
        .with_eos(session.tokenizer.eos_token_ids())
        .with_text(TextStreamer::new(&session.tokenizer, true), |_: &str| {});
    run.prefill(&ids)?;
    let report = run.compressor().report(run.caches());
    let layers = layer_diagnoses(run.caches(), report.as_ref(), span.as_ref());
    let output = run.decode()?;
    let after_decode = run
        .caches()
        .iter()
        .enumerate()
        .map(|(layer, cache)| LayerAfterDecode {
            layer,
            held: cache.len(),
            needle_kept: cache
                .positions()
                .iter()
                .map(|kept| needle_kept(kept, span.as_ref()))
                .collect(),
        })
        .collect();
    let predicted = output.text.unwrap_or_default();
    // A record the metric cannot score (e.g. a classification record without classes)
    // still gets its diagnosis.
    let score = score_record(
        spec,
        &predicted,
        &record.answers,
        record.all_classes.as_deref(),
    )
    .map_err(|e| eprintln!("warning: record {} not scored: {e}", record.id))
    .ok();

    let needle = record
        .needle
        .as_ref()
        .map_or((0, 0), |n| (n.char_start, n.char_end));
    let diagnosis = Diagnosis {
        record: record.id.clone(),
        dataset: args.dataset.clone(),
        model: session.name.clone(),
        policy: settings.label(),
        settings: settings.clone(),
        prompt_len: ids.len(),
        max_length,
        truncated: located.prompt.truncated,
        needle: NeedleReport {
            text: needle_text.clone(),
            char_start: needle.0,
            char_end: needle.1,
            prompt_bytes: located.bytes.as_ref().map(|b| (b.start, b.end)),
            token_start: span.as_ref().map(|s| s.start),
            token_end: span.as_ref().map(|s| s.end),
            tokens: span.as_ref().map_or(0, Range::len),
            token_text: match &span {
                Some(s) => Some(session.tokenizer.decode(&ids[s.clone()], false)?),
                None => None,
            },
        },
        layers,
        after_decode,
        answer: Answer {
            predicted,
            gold: record.answers.clone(),
            score,
        },
    };
    write(&args.out, &diagnosis, span)?;
    print_summary(&diagnosis);
    Ok(())
}

/// The record `id` of `<dir>/<dataset>.jsonl`.
fn find_record(dir: &Path, dataset: &str, id: &str) -> Result<LongBenchRecord> {
    let mut seen = Vec::new();
    for record in read_dataset(dir, dataset)? {
        let record = record?;
        if record.id == id {
            return Ok(record);
        }
        if seen.len() < 5 {
            seen.push(record.id);
        }
    }
    usage_bail!(
        "no record `{id}` in {}: check --record (ids there begin {})",
        dir.join(format!("{dataset}.jsonl")).display(),
        if seen.is_empty() {
            "nowhere: the file is empty".to_string()
        } else {
            seen.join(", ")
        }
    )
}

/// How many of `kept` fall in the needle's token `span`.
fn needle_kept(kept: &[usize], span: Option<&Range<usize>>) -> usize {
    span.map_or(0, |s| kept.iter().filter(|p| s.contains(p)).count())
}

/// Per layer: budget (the report's, or everything held for a policy without one), held,
/// and per KV head the kept positions and needle tokens kept.
fn layer_diagnoses<B: burn::tensor::backend::Backend>(
    caches: &[LayerCache<B>],
    report: Option<&cake_core::CompressionReport>,
    span: Option<&Range<usize>>,
) -> Vec<LayerDiagnosis> {
    caches
        .iter()
        .enumerate()
        .map(|(layer, cache)| {
            let from_report = report.and_then(|r| r.layers.get(layer));
            LayerDiagnosis {
                layer,
                budget: from_report.map_or(cache.len(), |l| l.budget),
                held: from_report.map_or(cache.len(), |l| l.held),
                heads: cache
                    .positions()
                    .iter()
                    .enumerate()
                    .map(|(head, kept)| HeadDiagnosis {
                        head,
                        kept: kept.len(),
                        needle_kept: needle_kept(kept, span),
                        kept_positions: kept.clone(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Writes `diagnosis.json` and the picture into `out`.
fn write(out: &Path, diagnosis: &Diagnosis, span: Option<Range<usize>>) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create {}: choose a writable --out", out.display()))?;
    let path = out.join("diagnosis.json");
    std::fs::write(&path, serde_json::to_string_pretty(diagnosis)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    let rows = diagnosis
        .layers
        .iter()
        .flat_map(|l| {
            l.heads.iter().map(move |h| KeptRow {
                label: format!("L{} h{}", l.layer, h.head),
                kept: h.kept_positions.clone(),
                note: format!(
                    "budget {}, held {}, needle {}/{}",
                    l.budget, l.held, h.needle_kept, diagnosis.needle.tokens
                ),
            })
        })
        .collect();
    // One line of text: whitespace runs (newlines) as single spaces, at most 48 characters.
    let flat = diagnosis
        .needle
        .text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let short: String = flat.chars().take(48).collect();
    let ellipsis = if short.len() < flat.len() { "..." } else { "" };
    let positions = diagnosis
        .layers
        .iter()
        .flat_map(|l| l.heads.iter().flat_map(|h| h.kept_positions.last()))
        .map(|p| p + 1)
        .fold(diagnosis.prompt_len, usize::max);
    let chart = KeptTokens {
        title: format!(
            "{} ({}): {}, kept tokens per layer x KV head{}",
            diagnosis.record,
            diagnosis.model,
            diagnosis.policy,
            if span.is_none() {
                "; needle cut by truncation"
            } else {
                ""
            }
        ),
        positions,
        rows,
        needle: span.map(|s| {
            let label = format!(
                "needle \"{short}{ellipsis}\" (tokens {}..{})",
                s.start, s.end
            );
            (s, label)
        }),
    };
    render(&chart, &out.join("diagnosis"))?;
    Ok(())
}

/// One line per layer: budget, held and the needle tokens each KV head kept; the answer.
fn print_summary(d: &Diagnosis) {
    match (d.needle.token_start, d.needle.token_end) {
        (Some(a), Some(b)) => println!(
            "{}: prompt {} tokens, needle at tokens {a}..{b} ({} tokens)",
            d.record, d.prompt_len, d.needle.tokens
        ),
        _ => println!(
            "{}: prompt {} tokens, needle cut out by the middle truncation",
            d.record, d.prompt_len
        ),
    }
    for l in &d.layers {
        let heads: Vec<String> = l
            .heads
            .iter()
            .map(|h| format!("{}/{}", h.needle_kept, d.needle.tokens))
            .collect();
        println!(
            "layer {:>3}: budget {:>5}, held {:>5}, needle kept per KV head [{}]",
            l.layer,
            l.budget,
            l.held,
            heads.join(", ")
        );
    }
    let score = d.answer.score.map_or("-".into(), |s| format!("{s:.2}"));
    println!(
        "answer {:?} | gold {:?} | score {score}",
        d.answer.predicted, d.answer.gold
    );
}
