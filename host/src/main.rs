//! The `oplet` binary: everything lives in the library; see `cli`.

/// mimalloc instead of glibc malloc: converting change events allocates many small
/// maps and strings on one thread and frees them on a plugin's worker thread.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    oplet::cli::main()
}
