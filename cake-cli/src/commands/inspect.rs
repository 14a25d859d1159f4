//! `cake inspect`: what a model is and what its cache costs.

use anyhow::Result;
use cake_core::PolicyConfig;

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
