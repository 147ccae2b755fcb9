//! The command line on its own: planning tools and error messages.

use crate::harness::{fedmesh, path_str};

/// TF-Privacy's MNIST tutorial (noise 1.1, batch 256 of 60,000, 60 epochs, δ = 1e-5) reports
/// ε = 3.01 with the classic conversion; the planner agrees and inverts itself.
#[test]
fn privacy_planner_matches_a_published_example_and_inverts() {
    let steps = (60 * 60_000 / 256).to_string();
    let q = (256.0f64 / 60_000.0).to_string();
    let out = fedmesh(&[
        "privacy",
        "epsilon",
        "--noise",
        "1.1",
        "--sample-rate",
        &q,
        "--steps",
        &steps,
        "--classic",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let eps = v["epsilon"].as_f64().unwrap();
    assert!((eps - 3.01).abs() / 3.01 < 0.01, "epsilon {eps}");

    let out = fedmesh(&[
        "privacy",
        "noise",
        "--epsilon",
        "2",
        "--sample-rate",
        &q,
        "--steps",
        &steps,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sigma = v["noise"].as_f64().unwrap();
    let out = fedmesh(&[
        "privacy",
        "epsilon",
        "--noise",
        &sigma.to_string(),
        "--sample-rate",
        &q,
        "--steps",
        &steps,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((v["epsilon"].as_f64().unwrap() - 2.0).abs() < 1e-3, "{v}");

    let bad = fedmesh(&[
        "privacy",
        "epsilon",
        "--noise",
        "-1",
        "--sample-rate",
        "0.1",
        "--steps",
        "10",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("noise"));
}

/// A wrong dealer config names the file and the field; nothing is written.
#[test]
fn bad_genesis_config_names_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("genesis.toml");
    std::fs::write(&cfg, "[spec.train]\nlearning_rat = 0.1\n").unwrap();
    let out_dir = dir.path().join("net");
    let genesis = || {
        fedmesh(&[
            "genesis",
            "--members",
            "3",
            "--out",
            path_str(&out_dir),
            "--config",
            path_str(&cfg),
        ])
    };
    let out = genesis();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("genesis.toml") && err.contains("learning_rat"),
        "{err}"
    );
    assert!(!out_dir.join("genesis.toml").exists());

    std::fs::write(&cfg, "[spec.model]\nlayers = [784]\n").unwrap();
    let out = genesis();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.model.layers"),
        "{err}"
    );
}
