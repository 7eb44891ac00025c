//! The `weir` binary: everything lives in the library; see `cli`.

/// mimalloc rather than glibc's malloc: a session's buffers are often freed
/// or grown on another tokio worker than the one that allocated them, and
/// glibc then takes the other thread's arena lock. Under load the two
/// workers waited on each other's arenas (futex) about once a message; with
/// mimalloc a cross-thread free is a lock-free push. See benches/README.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
