//! End-to-end tests of the `cake` binary: clear one-line errors on bad input, and a small
//! generate / pred / eval run on a tiny random-weight Llama (cake-models' parity fixture)
//! with a byte-level tokenizer.

mod common;

use std::path::Path;

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
    let model = tiny_model();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_records(&data, "synth_passkey", 3);
    let model = model.path().to_str().unwrap();
    // One `cake pred` of full, snapkv and cake at C = 8, 16 into `out`; must succeed.
    let pred = |out: &Path, extra: &[&str]| {
        let args = [
            "--policies",
            "full,snapkv,cake",
            "--cache-sizes",
            "8,16",
            "--out",
            out.to_str().unwrap(),
        ];
        run_on_records(
            "pred",
            model,
            &data,
            &[&args[..], extra].concat(),
            work.path(),
        );
    };
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
    }
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
    let model = tiny_model();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Ids r0..r3 hash (FNV-1a) alternately to shards 1, 0, 1, 0: merging must interleave.
    write_records(&data, "synth_passkey", 4);
    let model = model.path().to_str().unwrap();
    let pred = |out: &Path, extra: &[&str]| {
        let args = [
            "--policies",
            "full,cake",
            "--cache-sizes",
            "8",
            "--out",
            out.to_str().unwrap(),
        ];
        run_on_records(
            "pred",
            model,
            &data,
            &[&args[..], extra].concat(),
            work.path(),
        );
    };
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
        if name.starts_with("cake") {
            // cake - full on the same 4 records.
            let paired = &u["paired"][0];
            assert_eq!(paired["reference"], "full");
            assert_eq!(paired["datasets"]["synth_passkey"]["records"], 4);
        }
    }
    let summary = std::fs::read_to_string(sharded.join("summary.md")).unwrap();
    assert!(summary.contains("policy - full cache"), "{summary}");
    assert!(summary.contains(" ["), "{summary}");
    // A malformed --shard is a usage error that shows the expected form.
    let out = cake()
        .current_dir(work.path())
        .args(["pred", "--data-dir", ".", "--out", ".", "--shard", "2/2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected I/N"));
}
