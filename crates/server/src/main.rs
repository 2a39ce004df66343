use std::process::ExitCode;

fn main() -> ExitCode {
    // Variables whose name or value is not UTF-8 cannot be config keys; skip them rather
    // than fail.
    let env = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    tern::cli::run(std::env::args_os(), env)
}
