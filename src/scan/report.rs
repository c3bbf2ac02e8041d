//! The scan's JSON document (`ibau scan --json`, schema [`SCHEMA`]): one
//! entry per model, plus the files a folder scan skipped.

use serde::{Deserialize, Serialize};

use super::{ClassScan, ScanResult, Verdict};

/// The version of the scan's JSON document.
pub const SCHEMA: u32 = 1;

/// `{"schema", "tool", "version", "models": [...], "skipped": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanReport {
    pub schema: u32,
    /// `"ibau"`.
    pub tool: String,
    /// ibau's version.
    pub version: String,
    pub models: Vec<ModelEntry>,
    /// Files of a scanned folder that are not models.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

impl ScanReport {
    /// A report of this ibau version.
    pub fn new(models: Vec<ModelEntry>, skipped: Vec<Skipped>) -> ScanReport {
        ScanReport {
            schema: SCHEMA,
            tool: "ibau".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            models,
            skipped,
        }
    }

    /// Whether any model was found backdoored / could not be scanned.
    pub fn any(&self, verdict: Verdict) -> bool {
        self.models.iter().any(|m| m.verdict == verdict)
    }
}

/// One model's entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    /// The model's path as given (or as found under a scanned folder).
    pub file: String,
    /// sha256 of the model file (hex); absent when it could not be read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    pub verdict: Verdict,
    /// Suspected target classes (empty unless `backdoor`).
    pub targets: Vec<i64>,
    /// The largest class score and the threshold (absent on error).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub statistic: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub threshold: Option<f64>,
    /// Per-class measurements (empty on error).
    #[serde(default)]
    pub classes: Vec<ClassScan>,
    /// A many-class model's screen: the candidates and reference classes
    /// searched (absent when every class was).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub screen: Option<super::Screen>,
    /// The untargeted universal mask measured against the classes' (absent
    /// in reports written before it was).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub untargeted: Option<super::Untargeted>,
    /// The clean data used, `PATH[A:B]`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub clean: Option<String>,
    #[serde(default)]
    pub clean_samples: usize,
    pub seconds: f64,
    /// Why the model could not be scanned (`verdict` is `error`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Whether the entry came from `--cache` rather than this run.
    #[serde(default)]
    pub cached: bool,
}

impl ModelEntry {
    /// The entry of a completed scan.
    pub fn scanned(file: String, sha256: String, clean: String, result: ScanResult) -> ModelEntry {
        ModelEntry {
            file,
            sha256: Some(sha256),
            verdict: result.verdict,
            targets: result.targets,
            statistic: Some(result.statistic),
            threshold: Some(result.threshold),
            classes: result.classes,
            screen: result.screen,
            untargeted: result.untargeted,
            clean: Some(clean),
            clean_samples: result.clean_samples,
            seconds: result.seconds,
            error: None,
            cached: false,
        }
    }

    /// The entry of a model that could not be scanned.
    pub fn failed(file: String, sha256: Option<String>, error: String, seconds: f64) -> ModelEntry {
        ModelEntry {
            file,
            sha256,
            verdict: Verdict::Error,
            targets: Vec::new(),
            statistic: None,
            threshold: None,
            classes: Vec::new(),
            screen: None,
            untargeted: None,
            clean: None,
            clean_samples: 0,
            seconds,
            error: Some(error),
            cached: false,
        }
    }
}

/// A file of a scanned folder that is not a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    pub file: String,
    pub reason: String,
}
