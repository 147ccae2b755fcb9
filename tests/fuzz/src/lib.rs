//! The bodies of fedmesh's fuzz targets: one function per decoder that reads bytes from a peer or
//! from disk. Each takes the fuzzer's bytes, runs them through the real decoder and the checks
//! that follow it in the node, and asserts the properties that must hold for any input (never a
//! panic; what decodes re-encodes to the same thing; what we signed ourselves verifies).
//!
//! The cargo-fuzz binaries in `fuzz_targets/` call these functions, and so does the stable test
//! `tests/fuzz_corpus.rs` of the workspace, which runs every committed corpus file through them:
//! CI has no nightly toolchain, so that test is how the corpora guard against regressions.
//!
//! Many targets are structure-aware: the first byte picks a mode, and in some modes the rest is
//! decoded as a message *body* that is then signed with the claimed sender's real key, so that the
//! fuzzer reaches the checks behind the signature — what a hostile member can really send.
//!
//! This file is compiled twice: as the library of the out-of-workspace fuzz crate
//! (`fedmesh_fuzz`), and as a module of the workspace's `fuzz_corpus` test. It may use only the
//! fedmesh crates, `rand` and `rand_chacha`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use fedmesh_crypto::paillier::{self as cpaillier, pack::Packer};
use fedmesh_crypto::secagg::{aead, agree, kdf, shamir};
use fedmesh_crypto::{bls, identity, Hash};
use fedmesh_protocol::audit::{self, Entry, RoundRecord};
use fedmesh_protocol::bulk as pbulk;
use fedmesh_protocol::codec;
use fedmesh_protocol::dp::Ledger;
use fedmesh_protocol::genesis::{self, Genesis, Member, Spec};
use fedmesh_protocol::model::Layout;
use fedmesh_protocol::paillier as ppaillier;
use fedmesh_protocol::robust::score::History;
use fedmesh_protocol::secagg::{self, coordinator, graph, member};
use fedmesh_protocol::votes::{self, EvictionRecord, SignedVote, Tally, Vote};
use fedmesh_protocol::wire::{self, Envelope, Payload, Request, Response};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// The body of a fuzz target.
pub type Body = fn(&[u8]);

/// Every fuzz target: its name (the cargo-fuzz binary and corpus directory) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("wire", wire),
    ("signed_secagg", signed_secagg),
    ("signed_paillier", signed_paillier),
    ("secagg_crypto", secagg_crypto),
    ("paillier_bytes", paillier_bytes),
    ("vote", vote),
    ("log_entry", log_entry),
    ("checkpoint", checkpoint),
    ("genesis_toml", genesis_toml),
    ("state", state),
    ("bulk", bulk),
];

/// Members of the fixture network.
const N: u32 = 4;

/// A small network: a genesis (mode plain, a tiny model), its members' ed25519 keys and BLS
/// shares, parsed back from its own TOML as a node would.
pub struct Net {
    pub genesis: Genesis,
    pub genesis_hash: Hash,
    pub genesis_text: String,
    pub keys: Vec<identity::SecretKey>,
    pub bls_shares: Vec<bls::SecretShare>,
    pub bls: bls::PublicSet,
    pub layout: Layout,
}

/// The fixture network (built once per process).
pub fn net() -> &'static Net {
    static NET: OnceLock<Net> = OnceLock::new();
    NET.get_or_init(|| {
        let mut spec = Spec::default();
        spec.model.layers = vec![4, 3, 2];
        let layout = spec.model.layout().expect("fixture layout");
        let keys: Vec<_> = (0..N)
            .map(|i| identity::SecretKey::from_seed([i as u8 + 1; 32]))
            .collect();
        let t = spec.params.threshold_for(N as usize);
        let set = bls::KeySet::generate(t, [42u8; 32]).expect("fixture BLS key set");
        let g = Genesis {
            version: genesis::VERSION,
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
        let genesis_text = g.to_toml();
        let (genesis, genesis_hash) =
            Genesis::parse(genesis_text.as_bytes()).expect("fixture genesis parses");
        Net {
            bls: genesis.bls().expect("fixture BLS set"),
            bls_shares: (0..N).map(|i| set.share(i)).collect(),
            genesis,
            genesis_hash,
            genesis_text,
            keys,
            layout,
        }
    })
}

/// Split off the mode byte.
fn mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}

/// `decode(encode(x))` must give back `x`'s encoding (compared as bytes: floats may be NaN).
fn assert_reencodes<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) {
    let bytes = codec::encode(value);
    let back: T = codec::decode(&bytes, codec::HARD_LIMIT).expect("an encoding decodes again");
    assert_eq!(codec::encode(&back), bytes, "decode(encode(x)) changed x");
}

// ---------------------------------------------------------------------------------------------
// Wire messages

/// Gossiped envelopes, direct requests and responses (`protocol::wire`, `codec::decode` with the
/// node's limits), and envelopes whose payload the fuzzer chose, signed by a real member.
pub fn wire(data: &[u8]) {
    let net = net();
    let limit = net.genesis.spec.params.max_message_bytes;
    let Some((m, rest)) = mode(data) else { return };
    match m % 4 {
        0 => {
            let publisher = (m & 0x80 != 0).then_some("peer1");
            if let Ok(env) = Envelope::open(rest, limit, &net.genesis, net.genesis_hash, publisher)
            {
                // Only a member's own signature opens; what it carries must re-encode.
                assert!(net.genesis.member(env.sender).is_some());
                assert_reencodes(&env);
                if let Payload::Proposal(p) = &env.payload {
                    let _ = p.entry().record();
                }
            }
        }
        1 => {
            if let Ok(req) = codec::decode::<Request>(rest, wire::MAX_REQUEST_BYTES) {
                assert_reencodes(&req);
            }
        }
        2 => {
            if let Ok(resp) = codec::decode::<Response>(rest, limit) {
                assert_reencodes(&resp);
                match resp {
                    Response::Entries(entries) => {
                        let mut prev = Entry::genesis(net.genesis_text.as_bytes());
                        for e in entries {
                            let _ = e.verify(&net.genesis, net.genesis_hash, &net.bls);
                            let _ = audit::verify_link(&prev, &e);
                            prev = e;
                        }
                    }
                    Response::Update(Some(b)) => {
                        let _ = Envelope::open(&b, limit, &net.genesis, net.genesis_hash, None);
                    }
                    Response::Checkpoint(Some(b)) => {
                        let _ = fedmesh_storage::decode_checkpoint(&net.layout, &b);
                    }
                    _ => {}
                }
            }
        }
        _ => {
            // A member signs whatever payload the fuzzer made: it must open, unchanged.
            let Ok(payload) = codec::decode::<Payload>(rest, limit) else {
                return;
            };
            let sender = u32::from(m >> 2) % N;
            let env = Envelope::seal(
                net.genesis_hash,
                sender,
                7,
                payload,
                &net.keys[sender as usize],
            );
            let bytes = env.encode();
            if bytes.len() <= limit {
                let back = Envelope::open(&bytes, limit, &net.genesis, net.genesis_hash, None)
                    .expect("a member's sealed envelope opens");
                assert_eq!(back.encode(), bytes);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Secure aggregation

const SECAGG_LEN: usize = 8;
const SECAGG_BITS: u32 = 24;

fn secagg_params() -> &'static Arc<secagg::RoundParams> {
    static P: OnceLock<Arc<secagg::RoundParams>> = OnceLock::new();
    P.get_or_init(|| {
        let net = net();
        let ids: Vec<u32> = (0..N).collect();
        Arc::new(secagg::RoundParams {
            genesis: net.genesis_hash,
            round: 9,
            members: (0..N).map(|i| (i, net.keys[i as usize].public())).collect(),
            threshold: 3,
            bits: SECAGG_BITS,
            len: SECAGG_LEN,
            graph: graph::Graph::new(&ids, 0, [7u8; 32]),
        })
    })
}

/// Sign a fuzzer-made body as its claimed sender when that is a member (so the checks behind the
/// signature are reached), else with member 0's key (so the signature check itself is hit).
fn sign_as<T: fedmesh_protocol::signed::Body>(body: T) -> fedmesh_protocol::signed::Signed<T> {
    let net = net();
    let who = body.sender();
    let key = &net.keys[if who < N { who as usize } else { 0 }];
    fedmesh_protocol::signed::Signed::sign(net.genesis_hash, body, key)
}

/// Where the fuzzer's message enters a secure-aggregation session.
#[derive(Clone, Copy, PartialEq)]
enum SecaggFault {
    /// Member 3's message of phase 0..=4 is the fuzzer's body (signed with member 3's key).
    Member(u8),
    /// The coordinator's relay of phase 0..=3 to member 0 is the fuzzer's message.
    Relay(u8),
}

/// One secure-aggregation session (`protocol::secagg`, 4 members, threshold 3) in which member 3
/// or the coordinator is hostile at one phase; or (mode ≥ 9) raw bytes decoded as any gossiped
/// secagg message and checked as the node checks them. Nothing panics, and when the session
/// still finishes with member 3 out of it, the sum is the honest members' sum.
pub fn signed_secagg(data: &[u8]) {
    let Some((m, rest)) = mode(data) else { return };
    let fault = match m % 10 {
        p @ 0..=4 => SecaggFault::Member(p),
        p @ 5..=8 => SecaggFault::Relay(p - 5),
        _ => return secagg_raw(rest),
    };
    let _ = secagg_session(fault, rest);
}

fn secagg_raw(bytes: &[u8]) {
    let net = net();
    let params = secagg_params();
    let limit = net.genesis.spec.params.max_message_bytes;
    let Ok(msg) = codec::decode::<wire::SecaggMsg>(bytes, limit) else {
        return;
    };
    assert_reencodes(&msg);
    match &msg {
        wire::SecaggMsg::Advertise(s) => drop(s.verify(params)),
        wire::SecaggMsg::Shares(s) => drop(s.verify(params)),
        wire::SecaggMsg::Masked(s) => drop(s.verify(params)),
        wire::SecaggMsg::Consistency(s) => drop(s.verify(params)),
        wire::SecaggMsg::Unmask(s) => drop(s.verify(params)),
        wire::SecaggMsg::KeyList(l) => {
            for s in &l.keys {
                let _ = s.verify(params);
            }
        }
        wire::SecaggMsg::ConsistencyList(l) => {
            for s in &l.signatures {
                let _ = s.verify(params);
            }
        }
        wire::SecaggMsg::Relay(_) | wire::SecaggMsg::Survivors(_) => {}
    }
    // Any secagg message also replays through a fresh member: relays are its inputs.
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (state, _) = member::Start::new(params.clone(), 0)
        .expect("fixture params")
        .advertise(&net.keys[0], &mut rng);
    if let wire::SecaggMsg::KeyList(l) = msg {
        let _ = state.share_keys(&l, &net.keys[0], &mut rng);
    }
}

fn secagg_session(fault: SecaggFault, body: &[u8]) -> Result<(), secagg::SecaggError> {
    let net = net();
    let params = secagg_params();
    let keys = &net.keys;
    let limit = net.genesis.spec.params.max_message_bytes;
    let hostile = 3u32;
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let inputs: BTreeMap<u32, Vec<u64>> = (0..N)
        .map(|m| {
            (
                m,
                (0..SECAGG_LEN as u64)
                    .map(|i| i * 1000 + u64::from(m))
                    .collect(),
            )
        })
        .collect();
    // Bodies the fuzzer supplies replace member 3's message; if they do not decode, member 3
    // sends nothing at that phase (a stall).
    let fuzzed = |phase: u8| fault == SecaggFault::Member(phase);
    let relay = |phase: u8| fault == SecaggFault::Relay(phase);

    let mut coord = coordinator::CollectKeys::new(params.clone())?;
    let mut stage0 = BTreeMap::new();
    for m in 0..N {
        let (next, msg) =
            member::Start::new(params.clone(), m)?.advertise(&keys[m as usize], &mut rng);
        if m == hostile && fuzzed(0) {
            if let Ok(b) = codec::decode::<secagg::Advertise>(body, limit) {
                let _ = coord.add(sign_as(b));
            }
        } else {
            let _ = coord.add(msg);
        }
        stage0.insert(m, next);
    }
    let (mut coord, mut list) = coord.finish()?;
    if relay(0) {
        list = codec::decode(body, limit)
            .map_err(|e| secagg::SecaggError::Coordinator(e.to_string()))?;
    }
    let mut stage1 = BTreeMap::new();
    for (m, state) in stage0 {
        let Ok((next, msg)) = state.share_keys(&list, &keys[m as usize], &mut rng) else {
            continue;
        };
        if m == hostile && fuzzed(1) {
            if let Ok(b) = codec::decode::<secagg::Shares>(body, limit) {
                let _ = coord.add(sign_as(b));
            }
        } else {
            let _ = coord.add(msg);
        }
        stage1.insert(m, next);
    }
    let (mut coord, mut relayed) = coord.finish()?;
    if relay(1) {
        let r: secagg::SharesFor = codec::decode(body, limit)
            .map_err(|e| secagg::SecaggError::Coordinator(e.to_string()))?;
        relayed.insert(0, r);
    }
    let mut stage2 = BTreeMap::new();
    for (m, state) in stage1 {
        let Some(r) = relayed.get(&m) else { continue };
        let Ok((next, msg)) = state.masked_input(r, &inputs[&m], &keys[m as usize]) else {
            continue;
        };
        if m == hostile && fuzzed(2) {
            if let Ok(b) = codec::decode::<secagg::MaskedInput>(body, limit) {
                let _ = coord.add(sign_as(b));
            }
        } else {
            let _ = coord.add(msg);
        }
        stage2.insert(m, next);
    }
    let (mut coord, mut survivors) = coord.finish()?;
    if relay(2) {
        survivors = codec::decode(body, limit)
            .map_err(|e| secagg::SecaggError::Coordinator(e.to_string()))?;
    }
    let mut stage3 = BTreeMap::new();
    for (m, state) in stage2 {
        let Ok((next, msg)) = state.consistency(&survivors, &keys[m as usize]) else {
            continue;
        };
        if m == hostile && fuzzed(3) {
            if let Ok(b) = codec::decode::<secagg::Consistency>(body, limit) {
                let _ = coord.add(sign_as(b));
            }
        } else {
            let _ = coord.add(msg);
        }
        stage3.insert(m, next);
    }
    let (mut coord, mut clist) = coord.finish()?;
    if relay(3) {
        clist = codec::decode(body, limit)
            .map_err(|e| secagg::SecaggError::Coordinator(e.to_string()))?;
    }
    for (m, state) in stage3 {
        let Ok(msg) = state.unmask(&clist, &keys[m as usize]) else {
            continue;
        };
        if m == hostile && fuzzed(4) {
            if let Ok(b) = codec::decode::<secagg::Unmask>(body, limit) {
                let _ = coord.add(sign_as(b));
            }
        } else {
            let _ = coord.add(msg);
        }
    }
    let outcome = coord.finish()?;
    // A hostile member 3 at phases 0..=1 can only get itself left out; if it is out, the sum
    // is exactly the honest members'. (Later, its masked input may be garbage by design.)
    if matches!(fault, SecaggFault::Member(0 | 1)) && !outcome.survivors.contains(&hostile) {
        let low = (1u64 << SECAGG_BITS) - 1;
        let mut expected = vec![0u64; SECAGG_LEN];
        for m in &outcome.survivors {
            for (a, v) in expected.iter_mut().zip(&inputs[m]) {
                *a = a.wrapping_add(*v) & low;
            }
        }
        assert_eq!(
            outcome.sum, expected,
            "survivors' sum with member 3 left out"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Threshold Paillier

const PAILLIER_LEN: usize = 6;

/// A 3-member threshold-Paillier round (threshold 2) on a small key, with every member's honest
/// update and the round's honest sum precomputed.
pub struct PaillierNet {
    pub params: ppaillier::RoundParams,
    pub keys: ppaillier::Keys,
    pub shares: Vec<cpaillier::KeyShare>,
    pub packer: Packer,
    pub updates: Vec<ppaillier::Signed<ppaillier::EncryptedUpdate>>,
    /// `encode_ciphertexts` of member 0's update, and bytes of a real partial decryption of it.
    pub ciphertexts: Vec<u8>,
    pub partial: Vec<u8>,
}

/// The paillier fixture (built once per process: dealing the 256-bit key takes a moment).
pub fn paillier_net() -> &'static PaillierNet {
    static P: OnceLock<PaillierNet> = OnceLock::new();
    P.get_or_init(|| {
        let net = net();
        let mut rng = ChaCha20Rng::seed_from_u64(77);
        let dealing = cpaillier::deal(256, 2, 3, &mut rng).expect("fixture Paillier key");
        let params = ppaillier::RoundParams {
            genesis: net.genesis_hash,
            round: 4,
            members: (0..3).map(|i| (i, net.keys[i as usize].public())).collect(),
            len: PAILLIER_LEN,
            min_contributors: 2,
        };
        let keys = ppaillier::Keys {
            public: dealing.public,
            verification: dealing.verification,
        };
        let packer = Packer::new(&keys.public, 16, 0.5, 3).expect("fixture packer");
        let pool = cpaillier::Pool::new();
        pool.fill(
            &keys.public,
            3 * packer.plaintexts_for(PAILLIER_LEN),
            &mut rng,
        );
        let updates: Vec<_> = (0..3u32)
            .map(|m| {
                let values: Vec<f32> = (0..PAILLIER_LEN)
                    .map(|i| (i as f32 - 2.5) * 0.05 * (m + 1) as f32)
                    .collect();
                ppaillier::encrypt_update(
                    &params,
                    &keys,
                    &packer,
                    &pool,
                    m,
                    &net.keys[m as usize],
                    &values,
                    &mut rng,
                )
                .expect("fixture update")
                .0
            })
            .collect();
        let ciphertexts = updates[0].body.ciphertexts.clone();
        let cts = cpaillier::decode_ciphertexts(&keys.public, &ciphertexts, 64)
            .expect("fixture ciphertexts");
        let partial = dealing.shares[1]
            .decrypt_share(&keys.public, &keys.verification, &cts, b"fuzz", &mut rng)
            .expect("fixture partial")
            .to_bytes(&keys.public);
        PaillierNet {
            params,
            keys,
            shares: dealing.shares,
            packer,
            updates,
            ciphertexts,
            partial,
        }
    })
}

/// Signed threshold-Paillier messages (`protocol::signed` with the paillier domain): raw bytes
/// decoded and verified (mode 0), or a hostile member 2 whose update (1), partial decryption (2)
/// or coordinator's close (3) is the fuzzer's, inside an otherwise honest round. When the round
/// finishes without member 2's update, it decrypts to the honest members' sum.
pub fn signed_paillier(data: &[u8]) {
    let p = paillier_net();
    let net = net();
    let limit = net.genesis.spec.params.max_message_bytes;
    let Some((m, rest)) = mode(data) else { return };
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    match m % 4 {
        0 => {
            if let Ok(msg) = codec::decode::<wire::PaillierMsg>(rest, limit) {
                assert_reencodes(&msg);
                let mut c = ppaillier::Collect::new(&p.params, &p.keys, &p.packer);
                match &msg {
                    wire::PaillierMsg::Update(u) => drop(c.add_update(u)),
                    wire::PaillierMsg::Partial(s) => {
                        for u in &p.updates {
                            c.add_update(u).expect("honest update");
                        }
                        let mut d = c.close().expect("honest close");
                        let _ = d.add_partial(s);
                    }
                    wire::PaillierMsg::Close(close) => drop(c.close_for(&close.contributors)),
                    wire::PaillierMsg::GroupPartial { partial, .. } => {
                        for u in &p.updates {
                            c.add_update(u).expect("honest update");
                        }
                        let all = c.contributors();
                        if let Ok(mut d) = c.close_group(&all, 2) {
                            let _ = d.add_partial(partial);
                        }
                    }
                }
            }
        }
        1 => {
            let Ok(body) = codec::decode::<ppaillier::EncryptedUpdate>(rest, limit) else {
                return;
            };
            let mut c = ppaillier::Collect::new(&p.params, &p.keys, &p.packer);
            c.add_update(&p.updates[0]).expect("honest update");
            c.add_update(&p.updates[1]).expect("honest update");
            let hostile_in = c.add_update(&sign_as(body)).is_ok();
            let Ok(mut d) = c.close() else { return };
            for i in 0..2u32 {
                let part = d
                    .partial(&p.shares[i as usize], i, &net.keys[i as usize], &mut rng)
                    .expect("honest partial");
                d.add_partial(&part).expect("honest partial verifies");
            }
            let outcome = match d.finish() {
                Ok(o) => o,
                // Found by this target: an update whose ciphertexts are well-formed but encrypt
                // out-of-range values makes the sum undecodable (`PackError::Overflow`). Without
                // range proofs nobody can tell whose update it was; the round must form its sum
                // without it (see RELIABILITY-fuzz.md). Honest updates alone never overflow.
                Err(ppaillier::PaillierError::Pack(_)) if hostile_in => return,
                Err(e) => panic!("an honest round does not decrypt: {e}"),
            };
            if !hostile_in {
                assert_eq!(outcome.summary.decryptors, vec![0, 1]);
            }
        }
        2 => {
            let Ok(body) = codec::decode::<ppaillier::Partial>(rest, limit) else {
                return;
            };
            let mut c = ppaillier::Collect::new(&p.params, &p.keys, &p.packer);
            for u in &p.updates {
                c.add_update(u).expect("honest update");
            }
            let mut d = c.close().expect("honest close");
            let part = d
                .partial(&p.shares[0], 0, &net.keys[0], &mut rng)
                .expect("honest partial");
            d.add_partial(&part).expect("honest partial verifies");
            let _ = d.add_partial(&sign_as(body));
            if d.ready() {
                let _ = d.finish();
            }
        }
        _ => {
            let Ok(close) = codec::decode::<ppaillier::Close>(rest, limit) else {
                return;
            };
            let mut c = ppaillier::Collect::new(&p.params, &p.keys, &p.packer);
            for u in &p.updates {
                c.add_update(u).expect("honest update");
            }
            if let Ok(d) = c.close_for(&close.contributors) {
                let _ = d.sum_hash() == close.sum_hash;
            }
        }
    }
}

/// The byte formats of `crypto::paillier`: public key, verification keys, key share files,
/// ciphertext vectors, partial decryptions (then verified with their proof) and the genesis hex.
pub fn paillier_bytes(data: &[u8]) {
    let p = paillier_net();
    let pk = &p.keys.public;
    let vks = &p.keys.verification;
    let Some((m, rest)) = mode(data) else { return };
    match m % 6 {
        0 => {
            if let Ok(k) = cpaillier::PublicKey::from_bytes(rest) {
                let again = cpaillier::PublicKey::from_bytes(&k.to_bytes()).expect("re-decodes");
                assert_eq!(again.to_bytes(), k.to_bytes());
            }
        }
        1 => {
            if let Ok(v) = cpaillier::VerificationKeys::from_bytes(pk, rest) {
                let b = v.to_bytes(pk);
                let again = cpaillier::VerificationKeys::from_bytes(pk, &b).expect("re-decodes");
                assert_eq!(again.to_bytes(pk), b);
            }
        }
        2 => {
            if let Ok(s) = cpaillier::KeyShare::from_bytes(rest) {
                let b = s.to_bytes();
                let again = cpaillier::KeyShare::from_bytes(&b).expect("re-decodes");
                assert_eq!(*again.to_bytes(), *b);
            }
        }
        3 => {
            if let Ok(cts) = cpaillier::decode_ciphertexts(pk, rest, 64) {
                assert_eq!(cpaillier::encode_ciphertexts(pk, &cts), rest);
            }
        }
        4 => {
            let cts = cpaillier::decode_ciphertexts(pk, &p.ciphertexts, 64).expect("fixture");
            if let Ok(part) = cpaillier::PartialDecryption::from_bytes(pk, vks, rest, 64) {
                let ok = vks.verify(pk, &cts, &part, b"fuzz").is_ok();
                if rest == p.partial.as_slice() {
                    assert!(ok, "the honest partial verifies");
                }
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let (public, verification) = text.split_once('\n').unwrap_or((&text, ""));
            let _ = ppaillier::Keys::from_hex(public, verification);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Secure-aggregation primitives

/// `crypto::secagg`: Shamir shares (decode and combine), sealed shares (decode and open with a
/// pair's real key), X25519 public keys (bytes and hex) and key agreement with them.
pub fn secagg_crypto(data: &[u8]) {
    let Some((m, rest)) = mode(data) else { return };
    match m % 4 {
        0 => {
            let shares: Vec<shamir::Share> = rest
                .chunks(shamir::SHARE_LEN)
                .filter_map(|c| shamir::Share::from_bytes(c).ok())
                .collect();
            for s in &shares {
                assert_eq!(
                    shamir::Share::from_bytes(&s.to_bytes()[..])
                        .expect("re-decodes")
                        .x(),
                    s.x()
                );
            }
            let _ = shamir::combine(&shares, usize::from(m >> 2) % 6);
        }
        1 => {
            let a = agree::KeyPair::from_secret_bytes(&[3u8; 32]);
            let b = agree::KeyPair::from_secret_bytes(&[4u8; 32]);
            let secret = a.agree(&b.public()).expect("fixture agreement");
            let key = kdf::derive(&secret, kdf::Purpose::ShareKey, 9, 0, 1);
            let header = aead::Header {
                round: 9,
                sender: 0,
                recipient: 1,
            };
            let _ = aead::open(&key, &header, &aead::Sealed::from_bytes(rest.to_vec()));
        }
        2 => {
            if rest.len() >= 32 {
                let their = agree::PublicKey::from_bytes(rest[..32].try_into().expect("32"));
                let mine = agree::KeyPair::from_secret_bytes(&[5u8; 32]);
                if let Ok(s) = mine.agree(&their) {
                    let _ = kdf::derive(&s, kdf::Purpose::MaskSeed, 1, 0, 1);
                }
            }
            if let Ok(k) = agree::PublicKey::from_hex(&String::from_utf8_lossy(rest)) {
                assert_eq!(agree::PublicKey::from_bytes(k.to_bytes()), k);
            }
        }
        _ => {
            if let Ok(s) = codec::decode::<secagg::SealedShare>(rest, codec::HARD_LIMIT) {
                assert!(s.sealed.as_bytes().len() <= aead::MAX_SEALED_LEN);
                assert_reencodes(&s);
            }
            if let Ok(s) = codec::decode::<secagg::SharesFor>(rest, codec::HARD_LIMIT) {
                assert_reencodes(&s);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Votes

/// Eviction votes (`protocol::votes`): signed votes as gossiped (decoded, verified, tallied),
/// eviction records as found in the log, and votes the fuzzer made, signed by their voter and
/// tallied: a tally never evicts without a quorum of distinct active voters.
pub fn vote(data: &[u8]) {
    let net = net();
    let quorum = net.genesis.spec.robust.quorum;
    let key = |i: u32| net.genesis.member(i).map(|m| m.public_key);
    let tally = || {
        Tally::new(
            net.genesis_hash,
            (0..N).map(|i| (i, net.keys[i as usize].public())),
            quorum,
            net.genesis.spec.robust.vote_expiry_rounds,
        )
    };
    let Some((m, rest)) = mode(data) else { return };
    match m % 3 {
        0 => {
            if let Ok(v) = codec::decode::<SignedVote>(rest, 4096) {
                assert_reencodes(&v);
                if let Some(k) = key(v.vote.voter) {
                    let _ = v.verify(net.genesis_hash, &k);
                }
                let _ = tally().add(&v, v.vote.round);
            }
        }
        1 => {
            if let Ok(r) = EvictionRecord::decode(rest) {
                assert_reencodes(&r);
                let _ = r.verify(net.genesis_hash, key, quorum);
            }
        }
        _ => {
            let Ok(list) = codec::decode::<Vec<(Vote, u64)>>(rest, 1 << 16) else {
                return;
            };
            let mut t = tally();
            for (v, now) in list.iter().take(64) {
                let signed =
                    SignedVote::sign(net.genesis_hash, *v, &net.keys[(v.voter % N) as usize]);
                let _ = t.add(&signed, *now);
                for rec in t.ready(*now) {
                    rec.verify(net.genesis_hash, key, quorum)
                        .expect("a tally's eviction record verifies");
                    assert!(rec.votes.len() >= votes::needed(rec.active as usize, quorum));
                    t.evict(rec.target);
                }
                let _ = t.expire(*now);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The audit log

/// Log entries as read back from sled (`storage::decode_entry`, then `Entry::verify`, the hash
/// link, succession and membership, and the DP ledger of the records); and records the fuzzer
/// made, signed by a threshold of members as a real round would be: those must pass every
/// signature check, whatever else they fail.
pub fn log_entry(data: &[u8]) {
    let net = net();
    let genesis_entry = Entry::genesis(net.genesis_text.as_bytes());
    let Some((m, rest)) = mode(data) else { return };
    let entry = if m % 2 == 0 {
        let Ok(e) = fedmesh_storage::decode_entry(u64::from(m >> 1) % 4, rest) else {
            return;
        };
        assert_reencodes(&e);
        let _ = e.verify(&net.genesis, net.genesis_hash, &net.bls);
        e
    } else {
        // The record's fields without the format tag (`RoundRecord::decode` checks that first),
        // so that the fuzzer spends its inputs on the fields.
        let Ok(record) = codec::decode::<RoundRecord>(rest, codec::HARD_LIMIT) else {
            return;
        };
        let e = signed_entry(&record);
        if let Err(err) = e.verify(&net.genesis, net.genesis_hash, &net.bls) {
            assert!(
                !matches!(
                    err,
                    audit::VerifyError::MemberSignature { .. }
                        | audit::VerifyError::Signer { .. }
                        | audit::VerifyError::TooFewSignatures { .. }
                        | audit::VerifyError::ThresholdSignature { .. }
                        | audit::VerifyError::BodyHash { .. }
                ),
                "a properly signed entry failed its signature checks: {err}"
            );
        }
        e
    };
    let _ = audit::verify_link(&genesis_entry, &entry);
    if entry.height > 0 {
        if let Ok(record) = entry.record() {
            let _ = audit::verify_succession(&net.genesis, None, &entry, &record);
            let mut members = audit::Members::new(&net.genesis, net.genesis_hash);
            let active: Vec<u32> = members.active().collect();
            let _ = audit::check_groups(&net.genesis, entry.prev_hash, &active, &record);
            let _ = audit::check_membership(&mut members, entry.height, &record);
            let _ = audit::check_paillier(&net.genesis, &record);
            // The node's DP ledger is replayed from the records in its log.
            let ledger = Ledger::from_records([&record]);
            for s in record.privacy.iter().flat_map(|p| &p.spent) {
                let _ = ledger.member(s.member).epsilon(0.5);
            }
            let members: Vec<u32> = (0..N).collect();
            let mut dp = net.genesis.spec.dp.clone();
            if let Some(p) = &record.privacy {
                dp.level = p.level;
                dp.mechanism = p.mechanism;
            }
            let _ = ledger.summary(&dp, 1, &members, &[0, 1]);
        }
    }
}

/// Model checkpoints (safetensors, `storage::decode_checkpoint`) from disk or a peer: what
/// decodes has the layout's parameter count and re-encodes to the same values.
pub fn checkpoint(data: &[u8]) {
    let layout = &net().layout;
    if let Ok(params) = fedmesh_storage::decode_checkpoint(layout, data) {
        assert_eq!(params.len(), layout.param_count());
        let bytes = fedmesh_storage::encode_checkpoint(layout, &params);
        let back = fedmesh_storage::decode_checkpoint(layout, &bytes).expect("re-decodes");
        assert!(back
            .iter()
            .zip(&params)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

/// Genesis files (`Genesis::parse` with its validation, then everything a node derives from
/// one: layout, BLS set, Paillier keys, thresholds); a parsed genesis writes out to a file that
/// parses to the same text.
pub fn genesis_toml(data: &[u8]) {
    if let Ok((g, _)) = Genesis::parse(data) {
        let _ = g.layout();
        let _ = g.bls();
        let _ = g.paillier_keys();
        let _ = g.threshold();
        let n = g.members.len();
        let _ = g.spec.secagg.threshold_for(n);
        let _ = g.spec.secagg.holders(n);
        let _ = g.spec.paillier.threshold_for(n);
        let _ = g.spec.robust.rule();
        let text = g.to_toml();
        let (again, _) = Genesis::parse(text.as_bytes()).expect("a written genesis parses");
        assert_eq!(again.to_toml(), text);
    }
}

/// Node state stored in sled: the score history, the stored votes, the approval lock.
pub fn state(data: &[u8]) {
    let net = net();
    let Some((m, rest)) = mode(data) else { return };
    match m % 3 {
        0 => {
            if let Ok(mut h) = History::decode(rest) {
                assert_eq!(
                    History::decode(&h.encode()).expect("re-decodes").encode(),
                    h.encode()
                );
                let _ = h.suspects(u64::from(m));
                h.record(1, &[], 0.3, 1.0);
                if let Some((&member, _)) = h.peers.iter().next() {
                    h.remove(member);
                }
            }
        }
        1 => {
            if let Ok(votes) = codec::decode::<Vec<SignedVote>>(rest, codec::HARD_LIMIT) {
                let mut t = Tally::new(
                    net.genesis_hash,
                    (0..N).map(|i| (i, net.keys[i as usize].public())),
                    net.genesis.spec.robust.quorum,
                    net.genesis.spec.robust.vote_expiry_rounds,
                );
                for v in votes.iter().take(256) {
                    let _ = t.count(v, 3);
                }
            }
        }
        _ => {
            let _ = codec::decode::<(u64, Hash)>(rest, 64);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds

/// Bulk announcements (`protocol::bulk`): gossip data classified under a message limit the
/// fuzzer picks. A well-formed announcement re-encodes to the same bytes and announces a body in
/// range; untagged data always passes as an ordinary message and tagged data never does; an
/// announcement of any bytes matches them and not a one-bit change of them.
pub fn bulk(data: &[u8]) {
    let Some((m, rest)) = mode(data) else { return };
    let limit = pbulk::THRESHOLD << (m % 12);
    match pbulk::classify(rest, limit) {
        Ok(Some(a)) => {
            assert_eq!(a.encode(), rest, "an announcement is canonical");
            let len = a.len as usize;
            assert!(
                len > pbulk::THRESHOLD && len <= limit,
                "announced length {len} out of range"
            );
        }
        Ok(None) => assert!(!pbulk::is_tagged(rest), "tagged data passed as a message"),
        Err(_) => assert!(pbulk::is_tagged(rest), "an untagged message refused"),
    }
    let a = pbulk::Announcement::of(rest);
    assert!(a.matches(rest));
    if !rest.is_empty() {
        let mut other = rest.to_vec();
        other[0] ^= 1;
        assert!(
            !a.matches(&other),
            "a changed byte matches the announcement"
        );
    }
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(mode);
    out.extend_from_slice(bytes);
    out
}

/// A round record of the fixture network: two participants, one dropout.
fn sample_record() -> RoundRecord {
    let net = net();
    RoundRecord {
        participants: (0..3)
            .map(|m| audit::Contribution {
                member: m,
                num_samples: 100 + u64::from(m),
                update_hash: Hash::of("fuzz", &[m as u8]),
                train_loss: 0.5,
            })
            .collect(),
        dropouts: vec![3],
        metrics: audit::Metrics {
            accuracy: 0.8,
            loss: 0.6,
            test_samples: 1000,
        },
        proposed_at_ms: 1_700_000_000_000,
        ..RoundRecord::new(
            1,
            genesis::Mode::Plain,
            net.genesis.initial_model,
            Hash::of("fuzz", b"new model"),
        )
    }
}

fn sample_votes(target: u32, voters: &[u32]) -> Vec<SignedVote> {
    let net = net();
    voters
        .iter()
        .map(|&voter| {
            SignedVote::sign(
                net.genesis_hash,
                Vote {
                    round: 1,
                    voter,
                    target,
                    score: 4.5,
                    evidence: Hash::of("fuzz", b"evidence"),
                },
                &net.keys[voter as usize],
            )
        })
        .collect()
}

/// An honest secure-aggregation session's messages, in order: advertise, key list, shares,
/// relay to member 0, masked input, survivors, consistency, consistency list, unmask — member
/// 3's own messages and the coordinator's relays to member 0.
fn secagg_transcript() -> Vec<(u8, Vec<u8>)> {
    let net = net();
    let params = secagg_params();
    let keys = &net.keys;
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut out = Vec::new();
    let mut raw = Vec::new();
    let mut coord = coordinator::CollectKeys::new(params.clone()).expect("params");
    let mut s0 = BTreeMap::new();
    for m in 0..N {
        let (next, msg) = member::Start::new(params.clone(), m)
            .expect("params")
            .advertise(&keys[m as usize], &mut rng);
        if m == 3 {
            out.push((0, codec::encode(&msg.body)));
            raw.push(wire::SecaggMsg::Advertise(msg.clone()));
        }
        coord.add(msg).expect("honest");
        s0.insert(m, next);
    }
    let (mut coord, list) = coord.finish().expect("honest");
    out.push((5, codec::encode(&list)));
    raw.push(wire::SecaggMsg::KeyList(list.clone()));
    let mut s1 = BTreeMap::new();
    for (m, st) in s0 {
        let (next, msg) = st
            .share_keys(&list, &keys[m as usize], &mut rng)
            .expect("honest");
        if m == 3 {
            out.push((1, codec::encode(&msg.body)));
            raw.push(wire::SecaggMsg::Shares(msg.clone()));
        }
        coord.add(msg).expect("honest");
        s1.insert(m, next);
    }
    let (mut coord, relayed) = coord.finish().expect("honest");
    out.push((6, codec::encode(&relayed[&0])));
    raw.push(wire::SecaggMsg::Relay(relayed.values().cloned().collect()));
    let mut s2 = BTreeMap::new();
    for (m, st) in s1 {
        let input: Vec<u64> = (0..SECAGG_LEN as u64)
            .map(|i| i * 1000 + u64::from(m))
            .collect();
        let (next, msg) = st
            .masked_input(&relayed[&m], &input, &keys[m as usize])
            .expect("honest");
        if m == 3 {
            out.push((2, codec::encode(&msg.body)));
            raw.push(wire::SecaggMsg::Masked(msg.clone()));
        }
        coord.add(msg).expect("honest");
        s2.insert(m, next);
    }
    let (mut coord, survivors) = coord.finish().expect("honest");
    out.push((7, codec::encode(&survivors)));
    raw.push(wire::SecaggMsg::Survivors(survivors.clone()));
    let mut s3 = BTreeMap::new();
    for (m, st) in s2 {
        let (next, msg) = st
            .consistency(&survivors, &keys[m as usize])
            .expect("honest");
        if m == 3 {
            out.push((3, codec::encode(&msg.body)));
            raw.push(wire::SecaggMsg::Consistency(msg.clone()));
        }
        coord.add(msg).expect("honest");
        s3.insert(m, next);
    }
    let (mut coord, clist) = coord.finish().expect("honest");
    out.push((8, codec::encode(&clist)));
    raw.push(wire::SecaggMsg::ConsistencyList(clist.clone()));
    for (m, st) in s3 {
        let msg = st.unmask(&clist, &keys[m as usize]).expect("honest");
        if m == 3 {
            out.push((4, codec::encode(&msg.body)));
            raw.push(wire::SecaggMsg::Unmask(msg.clone()));
        }
        coord.add(msg).expect("honest");
    }
    coord.finish().expect("honest session finishes");
    out.extend(raw.iter().map(|r| (9, codec::encode(r))));
    out
}

/// Valid inputs for every target, built from the fixtures: the starting corpora.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let net = net();
    let p = paillier_net();
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut rng = ChaCha20Rng::seed_from_u64(99);

    // Wire.
    let update = Payload::Update(wire::Update {
        base_model: net.genesis.initial_model,
        num_samples: 120,
        train_loss: 0.4,
        delta: vec![0.01; net.layout.param_count()],
    });
    let status = Payload::Status(wire::Status {
        height: 3,
        head: Hash::of("fuzz", b"head"),
        sent_at_ms: 5,
    });
    let proposal = Payload::Proposal(Box::new(wire::Proposal {
        height: 1,
        prev_hash: net.genesis_hash,
        record: sample_record(),
    }));
    let vote_payload = Payload::Vote(sample_votes(3, &[1]).remove(0));
    for payload in [update, status, proposal, vote_payload] {
        let env = Envelope::seal(net.genesis_hash, 1, 1, payload.clone(), &net.keys[1]);
        out.push(("wire", with_mode(0x80, &env.encode())));
        out.push(("wire", with_mode(3 + 4, &codec::encode(&payload))));
    }
    for req in [
        Request::Hello {
            genesis: net.genesis_hash,
            status: wire::Status {
                height: 1,
                head: net.genesis_hash,
                sent_at_ms: 1,
            },
        },
        Request::Entries { from: 1, max: 64 },
        Request::Checkpoint(net.genesis.initial_model),
        Request::Update {
            round: 2,
            member: 1,
        },
    ] {
        out.push(("wire", with_mode(1, &codec::encode(&req))));
    }
    let entry = signed_entry(&sample_record());
    let ckpt = fedmesh_storage::encode_checkpoint(&net.layout, &net.layout.init(1));
    for resp in [
        Response::Entries(vec![entry.clone()]),
        Response::Checkpoint(Some(ckpt.clone())),
        Response::Update(Some(
            Envelope::seal(
                net.genesis_hash,
                2,
                1,
                Payload::Status(wire::Status {
                    height: 0,
                    head: net.genesis_hash,
                    sent_at_ms: 0,
                }),
                &net.keys[2],
            )
            .encode(),
        )),
        Response::Refused("busy".into()),
        Response::WrongNetwork {
            genesis: Hash::ZERO,
        },
    ] {
        out.push(("wire", with_mode(2, &codec::encode(&resp))));
    }

    // Secure aggregation.
    for (m, bytes) in secagg_transcript() {
        out.push(("signed_secagg", with_mode(m, &bytes)));
    }

    // Paillier messages.
    out.push((
        "signed_paillier",
        with_mode(
            0,
            &codec::encode(&wire::PaillierMsg::Update(p.updates[2].clone())),
        ),
    ));
    out.push((
        "signed_paillier",
        with_mode(1, &codec::encode(&p.updates[2].body)),
    ));
    let mut c = ppaillier::Collect::new(&p.params, &p.keys, &p.packer);
    for u in &p.updates {
        c.add_update(u).expect("honest update");
    }
    let d = c.close().expect("honest close");
    let part = d
        .partial(&p.shares[2], 2, &net.keys[2], &mut rng)
        .expect("honest partial");
    out.push((
        "signed_paillier",
        with_mode(0, &codec::encode(&wire::PaillierMsg::Partial(part.clone()))),
    ));
    out.push(("signed_paillier", with_mode(2, &codec::encode(&part.body))));
    let close = ppaillier::Close {
        round: p.params.round,
        contributors: vec![0, 1, 2],
        sum_hash: d.sum_hash(),
    };
    out.push(("signed_paillier", with_mode(3, &codec::encode(&close))));
    out.push((
        "signed_paillier",
        with_mode(0, &codec::encode(&wire::PaillierMsg::Close(close))),
    ));

    // Paillier byte formats.
    let pk = &p.keys.public;
    out.push(("paillier_bytes", with_mode(0, &pk.to_bytes())));
    out.push((
        "paillier_bytes",
        with_mode(1, &p.keys.verification.to_bytes(pk)),
    ));
    out.push(("paillier_bytes", with_mode(2, &p.shares[0].to_bytes())));
    out.push(("paillier_bytes", with_mode(3, &p.ciphertexts)));
    out.push(("paillier_bytes", with_mode(4, &p.partial)));
    let hex_keys = format!(
        "{}\n{}",
        hex_encode(&pk.to_bytes()),
        hex_encode(&p.keys.verification.to_bytes(pk))
    );
    out.push(("paillier_bytes", with_mode(5, hex_keys.as_bytes())));

    // Secagg primitives.
    let secret = [9u8; 32];
    let shares = shamir::split(&secret, 3, &[1, 2, 3, 4, 5], &mut rng).expect("split");
    let share_bytes: Vec<u8> = shares.iter().flat_map(|s| s.to_bytes().to_vec()).collect();
    out.push(("secagg_crypto", with_mode(3 << 2, &share_bytes)));
    let a = agree::KeyPair::from_secret_bytes(&[3u8; 32]);
    let b = agree::KeyPair::from_secret_bytes(&[4u8; 32]);
    let key = kdf::derive(
        &a.agree(&b.public()).expect("agree"),
        kdf::Purpose::ShareKey,
        9,
        0,
        1,
    );
    let header = aead::Header {
        round: 9,
        sender: 0,
        recipient: 1,
    };
    let sealed = aead::seal(&key, &header, &[7u8; 72], &mut rng).expect("seal");
    out.push(("secagg_crypto", with_mode(1, sealed.as_bytes())));
    out.push(("secagg_crypto", with_mode(2, &b.public().to_bytes())));
    out.push((
        "secagg_crypto",
        with_mode(2, hex_encode(&b.public().to_bytes()).as_bytes()),
    ));
    out.push((
        "secagg_crypto",
        with_mode(
            3,
            &codec::encode(&secagg::SealedShare {
                recipient: 1,
                sealed,
            }),
        ),
    ));

    // Votes.
    let votes3 = sample_votes(3, &[0, 1, 2]);
    out.push(("vote", with_mode(0, &codec::encode(&votes3[0]))));
    let needed = votes::needed(N as usize, net.genesis.spec.robust.quorum);
    let record = EvictionRecord {
        target: 3,
        round: 1,
        effective_round: 2,
        active: N,
        needed: needed as u32,
        votes: votes3.clone(),
    };
    out.push(("vote", with_mode(1, &record.encode())));
    let list: Vec<(Vote, u64)> = votes3.iter().map(|v| (v.vote, 1)).collect();
    out.push(("vote", with_mode(2, &codec::encode(&list))));

    // Log entries.
    out.push(("log_entry", with_mode(1 << 1, &codec::encode(&entry))));
    let genesis_entry = Entry::genesis(net.genesis_text.as_bytes());
    out.push(("log_entry", with_mode(0, &codec::encode(&genesis_entry))));
    let mut evicting = sample_record();
    evicting.evictions = vec![record];
    let mut private = sample_record();
    private.privacy = Some(audit::PrivacySummary {
        level: genesis::DpLevel::Member,
        mechanism: genesis::DpMechanism::Gaussian,
        noise_multiplier: 1.1,
        sample_rate: 1.0,
        steps: 1,
        delta: 1e-5,
        spent: (0..N)
            .map(|m| audit::Spend {
                member: m,
                rounds: 1,
                epsilon: 0.7,
            })
            .collect(),
    });
    let mut paillier_rec = sample_record();
    paillier_rec.mode = genesis::Mode::Paillier;
    paillier_rec.paillier = Some(audit::PaillierSummary {
        sum_hash: Hash::of("fuzz", b"sum"),
        decryptors: vec![0, 1, 2],
        rejected: vec![3],
        clipped: 2,
    });
    let mut evident = sample_record();
    let twice: Vec<Vec<u8>> = [0.01f32, 0.02]
        .iter()
        .map(|v| {
            Envelope::seal(
                net.genesis_hash,
                3,
                1,
                Payload::Update(wire::Update {
                    base_model: net.genesis.initial_model,
                    num_samples: 10,
                    train_loss: 0.5,
                    delta: vec![*v; net.layout.param_count()],
                }),
                &net.keys[3],
            )
            .encode()
        })
        .collect();
    evident.evidence = vec![fedmesh_protocol::evidence::Equivocation {
        member: 3,
        round: 1,
        first: twice[0].clone(),
        second: twice[1].clone(),
        proposals: Vec::new(),
    }];
    for r in [sample_record(), evicting, private, paillier_rec, evident] {
        out.push(("log_entry", with_mode(1, &r.encode())));
    }

    // Checkpoints.
    out.push(("checkpoint", ckpt));

    // Genesis files: the fixture's, and in the other modes with DP and votes.
    out.push(("genesis_toml", net.genesis_text.clone().into_bytes()));
    let mut g = net.genesis.clone();
    g.spec.mode = genesis::Mode::Secagg;
    g.spec.robust.votes = true;
    out.push(("genesis_toml", g.to_toml().into_bytes()));
    let mut g = net.genesis.clone();
    g.spec.mode = genesis::Mode::Paillier;
    g.paillier_public_key = Some(hex_encode(&pk.to_bytes()));
    g.paillier_verification_keys = Some(hex_encode(&p.keys.verification.to_bytes(pk)));
    g.spec.dp.level = genesis::DpLevel::Member;
    out.push(("genesis_toml", g.to_toml().into_bytes()));

    // Node state.
    let mut h = History::default();
    h.peers.insert(
        2,
        fedmesh_protocol::robust::score::Peer {
            ewma: 2.5,
            last: 3.0,
            rounds: 4,
            last_round: 4,
            streak: 2,
        },
    );
    out.push(("state", with_mode(0, &h.encode())));
    out.push(("state", with_mode(1, &codec::encode(&votes3))));
    out.push((
        "state",
        with_mode(2, &codec::encode(&(3u64, Hash::of("fuzz", b"lock")))),
    ));

    // Bulk announcements: well-formed, over the limit, a wrong version, truncated, an envelope.
    let ann = pbulk::Announcement::of(&vec![7u8; 20_000]);
    out.push(("bulk", with_mode(8, &ann.encode())));
    out.push(("bulk", with_mode(0, &ann.encode())));
    let mut v2 = ann.encode();
    v2[pbulk::MAGIC.len()] = 2;
    out.push(("bulk", with_mode(8, &v2)));
    out.push(("bulk", with_mode(8, &ann.encode()[..20])));
    let env = Envelope::seal(net.genesis_hash, 1, 1, status_payload(), &net.keys[1]);
    out.push(("bulk", with_mode(8, &env.encode())));

    // A moved approval (attempt 1, with the claims of two members), appended last so that the
    // earlier seeds keep their file names.
    let h = Hash::of("fuzz", b"record");
    let claim = |m: usize| wire::Claim {
        member: m as u32,
        signing_hash: h,
        attempt: 1,
        signature: net.keys[m].sign(wire::claim_message(1, h, 1).as_bytes()),
    };
    let approval = Payload::Approval(wire::Approval {
        signing_hash: h,
        signature: net.keys[1].sign(h.as_bytes()),
        bls_share: vec![3; 96],
        attempt: 1,
        claim: net.keys[1].sign(wire::claim_message(1, h, 1).as_bytes()),
        support: vec![claim(0), claim(2)],
    });
    let env = Envelope::seal(net.genesis_hash, 1, 1, approval.clone(), &net.keys[1]);
    out.push(("wire", with_mode(0x80, &env.encode())));
    out.push(("wire", with_mode(3 + 4, &codec::encode(&approval))));
    out
}

fn status_payload() -> Payload {
    Payload::Status(wire::Status {
        height: 1,
        head: Hash::of("fuzz", b"head"),
        sent_at_ms: 1,
    })
}

/// An entry for `record` at height 1, signed by a threshold of the fixture's members.
fn signed_entry(record: &RoundRecord) -> Entry {
    let net = net();
    let mut e = Entry::round(
        1,
        Entry::genesis(net.genesis_text.as_bytes()).hash(),
        record,
    );
    let msg = e.signing_hash();
    let t = net.genesis.threshold() as u32;
    e.signatures = (0..t)
        .map(|i| audit::MemberSignature {
            member: i,
            signature: net.keys[i as usize].sign(msg.as_bytes()),
        })
        .collect();
    let shares: Vec<_> = (0..t)
        .map(|i| (i, net.bls_shares[i as usize].sign(msg.as_bytes())))
        .collect();
    e.threshold_signature = net
        .bls
        .combine(shares.iter().map(|(i, s)| (*i, s)))
        .expect("threshold shares combine")
        .to_bytes()
        .to_vec();
    e
}

fn hex_encode(bytes: &[u8]) -> String {
    fedmesh_crypto::hexbytes::encode(bytes)
}
