//! CI smoke test: every target for a fixed number of executions with a fixed seed through
//! the real binary (worker processes, capping allocator), asserting no crash, hang or
//! out-of-memory finding; and the GGUF parser refusing a 2^40-element tensor without
//! allocating for it.

use std::process::Command;
use std::time::Instant;

use cake_fuzz::alloc::{peak_request, reset_peak_request};
use cake_fuzz::gguf_seed::{GgufBuilder, MetaValue};
use cake_fuzz::{CapAllocator, TARGET_NAMES};
use cake_models::gguf::{GgufError, GgufFile};

#[global_allocator]
static ALLOC: CapAllocator = CapAllocator;

/// Executions per target (all eight take about 5 s in a `cargo test` build on two
/// shared cores).
const EXECUTIONS: u64 = 1000;
const SEED: u64 = 7;

#[test]
fn every_target_runs_clean() {
    let findings = tempfile::tempdir().expect("tempdir");
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cake-fuzz"))
        .args(["--executions", &EXECUTIONS.to_string()])
        .args(["--seed", &SEED.to_string(), "--json", "--findings"])
        .arg(findings.path())
        .output()
        .expect("cake-fuzz runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "{stdout}\n{} targets in {:?}",
        TARGET_NAMES.len(),
        start.elapsed()
    );
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON summary line"))
        .collect();
    let names: Vec<&str> = rows.iter().filter_map(|r| r["target"].as_str()).collect();
    assert_eq!(names, TARGET_NAMES, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let mut reports = String::new();
    for entry in walk(findings.path()) {
        if entry.extension().is_some_and(|e| e == "txt") {
            reports.push_str(&std::fs::read_to_string(&entry).unwrap_or_default());
        }
    }
    for row in &rows {
        assert_eq!(row["executions"], EXECUTIONS, "{row}");
        for kind in ["crashes", "hangs", "ooms"] {
            assert_eq!(row[kind], 0, "{row}\n{reports}");
        }
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A GGUF file whose only tensor claims `dims` elements of F32 but holds 64 bytes.
fn claiming(dims: &[u64]) -> Vec<u8> {
    GgufBuilder::default()
        .meta("general.architecture", MetaValue::Str("llama".into()))
        .tensor("token_embd.weight", dims, 0, vec![0; 64])
        .to_bytes()
}

#[test]
fn gguf_tensor_of_2_pow_40_elements_fails_without_allocating() {
    for dims in [
        &[1u64 << 40][..],
        &[1 << 20, 1 << 20],
        &[1 << 10, 1 << 10, 1 << 10, 1 << 10],
    ] {
        let bytes = claiming(dims);
        let len = bytes.len();
        reset_peak_request();
        let err = GgufFile::from_bytes("huge.gguf", bytes).unwrap_err();
        let peak = peak_request();
        assert!(
            matches!(err, GgufError::Truncated { needed, .. } if needed == 4 << 40),
            "{dims:?}: {err}"
        );
        // Nothing sized by the claim: the largest request is a small table or message.
        assert!(
            peak < 64 << 10,
            "{dims:?}: largest allocation {peak} bytes (file {len})"
        );

        // The memory-mapped path behaves the same.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("huge.gguf");
        std::fs::write(&path, claiming(dims)).expect("write");
        reset_peak_request();
        let err = GgufFile::open(&path).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
        assert!(
            peak_request() < 64 << 10,
            "largest allocation {}",
            peak_request()
        );
    }
}

/// A safetensors file whose 8-byte header length is `header_len` and whose header is
/// `header`, followed by 64 bytes of data.
fn safetensors_claiming(header_len: u64, header: &str) -> Vec<u8> {
    let mut bytes = header_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 64]);
    bytes
}

#[test]
fn safetensors_claiming_2_pow_40_elements_fails_without_allocating() {
    use cake_models::weights::{SafetensorsFolder, WeightError};
    let tensor = r#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}}"#;
    for (header_len, header) in [
        // A tensor of 2^40 elements in a file of a few bytes.
        (tensor.len() as u64, tensor),
        // A header that claims to be 2^40 bytes long.
        (1u64 << 40, tensor),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("model.safetensors"),
            safetensors_claiming(header_len, header),
        )
        .expect("write");
        reset_peak_request();
        let err = SafetensorsFolder::open(dir.path()).unwrap_err();
        assert!(matches!(err, WeightError::Safetensors { .. }), "{err}");
        assert!(
            peak_request() < 64 << 10,
            "largest allocation {}",
            peak_request()
        );
    }
}

#[test]
fn a_config_whose_weights_exceed_memory_is_refused_before_loading() {
    // Valid shapes whose f32 weights need about 2^50 bytes: refused from the config alone
    // (no weight file is even opened), whatever the machine's available memory.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 1 << 20,
        "intermediate_size": 1 << 22,
        "num_hidden_layers": 64,
        "num_attention_heads": 8192,
        "num_key_value_heads": 8192,
        "vocab_size": 1 << 20,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
    reset_peak_request();
    let err = cake_models::load::<cake_models::Cpu>(dir.path(), &Default::default()).unwrap_err();
    assert!(
        matches!(err, cake_models::LoadError::TooLarge { needed, .. } if needed > 1 << 49),
        "{err}"
    );
    assert!(err.to_string().contains("CAKE_MEMORY_LIMIT"), "{err}");
    assert!(
        peak_request() < 64 << 10,
        "largest allocation {}",
        peak_request()
    );
}
