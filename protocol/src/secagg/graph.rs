//! SecAgg+ neighbourhoods (Bell, Bonawitz, Gascón, Lepoint & Raykova, "Secure Single-Server
//! Aggregation with (Poly)Logarithmic Overhead", CCS 2020): each member masks with, and shares
//! its secrets among, only its `k` neighbours in a sparse graph instead of all `n − 1` other
//! members, so a member's work and traffic grow with `k = O(log n)` rather than with `n`.
//!
//! The graph is a Harary graph `H_{k,n}` — the members on a ring, each linked to the `k/2`
//! nearest on either side — laid on a random permutation of the members, as Bell et al. propose
//! and Google's federated-compute SecAgg server implements. A Harary graph is `k`-connected:
//! removing fewer than `k` members never splits it. The permutation, drawn from a seed that every
//! member knows (the chain head) but nobody picks, keeps colluders from choosing to sit around
//! the member they want to unmask.
//!
//! ```
//! use fedmesh_protocol::secagg::graph::{self, Graph};
//! let members: Vec<u32> = (0..100).collect();
//! let k = graph::suggested_degree(members.len());
//! let g = Graph::new(&members, k, [7u8; 32]);
//! assert_eq!(g.degree(), 16);
//! assert!(!g.is_complete());
//! let n5 = g.neighbours(5);
//! assert_eq!(n5.len(), 16);
//! assert!(n5.iter().all(|&v| g.neighbours(v).contains(&5)));
//! // Few members, or k = 0: everyone is everyone's neighbour, as in the original SecAgg.
//! assert!(Graph::new(&[1, 2, 3], 0, [0u8; 32]).is_complete());
//! ```

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The blake3 context that turns the caller's seed into the permutation's ChaCha20 key: the chain
/// head seeds other draws too, and they must not share a stream with this one. Changing it is a
/// protocol version change.
const CONTEXT: &str = "fedmesh secagg v1 neighbour graph";

/// Who is linked to whom in one round. Symmetric (`v` is `u`'s neighbour iff `u` is `v`'s) and
/// without self-loops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// The members, sorted and without duplicates.
    members: Vec<u32>,
    /// `neighbours[i]` are the neighbours of `members[i]`, sorted.
    neighbours: Vec<Vec<u32>>,
    degree: usize,
    complete: bool,
}

impl Graph {
    /// The neighbour sets of `members` for degree `k`, from a 32-byte `seed` that every member
    /// knows (the chain head), so that all derive the same graph without talking.
    ///
    /// `members` is taken as a set: order and duplicates do not change the graph. `k = 0`, or `k`
    /// at least `n − 1` after rounding up to even, gives the complete graph, SecAgg without the
    /// plus; it stores `n·(n − 1)` indices. Otherwise `k` is rounded up to even (a Harary graph
    /// of odd degree needs an odd-one-out member) and every member gets exactly `k` neighbours.
    ///
    /// The permutation is a Fisher–Yates shuffle of the sorted members driven by ChaCha20 keyed
    /// with `blake3::derive_key(CONTEXT, seed)`, with the exact rejection sampling written out
    /// here rather than `rand`'s `shuffle`, whose output may change between `rand` releases:
    /// members running different builds must still agree on the graph.
    pub fn new(members: &[u32], k: usize, seed: [u8; 32]) -> Graph {
        let mut members = members.to_vec();
        members.sort_unstable();
        members.dedup();
        let n = members.len();
        let k = k.saturating_add(k % 2);
        if k == 0 || k >= n.saturating_sub(1) {
            let neighbours = (0..n)
                .map(|i| [&members[..i], &members[i + 1..]].concat())
                .collect();
            return Graph {
                members,
                neighbours,
                degree: n.saturating_sub(1),
                complete: true,
            };
        }

        let ring = permutation(&members, seed);
        let half = k / 2;
        let mut neighbours = vec![Vec::new(); n];
        for (p, u) in ring.iter().enumerate() {
            // 2·half = k < n − 1, so the 2·half ring positions around p are distinct and not p.
            let mut set: Vec<u32> = (1..=half)
                .flat_map(|j| [ring[(p + j) % n], ring[(p + n - j) % n]])
                .collect();
            set.sort_unstable();
            let i = members.binary_search(u).unwrap_or_default();
            neighbours[i] = set;
        }
        Graph {
            members,
            neighbours,
            degree: k,
            complete: false,
        }
    }

    /// `u`'s neighbours, sorted; empty if `u` is not a member.
    pub fn neighbours(&self, u: u32) -> &[u32] {
        match self.members.binary_search(&u) {
            Ok(i) => &self.neighbours[i],
            Err(_) => &[],
        }
    }

    /// Whether every member is linked to every other: `k` was 0 or not below `n − 1`.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Every member's number of neighbours (`n − 1` when complete).
    pub fn degree(&self) -> usize {
        self.degree
    }

    /// The members, sorted and without duplicates.
    pub fn members(&self) -> &[u32] {
        &self.members
    }
}

/// `sorted` in the seeded random order: Fisher–Yates from the top, each index drawn uniformly by
/// rejection from ChaCha20's `next_u64`, whose stream `rand_chacha` keeps stable.
fn permutation(sorted: &[u32], seed: [u8; 32]) -> Vec<u32> {
    let mut rng = ChaCha20Rng::from_seed(blake3::derive_key(CONTEXT, &seed));
    let mut ring = sorted.to_vec();
    for i in (1..ring.len()).rev() {
        let j = uniform(&mut rng, i as u64 + 1) as usize;
        ring.swap(i, j);
    }
    ring
}

/// Uniform in `[0, bound)`, `bound ≥ 1`: draws in the top partial block of `bound` values are
/// redrawn, so that every residue is equally likely.
fn uniform(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = u64::MAX - u64::MAX % bound;
    loop {
        let r = rng.next_u64();
        if r < zone {
            return r % bound;
        }
    }
}

/// A default degree for `n` members: the smallest even `k ≥ 2·⌈log2 n⌉ + 1`, that is
/// `2·⌈log2 n⌉ + 2`, capped at `n − 1` (the complete graph). 16 for 100 members, 22 for 1000.
///
/// Bell et al. show that `k = O(log n)` neighbours suffice; the constant depends on the threat
/// model. This one is sized for connectivity with a margin: the Harary graph stays connected
/// after any `k − 1` members drop out, and on a random ring it takes `k/2` consecutive lost
/// members in two places to split it. It is *not* a security level against a set fraction of
/// colluding members: that bounds how many of a member's `k` neighbours may be corrupt below the
/// Shamir threshold, and needs larger `k`. For example (2^-40 security, 2^-20 failure, 10 %
/// dropouts, by the method of federated-compute's `graph_parameter_finder`), with 5 % colluders
/// 100 members need k = 16 and 1000 need k = 36; with a third colluding, 42 and 102. Pass such a
/// `k` to [`Graph::new`] when the threat model says so.
pub fn suggested_degree(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    // ⌈log2 n⌉ for n ≥ 2.
    let log = usize::BITS - (n - 1).leading_zeros();
    (2 * log as usize + 2).min(n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn check_shape(g: &Graph) {
        for &u in g.members() {
            let nu = g.neighbours(u);
            assert!(!nu.contains(&u), "{u} is its own neighbour");
            assert!(nu.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
            assert_eq!(nu.len(), g.degree(), "degree of {u}");
            for &v in nu {
                assert!(g.neighbours(v).contains(&u), "{u}–{v} one way only");
            }
        }
    }

    fn connected(g: &Graph) -> bool {
        let Some(&start) = g.members().first() else {
            return true;
        };
        let mut seen = vec![start];
        let mut queue = VecDeque::from([start]);
        while let Some(u) = queue.pop_front() {
            for &v in g.neighbours(u) {
                if !seen.contains(&v) {
                    seen.push(v);
                    queue.push_back(v);
                }
            }
        }
        seen.len() == g.members().len()
    }

    #[test]
    fn harary_graph_is_symmetric_regular_and_loop_free() {
        let members: Vec<u32> = (0..50).map(|i| 3 * i + 1).collect();
        for k in [2, 4, 6, 10, 20, 46] {
            let g = Graph::new(&members, k, [1u8; 32]);
            assert!(!g.is_complete());
            assert_eq!(g.degree(), k);
            check_shape(&g);
        }
        // Odd k rounds up; n − 2 is still a Harary graph (complete minus a perfect matching);
        // at n − 1 or above the graph is complete.
        assert_eq!(Graph::new(&members, 5, [1u8; 32]).degree(), 6);
        let g = Graph::new(&members, 47, [1u8; 32]);
        assert!(!g.is_complete());
        assert_eq!(g.degree(), 48);
        check_shape(&g);
        for k in [49, 50, usize::MAX] {
            let g = Graph::new(&members, k, [1u8; 32]);
            assert!(g.is_complete(), "k = {k}");
            assert_eq!(g.degree(), 49);
            check_shape(&g);
        }
    }

    #[test]
    fn k_zero_and_tiny_rounds_are_complete() {
        let g = Graph::new(&[4, 9, 2], 0, [0u8; 32]);
        assert!(g.is_complete());
        assert_eq!(g.neighbours(2), &[4, 9]);
        assert_eq!(g.neighbours(4), &[2, 9]);
        assert_eq!(g.neighbours(9), &[2, 4]);
        assert_eq!(g.neighbours(5), &[] as &[u32], "not a member");
        let g = Graph::new(&(0..30).collect::<Vec<_>>(), 0, [0u8; 32]);
        assert!(g.is_complete());
        check_shape(&g);
        for members in [&[][..], &[7][..], &[7, 8][..]] {
            let g = Graph::new(members, 2, [0u8; 32]);
            assert!(g.is_complete());
            check_shape(&g);
        }
    }

    #[test]
    fn same_seed_same_graph_other_seed_other_graph() {
        let members: Vec<u32> = (0..200).collect();
        let a = Graph::new(&members, 8, [3u8; 32]);
        assert_eq!(a, Graph::new(&members, 8, [3u8; 32]));
        let mut shuffled = members.clone();
        shuffled.reverse();
        shuffled.extend_from_slice(&[5, 5, 6]);
        assert_eq!(a, Graph::new(&shuffled, 8, [3u8; 32]), "members are a set");
        let mut seed = [3u8; 32];
        seed[31] ^= 1;
        let b = Graph::new(&members, 8, seed);
        let differ = members
            .iter()
            .filter(|&&u| a.neighbours(u) != b.neighbours(u))
            .count();
        assert!(differ > 150, "only {differ} of 200 neighbourhoods changed");
    }

    /// Pins the permutation: members on different builds (or `rand` versions) must derive the
    /// same graph from the same chain head. A change here is a protocol version change.
    #[test]
    fn graph_is_a_fixed_function_of_the_seed() {
        let ring = permutation(&(0..10).collect::<Vec<_>>(), [0u8; 32]);
        assert_eq!(ring, PINNED_RING);
        let g = Graph::new(&(0..10).collect::<Vec<_>>(), 2, [0u8; 32]);
        let p = PINNED_RING.iter().position(|&u| u == 0).unwrap();
        let mut want = vec![PINNED_RING[(p + 1) % 10], PINNED_RING[(p + 9) % 10]];
        want.sort_unstable();
        assert_eq!(g.neighbours(0), want);
    }

    const PINNED_RING: [u32; 10] = [0, 5, 7, 9, 3, 8, 4, 1, 6, 2];

    #[test]
    fn suggested_degree_grows_with_log_n_and_connects_100_members() {
        let cases = [
            (0, 0),
            (1, 0),
            (2, 1),
            (5, 4),
            (10, 9),
            (16, 10),
            (17, 12),
            (100, 16),
            (1000, 22),
            (1 << 20, 42),
        ];
        for (n, k) in cases {
            assert_eq!(suggested_degree(n), k, "n = {n}");
        }
        let members: Vec<u32> = (0..100).collect();
        for s in 0..20u8 {
            let g = Graph::new(&members, suggested_degree(100), [s; 32]);
            assert_eq!(g.degree(), 16);
            check_shape(&g);
            assert!(connected(&g), "seed {s}");
        }
    }

    /// The property the degree is for: a Harary graph of degree k survives any k − 1 dropouts.
    #[test]
    fn survives_fewer_than_k_dropouts() {
        let members: Vec<u32> = (0..60).collect();
        let g = Graph::new(&members, 6, [9u8; 32]);
        // The worst case on the ring: a whole side of someone's neighbourhood plus more, in a row.
        let ring = permutation(&members, [9u8; 32]);
        for start in 0..60 {
            let dropped: Vec<u32> = (0..5).map(|j| ring[(start + j) % 60]).collect();
            let alive: Vec<u32> = members
                .iter()
                .copied()
                .filter(|u| !dropped.contains(u))
                .collect();
            let mut seen = vec![alive[0]];
            let mut queue = VecDeque::from([alive[0]]);
            while let Some(u) = queue.pop_front() {
                for &v in g.neighbours(u) {
                    if !dropped.contains(&v) && !seen.contains(&v) {
                        seen.push(v);
                        queue.push_back(v);
                    }
                }
            }
            assert_eq!(seen.len(), alive.len(), "split after dropping {dropped:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_any_members_and_k_give_a_symmetric_regular_graph(
            members in prop::collection::vec(any::<u32>(), 0..120),
            k in 0usize..130,
            seed in any::<[u8; 32]>(),
        ) {
            let g = Graph::new(&members, k, seed);
            let mut set = members.clone();
            set.sort_unstable();
            set.dedup();
            prop_assert_eq!(g.members(), &set[..]);
            let n = set.len();
            let even = k + k % 2;
            prop_assert_eq!(g.is_complete(), k == 0 || even + 1 >= n);
            prop_assert_eq!(g.degree(), if g.is_complete() { n.saturating_sub(1) } else { even });
            check_shape(&g);
            prop_assert!(connected(&g));
        }
    }
}
