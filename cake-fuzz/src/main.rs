//! `cake-fuzz`: runs every parser target for N executions and prints a table of
//! executions, crashes, hangs and out-of-memory findings.
//!
//! ```text
//! cargo run --release -p cake-fuzz -- --executions 100000 [--target gguf] [--seed 7]
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cake_fuzz::runner::{execute_once, input_for};
use cake_fuzz::worker::{default_kill_after, worker_main};
use cake_fuzz::{CapAllocator, RunOptions, Stats, SuperviseOptions, TARGET_NAMES, run, supervise};

#[global_allocator]
static ALLOC: CapAllocator = CapAllocator;

const USAGE: &str = "\
usage: cake-fuzz [--executions N] [--target NAME]... [--seed S] [options]

Runs each parser target for N executions (default 10000) of seeded structural mutation
and prints executions, crashes (caught panics or process deaths), hangs (executions over
--hang-ms) and OOMs (single allocation requests over --cap-mib) per target.

options:
  --executions N     executions per target (default 10000)
  --executions-for NAME=N[,NAME=N...]
                     executions of the named targets instead (cheap parsers can take more)
  --target NAME      run only NAME (repeatable; comma-separated lists work too)
  --seed S           base seed (default 1); execution i of a target replays from (S, i)
  --hang-ms MS       an execution slower than this is a hang (default 2000)
  --kill-ms MS       a worker stuck this long is killed (default 10 x --hang-ms)
  --cap-mib MIB      largest single allocation allowed (default 256)
  --keep K           inputs saved per target and kind of finding (default 10)
  --findings DIR     where findings are saved (default target/cake-fuzz/findings)
  --in-process       no worker processes (an OOM or stack overflow ends the run)
  --json             also print one JSON object per target
  --print-input I    write the input of execution I of the one --target to stdout
  --replay FILE      run FILE once through the one --target (with --kind K, default 0)
  --list             list the targets and their seeds
targets: gguf, safetensors, config, tokenizer, longbench_record, predictions, settings,
score_function";

#[derive(Debug)]
struct Args {
    executions: u64,
    executions_for: Vec<(String, u64)>,
    targets: Vec<String>,
    seed: u64,
    hang_ms: u64,
    kill_ms: Option<u64>,
    cap_mib: usize,
    keep: usize,
    findings: PathBuf,
    in_process: bool,
    json: bool,
    print_input: Option<u64>,
    replay: Option<PathBuf>,
    kind: u32,
    list: bool,
    worker: bool,
    start: u64,
    shared: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        executions: 10_000,
        executions_for: Vec::new(),
        targets: Vec::new(),
        seed: 1,
        hang_ms: 2000,
        kill_ms: None,
        cap_mib: 256,
        keep: 10,
        findings: PathBuf::from("target/cake-fuzz/findings"),
        in_process: false,
        json: false,
        print_input: None,
        replay: None,
        kind: 0,
        list: false,
        worker: false,
        start: 0,
        shared: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        }
        match flag.as_str() {
            "--executions" => a.executions = num(&flag, value(&flag)?)?,
            "--executions-for" => {
                for item in value(&flag)?.split(',') {
                    let (name, n) = item
                        .split_once('=')
                        .ok_or_else(|| format!("{flag}: {item:?} is not NAME=N"))?;
                    a.executions_for
                        .push((name.to_string(), num(&flag, n.to_string())?));
                }
            }
            "--target" => a
                .targets
                .extend(value(&flag)?.split(',').map(str::to_string)),
            "--seed" => a.seed = num(&flag, value(&flag)?)?,
            "--hang-ms" => a.hang_ms = num(&flag, value(&flag)?)?,
            "--kill-ms" => a.kill_ms = Some(num(&flag, value(&flag)?)?),
            "--cap-mib" => a.cap_mib = num(&flag, value(&flag)?)?,
            "--keep" => a.keep = num(&flag, value(&flag)?)?,
            "--findings" => a.findings = value(&flag)?.into(),
            "--in-process" => a.in_process = true,
            "--json" => a.json = true,
            "--print-input" => a.print_input = Some(num(&flag, value(&flag)?)?),
            "--replay" => a.replay = Some(value(&flag)?.into()),
            "--kind" => a.kind = num(&flag, value(&flag)?)?,
            "--list" => a.list = true,
            "--worker" => a.worker = true,
            "--start" => a.start = num(&flag, value(&flag)?)?,
            "--shared" => a.shared = Some(value(&flag)?.into()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    for t in a
        .targets
        .iter()
        .chain(a.executions_for.iter().map(|(t, _)| t))
    {
        if !TARGET_NAMES.contains(&t.as_str()) {
            return Err(format!("unknown target {t:?}"));
        }
    }
    if a.targets.is_empty() {
        a.targets = TARGET_NAMES.iter().map(|s| s.to_string()).collect();
    }
    Ok(a)
}

fn one_target(a: &Args) -> Result<Box<dyn cake_fuzz::Target>, String> {
    match a.targets.as_slice() {
        [name] => cake_fuzz::target(name).ok_or_else(|| format!("unknown target {name}")),
        _ => Err("give exactly one --target".into()),
    }
}

fn print_table(all: &[Stats]) {
    println!(
        "{:<18} {:>12} {:>8} {:>6} {:>6} {:>10} {:>9}",
        "target", "executions", "crashes", "hangs", "OOMs", "exec/s", "seconds"
    );
    let mut total = Stats {
        target: "total".into(),
        ..Stats::default()
    };
    for s in all {
        total.executions += s.executions;
        total.crashes += s.crashes;
        total.hangs += s.hangs;
        total.ooms += s.ooms;
        total.elapsed += s.elapsed;
    }
    for s in all.iter().chain([&total]) {
        let secs = s.elapsed.as_secs_f64();
        println!(
            "{:<18} {:>12} {:>8} {:>6} {:>6} {:>10.0} {:>9.1}",
            s.target,
            s.executions,
            s.crashes,
            s.hangs,
            s.ooms,
            s.executions as f64 / secs.max(1e-9),
            secs
        );
    }
    for s in all {
        for (site, n) in &s.sites {
            println!("  {}: {n} x {site}", s.target);
        }
    }
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("cake-fuzz: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    cake_fuzz::alloc::set_cap(a.cap_mib.saturating_mul(1 << 20));
    let hang_limit = Duration::from_millis(a.hang_ms);
    let opts = RunOptions {
        seed: a.seed,
        start: a.start,
        end: a.executions,
        hang_limit,
        kill_after: a
            .kill_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| default_kill_after(hang_limit)),
        keep: a.keep,
    };

    if a.worker {
        let (Some(page), [target]) = (&a.shared, a.targets.as_slice()) else {
            eprintln!("cake-fuzz: --worker needs --shared and one --target");
            return ExitCode::from(2);
        };
        return match worker_main(target, &opts, page, &a.findings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cake-fuzz worker: {e}");
                ExitCode::from(3)
            }
        };
    }
    if a.list {
        for name in &a.targets {
            if let Some(t) = cake_fuzz::target(name) {
                println!("{name}:");
                for s in t.seeds() {
                    println!("  kind {} {:>8} bytes  {}", s.kind, s.bytes.len(), s.name);
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    if let Some(index) = a.print_input {
        return match one_target(&a) {
            Ok(t) => {
                let seeds = t.seeds();
                let (s, input) = input_for(t.as_ref(), &seeds, a.seed, index);
                eprintln!("seed file: {} (kind {})", seeds[s].name, seeds[s].kind);
                let _ = std::io::stdout().write_all(&input);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cake-fuzz: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(path) = &a.replay {
        let mut t = match one_target(&a) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cake-fuzz: {e}");
                return ExitCode::from(2);
            }
        };
        let input = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("cake-fuzz: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        let t0 = std::time::Instant::now();
        let result = execute_once(t.as_mut(), a.kind, &input);
        let took = t0.elapsed();
        return match result {
            Ok(()) => {
                println!("ok in {took:?}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                println!("crash after {took:?}: {message}");
                ExitCode::from(1)
            }
        };
    }

    let supervise_opts = SuperviseOptions {
        exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cake-fuzz")),
        run: opts.clone(),
        findings: a.findings.clone(),
        scratch: std::env::temp_dir(),
    };
    let mut all = Vec::new();
    for name in &a.targets {
        let executions = a
            .executions_for
            .iter()
            .rev()
            .find(|(t, _)| t == name)
            .map_or(a.executions, |&(_, n)| n);
        let opts = RunOptions {
            end: executions,
            ..opts.clone()
        };
        let supervise_opts = SuperviseOptions {
            run: opts.clone(),
            ..supervise_opts.clone()
        };
        let stats = if a.in_process {
            let Some(mut t) = cake_fuzz::target(name) else {
                continue;
            };
            let findings = a.findings.clone();
            let mut saved = [0usize; 3];
            run(t.as_mut(), &opts, None, &mut |f| {
                if saved[f.kind as usize] < opts.keep {
                    saved[f.kind as usize] += 1;
                    let _ = f.save(&findings);
                }
            })
        } else {
            match supervise(name, &supervise_opts) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cake-fuzz: {name}: {e}");
                    return ExitCode::from(3);
                }
            }
        };
        eprintln!(
            "cake-fuzz: {name}: {} executions in {:.1} s, {} crashes, {} hangs, {} OOMs",
            stats.executions,
            stats.elapsed.as_secs_f64(),
            stats.crashes,
            stats.hangs,
            stats.ooms
        );
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "target": stats.target, "executions": stats.executions,
                    "crashes": stats.crashes, "hangs": stats.hangs, "ooms": stats.ooms,
                    "seconds": stats.elapsed.as_secs_f64(), "sites": stats.sites,
                })
            );
        }
        all.push(stats);
    }
    print_table(&all);
    if all.iter().any(|s| s.total_findings() > 0) {
        println!("findings saved under {}", a.findings.display());
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
