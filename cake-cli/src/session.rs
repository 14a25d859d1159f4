//! A loaded model with its tokenizer, and the adapters that let `cake-longbench` drive it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;

use cake_core::{CompressionReport, PrefillRecorder, ScorerKind};
use cake_longbench::{
    BoxError, GenerationOutcome, Generator, PromptTokenizer, StopRule, SweepGenerator,
};
use cake_models::batch::{BatchGeneration, BatchRequest};
use cake_models::generate::{Generation, GenerationConfig, GenerationOutput, PrefillSnapshot};
use cake_models::tokenizer::{ChatMessage, TextStreamer, Tokenizer};
use cake_models::weights::WeightFormat;
use cake_models::{DecoderConfig, Model};

use crate::exit::usage_ensure;
use crate::settings::Settings;

/// A model ready to generate.
pub struct Session<B: Backend> {
    /// The network.
    pub model: Model<B>,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
    /// A name for reports and for the published-tau lookup: the known model's name, a HF
    /// folder's `_name_or_path`, or the file's stem.
    pub name: String,
    /// Where it was loaded from.
    pub path: PathBuf,
}

impl<B: Backend> Session<B> {
    /// Resolves `spec` (a known name, a GGUF file or a HF folder; `None`: the default
    /// model) and loads it onto `device`.
    pub fn open(spec: Option<&str>, device: &B::Device) -> Result<Self> {
        Self::open_as(spec, WeightFormat::F32, device)
    }

    /// [`Session::open`] holding a GGUF model's matrices in `weights`.
    pub fn open_as(spec: Option<&str>, weights: WeightFormat, device: &B::Device) -> Result<Self> {
        let path = cake_models::fetch::resolve_model(spec)?;
        let loaded = cake_models::load::load_as::<B>(&path, device, weights)
            .with_context(|| format!("cannot load the model at {}", path.display()))?;
        let display = cake_models::fetch::display_name(spec, &path);
        let (tokenizer, name) = if path.is_dir() {
            let name = loaded.config_json["_name_or_path"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map_or(display, str::to_string);
            (Tokenizer::from_hf_dir(&path)?, name)
        } else {
            let file = cake_models::gguf::GgufFile::open(&path)?;
            (Tokenizer::from_gguf(&file)?, display)
        };
        Ok(Self {
            model: loaded.model,
            tokenizer,
            name,
            path,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &DecoderConfig {
        self.model.config()
    }

    /// K/V bytes per cached token over all layers (f32 keys and values).
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = self.config();
        2 * c.num_layers * c.num_kv_heads * c.head_dim * std::mem::size_of::<f32>()
    }

    /// The prompt as the model sees it: chat-templated when `chat`.
    pub fn render_prompt(&self, text: &str, chat: bool) -> Result<String> {
        if !chat {
            return Ok(text.to_string());
        }
        Ok(self
            .tokenizer
            .apply_chat_template(&[ChatMessage::new("user", text)], true)?)
    }

    /// Prompt token ids (special tokens added as the tokenizer is configured to).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode(text, true)?;
        usage_ensure!(!ids.is_empty(), "the prompt is empty: give some text");
        Ok(ids)
    }

    /// Generates after `prompt` with `settings`' policy, streaming text to `on_text`;
    /// returns the output and, for a compressing policy, its report.
    pub fn generate(
        &self,
        prompt: &[u32],
        settings: &Settings,
        config: &GenerationConfig,
        on_text: impl FnMut(&str),
    ) -> Result<(GenerationOutput, Option<CompressionReport>)> {
        let compressor = settings
            .spec
            .compressor::<B>(&self.name, self.model.num_layers())?;
        let mut run = Generation::new(&self.model)
            .with_compressor(compressor)
            .with_config(config.clone())
            .with_eos(self.tokenizer.eos_token_ids())
            .with_text(TextStreamer::new(&self.tokenizer, true), on_text);
        let output = run.generate(prompt)?;
        Ok((output, run.compressor().report(run.caches())))
    }

    /// Generates `prompt` with `settings` and LongBench's greedy decoding and stop rule.
    fn answer(
        &self,
        prompt: &str,
        settings: &Settings,
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Result<GenerationOutcome> {
        let ids = self.encode(prompt)?;
        let config = greedy_config(max_new_tokens, stop);
        let (output, _) = self.generate(&ids, settings, &config, |_| {})?;
        Ok(GenerationOutcome {
            text: output.text.unwrap_or_default(),
            prompt_tokens: ids.len(),
            new_tokens: output.tokens.len(),
        })
    }
}

impl<B: Backend> PromptTokenizer for Session<B> {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, false).unwrap_or_default()
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    fn apply_chat_template(&self, user: &str) -> String {
        self.render_prompt(user, true)
            .unwrap_or_else(|_| user.to_string())
    }
}

/// Drives a [`Session`] with one policy for `cake-longbench`'s prediction loop (greedy, as
/// LongBench).
pub struct PolicyGenerator<'a, B: Backend> {
    /// The model.
    pub session: &'a Session<B>,
    /// The policy and its settings.
    pub settings: &'a Settings,
}

impl<B: Backend> Generator for PolicyGenerator<'_, B> {
    fn generate(
        &mut self,
        prompt: &str,
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Result<GenerationOutcome, BoxError> {
        Ok(self
            .session
            .answer(prompt, self.settings, max_new_tokens, stop)?)
    }
}

/// The recorder of a sweep's prefill: one that also records H2O's prefill scores when a
/// configuration scores with H2O, so that its policies (one per cache size) share them.
pub fn sweep_recorder<B: Backend>(configs: &[Settings]) -> PrefillRecorder<B> {
    let h2o = configs.iter().any(|s| {
        s.spec
            .kinds()
            .is_some_and(|(_, scorer)| scorer == ScorerKind::H2o)
    });
    if h2o {
        PrefillRecorder::with_attention_sums()
    } else {
        PrefillRecorder::new()
    }
}

/// A [`SweepGenerator`] over a [`Session`]: each prompt is prefilled once with the full
/// cache (a [`PrefillSnapshot`]); each configuration's policy then resumes from it and
/// decodes, the configurations of a prompt decoded together in batches of at most
/// [`PolicySweep::with_max_batch`] (a [`BatchGeneration`]). Its predictions equal separate
/// runs' (up to the rounding of the batched matrix products).
pub struct PolicySweep<'a, B: Backend> {
    session: &'a Session<B>,
    configs: &'a [Settings],
    snapshot: Option<PrefillSnapshot<B>>,
    max_batch: usize,
    /// Prefills run so far.
    pub prefills: usize,
}

impl<'a, B: Backend> PolicySweep<'a, B> {
    /// A sweep of `configs` over `session`, all configurations of a prompt decoded in one
    /// batch.
    pub fn new(session: &'a Session<B>, configs: &'a [Settings]) -> Self {
        Self {
            session,
            configs,
            snapshot: None,
            max_batch: usize::MAX,
            prefills: 0,
        }
    }

    /// Decodes at most `max_batch` configurations of a prompt together (`None`: all of
    /// them); 1 decodes them one at a time, each alone as [`SweepGenerator::generate`].
    pub fn with_max_batch(mut self, max_batch: Option<usize>) -> Self {
        self.max_batch = max_batch.unwrap_or(usize::MAX).max(1);
        self
    }
}

impl<B: Backend> SweepGenerator for PolicySweep<'_, B> {
    fn configurations(&self) -> usize {
        self.configs.len()
    }

    fn prepare(&mut self, prompt: &str) -> Result<(), BoxError> {
        self.snapshot = None;
        let ids = self.session.encode(prompt)?;
        self.snapshot = Some(PrefillSnapshot::capture_with(
            &self.session.model,
            &ids,
            sweep_recorder(self.configs),
        )?);
        self.prefills += 1;
        Ok(())
    }

    fn generate(
        &mut self,
        configuration: usize,
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Result<GenerationOutcome, BoxError> {
        let session = self.session;
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or("generate called before prepare")?;
        let settings = self
            .configs
            .get(configuration)
            .ok_or("no such configuration")?;
        let compressor = settings
            .spec
            .compressor::<B>(&session.name, session.model.num_layers())?;
        let mut run = snapshot
            .resume(&session.model, compressor)?
            .with_config(greedy_config(max_new_tokens, stop))
            .with_eos(session.tokenizer.eos_token_ids())
            .with_text(TextStreamer::new(&session.tokenizer, true), |_: &str| {});
        let output = run.decode()?;
        Ok(GenerationOutcome {
            text: output.text.unwrap_or_default(),
            prompt_tokens: snapshot.prefilled().prompt_len,
            new_tokens: output.tokens.len(),
        })
    }

    /// The configurations resumed from the snapshot and decoded together, each request
    /// built as [`SweepGenerator::generate`] builds its run. With a batch of 1 (or one
    /// configuration) each is decoded alone by [`SweepGenerator::generate`]; when the
    /// batched forward itself fails (not attributable to one request), they are too, so
    /// that each configuration gets its own outcome.
    fn generate_many(
        &mut self,
        configurations: &[usize],
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Vec<Result<GenerationOutcome, BoxError>> {
        // Configuration by configuration, up to the first error (as the default does).
        let one_by_one = |sweep: &mut Self| {
            cake_longbench::generate_each(sweep, configurations, max_new_tokens, stop)
        };
        if self.max_batch == 1 || configurations.len() <= 1 {
            return one_by_one(self);
        }
        let session = self.session;
        let Some(snapshot) = self.snapshot.as_ref() else {
            return one_by_one(self);
        };
        let prompt_tokens = snapshot.prefilled().prompt_len;
        let mut results: Vec<Option<Result<GenerationOutcome, BoxError>>> =
            configurations.iter().map(|_| None).collect();
        let mut batch = BatchGeneration::new(&session.model, self.max_batch);
        // The batch's request ids, in push order, and the slot of each in `results`.
        let mut slots = Vec::with_capacity(configurations.len());
        for (slot, &configuration) in configurations.iter().enumerate() {
            let compressor = match self.configs.get(configuration) {
                None => Err(BoxError::from("no such configuration")),
                Some(settings) => settings
                    .spec
                    .compressor::<B>(&session.name, session.model.num_layers())
                    .map_err(BoxError::from),
            };
            match compressor {
                Ok(compressor) => {
                    batch.push(
                        BatchRequest::resumed(snapshot, compressor)
                            .with_config(greedy_config(max_new_tokens, stop))
                            .with_eos(session.tokenizer.eos_token_ids())
                            .with_text(TextStreamer::new(&session.tokenizer, true), |_: &str| {}),
                    );
                    slots.push(slot);
                }
                Err(e) => results[slot] = Some(Err(e)),
            }
        }
        let Ok(outputs) = batch.run() else {
            drop(batch);
            return one_by_one(self);
        };
        for (slot, output) in slots.into_iter().zip(outputs) {
            results[slot] = Some(
                output
                    .map(|done| GenerationOutcome {
                        text: done.output.text.unwrap_or_default(),
                        prompt_tokens,
                        new_tokens: done.output.tokens.len(),
                    })
                    .map_err(BoxError::from),
            );
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err("no answer from the batch".into())))
            .collect()
    }
}

/// LongBench's greedy decoding with a dataset's stop rule.
pub(crate) fn greedy_config(max_new_tokens: usize, stop: &StopRule) -> GenerationConfig {
    GenerationConfig {
        stop_strings: if stop.stop_on_newline {
            vec!["\n".into()]
        } else {
            Vec::new()
        },
        ..GenerationConfig::greedy(max_new_tokens, stop.min_new_tokens.min(max_new_tokens))
    }
}
