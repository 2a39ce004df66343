use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a broker allocates and frees a message, its
/// buffers and its queue entries per delivery, from many threads, and glibc's allocator
/// (its locking, chunk coalescing and consolidation) took about 12 % of a node's time
/// in the pairs benchmark (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Variables whose name or value is not UTF-8 cannot be config keys; skip them rather
    // than fail.
    let env = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    tern::cli::run(std::env::args_os(), env)
}
