//! Helper threads that spin between the block products of a decoding step.
//!
//! A decoding step makes ~120 products of tens of microseconds each. Handed to rayon, every
//! one wakes a parked helper and parks it again: measured on 2 cores, decoding ran at 94 tok/s
//! on one thread and 96 on two, where llama.cpp (whose threads spin between operations) went
//! from 77 to 101. Here the helpers spin for about a millisecond after each product, so the
//! next one finds them awake, then sleep on a condition variable (a prompt's GEMM, which runs
//! on rayon's threads, does not compete with spinning ones for long).
//!
//! One product owns the helpers at a time; a caller that finds them busy (another thread's
//! product) returns false and runs its work otherwise.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// A share of a product: called with the share's index, 1.. on helpers (0 is the caller's).
type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// Checks of the epoch before a helper sleeps (`spin_loop` is ~10-40 ns: about 1 ms).
const SPINS: usize = 50_000;

struct Pool {
    helpers: usize,
    /// Held by the caller whose job the helpers run.
    owner: Mutex<()>,
    /// Bumped once per job; helpers run a job when they see it change.
    epoch: AtomicUsize,
    /// Helpers that have not finished the current job.
    pending: AtomicUsize,
    /// Shares of the current job (helper i runs share i when i < shares).
    shares: AtomicUsize,
    /// The current job, valid from the epoch's bump until `pending` is back to 0.
    job: UnsafeCell<Option<*const Job<'static>>>,
    /// A helper's job panicked: the caller re-raises it.
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the owner (under `owner`) before the epoch's bump
// (Release) and read by helpers after they see it (Acquire); the owner does not return, and
// so does not end the job's borrow, until every helper has decremented `pending`.
unsafe impl Sync for Pool {}

/// The pool for this process: rayon's thread count minus the caller; None for one thread.
fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<&'static Pool>> = OnceLock::new();
    *POOL.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        if helpers == 0 {
            return None;
        }
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            helpers,
            owner: Mutex::new(()),
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            shares: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 1..=helpers {
            let spawned = std::thread::Builder::new()
                .name(format!("scaledown-spin-{i}"))
                .spawn(move || helper(pool, i));
            if spawned.is_err() {
                // Without all its helpers the pool would wait forever: do without it.
                return None;
            }
        }
        Some(pool)
    })
}

/// The helpers' thread count plus the caller (1 without helpers).
pub(crate) fn threads() -> usize {
    pool().map_or(1, |p| p.helpers + 1)
}

/// Runs `job(0)` here and `job(1..shares)` on the helpers, returning when all are done.
/// False (and nothing run) when the helpers are busy with another caller's job, when there
/// are none, or when `shares` exceeds them.
pub(crate) fn run(shares: usize, job: &Job<'_>) -> bool {
    let Some(pool) = pool() else {
        return false;
    };
    if shares > pool.helpers + 1 {
        return false;
    }
    let Ok(_owner) = pool.owner.try_lock() else {
        return false;
    };
    // SAFETY: lifetime erased; see `impl Sync for Pool`: the pointer is cleared below, after
    // every helper is done with it and before `job`'s borrow ends.
    let erased: *const Job<'static> =
        unsafe { std::mem::transmute::<&Job<'_>, &'static Job<'static>>(job) };
    unsafe { *pool.job.get() = Some(erased) };
    pool.shares.store(shares, Ordering::Relaxed);
    pool.pending.store(pool.helpers, Ordering::Relaxed);
    pool.epoch.fetch_add(1, Ordering::SeqCst);
    if pool.sleepers.load(Ordering::SeqCst) > 0 {
        let _sleep = pool.sleep.lock().unwrap_or_else(|e| e.into_inner());
        pool.wake.notify_all();
    }
    let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)));
    while pool.pending.load(Ordering::Acquire) != 0 {
        std::hint::spin_loop();
    }
    unsafe { *pool.job.get() = None };
    if let Err(panic) = mine {
        std::panic::resume_unwind(panic);
    }
    if pool.panicked.swap(false, Ordering::Relaxed) {
        panic!("a block product's share panicked on a helper thread");
    }
    true
}

fn helper(pool: &'static Pool, index: usize) {
    let mut seen = 0;
    loop {
        let mut spins = 0;
        while pool.epoch.load(Ordering::Acquire) == seen {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let mut sleep = pool.sleep.lock().unwrap_or_else(|e| e.into_inner());
            pool.sleepers.fetch_add(1, Ordering::SeqCst);
            while pool.epoch.load(Ordering::SeqCst) == seen {
                sleep = pool.wake.wait(sleep).unwrap_or_else(|e| e.into_inner());
            }
            pool.sleepers.fetch_sub(1, Ordering::SeqCst);
            spins = 0;
        }
        seen = pool.epoch.load(Ordering::Acquire);
        if index < pool.shares.load(Ordering::Relaxed) {
            // SAFETY: set before the epoch's bump that this thread has just seen, and kept
            // until `pending` (decremented below) reaches 0.
            let job = unsafe { (*pool.job.get()).expect("a job is set with every epoch") };
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*job)(index) }));
            if ran.is_err() {
                pool.panicked.store(true, Ordering::Relaxed);
            }
        }
        pool.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_and_a_busy_pool_says_so() {
        let shares = threads();
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..shares).map(|_| AtomicUsize::new(0)).collect();
            let ran = run(shares, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            // Other tests' threads may own the pool; then nothing ran.
            let want = usize::from(ran);
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == want));
        }
        assert!(!run(threads() + 1, &|_| {}), "more shares than threads");
    }
}
