//! The genesis file: the network's founding document, written once by the dealer
//! (`fedmesh genesis`) and shared by every member. Its hash is height 0 of every audit log; two
//! nodes with different genesis hashes are on different networks and refuse each other.

use serde::{Deserialize, Serialize};

use crate::crypto::{bls, identity, Hash};
use crate::model::{Layout, LayoutError};

/// Current genesis format version.
pub const VERSION: u32 = 1;

/// The hash of a genesis file: blake3 over its exact bytes.
pub fn hash_bytes(bytes: &[u8]) -> Hash {
    Hash::of("fedmesh genesis v1", bytes)
}

/// How members combine their updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Signed updates are exchanged in the clear; every member aggregates them itself.
    #[default]
    Plain,
    /// Bonawitz et al. secure aggregation: only the sum of the members' masked, quantized updates
    /// is revealed (see [`SecaggSpec`]).
    Secagg,
    /// Threshold Paillier: updates are quantized, packed and encrypted under a joint key dealt at
    /// genesis; only `threshold` members together decrypt, and only the sum (see [`PaillierSpec`]).
    Paillier,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Plain => f.write_str("plain"),
            Mode::Secagg => f.write_str("secagg"),
            Mode::Paillier => f.write_str("paillier"),
        }
    }
}

/// Everything the members agree on besides who they are: the dealer's input (`configs/genesis.toml`)
/// and, verbatim, the `[spec]` section of the genesis file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spec {
    /// A name for the network, shown in logs.
    pub network: String,
    /// Aggregation mode.
    pub mode: Mode,
    /// Round timing, thresholds and limits.
    pub params: Params,
    /// The model every member trains.
    pub model: ModelSpec,
    /// Local training: optimizer and schedule.
    pub train: TrainSpec,
    /// Which data set and how it is split among members.
    pub data: DataSpec,
    /// Mode `secagg`: thresholds, neighbourhoods and quantization.
    pub secagg: SecaggSpec,
    /// The robust aggregation rule, anomaly scores and eviction votes.
    pub robust: RobustSpec,
    /// Mode `paillier`: key size, decryption threshold and quantization.
    pub paillier: PaillierSpec,
    /// Differential privacy: which level, which mechanism, how much noise. Default: none. Left
    /// out of the genesis file when the level is `none`, so files without DP are unchanged.
    #[serde(skip_serializing_if = "DpSpec::is_none")]
    pub dp: DpSpec,
}

/// Whose privacy the noise protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DpLevel {
    /// No differential privacy: updates are exact.
    #[default]
    None,
    /// Each member's records: DP-SGD on the member's own data (per-example clipping, Gaussian
    /// noise on every step, Poisson or fixed-size batches). The guarantee is for one record of
    /// one member's shard.
    Record,
    /// Each member as a whole: the member clips its whole update and the aggregate carries noise
    /// (DP-FedAvg, McMahan et al. 2018), added in shares by the members themselves. The guarantee
    /// is for everything one member contributes.
    Member,
}

impl std::fmt::Display for DpLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DpLevel::None => "none",
            DpLevel::Record => "record",
            DpLevel::Member => "member",
        })
    }
}

/// The noise distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DpMechanism {
    /// Gaussian noise, L2 clipping, (ε, δ)-DP through the Rényi accountant.
    #[default]
    Gaussian,
    /// Laplace noise, L1 clipping, pure ε-DP (δ = 0) composed by adding up. Member level only.
    Laplace,
}

/// How DP-SGD draws each step's batch (level `record`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// Every record joins each step's batch independently with probability `sample_rate`: the
    /// sampling the accountant's amplification bound assumes.
    #[default]
    Poisson,
    /// Batches of exactly round(sample_rate × shard rows) records drawn without replacement,
    /// accounted as Poisson sampling at the same rate (the common practice, not a proof).
    Fixed,
}

/// Differential privacy (`[spec.dp]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpSpec {
    /// `none`, `record` or `member`.
    pub level: DpLevel,
    /// `gaussian` or `laplace` (member level only).
    pub mechanism: DpMechanism,
    /// Noise per unit of clipping norm: the Gaussian σ (std = σ·clip) or the Laplace scale b
    /// (scale = b·clip, so each round costs ε = 1/b).
    pub noise_multiplier: f64,
    /// Clipping norm C: of each example's gradient (record level, L2) or of each member's whole
    /// update (member level; L2 for Gaussian, L1 for Laplace).
    pub clip: f64,
    /// Record level: the fraction of a member's rows in each DP-SGD step (q). A round is
    /// ceil(spec.train.epochs / q) steps; spec.train.batch_size is not used.
    pub sample_rate: f64,
    /// Record level: `poisson` or `fixed` batches.
    pub sampling: Sampling,
    /// δ of the (ε, δ) spent that the audit log records (Gaussian).
    pub delta: f64,
}

impl Default for DpSpec {
    fn default() -> Self {
        DpSpec {
            level: DpLevel::None,
            mechanism: DpMechanism::Gaussian,
            noise_multiplier: 1.0,
            clip: 1.0,
            sample_rate: 0.032,
            sampling: Sampling::Poisson,
            delta: 1e-5,
        }
    }
}

impl DpSpec {
    /// True when no differential privacy is asked for.
    pub fn is_none(&self) -> bool {
        self.level == DpLevel::None
    }

    /// Record level: DP-SGD steps a participating member takes per round.
    pub fn steps_per_round(&self, epochs: usize) -> u64 {
        (epochs as f64 / self.sample_rate).ceil().max(1.0) as u64
    }

    /// Check the section.
    pub fn validate(&self) -> Result<(), GenesisError> {
        if self.is_none() {
            return Ok(());
        }
        let bad = |field: &'static str, problem: String| Err(GenesisError::Dp { field, problem });
        if !(self.noise_multiplier > 0.0 && self.noise_multiplier.is_finite()) {
            return bad(
                "noise_multiplier",
                format!(
                    "must be positive and finite, found {} (plan it with `fedmesh privacy noise`)",
                    self.noise_multiplier
                ),
            );
        }
        if !(self.clip > 0.0 && self.clip.is_finite()) {
            return bad(
                "clip",
                format!("must be positive and finite, found {}", self.clip),
            );
        }
        if self.mechanism == DpMechanism::Gaussian && !(self.delta > 0.0 && self.delta < 1.0) {
            return bad("delta", format!("must be in (0, 1), found {}", self.delta));
        }
        if self.level == DpLevel::Record {
            if self.mechanism != DpMechanism::Gaussian {
                return bad(
                    "mechanism",
                    "laplace applies only at level member (DP-SGD is accounted for Gaussian noise)"
                        .into(),
                );
            }
            if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
                return bad(
                    "sample_rate",
                    format!("must be in (0, 1], found {}", self.sample_rate),
                );
            }
        }
        Ok(())
    }
}

/// Threshold Paillier settings (mode `paillier`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaillierSpec {
    /// Modulus size of the joint key in bits: 2048 (default) or 3072. Smaller keys (multiples of 16
    /// from 256) are accepted only for tests and are not secure.
    pub key_bits: u32,
    /// Partial decryptions needed to decrypt a sum; 0 = a majority of members (n/2 + 1).
    pub threshold: usize,
    /// Quantization: values are clipped to ±clip (clipping is counted and logged)…
    pub clip: f32,
    /// …and rounded stochastically to 2^value_bits levels; each packed slot also carries
    /// ⌈log₂ members⌉ bits of headroom for the sum.
    pub value_bits: u32,
    /// How long the coordinator waits for `threshold` good partial decryptions after it
    /// announced the sum (ms); with fewer, the attempt fails and the next coordinator retries.
    /// At 2048 bits a member's partial decryption of a 100,000-value sum costs about 16 s of CPU.
    pub phase_timeout_ms: u64,
}

impl Default for PaillierSpec {
    fn default() -> Self {
        PaillierSpec {
            key_bits: 2048,
            threshold: 0,
            clip: 0.5,
            value_bits: 16,
            phase_timeout_ms: 120_000,
        }
    }
}

impl PaillierSpec {
    /// The decryption threshold for `n` members.
    pub fn threshold_for(&self, n: usize) -> usize {
        if self.threshold == 0 {
            n / 2 + 1
        } else {
            self.threshold
        }
    }

    /// The packing for `n` members.
    pub fn packer(
        &self,
        n: usize,
    ) -> Result<crate::crypto::paillier::pack::Packer, crate::crypto::paillier::pack::PackError>
    {
        crate::crypto::paillier::pack::Packer::for_key_bits(
            self.key_bits,
            self.value_bits,
            self.clip,
            n,
        )
    }

    /// Check what can be checked without the keys.
    pub fn validate(&self, n: usize) -> Result<(), GenesisError> {
        let bad = |m: String| Err(GenesisError::Paillier(m));
        if !(crate::crypto::paillier::MIN_KEY_BITS..=crate::crypto::paillier::MAX_KEY_BITS)
            .contains(&self.key_bits)
            || !self.key_bits.is_multiple_of(16)
        {
            return bad(format!(
                "key_bits {} must be a multiple of 16 between 256 and 4096 (2048 or 3072 for real networks)",
                self.key_bits
            ));
        }
        let t = self.threshold_for(n);
        if t == 0 || t > n || n > crate::crypto::paillier::MAX_PARTIES {
            return bad(format!(
                "threshold {t} must be between 1 and the member count {n} (at most {})",
                crate::crypto::paillier::MAX_PARTIES
            ));
        }
        if let Err(e) = self.packer(n.max(1)) {
            return bad(e.to_string());
        }
        if self.phase_timeout_ms == 0 {
            return Err(GenesisError::Zero {
                field: "spec.paillier.phase_timeout_ms",
            });
        }
        Ok(())
    }
}

/// Which robust aggregation rule combines the updates (see [`crate::robust::Rule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// FedAvg, weighted by sample count.
    #[default]
    Mean,
    /// Coordinate-wise median.
    Median,
    /// Coordinate-wise trimmed mean (`trim`).
    TrimmedMean,
    /// Coordinate-wise winsorized, sample-weighted mean (`trim`).
    WinsorizedMean,
    /// Krum: the most central single update (`attackers`).
    Krum,
    /// Multi-Krum: FedAvg of the `multi_krum` most central updates (`attackers`).
    MultiKrum,
    /// Centered clipping (`clip_radius`, `clip_iterations`).
    CenteredClipping,
    /// FoolsGold: down-weights members whose update histories are alike (`foolsgold_confidence`).
    Foolsgold,
}

/// Robust aggregation, anomaly scores and eviction votes. The defaults keep plain FedAvg and no
/// votes; `fedmesh drill poisoning` measures the other settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RobustSpec {
    /// `mean`, `median`, `trimmed_mean`, `winsorized_mean`, `krum`, `multi_krum`,
    /// `centered_clipping`, `foolsgold`.
    pub rule: RuleKind,
    /// Trimmed and winsorized mean: fraction β of values cut (or clamped) at each end of every
    /// coordinate, in [0, 0.5).
    pub trim: f64,
    /// Krum and Multi-Krum: attackers f assumed among the round's updates; absent = a fifth of
    /// them (Krum needs at least f + 3 updates).
    pub attackers: Option<usize>,
    /// Multi-Krum: updates averaged; 0 = the round's updates minus `attackers`.
    pub multi_krum: usize,
    /// Centered clipping: L2 radius τ; 0 = the median distance of the updates to their
    /// coordinate-wise median, every round.
    pub clip_radius: f64,
    /// Centered clipping: iterations.
    pub clip_iterations: usize,
    /// FoolsGold: confidence κ of the logit that maps dissimilarity to a weight.
    pub foolsgold_confidence: f64,
    /// Members score each other every round and vote to evict persistent outliers.
    pub votes: bool,
    /// Weight of the newest round score in a member's EWMA score, in (0, 1].
    pub score_decay: f64,
    /// A member whose EWMA score exceeds this is suspect (scores are robust z-scores).
    pub score_threshold: f64,
    /// Consecutive rounds a member must stay suspect before members vote against it.
    pub patience: u64,
    /// Rounds at the start in which no votes are cast (the first updates of a fresh model are
    /// the least alike).
    pub warmup_rounds: u64,
    /// Share of the active members whose votes evict, in (0, 1]; 2/3 by default.
    pub quorum: f64,
    /// Rounds after which a vote that has not reached a quorum expires.
    pub vote_expiry_rounds: u64,
    /// Secure modes: split each round's members into random groups of at least this many, reveal
    /// only group sums, apply the rule and scores to group means, and find attackers by group
    /// testing ([`crate::robust::suspicion`]). 0 = no groups (one sum of everyone in secure modes,
    /// individual updates in plain mode).
    pub group_size: usize,
    /// Group testing: assumed share of attackers, in (0, 1).
    pub group_prior: f64,
    /// Group testing: how often a group holding an attacker is flagged, in (0, 1).
    pub group_detection: f64,
    /// Group testing: how often an all-honest group is flagged, in [0, `group_detection`).
    pub group_false_alarm: f64,
    /// Group testing: posterior probability of "attacker" at which members vote, in (0, 1).
    pub group_confidence: f64,
    /// Groups: public reference rows (FLTrust's root data set, peer to peer), at most
    /// [`MAX_REFERENCE_ROWS`]; 0 = off. Every member sets the same rows aside — for MNIST the
    /// rows just before the test split in each class, taken out of the training pool before the
    /// partition; for synthetic data rows of the common mix from their own stream of the seed —
    /// and every group mean is also judged by what it does to the model on them
    /// ([`crate::robust::reference`]). Not serialized when 0, so genesis files without it keep
    /// their hash.
    #[serde(skip_serializing_if = "is_zero")]
    pub reference_rows: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// The most public reference rows genesis may ask for (`spec.robust.reference_rows`): every
/// member scores every group mean on all of them every round.
pub const MAX_REFERENCE_ROWS: usize = 10_000;

impl Default for RobustSpec {
    fn default() -> Self {
        RobustSpec {
            rule: RuleKind::Mean,
            trim: 0.2,
            attackers: None,
            multi_krum: 0,
            clip_radius: 0.0,
            clip_iterations: 3,
            foolsgold_confidence: 1.0,
            votes: false,
            score_decay: 0.5,
            score_threshold: 3.0,
            patience: 2,
            warmup_rounds: 1,
            quorum: 2.0 / 3.0,
            vote_expiry_rounds: 3,
            group_size: 0,
            group_prior: 0.2,
            group_detection: 0.9,
            group_false_alarm: 0.05,
            group_confidence: 0.99,
            reference_rows: 0,
        }
    }
}

impl RobustSpec {
    /// The rule these settings describe.
    pub fn rule(&self) -> crate::robust::Rule {
        use crate::robust::Rule;
        match self.rule {
            RuleKind::Mean => Rule::Mean,
            RuleKind::Median => Rule::Median,
            RuleKind::TrimmedMean => Rule::TrimmedMean { beta: self.trim },
            RuleKind::WinsorizedMean => Rule::WinsorizedMean { beta: self.trim },
            RuleKind::Krum => Rule::Krum { f: self.attackers },
            RuleKind::MultiKrum => Rule::MultiKrum {
                f: self.attackers,
                m: (self.multi_krum > 0).then_some(self.multi_krum),
            },
            RuleKind::CenteredClipping => Rule::CenteredClipping {
                radius: self.clip_radius,
                iterations: self.clip_iterations,
            },
            RuleKind::Foolsgold => Rule::FoolsGold {
                confidence: self.foolsgold_confidence,
            },
        }
    }

    /// Check the ranges of every field.
    pub fn validate(&self) -> Result<(), GenesisError> {
        let bad =
            |field: &'static str, problem: String| Err(GenesisError::Robust { field, problem });
        if !(0.0..0.5).contains(&self.trim) {
            return bad("trim", format!("must be in [0, 0.5), found {}", self.trim));
        }
        if !(self.clip_radius.is_finite() && self.clip_radius >= 0.0) {
            return bad(
                "clip_radius",
                format!("must be ≥ 0, found {}", self.clip_radius),
            );
        }
        if self.clip_iterations == 0 {
            return bad("clip_iterations", "must be at least 1".into());
        }
        if !(self.foolsgold_confidence.is_finite() && self.foolsgold_confidence > 0.0) {
            return bad(
                "foolsgold_confidence",
                format!("must be > 0, found {}", self.foolsgold_confidence),
            );
        }
        if !(self.score_decay > 0.0 && self.score_decay <= 1.0) {
            return bad(
                "score_decay",
                format!("must be in (0, 1], found {}", self.score_decay),
            );
        }
        if !(self.score_threshold.is_finite() && self.score_threshold > 0.0) {
            return bad(
                "score_threshold",
                format!("must be > 0, found {}", self.score_threshold),
            );
        }
        if !(self.quorum > 0.0 && self.quorum <= 1.0) {
            return bad(
                "quorum",
                format!("must be in (0, 1], found {}", self.quorum),
            );
        }
        if self.vote_expiry_rounds == 0 {
            return bad("vote_expiry_rounds", "must be at least 1".into());
        }
        if self.group_size == 1 {
            return bad(
                "group_size",
                "must be 0 (no groups) or at least 2: a group of one reveals an update".into(),
            );
        }
        let open = |v: f64| v > 0.0 && v < 1.0;
        for (field, value) in [
            ("group_prior", self.group_prior),
            ("group_detection", self.group_detection),
            ("group_confidence", self.group_confidence),
        ] {
            if !open(value) {
                return bad(field, format!("must be in (0, 1), found {value}"));
            }
        }
        if self.reference_rows > MAX_REFERENCE_ROWS {
            return bad(
                "reference_rows",
                format!(
                    "must be at most {MAX_REFERENCE_ROWS}, found {}",
                    self.reference_rows
                ),
            );
        }
        if self.reference_rows > 0 && self.group_size == 0 {
            return bad(
                "reference_rows",
                "scores group means: set group_size too, or leave reference_rows at 0".into(),
            );
        }
        if !(self.group_false_alarm >= 0.0 && self.group_false_alarm < self.group_detection) {
            return bad(
                "group_false_alarm",
                format!(
                    "must be in [0, group_detection = {}), found {}",
                    self.group_detection, self.group_false_alarm
                ),
            );
        }
        Ok(())
    }

    /// The group-testing model these settings describe.
    pub fn suspicion_model(&self) -> crate::robust::suspicion::Model {
        crate::robust::suspicion::Model {
            prior: self.group_prior,
            detection: self.group_detection,
            false_alarm: self.group_false_alarm,
            confidence: self.group_confidence,
        }
    }
}

/// Secure aggregation settings (mode `secagg`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecaggSpec {
    /// Shares needed to recover a member's secrets, out of its holders (its neighbours and
    /// itself); also the fewest members any phase may continue with. 0 = a majority of holders.
    pub threshold: usize,
    /// SecAgg+ neighbours per member; 0 = every member shares with every other (complete graph).
    pub degree: usize,
    /// Update values are clipped to ±clip before quantization (clipping is counted and logged).
    pub clip: f32,
    /// Quantization levels per value: 2^value_bits.
    pub value_bits: u32,
    /// Largest FedAvg weight (training rows) a member may carry inside its masked vector.
    pub max_weight: u64,
    /// How long the coordinator waits for each phase's messages after the first (ms).
    pub phase_timeout_ms: u64,
}

impl Default for SecaggSpec {
    fn default() -> Self {
        SecaggSpec {
            threshold: 0,
            degree: 0,
            clip: 0.5,
            value_bits: 16,
            max_weight: 65_535,
            phase_timeout_ms: 5_000,
        }
    }
}

impl SecaggSpec {
    /// Holders of each member's shares (neighbours and itself) for `n` members.
    pub fn holders(&self, n: usize) -> usize {
        // The graph rounds an odd degree up to even, and is complete from n − 1 on.
        let even = self.degree + self.degree % 2;
        if self.degree == 0 || even >= n.saturating_sub(1) {
            n
        } else {
            even + 1
        }
    }

    /// The recovery threshold for `n` members.
    pub fn threshold_for(&self, n: usize) -> usize {
        if self.threshold == 0 {
            self.holders(n) / 2 + 1
        } else {
            self.threshold
        }
    }
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            network: "fedmesh-testnet".into(),
            mode: Mode::Plain,
            params: Params::default(),
            model: ModelSpec::default(),
            train: TrainSpec::default(),
            data: DataSpec::default(),
            secagg: SecaggSpec::default(),
            paillier: PaillierSpec::default(),
            robust: RobustSpec::default(),
            dp: DpSpec::default(),
        }
    }
}

/// Round timing, thresholds and message limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// BLS signature shares needed to append a round record. 0 means a majority of members
    /// (n/2 + 1), which also guarantees that two different records can never both be signed.
    pub signing_threshold: usize,
    /// Time from the start of a round until the coordinator stops waiting for updates; members
    /// whose update has not arrived by then are dropouts of the round.
    pub update_timeout_ms: u64,
    /// If no record is proposed this long after the update timeout, the next member in the
    /// coordinator order proposes instead (and so on).
    pub failover_timeout_ms: u64,
    /// Largest message in bytes (on gossip, or as a bulk body fetched by request-response); every
    /// node uses this same value. Must hold one update.
    pub max_message_bytes: usize,
    /// How often a node announces its log head so that lagging peers catch up.
    pub status_interval_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            signing_threshold: 0,
            update_timeout_ms: 30_000,
            failover_timeout_ms: 15_000,
            max_message_bytes: 4 << 20,
            status_interval_ms: 2_000,
        }
    }
}

/// The model every member trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSpec {
    /// Layer widths, input first (an MLP with ReLU between layers).
    pub layers: Vec<usize>,
    /// Seed of the initial global model.
    pub init_seed: u64,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            layers: vec![784, 128, 10],
            init_seed: 1,
        }
    }
}

impl ModelSpec {
    pub fn layout(&self) -> Result<Layout, LayoutError> {
        Layout::new(self.layers.clone())
    }
}

/// Local optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    Sgd,
    Adam,
}

/// Local training on each member's shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    /// `sgd` or `adam`.
    pub optimizer: Optimizer,
    /// Step size.
    pub learning_rate: f64,
    /// Passes over the local shard per round.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            optimizer: Optimizer::Sgd,
            learning_rate: 0.1,
            epochs: 2,
            batch_size: 32,
        }
    }
}

/// The data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// `data/mnist_5k.csv.gz`: 5,000 MNIST digits (784 pixels and a label per row).
    Mnist,
    /// Generated network-flow records with a binary threat label (no file needed).
    Synthetic,
}

/// How training rows are split among members.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Partition {
    /// Shuffle, then equal contiguous shards by member index.
    Iid,
    /// Per class, member proportions drawn from Dirichlet(α): small α, very skewed shards.
    Dirichlet { alpha: f64 },
}

/// Which data and how it is split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSpec {
    /// `mnist` or `synthetic`.
    pub source: DataSource,
    /// Split of the training rows among members.
    pub partition: Partition,
    /// Seed of the shuffle, the partition and the synthetic generator.
    pub seed: u64,
    /// Rows held out as the shared test split. MNIST: the last rows of each class, taken class by
    /// class in turn (the shipped file is sorted by label), so the split is fixed and balanced.
    pub test_rows: usize,
    /// Synthetic only: training rows generated per member.
    pub synthetic_rows_per_member: usize,
    /// Synthetic only: how strongly each member's traffic mix differs (0 = identical mixes).
    pub synthetic_skew: f64,
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec {
            source: DataSource::Mnist,
            partition: Partition::Iid,
            seed: 7,
            test_rows: 1000,
            synthetic_rows_per_member: 2000,
            synthetic_skew: 0.5,
        }
    }
}

/// One member of the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Position in the member list, from 0. Also its BLS share index and its data shard.
    pub index: u32,
    /// ed25519 key that signs the member's messages and records.
    pub public_key: identity::PublicKey,
    /// libp2p peer id, derived from `public_key`.
    pub peer_id: String,
    /// Where the member listens (multiaddrs); peers dial these besides `--peer`.
    pub addrs: Vec<String>,
}

/// The genesis file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// Format version, [`VERSION`].
    pub version: u32,
    /// Hash of the initial global model (from `spec.model.init_seed`).
    pub initial_model: Hash,
    /// The threshold BLS public key set (hex).
    pub bls_public_set: String,
    /// Mode `paillier`: the joint public key (hex of `paillier::PublicKey::to_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paillier_public_key: Option<String>,
    /// Mode `paillier`: the verification keys of the members' key shares, by member index (hex of
    /// `paillier::VerificationKeys::to_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paillier_verification_keys: Option<String>,
    /// The agreed parameters.
    pub spec: Spec,
    /// The members, by index.
    pub members: Vec<Member>,
    /// Members admitted by the audit log after genesis, by index (their indices follow the genesis
    /// members'). Not part of the file, whose bytes and hash stay what the dealer wrote: a node
    /// sets it from the member set it replays from its log ([`crate::membership::Members`]), so
    /// that lookups by index and peer id ([`Genesis::member`], [`Genesis::member_by_peer`]) find
    /// admitted members too. Counts derived from `members` (thresholds, key holders) never
    /// include them: the genesis members remain the signing committee.
    #[serde(skip)]
    pub admitted: Vec<Member>,
}

/// A genesis file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenesisError {
    #[error("not a valid genesis file: {0}")]
    Parse(String),
    #[error("genesis version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    #[error("member {position} has index {index}; indices must be 0, 1, 2, … in order")]
    Index { position: usize, index: u32 },
    #[error("members {0} and {1} have the same public key")]
    DuplicateKey(u32, u32),
    #[error("spec.params.signing_threshold {threshold} must be between 1 and the member count {members}")]
    Threshold { threshold: usize, members: usize },
    #[error("bls_public_set: {0}")]
    Bls(#[from] bls::BlsError),
    #[error("the BLS key set needs {bls} shares but spec.params.signing_threshold is {threshold}")]
    BlsThreshold { bls: usize, threshold: usize },
    #[error("spec.model.layers: {0}")]
    Layout(#[from] LayoutError),
    #[error(
        "initial_model {found} does not match the model from spec.model.init_seed ({expected})"
    )]
    InitialModel { found: Hash, expected: Hash },
    #[error(
        "spec.params.max_message_bytes {limit} cannot hold one update of {needed} bytes; raise it"
    )]
    MessageLimit { limit: usize, needed: usize },
    #[error("{field} must be greater than 0")]
    Zero { field: &'static str },
    #[error("spec.data.partition: dirichlet alpha must be > 0, found {0}")]
    Alpha(f64),
    #[error("spec.secagg: {0}")]
    Secagg(String),
    #[error("spec.paillier: {0}")]
    Paillier(String),
    #[error("spec.dp.{field} {problem}")]
    Dp {
        field: &'static str,
        problem: String,
    },
    #[error("spec.robust.{field} {problem}")]
    Robust {
        field: &'static str,
        problem: String,
    },
}

impl Params {
    /// The threshold actually used for `members` members.
    pub fn threshold_for(&self, members: usize) -> usize {
        if self.signing_threshold == 0 {
            members / 2 + 1
        } else {
            self.signing_threshold
        }
    }
}

impl Spec {
    /// Check what can be checked without the member list.
    pub fn validate(&self) -> Result<Layout, GenesisError> {
        let layout = self.model.layout()?;
        let p = &self.params;
        for (field, v) in [
            ("spec.params.update_timeout_ms", p.update_timeout_ms),
            ("spec.params.failover_timeout_ms", p.failover_timeout_ms),
            ("spec.params.status_interval_ms", p.status_interval_ms),
            ("spec.train.epochs", self.train.epochs as u64),
            ("spec.train.batch_size", self.train.batch_size as u64),
            ("spec.data.test_rows", self.data.test_rows as u64),
        ] {
            if v == 0 {
                return Err(GenesisError::Zero { field });
            }
        }
        // Written as "not greater than zero" so that NaN is refused too.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(self.train.learning_rate > 0.0) {
            return Err(GenesisError::Zero {
                field: "spec.train.learning_rate",
            });
        }
        self.robust.validate()?;
        if let Partition::Dirichlet { alpha } = self.data.partition {
            #[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN is refused too
            if !(alpha > 0.0) {
                return Err(GenesisError::Alpha(alpha));
            }
        }
        self.dp.validate()?;
        // An update message carries 4 bytes per parameter plus a small header.
        let needed = layout.param_count() * 4 + 1024;
        if p.max_message_bytes < needed {
            return Err(GenesisError::MessageLimit {
                limit: p.max_message_bytes,
                needed,
            });
        }
        Ok(layout)
    }
}

impl Genesis {
    /// Parse and validate a genesis file; returns it with its hash.
    pub fn parse(bytes: &[u8]) -> Result<(Genesis, Hash), GenesisError> {
        let text = std::str::from_utf8(bytes).map_err(|e| GenesisError::Parse(e.to_string()))?;
        let genesis: Genesis =
            toml::from_str(text).map_err(|e| GenesisError::Parse(e.to_string()))?;
        genesis.validate()?;
        Ok((genesis, hash_bytes(bytes)))
    }

    /// The file text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("genesis serializes to TOML")
    }

    pub fn validate(&self) -> Result<(), GenesisError> {
        if self.version != VERSION {
            return Err(GenesisError::Version(self.version));
        }
        let layout = self.spec.validate()?;
        for (position, m) in self.members.iter().enumerate() {
            if m.index as usize != position {
                return Err(GenesisError::Index {
                    position,
                    index: m.index,
                });
            }
        }
        for (i, a) in self.members.iter().enumerate() {
            if let Some(b) = self.members[i + 1..]
                .iter()
                .find(|b| b.public_key == a.public_key)
            {
                return Err(GenesisError::DuplicateKey(a.index, b.index));
            }
        }
        let n = self.members.len();
        if self.spec.mode == Mode::Secagg {
            let sa = &self.spec.secagg;
            let (t, holders) = (sa.threshold_for(n), sa.holders(n));
            if n < 3 || t < 2 || t > holders {
                return Err(GenesisError::Secagg(format!(
                    "threshold {t} must be between 2 and the {holders} holders of each member's shares (needs at least 3 members)"
                )));
            }
            let q = crate::secagg::quant::Quantizer {
                clip: sa.clip,
                value_bits: sa.value_bits,
                max_weight: sa.max_weight,
                members: n,
            };
            q.ring_bits()
                .map_err(|e| GenesisError::Secagg(e.to_string()))?;
            if sa.phase_timeout_ms == 0 {
                return Err(GenesisError::Zero {
                    field: "spec.secagg.phase_timeout_ms",
                });
            }
        }
        if self.spec.mode == Mode::Paillier {
            self.paillier_keys()?;
        }
        let t = self.threshold();
        if t == 0 || t > n {
            return Err(GenesisError::Threshold {
                threshold: t,
                members: n,
            });
        }
        let set = self.bls()?;
        if set.threshold() != t {
            return Err(GenesisError::BlsThreshold {
                bls: set.threshold(),
                threshold: t,
            });
        }
        let expected = layout.hash(&layout.init(self.spec.model.init_seed));
        if expected != self.initial_model {
            return Err(GenesisError::InitialModel {
                found: self.initial_model,
                expected,
            });
        }
        Ok(())
    }

    /// Signature shares needed for a record.
    pub fn threshold(&self) -> usize {
        self.spec.params.threshold_for(self.members.len())
    }

    pub fn bls(&self) -> Result<bls::PublicSet, bls::BlsError> {
        bls::PublicSet::from_hex(&self.bls_public_set)
    }

    /// Mode `paillier`: the joint key, checked against `spec.paillier` and the member list.
    pub fn paillier_keys(&self) -> Result<crate::paillier::Keys, GenesisError> {
        let n = self.members.len();
        let spec = &self.spec.paillier;
        spec.validate(n)?;
        let missing = |field| {
            GenesisError::Paillier(format!(
                "mode paillier needs {field}; deal the genesis with `fedmesh genesis --mode paillier`"
            ))
        };
        let pk = self
            .paillier_public_key
            .as_deref()
            .ok_or_else(|| missing("paillier_public_key"))?;
        let vk = self
            .paillier_verification_keys
            .as_deref()
            .ok_or_else(|| missing("paillier_verification_keys"))?;
        let keys = crate::paillier::Keys::from_hex(pk, vk)
            .map_err(|e| GenesisError::Paillier(e.to_string()))?;
        if keys.public.bits() != spec.key_bits {
            return Err(GenesisError::Paillier(format!(
                "the public key has {} bits, spec.paillier.key_bits says {}",
                keys.public.bits(),
                spec.key_bits
            )));
        }
        let v = &keys.verification;
        if v.parties() != n || v.threshold() != spec.threshold_for(n) {
            return Err(GenesisError::Paillier(format!(
                "the verification keys are for {} of {} members; the genesis has {} of {n}",
                v.threshold(),
                v.parties(),
                spec.threshold_for(n)
            )));
        }
        let packer = spec
            .packer(n)
            .map_err(|e| GenesisError::Paillier(e.to_string()))?;
        let needed =
            crate::paillier::update_bytes(&keys.public, &packer, self.layout_unchecked()?) + 1024;
        if self.spec.params.max_message_bytes < needed {
            return Err(GenesisError::MessageLimit {
                limit: self.spec.params.max_message_bytes,
                needed,
            });
        }
        Ok(keys)
    }

    fn layout_unchecked(&self) -> Result<usize, GenesisError> {
        Ok(self.spec.model.layout()?.param_count())
    }

    pub fn layout(&self) -> Layout {
        self.spec.model.layout().expect("validated at parse")
    }

    /// The member with `index`: a genesis member, or one admitted by the log (see
    /// [`Genesis::admitted`]).
    pub fn member(&self, index: u32) -> Option<&Member> {
        self.members
            .get(index as usize)
            .or_else(|| self.admitted.iter().find(|m| m.index == index))
    }

    /// The member with libp2p peer id `peer_id`, genesis or admitted.
    pub fn member_by_peer(&self, peer_id: &str) -> Option<&Member> {
        self.members
            .iter()
            .chain(&self.admitted)
            .find(|m| m.peer_id == peer_id)
    }

    /// Set the admitted members from the log's member set (every member after the genesis ones,
    /// evicted ones included: their messages are refused by the member-set checks, not by lookup).
    pub fn set_admitted(&mut self, members: &crate::membership::Members) {
        self.admitted = members
            .admitted()
            .map(|m| Member {
                index: m.index,
                public_key: m.public_key,
                peer_id: m.peer_id.clone(),
                addrs: m.addrs.clone(),
            })
            .collect();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid genesis with `n` members, and their secrets.
    pub fn sample(n: usize) -> (Genesis, Vec<identity::SecretKey>, Vec<bls::SecretShare>) {
        let mut spec = Spec::default();
        spec.model.layers = vec![4, 3, 2];
        let layout = spec.model.layout().unwrap();
        let keys: Vec<_> = (0..n)
            .map(|i| identity::SecretKey::from_seed([i as u8 + 1; 32]))
            .collect();
        let t = spec.params.threshold_for(n);
        let set = bls::KeySet::generate(t, [42u8; 32]).unwrap();
        let genesis = Genesis {
            version: VERSION,
            initial_model: layout.hash(&layout.init(spec.model.init_seed)),
            bls_public_set: set.public().to_hex(),
            paillier_public_key: None,
            paillier_verification_keys: None,
            spec,
            members: keys
                .iter()
                .enumerate()
                .map(|(i, k)| Member {
                    index: i as u32,
                    public_key: k.public(),
                    peer_id: format!("peer{i}"),
                    addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 7000 + i)],
                })
                .collect(),
            admitted: Vec::new(),
        };
        let shares = (0..n as u32).map(|i| set.share(i)).collect();
        (genesis, keys, shares)
    }

    #[test]
    fn toml_round_trip_and_hash_is_stable() {
        let (g, _, _) = sample(4);
        let text = g.to_toml();
        let (back, h) = Genesis::parse(text.as_bytes()).unwrap();
        assert_eq!(back, g);
        assert_eq!(h, hash_bytes(text.as_bytes()));
        assert_eq!(back.threshold(), 3);
    }

    #[test]
    fn robust_section_defaults_to_fedavg_without_votes_and_parses() {
        let (g, _, _) = sample(4);
        assert_eq!(g.spec.robust.rule(), crate::robust::Rule::Mean);
        assert!(!g.spec.robust.votes);
        // A genesis written before the section existed still parses, with the defaults.
        let text = g.to_toml();
        let start = text.find("[spec.robust]").expect("section written");
        let rest = &text[start + 1..];
        let end = rest
            .find("\n[")
            .map(|e| start + 1 + e + 1)
            .unwrap_or(text.len());
        let old = format!("{}{}", &text[..start], &text[end..]);
        let (back, _) = Genesis::parse(old.as_bytes()).unwrap();
        assert_eq!(back.spec.robust, RobustSpec::default());
        let spec: Spec = toml::from_str(
            "[robust]\nrule = 'multi_krum'\nattackers = 2\nmulti_krum = 5\nvotes = true\n",
        )
        .unwrap();
        assert_eq!(
            spec.robust.rule(),
            crate::robust::Rule::MultiKrum {
                f: Some(2),
                m: Some(5)
            }
        );
        let err = toml::from_str::<Spec>("[robust]\nrule = 'bogus'\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn reference_rows_are_optional_bounded_and_need_groups() {
        let (g, _, _) = sample(4);
        // Off by default and not written, so older genesis files keep their bytes and hash.
        assert_eq!(g.spec.robust.reference_rows, 0);
        assert!(!g.to_toml().contains("reference_rows"));
        let spec: Spec =
            toml::from_str("[robust]\ngroup_size = 5\nreference_rows = 500\n").unwrap();
        assert_eq!(spec.robust.reference_rows, 500);
        spec.robust.validate().unwrap();
        let mut with = g.clone();
        with.spec.robust = spec.robust.clone();
        let (back, _) = Genesis::parse(with.to_toml().as_bytes()).unwrap();
        assert_eq!(back.spec.robust.reference_rows, 500);
        let too_many = RobustSpec {
            reference_rows: MAX_REFERENCE_ROWS + 1,
            ..spec.robust.clone()
        };
        let err = too_many.validate().unwrap_err().to_string();
        assert!(
            err.contains("reference_rows") && err.contains("at most"),
            "{err}"
        );
        let without_groups = RobustSpec {
            group_size: 0,
            ..spec.robust
        };
        let err = without_groups.validate().unwrap_err().to_string();
        assert!(err.contains("group_size"), "{err}");
    }

    #[test]
    fn dp_section_defaults_to_none_and_is_validated() {
        // Without DP the file is what it was before [spec.dp] existed.
        let (g, _, _) = sample(4);
        assert!(!g.to_toml().contains("[spec.dp]"));
        let mut dp = g.clone();
        dp.spec.dp = DpSpec {
            level: DpLevel::Record,
            noise_multiplier: 1.2,
            sample_rate: 0.02,
            sampling: Sampling::Fixed,
            ..DpSpec::default()
        };
        let text = dp.to_toml();
        assert!(text.contains("[spec.dp]") && text.contains("level = \"record\""));
        let (back, _) = Genesis::parse(text.as_bytes()).unwrap();
        assert_eq!(back.spec.dp, dp.spec.dp);
        assert_eq!(back.spec.dp.steps_per_round(2), 100);
        type Edit = fn(&mut DpSpec);
        let cases: [(&str, Edit); 5] = [
            ("noise_multiplier", |d| d.noise_multiplier = 0.0),
            ("clip", |d| d.clip = f64::NAN),
            ("delta", |d| d.delta = 1.0),
            ("sample_rate", |d| d.sample_rate = 1.5),
            ("mechanism", |d| d.mechanism = DpMechanism::Laplace),
        ];
        for (field, edit) in cases {
            let mut bad = dp.clone();
            edit(&mut bad.spec.dp);
            let err = bad.validate().unwrap_err();
            assert!(
                err.to_string().contains(&format!("spec.dp.{field}")),
                "{err}"
            );
        }
        // The noisy gradients may drive Adam as well as SGD.
        let mut adam = dp.clone();
        adam.spec.train.optimizer = Optimizer::Adam;
        adam.validate().unwrap();
        // Laplace is fine at member level, whatever the sample rate.
        let mut lap = dp;
        lap.spec.dp.level = DpLevel::Member;
        lap.spec.dp.mechanism = DpMechanism::Laplace;
        lap.spec.dp.sample_rate = 7.0;
        lap.validate().unwrap();
        let err = Genesis::parse(b"version = 1\n[spec.dp]\nlevel = \"everything\"\n").unwrap_err();
        assert!(err.to_string().contains("everything"), "{err}");
    }

    #[test]
    fn rejects_inconsistent_files() {
        let (g, _, _) = sample(3);
        let mut bad = g.clone();
        bad.members[1].index = 5;
        assert!(matches!(
            bad.validate(),
            Err(GenesisError::Index {
                position: 1,
                index: 5
            })
        ));
        let mut bad = g.clone();
        bad.initial_model = Hash::ZERO;
        assert!(matches!(
            bad.validate(),
            Err(GenesisError::InitialModel { .. })
        ));
        let mut bad = g.clone();
        bad.spec.params.signing_threshold = 9;
        assert!(matches!(
            bad.validate(),
            Err(GenesisError::Threshold { .. })
        ));
        let mut bad = g.clone();
        bad.spec.params.max_message_bytes = 10;
        assert!(matches!(
            bad.validate(),
            Err(GenesisError::MessageLimit { .. })
        ));
        let mut bad = g.clone();
        bad.spec.robust.quorum = 1.5;
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("spec.robust.quorum"), "{err}");
        let err = Genesis::parse(b"version = 1\nbogus = 3\n").unwrap_err();
        assert!(
            err.to_string().contains("bogus") || err.to_string().contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn paillier_keys_travel_in_the_genesis_and_are_checked() {
        use rand::SeedableRng;
        let (mut g, _, _) = sample(4);
        g.spec.mode = Mode::Paillier;
        g.spec.paillier.key_bits = 256;
        assert!(
            matches!(g.validate(), Err(GenesisError::Paillier(m)) if m.contains("--mode paillier"))
        );
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let t = g.spec.paillier.threshold_for(4);
        let d = crate::crypto::paillier::deal(256, t, 4, &mut rng).unwrap();
        g.paillier_public_key = Some(hex::encode(d.public.to_bytes()));
        g.paillier_verification_keys = Some(hex::encode(d.verification.to_bytes(&d.public)));
        let text = g.to_toml();
        let (back, _) = Genesis::parse(text.as_bytes()).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.paillier_keys().unwrap().public, d.public);

        let mut bad = g.clone();
        bad.spec.paillier.threshold = 4;
        assert!(
            matches!(bad.validate(), Err(GenesisError::Paillier(m)) if m.contains("verification keys"))
        );
        let mut bad = g.clone();
        bad.spec.paillier.key_bits = 512;
        assert!(matches!(bad.validate(), Err(GenesisError::Paillier(_))));
        let mut bad = g.clone();
        bad.spec.paillier.value_bits = 40;
        assert!(matches!(bad.validate(), Err(GenesisError::Paillier(_))));
        let mut bad = g;
        bad.paillier_public_key = Some("00".into());
        assert!(bad.validate().is_err());
    }
}
