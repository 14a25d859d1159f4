//! Helpers shared by the end-to-end tests of the `cake` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// The `cake` binary, isolated from the developer's settings and model choice.
pub fn cake() -> Command {
    let mut cmd = Command::cargo_bin("cake").expect("the cake binary is built for tests");
    cmd.env_remove("CAKE_MODEL").env_remove("CAKE_CACHE_SIZE");
    cmd
}

/// The `cake` binary as a plain [`std::process::Command`] (to spawn, watch and kill), with
/// the same isolation as [`cake`].
pub fn cake_process() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cake"));
    cmd.env_remove("CAKE_MODEL").env_remove("CAKE_CACHE_SIZE");
    cmd
}

/// Runs `cmd` and returns its output, after asserting that it succeeded (showing its
/// stderr when not).
pub fn success(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("cake runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A tiny Llama folder: cake-models' random-weight parity fixture plus a byte tokenizer.
pub fn tiny_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("../cake-models/fixtures/tiny/llama");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(
        root.join("tests/fixtures/byte_tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    dir
}

/// Writes `n` LongBench-format records of `dataset` (a short code-retrieval prompt each).
pub fn write_records(data: &Path, dataset: &str, n: usize) {
    let records: String = (0..n)
        .map(|i| {
            serde_json::json!({
                "input": format!("What is the code {i}?"),
                "context": format!("The secret code is {i}{i}{i}. Some filler text follows here, {}.", "and more ".repeat(i + 2)),
                "answers": [format!("{i}{i}{i}")],
                "length": 20, "dataset": dataset, "language": "en",
                "all_classes": null, "_id": format!("r{i}")
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(data.join(format!("{dataset}.jsonl")), records).unwrap();
}
