//! `fedmesh bench`: reproducible micro-benchmarks of the node's own code paths, printed as a table
//! (or JSON). Timings are medians over repeated runs in one process, so ratios between lines of
//! one run are meaningful even on a noisy machine.

use std::path::Path;
use std::time::Instant;

use fedmesh_protocol::genesis::{DataSpec, Optimizer, TrainSpec};
use fedmesh_protocol::model::Layout;

use crate::train;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time<F: FnMut()>(repeats: usize, mut f: F) -> f64 {
    f(); // warm-up
    median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Time local training and evaluation of the default MLP on one member's MNIST shard.
pub fn train(data_path: &Path, members: u32, repeats: usize, json: bool) -> anyhow::Result<()> {
    let spec = DataSpec::default();
    let data = train::load(&spec, data_path, 0, members)?;
    let layout = Layout::new(vec![784, 128, 10])?;
    let init = layout.init(1);
    let mut rows = Vec::new();
    for (name, optimizer, lr) in [
        ("sgd", Optimizer::Sgd, 0.1),
        ("adam", Optimizer::Adam, 1e-3),
    ] {
        let t = TrainSpec {
            optimizer,
            learning_rate: lr,
            epochs: 2,
            batch_size: 32,
        };
        let secs = time(repeats, || {
            train::train(&layout, &init, &data.train, &t, 1).expect("training");
        });
        rows.push((
            format!("train {name}, 2 epochs, {} rows", data.train.len()),
            secs,
        ));
    }
    let secs = time(repeats, || {
        train::evaluate(&layout, &init, &data.test).expect("evaluation");
    });
    rows.push((format!("evaluate, {} rows", data.test.len()), secs));
    let secs = time(repeats, || {
        std::hint::black_box(layout.hash(&init));
    });
    rows.push((
        format!("model hash, {} parameters", layout.param_count()),
        secs,
    ));
    for (what, secs) in rows {
        if json {
            println!(
                "{}",
                serde_json::json!({"bench": "train", "what": what, "median_ms": secs * 1e3, "repeats": repeats})
            );
        } else {
            println!("{what:<40} {:>9.2} ms (median of {repeats})", secs * 1e3);
        }
    }
    Ok(())
}
