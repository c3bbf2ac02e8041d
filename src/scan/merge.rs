//! Merging the reports of a scan split into shards (one per machine or per
//! job) into one report, as if one `ibau scan` had seen every model; and
//! reading a report file back, which may come from anywhere.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{ModelEntry, ScanReport, Skipped, Verdict, SCHEMA};
use crate::limits::{self, LimitError};

/// What reading or merging scan reports can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("scan report `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scan report `{}` is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("scan report `{}`: {source}", path.display())]
    TooLarge {
        path: PathBuf,
        #[source]
        source: LimitError,
    },
    #[error("scan report `{}` is not a scan report's JSON: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("scan report `{}` has schema {found}; this ibau reads schema {SCHEMA}", path.display())]
    FileSchema { path: PathBuf, found: u32 },
    /// A report given in memory (`shard` counts from 0) of another schema.
    #[error("shard {shard} has schema {found}; this ibau merges schema {SCHEMA}")]
    ShardSchema { shard: usize, found: u32 },
}

/// The bytes of the regular file at `path` (`what`, in errors), refusing
/// anything else (a FIFO is not waited on) and a file larger than the
/// memory budget before reading it. Used for every JSON file the scan reads:
/// reports, the manifest, cache entries.
pub fn read_bytes(path: &Path, what: &'static str) -> Result<Vec<u8>, MergeError> {
    let read_error = |source| MergeError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::inputs::open_regular(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            MergeError::NotAFile {
                path: path.to_path_buf(),
            }
        } else {
            read_error(e)
        }
    })?;
    let length = file.metadata().map_err(read_error)?.len();
    limits::check_bytes(length as u128, what).map_err(|source| MergeError::TooLarge {
        path: path.to_path_buf(),
        source,
    })?;
    // No more than the checked length, even if the file grows meanwhile (a
    // cut document then fails to parse).
    let mut bytes = Vec::with_capacity(length as usize);
    file.take(length)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    Ok(bytes)
}

/// Reads the scan report at `path`, refusing a file larger than the memory
/// budget before reading it, and a report of another schema.
pub fn read_report(path: &Path) -> Result<ScanReport, MergeError> {
    let bytes = read_bytes(path, "the scan report")?;
    let report: ScanReport =
        serde_json::from_slice(&bytes).map_err(|source| MergeError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    if report.schema != SCHEMA {
        return Err(MergeError::FileSchema {
            path: path.to_path_buf(),
            found: report.schema,
        });
    }
    Ok(report)
}

/// Reads the reports at `paths` ([`read_report`]) and merges them
/// ([`merge`]).
pub fn merge_files(paths: &[PathBuf]) -> Result<ScanReport, MergeError> {
    let reports = paths
        .iter()
        .map(|p| read_report(p))
        .collect::<Result<Vec<_>, _>>()?;
    merge(reports)
}

/// One report of every shard's models, sorted by file, and skipped files.
///
/// A model in several shards (same file, same sha256) is kept once: the
/// first shard's entry, unless it is an error and a later shard scanned the
/// model (a shard run again after a failure). The same path with another
/// sha256 is another model and is kept. The merged report's `version` is
/// the shards' ibau version, or their versions joined by `, ` when they
/// differ.
pub fn merge(reports: Vec<ScanReport>) -> Result<ScanReport, MergeError> {
    if let Some((shard, report)) = reports.iter().enumerate().find(|(_, r)| r.schema != SCHEMA) {
        return Err(MergeError::ShardSchema {
            shard,
            found: report.schema,
        });
    }
    let mut versions: Vec<String> = reports.iter().map(|r| r.version.clone()).collect();
    versions.sort();
    versions.dedup();
    let mut models: Vec<ModelEntry> = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    for report in reports {
        models.extend(report.models);
        skipped.extend(report.skipped);
    }
    // Stable: among equal keys the shards' order stays, so "first" holds.
    models.sort_by(|a, b| model_key(a).cmp(&model_key(b)));
    models.dedup_by(|later, kept| {
        if model_key(later) != model_key(kept) {
            return false;
        }
        if kept.verdict == Verdict::Error && later.verdict != Verdict::Error {
            std::mem::swap(kept, later);
        }
        true
    });
    skipped.sort_by(|a, b| skipped_key(a).cmp(&skipped_key(b)));
    skipped.dedup_by(|later, kept| skipped_key(later) == skipped_key(kept));
    let mut merged = ScanReport::new(models, skipped);
    if !versions.is_empty() {
        merged.version = versions.join(", ");
    }
    Ok(merged)
}

fn model_key(m: &ModelEntry) -> (&str, Option<&str>) {
    (&m.file, m.sha256.as_deref())
}

fn skipped_key(s: &Skipped) -> (&str, &str) {
    (&s.file, &s.reason)
}

/// Report entries for the tests of this module and of [`super::sarif`].
#[cfg(test)]
pub(super) mod fixtures {
    use super::super::{ModelEntry, ScanResult, Verdict};

    /// A scanned model with `targets` flagged (statistic 4.5 against a
    /// threshold of 2), clean when `targets` is empty.
    fn scanned(file: &str, targets: &[i64]) -> ModelEntry {
        let result = ScanResult {
            verdict: if targets.is_empty() {
                Verdict::Clean
            } else {
                Verdict::Backdoor
            },
            targets: targets.to_vec(),
            statistic: if targets.is_empty() { 1.2 } else { 4.5 },
            threshold: 2.0,
            classes: Vec::new(),
            screen: None,
            untargeted: None,
            clean_samples: 100,
            seconds: 1.0,
        };
        ModelEntry::scanned(file.into(), sha_of(file), "clean.gz[0:100]".into(), result)
    }

    pub fn clean(file: &str) -> ModelEntry {
        scanned(file, &[])
    }

    pub fn backdoor(file: &str, targets: &[i64]) -> ModelEntry {
        scanned(file, targets)
    }

    /// A model that could not be scanned.
    pub fn failed(file: &str) -> ModelEntry {
        ModelEntry::failed(
            file.into(),
            Some(sha_of(file)),
            "node `n0` (Foo): unsupported op".into(),
            0.1,
        )
    }

    /// A made-up sha256 that differs between files of different lengths.
    fn sha_of(file: &str) -> String {
        format!("{:0>64}", file.len())
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{backdoor, clean, failed};
    use super::*;

    fn shard(models: Vec<ModelEntry>, skipped: &[(&str, &str)]) -> ScanReport {
        let skipped = skipped
            .iter()
            .map(|(file, reason)| Skipped {
                file: file.to_string(),
                reason: reason.to_string(),
            })
            .collect();
        ScanReport::new(models, skipped)
    }

    fn files(report: &ScanReport) -> Vec<&str> {
        report.models.iter().map(|m| m.file.as_str()).collect()
    }

    #[test]
    fn merge_sorts_and_keeps_a_model_once() {
        let a = shard(
            vec![clean("c.onnx"), backdoor("a.onnx", &[3])],
            &[("x.txt", "not a model")],
        );
        let b = shard(
            vec![clean("b.onnx"), backdoor("a.onnx", &[3])],
            &[("x.txt", "not a model"), ("w.txt", "not a model")],
        );
        let merged = merge(vec![a, b]).unwrap();
        assert_eq!(files(&merged), ["a.onnx", "b.onnx", "c.onnx"]);
        let skipped: Vec<&str> = merged.skipped.iter().map(|s| s.file.as_str()).collect();
        assert_eq!(skipped, ["w.txt", "x.txt"]);
        assert_eq!(merged.schema, SCHEMA);
    }

    #[test]
    fn merge_keeps_other_contents_and_prefers_a_scan_to_an_error() {
        let mut changed = clean("a.onnx");
        changed.sha256 = Some("f".repeat(64));
        let merged = merge(vec![
            shard(vec![failed("a.onnx")], &[]),
            shard(vec![backdoor("a.onnx", &[1]), changed], &[]),
        ])
        .unwrap();
        assert_eq!(files(&merged), ["a.onnx", "a.onnx"]);
        assert_eq!(merged.models[0].verdict, Verdict::Backdoor);
        assert_eq!(merged.models[1].verdict, Verdict::Clean);
    }

    #[test]
    fn merge_rejects_another_schema() {
        let mut newer = shard(vec![clean("b.onnx")], &[]);
        newer.schema = SCHEMA + 1;
        let err = merge(vec![shard(vec![], &[]), newer]).unwrap_err();
        assert!(
            matches!(err, MergeError::ShardSchema { shard: 1, found } if found == SCHEMA + 1),
            "{err}"
        );
    }

    #[test]
    fn read_report_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        let report = shard(vec![backdoor("m.onnx", &[2])], &[]);
        std::fs::write(&good, serde_json::to_vec(&report).unwrap()).unwrap();
        assert_eq!(files(&read_report(&good).unwrap()), ["m.onnx"]);

        let mut newer = serde_json::to_value(&report).unwrap();
        newer["schema"] = (SCHEMA + 1).into();
        let newer_path = dir.path().join("newer.json");
        std::fs::write(&newer_path, newer.to_string()).unwrap();
        let err = read_report(&newer_path).unwrap_err();
        assert!(matches!(err, MergeError::FileSchema { .. }), "{err}");
        assert!(err.to_string().contains("newer.json"), "{err}");

        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, b"{\"schema\": 1, \"models\": [").unwrap();
        let err = read_report(&broken).unwrap_err();
        assert!(matches!(err, MergeError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("broken.json"), "{err}");

        let err = read_report(dir.path()).unwrap_err();
        assert!(matches!(err, MergeError::NotAFile { .. }), "{err}");
        let err = read_report(&dir.path().join("missing.json")).unwrap_err();
        assert!(err.to_string().contains("missing.json"), "{err}");
    }
}
