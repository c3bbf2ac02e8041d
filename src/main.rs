//! The `ibau` command: parse, run, map the outcome to an exit code
//! (0 success, 1 a finding or failed gate, 2 an error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match ibau::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other error; clap's first line says it all.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first} (see --help)");
            return ExitCode::from(2);
        }
    };
    match ibau::cli::run(cli) {
        Ok(outcome) => ExitCode::from(outcome as u8),
        Err(e) => {
            eprintln!("error: {}", without_backtrace(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// libtorch appends a C++ backtrace to its error messages ("Exception raised
/// from ...", then "frame #N: ..." lines); the user needs the message only.
/// Other lines (a list of unsupported ops, say) stay as they are.
fn without_backtrace(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let l = l.trim_start();
            !(l.starts_with("Exception raised from") || l.starts_with("frame #"))
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
}
