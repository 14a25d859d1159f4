//! Continuous batching: many generations decoded together, one batched forward
//! ([`Model::forward_decode_batch`]) per step.
//!
//! A [`BatchGeneration`] holds a queue of [`BatchRequest`]s (a prompt or a
//! [`PrefillSnapshot`], a compressor, stop rules and a sampler each). Up to `max_batch`
//! run at once: a request is prefilled on its own when a place is free, joins the running
//! batch at the next step, and leaves it when it stops (EOS, a stop string or
//! `max_new_tokens`), its place going to the next waiting request. Every request keeps its
//! own caches, compressor, positions, sampler and text, so its tokens, text and caches are
//! those of the same request run alone with [`Generation`] (up to the rounding of the
//! batched matrix products, see [`Model::forward_decode_batch`]).
//!
//! ```no_run
//! use cake_core::{Method, PolicySpec};
//! use cake_models::batch::{BatchGeneration, BatchRequest};
//! use cake_models::generate::GenerationConfig;
//! use cake_models::{Cpu, load};
//!
//! let path = cake_models::fetch::resolve_model(None)?;
//! let model = load::<Cpu>(&path, &Default::default())?.model;
//! let mut batch = BatchGeneration::new(&model, 4);
//! for (prompt, method) in [(vec![1, 2, 3], Method::Cake), (vec![4, 5], Method::SnapKv)] {
//!     let compressor = PolicySpec::new(method).compressor::<Cpu>("smollm2-135m", model.num_layers())?;
//!     batch.push(BatchRequest::new(prompt, compressor).with_config(GenerationConfig::greedy(32, 0)));
//! }
//! for result in batch.run()? {
//!     let done = result?;
//!     println!("{:?} {:?}", done.output.tokens, done.compressor.report(&done.caches));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::time::Instant;

use burn::tensor::backend::Backend;
use cake_core::{Compressor, KvCompressor, LayerCache};

use crate::generate::{
    Detokenizer, GenerateError, Generation, GenerationConfig, GenerationOutput, PrefillSnapshot,
    ResumedPrefill, Sampler, StopReason, TextState, validate,
};
use crate::model::{DecodeRow, Model, Prefilled, kv_bytes};

/// Where a request's prefill comes from.
enum Prompt<'a, B: Backend> {
    /// Prefilled live with the request's compressor.
    Tokens(Vec<u32>),
    /// Resumed from a full-cache prefill ([`PrefillSnapshot::resume`]).
    Snapshot(&'a PrefillSnapshot<B>),
}

/// The text side of a request: a detokenizer and where its pieces go.
struct TextSink<'a> {
    detokenizer: Box<dyn Detokenizer + 'a>,
    on_text: Box<dyn FnMut(&str) + 'a>,
}

/// One generation to run in a [`BatchGeneration`]: a prompt (or a prefill snapshot), the
/// compressor deciding what its caches keep, and its stop rules and sampling (as
/// [`Generation`]'s builder sets them).
pub struct BatchRequest<'a, B: Backend, C = Compressor<B>> {
    prompt: Prompt<'a, B>,
    compressor: C,
    config: GenerationConfig,
    eos: Vec<u32>,
    text: Option<TextSink<'a>>,
}

impl<'a, B: Backend, C: KvCompressor<B>> BatchRequest<'a, B, C> {
    /// A greedy request of [`GenerationConfig::default`] for `prompt`, prefilled live with
    /// `compressor`.
    pub fn new(prompt: impl Into<Vec<u32>>, compressor: C) -> Self {
        Self::from_prompt(Prompt::Tokens(prompt.into()), compressor)
    }

    /// A request continuing `snapshot`'s prompt under `compressor` (its prefill hooks
    /// replayed on a copy of the full caches, as [`PrefillSnapshot::resume`]).
    pub fn resumed(snapshot: &'a PrefillSnapshot<B>, compressor: C) -> Self {
        Self::from_prompt(Prompt::Snapshot(snapshot), compressor)
    }

    fn from_prompt(prompt: Prompt<'a, B>, compressor: C) -> Self {
        Self {
            prompt,
            compressor,
            config: GenerationConfig::default(),
            eos: Vec::new(),
            text: None,
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
    /// text to `on_text`, as [`Generation::with_text`]; needed for stop strings.
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
}

/// A finished request: what [`Generation::decode`] reports for it alone, and its
/// compressor and caches (for the compressor's report and the kept positions).
#[derive(Debug)]
pub struct BatchOutput<B: Backend, C = Compressor<B>> {
    /// Tokens, text, stop reason, timing and K/V figures, as [`Generation::decode`] gives
    /// them. Each decoding step time is the wall time of the batched step the request took
    /// part in (shared with the other requests of that step).
    pub output: GenerationOutput,
    /// The request's compressor (e.g. for its report).
    pub compressor: C,
    /// The request's caches at the end (what the compressor kept).
    pub caches: Vec<LayerCache<B>>,
    /// Batched steps run before the request's first one (when it joined the batch).
    pub joined_at_step: usize,
}

/// A request's outcome in [`BatchGeneration::step`] and [`BatchGeneration::run`].
pub type BatchResult<B, C> = Result<BatchOutput<B, C>, GenerateError>;

/// A request that finished in a [`BatchGeneration::step`]: its id and outcome.
pub type Finished<B, C> = (usize, BatchResult<B, C>);

/// A request in the running batch.
struct Running<'a, B: Backend, C> {
    id: usize,
    compressor: C,
    caches: Vec<LayerCache<B>>,
    config: GenerationConfig,
    eos: Vec<u32>,
    text: Option<(TextSink<'a>, TextState)>,
    sampler: Sampler,
    prefilled: Prefilled<()>,
    resumed: Option<ResumedPrefill>,
    /// The next token's logits `[vocab]`.
    logits: Vec<f32>,
    tokens: Vec<u32>,
    decode_step_times: Vec<std::time::Duration>,
    kv_bytes_after_prefill: usize,
    kv_bytes_peak: usize,
    joined_at_step: usize,
    /// The token to feed at the next step and its position (`None` once stopped).
    pending: Option<(u32, usize)>,
    stop_reason: StopReason,
}

/// Continuous batching over one model: a queue of [`BatchRequest`]s, at most `max_batch`
/// of them decoded together, one batched forward per step (see the module docs).
pub struct BatchGeneration<'a, B: Backend, C = Compressor<B>> {
    model: &'a Model<B>,
    max_batch: usize,
    waiting: VecDeque<(usize, BatchRequest<'a, B, C>)>,
    running: Vec<Running<'a, B, C>>,
    submitted: usize,
    steps: usize,
}

impl<'a, B: Backend, C: KvCompressor<B>> BatchGeneration<'a, B, C> {
    /// An empty batch over `model` running at most `max_batch` (at least 1) requests at
    /// once.
    pub fn new(model: &'a Model<B>, max_batch: usize) -> Self {
        Self {
            model,
            max_batch: max_batch.max(1),
            waiting: VecDeque::new(),
            running: Vec::new(),
            submitted: 0,
            steps: 0,
        }
    }

    /// Queues `request`; returns its id (0, 1, .. in submission order). It is prefilled
    /// when a place in the batch is free, at the start of a [`BatchGeneration::step`].
    pub fn push(&mut self, request: BatchRequest<'a, B, C>) -> usize {
        let id = self.submitted;
        self.submitted += 1;
        self.waiting.push_back((id, request));
        id
    }

    /// Requests waiting for a place.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests in the running batch.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Batched decoding steps run so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// True when nothing waits or runs.
    pub fn is_done(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// One step: waiting requests take the free places (each prefilled on its own, its
    /// first token chosen), then one batched forward advances every running request by
    /// one token and each chooses its next one. Returns the requests that finished in
    /// this step, with their ids: a request's own failure (a prompt too long, a bad config,
    /// its detokenizer) ends only that request.
    ///
    /// # Errors
    /// When the batched forward fails (a compressor's hook, caches of another model):
    /// every running request is then dropped, since its caches may have advanced.
    pub fn step(&mut self) -> Result<Vec<Finished<B, C>>, GenerateError> {
        let mut finished = Vec::new();
        while self.running.len() < self.max_batch
            && let Some((id, request)) = self.waiting.pop_front()
        {
            match self.admit(id, request) {
                Ok(mut run) => match run.choose() {
                    Ok(()) if run.pending.is_some() => self.running.push(run),
                    Ok(()) => finished.push((id, run.finish())),
                    Err(e) => finished.push((id, Err(e))),
                },
                Err(e) => finished.push((id, Err(e))),
            }
        }
        if self.running.is_empty() {
            return Ok(finished);
        }
        let start = Instant::now();
        let logits = {
            let mut rows: Vec<DecodeRow<'_, B>> = self
                .running
                .iter_mut()
                .map(|run| {
                    let (token, position) = run.pending.expect("running requests have a token");
                    DecodeRow {
                        token,
                        position,
                        caches: &mut run.caches,
                        compressor: &mut run.compressor,
                    }
                })
                .collect();
            match self.model.forward_decode_batch(&mut rows) {
                Ok(logits) => logits, // [R, vocab]
                Err(e) => {
                    drop(rows);
                    self.running.clear();
                    return Err(e.into());
                }
            }
        };
        let vocab = self.model.config().vocab_size;
        let logits: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        let elapsed = start.elapsed();
        self.steps += 1;
        let mut still = Vec::with_capacity(self.running.len());
        for (mut run, logits) in self.running.drain(..).zip(logits.chunks_exact(vocab)) {
            run.decode_step_times.push(elapsed);
            run.kv_bytes_peak = run.kv_bytes_peak.max(kv_bytes(&run.caches));
            run.logits.clear();
            run.logits.extend_from_slice(logits);
            match run.choose() {
                Ok(()) if run.pending.is_some() => still.push(run),
                Ok(()) => finished.push((run.id, run.finish())),
                Err(e) => finished.push((run.id, Err(e))),
            }
        }
        self.running = still;
        Ok(finished)
    }

    /// Steps until every request finished; returns their outcomes by id (submission
    /// order).
    ///
    /// # Errors
    /// As [`BatchGeneration::step`].
    pub fn run(&mut self) -> Result<Vec<BatchResult<B, C>>, GenerateError> {
        let mut done: Vec<Finished<B, C>> = Vec::with_capacity(self.waiting.len());
        while !self.is_done() {
            done.extend(self.step()?);
        }
        done.sort_by_key(|(id, _)| *id);
        Ok(done.into_iter().map(|(_, r)| r).collect())
    }

    /// Prefills `request` on its own (live or resumed from its snapshot).
    fn admit(
        &self,
        id: usize,
        request: BatchRequest<'a, B, C>,
    ) -> Result<Running<'a, B, C>, GenerateError> {
        let BatchRequest {
            prompt,
            compressor,
            config,
            eos,
            text,
        } = request;
        validate(&config, text.is_some())?;
        let (generation, resumed) = match prompt {
            Prompt::Tokens(tokens) => {
                let mut run = Generation::new(self.model).with_compressor(compressor);
                run.prefill(&tokens)?;
                (run, None)
            }
            Prompt::Snapshot(snapshot) => {
                let run = snapshot.resume(self.model, compressor)?;
                let shared = snapshot.prefilled().prefill_time;
                (run, Some(shared))
            }
        };
        let Some(prefilled) = generation.prefilled().cloned() else {
            unreachable!("a prefilled generation")
        };
        let (compressor, caches) = generation.into_parts();
        let resumed = resumed.map(|shared| ResumedPrefill {
            shared_prefill_time: shared,
            compression_time: prefilled.prefill_time.saturating_sub(shared),
        });
        let kv_bytes_after_prefill = kv_bytes(&caches);
        let Prefilled {
            prompt_len,
            logits,
            prefill_time,
            kv_bytes_peak_prefill,
        } = prefilled;
        Ok(Running {
            id,
            compressor,
            caches,
            sampler: Sampler::new(config.sampling),
            config,
            eos,
            text: text.map(|sink| (sink, TextState::default())),
            prefilled: Prefilled {
                prompt_len,
                logits: (),
                prefill_time,
                kv_bytes_peak_prefill,
            },
            resumed,
            logits,
            tokens: Vec::new(),
            decode_step_times: Vec::new(),
            kv_bytes_after_prefill,
            kv_bytes_peak: kv_bytes_peak_prefill.max(kv_bytes_after_prefill),
            joined_at_step: self.steps,
            pending: None,
            stop_reason: StopReason::MaxNewTokens,
        })
    }
}

impl<B: Backend, C> Running<'_, B, C> {
    /// Chooses the next token from `logits` as one iteration of [`Generation::decode`]
    /// does: sets `pending` to the token and position to feed next, or to `None` (with
    /// the stop reason) when the request stops here.
    fn choose(&mut self) -> Result<(), GenerateError> {
        self.pending = None;
        let config = &self.config;
        if self.tokens.len() >= config.max_new_tokens {
            self.stop_reason = StopReason::MaxNewTokens;
            return Ok(());
        }
        let early = self.tokens.len() < config.min_new_tokens;
        if early {
            for &eos in &self.eos {
                if let Some(l) = self.logits.get_mut(eos as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let token = self.sampler.pick(&self.logits);
        if !early && self.eos.contains(&token) {
            self.stop_reason = StopReason::Eos;
            return Ok(());
        }
        self.tokens.push(token);
        if let Some((sink, text)) = self.text.as_mut() {
            let searching = self.tokens.len() >= config.min_new_tokens;
            let piece = sink.detokenizer.push(token)?.unwrap_or_default();
            if text.push(&piece, &mut sink.on_text, &config.stop_strings, searching) {
                self.stop_reason = StopReason::StopString;
                return Ok(());
            }
        }
        if self.tokens.len() == config.max_new_tokens {
            self.stop_reason = StopReason::MaxNewTokens;
            return Ok(());
        }
        let position = self.prefilled.prompt_len + self.tokens.len() - 1;
        self.pending = Some((token, position));
        Ok(())
    }

    /// The request's output once it stopped, as [`Generation::decode`] returns it.
    fn finish(self) -> BatchResult<B, C> {
        tracing::debug!(tokens = self.tokens.len(), stop_reason = ?self.stop_reason, "decoded");
        let text = match self.text {
            Some((mut sink, mut text)) => {
                if self.stop_reason != StopReason::StopString
                    && let Some(rest) = sink.detokenizer.finish()?
                {
                    // Appended as `Generation::decode` appends it: no stop string looked
                    // for in the held-back rest.
                    text.push(&rest, &mut sink.on_text, &[], false);
                }
                Some(text.finish(&mut sink.on_text))
            }
            None => None,
        };
        Ok(BatchOutput {
            output: GenerationOutput {
                tokens: self.tokens,
                text,
                stop_reason: self.stop_reason,
                prompt_len: self.prefilled.prompt_len,
                prefill_time: self.prefilled.prefill_time,
                resumed: self.resumed,
                decode_step_times: self.decode_step_times,
                kv_bytes_peak_prefill: self.prefilled.kv_bytes_peak_prefill,
                kv_bytes_after_prefill: self.kv_bytes_after_prefill,
                kv_bytes_peak: self.kv_bytes_peak,
            },
            compressor: self.compressor,
            caches: self.caches,
            joined_at_step: self.joined_at_step,
        })
    }
}
