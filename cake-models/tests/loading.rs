//! Loader errors name the file and the problem instead of panicking.

use std::path::{Path, PathBuf};

use cake_models::file::FileError;
use cake_models::weights::WeightError;
use cake_models::{Cpu, LoadError, load};

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tiny")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> LoadError {
    load::<Cpu>(dir, &Default::default()).unwrap_err()
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(path, json.to_string()).unwrap();
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let dir = copy_fixture("mistral");
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, LoadError::Weights(WeightError::Safetensors { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn missing_shard_and_missing_tensor_are_reported() {
    let dir = copy_fixture("llama");
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.to_string().contains("model-00002-of-00003.safetensors"),
        "{err}"
    );

    let dir = copy_fixture("qwen2");
    edit_config(dir.path(), |j| j["num_hidden_layers"] = 4.into());
    let err = load_err(dir.path());
    assert!(
        matches!(err, LoadError::Weights(WeightError::Missing { ref name, .. }) if name.starts_with("model.layers.3.")),
        "{err}"
    );
}

#[test]
fn config_shape_mismatch_names_the_tensor() {
    let dir = copy_fixture("mistral");
    edit_config(dir.path(), |j| j["intermediate_size"] = 96.into());
    let err = load_err(dir.path());
    assert!(
        matches!(err, LoadError::Weights(WeightError::Shape { ref name, .. }) if name == "model.layers.0.mlp.gate_proj.weight"),
        "{err}"
    );
}

#[test]
fn bad_configs_are_reported() {
    let dir = copy_fixture("mistral");
    edit_config(dir.path(), |j| {
        j["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
    });
    assert!(load_err(dir.path()).to_string().contains("GPT2LMHeadModel"));

    let dir = copy_fixture("mistral");
    edit_config(dir.path(), |j| j["num_key_value_heads"] = 3.into());
    assert!(
        load_err(dir.path())
            .to_string()
            .contains("num_key_value_heads")
    );

    let dir = copy_fixture("llama");
    edit_config(dir.path(), |j| {
        j["rope_parameters"]["rope_type"] = "yarn".into()
    });
    assert!(load_err(dir.path()).to_string().contains("yarn"));

    let dir = copy_fixture("llama");
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(
        load_err(dir.path()),
        LoadError::File(FileError::Json { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_err(&dir.path().join("nothing")),
        LoadError::NotAModel(_)
    ));
}

#[test]
fn classic_rope_scaling_dialect_is_read() {
    // Llama-3.1 config.json files state `rope_theta` + `rope_scaling`; transformers 5
    // writes `rope_parameters`. Both must give the same model.
    let dir = copy_fixture("llama");
    edit_config(dir.path(), |j| {
        let params = j["rope_parameters"].take();
        j["rope_theta"] = params["rope_theta"].clone();
        j["rope_scaling"] = params;
        j.as_object_mut().unwrap().remove("rope_parameters");
    });
    let classic = load::<Cpu>(dir.path(), &Default::default()).unwrap().config;
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny/llama");
    let modern = load::<Cpu>(&src, &Default::default()).unwrap().config;
    assert_eq!(classic, modern);
    assert!(modern.rope.llama3.is_some());
}
