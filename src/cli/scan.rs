//! `ibau scan MODEL|FOLDER... --clean DATA`: is each model backdoored, and
//! towards which class? No trigger needed. `ibau merge`: one report from
//! the reports of several shards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::Outcome;
use ibau::data::{Dataset, Layout};
use ibau::graph::ImportOptions;
use ibau::outputs::Inputs;
use ibau::scan::registry::{self, Cache, Candidate, Manifest, Settings, Shard};
use ibau::scan::{self, ModelEntry, ScanConfig, ScanReport, Verdict};
use ibau::{Model, Preprocess};

/// Find backdoors without their trigger.
///
/// For every class of each model, two searches find the smallest trigger
/// that sends 90% of the clean images to that class: an additive
/// perturbation (its L2 radius) and a mask with a pattern (its L1 size, in
/// pixels). A class's score is how many times smaller than the median
/// class's its triggers are (the geometric mean over the two forms); a model
/// whose largest score is above the threshold is reported `backdoor`, with
/// the classes above it as the suspected targets. A third search finds the
/// smallest universal mask that moves the images off whatever class the
/// model gives them: a model whose mask is far smaller than the median
/// class's is reported `backdoor` without one target (all-to-all). Both
/// thresholds were fitted on a zoo of models that are not the fixtures
/// (docs/scan.md).
///
/// Folders are walked recursively: `*.onnx` files and TorchScript archives
/// (told apart by content) are scanned, other files listed as skipped.
///
/// Exit codes: 0 every model clean, 1 a backdoor found in at least one, 2 a
/// model could not be scanned (the others still are) or a usage error.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Models (ONNX or TorchScript files) or folders of models.
    #[arg(required = true, value_parser = super::existing_path)]
    pub models: Vec<PathBuf>,
    /// Clean labelled images (IDX, .npz, or a folder of class folders); a
    /// manifest may give other data per model.
    #[arg(long, value_parser = super::existing_path)]
    pub clean: Option<PathBuf>,
    /// Clean samples to use, `A:B` (end excluded); default `0:1000` (all of a smaller set).
    #[arg(long, value_name = "A:B")]
    pub clean_range: Option<String>,
    /// How images map onto the model input (default: what fits its shape).
    #[arg(long, value_name = "nchw|nhwc|flat|hw")]
    pub layout: Option<Layout>,
    /// Per-channel mean subtracted after scaling to [0,1].
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "M[,M..]", allow_negative_numbers = true)]
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by after the mean.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "S[,S..]", value_parser = super::positive_number)]
    pub std: Vec<f64>,
    /// A JSON manifest with per-model clean data and preprocessing (see
    /// docs/commands.md, "Registry runs").
    #[arg(long, value_parser = super::existing_file)]
    pub manifest: Option<PathBuf>,
    /// Flag a class whose score is above this (default: the documented
    /// threshold).
    #[arg(long, value_parser = super::positive_number)]
    pub threshold: Option<f64>,
    /// Steps of each per-class search of the cheap pass (every class).
    #[arg(long, default_value_t = ScanConfig::default().steps, value_parser = super::positive_count)]
    pub steps: usize,
    /// A thorough pass (experimental): search this many of the cheap
    /// pass's most suspect classes again, longer, from several starts and
    /// with Neural Cleanse's mask optimiser, and as many reference classes
    /// drawn at random; the verdict is then theirs. 3 is a sensible value;
    /// 0 (the default) skips it: on the calibration zoo it recovers smaller
    /// triggers for true targets and natural classes alike.
    #[arg(long, default_value_t = ScanConfig::default().focus)]
    pub focus: usize,
    /// Steps of each thorough search.
    #[arg(long, default_value_t = ScanConfig::default().thorough_steps, value_parser = super::positive_count)]
    pub thorough_steps: usize,
    /// Clean images per class in each thorough step.
    #[arg(long, default_value_t = ScanConfig::default().thorough_per_class as usize, value_parser = super::positive_count)]
    pub thorough_per_class: usize,
    /// Random starts of each thorough search (the smallest trigger counts).
    #[arg(long, default_value_t = ScanConfig::default().restarts, value_parser = super::positive_count)]
    pub restarts: usize,
    /// Perturbed images per forward pass: bounds memory, whatever the
    /// number of classes.
    #[arg(long, default_value_t = ScanConfig::default().max_batch as usize, value_parser = super::positive_count)]
    pub max_batch: usize,
    /// On a model with more than twice this many classes, first screen
    /// every class in six cheap steps, then search only this many (the
    /// easiest) plus as many random reference classes; 0 searches every
    /// class.
    #[arg(long, default_value_t = ScanConfig::default().candidates)]
    pub candidates: usize,
    /// Clean images per class in each search step.
    #[arg(long, default_value_t = ScanConfig::default().per_class as usize, value_parser = super::positive_count)]
    pub per_class: usize,
    /// Seed of the searches (same seed, same result on CPU).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Write, for each flagged class, the recovered trigger as PNG pictures
    /// and .npy arrays into this folder (made if missing).
    #[arg(long, value_name = "DIR")]
    pub save_triggers: Option<PathBuf>,
    /// Keep each model's result in this folder (made if missing), keyed by
    /// the model's sha256, the clean data and the settings: a run that is
    /// killed and started again redoes only the model it was on.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Scan only shard I of N (0-based): models are assigned by a hash of
    /// their path, so N runs with I = 0..N-1 cover every model once.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    #[command(flatten)]
    pub out: ReportArgs,
    #[arg(long, default_value = "auto", value_parser = super::parse_device)]
    pub device: tch::Device,
}

/// Where a scan report goes (`scan` and `merge`).
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Print the report as JSON on stdout (schema in docs/schemas.md).
    #[arg(long)]
    pub json: bool,
    /// Write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write a SARIF 2.1.0 log to this file (one result per flagged or
    /// unscannable model).
    #[arg(long, value_name = "FILE")]
    pub sarif: Option<PathBuf>,
}

impl ReportArgs {
    /// The files this writes, with their options, for the output checks.
    fn files(&self) -> Vec<(&Path, &'static str)> {
        let mut files: Vec<(&Path, &'static str)> = Vec::new();
        files.extend(self.report.as_deref().map(|p| (p, "--report")));
        files.extend(self.sarif.as_deref().map(|p| (p, "--sarif")));
        files
    }
}

/// Merge the JSON reports of several `scan --shard` runs.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The shards' JSON reports (`scan --report`).
    #[arg(required = true, value_parser = super::existing_file)]
    pub reports: Vec<PathBuf>,
    #[command(flatten)]
    pub out: ReportArgs,
}

/// The default clean range, `0:1000` (or the whole set when smaller):
/// enough for the searches, quick to load.
const DEFAULT_SAMPLES: usize = 1000;

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let manifest = args
        .manifest
        .as_deref()
        .map(Manifest::read)
        .transpose()?
        .unwrap_or_default();
    let cli_settings = Settings {
        clean: args.clean.clone(),
        clean_range: args.clean_range.clone(),
        mean: args.mean.clone(),
        std: args.std.clone(),
        layout: args.layout.map(|l| l.to_string()),
    };
    let (mut candidates, skipped) = registry::collect(&args.models)?;
    if let Some(shard) = args.shard {
        candidates.retain(|c| shard.takes(&c.path));
    }
    for typo in manifest.unmatched(&candidates) {
        if args.shard.is_none() {
            eprintln!(
                "warning: the manifest names `{}`, which is not among the scanned models",
                typo.display()
            );
        }
    }
    // Every input, for the output checks.
    let mut inputs = Inputs::default();
    for path in &args.models {
        inputs.add(path, "a scanned model or folder");
    }
    if let Some(m) = &args.manifest {
        inputs.add(m, "the manifest");
    }
    // The manifest's defaults, then the command line, then the manifest's
    // entry for the model.
    let settings: Vec<Settings> = candidates
        .iter()
        .map(|c| {
            manifest
                .defaults
                .overridden_by(&cli_settings)
                .overridden_by(&manifest.entry(&c.path))
        })
        .collect();
    for s in &settings {
        if let Some(clean) = &s.clean {
            inputs.extend(ibau::data::files_read(clean), "a --clean file");
            inputs.add(clean, "a --clean file");
        }
    }
    let files = args.out.files();
    let mut folders: Vec<(&Path, &str)> = Vec::new();
    folders.extend(
        args.save_triggers
            .as_deref()
            .map(|p| (p, "--save-triggers")),
    );
    folders.extend(args.cache.as_deref().map(|p| (p, "--cache")));
    super::note_removed(&ibau::outputs::check_outputs(&inputs, &files, &folders)?);
    let cache = args.cache.as_deref().map(Cache::open).transpose()?;
    if let Some(dir) = &args.save_triggers {
        if !dir.exists() {
            std::fs::create_dir(dir)?;
        }
    }
    let mut base = ScanConfig {
        steps: args.steps,
        max_batch: args.max_batch as i64,
        per_class: args.per_class as i64,
        candidates: args.candidates,
        focus: args.focus,
        thorough_steps: args.thorough_steps,
        thorough_per_class: args.thorough_per_class as i64,
        restarts: args.restarts,
        seed: args.seed,
        ..Default::default()
    };
    if let Some(t) = args.threshold {
        base.threshold = t;
    }
    let options = ImportOptions {
        device: args.device,
        ..Default::default()
    };
    let mut data_cache: HashMap<(PathBuf, String), (Dataset, String)> = HashMap::new();
    let mut entries = Vec::new();
    let total = candidates.len();
    if total == 0 {
        eprintln!("no models to scan");
    }
    for (i, (candidate, s)) in candidates.iter().zip(&settings).enumerate() {
        let start = Instant::now();
        let file = candidate.path.display().to_string();
        let entry = match scan_one(
            candidate,
            s,
            &base,
            &options,
            cache.as_ref(),
            &mut data_cache,
            args.save_triggers.as_deref(),
            &mut inputs,
            (i + 1, total),
        ) {
            Ok(entry) => entry,
            Err(e) => {
                let sha = registry::sha256_file(&candidate.path).ok();
                ModelEntry::failed(
                    file.clone(),
                    sha,
                    crate::one_line(&crate::error_chain(&e)),
                    start.elapsed().as_secs_f64(),
                )
            }
        };
        if !args.out.json {
            print_entry(&entry)?;
        }
        entries.push(entry);
    }
    // Checked again with the external-data files the models named.
    ibau::outputs::check_outputs(&inputs, &files, &[])?;
    let report = ScanReport::new(entries, skipped);
    finish(&report, &args.out)
}

/// Prints, writes and maps a report to the exit code.
fn finish(report: &ScanReport, out: &ReportArgs) -> anyhow::Result<Outcome> {
    let (json, path, sarif) = (out.json, out.report.as_deref(), out.sarif.as_deref());
    let text = serde_json::to_string_pretty(report)?;
    if json {
        super::outln(format_args!("{text}"))?;
    } else {
        for s in &report.skipped {
            super::outln(format_args!("skipped {}: {}", s.file, s.reason))?;
        }
    }
    if let Some(path) = path {
        ibau::onnx::write_atomically(path, text.as_bytes())?;
    }
    if let Some(path) = sarif {
        let log = serde_json::to_string_pretty(&scan::sarif::to_sarif(report))?;
        ibau::onnx::write_atomically(path, log.as_bytes())?;
    }
    if report.any(Verdict::Error) {
        let failed = report
            .models
            .iter()
            .filter(|m| m.verdict == Verdict::Error)
            .count();
        anyhow::bail!(
            "{failed} of {} model(s) could not be scanned (see their entries above)",
            report.models.len()
        );
    }
    Ok(if report.any(Verdict::Backdoor) {
        Outcome::Finding
    } else {
        Outcome::Success
    })
}

/// `ibau merge`.
pub fn merge(args: MergeArgs) -> anyhow::Result<Outcome> {
    let mut inputs = Inputs::default();
    inputs.extend(args.reports.iter().cloned(), "a shard report");
    super::note_removed(&ibau::outputs::check_outputs(
        &inputs,
        &args.out.files(),
        &[],
    )?);
    let report = scan::merge::merge_files(&args.reports)?;
    if !args.out.json {
        for entry in &report.models {
            print_entry(entry)?;
        }
    }
    finish(&report, &args.out)
}

/// One line per model (and one per flagged class).
fn print_entry(entry: &ModelEntry) -> anyhow::Result<()> {
    match entry.verdict {
        Verdict::Error => super::outln(format_args!(
            "{}: error: {}",
            entry.file,
            entry.error.as_deref().unwrap_or("")
        )),
        verdict => {
            let statistic = entry.statistic.unwrap_or(0.0);
            let threshold = entry.threshold.unwrap_or(0.0);
            super::outln(format_args!(
                "{}: {} ({}score {:.2} vs threshold {:.2}, {:.1} s{})",
                entry.file,
                if verdict == Verdict::Backdoor {
                    "BACKDOOR"
                } else {
                    "clean"
                },
                match (&entry.untargeted, entry.targets.is_empty()) {
                    (Some(u), true) if verdict == Verdict::Backdoor => format!(
                        "no one target: a universal mask of {:.1} pixels, {:.2}x smaller than the median class's (threshold {:.2}), all-to-all; ",
                        u.mask,
                        u.score,
                        scan::rule::UNTARGETED_THRESHOLD
                    ),
                    (_, true) => String::new(),
                    (_, false) => format!(
                        "target class{} {}, ",
                        if entry.targets.len() > 1 { "es" } else { "" },
                        entry
                            .targets
                            .iter()
                            .map(i64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                statistic,
                threshold,
                entry.seconds,
                if entry.cached { ", cached" } else { "" }
            ))
        }
    }
}

/// Scans one model (or takes its cached result).
#[allow(clippy::too_many_arguments)]
fn scan_one(
    candidate: &Candidate,
    settings: &Settings,
    base: &ScanConfig,
    options: &ImportOptions,
    cache: Option<&Cache>,
    data_cache: &mut HashMap<(PathBuf, String), (Dataset, String)>,
    save_triggers: Option<&Path>,
    inputs: &mut Inputs,
    (index, total): (usize, usize),
) -> anyhow::Result<ModelEntry> {
    let file = candidate.path.display().to_string();
    let Some(clean_path) = &settings.clean else {
        anyhow::bail!("no clean data for this model: give --clean or a manifest entry");
    };
    // The default range is the first samples, as many as the set holds up
    // to its end; a range given is checked against the set.
    let key = (
        clean_path.clone(),
        settings.clean_range.clone().unwrap_or_default(),
    );
    if !data_cache.contains_key(&key) {
        let data = match &settings.clean_range {
            Some(r) => ibau::data::load_range(clean_path, Some(r))?,
            None => {
                let all = ibau::data::load(clean_path)?;
                all.slice(0..all.len().min(DEFAULT_SAMPLES))?
            }
        };
        let mut digest = String::new();
        for f in ibau::data::files_read(clean_path) {
            digest.push_str(&registry::sha256_file(&f)?);
        }
        data_cache.insert(key.clone(), (data, digest));
    }
    let (clean, data_digest) = &data_cache[&key];
    let range = settings
        .clean_range
        .clone()
        .unwrap_or_else(|| format!("0:{}", clean.len()));
    let layout = settings
        .layout
        .as_deref()
        .map(|l| l.parse::<Layout>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("layout: {e}"))?;
    let config = ScanConfig {
        preprocess: Preprocess {
            layout,
            mean: settings.mean.clone(),
            std: settings.std.clone(),
        },
        ..base.clone()
    };
    let sha = registry::sha256_file(&candidate.path)?;
    let fingerprint = format!(
        "ibau {} | data {data_digest} [{range}] | mean {:?} std {:?} layout {:?} | {}",
        env!("CARGO_PKG_VERSION"),
        config.preprocess.mean,
        config.preprocess.std,
        settings.layout,
        serde_json::to_string(&config)?
    );
    let cache_key = Cache::key(&sha, &fingerprint);
    if let Some(mut entry) = cache.and_then(|c| c.get(&cache_key)) {
        entry.file = file;
        entry.cached = true;
        return Ok(entry);
    }
    let model = Model::load(&candidate.path, options)?;
    // Its external data is an input too: no output may overwrite it.
    inputs.extend(
        model.external_files(),
        "an external-data file of a scanned model",
    );
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps, ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("scanning {file} ({index}/{total})"));
    let (result, recovered) = scan::scan(&model, clean, &config, &mut |step, steps| {
        bar.set_length(steps as u64);
        bar.set_position(step as u64)
    })?;
    bar.finish_and_clear();
    if let Some(dir) = save_triggers {
        save_pictures(
            dir,
            &candidate.path,
            &model,
            &result,
            &recovered,
            &config,
            inputs,
        )?;
    }
    let entry = ModelEntry::scanned(file, sha, clean.source.clone(), result);
    if let Some(cache) = cache {
        cache.put(&cache_key, &entry)?;
    }
    Ok(entry)
}

/// The pictures of every flagged class.
fn save_pictures(
    dir: &Path,
    model_path: &Path,
    model: &Model,
    result: &scan::ScanResult,
    recovered: &scan::Recovered,
    config: &ScanConfig,
    inputs: &Inputs,
) -> anyhow::Result<()> {
    let stem = model_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    for &class in &result.targets {
        let c = &result.classes[class as usize];
        let (trigger, triggered, mask, pattern) = recovered.for_class(class, c.form, 8)?;
        let clean = recovered.images.f_narrow(0, 0, triggered.size()[0])?;
        let map = ibau::InputMap::new(model, &config.preprocess, &dummy_set(&clean)?)?;
        let predict = |x: &tch::Tensor| -> anyhow::Result<Vec<i64>> {
            let p = ibau::classifier::predict(
                model.classifier(),
                &map,
                &x.f_to_device(map.device)?,
                config.max_batch,
            )?;
            Ok(Vec::<i64>::try_from(&p.f_to_device(tch::Device::Cpu)?)?)
        };
        let written = scan::pictures::write(
            dir,
            &scan::pictures::TriggerPictures {
                stem: &stem,
                class,
                form: match c.form {
                    scan::search::Family::Additive => "additive",
                    scan::search::Family::Mask => "mask",
                },
                trigger: &trigger,
                mask: mask.as_ref(),
                pattern: pattern.as_ref(),
                clean: &clean,
                triggered: &triggered,
                clean_predictions: &predict(&clean)?,
                predictions: &predict(&triggered)?,
            },
            inputs,
        )?;
        for path in written {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// A label-less dataset around `images`, to build an input map.
fn dummy_set(images: &tch::Tensor) -> anyhow::Result<Dataset> {
    let n = images.size()[0];
    Ok(Dataset::new(
        images.shallow_clone(),
        tch::Tensor::f_zeros([n], (tch::Kind::Int64, tch::Device::Cpu))?,
        "held-back clean images",
        ibau::data::SourceLayout::Nchw,
    )?)
}
