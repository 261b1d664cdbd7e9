//! Replays every file of the committed fuzz corpus (`fuzz/corpus/<target>/`) through the check
//! its fuzz target runs, on the stable toolchain. Inputs that once broke a property are kept in
//! the corpus under a `regression-` name, so each finding stays tested.

use std::{
    fs,
    panic::{self, AssertUnwindSafe},
    path::PathBuf,
};

use crate::checks;

/// Runs `check` over every file of `fuzz/corpus/<target>`, naming the files that fail.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "{}: the seed corpus is missing",
        dir.display()
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = fs::read(path).unwrap();
            panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: properties broken by {failed:#?}"
    );
}

#[test]
fn frame_corpus() {
    replay("frame", checks::frame);
}

#[test]
fn upgrade_corpus() {
    replay("upgrade", checks::upgrade);
}

#[test]
fn payload_corpus() {
    replay("payload", checks::payload);
}

#[test]
fn jwt_corpus() {
    replay("jwt", checks::jwt);
}
