// mimalloc keeps freed tensor buffers for reuse; with glibc's malloc every large buffer came
// back from the kernel as fresh zeroed pages (page faults were 4% of a CPU prefill).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    scaledown::cli::main()
}
