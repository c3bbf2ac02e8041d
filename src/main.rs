//! The `ibau` command: parse, run, map the outcome to an exit code
//! (0 success, 1 a finding or failed gate, 2 an error).

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// The message of the first panic, kept by the panic hook.
static PANIC: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other error: clap's message with its
            // continuation lines (the names of missing arguments) joined.
            let text = e.to_string();
            let line = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("Usage:")
                        && !l.starts_with("For more information")
                })
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("{} (see --help)", one_line(&line));
            return ExitCode::from(2);
        }
    };
    // A panic is a bug, but a registry running ibau unattended still gets
    // exit 2 and one line, not a backtrace: the hook keeps the message for
    // `main` instead of printing it.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = PANIC.set(format!("{message}{place}"));
    }));
    let result = std::panic::catch_unwind(|| cli::run(cli)).unwrap_or_else(|_| {
        let what = PANIC.get().cloned().unwrap_or_default();
        Err(anyhow::anyhow!(
            "internal error (a bug in ibau, please report it with the file): {what}"
        ))
    });
    match result {
        Ok(outcome) => ExitCode::from(outcome as u8),
        // `inspect MODEL | head`: the reader left; nothing more to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&error_chain(&e)));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, `a: b: c`, each cause once: many layers print
/// their source in their own message (and libtorch repeats itself), so a
/// cause whose text is already there is left out.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        // tch says "Internal torch error: X"; the source is named plainly.
        let message =
            without_backtrace(&cause.to_string()).replace("Internal torch error: ", "libtorch: ");
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// One line for the terminal: line breaks become spaces, and control bytes
/// (ESC, CR, NUL... from node and tensor names in a hostile file) are shown
/// escaped instead of reaching the terminal.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last_space = false;
    for c in text.chars() {
        match c {
            '\n' | '\r' | '\t' => {
                if !last_space {
                    out.push(' ');
                }
                last_space = true;
                continue;
            }
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
        last_space = c == ' ';
    }
    out.trim().to_string()
}

/// libtorch appends a C++ backtrace to its error messages ("Exception raised
/// from ...", then "frame #N: ..." lines); the user needs the message only.
fn without_backtrace(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let l = l.trim_start();
            !(l.starts_with("Exception raised from") || l.starts_with("frame #"))
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}
