//! Groups for robust-and-secure rounds: every round the active members are split into random
//! groups of at least `g`, each group's updates are aggregated securely, and only the group sums
//! are revealed. The robust rule and the anomaly scores then work on group means.
//!
//! The draw is a function of the chain head and the round alone, so every member derives the same
//! groups without a message, and nobody — the coordinator included — can choose whom an attacker
//! shares a group with. The shuffle is written out here (Fisher–Yates over ChaCha20 with rejection
//! sampling) rather than borrowed from `rand`, whose algorithms may change between versions: a
//! node on another version must still draw the same groups.
//!
//! ```
//! use fedmesh_crypto::Hash;
//! use fedmesh_protocol::robust::groups;
//! let members: Vec<u32> = (0..12).collect();
//! let drawn = groups::draw(&Hash([7; 32]), 3, &members, 5).unwrap();
//! assert_eq!(drawn.len(), 2); // 12 members, groups of at least 5: two groups, of 6 and 6
//! assert!(drawn.iter().all(|group| group.len() >= 5));
//! ```

use std::collections::BTreeSet;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::crypto::{hash::Hasher, Hash};

/// Domain of the seed the groups are drawn from.
const DOMAIN: &str = "fedmesh/robust/groups/v1";

/// Why no groups can be formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("group size must be at least 2, got {0}")]
    SizeTooSmall(usize),
    #[error("{members} members cannot form a group of at least {size}")]
    TooFewMembers { members: usize, size: usize },
}

/// Splits `members` into ⌊n / g⌋ groups of at least `g` (sizes differ by at most one), drawn
/// uniformly at random from a seed derived from `head` and `round`. Groups are sorted, and so is
/// the list of groups (by first member). Duplicate members count once.
pub fn draw(
    head: &Hash,
    round: u64,
    members: &[u32],
    g: usize,
) -> Result<Vec<Vec<u32>>, GroupError> {
    if g < 2 {
        return Err(GroupError::SizeTooSmall(g));
    }
    let mut order: Vec<u32> = members
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let n = order.len();
    if n < g {
        return Err(GroupError::TooFewMembers {
            members: n,
            size: g,
        });
    }
    let seed = Hasher::new(DOMAIN)
        .chain(head.as_bytes())
        .chain(&round.to_le_bytes())
        .finalize();
    let mut rng = ChaCha20Rng::from_seed(seed.0);
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let count = n / g;
    let (base, extra) = (n / count, n % count);
    let mut groups = Vec::with_capacity(count);
    let mut rest = order.as_slice();
    for k in 0..count {
        let (group, tail) = rest.split_at(base + usize::from(k < extra));
        let mut group = group.to_vec();
        group.sort_unstable();
        groups.push(group);
        rest = tail;
    }
    groups.sort_unstable();
    Ok(groups)
}

/// The groups after some members dropped out: each group keeps only its `live` members, and while
/// a group has fewer than `g` it is merged into the smallest other group (ties: the one listed
/// first). If all live members together are fewer than `g`, nothing may be revealed and the result
/// is empty. Every group returned has at least `g` members.
pub fn settle(groups: &[Vec<u32>], live: &BTreeSet<u32>, g: usize) -> Vec<Vec<u32>> {
    let mut groups: Vec<Vec<u32>> = groups
        .iter()
        .map(|group| {
            group
                .iter()
                .copied()
                .filter(|m| live.contains(m))
                .collect::<Vec<u32>>()
        })
        .filter(|group| !group.is_empty())
        .collect();
    while let Some(small) = (0..groups.len())
        .filter(|&i| groups[i].len() < g)
        .min_by_key(|&i| (groups[i].len(), i))
    {
        let Some(into) = (0..groups.len())
            .filter(|&i| i != small)
            .min_by_key(|&i| (groups[i].len(), i))
        else {
            return Vec::new();
        };
        let moved = std::mem::take(&mut groups[small]);
        groups[into].extend(moved);
        groups[into].sort_unstable();
        groups.remove(small);
    }
    groups.sort_unstable();
    groups
}

/// A uniform value in `0..bound` (bound ≥ 1), by rejection sampling so that no value is favoured.
fn below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(b: u8) -> Hash {
        Hash([b; 32])
    }

    #[test]
    fn every_member_lands_in_exactly_one_group_of_at_least_g() {
        for n in 5..60u32 {
            for g in [2usize, 3, 5, 7] {
                let members: Vec<u32> = (0..n).map(|i| i * 3 + 1).collect();
                let Ok(groups) = draw(&head(1), u64::from(n), &members, g) else {
                    assert!((n as usize) < g);
                    continue;
                };
                assert_eq!(groups.len(), n as usize / g);
                let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
                assert!(sizes.iter().all(|&s| s >= g), "n={n} g={g}: {sizes:?}");
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
                let mut all: Vec<u32> = groups.concat();
                all.sort_unstable();
                assert_eq!(all, members);
            }
        }
    }

    #[test]
    fn same_head_and_round_give_the_same_groups_in_any_input_order() {
        let members: Vec<u32> = (0..20).collect();
        let mut shuffled = members.clone();
        shuffled.reverse();
        shuffled.push(3); // a duplicate counts once
        let a = draw(&head(9), 4, &members, 5).unwrap();
        assert_eq!(a, draw(&head(9), 4, &shuffled, 5).unwrap());
        assert_ne!(
            a,
            draw(&head(9), 5, &members, 5).unwrap(),
            "a new round redraws"
        );
        assert_ne!(
            a,
            draw(&head(8), 4, &members, 5).unwrap(),
            "a new head redraws"
        );
    }

    #[test]
    fn draws_are_pinned_so_that_every_version_agrees() {
        // Changing the draw splits a network of mixed versions: this test pins it.
        let members: Vec<u32> = (0..10).collect();
        let drawn = draw(&head(0), 1, &members, 5).unwrap();
        assert_eq!(drawn, vec![vec![0, 2, 4, 5, 7], vec![1, 3, 6, 8, 9]]);
    }

    #[test]
    fn pairs_meet_about_as_often_as_chance_says() {
        // 20 members in groups of 5: two given members share a group with probability 4/19.
        let members: Vec<u32> = (0..20).collect();
        let rounds = 4000u64;
        let mut together = 0u32;
        for round in 0..rounds {
            let groups = draw(&head(3), round, &members, 5).unwrap();
            if groups.iter().any(|g| g.contains(&0) && g.contains(&1)) {
                together += 1;
            }
        }
        let rate = f64::from(together) / rounds as f64;
        assert!((rate - 4.0 / 19.0).abs() < 0.03, "rate {rate}");
    }

    #[test]
    fn refuses_impossible_sizes() {
        assert_eq!(
            draw(&head(0), 0, &[1, 2, 3], 1),
            Err(GroupError::SizeTooSmall(1))
        );
        assert_eq!(
            draw(&head(0), 0, &[1, 2, 3], 5),
            Err(GroupError::TooFewMembers {
                members: 3,
                size: 5
            })
        );
    }

    #[test]
    fn settling_merges_small_groups_and_never_returns_one_below_g() {
        let groups = vec![
            vec![0, 1, 2, 3, 4],
            vec![5, 6, 7, 8, 9],
            vec![10, 11, 12, 13, 14],
        ];
        let all: BTreeSet<u32> = (0..15).collect();
        assert_eq!(settle(&groups, &all, 5), groups);

        // Member 6 drops: its group (4 left) merges into the first smallest other group.
        let live: BTreeSet<u32> = all.iter().copied().filter(|&m| m != 6).collect();
        assert_eq!(
            settle(&groups, &live, 5),
            vec![vec![0, 1, 2, 3, 4, 5, 7, 8, 9], vec![10, 11, 12, 13, 14]]
        );

        // Drops everywhere: whatever is returned has at least g members each.
        let live: BTreeSet<u32> = [0, 1, 5, 6, 10, 11, 12].into_iter().collect();
        let settled = settle(&groups, &live, 5);
        assert_eq!(settled, vec![vec![0, 1, 5, 6, 10, 11, 12]]);

        // Fewer than g live members in all: nothing is revealed.
        let live: BTreeSet<u32> = [0, 5, 10, 11].into_iter().collect();
        assert!(settle(&groups, &live, 5).is_empty());
    }
}
