//! The GGUF container on a small file written by the Python `gguf` package's GGUFWriter:
//! metadata of every value type, one tensor of each quant type, the Hugging Face view
//! (names, PyTorch shapes, q/k rows un-permuted exactly as transformers does), and
//! corrupt or truncated files (generator: tools/fixtures/gen_gguf_fixtures.py).

use std::path::{Path, PathBuf};

use cake_models::gguf::{GgufError, GgufFile, Value};
use serde_json::Value as Json;

fn tiny_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf/tiny.gguf")
}

fn tiny() -> GgufFile {
    GgufFile::open(&tiny_path()).expect("tiny.gguf opens")
}

fn expected() -> Json {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf/tiny.json"),
    )
    .expect("tiny.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn floats(v: &Json) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1.0)
}

#[test]
fn metadata_of_every_type() {
    let f = tiny();
    assert_eq!(f.version(), 3);
    let md = f.metadata();
    assert_eq!(md.get("test.u8"), Some(&Value::U8(200)));
    assert_eq!(md.get("test.i8"), Some(&Value::I8(-100)));
    assert_eq!(md.get("test.u16"), Some(&Value::U16(60000)));
    assert_eq!(md.get("test.i16"), Some(&Value::I16(-30000)));
    assert_eq!(md.get_u32("test.u32").expect("u32"), 4_000_000_000);
    assert_eq!(md.get("test.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(md.get_u64("test.u64").expect("u64"), (1u64 << 63) + 5);
    assert_eq!(md.get("test.i64"), Some(&Value::I64(-(1i64 << 62))));
    assert_eq!(md.get_f32("test.f32").expect("f32"), 0.25);
    assert_eq!(md.get_f64("test.f64").expect("f64"), -1.5e300);
    assert!(md.get_bool("test.bool").expect("bool"));
    assert_eq!(md.get_str("test.str").expect("str"), "héllo ✓");
    assert_eq!(
        md.get_int_array("test.int_array").expect("ints"),
        vec![1, -2, 3]
    );
    assert_eq!(
        md.get_str_array("test.str_array").expect("strs"),
        vec!["a", "bc", ""]
    );
    assert_eq!(f.architecture().expect("arch"), "llama");
    // Typed access errors name the key and both types.
    let err = md.get_str("test.u8").unwrap_err().to_string();
    assert!(
        err.contains("test.u8") && err.contains("uint8") && err.contains("string"),
        "{err}"
    );
    assert!(matches!(
        md.get_u32("no.such.key"),
        Err(GgufError::MissingKey { .. })
    ));
    assert!(md.get_u32("test.i8").is_err(), "-100 is not a u32");
}

#[test]
fn hf_config_from_metadata() {
    let c = tiny().hf_config().expect("config");
    assert_eq!(c["architectures"], serde_json::json!(["LlamaForCausalLM"]));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], 256);
    assert_eq!(c["intermediate_size"], 32);
    assert_eq!(c["num_hidden_layers"], 2);
    assert_eq!(c["num_attention_heads"], 4);
    assert_eq!(c["num_key_value_heads"], 2);
    assert_eq!(c["head_dim"], 16);
    assert_eq!(c["rope_theta"], 500000.0);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["vocab_size"], 16);
    assert_eq!(c["max_position_embeddings"], 128);
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);
}

#[test]
fn hf_tensors_match_transformers_view() {
    let f = tiny();
    let want = expected();
    let want = want["tensors"].as_object().expect("tensors");
    let mut seen = 0;
    for item in f.hf_tensors() {
        let (name, shape, data) = item.expect("tensor");
        let w = &want[&name];
        let ty = w["type"].as_str().expect("type");
        let wshape: Vec<usize> = w["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, wshape, "{name}: shape");
        assert_eq!(
            data.len(),
            shape.iter().product::<usize>(),
            "{name}: element count"
        );
        let first = floats(&w["first"]);
        let last = floats(&w["last"]);
        for (i, (&g, &e)) in data.iter().zip(&first).enumerate() {
            assert!(
                close(g as f64, e, 1e-6),
                "{name} ({ty}) first[{i}]: {g} vs {e}"
            );
        }
        for (i, (&g, &e)) in data[data.len() - 64.min(data.len())..]
            .iter()
            .zip(&last)
            .enumerate()
        {
            assert!(
                close(g as f64, e, 1e-6),
                "{name} ({ty}) last[{i}]: {g} vs {e}"
            );
        }
        let sum: f64 = data.iter().map(|&x| x as f64).sum();
        assert!(
            close(sum, w["sum"].as_f64().unwrap(), 1e-5),
            "{name}: sum {sum} vs {}",
            w["sum"]
        );
        // Per-row sums pin down the row order, i.e. the q/k un-permutation.
        if shape.len() == 2 {
            let rows = floats(&w["row_sums"]);
            for (r, chunk) in data.chunks(shape[1]).enumerate() {
                let s: f64 = chunk.iter().map(|&x| x as f64).sum();
                assert!(
                    close(s, rows[r], 1e-5),
                    "{name}: row {r} sum {s} vs {}",
                    rows[r]
                );
            }
        }
        seen += 1;
    }
    // 15 tensors in the file; rope_freqs.weight has no HF counterpart.
    assert_eq!(f.tensors().len(), 15);
    assert_eq!(seen, want.len());
    assert_eq!(seen, 14);
}

#[test]
fn hf_tensor_by_name() {
    let f = tiny();
    let (shape, data) = f
        .hf_tensor("model.layers.0.self_attn.k_proj.weight")
        .expect("k_proj");
    assert_eq!(shape, vec![32, 256]);
    let all: Vec<_> = f.hf_tensors().map(|t| t.expect("tensor")).collect();
    let (_, _, same) = all
        .iter()
        .find(|(n, _, _)| n == "model.layers.0.self_attn.k_proj.weight")
        .expect("listed");
    assert_eq!(&data, same);
    assert!(matches!(
        f.hf_tensor("model.layers.0.mlp.nope.weight"),
        Err(GgufError::MissingTensor { .. })
    ));
    assert!(matches!(
        f.hf_tensor("model.layers.7.mlp.up_proj.weight"),
        Err(GgufError::MissingTensor { .. })
    ));
}

fn bytes() -> Vec<u8> {
    std::fs::read(tiny_path()).expect("read tiny.gguf")
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

#[test]
fn bad_magic_and_version() {
    let mut b = bytes();
    b[0] = b'X';
    let err = GgufFile::from_bytes("x.gguf", b).unwrap_err();
    assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("x.gguf"));

    // Version 2 has the same little-endian layout as 3.
    let mut b = bytes();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = GgufFile::from_bytes("v2.gguf", b).expect("GGUF v2 parses");
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.tensors().len(), 15);

    let mut b = bytes();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    let err = GgufFile::from_bytes("v1.gguf", b).unwrap_err();
    assert!(
        matches!(err, GgufError::UnsupportedVersion { version: 1, .. }),
        "{err}"
    );
}

#[test]
fn every_truncation_is_an_error() {
    let b = bytes();
    // Every cut inside the header and tensor table, then a stride through the data.
    let header_end = find(&b, b"output.weight") + 200;
    let cuts = (0..header_end)
        .chain((header_end..b.len()).step_by(97))
        .chain([b.len() - 1]);
    for cut in cuts {
        match GgufFile::from_bytes("cut.gguf", b[..cut].to_vec()) {
            Err(GgufError::Truncated { .. } | GgufError::BadMagic { .. }) => {}
            Err(other) => panic!("cut at {cut}: unexpected error kind {other}"),
            Ok(_) => panic!("cut at {cut} of {} parsed", b.len()),
        }
    }
    // The last tensor's data is what a one-byte cut loses; the error says which tensor.
    let err = GgufFile::from_bytes("cut.gguf", b[..b.len() - 1].to_vec())
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated") && err.contains("tensor"), "{err}");
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    // The string array `test.str_array`: key, u32 type 9, u32 item type 8, u64 count.
    let mut b = bytes();
    let at = find(&b, b"test.str_array") + "test.str_array".len() + 8;
    b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let err = GgufFile::from_bytes("huge.gguf", b).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");

    // The tensor count in the header.
    let mut b = bytes();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes("huge.gguf", b),
        Err(GgufError::Truncated { .. })
    ));

    // A string length.
    let mut b = bytes();
    let at = find(&b, b"test.str") + "test.str".len() + 4;
    b[at..at + 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes("huge.gguf", b),
        Err(GgufError::Truncated { .. })
    ));
}

#[test]
fn corrupt_tensor_entries_are_named() {
    // Tensor table entry: name, u32 n_dims, n_dims x u64, u32 type, u64 offset.
    let name = b"blk.0.attn_q.weight";
    let b0 = bytes();
    let entry =
        find(&b0[find(&b0, b"test.str_array")..], name) + find(&b0, b"test.str_array") + name.len();

    let mut b = b0.clone();
    b[entry + 4 + 16..entry + 4 + 16 + 4].copy_from_slice(&99u32.to_le_bytes());
    let err = GgufFile::from_bytes("t.gguf", b).unwrap_err().to_string();
    assert!(
        err.contains("unknown GGML type id 99") && err.contains("blk.0.attn_q.weight"),
        "{err}"
    );

    let mut b = b0.clone();
    b[entry + 4..entry + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = GgufFile::from_bytes("t.gguf", b).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");

    let mut b = b0.clone();
    b[entry..entry + 4].copy_from_slice(&7u32.to_le_bytes());
    let err = GgufFile::from_bytes("t.gguf", b).unwrap_err().to_string();
    assert!(err.contains("7 dimensions"), "{err}");

    // Inner dimension not a multiple of the Q4_K block (256).
    let mut b = b0;
    b[entry + 4..entry + 12].copy_from_slice(&255u64.to_le_bytes());
    let err = GgufFile::from_bytes("t.gguf", b).unwrap_err().to_string();
    assert!(err.contains("not divisible"), "{err}");
}

#[test]
fn random_byte_flips_never_panic() {
    // 2000 files with 3 header bytes set to deterministic pseudo-random values. A file may
    // open (a flip inside a string value leaves it valid) or be refused, never panic or
    // allocate without bound; a refusal names the file; both outcomes occur.
    let b0 = bytes();
    let header_end = find(&b0, b"output.weight") + 64;
    // Each draw is k / 2^23 - 1 for a 24-bit k (exact in f32): k picks a byte, then a value.
    let draws: Vec<usize> = cake_kernels::testing::pseudo_random(2000 * 3 * 2, 0x9E37_79B9)
        .into_iter()
        .map(|x| ((x + 1.0) * (1u32 << 23) as f32) as usize)
        .collect();
    let (mut opened, mut refused) = (0, 0);
    for flips in draws.chunks(3 * 2) {
        let mut b = b0.clone();
        for flip in flips.chunks(2) {
            b[flip[0] % header_end] = flip[1] as u8;
        }
        match GgufFile::from_bytes("flip.gguf", b) {
            Ok(_) => opened += 1,
            Err(e) => {
                refused += 1;
                assert!(e.to_string().contains("flip.gguf"), "{e}");
            }
        }
    }
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}

#[test]
fn missing_file_names_the_path() {
    let err = GgufFile::open(Path::new("/nonexistent/model.gguf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}
