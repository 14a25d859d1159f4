//! End-to-end tests of the `cake` binary: clear one-line errors on bad input, and a small
//! generate / pred / eval run on a tiny random-weight Llama (cake-models' parity fixture)
//! with a byte-level tokenizer.

mod common;

use std::path::{Path, PathBuf};

use common::{cake, success, tiny_model, write_records};

/// Runs `cake` and returns (success, stderr).
fn run(args: &[&str], dir: &Path) -> (bool, String) {
    let out = cake()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("cake runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cake <command> --model MODEL --data-dir DATA --window 4 --max-length 200` then
/// `args` (a tiny model's run over written records) in `dir`, and asserts success.
fn run_on_records(command: &str, model: &str, data: &Path, args: &[&str], dir: &Path) {
    let data = data.to_str().unwrap();
    let common = [
        command,
        "--model",
        model,
        "--data-dir",
        data,
        "--window",
        "4",
        "--max-length",
        "200",
    ];
    let (ok, stderr) = run(&[&common[..], args].concat(), dir);
    assert!(ok, "{stderr}");
}

/// The tiny model and `n` records of `dataset` in `work/data`.
struct Records {
    model: tempfile::TempDir,
    work: tempfile::TempDir,
    data: PathBuf,
}

impl Records {
    fn new(dataset: &str, n: usize) -> Self {
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        write_records(&data, dataset, n);
        Self {
            model: tiny_model(),
            work,
            data,
        }
    }

    /// `cake pred` of `policies` at cache sizes `sizes` into `out` (plus `extra` flags);
    /// must succeed.
    fn pred(&self, policies: &str, sizes: &str, out: &Path, extra: &[&str]) {
        let args = [
            "--policies",
            policies,
            "--cache-sizes",
            sizes,
            "--out",
            out.to_str().unwrap(),
        ];
        run_on_records(
            "pred",
            self.model.path().to_str().unwrap(),
            &self.data,
            &[&args[..], extra].concat(),
            self.work.path(),
        );
    }
}

/// Asserts failure with one `error:` line mentioning every needle, and no panic.
fn assert_clean_error(args: &[&str], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stderr) = run(args, dir.path());
    assert!(!ok, "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(!stderr.contains("stack backtrace"), "backtrace: {stderr}");
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(error_lines.len(), 1, "one error line expected: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
}

#[test]
fn missing_model_path_is_one_clear_line() {
    assert_clean_error(
        &["inspect", "--model", "/nonexistent/model.gguf"],
        &["/nonexistent/model.gguf"],
    );
}

#[test]
fn folder_without_config_json_is_named() {
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().to_str().unwrap();
    assert_clean_error(&["inspect", "--model", path], &["config.json"]);
}

#[test]
fn a_model_over_the_memory_limit_is_refused_with_both_figures() {
    let model = tiny_model();
    let path = model.path().to_str().unwrap();
    let out = cake()
        .args(["inspect", "--model", path])
        .env("CAKE_MEMORY_LIMIT", "1K")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("memory budget of 1024 bytes (CAKE_MEMORY_LIMIT)"),
        "{stderr}"
    );
    // A limit that is not a size is an error too, never ignored.
    let out = cake()
        .args(["inspect", "--model", path])
        .env("CAKE_MEMORY_LIMIT", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAKE_MEMORY_LIMIT=\"lots\""));
    // Within the limit the same model loads.
    let out = cake()
        .args(["inspect", "--model", path])
        .env("CAKE_MEMORY_LIMIT", "1G")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cache_size_not_above_window_is_rejected_before_loading() {
    assert_clean_error(
        &[
            "generate",
            "--prompt",
            "hi",
            "--cache-size",
            "16",
            "--window",
            "32",
        ],
        &["16", "32"],
    );
}

#[test]
fn unknown_policy_lists_the_known_ones() {
    assert_clean_error(
        &["generate", "--prompt", "hi", "--policy", "magic"],
        &["magic", "snapkv", "cake"],
    );
}

#[test]
fn names_ignore_case_and_the_environment_rejects_unknown_keys_like_the_file() {
    // `CAKE` and `SnapKV` parse; the run then stops on the cache size, before loading.
    assert_clean_error(
        &[
            "generate",
            "--prompt",
            "hi",
            "--policy",
            "CAKE",
            "--scorer",
            "SnapKV",
            "--cache-size",
            "16",
            "--window",
            "32",
        ],
        &["cache_size 16 must exceed window 32"],
    );
    // `full` has nothing to override.
    assert_clean_error(
        &[
            "generate", "--prompt", "hi", "--policy", "full", "--scorer", "h2o",
        ],
        &["`full` keeps every token"],
    );
    // Nor head budgets to set (they were silently ignored).
    assert_clean_error(
        &[
            "generate",
            "--prompt",
            "hi",
            "--policy",
            "full",
            "--head-budgets",
            "preference",
        ],
        &["`full` keeps every token", "--head-budgets"],
    );
    let dir = tempfile::tempdir().unwrap();
    for (key, value, needles) in [
        (
            "CAKE_CACHE_SISE",
            "128",
            ["CAKE_CACHE_SISE=128", "unknown field `cache_sise`"],
        ),
        ("CAKE_WINDOW", "wide", ["CAKE_WINDOW=wide", "invalid type"]),
        (
            "CAKE_POLICY",
            "magic",
            ["CAKE_POLICY=magic", "full, streaming, h2o"],
        ),
    ] {
        let out = cake()
            .current_dir(dir.path())
            .env(key, value)
            .args(["generate", "--prompt", "hi"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}={value} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in needles {
            assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
        }
    }
}

#[test]
fn exit_codes_say_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let code = |args: &[&str]| {
        cake()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
    };
    // Usage: clap's and ours.
    assert_eq!(code(&["generate", "--bogus"]), Some(2));
    assert_eq!(
        code(&["generate", "--prompt", "hi", "--cache-size", "0"]),
        Some(2)
    );
    // A corrupt model file.
    let model = dir.path().join("bad.gguf");
    std::fs::write(&model, b"GGUF\x03\x00\x00\x00 not a model").unwrap();
    assert_eq!(
        code(&["inspect", "--model", model.to_str().unwrap()]),
        Some(4)
    );
    // A memory limit that is not a size is a usage error, named.
    let out = cake()
        .current_dir(dir.path())
        .args(["inspect"])
        .env("CAKE_MEMORY_LIMIT", "banana")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CAKE_MEMORY_LIMIT=\"banana\" is not a size"),
        "{stderr}"
    );
    // A corrupt prediction file.
    let run = dir.path().join("preds/cake-c64-w32-00000000");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("synth_kv.jsonl"), "not json\n").unwrap();
    assert_eq!(
        code(&["eval", dir.path().join("preds").to_str().unwrap()]),
        Some(3)
    );
}

#[test]
fn unknown_dataset_lists_the_known_ones() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    assert_clean_error(
        &[
            "pred",
            "--datasets",
            "nosuchset",
            "--data-dir",
            dir,
            "--out",
            dir,
        ],
        &["nosuchset", "narrativeqa"],
    );
}

#[test]
fn unknown_settings_file_key_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cake.toml"), "cache_sise = 128\n").unwrap();
    let (ok, stderr) = run(&["generate", "--prompt", "hi"], dir.path());
    assert!(!ok);
    assert!(
        stderr.contains("cake.toml") && stderr.contains("cache_sise"),
        "{stderr}"
    );
}

#[test]
fn settings_layer_file_then_env_then_flags() {
    let model = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cake.toml"),
        "window = 4\ncache_size = 12\n",
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let args = [
        "generate",
        "--model",
        model.path().to_str().unwrap(),
        "--prompt",
        "abcdefghijklmnopqrstuvwxyz0123456789",
        "--max-new-tokens",
        "4",
        "--report",
        report.to_str().unwrap(),
        "--json",
    ];
    // File: C=12, w=4. Env overrides C; the flag overrides the window.
    success(
        cake()
            .current_dir(dir.path())
            .env("CAKE_CACHE_SIZE", "10")
            .args(args)
            .args(["--window", "2"]),
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["cache_size"], 10);
    assert_eq!(report["window"], 2);
    // 36 prompt bytes, L = 3 layers: every layer keeps budget + w and the total is L * C.
    let held: u64 = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["held"].as_u64().unwrap())
        .sum();
    assert_eq!(report["prompt_len"], 36);
    // Decoding evicts one token per appended one: the size stays at L * C.
    assert_eq!(held, 3 * 10);
}

#[test]
fn fit_per_head_writes_a_score_function_the_static_allocator_uses() {
    let model = tiny_model();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_records(&data, "synth_passkey", 4);
    write_records(&data, "synth_kv", 4);
    let out = work.path().join("fit");
    let model = model.path().to_str().unwrap();
    let args = ["--folds", "2", "--per-head", "--out", out.to_str().unwrap()];
    run_on_records("fit", model, &data, &args, work.path());
    // 2 datasets x 4 samples x 3 layers x (whole layer + 2 KV heads)
    let stats = std::fs::read_to_string(out.join("stats.jsonl")).unwrap();
    assert_eq!(stats.lines().count(), 2 * 4 * 3 * 3);
    let rows: Vec<serde_json::Value> = stats
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Shares of each sample's layers sum to 1, for the whole layer and for every head.
    for dataset in ["synth_passkey", "synth_kv"] {
        for head in [serde_json::Value::Null, 0.into(), 1.into()] {
            let total: f64 = rows
                .iter()
                .filter(|r| {
                    r["dataset"] == dataset && r["sample_id"] == "r0" && r["kv_head"] == head
                })
                .map(|r| r["share"].as_f64().unwrap())
                .sum();
            assert!((total - 1.0).abs() < 1e-9, "{dataset} head {head}: {total}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(out.join("stats.csv"))
            .unwrap()
            .lines()
            .count(),
        1 + 2 * 4 * 3 * 3
    );
    let score_fn = out.join("score_function.json");
    let parsed = cake_core::ScoreFunction::from_path(&score_fn).unwrap();
    assert_eq!(parsed.num_layers, 3);
    assert_eq!(parsed.num_kv_heads, 2);
    assert_eq!(parsed.coefficients.len(), parsed.degree + 1);
    let heads = parsed.head_coefficients.expect("per-head polynomials");
    assert_eq!(heads.len(), 2);
    let report = std::fs::read_to_string(out.join("fit.md")).unwrap();
    assert!(report.contains("| held-out dataset |"), "{report}");
    assert!(report.contains("| synth_kv |") && report.contains("| synth_passkey |"));
    assert!(report.contains("| KV head |"), "{report}");
    for plot in ["fit.svg", "fit.png", "fit-head-0.svg", "fit-head-1.svg"] {
        assert!(out.join(plot).is_file(), "{plot} missing");
    }

    // The fitted file drives generation with no window statistics.
    let pred = work.path().join("pred");
    let args = [
        "--datasets",
        "synth_kv",
        "--policies",
        "cake",
        "--allocator",
        "static",
        "--score-fn",
        score_fn.to_str().unwrap(),
        "--cache-sizes",
        "8",
        "--out",
        pred.to_str().unwrap(),
    ];
    run_on_records("pred", model, &data, &args, work.path());
    let runs: Vec<_> = std::fs::read_dir(&pred).unwrap().collect();
    assert_eq!(runs.len(), 1);
    let run_dir = runs[0].as_ref().unwrap().path();
    let predictions = std::fs::read_to_string(run_dir.join("synth_kv.jsonl")).unwrap();
    assert_eq!(predictions.lines().count(), 4);

    // Its per-head polynomials drive per-head budgets: `generate --json` lists each KV
    // head's kept positions with its own length, and the bytes are the kept rows'.
    let out = success(cake().current_dir(work.path()).args([
        "generate",
        "--model",
        model,
        "--prompt",
        "the quick brown fox jumps over the lazy dog, again and again and again.",
        "--max-new-tokens",
        "3",
        "--window",
        "4",
        "--cache-size",
        "16",
        "--head-budgets",
        "static",
        "--score-fn",
        score_fn.to_str().unwrap(),
        "--json",
    ]));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &json["report"];
    assert_eq!(report["head_budgets"], "static");
    let mut rows = 0;
    for layer in report["layers"].as_array().unwrap() {
        let budgets: Vec<u64> = serde_json::from_value(layer["head_budgets"].clone()).unwrap();
        let kept: Vec<Vec<u64>> = serde_json::from_value(layer["kept_positions"].clone()).unwrap();
        assert_eq!(budgets.len(), 2);
        let lens: Vec<u64> = kept.iter().map(|k| k.len() as u64).collect();
        assert_eq!(
            lens,
            budgets.iter().map(|b| b + 4).collect::<Vec<_>>(),
            "{layer}"
        );
        rows += lens.iter().sum::<u64>();
    }
    // The tiny model: head width 16, f32 keys and values.
    assert_eq!(report["bytes_held"].as_u64().unwrap(), rows * 2 * 16 * 4);
    // A static mode needs the per-head file; a whole-layer-only fit names the fix.
    assert_clean_error(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "abc",
            "--head-budgets",
            "static",
        ],
        &["--score-fn", "cake fit --per-head"],
    );
}

#[test]
fn fit_without_data_names_the_folder() {
    let model = tiny_model();
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("nothing-here");
    std::fs::create_dir_all(&empty).unwrap();
    assert_clean_error(
        &[
            "fit",
            "--model",
            model.path().to_str().unwrap(),
            "--data-dir",
            empty.to_str().unwrap(),
            "--out",
            work.path().join("out").to_str().unwrap(),
        ],
        &["nothing-here"],
    );
}

#[test]
fn pred_then_eval_on_a_tiny_model_and_sweep_equals_separate_runs() {
    let records = Records::new("synth_passkey", 3);
    let work = &records.work;
    // One `cake pred` of full, snapkv and cake at C = 8, 16 into `out`; must succeed.
    let pred = |out: &Path, extra: &[&str]| records.pred("full,snapkv,cake", "8,16", out, extra);
    let sweep = work.path().join("sweep");
    let separate = work.path().join("separate");
    pred(&sweep, &[]);
    pred(&separate, &["--no-sweep"]);
    let folders = |root: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let names = folders(&sweep);
    assert_eq!(
        names.len(),
        5,
        "full once + 2 policies x 2 sizes: {names:?}"
    );
    assert_eq!(names, folders(&separate));
    for name in &names {
        let a = std::fs::read(sweep.join(name).join("synth_passkey.jsonl")).unwrap();
        let b = std::fs::read(separate.join(name).join("synth_passkey.jsonl")).unwrap();
        assert_eq!(a, b, "{name}: sweep and separate runs differ");
        assert_eq!(String::from_utf8(a).unwrap().lines().count(), 3);
    }
    // Negative control: at C = 8 the evicting policies keep a fraction of each prompt, so
    // their answers differ from the full cache's on some record (a sweep that replayed the
    // full cache for every policy would pass the byte-equality above).
    let answers = |name: &str| -> Vec<(String, String)> {
        std::fs::read_to_string(sweep.join(name).join("synth_passkey.jsonl"))
            .unwrap()
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let pred = v["pred"].as_str().unwrap().to_string();
                (pred, v["answers"][0].as_str().unwrap().to_string())
            })
            .collect()
    };
    let full = names.iter().find(|n| n.starts_with("full")).unwrap();
    let evicting_c8 = names
        .iter()
        .filter(|n| n.contains("-c8-") && !n.starts_with("full"));
    for evicting in evicting_c8 {
        assert_ne!(
            answers(evicting),
            answers(full),
            "{evicting}: same answers as the full cache"
        );
    }
    // Resuming a finished run generates nothing and changes nothing.
    let before = std::fs::read(sweep.join(&names[0]).join("synth_passkey.jsonl")).unwrap();
    pred(&sweep, &[]);
    let after = std::fs::read(sweep.join(&names[0]).join("synth_passkey.jsonl")).unwrap();
    assert_eq!(before, after);

    let (ok, stderr) = run(&["eval", sweep.to_str().unwrap()], work.path());
    assert!(ok, "{stderr}");
    let summary = std::fs::read_to_string(sweep.join("summary.md")).unwrap();
    assert!(summary.contains("| cake |") && summary.contains("C=8") && summary.contains("C=16"));
    for name in &names {
        let result: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(sweep.join(name).join("result.json")).unwrap(),
        )
        .unwrap();
        // LongBench's count_score, recomputed here: the share of the numbers in the
        // answer that equal the gold one, averaged over records, in percent (2 decimals).
        let by_hand: f64 = answers(name)
            .iter()
            .map(|(pred, gold)| {
                let numbers: Vec<&str> = pred
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|n| !n.is_empty())
                    .collect();
                let right = numbers.iter().filter(|n| *n == gold).count();
                if numbers.is_empty() {
                    0.0
                } else {
                    right as f64 / numbers.len() as f64
                }
            })
            .sum::<f64>()
            / 3.0;
        let score = result["synth_passkey"].as_f64().unwrap();
        assert!(
            (score - (100.0 * by_hand * 100.0).round() / 100.0).abs() < 1e-9,
            "{name}: eval says {score}, the predictions give {}",
            100.0 * by_hand
        );
        // The paper-style table of its C (the full cache's row is in every one) shows the
        // same score, with its interval, under the dataset's column, then the average.
        let tables: Vec<&str> = summary
            .split("### Per task")
            .nth(1)
            .expect("a per-task section")
            .split("\nC = ")
            .skip(1)
            .collect();
        let tables: Vec<&str> = match name.split("-c").nth(1).and_then(|t| t.split('-').next()) {
            Some(c) if !name.starts_with("full") => tables
                .into_iter()
                .filter(|t| t.starts_with(&format!("{c}:")))
                .collect(),
            _ => tables,
        };
        assert!(!tables.is_empty(), "{name}: no per-task table\n{summary}");
        let policy = name.split('-').next().unwrap();
        for table in tables {
            assert!(
                table.contains("| policy | synth_passkey | **average** |"),
                "{table}"
            );
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| {policy} |")))
                .unwrap_or_else(|| panic!("{name}: no row in\n{table}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert!(cells[2].starts_with(&format!("{score:.2} [")), "{row}");
            assert!(cells[3].starts_with(&format!("{score:.2} [")), "{row}");
        }
    }
}

#[test]
fn pred_sweeps_head_budget_modes_like_separate_runs() {
    let records = Records::new("synth_kv", 2);
    let work = &records.work;
    let modes = ["--head-budget-modes", "none,preference,adakv"];
    let (sweep, separate) = (work.path().join("sweep"), work.path().join("separate"));
    records.pred("full,cake", "8", &sweep, &modes);
    records.pred(
        "full,cake",
        "8",
        &separate,
        &[&modes[..], &["--no-sweep"]].concat(),
    );
    let mut names: Vec<String> = std::fs::read_dir(&sweep)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The full cache once; cake with each mode in its own folder.
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("cake-c8-w4-heads-adakv")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("cake-c8-w4-heads-preference")),
        "{names:?}"
    );
    for name in &names {
        let a = std::fs::read(sweep.join(name).join("synth_kv.jsonl")).unwrap();
        let b = std::fs::read(separate.join(name).join("synth_kv.jsonl")).unwrap();
        assert_eq!(a, b, "{name}: sweep and separate runs differ");
        assert_eq!(String::from_utf8(a).unwrap().lines().count(), 2);
    }
}

/// Decoding a record's configurations in one batch (the default), in batches of 2 (a
/// request joining when another leaves) or one at a time (`--batch 1`) writes the same
/// bytes.
#[test]
fn pred_batched_equals_one_at_a_time() {
    let records = Records::new("synth_passkey", 3);
    let root = records.work.path();
    let runs = [
        ("all", vec![]),
        ("two", vec!["--batch", "2"]),
        ("one", vec!["--batch", "1"]),
    ];
    for (out, extra) in &runs {
        records.pred("full,snapkv,cake", "8", &root.join(out), extra);
    }
    let mut names: Vec<String> = std::fs::read_dir(root.join("one"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    for name in &names {
        let one = std::fs::read(root.join("one").join(name).join("synth_passkey.jsonl")).unwrap();
        assert_eq!(String::from_utf8_lossy(&one).lines().count(), 3);
        for out in ["all", "two"] {
            let batched = std::fs::read(root.join(out).join(name).join("synth_passkey.jsonl"));
            assert_eq!(
                batched.unwrap(),
                one,
                "{name}: --batch {out} and --batch 1 differ"
            );
        }
    }
    // --batch with --no-sweep (which runs configurations one by one) is a usage error.
    let model = records.model.path().to_str().unwrap();
    let data = records.data.to_str().unwrap();
    let out = root.join("conflict");
    let args = [
        "pred",
        "--model",
        model,
        "--data-dir",
        data,
        "--policies",
        "full,cake",
    ];
    let conflict = [
        &args[..],
        &["--out", out.to_str().unwrap(), "--batch", "2", "--no-sweep"],
    ];
    let (ok, stderr) = run(&conflict.concat(), root);
    assert!(!ok && stderr.contains("--batch"), "{stderr}");
}

#[test]
fn unwritable_output_folder_is_reported() {
    let model = tiny_model();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("synth_passkey.jsonl"),
        r#"{"input":"q","context":"c","answers":["1"],"length":3,"dataset":"synth_passkey","language":"en","all_classes":null,"_id":"a"}"#,
    )
    .unwrap();
    // A regular file where the output folder should be.
    let blocker = work.path().join("blocker");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("out");
    assert_clean_error(
        &[
            "pred",
            "--model",
            model.path().to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["blocker"],
    );
}

#[test]
fn shards_merge_into_the_unsharded_files_and_scores() {
    // Ids r0..r3 hash (FNV-1a) alternately to shards 1, 0, 1, 0: merging must interleave.
    let records = Records::new("synth_passkey", 4);
    let work = &records.work;
    let pred = |out: &Path, extra: &[&str]| records.pred("full,cake", "8", out, extra);
    let plain = work.path().join("plain");
    let sharded = work.path().join("sharded");
    pred(&plain, &[]);
    // Shard 0 as a sweep, shard 1 configuration by configuration: the same layout.
    pred(&sharded, &["--shard", "0/2"]);
    // One shard alone cannot be merged: eval names the missing one (bad data, exit 3).
    let out = cake()
        .current_dir(work.path())
        .args(["eval", sharded.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("shard(s) 1/2 missing"), "{stderr}");
    pred(&sharded, &["--shard", "1/2", "--no-sweep"]);
    // Resuming a finished shard changes nothing.
    pred(&sharded, &["--shard", "0/2"]);

    for root in [&plain, &sharded] {
        let (ok, stderr) = run(&["eval", root.to_str().unwrap()], work.path());
        assert!(ok, "{stderr}");
    }
    let folders = |root: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                e.path()
                    .is_dir()
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        v.sort();
        v
    };
    let names = folders(&plain);
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names, folders(&sharded));
    // The summary's rows each run's result.json implies: its average with its interval,
    // and cake's paired difference to the full cache.
    let (mut averages, mut difference) = (Vec::new(), None);
    for name in &names {
        let shard_lines = |i: usize| {
            std::fs::read_to_string(
                sharded
                    .join(name)
                    .join(format!("shards/synth_passkey.shard-{i}-of-2.jsonl")),
            )
            .unwrap()
            .lines()
            .count()
        };
        assert_eq!((shard_lines(0), shard_lines(1)), (2, 2), "{name}");
        let a = std::fs::read(plain.join(name).join("synth_passkey.jsonl")).unwrap();
        let b = std::fs::read(sharded.join(name).join("synth_passkey.jsonl")).unwrap();
        assert_eq!(a, b, "{name}: merged shards differ from the unsharded run");
        // Same records in the same order: same scores, intervals and paired differences.
        let a = std::fs::read_to_string(plain.join(name).join("result.json")).unwrap();
        let b = std::fs::read_to_string(sharded.join(name).join("result.json")).unwrap();
        assert_eq!(a, b, "{name}: result.json differs");
        let result: serde_json::Value = serde_json::from_str(&a).unwrap();
        let score = result["synth_passkey"].as_f64().unwrap();
        let u = &result["_uncertainty"];
        assert_eq!(
            (u["seed"].as_u64(), u["resamples"].as_u64()),
            (Some(2025), Some(1000))
        );
        let interval = &u["datasets"]["synth_passkey"];
        assert_eq!(interval["score"].as_f64(), Some(score));
        let (low, high) = (
            interval["low"].as_f64().unwrap(),
            interval["high"].as_f64().unwrap(),
        );
        assert!(low <= score && score <= high, "{interval}");
        assert_eq!(interval["records"], 4);
        // `54.30 [48.10, 60.20]`: a value and the interval beside it.
        let cell = |v: &serde_json::Value, key: &str| {
            let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
            format!("{:.2} [{:.2}, {:.2}]", f(key), f("low"), f("high"))
        };
        let policy = if name.starts_with("cake") {
            "cake"
        } else {
            "full"
        };
        averages.push(format!("| {policy} | {} |", cell(&u["average"], "score")));
        if policy == "cake" {
            // cake - full on the same 4 records.
            let paired = &u["paired"][0];
            assert_eq!(paired["reference"], "full");
            assert_eq!(paired["datasets"]["synth_passkey"]["records"], 4);
            difference = Some(format!(
                "| cake | {} |",
                cell(&paired["average"], "difference")
            ));
        } else {
            assert_eq!(
                u["paired"],
                serde_json::json!([]),
                "the full cache is the reference"
            );
        }
    }
    let summary = std::fs::read_to_string(sharded.join("summary.md")).unwrap();
    let (scores, differences) = summary
        .split_once("policy - full cache")
        .unwrap_or_else(|| panic!("no differences to the full cache: {summary}"));
    for row in &averages {
        assert!(scores.contains(row.as_str()), "{row} in {summary}");
    }
    let difference = difference.expect("a cake run");
    assert!(
        differences.contains(&difference),
        "{difference} in {summary}"
    );
    // A malformed --shard is a usage error that shows the expected form.
    let out = cake()
        .current_dir(work.path())
        .args(["pred", "--data-dir", ".", "--out", ".", "--shard", "2/2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected I/N"));
}

#[test]
fn tune_writes_the_argmax_table_and_tau_file_drives_a_run() {
    let model = tiny_model();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("calib");
    std::fs::create_dir_all(&data).unwrap();
    // lcc's edit similarity gives graded scores to any text, even a random model's.
    write_records(&data, "lcc", 3);
    let model = model.path().to_str().unwrap();
    // `cake tune` over a 2 x 2 grid at C = 8 into `out`; returns stderr and tune.json.
    let tune = |out: &Path, extra: &[&str]| -> (String, serde_json::Value) {
        let args = [
            "tune",
            "--model",
            model,
            "--data-dir",
            data.to_str().unwrap(),
            "--window",
            "4",
            "--max-length",
            "200",
            "--cache-sizes",
            "8",
            "--tau1",
            "4,0.5",
            "--tau2",
            "1,4",
            "--out",
            out.to_str().unwrap(),
        ];
        let (ok, stderr) = run(&[&args[..], extra].concat(), work.path());
        assert!(ok, "{stderr}");
        let text = std::fs::read_to_string(out.join("tune.json")).unwrap();
        (stderr, serde_json::from_str(&text).unwrap())
    };
    // The calibration folder as the evaluation folder: every record overlaps.
    let first = work.path().join("first");
    let (stderr, report) = tune(&first, &["--eval-data", data.to_str().unwrap()]);
    assert!(
        stderr.contains("warning: 3 of 3 calibration record(s) of lcc"),
        "{stderr}"
    );
    // Make the answers what (tau1, tau2) = (4, 4) says (the line lcc's metric reads), so
    // that it scores 100 and the argmax is not the first grid point.
    let dir_of = |report: &serde_json::Value, out: &Path, taus: (f64, f64)| {
        let p = report["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| (p["tau1"].as_f64(), p["tau2"].as_f64()) == (Some(taus.0), Some(taus.1)))
            .unwrap()
            .clone();
        out.join(p["dir"].as_str().unwrap())
    };
    let preds =
        std::fs::read_to_string(dir_of(&report, &first, (4.0, 4.0)).join("lcc.jsonl")).unwrap();
    let records: String = std::fs::read_to_string(data.join("lcc.jsonl"))
        .unwrap()
        .lines()
        .zip(preds.lines())
        .map(|(record, pred)| {
            let mut record: serde_json::Value = serde_json::from_str(record).unwrap();
            let pred: serde_json::Value = serde_json::from_str(pred).unwrap();
            let line = pred["pred"]
                .as_str()
                .unwrap()
                .trim_start_matches('\n')
                .split('\n')
                .find(|l| !l.contains('`') && !l.contains('#') && !l.contains("//"))
                .unwrap_or("")
                .to_string();
            record["answers"] = serde_json::json!([line]);
            record.to_string() + "\n"
        })
        .collect();
    std::fs::write(data.join("lcc.jsonl"), records).unwrap();

    let out = work.path().join("tune");
    let (_, report) = tune(&out, &[]);
    // One prefill per prompt for the whole grid.
    assert_eq!(report["prefills"], 3);
    let points = report["points"].as_array().unwrap();
    let grid: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p["tau1"].as_f64().unwrap(), p["tau2"].as_f64().unwrap()))
        .collect();
    assert_eq!(grid, [(0.5, 1.0), (0.5, 4.0), (4.0, 1.0), (4.0, 4.0)]);
    let averages: Vec<f64> = points
        .iter()
        .map(|p| p["average"].as_f64().unwrap())
        .collect();
    assert_eq!(averages[3], 100.0, "{averages:?}");
    // Negative control: the temperatures change the answers, so the grid is not flat.
    assert!(averages.iter().any(|&a| a < 100.0), "{averages:?}");
    // Every reported score is what `cake eval` gives the point's predictions.
    let (ok, stderr) = run(&["eval", out.join("runs").to_str().unwrap()], work.path());
    assert!(ok, "{stderr}");
    for p in points {
        assert_eq!(p["cache_size"], 8);
        let dir = out.join(p["dir"].as_str().unwrap());
        let text = std::fs::read_to_string(dir.join("result.json")).unwrap();
        let result: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(p["average"], result["lcc"], "{p}");
        assert_eq!(p["scores"]["lcc"], result["lcc"], "{p}");
    }
    // The table's choice is the argmax of the reported scores (ties: the smallest).
    let mut argmax = (f64::NEG_INFINITY, 0.0, 0.0);
    for (p, &average) in points.iter().zip(&averages) {
        if average > argmax.0 {
            argmax = (
                average,
                p["tau1"].as_f64().unwrap(),
                p["tau2"].as_f64().unwrap(),
            );
        }
    }
    assert_eq!(argmax.0, 100.0, "{averages:?}");
    // Not simply the first grid point (on this fixture tau2 changes the answers, tau1
    // does not: (0.5, 4) ties (4, 4) and wins as the smaller).
    assert_ne!((argmax.1, argmax.2), grid[0], "{averages:?}");
    let table = cake_core::TauTable::from_path(&out.join("taus.json")).unwrap();
    assert_eq!(table.entries.len(), 1);
    let entry = &table.entries[0];
    assert_eq!(
        (entry.cache_size, entry.tau1, entry.tau2),
        (8, argmax.1, argmax.2)
    );
    assert_eq!(report["best"][0]["tau2"].as_f64(), Some(argmax.2));
    let md = std::fs::read_to_string(out.join("tune.md")).unwrap();
    assert!(md.contains("| tau1 \\ tau2 | 1 | 4 |"), "{md}");
    assert!(md.contains("**100.00**"), "{md}");

    // --tau-file: the run uses the table's temperatures and names the file as their source.
    let taus = out.join("taus.json");
    let generate = |env: Option<&Path>, extra: &[&str]| -> serde_json::Value {
        let args = [
            "generate",
            "--model",
            model,
            "--prompt",
            "abcdefghijklmnopqrstuvwxyz0123456789",
            "--max-new-tokens",
            "2",
            "--cache-size",
            "8",
            "--window",
            "4",
            "--json",
        ];
        let mut cmd = cake();
        cmd.current_dir(work.path()).args(args).args(extra);
        if let Some(file) = env {
            cmd.env("CAKE_TAU_FILE", file);
        }
        serde_json::from_slice(&success(&mut cmd).stdout).unwrap()
    };
    let with_file = generate(None, &["--tau-file", taus.to_str().unwrap()]);
    assert_eq!(entry.model, with_file["model"].as_str().unwrap());
    let report = &with_file["report"];
    assert_eq!(report["taus"], serde_json::json!([argmax.1, argmax.2]));
    assert_eq!(
        report["tau_source"],
        serde_json::json!({"kind": "file", "path": taus.to_str().unwrap(), "model": entry.model, "cache_size": 8})
    );
    // The same through the environment (CAKE_TAU_FILE).
    let from_env = generate(Some(&taus), &[]);
    assert_eq!(from_env["report"]["tau_source"], report["tau_source"]);
    // Without it the tiny model has no published temperatures: 1.0 / 1.0, the fallback.
    let plain = generate(None, &[]);
    assert_eq!(plain["report"]["taus"], serde_json::json!([1.0, 1.0]));
    assert_eq!(plain["report"]["tau_source"]["kind"], "fallback");
    // A bad table is bad input data (exit 3), named before the model loads.
    let bad = work.path().join("bad_taus.json");
    let text = r#"{"entries": [{"model": "m", "cache_size": 8, "tau1": 0, "tau2": 1}]}"#;
    std::fs::write(&bad, text).unwrap();
    let out = cake()
        .current_dir(work.path())
        .args([
            "generate",
            "--prompt",
            "hi",
            "--tau-file",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("bad_taus.json") && stderr.contains("tau1 = 0"),
        "{stderr}"
    );
}

#[test]
fn diagnose_counts_the_needle_tokens_each_kv_head_kept() {
    let model = tiny_model();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A few-shot record (the tiny model's 256 positions hold its short template) whose
    // needle is the example that answers the question; a second record has no needle.
    let needle = "Item: wolf\nType: daxel";
    let context = format!(
        "Item: tiger\nType: blicket\n{needle}\nItem: mango\nType: wuggo\nItem: harp\nType: fepple"
    );
    let char_start = context.find(needle).unwrap(); // ASCII: bytes are characters
    let record = |id: &str, with_needle: bool| {
        let mut r = serde_json::json!({
            "input": "Item: wolf\nType:", "context": context, "answers": ["daxel"],
            "length": 60, "dataset": "synth_fewshot", "language": "en",
            "all_classes": ["blicket", "daxel", "wuggo", "fepple"], "_id": id, "depth": 0.3,
        });
        if with_needle {
            r["needle"] = serde_json::json!({
                "text": needle, "char_start": char_start, "char_end": char_start + needle.len()
            });
        }
        r.to_string() + "\n"
    };
    std::fs::write(
        data.join("synth_fewshot.jsonl"),
        record("few-1", true) + &record("few-2", false),
    )
    .unwrap();
    let out = work.path().join("diag");
    let args = |id: &str| {
        [
            "diagnose",
            "--model",
            model.path().to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--dataset",
            "synth_fewshot",
            "--record",
            id,
            "--cache-size",
            "16",
            "--window",
            "4",
            "--max-length",
            "250",
            "--max-new-tokens",
            "4",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(str::to_string)
    };
    let run_out = success(cake().current_dir(work.path()).args(args("few-1")));
    let stdout = String::from_utf8_lossy(&run_out.stdout);
    assert!(stdout.contains("needle at tokens"), "{stdout}");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("diagnosis.json")).unwrap())
            .unwrap();
    // The byte tokenizer gives one token per byte: the span is the needle's bytes, found
    // where they sit in the prompt (template prefix, then the context).
    let prefix = "Please determine the type of the item below. Here are some examples of items and their types.\n\n";
    let start = d["needle"]["token_start"].as_u64().unwrap() as usize;
    let end = d["needle"]["token_end"].as_u64().unwrap() as usize;
    assert_eq!(start, prefix.len() + char_start);
    assert_eq!(end - start, needle.len());
    assert_eq!(
        d["needle"]["tokens"].as_u64().unwrap() as usize,
        needle.len()
    );
    assert_eq!(d["needle"]["token_text"], needle);
    assert_eq!(d["truncated"], false);
    assert_eq!(d["answer"]["gold"], serde_json::json!(["daxel"]));
    assert!(d["answer"]["predicted"].is_string());
    let prompt_len = d["prompt_len"].as_u64().unwrap() as usize;
    assert_eq!(
        prompt_len,
        prefix.len() + context.len() + 1 + "Item: wolf\nType:".len()
    );
    let layers = d["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    let mut held_total = 0;
    for layer in layers {
        let held = layer["held"].as_u64().unwrap() as usize;
        held_total += held;
        let heads = layer["heads"].as_array().unwrap();
        assert_eq!(heads.len(), 2, "two KV heads");
        for head in heads {
            let kept: Vec<usize> = serde_json::from_value(head["kept_positions"].clone()).unwrap();
            // Each head keeps the report's `held` tokens; its needle count is a recount
            // of its kept positions inside the span.
            assert_eq!(kept.len(), held, "{layer}");
            assert_eq!(head["kept"].as_u64().unwrap() as usize, held);
            let recount = kept.iter().filter(|&&p| (start..end).contains(&p)).count();
            assert_eq!(head["needle_kept"].as_u64().unwrap() as usize, recount);
            assert!(recount <= end - start);
            assert!(kept.iter().all(|&p| p < prompt_len));
        }
    }
    // CAKE at C = 16 holds C tokens per layer on average after the prefill.
    assert_eq!(held_total, 16 * 3);
    assert!(held_total < 3 * prompt_len);
    // The picture names the needle and every layer's rows.
    let svg = std::fs::read_to_string(out.join("diagnosis.svg")).unwrap();
    assert!(
        svg.contains("needle") && svg.contains("Item: wolf Type: daxel"),
        "{svg}"
    );
    assert!(svg.contains("L2 h1") && svg.contains("budget"));

    // Unknown record: a usage error naming it; a record without a needle: bad data.
    let o = cake()
        .current_dir(work.path())
        .args(args("nope"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nope") && stderr.contains("few-1"),
        "{stderr}"
    );
    let o = cake()
        .current_dir(work.path())
        .args(args("few-2"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("few-2") && stderr.contains("needle"),
        "{stderr}"
    );
}

/// `cake bench` on the tiny model: every method at every context gets a row with a
/// measured decode step (the methods' steps interleave), and CAKE holds exactly C / S of
/// the full cache's K/V after the prefill.
#[test]
fn bench_rows_cover_every_method_and_context_with_the_kept_share() {
    let model = tiny_model();
    let out = success(cake().args([
        "bench",
        "--model",
        model.path().to_str().unwrap(),
        "--context",
        "64,128",
        "--policies",
        "cake",
        "--cache-size",
        "24",
        "--window",
        "4",
        "--decode-steps",
        "3",
        "--json",
    ]));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    for pair in rows.chunks(2) {
        let (full, cake) = (&pair[0], &pair[1]);
        let context = full["context"].as_u64().unwrap();
        assert_eq!(cake["context"].as_u64().unwrap(), context);
        assert_eq!(full["policy"], "full");
        assert!(
            cake["policy"].as_str().unwrap().starts_with("cake-c24-w4"),
            "{cake}"
        );
        for row in pair {
            assert!(row["decode_ms_per_token"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["prefill_ms"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["decode_bound_ms"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["decode_vs_bound"].as_f64().unwrap() > 0.0, "{row}");
        }
        // Speed-ups are step-by-step ratios to the full cache: exactly 1 for itself.
        assert_eq!(full["decode_speedup"].as_f64().unwrap(), 1.0, "{full}");
        assert!(cake["decode_speedup"].as_f64().unwrap() > 0.0, "{cake}");
        // One bandwidth per context (sampled between its decoding steps), for every method.
        let bandwidth = |r: &serde_json::Value| r["read_bandwidth_gb_s"].as_f64().unwrap();
        assert!(bandwidth(full) > 0.0, "{full}");
        assert_eq!(bandwidth(full), bandwidth(cake));
        let bytes = |r: &serde_json::Value| r["kv_bytes_after_prefill"].as_f64().unwrap();
        let share = bytes(cake) / bytes(full);
        assert!(
            (share - 24.0 / context as f64).abs() < 1e-9,
            "{share} at {context}"
        );
        // While decoding, the full cache grows by one token a step (3 steps) and CAKE
        // stays at C tokens per layer (equal memory).
        let peak = |r: &serde_json::Value| r["kv_bytes_peak_decode"].as_f64().unwrap();
        let per_token = bytes(full) / context as f64;
        assert_eq!(peak(full), bytes(full) + 3.0 * per_token, "{full}");
        assert_eq!(peak(cake), bytes(cake), "{cake}");
    }
}
