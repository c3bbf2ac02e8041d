//! The `ibau` command: parse, run, map the outcome to an exit code
//! (0 success, 1 a finding or failed gate, 2 an error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ibau::cli::Cli::parse();
    match ibau::cli::run(cli) {
        Ok(outcome) => ExitCode::from(outcome as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
