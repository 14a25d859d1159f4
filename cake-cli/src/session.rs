//! A loaded model with its tokenizer, and the adapters that let `cake-longbench` drive it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use std::time::Instant;

use cake_core::{
    CompressionReport, KeepAll, KvCompressor, LayerCache, PolicyCompressor, PrefillRecorder,
    replay_prefill,
};
use cake_longbench::{BoxError, GenerationOutcome, Generator, PromptTokenizer, StopRule};
use cake_models::generate::{
    GenerationConfig, GenerationOutput, Prefilled, Sampling, TextStream, continue_generation,
    generate_into, host_logits,
};
use cake_models::gguf::GgufFile;
use cake_models::tokenizer::{ChatMessage, Tokenizer};
use cake_models::{DecoderConfig, Model, ModelError, PrefillLogits};

use crate::settings::Settings;

/// A model ready to generate.
pub struct Session<B: Backend> {
    /// The network.
    pub model: Model<B>,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
    /// A name for reports and for the published-tau lookup.
    pub name: String,
    /// Where it was loaded from.
    pub path: PathBuf,
}

impl<B: Backend> Session<B> {
    /// Resolves `spec` (a known name, a GGUF file or a HF folder; `None`: the default
    /// model) and loads it onto `device`.
    pub fn open(spec: Option<&str>, device: &B::Device) -> Result<Self> {
        let path = cake_models::fetch::resolve_model(spec)?;
        let loaded = cake_models::load::<B>(&path, device)
            .with_context(|| format!("cannot load the model at {}", path.display()))?;
        let (tokenizer, name) = if path.is_dir() {
            let tokenizer = Tokenizer::from_hf_dir(&path)?;
            let name = loaded.config_json["_name_or_path"]
                .as_str()
                .map(str::to_string)
                .or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()));
            (tokenizer, name)
        } else {
            let file = GgufFile::open(&path)?;
            let name = file
                .metadata()
                .get_str("general.name")
                .ok()
                .map(str::to_string);
            (Tokenizer::from_gguf(&file)?, name)
        };
        Ok(Self {
            model: loaded.model,
            tokenizer,
            name: name.unwrap_or_else(|| path.display().to_string()),
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
        anyhow::ensure!(!ids.is_empty(), "the prompt is empty: give some text");
        Ok(ids)
    }

    /// Generates after `prompt` with `settings`' policy, streaming text to `on_text`;
    /// returns the output and, for a compressing policy, its report.
    pub fn generate(
        &self,
        prompt: &[u32],
        settings: &Settings,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(GenerationOutput, Option<CompressionReport>)> {
        let decode = |ids: &[u32]| self.tokenizer.decode(ids, true).unwrap_or_default();
        let stream = TextStream {
            decode: &decode,
            on_text,
        };
        generate_with_policy(
            &self.model,
            &self.name,
            settings,
            prompt,
            config,
            &self.tokenizer.eos_token_ids(),
            Some(stream),
        )
    }
}

/// Generates after `prompt` with the policy of `settings` (temperatures looked up for
/// `model_name`); returns the output and, for a compressing policy, its report.
pub fn generate_with_policy<B: Backend>(
    model: &Model<B>,
    model_name: &str,
    settings: &Settings,
    prompt: &[u32],
    config: &GenerationConfig,
    eos: &[u32],
    stream: Option<TextStream<'_>>,
) -> Result<(GenerationOutput, Option<CompressionReport>)> {
    let policy = settings.policy::<B>(model_name, model.num_layers())?;
    let mut caches: Vec<LayerCache<B>> = model.new_caches();
    if policy.keeps_all() {
        let output = generate_into(
            model,
            prompt,
            config,
            eos,
            &mut KeepAll,
            &mut caches,
            stream,
        )?;
        return Ok((output, None));
    }
    let mut compressor = PolicyCompressor::new(policy, model.num_layers());
    let output = generate_into(
        model,
        prompt,
        config,
        eos,
        &mut compressor as &mut dyn KvCompressor<B>,
        &mut caches,
        stream,
    )?;
    Ok((output, Some(compressor.report(&caches))))
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
        let ids = self.session.encode(prompt)?;
        let config = greedy_config(max_new_tokens, stop);
        let (output, _) = self
            .session
            .generate(&ids, self.settings, &config, &mut |_| {})?;
        Ok(GenerationOutcome {
            text: output.text.unwrap_or_default(),
            prompt_tokens: ids.len(),
            new_tokens: output.tokens.len(),
        })
    }
}

/// One prompt's full prefill, kept so several policies can decode from copies of it.
struct PrefillMemo<B: Backend> {
    prompt: String,
    caches: Vec<LayerCache<B>>,
    recorder: PrefillRecorder<B>,
    prefilled: Prefilled,
    prompt_tokens: usize,
}

/// Shared prefill state of a sweep: the last prompt's full caches and recorded queries.
pub struct PrefillCache<B: Backend> {
    memo: Option<PrefillMemo<B>>,
    /// Prefills actually run.
    pub prefills: usize,
}

impl<B: Backend> Default for PrefillCache<B> {
    fn default() -> Self {
        Self {
            memo: None,
            prefills: 0,
        }
    }
}

impl<B: Backend> PrefillCache<B> {
    /// The memo for `prompt`, running the prefill (recording its hooks) when the cached one
    /// is for another prompt.
    fn get(&mut self, session: &Session<B>, prompt: &str) -> Result<&PrefillMemo<B>> {
        if self.memo.as_ref().is_none_or(|m| m.prompt != prompt) {
            self.memo = None;
            let ids = session.encode(prompt)?;
            let mut caches = session.model.new_caches();
            let mut recorder = PrefillRecorder::new();
            let start = Instant::now();
            let prefill =
                session
                    .model
                    .prefill(&ids, &mut caches, &mut recorder, PrefillLogits::Last)?;
            let prefilled = Prefilled {
                prompt_len: ids.len(),
                logits: host_logits(prefill.logits),
                prefill_time: start.elapsed(),
                kv_bytes_peak_prefill: prefill.peak_kv_bytes,
            };
            self.prefills += 1;
            self.memo = Some(PrefillMemo {
                prompt: prompt.to_string(),
                caches,
                recorder,
                prefilled,
                prompt_tokens: ids.len(),
            });
        }
        self.memo
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("prefill memo missing"))
    }
}

/// A [`Generator`] for policy sweeps: the prompt's prefill runs once (in `cache`), then
/// this generator's policy replays the prefill hooks on a copy of the full caches and
/// decodes. Its predictions equal a separate run's (see `PrefillRecorder`).
pub struct SweepGenerator<'a, B: Backend> {
    /// The model.
    pub session: &'a Session<B>,
    /// The policy and its settings.
    pub settings: &'a Settings,
    /// The shared prefill of the current prompt.
    pub cache: &'a mut PrefillCache<B>,
}

impl<B: Backend> Generator for SweepGenerator<'_, B> {
    fn generate(
        &mut self,
        prompt: &str,
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Result<GenerationOutcome, BoxError> {
        let session = self.session;
        let policy = self
            .settings
            .policy::<B>(&session.name, session.model.num_layers())?;
        let memo = self.cache.get(session, prompt)?;
        let config = greedy_config(max_new_tokens, stop);
        let mut caches = memo.caches.clone();
        let decode = |ids: &[u32]| session.tokenizer.decode(ids, true).unwrap_or_default();
        let mut ignore = |_: &str| {};
        let stream = Some(TextStream {
            decode: &decode,
            on_text: &mut ignore,
        });
        let eos = session.tokenizer.eos_token_ids();
        let prefilled = memo.prefilled.clone();
        let output = if policy.keeps_all() {
            continue_generation(
                &session.model,
                prefilled,
                &config,
                &eos,
                &mut KeepAll,
                &mut caches,
                stream,
            )?
        } else {
            let mut compressor = PolicyCompressor::new(policy, session.model.num_layers());
            replay_prefill(&mut compressor, memo.recorder.queries(), &mut caches)
                .map_err(ModelError::from)?;
            continue_generation(
                &session.model,
                prefilled,
                &config,
                &eos,
                &mut compressor,
                &mut caches,
                stream,
            )?
        };
        Ok(GenerationOutcome {
            text: output.text.unwrap_or_default(),
            prompt_tokens: memo.prompt_tokens,
            new_tokens: output.tokens.len(),
        })
    }
}

/// LongBench's greedy decoding with a dataset's stop rule.
fn greedy_config(max_new_tokens: usize, stop: &StopRule) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        min_new_tokens: stop.min_new_tokens.min(max_new_tokens),
        sampling: Sampling::Greedy,
        stop_strings: if stop.stop_on_newline {
            vec!["\n".into()]
        } else {
            Vec::new()
        },
    }
}
