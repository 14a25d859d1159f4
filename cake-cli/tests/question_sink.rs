//! `cake pred --question after-compression` (the question read after the context was
//! compressed) and `--sink N` (the first N prompt tokens always kept) on the tiny
//! random-weight Llama: their runs get folders and manifests of their own, resume and
//! shard as in-prompt runs do, and `cake tune --sink` scores each N on calibration records.

mod common;

use std::path::{Path, PathBuf};

use common::{cake, success, tiny_model, write_records};

/// The tiny model and 4 synthetic key-value records (chat-templated, question after the
/// context) in a work folder.
struct Work {
    model: tempfile::TempDir,
    dir: tempfile::TempDir,
    data: PathBuf,
}

impl Work {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        write_records(&data, "synth_kv", 4);
        Self {
            model: tiny_model(),
            dir,
            data,
        }
    }

    /// `cake pred` of full and cake at C = 8, window 4, into `out`, plus `extra`; must
    /// succeed. Returns stderr.
    fn pred(&self, out: &Path, extra: &[&str]) -> String {
        let args = [
            "pred",
            "--model",
            self.model.path().to_str().unwrap(),
            "--data-dir",
            self.data.to_str().unwrap(),
            "--window",
            "4",
            "--max-length",
            "200",
            "--policies",
            "full,cake",
            "--cache-sizes",
            "8",
            "--out",
            out.to_str().unwrap(),
        ];
        let out = success(cake().current_dir(self.dir.path()).args(args).args(extra));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The run folders of `root`, sorted by name.
fn folders(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.path()
                .is_dir()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

/// The `config` of a run folder's manifest.
fn config(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("run.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["config"].clone()
}

/// After-compression runs (the full cache's included) are folders of their own, named
/// `-qafter` and with `question: after-compression` in their manifest, beside in-prompt
/// ones (whose manifests do not mention the question, as before); rerunning resumes them
/// without a prefill, shards merge into the unsharded files, and `cake eval` keeps the two
/// protocols' runs apart.
#[test]
fn after_compression_runs_have_their_own_folders_and_resume_and_shard() {
    let work = Work::new();
    let out = work.path("preds");
    work.pred(&out, &[]);
    let in_prompt = folders(&out);
    assert_eq!(in_prompt.len(), 2, "{in_prompt:?}");
    let stderr = work.pred(&out, &["--question", "after-compression"]);
    assert!(stderr.contains("4 prefills so far"), "{stderr}");
    let all = folders(&out);
    assert_eq!(all.len(), 4, "{all:?}");
    let after: Vec<&String> = all.iter().filter(|n| !in_prompt.contains(n)).collect();
    assert_eq!(after.len(), 2);
    for name in &after {
        assert!(name.contains("-qafter-"), "{name}");
        let config = config(&out.join(name));
        assert_eq!(config["question"], "after-compression", "{config}");
        let lines = std::fs::read_to_string(out.join(name).join("synth_kv.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 4);
    }
    for name in &in_prompt {
        assert!(!name.contains("qafter"), "{name}");
        assert!(config(&out.join(name)).get("question").is_none());
    }
    // The same manifest key whether from the flag, the environment or the settings file.
    let from_env = work.path("env");
    let mut cmd = cake();
    cmd.env("CAKE_QUESTION", "after-compression");
    let args = [
        "pred",
        "--model",
        work.model.path().to_str().unwrap(),
        "--data-dir",
        work.data.to_str().unwrap(),
        "--window",
        "4",
        "--max-length",
        "200",
        "--policies",
        "cake",
        "--cache-sizes",
        "8",
        "--max-samples",
        "1",
        "--out",
        from_env.to_str().unwrap(),
    ];
    success(cmd.current_dir(work.dir.path()).args(args));
    let env_runs = folders(&from_env);
    assert!(after.contains(&&env_runs[0]), "{env_runs:?} in {after:?}");

    // Resuming changes nothing and prefills nothing.
    let before: Vec<Vec<u8>> = after
        .iter()
        .map(|n| std::fs::read(out.join(n).join("synth_kv.jsonl")).unwrap())
        .collect();
    let stderr = work.pred(&out, &["--question", "after-compression"]);
    assert!(stderr.contains("0 prefills so far"), "{stderr}");
    for (name, was) in after.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(out.join(name).join("synth_kv.jsonl")).unwrap(),
            was
        );
    }

    // Shards (one as a sweep, one configuration by configuration) merge into the same files.
    let sharded = work.path("sharded");
    work.pred(
        &sharded,
        &["--question", "after-compression", "--shard", "0/2"],
    );
    work.pred(
        &sharded,
        &[
            "--question",
            "after-compression",
            "--shard",
            "1/2",
            "--no-sweep",
        ],
    );
    success(
        cake()
            .current_dir(work.dir.path())
            .args(["eval", sharded.to_str().unwrap()]),
    );
    let names: Vec<String> = folders(&sharded);
    assert_eq!(names.iter().collect::<Vec<_>>(), after);
    for (name, was) in names.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(sharded.join(name).join("synth_kv.jsonl")).unwrap(),
            was,
            "{name}: merged shards differ from the unsharded run"
        );
    }

    // `cake eval` scores the four runs as four rows.
    success(
        cake()
            .current_dir(work.dir.path())
            .args(["eval", out.to_str().unwrap()]),
    );
    let text = std::fs::read_to_string(out.join("summary.json")).unwrap();
    let summary: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut rows: Vec<(String, Option<u64>)> = summary
        .iter()
        .map(|r| {
            (
                r["policy"].as_str().unwrap().to_string(),
                r["cache_size"].as_u64(),
            )
        })
        .collect();
    rows.sort();
    rows.dedup();
    assert_eq!(rows.len(), 4, "{rows:?}");
}

/// `--sink N` is a configuration of its own (`-sink2` in the folder, `sink` in the
/// manifest, absent at 0 as before), keeps positions 0..N in every layer and KV head
/// (`cake generate --json`'s report), and bad values are clear errors.
#[test]
fn sink_runs_are_labelled_and_keep_the_first_tokens() {
    let work = Work::new();
    let out = work.path("preds");
    work.pred(&out, &[]);
    work.pred(&out, &["--sink", "2"]);
    let names = folders(&out);
    let sink: Vec<&String> = names.iter().filter(|n| n.contains("-sink2-")).collect();
    assert_eq!(sink.len(), 1, "{names:?}");
    assert!(sink[0].starts_with("cake-c8-w4-sink2-"), "{names:?}");
    assert_eq!(config(&out.join(sink[0]))["cache"]["sink"], 2);
    for name in names.iter().filter(|n| !n.contains("sink")) {
        assert!(
            config(&out.join(name))["cache"].get("sink").is_none(),
            "{name}"
        );
    }
    // The full cache keeps everything: one folder whatever the sink.
    assert_eq!(names.len(), 3, "{names:?}");

    let generate = |extra: &[&str]| -> serde_json::Value {
        let args = [
            "generate",
            "--model",
            work.model.path().to_str().unwrap(),
            "--prompt",
            "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
            "--max-new-tokens",
            "3",
            "--cache-size",
            "10",
            "--window",
            "4",
            "--json",
        ];
        let out = success(cake().current_dir(work.dir.path()).args(args).args(extra));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Uniform budgets (C - w = 6 per layer) keep all three sinks; CAKE's keep the first
    // min(3, budget) of each layer. Either way the heads hold at most C x L tokens.
    for policy in ["snapkv", "tova", "h2o", "streaming", "cake"] {
        let report = generate(&["--policy", policy, "--sink", "3"])["report"].clone();
        let mut held = [0usize; 2];
        for layer in report["layers"].as_array().unwrap() {
            let budget = layer["budget"].as_u64().unwrap() as usize;
            if policy != "cake" {
                assert_eq!(budget, 6, "{policy}");
            }
            let sinks: Vec<u64> = (0..3.min(budget) as u64).collect();
            for (h, kept) in layer["kept_positions"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                let kept: Vec<u64> = kept
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_u64().unwrap())
                    .collect();
                assert_eq!(kept[..sinks.len()], sinks[..], "{policy}: {kept:?}");
                held[h] += kept.len();
            }
        }
        assert!(held.iter().all(|&n| n <= 10 * 3), "{policy}: {held:?}");
    }
    // Bad values name the flag or the variable and the valid choices.
    let fails = |cmd: &mut assert_cmd::Command| -> String {
        let out = cmd.current_dir(work.dir.path()).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fails(cake().args([
        "pred",
        "--data-dir",
        ".",
        "--out",
        ".",
        "--question",
        "sideways",
    ]));
    assert!(
        err.contains("--question") && err.contains("in-prompt, after-compression"),
        "{err}"
    );
    let err = fails(cake().args(["generate", "--prompt", "hi", "--sink=many"]));
    assert!(err.contains("--sink"), "{err}");
    let err = fails(cake().env("CAKE_QUESTION", "later").args([
        "pred",
        "--data-dir",
        work.data.to_str().unwrap(),
        "--out",
        ".",
    ]));
    assert!(
        err.contains("CAKE_QUESTION") && err.contains("after-compression"),
        "{err}"
    );
}

/// `cake tune --sink 0,2` runs every grid point at each N, reports each point's N in
/// tune.json and the best calibration average per (C, N) in tune.md.
#[test]
fn tune_scores_each_sink_on_calibration_records() {
    let model = tiny_model();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("calib");
    std::fs::create_dir_all(&data).unwrap();
    write_records(&data, "lcc", 2);
    let out = work.path().join("tune");
    let args = [
        "tune",
        "--model",
        model.path().to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--window",
        "4",
        "--max-length",
        "200",
        "--cache-sizes",
        "8",
        "--tau1",
        "1",
        "--tau2",
        "1,2",
        "--sink",
        "2,0",
        "--out",
        out.to_str().unwrap(),
    ];
    success(cake().current_dir(work.path()).args(args));
    let text = std::fs::read_to_string(out.join("tune.json")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["prefills"], 2);
    assert_eq!(report["grid"]["sink"], serde_json::json!([0, 2]));
    let points: Vec<(f64, u64)> = report["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["tau2"].as_f64().unwrap(), p["sink"].as_u64().unwrap()))
        .collect();
    assert_eq!(points, [(1.0, 0), (1.0, 2), (2.0, 0), (2.0, 2)]);
    let md = std::fs::read_to_string(out.join("tune.md")).unwrap();
    assert!(
        md.contains("## C=8, sink=2") && md.contains("## Sink"),
        "{md}"
    );
    // One row per N with the best average over the temperatures, as tune.json says.
    for n in [0u64, 2] {
        let best = report["points"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["sink"] == n)
            .filter_map(|p| p["average"].as_f64())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            md.contains(&format!("| 8 | {n} | {best:.2} |")),
            "{n}: {md}"
        );
    }
    // The sink runs are folders of their own.
    let runs = out.join("runs");
    assert_eq!(
        folders(&runs)
            .iter()
            .filter(|n| n.contains("-sink2-"))
            .count(),
        2
    );
}
