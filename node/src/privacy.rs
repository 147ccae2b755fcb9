//! `fedmesh privacy epsilon|noise`: plan a differential-privacy budget before training, with the
//! Rényi accountant of the subsampled Gaussian mechanism (`fedmesh_protocol::dp`).

use fedmesh_protocol::dp::{self, Accountant, Conversion};

/// The spend of `steps` steps at noise `sigma` and sampling rate `q`, converted at `delta`.
pub fn epsilon(
    sigma: f64,
    q: f64,
    steps: u64,
    delta: f64,
    classic: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut acc = Accountant::new();
    acc.compose(q, sigma, steps)?;
    let conversion = if classic {
        Conversion::Classic
    } else {
        Conversion::Improved
    };
    let (eps, order) = acc.epsilon_with(delta, conversion)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"epsilon": eps, "delta": delta, "noise": sigma, "sample_rate": q, "steps": steps, "order": order, "conversion": if classic { "classic" } else { "improved" }})
        );
    } else {
        println!("epsilon = {eps:.4} at delta = {delta:e} (noise {sigma}, sample rate {q}, {steps} steps; best Rényi order {order})");
    }
    Ok(())
}

/// The smallest noise multiplier that keeps `steps` steps at rate `q` within (`target`, `delta`).
pub fn noise(target: f64, q: f64, steps: u64, delta: f64, json: bool) -> anyhow::Result<()> {
    let sigma = dp::noise_for(target, q, steps, delta)?;
    let eps = dp::epsilon(sigma, q, steps, delta)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"noise": sigma, "epsilon": eps, "target_epsilon": target, "delta": delta, "sample_rate": q, "steps": steps})
        );
    } else {
        println!("noise = {sigma:.4} gives epsilon = {eps:.4} <= {target} at delta = {delta:e} (sample rate {q}, {steps} steps)");
    }
    Ok(())
}
