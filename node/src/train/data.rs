//! MNIST from a CSV file, and its split into a shared test set and per-member shards.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use fedmesh_protocol::genesis::{DataSpec, Partition};
use rand::seq::SliceRandom;

use super::{dirichlet, rng, streams, Dataset, MemberData};

/// Pixels per MNIST image (28 × 28).
const MNIST_FEATURES: usize = 784;
/// Digits 0-9.
const MNIST_CLASSES: usize = 10;
/// Columns per CSV row: the pixels, then the label.
const COLUMNS: usize = MNIST_FEATURES + 1;
/// Longest line we accept. A real row is under 4 KiB; the bound keeps a file without newlines (or a
/// decompression bomb) from growing one line without limit.
const MAX_LINE: usize = 64 << 10;
/// Dirichlet draws tried before giving up on a partition that gives every member a row.
const DIRICHLET_ATTEMPTS: u64 = 64;

/// Why a member's data could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened.
    #[error(
        "cannot open the data file {}: {source}; check the data path (the MNIST file ships with \
         the project as data/mnist_5k.csv.gz)",
        path.display()
    )]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading failed part way, typically a truncated or corrupt gzip stream.
    #[error(
        "{}, line {line}: cannot read the file ({source}); it is truncated or corrupt, restore it \
         (data/SHA256SUMS has the checksum of the shipped file)",
        path.display()
    )]
    Read {
        path: PathBuf,
        /// The 1-based line being read when the error occurred.
        line: usize,
        #[source]
        source: io::Error,
    },
    /// A line is not a valid row.
    #[error(
        "{}, line {line}: {problem}; each row must be 784 pixel values 0-255 and a label 0-9, \
         comma-separated",
        path.display()
    )]
    Parse {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        problem: String,
    },
    /// Not enough rows for the test split plus one training row per member.
    #[error(
        "{} has {rows} rows, but spec.data.test_rows is {test_rows} and {members} member(s) need \
         at least one training row each; lower spec.data.test_rows or use a larger file",
        path.display()
    )]
    TooFewRows {
        path: PathBuf,
        rows: usize,
        test_rows: usize,
        members: usize,
    },
    /// Not enough rows for the test split, the public reference rows and one training row per
    /// member.
    #[error(
        "{} has {rows} rows, but spec.data.test_rows is {test_rows}, spec.robust.reference_rows          is {reference_rows} and {members} member(s) need at least one training row each; lower          spec.robust.reference_rows or use a larger file",
        path.display()
    )]
    TooFewRowsForReference {
        path: PathBuf,
        rows: usize,
        test_rows: usize,
        reference_rows: usize,
        members: usize,
    },
    /// The member index is not below the member count.
    #[error("member index {member} is out of range for {members} member(s)")]
    Member { member: u32, members: u32 },
    /// A Dirichlet partition kept leaving a member without rows.
    #[error(
        "dirichlet partition with alpha {alpha} left member {member} without training rows in \
         {attempts} draws; raise spec.data.partition.alpha, use fewer members or lower \
         spec.data.test_rows"
    )]
    EmptyShard {
        alpha: f64,
        member: u32,
        attempts: u64,
    },
    /// A `spec.data` field has a value this loader cannot use.
    #[error("{field} {problem}")]
    Spec {
        field: &'static str,
        problem: String,
    },
}

/// Read a whole MNIST CSV: gzip if it starts with the gzip magic bytes, plain text otherwise.
/// Blank lines are skipped; any other line must be a valid row.
pub(super) fn read_csv(path: &Path) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|source| DataError::Open {
        path: path.into(),
        source,
    })?;
    let mut raw = BufReader::new(file);
    let gzip = raw
        .fill_buf()
        .map_err(|source| DataError::Read {
            path: path.into(),
            line: 1,
            source,
        })?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    parse_rows(BufReader::with_capacity(1 << 16, reader), path)
}

fn parse_rows<R: BufRead>(mut reader: R, path: &Path) -> Result<Dataset, DataError> {
    let mut data = Dataset {
        features: MNIST_FEATURES,
        classes: MNIST_CLASSES,
        x: Vec::new(),
        y: Vec::new(),
    };
    let mut buf = Vec::with_capacity(4096);
    let mut line = 0;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| DataError::Read {
                path: path.into(),
                line: line + 1,
                source,
            })?;
        if n == 0 {
            break;
        }
        line += 1;
        let parse_err = |problem: String| DataError::Parse {
            path: path.into(),
            line,
            problem,
        };
        if buf.len() > MAX_LINE {
            return Err(parse_err(format!(
                "the line is longer than {MAX_LINE} bytes"
            )));
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        parse_row(text, &mut data).map_err(parse_err)?;
    }
    Ok(data)
}

/// Append one row to `data`, or say what is wrong with it (leaving `data` unchanged).
fn parse_row(text: &[u8], data: &mut Dataset) -> Result<(), String> {
    let found = text.iter().filter(|b| **b == b',').count() + 1;
    if found != COLUMNS {
        return Err(format!(
            "expected {COLUMNS} comma-separated values (784 pixels and a label), found {found}"
        ));
    }
    let start = data.x.len();
    let mut fields = text.split(|b| *b == b',');
    for column in 1..=MNIST_FEATURES {
        let field = fields.next().unwrap_or_default();
        match pixel(field) {
            Some(v) => data.x.push(v / 255.0),
            None => {
                data.x.truncate(start);
                return Err(format!(
                    "column {column}: {} is not a pixel value 0-255",
                    quote(field)
                ));
            }
        }
    }
    let field = fields.next().unwrap_or_default();
    let label = std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match label {
        Some(l) if l < MNIST_CLASSES as u64 => {
            data.y.push(l as u32);
            Ok(())
        }
        Some(l) => {
            data.x.truncate(start);
            Err(format!("label {l} (column {COLUMNS}) is not a digit 0-9"))
        }
        None => {
            data.x.truncate(start);
            Err(format!(
                "label {} (column {COLUMNS}) is not an integer",
                quote(field)
            ))
        }
    }
}

/// A pixel value 0-255: integers on a fast path, decimals such as `12.0` accepted too.
fn pixel(field: &[u8]) -> Option<f32> {
    let field = field.trim_ascii();
    if !field.is_empty() && field.len() <= 3 && field.iter().all(u8::is_ascii_digit) {
        let v = field
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        return (v <= 255).then_some(v as f32);
    }
    let v: f32 = std::str::from_utf8(field).ok()?.parse().ok()?;
    (v.is_finite() && (0.0..=255.0).contains(&v)).then_some(v)
}

/// A field for an error message, shortened so that a garbage line cannot flood the log.
fn quote(field: &[u8]) -> String {
    let s = String::from_utf8_lossy(field);
    if s.chars().count() > 24 {
        format!("{:?}…", s.chars().take(24).collect::<String>())
    } else {
        format!("{s:?}")
    }
}

/// Split a whole file into the shared test split and the shard of `member`.
///
/// The test split is the last rows **of each class**, taken in turn from class 0 up until
/// `spec.test_rows` rows are held out (the last 100 images of every digit for the shipped file and
/// 1000 test rows). It does not depend on the seed, so accuracies are comparable across networks.
/// Taking simply the last rows of the file would not do: `data/mnist_5k.csv.gz` is sorted by label,
/// so its last 1000 rows are all 8s and 9s, digits the members would then never train on.
///
/// The public reference rows (`reference_rows`, genesis `spec.robust.reference_rows`; 0 = none)
/// are held out the same way, right after the test split: the next rows of each class from the
/// end, round-robin over the classes. They leave the training pool *before* the partition, so no
/// member trains on them and none is in the test split; every member derives the same rows.
pub(super) fn split(
    all: &Dataset,
    spec: &DataSpec,
    path: &Path,
    member: usize,
    members: usize,
    reference_rows: usize,
) -> Result<MemberData, DataError> {
    let rows = all.len();
    if rows < spec.test_rows.saturating_add(members) {
        return Err(DataError::TooFewRows {
            path: path.into(),
            rows,
            test_rows: spec.test_rows,
            members,
        });
    }
    if rows
        < spec
            .test_rows
            .saturating_add(reference_rows)
            .saturating_add(members)
    {
        return Err(DataError::TooFewRowsForReference {
            path: path.into(),
            rows,
            test_rows: spec.test_rows,
            reference_rows,
            members,
        });
    }
    let test = held_out(&all.y, all.classes, spec.test_rows);
    let mut is_test = vec![false; rows];
    test.iter().for_each(|i| is_test[*i] = true);
    // The same round-robin continued: its first `test_rows` picks are the test split.
    let reference: Vec<usize> = held_out(&all.y, all.classes, spec.test_rows + reference_rows)
        .into_iter()
        .filter(|i| !is_test[*i])
        .collect();
    let mut held = is_test;
    reference.iter().for_each(|i| held[*i] = true);
    let train: Vec<usize> = (0..rows).filter(|i| !held[*i]).collect();
    let shards = shards(&train, &all.y, all.classes, spec, members)?;
    Ok(MemberData {
        train: all.select(&shards[member]),
        test: all.select(&test),
        reference: all.select(&reference),
    })
}

/// The rows of the test split, in file order: the last rows of each class, round-robin over the
/// classes until `n` rows (or every row) are taken.
fn held_out(labels: &[u32], classes: usize, n: usize) -> Vec<usize> {
    let mut by_class = vec![Vec::new(); classes];
    for (i, l) in labels.iter().enumerate() {
        by_class[*l as usize].push(i);
    }
    let mut out = Vec::with_capacity(n.min(labels.len()));
    while out.len() < n.min(labels.len()) {
        for rows in by_class.iter_mut() {
            if out.len() == n {
                break;
            }
            if let Some(i) = rows.pop() {
                out.push(i);
            }
        }
    }
    out.sort_unstable();
    out
}

/// Every member's training rows (indices into the file, taken from `train`), each in shuffled
/// order. Depends only on `train`, the labels, `spec.seed`, `spec.partition` and `members`, so
/// every member computes the same partition; the shards are disjoint and together cover `train`.
///
/// The Dirichlet draws use floating point `ln`/`exp`; members on different CPU architectures could
/// in principle round a cut point differently, which would move a single row between two shards.
fn shards(
    train: &[usize],
    labels: &[u32],
    classes: usize,
    spec: &DataSpec,
    members: usize,
) -> Result<Vec<Vec<usize>>, DataError> {
    let n = train.len();
    let mut order = train.to_vec();
    order.shuffle(&mut rng(spec.seed, streams::SHUFFLE));
    match spec.partition {
        Partition::Iid => Ok((0..members)
            .map(|m| order[m * n / members..(m + 1) * n / members].to_vec())
            .collect()),
        Partition::Dirichlet { alpha } => {
            if !(alpha > 0.0 && alpha.is_finite()) {
                return Err(DataError::Spec {
                    field: "spec.data.partition.alpha",
                    problem: format!("must be a positive number, found {alpha}"),
                });
            }
            // Positions (into `order`) of each class's rows, in shuffled order.
            let mut by_class = vec![Vec::new(); classes];
            for (pos, &row) in order.iter().enumerate() {
                by_class[labels[row] as usize].push(pos);
            }
            let mut empty = 0;
            for attempt in 0..DIRICHLET_ATTEMPTS {
                let mut r = rng(spec.seed, streams::DIRICHLET + attempt);
                let mut shards = vec![Vec::new(); members];
                for rows in &by_class {
                    let p = dirichlet(&mut r, alpha, members);
                    let (mut acc, mut start) = (0.0, 0);
                    for (m, shard) in shards.iter_mut().enumerate() {
                        acc += p[m];
                        let end = if m + 1 == members {
                            rows.len()
                        } else {
                            ((acc * rows.len() as f64).round() as usize).clamp(start, rows.len())
                        };
                        shard.extend_from_slice(&rows[start..end]);
                        start = end;
                    }
                }
                match shards.iter().position(Vec::is_empty) {
                    Some(m) => empty = m,
                    None => {
                        return Ok(shards
                            .into_iter()
                            .map(|mut s| {
                                s.sort_unstable();
                                s.into_iter().map(|pos| order[pos]).collect()
                            })
                            .collect())
                    }
                }
            }
            Err(DataError::EmptyShard {
                alpha,
                member: empty as u32,
                attempts: DIRICHLET_ATTEMPTS,
            })
        }
    }
}

/// The shipped MNIST file, parsed once per test binary.
#[cfg(test)]
pub(super) mod fixture {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::Dataset;

    /// `data/mnist_5k.csv.gz`, found from the crate manifest (the normal build) or from this
    /// source file's location (a scratch crate that compiles this module from elsewhere).
    pub fn mnist_path() -> PathBuf {
        let from_manifest = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/mnist_5k.csv.gz"
        ));
        if from_manifest.exists() {
            return from_manifest;
        }
        // file!() is node/src/train/data.rs (relative to the workspace) or an absolute path.
        let here = PathBuf::from(file!());
        if let Some(root) = here.ancestors().nth(4) {
            let p = root.join("data/mnist_5k.csv.gz");
            if p.exists() {
                return p;
            }
        }
        panic!(
            "data/mnist_5k.csv.gz not found (tried {})",
            from_manifest.display()
        );
    }

    pub fn mnist() -> &'static Dataset {
        static ALL: OnceLock<Dataset> = OnceLock::new();
        ALL.get_or_init(|| super::read_csv(&mnist_path()).expect("the shipped MNIST file parses"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Write;

    use super::fixture::{mnist, mnist_path};
    use super::*;

    fn spec(partition: Partition) -> DataSpec {
        DataSpec {
            partition,
            ..DataSpec::default()
        }
    }

    #[test]
    fn shipped_file_parses() {
        let all = mnist();
        assert_eq!(all.len(), 5000);
        assert_eq!(all.x.len(), 5000 * 784);
        assert!(all.x.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(all.x.contains(&1.0));
        let mut counts = [0usize; 10];
        all.y.iter().for_each(|l| counts[*l as usize] += 1);
        assert!(counts.iter().all(|c| *c > 350), "{counts:?}");
    }

    /// The file's rows outside the default 1000-row test split.
    fn train_rows(all: &Dataset) -> Vec<usize> {
        let test: HashSet<usize> = held_out(&all.y, 10, 1000).into_iter().collect();
        (0..all.len()).filter(|i| !test.contains(i)).collect()
    }

    #[test]
    fn test_split_is_the_last_rows_of_each_class() {
        let all = mnist();
        let test = held_out(&all.y, 10, 1000);
        assert_eq!(test.len(), 1000);
        // The file is sorted by label, 500 rows per digit: the last 100 of each digit.
        let expected: Vec<usize> = (0..10).flat_map(|c| c * 500 + 400..(c + 1) * 500).collect();
        assert_eq!(test, expected);
        // Uneven counts go round-robin from class 0; asking for everything gives everything.
        let labels = [0, 0, 0, 1, 1, 2];
        assert_eq!(held_out(&labels, 3, 4), vec![1, 2, 4, 5]);
        assert_eq!(held_out(&labels, 3, 10), (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn iid_shards_are_disjoint_equal_and_cover() {
        let all = mnist();
        let s = spec(Partition::Iid);
        let train = train_rows(all);
        assert_eq!(train.len(), 4000);
        let shards = shards(&train, &all.y, 10, &s, 3).unwrap();
        let sizes: Vec<_> = shards.iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 4000);
        assert!(sizes.iter().all(|n| *n == 1333 || *n == 1334), "{sizes:?}");
        let seen: HashSet<usize> = shards.iter().flatten().copied().collect();
        assert_eq!(seen, train.iter().copied().collect::<HashSet<_>>());
        // Shuffled, so every IID shard holds every digit in similar numbers.
        for shard in &shards {
            assert!(max_class_share(all, shard) < 0.15);
        }

        let path = mnist_path();
        let mut total = 0;
        for (m, shard) in shards.iter().enumerate() {
            let d = split(all, &s, &path, m, 3, 0).unwrap();
            assert_eq!(d.train, all.select(shard));
            assert_eq!(d.test, all.select(&held_out(&all.y, 10, 1000)));
            total += d.train.len();
        }
        assert_eq!(total, 4000);
        // `load` reads the file itself and gives the same shard.
        let loaded = super::super::load(&s, &path, 1, 3, 0).unwrap();
        assert_eq!(loaded.train, all.select(&shards[1]));
        assert_eq!(loaded.test.len(), 1000);
    }

    fn max_class_share(all: &Dataset, shard: &[usize]) -> f64 {
        let mut counts = [0usize; 10];
        shard.iter().for_each(|i| counts[all.y[*i] as usize] += 1);
        *counts.iter().max().unwrap() as f64 / shard.len() as f64
    }

    #[test]
    fn dirichlet_shards_cover_and_small_alpha_skews() {
        let all = mnist();
        let (train, labels) = (&train_rows(all), &all.y);
        let skewed = shards(
            train,
            labels,
            10,
            &spec(Partition::Dirichlet { alpha: 0.1 }),
            5,
        )
        .unwrap();
        let even = shards(
            train,
            labels,
            10,
            &spec(Partition::Dirichlet { alpha: 1000.0 }),
            5,
        )
        .unwrap();
        for s in [&skewed, &even] {
            assert_eq!(s.iter().map(Vec::len).sum::<usize>(), 4000);
            assert!(s.iter().all(|shard| !shard.is_empty()));
            let seen: HashSet<usize> = s.iter().flatten().copied().collect();
            assert_eq!(seen, train.iter().copied().collect::<HashSet<_>>());
        }
        let mean = |s: &Vec<Vec<usize>>| {
            s.iter()
                .map(|shard| max_class_share(all, shard))
                .sum::<f64>()
                / s.len() as f64
        };
        let (skew, flat) = (mean(&skewed), mean(&even));
        assert!(skew > 0.4, "alpha 0.1: mean dominant-class share {skew}");
        assert!(flat < 0.16, "alpha 1000: mean dominant-class share {flat}");
        // Same seed, same partition; another seed, another one.
        let again = shards(
            train,
            labels,
            10,
            &spec(Partition::Dirichlet { alpha: 0.1 }),
            5,
        )
        .unwrap();
        assert_eq!(skewed, again);
        let other = DataSpec {
            seed: 8,
            ..spec(Partition::Dirichlet { alpha: 0.1 })
        };
        assert_ne!(skewed, shards(train, labels, 10, &other, 5).unwrap());
        // Through `split`: member shards of the real file add up to the 4000 training rows.
        let d = spec(Partition::Dirichlet { alpha: 0.1 });
        let sizes: Vec<usize> = (0..5)
            .map(|m| split(all, &d, &mnist_path(), m, 5, 0).unwrap().train.len())
            .collect();
        assert_eq!(sizes, skewed.iter().map(Vec::len).collect::<Vec<_>>());
        eprintln!("dirichlet alpha 0.1 shard sizes {sizes:?}, mean dominant-class share {skew:.3}");
    }

    #[test]
    fn dirichlet_gives_up_with_a_clear_error() {
        let labels: Vec<u32> = (0..20).map(|i| i % 2).collect();
        let train: Vec<usize> = (0..20).collect();
        let s = spec(Partition::Dirichlet { alpha: 1e-6 });
        let err = shards(&train, &labels, 2, &s, 10).unwrap_err();
        assert!(
            matches!(err, DataError::EmptyShard { attempts: 64, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("raise spec.data.partition.alpha"),
            "{err}"
        );
        let err = shards(
            &train,
            &labels,
            2,
            &spec(Partition::Dirichlet { alpha: -1.0 }),
            2,
        )
        .unwrap_err();
        assert!(err.to_string().contains("alpha"), "{err}");
        // One member takes everything, whatever alpha.
        let one = shards(&train, &labels, 2, &s, 1).unwrap();
        assert_eq!(one[0].len(), 20);
    }

    fn good_row(label: u32) -> String {
        let mut cols: Vec<String> = (0..784).map(|i| (i % 256).to_string()).collect();
        cols.push(label.to_string());
        cols.join(",")
    }

    fn write_gz(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        std::fs::write(&path, enc.finish().unwrap()).unwrap();
        path
    }

    fn parse_error(text: &str) -> (usize, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_gz(&dir, "bad.csv.gz", text);
        match read_csv(&path) {
            Err(e @ DataError::Parse { line, .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("bad.csv.gz"), "{msg}");
                (line, msg)
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_rows_name_the_line() {
        let ok = format!("{}\n{}\n", good_row(3), good_row(9));
        let (line, msg) = parse_error(&format!("{ok}1,2,3\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("line 3") && msg.contains("found 3"), "{msg}");

        let (line, msg) = parse_error(&format!("{ok}{}\n", good_row(12)));
        assert_eq!(line, 3);
        assert!(msg.contains("label 12"), "{msg}");

        let bad = good_row(1).replacen("0,1,2", "0,abc,2", 1);
        let (line, msg) = parse_error(&format!("{bad}\n{ok}"));
        assert_eq!(line, 1);
        assert!(msg.contains("column 2") && msg.contains("abc"), "{msg}");

        let bad = good_row(1).replacen("0,1,2", "0,300,2", 1);
        let (line, msg) = parse_error(&format!("{ok}\n{bad}\n"));
        assert_eq!(line, 4, "the blank line still counts");
        assert!(msg.contains("column 2"), "{msg}");

        let (line, msg) = parse_error(&format!("{ok}{}\n", good_row(1).replacen(",7,", ",,", 1)));
        assert_eq!(line, 3);
        assert!(msg.contains("column 8"), "{msg}");

        let (line, msg) = parse_error(&format!("{},x\n", good_row(1).rsplit_once(',').unwrap().0));
        assert_eq!(line, 1);
        assert!(msg.contains("label \"x\""), "{msg}");

        let (line, _) = parse_error(&"9".repeat(MAX_LINE + 10));
        assert_eq!(line, 1);
    }

    #[test]
    fn good_small_files_parse_gzip_or_plain() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\r\n{}\n\n",
            good_row(3),
            good_row(9).replacen("0,1,", "0.0,1.5,", 1)
        );
        let gz = read_csv(&write_gz(&dir, "ok.csv.gz", &text)).unwrap();
        let plain_path = dir.path().join("ok.csv");
        std::fs::write(&plain_path, &text).unwrap();
        let plain = read_csv(&plain_path).unwrap();
        assert_eq!(gz, plain);
        assert_eq!(gz.y, vec![3, 9]);
        assert_eq!(gz.x[1], 1.0 / 255.0);
        assert_eq!(gz.x[784 + 1], 1.5 / 255.0);
        assert_eq!(gz.x[255], 1.0);
    }

    #[test]
    fn truncated_gzip_and_missing_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..200).map(|i| good_row(i % 10) + "\n").collect();
        let path = write_gz(&dir, "cut.csv.gz", &text);
        let bytes = std::fs::read(&path).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 4, 5] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let err = read_csv(&path).unwrap_err();
            let msg = err.to_string();
            match &err {
                DataError::Read { line, .. } => assert!(*line >= 1 && *line <= 201, "{msg}"),
                DataError::Parse { line, .. } => assert!(*line >= 1 && *line <= 200, "{msg}"),
                other => panic!("unexpected {other:?}"),
            }
            assert!(msg.contains("cut.csv.gz, line "), "{msg}");
        }
        let err = read_csv(&dir.path().join("nope.csv.gz")).unwrap_err();
        assert!(matches!(err, DataError::Open { .. }));
        assert!(err.to_string().contains("nope.csv.gz"), "{err}");
    }

    #[test]
    fn too_few_rows_for_test_split_and_members() {
        let all = mnist();
        let s = DataSpec {
            test_rows: 4998,
            ..spec(Partition::Iid)
        };
        let err = split(all, &s, &mnist_path(), 0, 3, 0).unwrap_err();
        assert!(matches!(
            err,
            DataError::TooFewRows {
                rows: 5000,
                test_rows: 4998,
                members: 3,
                ..
            }
        ));
        assert!(split(all, &s, &mnist_path(), 1, 2, 0).unwrap().train.len() == 1);
    }

    #[test]
    fn reference_rows_are_public_balanced_and_in_no_shard_nor_the_test_split() {
        let all = mnist();
        let s = spec(Partition::Iid);
        let members = 4;
        let loaded: Vec<MemberData> = (0..members)
            .map(|m| split(all, &s, &mnist_path(), m, members, 500).unwrap())
            .collect();
        // The same rows for every member: the 50 rows before each digit's test rows.
        let reference = &loaded[0].reference;
        assert!(loaded.iter().all(|d| d.reference == *reference));
        let rows: Vec<usize> = (0..10).flat_map(|c| c * 500 + 350..c * 500 + 400).collect();
        assert_eq!(*reference, all.select(&rows));
        // The test split is unchanged, and the shards share the rest of the file.
        let without = split(all, &s, &mnist_path(), 0, members, 0).unwrap();
        assert_eq!(loaded[0].test, without.test);
        let train: usize = loaded.iter().map(|d| d.train.len()).sum();
        assert_eq!(train, 5000 - 1000 - 500);
        // A row of the reference set in no shard: the pixel rows do not occur in any shard
        // (the file has no duplicate images among these rows).
        let key = |d: &Dataset, i: usize| d.row(i).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let held: HashSet<Vec<u32>> = (0..reference.len()).map(|i| key(reference, i)).collect();
        for d in &loaded {
            assert!((0..d.train.len()).all(|i| !held.contains(&key(&d.train, i))));
        }
        // Too many for the file: a clear error that names the setting.
        let err = split(all, &s, &mnist_path(), 0, members, 4000).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TooFewRowsForReference {
                    reference_rows: 4000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("spec.robust.reference_rows"),
            "{err}"
        );
    }
}
