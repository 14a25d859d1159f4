//! The fuzz targets, one per parser: each owns its seeds (real files of the repository and
//! files built by the rules of their format), its mutation settings and an `execute` that
//! feeds one input through the parser and then through what cake does with a parsed file.
//! Errors are expected outcomes; only panics, slow executions and oversized allocations
//! are findings.

use std::path::{Path, PathBuf};

use cake_core::{PolicyConfig, PolicySpec, ScoreFunction, Static};
use cake_longbench::eval::evaluate_dir;
use cake_longbench::record::read_dataset;
use cake_models::config::{architecture_of, decoder_config};
use cake_models::gguf::{GgufFile, hf_name};
use cake_models::tokenizer::{ChatMessage, Tokenizer};
use cake_models::weights::{SafetensorsFolder, WeightSource};
use serde_json::Value as Json;

use crate::gguf_seed::{gguf_fields, small_model};
use crate::mutate::{Field, MutationConfig, Seed};

/// One parser under test.
pub trait Target {
    /// Short name used on the command line and in reports.
    fn name(&self) -> &'static str;
    /// The seed corpus (real files first).
    fn seeds(&self) -> Vec<Seed>;
    /// How inputs are mutated.
    fn mutation(&self) -> MutationConfig;
    /// Runs one input of seed kind `kind` through the parser and what consumes its result.
    fn execute(&mut self, kind: u32, input: &[u8]);
}

/// Names of every target, in run order.
pub const TARGET_NAMES: [&str; 8] = [
    "gguf",
    "safetensors",
    "config",
    "tokenizer",
    "longbench_record",
    "predictions",
    "settings",
    "score_function",
];

/// Builds the target called `name` (with its scratch folder), if there is one.
pub fn target(name: &str) -> Option<Box<dyn Target>> {
    Some(match name {
        "gguf" => Box::new(Gguf),
        "safetensors" => Box::new(Safetensors::new()),
        "config" => Box::new(Config),
        "tokenizer" => Box::new(TokenizerTarget::new()),
        "longbench_record" => Box::new(LongBenchRecord::new()),
        "predictions" => Box::new(Predictions::new()),
        "settings" => Box::new(Settings),
        "score_function" => Box::new(ScoreFunctionTarget),
        _ => return None,
    })
}

macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../", $path))
    };
}

fn write(path: &Path, bytes: &[u8]) {
    // A scratch folder that cannot be written is a harness failure, not a finding.
    std::fs::write(path, bytes)
        .unwrap_or_else(|e| panic!("cake-fuzz: write {}: {e}", path.display()));
}

/// Environment variable naming the folder scratch folders are made in (the supervisor
/// sets it for its workers and removes the folder afterwards, so that the scratch folders
/// of workers that died are not left behind).
pub const SCRATCH_ENV: &str = "CAKE_FUZZ_SCRATCH";

fn scratch() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix("cake-fuzz-");
    match std::env::var_os(SCRATCH_ENV) {
        Some(root) => builder.tempdir_in(root),
        None => builder.tempdir(),
    }
    .unwrap_or_else(|e| panic!("cake-fuzz: cannot create a scratch folder: {e}"))
}

fn subdir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cake-fuzz: create {}: {e}", dir.display()));
    dir
}

// ---------------------------------------------------------------------------------------
// GGUF
// ---------------------------------------------------------------------------------------

/// GGUF header, metadata and tensor table (`GgufFile::from_bytes`), then the Hugging Face
/// config, the tokenizer rebuilt from metadata, and every tensor dequantised.
struct Gguf;

const GGUF_DICTIONARY: &[&str] = &[
    "general.architecture",
    "general.alignment",
    "llama.block_count",
    "llama.attention.head_count",
    "llama.embedding_length",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.chat_template",
    "qwen2",
    "mistral",
    "gpt2",
    "llama3",
    "blk.0.attn_q.weight",
    "output.weight",
];

impl Target for Gguf {
    fn name(&self) -> &'static str {
        "gguf"
    }

    fn seeds(&self) -> Vec<Seed> {
        let mut seeds = vec![
            Seed::new(
                "cake-models/fixtures/gguf/tiny.gguf",
                0,
                fixture!("cake-models/fixtures/gguf/tiny.gguf").to_vec(),
            ),
            Seed::new(
                "built llama (tokenizer, F32/F16/Q8_0)",
                0,
                small_model(false),
            ),
            Seed::new("built qwen2 (tokenizer, biases)", 0, small_model(true)),
        ];
        for s in &mut seeds {
            s.fields = gguf_fields(&s.bytes);
        }
        seeds
    }

    fn mutation(&self) -> MutationConfig {
        MutationConfig {
            text_percent: 10,
            max_len: 1 << 20,
            dictionary: GGUF_DICTIONARY,
        }
    }

    fn execute(&mut self, _kind: u32, input: &[u8]) {
        let Ok(file) = GgufFile::from_bytes("fuzz.gguf", input.to_vec()) else {
            return;
        };
        let md = file.metadata();
        for key in md.keys() {
            let _ = (md.get_u64(key), md.get_f64(key), md.get_str(key));
            let _ = (
                md.get_str_array(key),
                md.get_int_array(key),
                md.get_bool(key),
            );
        }
        let _ = file.architecture();
        if let Ok(config) = file.hf_config() {
            let _ = decoder_config(&config);
        }
        if let Ok(tokenizer) = Tokenizer::from_gguf(&file) {
            use_tokenizer(&tokenizer);
        }
        // Every tensor once: under its Hugging Face name (q/k un-permuted) when it has one,
        // else dequantised as stored.
        for tensor in file.hf_tensors() {
            let _ = tensor;
        }
        for info in file.tensors().iter().filter(|t| hf_name(&t.name).is_err()) {
            let _ = file.dequantize(&info.name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------

/// A safetensors file as `model.safetensors` (kind 0), or a `model.safetensors.index.json`
/// over the tiny Llama's three shards (kind 1), opened with `SafetensorsFolder::open`; then
/// every tensor the header names is read as f32.
struct Safetensors {
    _root: tempfile::TempDir,
    single: PathBuf,
    sharded: PathBuf,
}

impl Safetensors {
    fn new() -> Self {
        let root = scratch();
        let single = subdir(root.path(), "single");
        let sharded = subdir(root.path(), "sharded");
        for (name, bytes) in LLAMA_SHARDS {
            write(&sharded.join(name), bytes);
        }
        Self {
            _root: root,
            single,
            sharded,
        }
    }
}

const LLAMA_SHARDS: [(&str, &[u8]); 3] = [
    (
        "model-00001-of-00003.safetensors",
        fixture!("cake-models/fixtures/tiny/llama/model-00001-of-00003.safetensors"),
    ),
    (
        "model-00002-of-00003.safetensors",
        fixture!("cake-models/fixtures/tiny/llama/model-00002-of-00003.safetensors"),
    ),
    (
        "model-00003-of-00003.safetensors",
        fixture!("cake-models/fixtures/tiny/llama/model-00003-of-00003.safetensors"),
    ),
];

/// A small safetensors file with one tensor of each float dtype and one integer tensor:
/// 8-byte header length, JSON header padded with spaces, data.
fn small_safetensors() -> Vec<u8> {
    let header = r#"{"__metadata__":{"format":"pt"},"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"model.embed_tokens.weight":{"dtype":"F16","shape":[2,4],"data_offsets":[16,32]},"lm_head.weight":{"dtype":"BF16","shape":[2,2,2],"data_offsets":[32,48]},"ids":{"dtype":"I32","shape":[2],"data_offsets":[48,56]},"empty":{"dtype":"F32","shape":[0,3],"data_offsets":[56,56]}}"#;
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend((0..56u8).map(|i| i.wrapping_mul(37) & 0x3f));
    out
}

/// Tensor names in a safetensors header, read leniently (the parser under test decides
/// what is valid; this only picks the names to ask for).
fn safetensors_names(bytes: &[u8]) -> Vec<String> {
    let Some(len) = bytes.get(..8) else {
        return Vec::new();
    };
    let len = u64::from_le_bytes(len.try_into().unwrap_or([0; 8]));
    let Some(header) = usize::try_from(len)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
    else {
        return Vec::new();
    };
    match serde_json::from_slice::<Json>(header) {
        Ok(Json::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

const SAFETENSORS_DICTIONARY: &[&str] = &[
    "\"dtype\"",
    "\"shape\"",
    "\"data_offsets\"",
    "\"F32\"",
    "\"F16\"",
    "\"BF16\"",
    "\"I64\"",
    "\"F8_E4M3\"",
    "\"__metadata__\"",
    "\"weight_map\"",
    "model-00002-of-00003.safetensors",
    "../model.safetensors",
    "model.safetensors",
];

impl Target for Safetensors {
    fn name(&self) -> &'static str {
        "safetensors"
    }

    fn seeds(&self) -> Vec<Seed> {
        let header_len = Field {
            offset: 0,
            width: 8,
        };
        let mut seeds = vec![
            Seed::new(
                "cake-models/fixtures/tiny/qwen2/model.safetensors",
                0,
                fixture!("cake-models/fixtures/tiny/qwen2/model.safetensors").to_vec(),
            ),
            Seed::new(
                "cake-models/fixtures/tiny/mistral/model.safetensors",
                0,
                fixture!("cake-models/fixtures/tiny/mistral/model.safetensors").to_vec(),
            ),
            Seed::new(
                "cake-models/fixtures/tiny/llama/model-00001-of-00003.safetensors",
                0,
                LLAMA_SHARDS[0].1.to_vec(),
            ),
            Seed::new("built (F32, F16, BF16, I32, empty)", 0, small_safetensors()),
            Seed::new(
                "cake-models/fixtures/tiny/llama/model.safetensors.index.json",
                1,
                fixture!("cake-models/fixtures/tiny/llama/model.safetensors.index.json").to_vec(),
            ),
        ];
        for s in seeds.iter_mut().filter(|s| s.kind == 0) {
            s.fields = vec![header_len];
        }
        seeds
    }

    fn mutation(&self) -> MutationConfig {
        MutationConfig {
            text_percent: 40,
            max_len: 1 << 20,
            dictionary: SAFETENSORS_DICTIONARY,
        }
    }

    fn execute(&mut self, kind: u32, input: &[u8]) {
        let (dir, names) = if kind == 1 {
            write(&self.sharded.join("model.safetensors.index.json"), input);
            let names = serde_json::from_slice::<Json>(input)
                .ok()
                .and_then(|j| {
                    j.get("weight_map")?
                        .as_object()
                        .map(|m| m.keys().cloned().collect())
                })
                .unwrap_or_default();
            (&self.sharded, names)
        } else {
            write(&self.single.join("model.safetensors"), input);
            (&self.single, safetensors_names(input))
        };
        let Ok(mut folder) = SafetensorsFolder::open(dir) else {
            return;
        };
        let _ = folder.origin();
        // A few tensors per execution (each `take` re-reads the header): the first and the
        // last names of the header, and one it lacks.
        let names: Vec<&String> = if names.len() > 6 {
            names[..3].iter().chain(&names[names.len() - 3..]).collect()
        } else {
            names.iter().collect()
        };
        for name in names.into_iter().chain([&"missing.weight".to_string()]) {
            if folder.contains(name) {
                let _ = folder.take(name);
            }
            let _ = folder.take_shaped(name, &[4]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------

/// A Hugging Face `config.json`: `architecture_of` and `decoder_config`.
struct Config;

const CONFIG_DICTIONARY: &[&str] = &[
    "\"architectures\"",
    "\"model_type\"",
    "\"LlamaForCausalLM\"",
    "\"MistralForCausalLM\"",
    "\"Qwen2ForCausalLM\"",
    "\"rope_scaling\"",
    "\"rope_parameters\"",
    "\"rope_type\"",
    "\"llama3\"",
    "\"yarn\"",
    "\"sliding_window\"",
    "\"use_sliding_window\"",
    "\"max_window_layers\"",
    "\"layer_types\"",
    "\"sliding_attention\"",
    "\"num_hidden_layers\"",
    "\"head_dim\"",
    "\"eos_token_id\"",
];

fn built_configs() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for qwen2 in [false, true] {
        if let Ok(f) = GgufFile::from_bytes("seed.gguf", small_model(qwen2))
            && let Ok(c) = f.hf_config()
            && let Ok(text) = serde_json::to_vec_pretty(&c)
        {
            out.push(text);
        }
    }
    out.push(
        br#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-6, "vocab_size": 256, "use_sliding_window": true, "sliding_window": 32,
  "max_window_layers": 2, "layer_types": ["full_attention", "full_attention",
  "sliding_attention", "sliding_attention"], "rope_theta": 1000000.0,
  "eos_token_id": [2, 3], "bos_token_id": null}"#
            .to_vec(),
    );
    out.push(
        br#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-5, "vocab_size": 256,
  "rope_theta": 500000.0, "rope_scaling": {"type": "llama3", "factor": 8.0,
  "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
  "tie_word_embeddings": true, "max_position_embeddings": 131072}"#
            .to_vec(),
    );
    out
}

impl Target for Config {
    fn name(&self) -> &'static str {
        "config"
    }

    fn seeds(&self) -> Vec<Seed> {
        let mut seeds = vec![
            Seed::new(
                "cake-models/fixtures/tiny/llama/config.json",
                0,
                fixture!("cake-models/fixtures/tiny/llama/config.json").to_vec(),
            ),
            Seed::new(
                "cake-models/fixtures/tiny/mistral/config.json",
                0,
                fixture!("cake-models/fixtures/tiny/mistral/config.json").to_vec(),
            ),
            Seed::new(
                "cake-models/fixtures/tiny/qwen2/config.json",
                0,
                fixture!("cake-models/fixtures/tiny/qwen2/config.json").to_vec(),
            ),
        ];
        for (i, text) in built_configs().into_iter().enumerate() {
            seeds.push(Seed::new(format!("built config {i}"), 0, text));
        }
        seeds
    }

    fn mutation(&self) -> MutationConfig {
        MutationConfig {
            text_percent: 80,
            max_len: 64 << 10,
            dictionary: CONFIG_DICTIONARY,
        }
    }

    fn execute(&mut self, _kind: u32, input: &[u8]) {
        let Ok(json) = serde_json::from_slice::<Json>(input) else {
            return;
        };
        let _ = architecture_of(&json);
        if let Ok(config) = decoder_config(&json) {
            let _ = (
                config.rope,
                config.sliding_window.len(),
                config.eos_token_ids,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// tokenizer folder + chat template
// ---------------------------------------------------------------------------------------

/// A Hugging Face tokenizer folder (`Tokenizer::from_hf_dir`) with one of its files
/// replaced by the input: kind 0 `tokenizer.json`, 1 `tokenizer_config.json` (chat
/// template and special tokens), 2 `generation_config.json`, 3 `chat_template.jinja`;
/// then encoding, decoding and chat-template rendering with the loaded template.
struct TokenizerTarget {
    _root: tempfile::TempDir,
    dirs: [PathBuf; 4],
}

const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

const HF_TOKENIZER: &[u8] = fixture!("cake-models/fixtures/tokenizer/hf_tiny/tokenizer.json");
const HF_TOKENIZER_CONFIG: &[u8] =
    fixture!("cake-models/fixtures/tokenizer/hf_tiny/tokenizer_config.json");
const HF_GENERATION_CONFIG: &[u8] =
    fixture!("cake-models/fixtures/tokenizer/hf_tiny/generation_config.json");

/// Chat templates in the styles of published models (ChatML as SmolLM2 and Qwen2.5 write
/// it, Llama 3.1 with dates and tool JSON, Mistral with role checks).
const TEMPLATES: [&str; 3] = [
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{{- bos_token }}\n{%- set date_string = strftime_now(\"%d %b %Y\") %}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{{- system_message }}\n{{- {\"tools\": [], \"n\": messages|length}|tojson(indent=4) }}\n{{- \"<|eot_id|>\" }}\n{%- set ns = namespace(count=0) %}\n{%- for message in messages %}\n    {%- set ns.count = ns.count + 1 %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n",
    "{%- if messages[0]['role'] == 'system' %}{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}{{- bos_token }}{%- for message in loop_messages %}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token}}{%- else %}{{- raise_exception('Only user and assistant roles are supported!') }}{%- endif %}{%- endfor %}",
];

const TOKENIZER_DICTIONARY: &[&str] = &[
    "{% for i in range(100000) %}x{% endfor %}",
    "{{ messages|tojson(indent=4) }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ strftime_now('%Y-%m-%d %B %b %H:%M:%S %%') }}",
    "{{ raise_exception('boom') }}",
    "{% set ns = namespace(a=1) %}{{ ns.a }}",
    "{{ 'ab' * 1000 }}",
    "{{ messages[0]['content'][::-1] }}",
    "{{ (messages|length) // 0 }}",
    "{% include 'other' %}",
    "{{ range(10)|list }}",
    "{{ message.content.split(' ')|join('|') }}",
    "{{ messages[-1].content.startswith('x') }}",
    "{% if %}",
    "{{ 1e400 }}",
    "\"chat_template\"",
    "\"bos_token\"",
    "\"eos_token\"",
    "\"added_tokens\"",
    "\"merges\"",
    "\"vocab\"",
    "\"ByteLevel\"",
    "\"Split\"",
    "\"Regex\"",
    "\"TemplateProcessing\"",
    "\"special_tokens\"",
    "\"WordPiece\"",
    "\"Unigram\"",
    "\"byte_fallback\"",
    "\"Precompiled\"",
    "\"precompiled_charsmap\"",
    "\"Metaspace\"",
    "\"normalizer\"",
    "\"decoder\"",
    "(?i:'s|'t)",
    "\\\\p{L}{0,99999}",
    "<|im_start|>",
];

impl TokenizerTarget {
    fn new() -> Self {
        let root = scratch();
        let dirs = TOKENIZER_FILES.map(|name| subdir(root.path(), name));
        for dir in &dirs {
            write(&dir.join("tokenizer.json"), HF_TOKENIZER);
            write(&dir.join("tokenizer_config.json"), HF_TOKENIZER_CONFIG);
            write(&dir.join("generation_config.json"), HF_GENERATION_CONFIG);
        }
        Self { _root: root, dirs }
    }
}

/// What cake does with a loaded tokenizer: encode (special tokens in the text), decode,
/// render a conversation with and without the generation prompt.
fn use_tokenizer(tokenizer: &Tokenizer) {
    let text = "Hello <|im_start|>user\nwörld 12345 \u{1f980}<|im_end|>";
    if let Ok(ids) = tokenizer.encode(text, true) {
        let _ = tokenizer.decode(&ids, false);
        let _ = tokenizer.decode(&ids, true);
    }
    let _ = tokenizer.decode(&[0, 1, 2, u32::MAX], false);
    let _ = (tokenizer.vocab_size(), tokenizer.eos_token_ids());
    let _ = (
        tokenizer.bos_token_id(),
        tokenizer.token_to_id("<|im_end|>"),
    );
    let messages = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "What is 2+2?"),
        ChatMessage::new("assistant", " 4 "),
        ChatMessage::new("user", "{{ 'injected' }}"),
    ];
    for add_generation_prompt in [true, false] {
        let _ = tokenizer.apply_chat_template(&messages, add_generation_prompt);
    }
}

impl Target for TokenizerTarget {
    fn name(&self) -> &'static str {
        "tokenizer"
    }

    fn seeds(&self) -> Vec<Seed> {
        let mut seeds = vec![
            Seed::new(
                "cake-models/fixtures/tokenizer/hf_tiny/tokenizer.json",
                0,
                HF_TOKENIZER.to_vec(),
            ),
            Seed::new(
                "cake-models/fixtures/tokenizer/hf_tiny/tokenizer_config.json",
                1,
                HF_TOKENIZER_CONFIG.to_vec(),
            ),
            Seed::new(
                "cake-models/fixtures/tokenizer/hf_tiny/generation_config.json",
                2,
                HF_GENERATION_CONFIG.to_vec(),
            ),
            Seed::new(
                "generation_config.json (one eos)",
                2,
                br#"{"bos_token_id": 1, "eos_token_id": 2, "do_sample": false}"#.to_vec(),
            ),
        ];
        // Byte-level BPE tokenizers as rebuilt from the built GGUF files (SmolLM2 and Qwen2
        // pre-tokenizers).
        for qwen2 in [false, true] {
            if let Ok(f) = GgufFile::from_bytes("seed.gguf", small_model(qwen2))
                && let Ok(t) = Tokenizer::from_gguf(&f)
                && let Ok(text) = t.inner().to_string(true)
            {
                seeds.push(Seed::new(
                    format!("tokenizer.json rebuilt from GGUF (qwen2 = {qwen2})"),
                    0,
                    text.into_bytes(),
                ));
            }
        }
        for (i, template) in TEMPLATES.iter().enumerate() {
            let config = serde_json::json!({
                "bos_token": "<s>", "eos_token": {"content": "<|im_end|>"},
                "unk_token": "<unk>", "pad_token": null,
                "chat_template": [{"name": "default", "template": template}],
            });
            if let Ok(text) = serde_json::to_vec_pretty(&config) {
                seeds.push(Seed::new(format!("tokenizer_config.json {i}"), 1, text));
            }
            seeds.push(Seed::new(
                format!("chat_template.jinja {i}"),
                3,
                template.as_bytes().to_vec(),
            ));
        }
        seeds
    }

    fn mutation(&self) -> MutationConfig {
        MutationConfig {
            text_percent: 80,
            max_len: 128 << 10,
            dictionary: TOKENIZER_DICTIONARY,
        }
    }

    fn execute(&mut self, kind: u32, input: &[u8]) {
        let k = (kind as usize).min(3);
        let dir = &self.dirs[k];
        write(&dir.join(TOKENIZER_FILES[k]), input);
        if let Ok(tokenizer) = Tokenizer::from_hf_dir(dir) {
            use_tokenizer(&tokenizer);
        }
    }
}

// ---------------------------------------------------------------------------------------
// LongBench records
// ---------------------------------------------------------------------------------------

/// A LongBench JSONL data file read with `read_dataset` (every record).
struct LongBenchRecord {
    _root: tempfile::TempDir,
    dir: PathBuf,
}

impl LongBenchRecord {
    fn new() -> Self {
        let root = scratch();
        let dir = root.path().to_path_buf();
        Self { _root: root, dir }
    }
}

const RECORD_SEEDS: [&str; 4] = [
    r#"{"input":"q","context":"c","answers":["Food"],"length":12,"dataset":"trec","language":"en","all_classes":["Food","Date"],"_id":"x1"}"#,
    "{\"input\": \"Who wrote the letter?\", \"context\": \"Passage 1:\\nThe letter was written by Anne.\\n\\nPassage 2:\\nIt rained.\", \"answers\": [\"Anne\", \"Anne Smith\"], \"length\": 14, \"dataset\": \"hotpotqa\", \"language\": \"en\", \"all_classes\": null, \"_id\": \"5a8b57f25542995d1e6f1371\"}\n{\"input\": \"\", \"context\": \"def f(x):\\n    return x\\n\", \"answers\": [\"    return x\"], \"length\": 7, \"dataset\": \"lcc\", \"language\": \"en\", \"all_classes\": null, \"_id\": \"c1\"}\n",
    "{\"input\": \"\u{8fd9}\u{662f}\u{4ec0}\u{4e48}\u{ff1f}\", \"context\": \"\u{6bb5}\u{843d}1\u{ff1a}\u{4f60}\u{597d}\u{4e16}\u{754c}\u{3002}\", \"answers\": [\"\u{4f60}\u{597d}\"], \"length\": 9, \"dataset\": \"multifieldqa_zh\", \"language\": \"zh\", \"all_classes\": null, \"_id\": \"zh-1\"}\n\n",
    r#"{"input":"What is the pass key?","context":"The grass is green. The pass key is 71432. The sky is blue.","answers":["71432"],"length":4096,"dataset":"passkey","language":"en","all_classes":null,"_id":"passkey-4096-0.50-0","depth":0.5}"#,
];

const JSONL_DICTIONARY: &[&str] = &[
    "\"_id\"",
    "\"answers\"",
    "\"all_classes\"",
    "\"length\"",
    "\"depth\"",
    "\"pred\"",
    "\"language\"",
    "\n",
    "\r\n",
    "\u{feff}",
    "\u{3000}",
    "\u{ff0c}",
];

impl Target for LongBenchRecord {
    fn name(&self) -> &'static str {
        "longbench_record"
    }

    fn seeds(&self) -> Vec<Seed> {
        RECORD_SEEDS
            .iter()
            .enumerate()
            .map(|(i, s)| Seed::new(format!("LongBench record file {i}"), 0, s.as_bytes()))
            .collect()
    }

    fn mutation(&self) -> MutationConfig {
        MutationConfig {
            text_percent: 80,
            max_len: 64 << 10,
            dictionary: JSONL_DICTIONARY,
        }
    }

    fn execute(&mut self, _kind: u32, input: &[u8]) {
        write(&self.dir.join("hotpotqa.jsonl"), input);
        let Ok(reader) = read_dataset(&self.dir, "hotpotqa") else {
            return;
        };
        // Every line, malformed ones included (the reader goes on after an error).
        for r in reader.flatten() {
            let _ = (r.answers.len(), r.all_classes, r.depth, r.length);
        }
    }
}

// ---------------------------------------------------------------------------------------
// prediction files
// ---------------------------------------------------------------------------------------

/// A prediction JSONL file of one dataset, scored with `evaluate_dir` (kind = dataset
/// index * 2 + LongBench-E flag), so each of the official metrics sees the parsed lines.
struct Predictions {
    _root: tempfile::TempDir,
    dirs: Vec<PathBuf>,
}

/// One dataset per metric (and the first-line rule of trec / triviaqa / lsht).
const PREDICTION_DATASETS: [&str; 11] = [
    "qasper",
    "multifieldqa_zh",
    "dureader",
    "gov_report",
    "trec",
    "passage_count",
    "passage_retrieval_en",
    "passage_retrieval_zh",
    "lcc",
    "lsht",
    "triviaqa",
];

impl Predictions {
    fn new() -> Self {
        let root = scratch();
        let dirs = (0..PREDICTION_DATASETS.len())
            .map(|i| subdir(root.path(), &i.to_string()))
            .collect();
        Self { _root: root, dirs }
    }
}

fn prediction_seed(dataset: &str) -> String {
    let (pred, answers, classes) = match dataset {
        "multifieldqa_zh" | "dureader" => (
            "\u{7b54}\u{6848}\u{662f}\u{5317}\u{4eac}\u{3002}",
            r#"["北京", "在北京"]"#,
            "null",
        ),
        "trec" => ("Food\nDate", r#"["Food"]"#, r#"["Food", "Date", "Human"]"#),
        "lsht" => ("\u{4f53}\u{80b2}\n", r#"["体育"]"#, r#"["体育", "财经"]"#),
        "passage_count" => ("There are 12 passages, not 13.", r#"["12"]"#, "null"),
        "passage_retrieval_en" => ("Paragraph 7", r#"["Paragraph 7"]"#, "null"),
        "passage_retrieval_zh" => ("\u{6bb5}\u{843d}3", r#"["段落3"]"#, "null"),
        "lcc" => ("    return x + 1\n}", r#"["    return x + 1;"]"#, "null"),
        _ => (
            "The letter was written by Anne Smith.",
            r#"["Anne Smith", "Anne"]"#,
            "null",
        ),
    };
    let pred = serde_json::to_string(pred).unwrap_or_default();
    let mut out = String::new();
    for (i, length) in [120u64, 5000, 12_000].iter().enumerate() {
        out.push_str(&format!(
            "{{\"pred\": {pred}, \"answers\": {answers}, \"all_classes\": {classes}, \"length\": {length}, \"_id\": \"{dataset}-{i}\"}}\n"
        ));
    }
    out
}

impl Target for Predictions {
    fn name(&self) -> &'static str {
        "predictions"
    }

    fn seeds(&self) -> Vec<Seed> {
        let mut seeds = Vec::new();
        for (i, dataset) in PREDICTION_DATASETS.iter().enumerate() {
            let text = prediction_seed(dataset);
            for e in 0..2u32 {
                seeds.push(Seed::new(
                    format!("{dataset}.jsonl predictions (LongBench-E {})", e == 1),
                    i as u32 * 2 + e,
                    text.as_bytes(),
                ));
            }
        }
        seeds
    }

    fn mutation(&self) -> MutationConfig {
        MutationConfig {
            text_percent: 80,
            // Predictions are bounded by the generation length (at most 512 tokens).
            max_len: 16 << 10,
            dictionary: JSONL_DICTIONARY,
        }
    }

    fn execute(&mut self, kind: u32, input: &[u8]) {
        let d = (kind as usize / 2).min(PREDICTION_DATASETS.len() - 1);
        let dir = &self.dirs[d];
        write(
            &dir.join(format!("{}.jsonl", PREDICTION_DATASETS[d])),
            input,
        );
        if let Ok(result) = evaluate_dir(dir, kind % 2 == 1) {
            let _ = result.result_json();
        }
    }
}

// ---------------------------------------------------------------------------------------
// settings TOML
// ---------------------------------------------------------------------------------------

/// A settings file as a `PolicySpec` (kind 0) or a flat `PolicyConfig` (kind 1), parsed
/// with `toml` and validated; a valid spec is then built into a compressor.
struct Settings;

const SETTINGS_SEEDS: [(u32, &str); 5] = [
    (
        0,
        "policy = \"cake\"\n\n[cache]\ncache_size = 256\nwindow = 32\ncascading = true\n",
    ),
    (
        0,
        "policy = \"SnapKV\"\nallocator = \"preference\"\nscorer = \"snapkv\"\n\n[cache]\nratio = 0.1\nwindow = 16\ntau1 = 1.5\ntau2 = 0.5\ngamma = 200.0\npool_kernel = 7\ndecode_evict = \"none\"\ndecode_slack = 8\nsinks = 4\nbeta = 20.0\n",
    ),
    (
        0,
        "policy = \"h2o\"\nallocator = \"static\"\nscore_fn = \"missing-score-function.json\"\n",
    ),
    (0, "policy = \"full\"\n"),
    (
        1,
        "# cake.toml (flat keys of the policy)\ncache_size = 1024\nwindow = 32\ncascading = false\ngamma = 0.0\nbeta = 1.0\npool_kernel = 1\nsinks = 0\n",
    ),
];

const SETTINGS_DICTIONARY: &[&str] = &[
    "policy",
    "allocator",
    "scorer",
    "score_fn",
    "[cache]",
    "[[cache]]",
    "cache_size",
    "ratio",
    "window",
    "tau1",
    "tau2",
    "gamma",
    "pool_kernel",
    "cascading",
    "decode_evict",
    "decode_slack",
    "sinks",
    "beta",
    "\"cake\"",
    "\"full\"",
    "\"tova\"",
    "\"pyramidkv\"",
    "\"streaming\"",
    "\"static\"",
    "\"uniform\"",
    "\"pyramid\"",
    "\"PREFERENCE\"",
    "nan",
    "+inf",
    "-nan",
    "1e400",
    "0x7fffffffffffffff",
    "1_000",
    "1979-05-27T07:32:00Z",
    "\"\"\"",
    "'''",
    "/dev/zero",
];

/// A model the published temperatures know, so lookups take their full path.
const SETTINGS_MODEL: &str = "Llama-3.1-8B-Instruct";

impl Target for Settings {
    fn name(&self) -> &'static str {
        "settings"
    }

    fn seeds(&self) -> Vec<Seed> {
        SETTINGS_SEEDS
            .iter()
            .enumerate()
            .map(|(i, (kind, s))| Seed::new(format!("settings TOML {i}"), *kind, s.as_bytes()))
            .collect()
    }

    fn mutation(&self) -> MutationConfig {
        MutationConfig {
            text_percent: 85,
            max_len: 16 << 10,
            dictionary: SETTINGS_DICTIONARY,
        }
    }

    fn execute(&mut self, _kind: u32, input: &[u8]) {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        if let Ok(spec) = toml::from_str::<PolicySpec>(text)
            && spec.validate().is_ok()
        {
            let _ = (spec.label(), spec.kinds(), spec.keeps_all());
            exercise_config(&spec.cache);
            let _ = spec.compressor::<cake_models::Cpu>(SETTINGS_MODEL, 30);
        }
        if let Ok(config) = toml::from_str::<PolicyConfig>(text)
            && config.validate().is_ok()
        {
            exercise_config(&config);
        }
    }
}

fn exercise_config(config: &PolicyConfig) {
    for prompt_len in [0usize, 1, 4096, usize::MAX] {
        let _ = config.cache_size_for(prompt_len);
    }
    let _ = config.plan(8192, 32);
    let _ = config.resolve_tau(SETTINGS_MODEL);
    let _ = config.resolve_tau_at(SETTINGS_MODEL, 512);
}

// ---------------------------------------------------------------------------------------
// score-function JSON
// ---------------------------------------------------------------------------------------

/// A fitted score-function file (`ScoreFunction::from_json_str`), then the shares the
/// static allocator takes from it for a model with the file's layer count.
struct ScoreFunctionTarget;

const SCORE_FUNCTION_SEEDS: [&str; 3] = [
    r#"{ "format": "cake-score-function/1", "model": "SmolLM2-135M-Instruct",
  "num_layers": 30, "num_kv_heads": 3, "degree": 3, "domain": [0.0, 1.0],
  "coefficients": [0.1, 0.2, -0.1, 0.05], "head_coefficients": null }"#,
    r#"{"format": "cake-score-function/1", "model": "synthetic", "num_layers": 6,
        "num_kv_heads": 2, "degree": 1, "domain": [0.0, 1.0], "coefficients": [1.0, -1.0],
        "head_coefficients": null, "cv": {"folds": 3}}"#,
    r#"{ "format": "cake-score-function/1", "model": "m", "num_layers": 3,
        "num_kv_heads": 2, "degree": 2, "domain": [0.0, 1.0], "coefficients": [1.0, -2.0, 2.0],
        "head_coefficients": [[1.0, 0.0, 0.0], [3.0, 0.0, -4.0]], "cv_error": 0.1, "extra": {"a": 1} }"#,
];

const SCORE_FUNCTION_DICTIONARY: &[&str] = &[
    "\"format\"",
    "\"cake-score-function/1\"",
    "\"num_layers\"",
    "\"num_kv_heads\"",
    "\"degree\"",
    "\"coefficients\"",
    "\"head_coefficients\"",
    "\"domain\"",
    "[[1.0], [2.0]]",
];

impl Target for ScoreFunctionTarget {
    fn name(&self) -> &'static str {
        "score_function"
    }

    fn seeds(&self) -> Vec<Seed> {
        SCORE_FUNCTION_SEEDS
            .iter()
            .enumerate()
            .map(|(i, s)| Seed::new(format!("score function {i}"), 0, s.as_bytes()))
            .collect()
    }

    fn mutation(&self) -> MutationConfig {
        MutationConfig {
            text_percent: 85,
            max_len: 16 << 10,
            dictionary: SCORE_FUNCTION_DICTIONARY,
        }
    }

    fn execute(&mut self, _kind: u32, input: &[u8]) {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        let Ok(f) = ScoreFunction::from_json_str(text) else {
            return;
        };
        let _ = (f.layer_shares(), f.head_shares(), f.x(f.num_layers));
        if let Ok(s) = Static::from_score_function(&f, f.num_layers) {
            let _ = s;
        }
    }
}
