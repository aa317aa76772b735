// mimalloc keeps freed tensor buffers for reuse; with glibc's malloc every large buffer came
// back from the kernel as fresh zeroed pages (page faults were 4% of a CPU prefill).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the same index in its v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Never hand freed pages back to the kernel: a training step frees and reallocates the
    // same activation sizes, and each purged page came back as a zeroed huge-page fault
    // (~10% of a CPU training step; 180k page faults per 7 steps before, 2k after).
    // SAFETY: sets a global option before any threads exist.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    scaledown::cli::main()
}
