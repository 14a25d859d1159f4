//! `cake inspect`: what a model is and what its cache costs.

use std::path::Path;

use anyhow::Result;
use cake_core::PolicyConfig;
use cake_models::DecoderConfig;
use cake_models::gguf::GgufFile;
use cake_models::load::gguf_weight_bytes;
use cake_models::weights::WeightFormat;

use crate::session::Session;

/// Arguments of `cake inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: smollm2-135m (default), qwen2.5-coder-0.5b, a .gguf file or a HF folder
    #[arg(long)]
    model: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Runs `cake inspect`.
pub fn run(args: Args) -> Result<()> {
    let device = Default::default();
    let session = Session::<cake_models::Cpu>::open(args.model.as_deref(), &device)?;
    let c = session.config();
    let taus: Vec<serde_json::Value> = [128usize, 1024]
        .iter()
        .map(|&cache_size| {
            let t = PolicyConfig {
                cache_size,
                ..PolicyConfig::default()
            }
            .resolve_tau(&session.name);
            serde_json::json!({"cache_size": cache_size, "tau1": t.tau1, "tau2": t.tau2, "source": format!("{:?}", t.source)})
        })
        .collect();
    let weights = weight_summary(&session.path, c)?;
    let value = serde_json::json!({
        "name": session.name,
        "path": session.path,
        "architecture": format!("{:?}", c.architecture),
        "layers": c.num_layers,
        "query_heads": c.num_heads,
        "kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_size": c.hidden_size,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "sliding_window": c.sliding_window.iter().flatten().next(),
        "kv_bytes_per_token_f32": session.kv_bytes_per_token(),
        "weights": weights,
        "chat_template": session.tokenizer.chat_template(),
        "default_taus": taus,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("model           {}", session.name);
    println!("path            {}", session.path.display());
    println!("architecture    {:?}", c.architecture);
    println!(
        "layers          {} | query heads {} | KV heads {} | head dim {}",
        c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim
    );
    println!("hidden / vocab  {} / {}", c.hidden_size, c.vocab_size);
    println!(
        "K/V per token   {} bytes (f32, all layers)",
        session.kv_bytes_per_token()
    );
    println!(
        "weights         {} bytes as f32 (--weights f32), {} bytes as stored (--weights stored)",
        weights["f32_bytes"], weights["stored_bytes"]
    );
    if let Some(formats) = weights["formats"].as_object() {
        for (format, entry) in formats {
            println!(
                "  {format:<13} {} tensors, {} bytes in the file{}",
                entry["tensors"],
                entry["bytes"],
                if entry["packed"] == true {
                    " (kept packed)"
                } else {
                    ""
                }
            );
        }
    }
    for t in &taus {
        println!(
            "taus at C={:<5} tau1 {} tau2 {} ({})",
            t["cache_size"], t["tau1"], t["tau2"], t["source"]
        );
    }
    match session.tokenizer.chat_template() {
        Some(template) => println!("chat template\n{template}"),
        None => println!("chat template   none (plain-text fallback)"),
    }
    Ok(())
}

/// Bytes of the weights as f32 and as stored, and the file's tensors per element type.
fn weight_summary(path: &Path, config: &DecoderConfig) -> Result<serde_json::Value> {
    if path.is_dir() {
        let bytes = cake_models::load::weight_bytes(config);
        return Ok(serde_json::json!({"f32_bytes": bytes, "stored_bytes": bytes, "formats": {}}));
    }
    let file = GgufFile::open(path)?;
    let mut formats = std::collections::BTreeMap::<String, (u64, u64, bool)>::new();
    for t in file.tensors() {
        let entry = formats.entry(t.ty.to_string()).or_default();
        entry.0 += 1;
        entry.1 += t.size;
        entry.2 |= t.ty.block_format().is_some() && t.dims.len() == 2;
    }
    let formats: serde_json::Map<String, serde_json::Value> = formats
        .into_iter()
        .map(|(ty, (tensors, bytes, packed))| {
            (
                ty,
                serde_json::json!({"tensors": tensors, "bytes": bytes, "packed": packed}),
            )
        })
        .collect();
    Ok(serde_json::json!({
        "f32_bytes": gguf_weight_bytes(&file, WeightFormat::F32),
        "stored_bytes": gguf_weight_bytes(&file, WeightFormat::Stored),
        "formats": formats,
    }))
}
