//! Text generation: one prefill, then one decoding step per new token, with greedy or
//! seeded top-p sampling, EOS / stop-string stopping, a minimum length, streaming of the
//! decoded text and per-phase timing. The tokenizer stays outside: text is produced by a
//! caller-supplied decode function.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use cake_core::{KvCompressor, LayerCache};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{Model, ModelError, PrefillLogits, kv_bytes};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The arg-max token (lowest id on ties).
    Greedy,
    /// Nucleus sampling: softmax of `logits / temperature`, keep the most probable tokens
    /// until their mass reaches `p`, sample from them with a seeded RNG (reproducible).
    TopP {
        /// Probability mass kept, in `(0, 1]`.
        p: f32,
        /// Softmax temperature, `> 0`.
        temperature: f32,
        /// RNG seed.
        seed: u64,
    },
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Upper bound of generated tokens (EOS not counted).
    pub max_new_tokens: usize,
    /// Before this many tokens exist, EOS tokens are suppressed (their logits set to -inf,
    /// as transformers' `min_new_tokens`) and stop strings are not looked for.
    pub min_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Generation stops when the decoded text contains one of these; the text is cut
    /// before it. Needs a [`TextStream`].
    pub stop_strings: Vec<String>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            min_new_tokens: 0,
            sampling: Sampling::Greedy,
            stop_strings: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An EOS token was chosen (it is not part of the output tokens).
    Eos,
    /// A stop string appeared in the decoded text.
    StopString,
    /// `max_new_tokens` were generated.
    MaxNewTokens,
}

/// Decoded-text streaming: `decode` turns generated token ids into text (typically the
/// tokenizer's decode without special tokens); `on_text` receives each new piece of text as
/// soon as it is final (never a piece of a possible stop string or a partial UTF-8 char).
pub struct TextStream<'a> {
    /// Token ids -> text.
    pub decode: &'a dyn Fn(&[u32]) -> String,
    /// Receives the text deltas, in order.
    pub on_text: &'a mut dyn FnMut(&str),
}

/// What [`generate`] produced and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// Generated token ids (without the EOS that ended generation).
    pub tokens: Vec<u32>,
    /// Decoded text, cut before a stop string (only with a [`TextStream`]).
    pub text: Option<String>,
    /// Why generation ended.
    pub stop_reason: StopReason,
    /// Prompt length in tokens.
    pub prompt_len: usize,
    /// Prefill wall time, including reading back the first logits.
    pub prefill_time: Duration,
    /// Wall time of every decoding step (forward of one token + reading back its logits).
    pub decode_step_times: Vec<Duration>,
    /// Largest K/V bytes held during the prefill (before compression of the last layer).
    pub kv_bytes_peak_prefill: usize,
    /// K/V bytes held right after the prefill (after compression).
    pub kv_bytes_after_prefill: usize,
    /// Largest K/V bytes held at any point.
    pub kv_bytes_peak: usize,
}

/// A generation request that cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GenerateError {
    /// The model rejected the input.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Inconsistent settings.
    #[error("invalid generation config: {0}")]
    Config(String),
}

/// Runs prefill on `prompt` then decodes up to `config.max_new_tokens` tokens, calling
/// `compressor` at the model's hook points. `eos_ids` end generation (once
/// `min_new_tokens` exist). With `stream`, decoded text is streamed and returned.
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompt: &[u32],
    config: &GenerationConfig,
    eos_ids: &[u32],
    compressor: &mut dyn KvCompressor<B>,
    stream: Option<TextStream<'_>>,
) -> Result<GenerationOutput, GenerateError> {
    let mut caches = model.new_caches();
    generate_into(
        model,
        prompt,
        config,
        eos_ids,
        compressor,
        &mut caches,
        stream,
    )
}

/// [`generate`] into caller-owned, empty `caches` (one per layer), which hold what the
/// policy kept when it returns (e.g. for a compression report).
pub fn generate_into<B: Backend>(
    model: &Model<B>,
    prompt: &[u32],
    config: &GenerationConfig,
    eos_ids: &[u32],
    compressor: &mut dyn KvCompressor<B>,
    caches: &mut [LayerCache<B>],
    stream: Option<TextStream<'_>>,
) -> Result<GenerationOutput, GenerateError> {
    validate(config, stream.is_some())?;
    let start = Instant::now();
    let prefill = model.prefill(prompt, caches, compressor, PrefillLogits::Last)?;
    let prefilled = Prefilled {
        prompt_len: prompt.len(),
        logits: logits_to_vec(prefill.logits),
        prefill_time: start.elapsed(),
        kv_bytes_peak_prefill: prefill.peak_kv_bytes,
    };
    continue_generation(
        model, prefilled, config, eos_ids, compressor, caches, stream,
    )
}

/// What a prefill left for decoding: the first next-token logits and its measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct Prefilled {
    /// Prompt length S (the first generated token sits at position S).
    pub prompt_len: usize,
    /// Next-token logits after the prompt, `[vocab]`.
    pub logits: Vec<f32>,
    /// Prefill wall time.
    pub prefill_time: Duration,
    /// Largest K/V bytes held during the prefill.
    pub kv_bytes_peak_prefill: usize,
}

/// Reads back prefill logits `[1, vocab]` or `[vocab]` to the host.
pub fn host_logits<B: Backend, const D: usize>(logits: burn::tensor::Tensor<B, D>) -> Vec<f32> {
    logits_to_vec(logits)
}

/// The decoding loop of [`generate`] after a prefill: `caches` hold the (possibly already
/// compressed) prompt, `prefilled` its first logits. Lets several policies decode from
/// copies of one prefill (policy sweeps).
pub fn continue_generation<B: Backend>(
    model: &Model<B>,
    prefilled: Prefilled,
    config: &GenerationConfig,
    eos_ids: &[u32],
    compressor: &mut dyn KvCompressor<B>,
    caches: &mut [LayerCache<B>],
    mut stream: Option<TextStream<'_>>,
) -> Result<GenerationOutput, GenerateError> {
    validate(config, stream.is_some())?;
    let mut sampler = Sampler::new(config.sampling);
    let Prefilled {
        prompt_len,
        mut logits,
        prefill_time,
        kv_bytes_peak_prefill,
    } = prefilled;
    let kv_bytes_after_prefill = kv_bytes(caches);
    let mut kv_bytes_peak = kv_bytes_peak_prefill.max(kv_bytes_after_prefill);

    let mut tokens = Vec::new();
    let mut decode_step_times = Vec::new();
    let mut text = TextState::default();
    let mut stop_reason = StopReason::MaxNewTokens;
    while tokens.len() < config.max_new_tokens {
        let early = tokens.len() < config.min_new_tokens;
        if early {
            for &eos in eos_ids {
                if let Some(l) = logits.get_mut(eos as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let token = sampler.pick(&logits);
        if !early && eos_ids.contains(&token) {
            stop_reason = StopReason::Eos;
            break;
        }
        tokens.push(token);
        if let Some(stream) = stream.as_mut() {
            let searching = tokens.len() >= config.min_new_tokens;
            if text.update(stream, &tokens, &config.stop_strings, searching) {
                stop_reason = StopReason::StopString;
                break;
            }
        }
        if tokens.len() == config.max_new_tokens {
            break;
        }
        let step = Instant::now();
        let position = prompt_len + tokens.len() - 1;
        logits = logits_to_vec(model.forward_decode(token, position, caches, compressor)?);
        decode_step_times.push(step.elapsed());
        kv_bytes_peak = kv_bytes_peak.max(kv_bytes(caches));
    }
    let text = stream.map(|s| text.finish(s));
    Ok(GenerationOutput {
        tokens,
        text,
        stop_reason,
        prompt_len,
        prefill_time,
        decode_step_times,
        kv_bytes_peak_prefill,
        kv_bytes_after_prefill,
        kv_bytes_peak,
    })
}

fn validate(config: &GenerationConfig, has_stream: bool) -> Result<(), GenerateError> {
    if config.min_new_tokens > config.max_new_tokens {
        return Err(GenerateError::Config(format!(
            "min_new_tokens ({}) exceeds max_new_tokens ({})",
            config.min_new_tokens, config.max_new_tokens
        )));
    }
    if let Sampling::TopP { p, temperature, .. } = config.sampling {
        if !(p > 0.0 && p <= 1.0) {
            return Err(GenerateError::Config(format!(
                "top-p must be in (0, 1], got {p}"
            )));
        }
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(GenerateError::Config(format!(
                "temperature must be positive, got {temperature}"
            )));
        }
    }
    if !config.stop_strings.is_empty() && !has_stream {
        return Err(GenerateError::Config(
            "stop strings need a TextStream to decode the text".into(),
        ));
    }
    if config.stop_strings.iter().any(String::is_empty) {
        return Err(GenerateError::Config(
            "stop strings must not be empty".into(),
        ));
    }
    Ok(())
}

fn logits_to_vec<B: Backend, const D: usize>(t: burn::tensor::Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// Greedy or seeded top-p token choice.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: Option<StdRng>,
}

impl Sampler {
    /// A sampler; top-p seeds its RNG here.
    pub fn new(sampling: Sampling) -> Self {
        let rng = match sampling {
            Sampling::TopP { seed, .. } => Some(StdRng::seed_from_u64(seed)),
            Sampling::Greedy => None,
        };
        Self { sampling, rng }
    }

    /// Chooses a token from `logits` (`[vocab]`).
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        match (self.sampling, self.rng.as_mut()) {
            (Sampling::TopP { p, temperature, .. }, Some(rng)) => {
                top_p(logits, p, temperature, rng)
            }
            _ => argmax(logits),
        }
    }
}

/// Index of the largest value (first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &x) in logits.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0 as u32
}

/// Nucleus sampling over `softmax(logits / temperature)`: the most probable tokens are
/// kept while the mass before them is below `p` (at least one), then one is drawn in
/// proportion to its probability.
fn top_p(logits: &[f32], p: f32, temperature: f32, rng: &mut StdRng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return argmax(logits);
    }
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|x| x.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for (_, q) in &probs {
        if kept > 0 && mass >= p as f64 * total {
            break;
        }
        mass += q;
        kept += 1;
    }
    let mut u = rng.random::<f64>() * mass;
    for &(token, q) in &probs[..kept] {
        if u < q {
            return token;
        }
        u -= q;
    }
    probs[kept - 1].0
}

/// Decoded text so far and how much of it has been streamed.
#[derive(Debug, Default)]
struct TextState {
    text: String,
    emitted: usize,
    /// Byte offset from which stop strings are looked for (set when the minimum length is
    /// reached, so earlier text never ends generation).
    search_from: Option<usize>,
}

impl TextState {
    /// Re-decodes `tokens`, streams what became final, and returns true when a stop string
    /// appeared (the text is then cut before it).
    fn update(
        &mut self,
        stream: &mut TextStream<'_>,
        tokens: &[u32],
        stops: &[String],
        searching: bool,
    ) -> bool {
        self.text = (stream.decode)(tokens);
        if searching && self.search_from.is_none() {
            self.search_from = Some(self.emitted.min(self.text.len()));
        }
        if let Some(from) = self.search_from {
            let from = floor_char_boundary(&self.text, from);
            let hit = stops
                .iter()
                .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
                .min();
            if let Some(cut) = hit {
                self.text.truncate(cut);
                return true;
            }
        }
        // Hold back a trailing replacement char (partial UTF-8) and any suffix that could
        // start a stop string.
        let mut end = self.text.len();
        if self.text.ends_with('\u{FFFD}') {
            end -= '\u{FFFD}'.len_utf8();
        }
        let mut hold = 0;
        for stop in stops {
            for (i, _) in stop.char_indices().skip(1) {
                if self.text[..end].ends_with(&stop[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        let end = end - hold;
        self.emit(stream, end);
        false
    }

    /// Streams `text[emitted..end]` if the already-streamed text is still a prefix.
    fn emit(&mut self, stream: &mut TextStream<'_>, end: usize) {
        let end = floor_char_boundary(&self.text, end);
        if end > self.emitted && self.text.is_char_boundary(self.emitted) {
            (stream.on_text)(&self.text[self.emitted..end]);
            self.emitted = end;
        }
    }

    /// Streams the rest and returns the final text.
    fn finish(mut self, mut stream: TextStream<'_>) -> String {
        let end = self.text.len();
        self.emit(&mut stream, end);
        self.text
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // softmax([ln 6, ln 3, ln 1]) = [0.6, 0.3, 0.1]: with p = 0.5 only token 0 is kept
        // (mass before it 0 < 0.5, mass before token 1 is 0.6 >= 0.5).
        let logits = [6f32.ln(), 3f32.ln(), 1f32.ln()];
        let mut rng = StdRng::seed_from_u64(7);
        assert!((0..200).all(|_| top_p(&logits, 0.5, 1.0, &mut rng) == 0));
        // With p = 0.8, tokens 0 and 1 are kept (0.6 < 0.8, then 0.9 >= 0.8): never token 2,
        // and token 1 about a third of the time (0.3 / 0.9).
        let draws: Vec<u32> = (0..3000)
            .map(|_| top_p(&logits, 0.8, 1.0, &mut rng))
            .collect();
        assert!(draws.iter().all(|&t| t < 2));
        let ones = draws.iter().filter(|&&t| t == 1).count() as f64 / 3000.0;
        assert!((ones - 1.0 / 3.0).abs() < 0.04, "share of token 1: {ones}");
    }

    #[test]
    fn top_p_is_reproducible_with_a_seed() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let sampling = Sampling::TopP {
            p: 0.9,
            temperature: 0.7,
            seed: 42,
        };
        let (mut a, mut b) = (Sampler::new(sampling), Sampler::new(sampling));
        let xs: Vec<u32> = (0..20).map(|_| a.pick(&logits)).collect();
        let ys: Vec<u32> = (0..20).map(|_| b.pick(&logits)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().any(|&x| x != xs[0]), "sampling should vary");
    }

    #[test]
    fn stream_holds_back_possible_stop_prefix_and_cuts_at_stop() {
        // Tokens are letters: 0 -> "a", 1 -> "b", 2 -> "\n", 3 -> "#".
        let decode = |t: &[u32]| {
            t.iter()
                .map(|&x| ['a', 'b', '\n', '#'][x as usize])
                .collect::<String>()
        };
        let mut pieces = Vec::new();
        let mut on_text = |s: &str| pieces.push(s.to_string());
        let mut stream = TextStream {
            decode: &decode,
            on_text: &mut on_text,
        };
        let stops = vec!["\n#".to_string()];
        let mut state = TextState::default();
        assert!(!state.update(&mut stream, &[0], &stops, true));
        assert!(!state.update(&mut stream, &[0, 2], &stops, true)); // "\n" held back
        assert!(!state.update(&mut stream, &[0, 2, 1], &stops, true));
        assert!(!state.update(&mut stream, &[0, 2, 1, 2], &stops, true));
        assert!(state.update(&mut stream, &[0, 2, 1, 2, 3], &stops, true));
        let text = state.finish(stream);
        assert_eq!(text, "a\nb");
        assert_eq!(pieces, vec!["a", "\nb"]);
    }
}
