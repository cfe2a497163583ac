//! The `oplet` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    oplet::cli::main()
}
