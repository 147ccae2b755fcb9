//! Every committed fuzz corpus file (`tests/fuzz/corpus/<target>/`) through the body of its fuzz
//! target, on the stable toolchain. CI has no nightly and cannot run cargo-fuzz; this test is how
//! the corpora (and the crashes they once held, kept under `tests/fuzz/regressions/<target>/`)
//! guard against regressions.

#[path = "fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz;

use std::path::Path;

/// Run every file under `dir/<target>/` through the target's body; returns how many ran.
fn run_dir(dir: &Path) -> usize {
    let mut ran = 0;
    for (name, body) in fuzz::TARGETS {
        let Ok(files) = std::fs::read_dir(dir.join(name)) else {
            continue;
        };
        let mut files: Vec<_> = files.map(|f| f.expect("corpus entry").path()).collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).expect("corpus file reads");
            let result = std::panic::catch_unwind(|| body(&bytes));
            assert!(
                result.is_ok(),
                "fuzz target {name} panics on {}",
                f.display()
            );
            ran += 1;
        }
    }
    ran
}

#[test]
fn corpora_and_regressions_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let corpus = run_dir(&root.join("corpus"));
    let regressions = run_dir(&root.join("regressions"));
    assert!(corpus > 0, "no corpus files found under {}", root.display());
    eprintln!("{corpus} corpus files and {regressions} regression inputs passed");
}

/// Every target has a non-empty committed corpus.
#[test]
fn every_target_has_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    for (name, _) in fuzz::TARGETS {
        let n = std::fs::read_dir(root.join(name))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(
            n > 0,
            "fuzz target {name} has no corpus in {}",
            root.display()
        );
    }
}

/// Writes the seed corpora (valid inputs built from the fixtures) into `tests/fuzz/corpus/`:
/// `FEDMESH_FUZZ_SEEDS=1 cargo test --test fuzz_corpus write_seeds -- --ignored`.
#[test]
#[ignore = "writes files; run by hand to regenerate the seed corpora"]
fn write_seeds() {
    if std::env::var_os("FEDMESH_FUZZ_SEEDS").is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    for (i, (target, bytes)) in fuzz::seeds().into_iter().enumerate() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(format!("seed-{i:03}")), bytes).expect("seed file");
    }
}

/// Every seed is a valid input, and runs through its target.
#[test]
fn seeds_pass_their_targets() {
    for (target, bytes) in fuzz::seeds() {
        let body = fuzz::TARGETS
            .iter()
            .find(|(name, _)| *name == target)
            .map(|(_, b)| b)
            .expect("seed for a known target");
        body(&bytes);
    }
}
