//! The process heap: keeping bursts from becoming the node's footprint, and an optional trace.
//!
//! A node's steady state is small (one global model, a few updates), but every round has a
//! burst: each member's update or masked input (one model, ≈ 400 KB) arrives by gossip and
//! libp2p-gossipsub copies it into its message cache and into the send queue of every peer it
//! forwards to, so for a moment a node holds tens of model-sized buffers; kills make it worse
//! (reconnections, catch-up, failover sessions). With glibc's defaults such blocks start out as
//! separate mmaps, but the first time one is freed glibc raises its mmap threshold to that size
//! (up to 32 MiB), and from then on they are carved from the heap. Long-lived small objects
//! allocated during a burst then pin the heap's high pages, the free space stays with the
//! process, and the resident set rises in steps and stays at the largest burst so far.
//!
//! Three remedies, all glibc-only and set here in one place ([`limit_arenas`] is the third: one
//! malloc arena for all threads):
//! - [`init`] fixes the mmap threshold (`mallopt(M_MMAP_THRESHOLD)`) just above the largest
//!   tensor local training allocates ([`mmap_threshold`]), which also turns the dynamic raise
//!   off: every whole-model buffer (an update, a message carrying one, a mask, a checkpoint) is
//!   larger than any one layer, so it is its own mmap and goes back to the OS when freed, and
//!   bursts of them never enter the heap. Training's per-step tensors (one layer's weights or
//!   gradients, one batch) stay below it and keep being reused from the heap: a threshold
//!   below them (glibc's initial 128 KiB) made training map, zero-fill and unmap them at every
//!   step, which doubled its CPU time.
//! - [`release`] calls `malloc_trim(0)` when a round starts (after a commit or after catching
//!   up, once the last round's state is dropped), which
//!   hands back every whole free page of every arena (not only the top of the main heap).
//!
//! The threshold is not a guarantee: glibc serves a request above it from a free chunk of an
//! arena when one is large enough (the threshold only decides what happens when the arena would
//! have to grow). Over a 100-round soak the bursts leave such chunks, and whole-model buffers
//! end up in the arenas again (after the trims, secagg witnesses: mmaps 39–43 → 35–38 MB, in
//! use in the arenas 5–9 → 13–16 MB). Mapping every such block directly was tried and made the
//! soak's RSS grow more (RELIABILITY.md, "Soak": heaptrack and `mallinfo2` figures, the
//! experiment, and what is left). What the node itself holds at the trim and what grows there
//! over a soak is mostly libp2p's per-connection gossip buffers (each stream's read and write
//! buffer keeps the size of the largest frames it has carried, a model or two), which no
//! allocator setting returns; jemalloc was tried and did no better. (Since bulk transfer keeps
//! model-sized messages off gossip, those buffers stay small; what grew in a secagg soak after
//! that was small objects spread over glibc's per-thread arenas, which [`limit_arenas`] answers.)
//!
//! Environment (read once):
//! - `FEDMESH_MALLOC_RELEASE=0` turns all three off (glibc's defaults; to measure what they do).
//!   glibc's own `MALLOC_ARENA_MAX` (or `GLIBC_TUNABLES`), when set, overrides [`limit_arenas`].
//! - `FEDMESH_MEMTRACE=1` logs, at every [`trace`] point and every [`release`], the RSS and
//!   glibc's `mallinfo2` counters (target `memtrace`, level info), and what each trim cost.
//! - `FEDMESH_DIAG_EXIT_AFTER_ROUND=R` is **diagnostic only**, for heap profiles: the node exits
//!   (code [`DIAG_EXIT_CODE`], without dropping anything) right after the trim that follows round
//!   R's commit ([`diag_exit_after`]), so a profiler's "leaked at exit" list is exactly what the
//!   node held at that point of the round. Never set it on a node that is meant to keep running.
//!
//! On targets other than Linux with glibc both remedies are no-ops (the trace logs zeros for
//! the allocator's counters).

use std::sync::OnceLock;
use std::time::Instant;

struct Settings {
    release: bool,
    trace: bool,
    exit_after_round: Option<u64>,
}

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let on = |name: &str, default: bool| match std::env::var(name) {
            Ok(v) => !matches!(v.trim(), "0" | "false" | "no" | "off" | ""),
            Err(_) => default,
        };
        Settings {
            release: on("FEDMESH_MALLOC_RELEASE", true),
            trace: on("FEDMESH_MEMTRACE", false),
            exit_after_round: std::env::var("FEDMESH_DIAG_EXIT_AFTER_ROUND")
                .ok()
                .and_then(|v| v.trim().parse().ok()),
        }
    })
}

/// What the allocator holds, in KiB (glibc's `mallinfo2`).
#[derive(Debug, Clone, Copy, Default)]
struct Heap {
    /// Obtained with `brk`/`sbrk` and in arenas (`arena`).
    arena: u64,
    /// Obtained as separate `mmap`s for large blocks (`hblkhd`).
    mmap: u64,
    /// In use by the program (`uordblks`).
    in_use: u64,
    /// Free inside the arenas, kept by the allocator (`fordblks`).
    free: u64,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> Option<Heap> {
    // SAFETY: `mallinfo2` takes no arguments, only reads the allocator's counters under its
    // locks and returns a plain struct by value; glibc ≥ 2.33 has it (Debian 12: 2.36).
    let m = unsafe { libc::mallinfo2() };
    Some(Heap {
        arena: m.arena as u64 / 1024,
        mmap: m.hblkhd as u64 / 1024,
        in_use: m.uordblks as u64 / 1024,
        free: m.fordblks as u64 / 1024,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap() -> Option<Heap> {
    None
}

/// Resident set size of this process in KiB (Linux: VmRSS), if known.
pub(crate) fn rss_kib() -> Option<u64> {
    resident().map(|r| r.total_kib)
}

/// The resident set of this process, in KiB, and what it is made of (Linux `/proc/self/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resident {
    /// `VmRSS`: everything resident.
    pub total_kib: u64,
    /// `RssAnon`: the heap, mmaps of large blocks, thread stacks: what the allocator governs.
    pub anon_kib: u64,
    /// `RssFile`: pages of the binary and libraries that have been executed or read; grows when
    /// a code path runs for the first time (catch-up, failover), not with data.
    pub file_kib: u64,
}

/// This process's [`Resident`] set, if the OS tells (Linux).
pub(crate) fn resident() -> Option<Resident> {
    parse_status(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// [`Resident`] from the text of a `/proc/<pid>/status` file; `None` without `VmRSS`. Kernels
/// before 4.5 have no `RssAnon`/`RssFile` (then 0).
fn parse_status(status: &str) -> Option<Resident> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.split(':').next() == Some(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Resident {
        total_kib: field("VmRSS")?,
        anon_kib: field("RssAnon").unwrap_or(0),
        file_kib: field("RssFile").unwrap_or(0),
    })
}

/// Log the RSS and the allocator's counters at `point`, if `FEDMESH_MEMTRACE` is set.
pub(crate) fn trace(point: &str) {
    if !settings().trace {
        return;
    }
    let h = heap().unwrap_or_default();
    tracing::info!(
        target: "memtrace",
        point,
        rss_kib = rss_kib().unwrap_or(0),
        arena_kib = h.arena,
        mmap_kib = h.mmap,
        in_use_kib = h.in_use,
        free_kib = h.free,
        "memory"
    );
}

/// glibc's initial mmap threshold, the least [`mmap_threshold`] returns.
const MIN_MMAP_THRESHOLD: usize = 128 * 1024;
/// glibc's largest mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
const MAX_MMAP_THRESHOLD: usize = 32 * 1024 * 1024;

/// The mmap threshold for a model: one page above the largest tensor one training step
/// allocates (a layer's weight matrix, its gradient or optimizer state; one batch of inputs or
/// activations), and at least glibc's initial 128 KiB. Every buffer of the whole model
/// (`4 × param_count` bytes or more) is above it, since the model is at least its largest
/// layer plus that layer's bias; if a batch is larger than the model, the threshold stays at
/// the model's size (whole-model buffers are what must not stay in the heap).
pub(crate) fn mmap_threshold(layout: &fedmesh_protocol::model::Layout, batch_size: usize) -> usize {
    const PAGE: usize = 4096;
    let f32s = std::mem::size_of::<f32>();
    let largest_layer = layout.tensors().iter().map(|t| t.len()).max().unwrap_or(0);
    let widest = layout.layers.iter().copied().max().unwrap_or(0);
    let step = largest_layer
        .max(batch_size.saturating_mul(widest))
        .saturating_mul(f32s);
    let model = layout.param_count().saturating_mul(f32s);
    let above_step = (step / PAGE + 1).saturating_mul(PAGE);
    above_step
        .min(model)
        .clamp(MIN_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)
}

/// Fix glibc's mmap threshold at `threshold` bytes (see the module doc and
/// [`mmap_threshold`]), unless `FEDMESH_MALLOC_RELEASE=0`. Call once, before the node
/// allocates models and messages.
pub(crate) fn init(threshold: usize) {
    if !settings().release {
        tracing::info!(target: "memtrace", "FEDMESH_MALLOC_RELEASE=0: glibc's default allocator settings");
        return;
    }
    if fix_mmap_threshold(threshold) {
        tracing::debug!(
            threshold,
            "allocator: blocks from this size on are their own mmaps"
        );
    } else {
        tracing::warn!(
            threshold,
            "could not fix the allocator's mmap threshold; memory may grow after bursts"
        );
    }
    trace("start");
}

/// How many malloc arenas the node's threads share ([`limit_arenas`]).
pub(crate) const ARENAS: usize = 1;

/// Make every thread allocate from one malloc arena (`mallopt(M_ARENA_MAX, 1)`), unless
/// `FEDMESH_MALLOC_RELEASE=0` or the operator set glibc's own `MALLOC_ARENA_MAX` or
/// `GLIBC_TUNABLES`. Call first, before the node starts threads: an arena, once made, stays.
///
/// Why: glibc gives threads their own arenas (up to 8 per core, 16 here), and a node's threads
/// (tokio's workers, sled's, training's blocking threads) each keep small objects of different
/// lifetimes in theirs; after a trim each arena keeps its own partly used pages, and over a
/// 100-round secagg soak the arenas went from 10 to 17 MB (RELIABILITY.md, Soak, Session 8).
/// With one arena the free space of one thread's burst is reused by the next, and the soak's
/// arenas grew 5–7 → 9–13 MB instead, the RSS 2–6 MiB lower. Per-thread caches (glibc's tcache)
/// still serve most small allocations without the arena's lock.
/// Returns false only if glibc refused the setting (the caller logs it once logging is up).
pub(crate) fn limit_arenas() -> bool {
    if !settings().release
        || std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return true;
    }
    set_arena_max(ARENAS)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: usize) -> bool {
    let Ok(value) = libc::c_int::try_from(arenas) else {
        return false;
    };
    // SAFETY: `mallopt` only changes an allocator parameter (under its lock); any positive
    // M_ARENA_MAX is valid (it caps arenas made from now on). It returns 1 on success.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, value) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: usize) -> bool {
    true
}

/// Free space at the top of a heap from which glibc's `free` shrinks the heap by itself. Fixing
/// the mmap threshold also fixes this one (at 128 KiB, with no dynamic raise), and then every
/// training step shrank and regrew its heap by a layer's size, page-faulting each time (a
/// hundred times the page faults, twice the CPU time). The node trims once per round instead
/// ([`release`]), so the automatic trim can wait for this much.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const AUTO_TRIM_THRESHOLD: libc::c_int = 32 * 1024 * 1024;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_mmap_threshold(bytes: usize) -> bool {
    let Ok(value) = libc::c_int::try_from(bytes) else {
        return false;
    };
    // SAFETY: `mallopt` only changes an allocator parameter (under its lock); M_MMAP_THRESHOLD
    // with a value up to glibc's maximum (32 MiB on 64-bit) and any non-negative
    // M_TRIM_THRESHOLD are valid. It returns 1 on success.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, value) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, AUTO_TRIM_THRESHOLD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_mmap_threshold(_bytes: usize) -> bool {
    true
}

/// Give the heap's free pages back to the OS after a burst (`malloc_trim(0)`), unless
/// `FEDMESH_MALLOC_RELEASE=0`. `after` names the moment, for the trace. Returns the resident
/// set right after the trim (`None` where the OS does not tell): the node's footprint at a fixed
/// point of the round, between bursts, which the soak compares across rounds.
///
/// Cost: it walks every arena under its lock, so other threads that allocate wait for it; with
/// [`init`]'s threshold a node's heap stays small and one call took ≈ 0.2 ms (median; see
/// RELIABILITY.md, Soak). It is called once per round, never per message.
pub(crate) fn release(after: &str) -> Option<Resident> {
    let s = settings();
    if !s.release {
        trace(after);
        return resident();
    }
    let before = s.trace.then(rss_kib).flatten();
    let start = Instant::now();
    trim();
    let took = start.elapsed();
    let rss = resident();
    if s.trace {
        let h = heap().unwrap_or_default();
        tracing::info!(
            target: "memtrace",
            point = after,
            rss_before_kib = before.unwrap_or(0),
            rss_kib = rss.map_or(0, |r| r.total_kib),
            arena_kib = h.arena,
            mmap_kib = h.mmap,
            in_use_kib = h.in_use,
            free_kib = h.free,
            trim_us = took.as_micros() as u64,
            "memory released"
        );
    }
    rss
}

/// The exit code of a node stopped by `FEDMESH_DIAG_EXIT_AFTER_ROUND` (see the module doc).
pub(crate) const DIAG_EXIT_CODE: i32 = 86;

/// Diagnostic only: if `FEDMESH_DIAG_EXIT_AFTER_ROUND` names `after_round`, exit the process now
/// with [`DIAG_EXIT_CODE`]. Call it right after [`release`] at a round's start. The exit runs no
/// destructors (`std::process::exit`), so what the node holds stays allocated and a heap
/// profiler (heaptrack) lists it as leaked; its own exit hooks still flush its trace.
pub(crate) fn diag_exit_after(after_round: u64) {
    if settings().exit_after_round == Some(after_round) {
        tracing::warn!(
            after_round,
            "FEDMESH_DIAG_EXIT_AFTER_ROUND: exiting right after the round-start trim (diagnostic)"
        );
        std::process::exit(DIAG_EXIT_CODE);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: `malloc_trim` only returns free memory of the allocator's own arenas to the OS
    // (under the arenas' locks); it touches no memory the program holds. Its result (whether
    // anything was released) needs no handling.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::model::Layout;

    /// The default MLP: whole-model buffers above the threshold, training tensors below it.
    #[test]
    fn threshold_separates_the_model_from_training_tensors() {
        let layout = Layout {
            layers: vec![784, 128, 10],
        };
        let t = mmap_threshold(&layout, 32);
        let model = layout.param_count() * 4;
        let weight = 784 * 128 * 4;
        assert!(
            weight < t,
            "a layer's weights ({weight} B) must stay in the heap ({t})"
        );
        assert!(32 * 784 * 4 < t);
        assert!(
            model >= t,
            "the model ({model} B) must be its own mmap ({t})"
        );
    }

    /// Small models keep glibc's initial threshold; a batch larger than the model does not
    /// lift the threshold above the model.
    #[test]
    fn threshold_bounds() {
        let tiny = Layout {
            layers: vec![4, 3, 2],
        };
        assert_eq!(mmap_threshold(&tiny, 32), MIN_MMAP_THRESHOLD);
        let layout = Layout {
            layers: vec![784, 128, 10],
        };
        assert_eq!(
            mmap_threshold(&layout, 4096),
            layout.param_count() * 4,
            "capped at the model's size"
        );
    }

    /// The resident set is read from `/proc/<pid>/status`, its parts where the kernel has them.
    #[test]
    fn status_is_parsed() {
        let status = "Name:\tfedmesh\nVmHWM:\t  90000 kB\nVmRSS:\t   51234 kB\nRssAnon:\t   40000 kB\nRssFile:\t   11000 kB\nRssShmem:\t 234 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Resident {
                total_kib: 51234,
                anon_kib: 40000,
                file_kib: 11000
            })
        );
        let old_kernel = "VmRSS:\t 100 kB\n";
        assert_eq!(
            parse_status(old_kernel),
            Some(Resident {
                total_kib: 100,
                anon_kib: 0,
                file_kib: 0
            })
        );
        assert_eq!(parse_status("VmHWM: 5 kB\n"), None);
        assert_eq!(parse_status("VmRSS: lots kB\n"), None);
        let now = resident().expect("linux");
        assert!(now.total_kib > 0 && now.anon_kib <= now.total_kib);
    }

    /// The arenas glibc has made so far (`malloc_info`'s `<heap nr=…>` elements).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn arenas() -> usize {
        use std::io::{Read, Seek};
        use std::os::fd::FromRawFd;
        // SAFETY: `tmpfile` returns an open stream or null; `malloc_info` writes its XML to it;
        // `fflush` pushes the stream's buffer to the file, whose descriptor is then duplicated
        // so that `fclose` (which closes the original) leaves our copy valid.
        let mut file = unsafe {
            let stream = libc::tmpfile();
            assert!(!stream.is_null(), "tmpfile");
            assert_eq!(libc::malloc_info(0, stream), 0);
            assert_eq!(libc::fflush(stream), 0);
            let fd = libc::dup(libc::fileno(stream));
            libc::fclose(stream);
            assert!(fd >= 0, "dup");
            std::fs::File::from_raw_fd(fd)
        };
        file.rewind().unwrap();
        let mut xml = String::new();
        file.read_to_string(&mut xml).unwrap();
        xml.matches("<heap nr=").count()
    }

    /// After `limit_arenas`, threads that allocate at the same time make no new arena (glibc's
    /// default would give each new thread its own, up to 8 per core).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn new_threads_share_the_arenas() {
        assert!(set_arena_max(ARENAS));
        let before = arenas();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let held: Vec<Vec<u8>> =
                        (0..2000).map(|j| vec![i as u8; 64 + j % 512]).collect();
                    std::hint::black_box(held).len()
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(arenas(), before, "new threads made arenas of their own");
    }

    /// A burst of freed model-sized blocks that glibc kept is given back by `release`: the
    /// allocator's free space shrinks to (almost) nothing and the RSS drops.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_gives_back_a_freed_burst() {
        // Free one large block first so that glibc raises its mmap threshold, as a node does
        // after its first model-sized buffer; the burst then lands inside the heap.
        drop(std::hint::black_box(vec![1u8; 8 << 20]));
        let burst: Vec<Vec<u8>> = (0..64)
            .map(|i| std::hint::black_box(vec![i as u8; 400 << 10]))
            .collect();
        let keep = std::hint::black_box(vec![7u8; 1024]); // stays above the burst in the heap
        drop(burst);
        let free_before = heap().expect("glibc").free;
        assert!(
            free_before >= 20 << 10,
            "the burst should sit free in the heap ({free_before} KiB)"
        );
        let rss_before = rss_kib().expect("linux");
        trim();
        let rss_after = rss_kib().expect("linux");
        assert!(
            rss_after + (16 << 10) < rss_before,
            "RSS {rss_before} → {rss_after} KiB: the freed burst was not given back"
        );
        assert_eq!(keep[0], 7);
    }
}
