//! Builds the plugins workspace (`plugins/`) for wasm32-wasip2, one package at a time (the
//! SDK's world features must not unify), into `plugins/target`, and copies the components
//! into OUT_DIR for `include_bytes!`. Cargo reruns this when plugins/ or wit/ change.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, component file name) of every plugin the host's tests embed.
const PLUGINS: &[(&str, &str)] = &[
    ("probe-meter", "probe_meter.wasm"),
    ("probe-policy", "probe_policy.wasm"),
    ("http-json-meter", "http_json_meter.wasm"),
    ("peak-shaving", "peak_shaving.wasm"),
    ("solar-surplus", "solar_surplus.wasm"),
    ("tou-tariff", "tou_tariff.wasm"),
    ("sunspec-meter", "sunspec_meter.wasm"),
    ("day-ahead-price", "day_ahead_price.wasm"),
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("core/plugin-artifacts sits two levels below the repository root")
        .to_path_buf();
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env("OUT_DIR"));
    for watched in [
        "Cargo.toml",
        "Cargo.lock",
        "sdk",
        "fixtures",
        "http-json-meter",
        "peak-shaving",
        "solar-surplus",
        "tou-tariff",
        "sunspec-meter",
        "day-ahead-price",
    ] {
        println!("cargo:rerun-if-changed={}", plugins.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let target_dir = plugins.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ensure_target();
    for (package, file) in PLUGINS {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&plugins)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
                "-p",
                package,
            ])
            .env("CARGO_TARGET_DIR", &target_dir);
        // The outer build's settings are for the host target (or for clippy); the guest build
        // must not inherit them.
        for var in [
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_BUILD_TARGET",
            "CARGO_BUILD_RUSTFLAGS",
            "TARGET",
            "HOST",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
        if !status.success() {
            panic!(
                "building plugin `{package}` for wasm32-wasip2 failed ({status}). Is the target \
                 installed? `rustup target add wasm32-wasip2` (bash .ci/test does it)"
            );
        }
        let built = target_dir.join("wasm32-wasip2/release").join(file);
        std::fs::copy(&built, out_dir.join(file))
            .unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    }
}

/// A fresh machine has the host toolchain only: add the guest target through rustup (as
/// `.ci/run` does), so `cargo run --release -- demo` needs nothing else.
fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let Ok(out) = installed else {
        // No rustup (a distribution toolchain): the build below says what is missing.
        return;
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return;
    }
    println!("cargo:warning=installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
    match Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => println!("cargo:warning=rustup target add wasm32-wasip2 failed ({s})"),
        Err(e) => println!("cargo:warning=cannot run rustup: {e}"),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}
