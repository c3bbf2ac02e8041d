//! The command line: clap definitions and one module per subcommand. This is
//! the only layer that uses anyhow; the library layers have typed errors.

pub mod eval;
pub mod inspect;
pub mod sanitize;
pub mod scan;
pub mod verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ibau::data::{Attack, Layout, Target};

/// How a successful command ended; errors exit with 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Success: nothing found, every gate passed.
    Success = 0,
    /// A finding: a runtime disagreed, a gate failed.
    Finding = 1,
}

/// Remove backdoors from ONNX image classifiers with I-BAU (Zeng et al., ICLR 2022).
///
/// Exit codes: 0 success, 1 a finding (a runtime disagrees, a gate failed),
/// 2 an error (bad input, unsupported model, failed parity check).
#[derive(Debug, Parser)]
#[command(name = "ibau", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Summarise a model: producer, opsets, inputs and outputs, ops,
    /// initializers, trainable weights, unsupported ops.
    Inspect(inspect::Args),
    /// Run one file through the tch import, ONNX Runtime and tract on the same
    /// inputs and compare their outputs.
    Verify(verify::Args),
    /// Clean accuracy and, with a trigger, attack success rate of a model.
    Eval(eval::Args),
    /// Remove a backdoor with I-BAU and write the cleaned model, checked by
    /// ONNX Runtime before it is written.
    Sanitize(Box<sanitize::Args>),
    /// Find backdoors without their trigger: per-class smallest triggers,
    /// a verdict per model, JSON and SARIF for CI.
    Scan(Box<scan::Args>),
    /// Merge the JSON reports of `scan --shard` runs into one JSON report
    /// and one SARIF log.
    Merge(scan::MergeArgs),
}

/// Data options shared by the commands.
#[derive(Debug, Clone, clap::Args)]
pub struct PreprocessArgs {
    /// How images map onto the model input; by default the one layout that
    /// fits the model's declared input shape.
    #[arg(long, value_name = "nchw|nhwc|flat|hw")]
    pub layout: Option<Layout>,
    /// Per-channel mean subtracted after scaling to [0,1] (e.g. 0.5 or 0.49,0.48,0.45).
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "M[,M..]", value_parser = finite_number, allow_negative_numbers = true)]
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by after the mean (above 0).
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "S[,S..]", value_parser = positive_number, allow_negative_numbers = true)]
    pub std: Vec<f64>,
}

fn finite_number(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a finite number")),
    }
}

impl PreprocessArgs {
    /// The library's form of these options.
    pub fn to_library(&self) -> ibau::Preprocess {
        ibau::Preprocess {
            layout: self.layout,
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }
}

/// A `--target`: a class number or `next`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    s.parse::<Target>().map_err(|e| e.to_string())
}

/// The `--trigger`/`--target` pairs, in order (counts checked first).
pub fn attacks_option(triggers: &[String], targets: &[Target]) -> anyhow::Result<Vec<Attack>> {
    Ok(Attack::pair(triggers, targets)?)
}

/// A data path, checked to exist.
pub fn existing_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("`{s}` does not exist"))
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Sanitize(args) => sanitize::run(*args),
        Command::Scan(args) => scan::run(*args),
        Command::Merge(args) => scan::merge(args),
    }
}

/// Parses `--device auto|cpu|cuda|cuda:N`.
pub fn parse_device(s: &str) -> Result<tch::Device, String> {
    match s {
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(format!(
                "`{s}` is not a device: use auto, cpu, cuda or cuda:N"
            )),
        },
    }
}

fn cuda(n: usize) -> Result<tch::Device, String> {
    let count = tch::Cuda::device_count() as usize;
    if n < count {
        Ok(tch::Device::Cuda(n))
    } else if count == 0 {
        Err("libtorch sees no CUDA device on this machine (use --device cpu or auto)".into())
    } else {
        Err(format!(
            "cuda:{n} does not exist: libtorch sees {count} CUDA device(s)"
        ))
    }
}

/// The model path argument, checked to exist so that the error names it.
pub fn existing_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_file() {
        Ok(p)
    } else if p.exists() {
        Err(format!("`{s}` is not a file"))
    } else {
        Err(format!("`{s}` does not exist"))
    }
}

/// Writes one line of human output to stdout. Control characters (from node
/// and tensor names in a hostile file) are shown escaped; a closed pipe or a
/// full disk is an error for the caller, never a panic.
/// Says on stderr what a run removed that killed runs had left behind.
pub fn note_removed(removed: &[std::path::PathBuf]) {
    if let Some(line) = ibau::outputs::describe_removed(removed) {
        eprintln!("note: {line}");
    }
}

pub fn outln(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write;
    let text = args.to_string();
    let mut line = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        match c {
            '\n' | '\t' => line.push(c),
            c if c.is_control() => line.extend(c.escape_default()),
            c => line.push(c),
        }
    }
    line.push('\n');
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| anyhow::Error::new(e).context("writing to stdout"))
}

/// A number above zero, finite (learning rates, radii, step sizes).
pub fn positive_number(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number above 0")),
    }
}

/// A finite number of at least zero (tolerances, regularisation weights).
pub fn non_negative_number(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a finite number of at least 0")),
    }
}

/// A count of at least one (rounds, iterations, steps).
pub fn positive_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_COUNT).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a whole number from 1 to {MAX_COUNT}")),
    }
}

/// The largest count `positive_count` accepts.
const MAX_COUNT: usize = 1_000_000;
