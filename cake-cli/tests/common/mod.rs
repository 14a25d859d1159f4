//! Helpers shared by the end-to-end tests of the `cake` binary.
#![allow(dead_code)]

use std::process::Output;

use assert_cmd::Command;

/// The `cake` binary, isolated from the developer's settings and model choice.
pub fn cake() -> Command {
    let mut cmd = Command::cargo_bin("cake").expect("the cake binary is built for tests");
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
