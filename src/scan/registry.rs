//! Registry runs: which files a scan covers (folders walked, models told
//! apart by content), which clean data and preprocessing each model gets (a
//! manifest), which shard of the list this run takes, and a cache of
//! finished results so that a killed run redoes only the model it was on.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::report::{ModelEntry, Skipped};
use crate::error::{bail, Result};
use crate::torchscript::{self, FileKind};

/// A model file to scan, and how it was recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub kind: FileKind,
}

/// The models under `paths` (files as given; folders walked recursively in
/// name order, symbolic links not followed) and the other files met on the
/// way. A file is a model when its content is a TorchScript archive, or when
/// it is named `*.onnx` and is not a PyTorch archive; everything else found
/// in a folder is skipped with the reason. A file given by name is always a
/// candidate (the loader then says what is wrong with it).
pub fn collect(paths: &[PathBuf]) -> Result<(Vec<Candidate>, Vec<Skipped>)> {
    let mut models = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        // A path given by name is followed (the user named it); what a
        // folder holds is not.
        let meta = std::fs::metadata(path)
            .map_err(|e| crate::Error::Model(format!("`{}`: {e}", path.display())))?;
        if meta.is_dir() {
            walk(path, &mut models, &mut skipped)?;
        } else if !meta.is_file() {
            // A FIFO would block the content check, a device never end.
            skipped.push(Skipped {
                file: path.display().to_string(),
                reason: "not a regular file".into(),
            });
        } else {
            let kind = torchscript::detect(path).unwrap_or(FileKind::Onnx);
            models.push(Candidate {
                path: path.clone(),
                kind,
            });
        }
    }
    Ok((models, skipped))
}

fn walk(dir: &Path, models: &mut Vec<Candidate>, skipped: &mut Vec<Skipped>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| crate::Error::Model(format!("reading folder `{}`: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let skip = |reason: &str| Skipped {
            file: path.display().to_string(),
            reason: reason.to_string(),
        };
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            skipped.push(skip("cannot be read"));
            continue;
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            skipped.push(skip("a symbolic link (not followed)"));
        } else if kind.is_dir() {
            walk(&path, models, skipped)?;
        } else if !kind.is_file() {
            skipped.push(skip("not a regular file"));
        } else {
            match classify(&path) {
                Ok(kind) => models.push(Candidate { path, kind }),
                Err(reason) => skipped.push(skip(&reason)),
            }
        }
    }
    Ok(())
}

/// What a file met in a folder is, or why it is not a model.
fn classify(path: &Path) -> std::result::Result<FileKind, String> {
    let onnx_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    match torchscript::detect(path) {
        Ok(FileKind::TorchScript) => Ok(FileKind::TorchScript),
        Ok(FileKind::Onnx) if onnx_name => Ok(FileKind::Onnx),
        Ok(FileKind::Onnx) => Err("not a model (neither *.onnx nor a TorchScript archive)".into()),
        Ok(other) => Err(format!(
            "a PyTorch {} (holds no runnable graph)",
            match other {
                FileKind::StateDict => "state dict",
                FileKind::PickledModule => "pickled module",
                _ => "legacy pickle",
            }
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// `--shard I/N`: this run takes the models whose path hashes to `I` modulo
/// `N` (0-based), so a model keeps its shard when others are added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let bad = || format!("`{s}` is not a shard: use I/N with 0 <= I < N (e.g. 0/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u64, u64) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count || count > 1 << 20 {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether `path` belongs to this shard.
    pub fn takes(&self, path: &Path) -> bool {
        let digest = Sha256::digest(path.to_string_lossy().as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(head) % self.count == self.index
    }
}

/// Per-model settings from a manifest (or the command line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Clean labelled images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean: Option<PathBuf>,
    /// `A:B` of the clean images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_range: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mean: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub std: Vec<f64>,
    /// `nchw`, `nhwc`, `flat` or `hw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

impl Settings {
    /// `self` with the fields `other` sets replaced.
    pub fn overridden_by(&self, other: &Settings) -> Settings {
        Settings {
            clean: other.clean.clone().or_else(|| self.clean.clone()),
            clean_range: other
                .clean_range
                .clone()
                .or_else(|| self.clean_range.clone()),
            mean: if other.mean.is_empty() {
                self.mean.clone()
            } else {
                other.mean.clone()
            },
            std: if other.std.is_empty() {
                self.std.clone()
            } else {
                other.std.clone()
            },
            layout: other.layout.clone().or_else(|| self.layout.clone()),
        }
    }
}

/// A manifest: defaults, and settings per model path (relative to the
/// manifest's folder, as are the `clean` paths in it).
///
/// ```json
/// {"defaults": {"clean": "data/fashion", "clean_range": "0:1000"},
///  "models": {"vendor/resnet.onnx": {"mean": [0.5], "std": [0.25]}}}
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub defaults: Settings,
    #[serde(default)]
    pub models: BTreeMap<PathBuf, Settings>,
    /// The manifest's folder (set when read).
    #[serde(skip)]
    pub base: PathBuf,
}

impl Manifest {
    /// Reads a manifest; relative paths in it are resolved against its folder.
    pub fn read(path: &Path) -> Result<Manifest> {
        let bytes = super::merge::read_bytes(path, "the manifest")?;
        let mut manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| crate::Error::Model(format!("manifest `{}`: {e}", path.display())))?;
        let base = crate::outputs::parent_folder(path);
        let resolve = |s: &mut Settings| {
            if let Some(c) = &s.clean {
                s.clean = Some(base.join(c));
            }
        };
        resolve(&mut manifest.defaults);
        manifest.models = std::mem::take(&mut manifest.models)
            .into_iter()
            .map(|(p, mut s)| {
                resolve(&mut s);
                (base.join(p), s)
            })
            .collect();
        manifest.base = base;
        Ok(manifest)
    }

    /// The settings of `model`: the manifest's defaults, then its entry.
    pub fn settings(&self, model: &Path) -> Settings {
        self.defaults.overridden_by(&self.entry(model))
    }

    /// The manifest's entry for `model` (empty when it has none).
    pub fn entry(&self, model: &Path) -> Settings {
        self.models
            .iter()
            .find(|(p, _)| same_file(p, model))
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// Manifest entries that name no scanned model (likely typos).
    pub fn unmatched<'a>(&'a self, models: &[Candidate]) -> Vec<&'a Path> {
        self.models
            .keys()
            .filter(|p| !models.iter().any(|m| same_file(p, &m.path)))
            .map(PathBuf::as_path)
            .collect()
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |e: std::io::Error| crate::Error::Model(format!("reading `{}`: {e}", path.display()));
    let mut file = crate::inputs::open_regular(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `--cache DIR`: one JSON file per finished model, named by the sha256 of
/// the model's content, the clean data's content and every setting that
/// changes the result. Entries are written atomically (a temporary file
/// renamed into place), so a killed run leaves either a whole entry or none.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir` (made if missing; its parent must exist).
    pub fn open(dir: &Path) -> Result<Cache> {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("--cache `{}` is not a folder", dir.display()),
            Err(_) => std::fs::create_dir(dir).map_err(|e| {
                crate::Error::Model(format!("--cache: making `{}`: {e}", dir.display()))
            })?,
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    /// The cache key of a model scanned with `fingerprint` (what the data
    /// and settings are).
    pub fn key(model_sha256: &str, fingerprint: &str) -> String {
        let mut h = Sha256::new();
        h.update(model_sha256.as_bytes());
        h.update([0]);
        h.update(fingerprint.as_bytes());
        hex(&h.finalize())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The cached entry, if any; an unreadable entry counts as none.
    pub fn get(&self, key: &str) -> Option<ModelEntry> {
        let bytes = super::merge::read_bytes(&self.path(key), "a cache entry").ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores `entry` under `key`, atomically.
    pub fn put(&self, key: &str, entry: &ModelEntry) -> Result<()> {
        let text = serde_json::to_vec_pretty(entry)
            .map_err(|e| crate::Error::Model(format!("--cache: {e}")))?;
        Ok(crate::onnx::write_atomically(&self.path(key), &text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_every_path_exactly_once() {
        let paths: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("m/{i}.onnx")))
            .collect();
        let shards: Vec<Shard> = (0..3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for p in &paths {
            assert_eq!(shards.iter().filter(|s| s.takes(p)).count(), 1, "{p:?}");
        }
        let sizes: Vec<usize> = shards
            .iter()
            .map(|s| paths.iter().filter(|p| s.takes(p)).count())
            .collect();
        assert!(sizes.iter().all(|&n| n > 40), "{sizes:?}");
    }

    #[test]
    fn a_fifo_given_by_name_is_skipped_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.onnx");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (models, skipped) = collect(&[fifo]).unwrap();
        assert!(models.is_empty());
        assert_eq!(skipped[0].reason, "not a regular file");
    }

    #[test]
    fn bad_shards_are_refused() {
        for s in ["", "1", "2/2", "0/0", "a/b", "-1/2", "1/2/3"] {
            assert!(s.parse::<Shard>().is_err(), "{s}");
        }
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
    }

    #[test]
    fn folders_are_walked_in_order_and_other_files_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("b");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("z.onnx"), b"\x08\x07").unwrap();
        std::fs::write(sub.join("a.onnx"), b"\x08\x07").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        std::fs::write(dir.path().join("a.onnx.data"), b"\0\0\0\0").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.onnx")).unwrap();
        let (models, skipped) = collect(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = models
            .iter()
            .map(|m| m.path.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(names, [PathBuf::from("b/a.onnx"), PathBuf::from("z.onnx")]);
        let skipped: Vec<_> = skipped
            .iter()
            .map(|s| {
                (
                    s.file.rsplit('/').next().unwrap().to_string(),
                    s.reason.clone(),
                )
            })
            .collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped
            .iter()
            .any(|(f, r)| f == "link.onnx" && r.contains("symbolic link")));
    }

    #[test]
    fn manifest_settings_override_defaults_and_resolve_paths() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("manifest.json");
        std::fs::write(
            &m,
            r#"{"defaults": {"clean": "data", "clean_range": "0:100"},
                "models": {"x.onnx": {"mean": [0.5], "std": [0.25], "clean_range": "0:10"}}}"#,
        )
        .unwrap();
        let manifest = Manifest::read(&m).unwrap();
        let s = manifest.settings(&dir.path().join("x.onnx"));
        assert_eq!(s.clean, Some(dir.path().join("data")));
        assert_eq!(s.clean_range.as_deref(), Some("0:10"));
        assert_eq!(s.mean, [0.5]);
        let other = manifest.settings(&dir.path().join("y.onnx"));
        assert_eq!(other.clean_range.as_deref(), Some("0:100"));
        assert!(other.mean.is_empty());
        std::fs::write(&m, r#"{"model": {}}"#).unwrap();
        let e = Manifest::read(&m).unwrap_err().to_string();
        assert!(
            e.contains("manifest.json") && e.contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn cache_entries_are_written_whole_and_links_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let entry = ModelEntry::failed("m.onnx".into(), None, "boom".into(), 1.0);
        let key = Cache::key("abc", "settings");
        assert!(cache.get(&key).is_none());
        // A link planted at the entry's path points at a file to keep.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(
            &victim,
            dir.path().join("cache").join(format!("{key}.json")),
        )
        .unwrap();
        cache.put(&key, &entry).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        // A FIFO planted as an entry is a miss, not a wait.
        let other = Cache::key("fifo", "settings");
        let fifo = dir.path().join("cache").join(format!("{other}.json"));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(cache.get(&other).is_none());
        assert_eq!(cache.get(&key).unwrap().error.as_deref(), Some("boom"));
        assert_ne!(Cache::key("abc", "settings"), Cache::key("abd", "settings"));
    }
}
