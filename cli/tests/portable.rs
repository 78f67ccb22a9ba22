//! The built `l2rec` binary runs on any x86-64 CPU of the documented baseline:
//! no Intel AMX instruction may reach it (llama.cpp's AMX kernels crash with
//! SIGILL on some Xeons, and a build host's AMX is not a user's CPU).
//! `bindings/tests/python/test_portable.py` holds `libl2rec_ffi.so` to the same.

use std::path::Path;
use std::process::{Command, Output};

/// `scripts/check-portable FILE`.
fn check_portable(file: &Path) -> Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-portable"))
        .arg(file)
        .output()
        .expect("run scripts/check-portable")
}

#[test]
#[cfg(target_arch = "x86_64")]
fn the_l2rec_binary_has_no_amx_instruction() {
    let out = check_portable(Path::new(env!("CARGO_BIN_EXE_l2rec")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no AMX instruction"), "{stderr}");
}

#[test]
#[cfg(target_arch = "x86_64")]
fn the_checker_finds_amx_where_there_is_some() {
    // A test that could not fail would prove nothing: assemble one AMX
    // instruction and make sure the checker refuses it.
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("amx.s");
    let object = dir.path().join("amx.o");
    std::fs::write(&source, ".text\nf:\n tilerelease\n ret\n").unwrap();
    let assembled = Command::new("cc")
        .args(["-c", "-o"])
        .arg(&object)
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(assembled.success(), "cc could not assemble {source:?}");
    let out = check_portable(&object);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
