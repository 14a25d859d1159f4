//! Text generation: one prefill, then one decoding step per new token, with greedy or
//! seeded top-p sampling, EOS / stop-string stopping, a minimum length, streaming of the
//! decoded text and per-phase timing, all driven by one builder, [`Generation`]. Text comes
//! from an incremental [`Detokenizer`] (the tokenizer's `TextStreamer`), one piece per
//! token, so the work per token does not grow with the answer.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use cake_core::{
    CacheError, KeepAll, KvCompressor, LayerCache, PrefillLayer, PrefillRecorder, replay_prefill,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{Model, ModelError, PrefillLogits, Prefilled, kv_bytes};

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
    /// before it. Needs a text [`Detokenizer`] (such as
    /// [`crate::tokenizer::TextStreamer`]).
    pub stop_strings: Vec<String>,
}

impl GenerationConfig {
    /// Greedy decoding of exactly `min_new_tokens..=max_new_tokens` tokens (EOS ends it
    /// only after `min_new_tokens`), no stop strings.
    pub fn greedy(max_new_tokens: usize, min_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            min_new_tokens,
            ..Self::default()
        }
    }
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

/// Turns generated tokens into text one token at a time (the tokenizer's
/// [`crate::tokenizer::TextStreamer`], or any function of one token).
pub trait Detokenizer {
    /// Adds one token; returns the text it completes, if any (a piece of a multi-byte
    /// character is held back until it is whole).
    fn push(&mut self, token: u32) -> Result<Option<String>, GenerateError>;

    /// The text still held back at the end, if any.
    fn finish(&mut self) -> Result<Option<String>, GenerateError> {
        Ok(None)
    }
}

impl Detokenizer for crate::tokenizer::TextStreamer<'_> {
    fn push(&mut self, token: u32) -> Result<Option<String>, GenerateError> {
        crate::tokenizer::TextStreamer::push(self, token)
            .map_err(|e| GenerateError::Text(e.to_string()))
    }

    fn finish(&mut self) -> Result<Option<String>, GenerateError> {
        crate::tokenizer::TextStreamer::finish(self).map_err(|e| GenerateError::Text(e.to_string()))
    }
}

/// A function of one token is a detokenizer whose pieces never span tokens.
impl<F: FnMut(u32) -> String> Detokenizer for F {
    fn push(&mut self, token: u32) -> Result<Option<String>, GenerateError> {
        Ok(Some(self(token)))
    }
}

/// What a generation produced and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// Generated token ids (without the EOS that ended generation).
    pub tokens: Vec<u32>,
    /// Decoded text, cut before a stop string (only with [`Generation::with_text`]).
    pub text: Option<String>,
    /// Why generation ended.
    pub stop_reason: StopReason,
    /// Prompt length in tokens.
    pub prompt_len: usize,
    /// Prefill wall time, including reading back the first logits. For a generation
    /// resumed from a [`PrefillSnapshot`], the shared full-cache prefill plus this
    /// compressor's own replay of the prefill hooks (both given apart in
    /// [`GenerationOutput::resumed`]).
    pub prefill_time: Duration,
    /// Set when the prefill was not run by this generation but resumed from a
    /// [`PrefillSnapshot`]: what [`GenerationOutput::prefill_time`] is made of.
    pub resumed: Option<ResumedPrefill>,
    /// Wall time of every decoding step (forward of one token + reading back its logits).
    pub decode_step_times: Vec<Duration>,
    /// Largest K/V bytes held during the prefill (before compression of the last layer).
    /// For a generation resumed from a [`PrefillSnapshot`], the peak of a live prefill with
    /// its compressor, measured during its replay (not the full cache's).
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
    /// The detokenizer failed.
    #[error("cannot decode the generated tokens: {0}")]
    Text(String),
    /// The prompt is longer than the context the model was trained for.
    #[error(
        "the prompt has {prompt} tokens, more than the model's context of {context} (max_position_embeddings): shorten it (`cake pred` truncates prompts in the middle to --max-length)"
    )]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// The model's `max_position_embeddings`.
        context: usize,
    },
}

/// How the prefill of a generation resumed from a [`PrefillSnapshot`] was obtained: the
/// model's forward pass over the prompt ran once, with the full cache, for every policy
/// resumed from the snapshot; this policy then replayed its own prefill hooks on a copy of
/// the full caches. A live prefill with the policy runs the same forward pass (each layer's
/// prefill attends over its own full prompt before the hook runs) and the same hooks, so
/// the sum, [`GenerationOutput::prefill_time`], estimates its time; only
/// [`ResumedPrefill::compression_time`] is this policy's own measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumedPrefill {
    /// Wall time of the snapshot's full-cache prefill (including reading back the first
    /// logits): the same for every policy resumed from the snapshot.
    pub shared_prefill_time: Duration,
    /// Wall time of this policy's replay of the prefill hooks (its compression of the
    /// snapshot's caches).
    pub compression_time: Duration,
}

/// One prompt's full-cache prefill, kept so that several policies decode from it (a policy
/// sweep prefills each prompt once). [`PrefillSnapshot::resume`] replays the recorded
/// prefill hooks for a compressor on a copy of the full caches, which leaves exactly what
/// a live prefill with that compressor would have (see [`PrefillRecorder`]), and returns a
/// generation ready for [`Generation::decode`], which reports the policy's own prefill
/// peak and compression time (see [`ResumedPrefill`]).
#[derive(Debug, Clone)]
pub struct PrefillSnapshot<B: Backend> {
    caches: Vec<LayerCache<B>>,
    recorder: PrefillRecorder<B>,
    prefilled: Prefilled<Vec<f32>>,
}

impl<B: Backend> PrefillSnapshot<B> {
    /// Prefills `prompt` with the full cache, recording what each layer's hooks saw.
    ///
    /// # Errors
    /// As [`Generation::prefill`].
    pub fn capture(model: &Model<B>, prompt: &[u32]) -> Result<Self, GenerateError> {
        Self::capture_with(model, prompt, PrefillRecorder::new())
    }

    /// [`PrefillSnapshot::capture`] with `recorder`, e.g.
    /// [`PrefillRecorder::with_attention_sums`] when H2O policies will resume from it (they
    /// then share one computation of their prefill scores).
    ///
    /// # Errors
    /// As [`Generation::prefill`].
    pub fn capture_with(
        model: &Model<B>,
        prompt: &[u32],
        recorder: PrefillRecorder<B>,
    ) -> Result<Self, GenerateError> {
        let mut run = Generation::new(model).with_compressor(recorder);
        let prefilled = run.prefill(prompt)?.clone();
        let (recorder, caches) = run.into_parts();
        Ok(Self {
            caches,
            recorder,
            prefilled,
        })
    }

    /// The full-cache prefill's state (prompt length, first logits, timing, peak K/V): the
    /// full cache's figures, not those of a policy resumed from it.
    pub fn prefilled(&self) -> &Prefilled<Vec<f32>> {
        &self.prefilled
    }

    /// A generation that continues this prefill under `compressor`: its prefill hooks run
    /// on a copy of the full caches; the snapshot stays for the next policy. The
    /// generation's prefill figures are the policy's own: the peak K/V a live prefill with
    /// it holds (measured before each layer's hook of the replay, as a live prefill
    /// measures after each layer's append) and a time made of the shared prefill and its
    /// replay (see [`ResumedPrefill`]).
    ///
    /// # Errors
    /// A compressor hook's error (as from a live prefill).
    pub fn resume<'a, C: KvCompressor<B>>(
        &self,
        model: &'a Model<B>,
        mut compressor: C,
    ) -> Result<Generation<'a, B, C>, GenerateError> {
        let mut caches = self.caches.clone();
        let mut meter = PeakMeter {
            inner: &mut compressor,
            peak: 0,
        };
        let start = Instant::now();
        replay_prefill(&mut meter, &self.recorder, &mut caches).map_err(ModelError::from)?;
        let resumed = ResumedPrefill {
            shared_prefill_time: self.prefilled.prefill_time,
            compression_time: start.elapsed(),
        };
        let prefilled = Prefilled {
            prefill_time: resumed.shared_prefill_time + resumed.compression_time,
            kv_bytes_peak_prefill: meter.peak,
            ..self.prefilled.clone()
        };
        let mut run = Generation::new(model)
            .with_compressor(compressor)
            .with_prefill(caches, prefilled);
        run.resumed = Some(resumed);
        Ok(run)
    }
}

/// A compressor's prefill hooks, recording the largest K/V bytes they are handed: each
/// layer's hook sees layers `0..=layer`, the earlier ones already compressed and its own
/// full, which is what a live prefill holds after the layer's append (its peak).
struct PeakMeter<'c, C> {
    inner: &'c mut C,
    peak: usize,
}

impl<B: Backend, C: KvCompressor<B>> KvCompressor<B> for PeakMeter<'_, C> {
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        self.peak = self.peak.max(kv_bytes(caches));
        self.inner.after_prefill_layer(step, caches)
    }

    fn after_prefill(&mut self, caches: &mut [LayerCache<B>]) -> Result<(), CacheError> {
        self.inner.after_prefill(caches)
    }
}

/// The text side of a generation: a detokenizer and where its pieces go.
struct TextSink<'a> {
    detokenizer: Box<dyn Detokenizer + 'a>,
    on_text: Box<dyn FnMut(&str) + 'a>,
}

/// One generation over a model: owns the per-layer caches, the compressor (any
/// [`KvCompressor`]; [`KeepAll`] by default) and the sampler; streams text through an
/// incremental detokenizer.
///
/// ```no_run
/// use cake_core::{Method, PolicySpec};
/// use cake_models::generate::{Generation, GenerationConfig};
/// use cake_models::gguf::GgufFile;
/// use cake_models::tokenizer::{TextStreamer, Tokenizer};
/// use cake_models::{Cpu, load};
///
/// // The default model (SmolLM2-135M-Instruct, a GGUF file fetched on first use).
/// let path = cake_models::fetch::resolve_model(None)?;
/// let model = load::<Cpu>(&path, &Default::default())?.model;
/// let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path)?)?;
/// let prompt_ids = tokenizer.encode("The capital of France is", true)?;
///
/// let spec = PolicySpec::new(Method::Cake);
/// let mut run = Generation::new(&model)
///     .with_compressor(spec.compressor::<Cpu>("smollm2-135m", model.num_layers())?)
///     .with_config(GenerationConfig { max_new_tokens: 64, ..Default::default() })
///     .with_eos(tokenizer.eos_token_ids())
///     .with_text(TextStreamer::new(&tokenizer, true), |piece| print!("{piece}"));
/// let output = run.generate(&prompt_ids)?;
/// println!("\n{} tokens, stopped by {:?}", output.tokens.len(), output.stop_reason);
/// if let Some(report) = run.compressor().report(run.caches()) {
///     println!("{}", report.to_json());
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Generation<'a, B: Backend, C = KeepAll> {
    model: &'a Model<B>,
    compressor: C,
    caches: Vec<LayerCache<B>>,
    config: GenerationConfig,
    eos: Vec<u32>,
    text: Option<TextSink<'a>>,
    prefilled: Option<Prefilled<Vec<f32>>>,
    resumed: Option<ResumedPrefill>,
}

impl<'a, B: Backend> Generation<'a, B, KeepAll> {
    /// A greedy generation of [`GenerationConfig::default`] with the full cache.
    pub fn new(model: &'a Model<B>) -> Self {
        Self {
            model,
            compressor: KeepAll,
            caches: model.new_caches(),
            config: GenerationConfig::default(),
            eos: Vec::new(),
            text: None,
            prefilled: None,
            resumed: None,
        }
    }
}

impl<'a, B: Backend, C: KvCompressor<B>> Generation<'a, B, C> {
    /// The same generation with `compressor` deciding what the caches keep.
    pub fn with_compressor<D: KvCompressor<B>>(self, compressor: D) -> Generation<'a, B, D> {
        Generation {
            model: self.model,
            compressor,
            caches: self.caches,
            config: self.config,
            eos: self.eos,
            text: self.text,
            prefilled: self.prefilled,
            resumed: self.resumed,
        }
    }

    /// Length limits, sampling and stop strings.
    pub fn with_config(mut self, config: GenerationConfig) -> Self {
        self.config = config;
        self
    }

    /// Tokens that end generation (once `min_new_tokens` exist).
    pub fn with_eos(mut self, eos: impl Into<Vec<u32>>) -> Self {
        self.eos = eos.into();
        self
    }

    /// Decodes the generated tokens with `detokenizer` and streams each final piece of
    /// text to `on_text` (never a piece of a possible stop string); the output then
    /// carries the text. Needed for stop strings.
    pub fn with_text(
        mut self,
        detokenizer: impl Detokenizer + 'a,
        on_text: impl FnMut(&str) + 'a,
    ) -> Self {
        self.text = Some(TextSink {
            detokenizer: Box::new(detokenizer),
            on_text: Box::new(on_text),
        });
        self
    }

    /// Starts from a prefill run elsewhere: `caches` hold the prompt as this generation's
    /// compressor would have left it (e.g. after `cake_core::replay_prefill` on copies of
    /// full caches), `prefilled` its first logits. [`Generation::decode`] continues.
    pub fn with_prefill(
        mut self,
        caches: Vec<LayerCache<B>>,
        prefilled: Prefilled<Vec<f32>>,
    ) -> Self {
        self.caches = caches;
        self.prefilled = Some(prefilled);
        self.resumed = None;
        self
    }

    /// The caches (what the compressor kept).
    pub fn caches(&self) -> &[LayerCache<B>] {
        &self.caches
    }

    /// The compressor (e.g. for its report).
    pub fn compressor(&self) -> &C {
        &self.compressor
    }

    /// The prefill's state, once it ran.
    pub fn prefilled(&self) -> Option<&Prefilled<Vec<f32>>> {
        self.prefilled.as_ref()
    }

    /// The compressor and the caches.
    pub fn into_parts(self) -> (C, Vec<LayerCache<B>>) {
        (self.compressor, self.caches)
    }

    /// Prefills `prompt` into fresh caches, running the compressor's prefill hooks. A
    /// generation can prefill (and [`Generation::generate`]) one prompt after another: each
    /// prefill drops what the caches held (the previous prompt, or a
    /// [`Generation::with_prefill`]) and starts over, and the compressor starts over at its
    /// first layer's hook (as the [`cake_core::PolicySpec`] compressors do).
    ///
    /// # Errors
    /// [`GenerateError::PromptTooLong`] when the prompt has more tokens than the model's
    /// `max_position_embeddings` (when the config states it): a generation never extends a
    /// prompt past the trained context silently. Truncate first (LongBench's rule keeps the
    /// first and last halves, see `cake_longbench::prompt`). Decoding may run past the
    /// context, as in transformers.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<&Prefilled<Vec<f32>>, GenerateError> {
        // The previous prompt's state goes first (its caches are freed before the new
        // prefill fills others), so that a refused or failed prefill leaves nothing to
        // decode from.
        self.prefilled = None;
        self.resumed = None;
        self.caches = self.model.new_caches();
        if let Some(context) = self.model.config().max_position_embeddings
            && prompt.len() > context
        {
            return Err(GenerateError::PromptTooLong {
                prompt: prompt.len(),
                context,
            });
        }
        let prefill = self.model.prefill(
            prompt,
            &mut self.caches,
            &mut self.compressor,
            PrefillLogits::Last,
        )?;
        Ok(self.prefilled.insert(prefill.map_logits(logits_to_vec)))
    }

    /// One decoding step: feeds `token` at absolute `position` through the model (the
    /// compressor's decoding hooks run) and returns the next token's logits. What
    /// [`Generation::decode`] does per token, for callers that pick tokens themselves
    /// (e.g. benchmarks stepping several generations in turn).
    ///
    /// # Errors
    /// When the model rejects the token or position.
    pub fn step(&mut self, token: u32, position: usize) -> Result<Vec<f32>, GenerateError> {
        let logits =
            self.model
                .forward_decode(token, position, &mut self.caches, &mut self.compressor)?;
        Ok(logits_to_vec(logits))
    }

    /// Prefills `prompt`, then decodes up to `max_new_tokens` tokens. Each call answers its
    /// own prompt from fresh caches (see [`Generation::prefill`]), so one generation serves
    /// many prompts; the output's text holds only this call's tokens (the detokenizer is
    /// kept, so a [`crate::tokenizer::TextStreamer`] decodes them after the earlier ones).
    ///
    /// # Errors
    /// As [`Generation::prefill`] and [`Generation::decode`].
    pub fn generate(&mut self, prompt: &[u32]) -> Result<GenerationOutput, GenerateError> {
        let _span = tracing::info_span!("generate", prompt_tokens = prompt.len()).entered();
        validate(&self.config, self.text.is_some())?;
        self.prefill(prompt)?;
        self.decode()
    }

    /// Decodes after the prefill ([`Generation::prefill`] or
    /// [`Generation::with_prefill`]): one step per new token until EOS, a stop string or
    /// `max_new_tokens`.
    pub fn decode(&mut self) -> Result<GenerationOutput, GenerateError> {
        validate(&self.config, self.text.is_some())?;
        let Some(prefilled) = self.prefilled.clone() else {
            return Err(GenerateError::Config(
                "nothing to decode from: run prefill (or give with_prefill) first".into(),
            ));
        };
        let config = self.config.clone();
        let mut sampler = Sampler::new(config.sampling);
        let Prefilled {
            prompt_len,
            mut logits,
            prefill_time,
            kv_bytes_peak_prefill,
        } = prefilled;
        let kv_bytes_after_prefill = kv_bytes(&self.caches);
        let mut kv_bytes_peak = kv_bytes_peak_prefill.max(kv_bytes_after_prefill);

        let mut tokens = Vec::new();
        let mut decode_step_times = Vec::new();
        let mut text = TextState::default();
        let mut stop_reason = StopReason::MaxNewTokens;
        let _span = tracing::info_span!("decode", max_new_tokens = config.max_new_tokens).entered();
        while tokens.len() < config.max_new_tokens {
            let early = tokens.len() < config.min_new_tokens;
            if early {
                for &eos in &self.eos {
                    if let Some(l) = logits.get_mut(eos as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let token = sampler.pick(&logits);
            if !early && self.eos.contains(&token) {
                stop_reason = StopReason::Eos;
                break;
            }
            tokens.push(token);
            if let Some(sink) = self.text.as_mut() {
                let searching = tokens.len() >= config.min_new_tokens;
                let piece = sink.detokenizer.push(token)?.unwrap_or_default();
                if text.push(&piece, &mut sink.on_text, &config.stop_strings, searching) {
                    stop_reason = StopReason::StopString;
                    break;
                }
            }
            if tokens.len() == config.max_new_tokens {
                break;
            }
            let step = Instant::now();
            logits = self.step(token, prompt_len + tokens.len() - 1)?;
            decode_step_times.push(step.elapsed());
            kv_bytes_peak = kv_bytes_peak.max(kv_bytes(&self.caches));
        }
        tracing::debug!(tokens = tokens.len(), ?stop_reason, "decoded");
        let text = match self.text.as_mut() {
            Some(sink) => {
                if stop_reason != StopReason::StopString
                    && let Some(rest) = sink.detokenizer.finish()?
                {
                    text.text.push_str(&rest);
                }
                Some(text.finish(&mut sink.on_text))
            }
            None => None,
        };
        Ok(GenerationOutput {
            tokens,
            text,
            stop_reason,
            prompt_len,
            prefill_time,
            resumed: self.resumed,
            decode_step_times,
            kv_bytes_peak_prefill,
            kv_bytes_after_prefill,
            kv_bytes_peak,
        })
    }
}

pub(crate) fn validate(config: &GenerationConfig, has_text: bool) -> Result<(), GenerateError> {
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
    if !config.stop_strings.is_empty() && !has_text {
        return Err(GenerateError::Config(
            "stop strings need the text: give Generation::with_text a detokenizer".into(),
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

/// Decoded text so far and how much of it has been streamed. Text grows by the
/// detokenizer's pieces; stop strings are looked for only where a new piece can complete
/// one, so the work per token does not grow with the text.
#[derive(Debug, Default)]
pub(crate) struct TextState {
    text: String,
    emitted: usize,
    /// Byte offset from which stop strings are looked for (set when the minimum length is
    /// reached, so earlier text never ends generation).
    search_from: Option<usize>,
}

impl TextState {
    /// Appends `piece`, streams what became final, and returns true when a stop string
    /// appeared (the text is then cut before it).
    pub(crate) fn push(
        &mut self,
        piece: &str,
        on_text: &mut dyn FnMut(&str),
        stops: &[String],
        searching: bool,
    ) -> bool {
        let before = self.text.len();
        self.text.push_str(piece);
        // A stop string found now either ends in the new piece or lies after the point
        // where searching started (checked in full once, when it starts).
        let from = match self.search_from {
            Some(from) => {
                let longest = stops.iter().map(String::len).max().unwrap_or(0);
                Some(from.max(before.saturating_sub(longest.saturating_sub(1))))
            }
            None if searching => {
                let from = self.emitted.min(before);
                self.search_from = Some(from);
                Some(from)
            }
            None => None,
        };
        if let Some(from) = from {
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
        self.emit(on_text, end - hold);
        false
    }

    /// Streams `text[emitted..end]`.
    fn emit(&mut self, on_text: &mut dyn FnMut(&str), end: usize) {
        let end = floor_char_boundary(&self.text, end);
        if end > self.emitted && self.text.is_char_boundary(self.emitted) {
            on_text(&self.text[self.emitted..end]);
            self.emitted = end;
        }
    }

    /// Streams the rest and returns the final text.
    pub(crate) fn finish(mut self, on_text: &mut dyn FnMut(&str)) -> String {
        let end = self.text.len();
        self.emit(on_text, end);
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
        let piece = |x: u32| ['a', 'b', '\n', '#'][x as usize].to_string();
        let mut pieces = Vec::new();
        let mut on_text = |s: &str| pieces.push(s.to_string());
        let stops = vec!["\n#".to_string()];
        let mut state = TextState::default();
        assert!(!state.push(&piece(0), &mut on_text, &stops, true));
        assert!(!state.push(&piece(2), &mut on_text, &stops, true)); // "\n" held back
        assert!(!state.push(&piece(1), &mut on_text, &stops, true));
        assert!(!state.push(&piece(2), &mut on_text, &stops, true));
        assert!(state.push(&piece(3), &mut on_text, &stops, true));
        let text = state.finish(&mut on_text);
        assert_eq!(text, "a\nb");
        assert_eq!(pieces, vec!["a", "\nb"]);
    }

    #[test]
    fn stop_strings_before_the_minimum_length_count_once_searching_starts() {
        // Text streamed before the minimum length never stops generation; a stop string
        // after it does.
        let mut out = String::new();
        let mut on_text = |s: &str| out.push_str(s);
        let stops = vec!["STOP".to_string()];
        let mut state = TextState::default();
        assert!(!state.push("x", &mut on_text, &stops, false));
        assert!(!state.push("STOP", &mut on_text, &stops, false));
        assert!(!state.push("y", &mut on_text, &stops, true));
        assert!(state.push("STOPz", &mut on_text, &stops, true));
        assert_eq!(state.finish(&mut on_text), "xSTOPy");
        // A stop string split over many pieces is found when its last piece arrives.
        let mut state = TextState::default();
        let long = vec!["abcdef".to_string()];
        for p in ["za", "b", "c", "de"] {
            assert!(!state.push(p, &mut on_text, &long, true));
        }
        assert!(state.push("fz", &mut on_text, &long, true));
        assert_eq!(state.text, "z");
    }
}
