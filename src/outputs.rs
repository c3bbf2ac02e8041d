//! Where a command may write, decided before any work.
//!
//! A registry runs ibau unattended on files nobody vetted, so the output
//! paths are checked once, up front, against every file the command reads:
//! the model, its external-data files, the data sets (with the label files
//! found beside them) and trigger files, by canonical path and by inode (a
//! hard link is the same file). Outputs must be regular files or not exist
//! yet (never a device node, a FIFO or a directory), their folders must
//! exist and be writable (the staging folder is made here, so a read-only
//! folder fails before training), and the model, its external-data
//! companion and the report are three different files.
//!
//! The staging folder `.ibau-staging-PID-NONCE` beside the output is where
//! the model is written and checked before it is moved into place, by
//! renames: an output is never half-written at its final name. The run that
//! made a staging folder holds an exclusive `flock` on it, and every
//! temporary file (`.NAME.ibau-tmp-PID`) is locked the same way while it is
//! written. The kernel drops a lock when its process dies, however it dies
//! (SIGKILL, OOM killer): a staging folder or temporary file whose lock can
//! be taken belongs to a dead run, whatever the PID in its name says (a PID
//! is reused, and differs across containers). Such leftovers are removed by
//! the next run that writes into the same folder ([`remove_stale`]), which
//! says so.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why an output path is refused.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("refusing to write `{path}`: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("cannot write in folder `{folder}` (for `{path}`): {source}")]
    Folder {
        folder: PathBuf,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The files a command reads: outputs may be none of them.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    files: Vec<(PathBuf, &'static str)>,
}

impl Inputs {
    /// Records `path` (a file or a folder) as read, described as `what`
    /// ("the input model", "a --clean file", ...).
    pub fn add(&mut self, path: impl Into<PathBuf>, what: &'static str) -> &mut Self {
        self.files.push((path.into(), what));
        self
    }

    /// Records every path of `paths` as `what`.
    pub fn extend<P: Into<PathBuf>>(
        &mut self,
        paths: impl IntoIterator<Item = P>,
        what: &'static str,
    ) -> &mut Self {
        for p in paths {
            self.add(p, what);
        }
        self
    }

    /// The input that `output` would overwrite (or write into, for a folder).
    pub fn clash(&self, output: &Path) -> Option<&'static str> {
        let out = Identity::of(output);
        self.files
            .iter()
            .find(|(input, _)| out.clashes_with(&Identity::of(input)))
            .map(|(_, what)| *what)
    }
}

/// What a path is: its canonical form (the parent's, plus the file name, for
/// a file not yet there) and, when it exists, its device and inode.
#[derive(Debug)]
struct Identity {
    canonical: Option<PathBuf>,
    inode: Option<(u64, u64)>,
    is_dir: bool,
}

impl Identity {
    fn of(path: &Path) -> Identity {
        let canonical = path.canonicalize().ok().or_else(|| {
            let parent = parent_folder(path).canonicalize().ok()?;
            Some(parent.join(path.file_name()?))
        });
        let meta = std::fs::metadata(path).ok();
        Identity {
            canonical,
            inode: meta.as_ref().map(|m| (m.dev(), m.ino())),
            is_dir: meta.is_some_and(|m| m.is_dir()),
        }
    }

    fn clashes_with(&self, input: &Identity) -> bool {
        let same_inode = self.inode.is_some() && self.inode == input.inode;
        let same_path = self.canonical.is_some() && self.canonical == input.canonical;
        let inside = input.is_dir
            && matches!((&self.canonical, &input.canonical), (Some(o), Some(i)) if o.starts_with(i));
        same_inode || same_path || inside
    }
}

/// Checks the outputs of a command that writes no model (each a file, with
/// the option that names it): each against `inputs` and the others, like
/// [`OutputPlan::new`], and each folder writable. Output folders (`folders`)
/// must be folders or not exist yet, and may not be, or lie inside, a
/// folder the command reads. Returns what [`remove_stale`] removed from the
/// files' folders.
pub fn check_outputs(
    inputs: &Inputs,
    files: &[(&Path, &str)],
    folders: &[(&Path, &str)],
) -> Result<Vec<PathBuf>, OutputError> {
    let refuse = |path: &Path, reason: String| OutputError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    for (i, (path, option)) in files.iter().enumerate() {
        check_target(path)?;
        if let Some(what) = inputs.clash(path) {
            return Err(refuse(
                path,
                format!("{option}: it is {what}; choose another path"),
            ));
        }
        for (other, other_option) in &files[..i] {
            if Identity::of(path).clashes_with(&Identity::of(other)) {
                return Err(refuse(
                    path,
                    format!("{option} and {other_option} name the same file"),
                ));
            }
        }
        probe_writable(path)?;
    }
    for (dir, option) in folders {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(refuse(dir, format!("{option}: it is not a folder"))),
            Err(_) if parent_folder(dir).is_dir() => {}
            Err(_) => {
                return Err(refuse(
                    dir,
                    format!(
                        "{option}: folder `{}` does not exist",
                        parent_folder(dir).display()
                    ),
                ))
            }
        }
        if let Some(what) = inputs.clash(dir) {
            return Err(refuse(
                dir,
                format!("{option}: it is {what}; choose another folder"),
            ));
        }
    }
    let mut removed = Vec::new();
    let mut cleaned: Vec<PathBuf> = Vec::new();
    for (path, _) in files {
        let folder = parent_folder(path);
        if !cleaned.iter().any(|c| same_folder(c, &folder)) {
            removed.extend(remove_stale(&folder));
            cleaned.push(folder);
        }
    }
    Ok(removed)
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The folder a path lives in (`.` for a bare file name).
pub fn parent_folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The checked output paths of a command that writes a model (and maybe a
/// report), with the staging folder already made. Dropping it removes the
/// staging folder.
#[derive(Debug)]
pub struct OutputPlan {
    pub model: PathBuf,
    /// `<model file name>.data` beside the model: where external data goes.
    pub companion: PathBuf,
    pub report: Option<PathBuf>,
    /// What [`remove_stale`] removed from the output folders.
    pub removed: Vec<PathBuf>,
    staging: PathBuf,
    /// The staging folder, opened and locked while this plan lives.
    _lock: Option<std::fs::File>,
}

impl OutputPlan {
    /// Checks `model` and `report` against `inputs` and each other, checks
    /// their folders, removes stale staging folders, and makes this run's.
    pub fn new(
        inputs: &Inputs,
        model: &Path,
        report: Option<&Path>,
    ) -> Result<OutputPlan, OutputError> {
        let refuse = |path: &Path, reason: String| OutputError::Refused {
            path: path.to_path_buf(),
            reason,
        };
        let name = model
            .file_name()
            .ok_or_else(|| refuse(model, "the output path has no file name".into()))?;
        let companion = model.with_file_name(format!("{}.data", name.to_string_lossy()));
        let mut outputs = vec![(model, "-o"), (companion.as_path(), "-o's external data")];
        outputs.extend(report.map(|r| (r, "--report")));
        for (path, _) in &outputs {
            check_target(path)?;
            if let Some(what) = inputs.clash(path) {
                return Err(refuse(
                    path,
                    format!("it is {what}; choose another output path"),
                ));
            }
        }
        if let Some(report) = report {
            for (path, what) in &outputs[..2] {
                if Identity::of(report).clashes_with(&Identity::of(path)) {
                    return Err(refuse(
                        report,
                        format!("--report would overwrite {what}; choose another report path"),
                    ));
                }
            }
            probe_writable(report)?;
        }
        let folder = parent_folder(model);
        let mut removed = remove_stale(&folder);
        if let Some(report) = report {
            let report_folder = parent_folder(report);
            if !same_folder(&report_folder, &folder) {
                removed.extend(remove_stale(&report_folder));
            }
        }
        let staging = folder.join(format!(
            "{STAGING_PREFIX}{}-{:016x}",
            std::process::id(),
            nonce()
        ));
        std::fs::create_dir(&staging).map_err(|source| OutputError::Folder {
            folder: folder.clone(),
            path: model.to_path_buf(),
            source,
        })?;
        // Held until the plan is dropped or the process dies. A file system
        // without flock leaves the folder unlocked: a concurrent run may then
        // take it for a dead run's, so this is best effort there.
        let lock = std::fs::File::open(&staging)
            .ok()
            .filter(|f| f.try_lock().is_ok());
        Ok(OutputPlan {
            model: model.to_path_buf(),
            companion,
            report: report.map(Path::to_path_buf),
            removed,
            staging,
            _lock: lock,
        })
    }

    /// Checks the outputs again against inputs found after the plan was
    /// made (the external-data files a model names).
    pub fn recheck(&self, inputs: &Inputs) -> Result<(), OutputError> {
        let outputs = [
            Some(&self.model),
            Some(&self.companion),
            self.report.as_ref(),
        ];
        for path in outputs.into_iter().flatten() {
            if let Some(what) = inputs.clash(path) {
                return Err(OutputError::Refused {
                    path: path.clone(),
                    reason: format!("it is {what}; choose another output path"),
                });
            }
        }
        Ok(())
    }

    /// This run's staging folder, beside the model output.
    pub fn staging(&self) -> &Path {
        &self.staging
    }
}

impl Drop for OutputPlan {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

const STAGING_PREFIX: &str = ".ibau-staging-";

/// What the name of a temporary file of [`write_atomic`] holds, after the
/// output's name: `.report.json.ibau-tmp-PID`.
pub const TEMPORARY_MARKER: &str = ".ibau-tmp-";

/// A random number for names (std's per-process hash keys, drawn from the
/// operating system).
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// An output must be a regular file (or a link to one, which is replaced,
/// not followed) or not exist yet, in a folder that exists.
fn check_target(path: &Path) -> Result<(), OutputError> {
    let refuse = |reason: &str| OutputError::Refused {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if path.as_os_str().is_empty() {
        return Err(refuse("the path is empty"));
    }
    let folder = parent_folder(path);
    match std::fs::metadata(&folder) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(refuse(&format!("`{}` is not a folder", folder.display()))),
        Err(_) => {
            return Err(refuse(&format!(
                "folder `{}` does not exist",
                folder.display()
            )))
        }
    }
    // Follow a link for the kind of what it points at: renaming onto the
    // link replaces the link, but a link to a device says the user meant it.
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "it is a directory"
    } else if kind.is_char_device() || kind.is_block_device() {
        "it is a device, not a regular file"
    } else if kind.is_fifo() {
        "it is a FIFO, not a regular file"
    } else if kind.is_socket() {
        "it is a socket, not a regular file"
    } else {
        "it is not a regular file"
    };
    Err(refuse(what))
}

/// Makes and removes the temporary file that writing `path` atomically will
/// use, so that a folder ibau cannot write in fails before the work.
fn probe_writable(path: &Path) -> Result<(), OutputError> {
    let tmp = crate::onnx::temporary_path(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .map_err(|source| OutputError::Folder {
            folder: parent_folder(path),
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` so that readers never see a partly written
/// file: into a new temporary file beside it, made with `O_EXCL` (a file or
/// link planted at that name is never written through), then renamed over
/// `path` (a link at `path` is replaced, never followed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    use std::io::Write;
    let fail = |source| OutputError::Write {
        path: path.to_path_buf(),
        source,
    };
    let (tmp, mut file) = create_temporary(path).map_err(fail)?;
    // Locked while it is written: a later run tells a dead run's leftover
    // from a live one by this lock (see the module doc).
    let _ = file.try_lock();
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}

/// A new file at [`crate::onnx::temporary_path`] of `path`, or at that name
/// with a counter when something is already there.
fn create_temporary(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let base = crate::onnx::temporary_path(path);
    let mut taken = None;
    for k in 0..16 {
        let mut name = base.clone().into_os_string();
        if k > 0 {
            name.push(format!(".{k}"));
        }
        let tmp = PathBuf::from(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => taken = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(taken.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Removes what runs that died left in `folder`: staging folders
/// (`.ibau-staging-*`) and temporary files (`.*.ibau-tmp-*`) whose lock can
/// be taken, so no live process holds it (see the module doc). A staging
/// folder of the older `.ibau-staging-PID` form, which was never locked, is
/// removed only when no process has that PID. Links are never followed and
/// nothing else is touched. Returns what was removed.
pub fn remove_stale(folder: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(folder) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        // The entry itself, never what a link points at.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if let Some(rest) = name.strip_prefix(STAGING_PREFIX) {
            let (pid, nonce) = rest.split_once('-').unwrap_or((rest, ""));
            let digits = |t: &str, hex: bool| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_digit() || (hex && b.is_ascii_hexdigit()))
            };
            if !kind.is_dir() || !digits(pid, false) || !(nonce.is_empty() || digits(nonce, true)) {
                continue;
            }
            // Taking the lock proves the owner is gone; it is held while
            // the folder is removed.
            let Some(_lock) = unlocked(&path) else {
                continue;
            };
            let unlocked_form = nonce.is_empty();
            if unlocked_form && (pid == std::process::id().to_string() || pid_alive(pid)) {
                continue;
            }
            if std::fs::remove_dir_all(&path).is_ok() {
                removed.push(path);
            }
        } else if name.starts_with('.') && name.contains(TEMPORARY_MARKER) && kind.is_file() {
            let Some(_lock) = unlocked(&path) else {
                continue;
            };
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed.sort();
    removed
}

/// `path` opened (without following a link or blocking) with its exclusive
/// lock taken; `None` when a live process holds it or it cannot be opened.
fn unlocked(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    file.try_lock().ok()?;
    Some(file)
}

/// Whether a process with this PID exists (where /proc tells; assumed alive
/// where it does not).
fn pid_alive(pid: &str) -> bool {
    !Path::new("/proc/self").exists() || Path::new("/proc").join(pid).exists()
}

/// One line for a person: what [`remove_stale`] removed, or `None`.
pub fn describe_removed(removed: &[PathBuf]) -> Option<String> {
    let first = removed.first()?;
    let names: Vec<String> = removed
        .iter()
        .map(|p| {
            p.file_name().map_or_else(String::new, |n| {
                n.to_string_lossy().escape_debug().to_string()
            })
        })
        .collect();
    Some(format!(
        "removed {} {} of killed ibau runs in `{}`: {}",
        removed.len(),
        if removed.len() == 1 {
            "leftover"
        } else {
            "leftovers"
        },
        parent_folder(first).display(),
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_that_are_inputs_or_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("a.onnx");
        let data = dir.path().join("vgg.onnx.data");
        std::fs::write(&model, b"m").unwrap();
        std::fs::write(&data, b"d").unwrap();
        let mut inputs = Inputs::default();
        inputs.add(&model, "the input model");
        inputs.add(&data, "an external-data file of the input model");
        // The companion of -o vgg.onnx is the input's data file.
        let err = OutputPlan::new(&inputs, &dir.path().join("vgg.onnx"), None).unwrap_err();
        assert!(err.to_string().contains("external-data"), "{err}");
        // A hard link to the input is the input.
        let link = dir.path().join("hard.onnx");
        std::fs::hard_link(&model, &link).unwrap();
        assert!(OutputPlan::new(&inputs, &link, None).is_err());
        // Devices, directories, missing folders.
        assert!(OutputPlan::new(&inputs, Path::new("/dev/null"), None).is_err());
        assert!(OutputPlan::new(&inputs, dir.path(), None).is_err());
        assert!(OutputPlan::new(&inputs, &dir.path().join("no/such/out.onnx"), None).is_err());
        // Report onto the model.
        let out = dir.path().join("out.onnx");
        assert!(OutputPlan::new(&inputs, &out, Some(&out)).is_err());
        assert!(OutputPlan::new(&inputs, &out, Some(&dir.path().join("out.onnx.data"))).is_err());
        assert!(OutputPlan::new(&inputs, &out, Some(&dir.path().join("missing/r.json"))).is_err());
        // A good plan makes its staging folder and removes it when dropped.
        let plan = OutputPlan::new(&inputs, &out, Some(&dir.path().join("r.json"))).unwrap();
        let staging = plan.staging().to_path_buf();
        assert!(staging.is_dir());
        drop(plan);
        assert!(!staging.exists());
        assert_eq!(std::fs::read(&model).unwrap(), b"m");
        assert_eq!(std::fs::read(&data).unwrap(), b"d");
    }

    #[test]
    fn outputs_inside_a_data_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("cat")).unwrap();
        let mut inputs = Inputs::default();
        inputs.add(&images, "a --clean folder");
        assert!(OutputPlan::new(&inputs, &images.join("cat/out.onnx"), None).is_err());
        assert!(OutputPlan::new(&inputs, &dir.path().join("out.onnx"), None).is_ok());
    }

    #[test]
    fn stale_staging_folders_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // PID 4194304 is above Linux's largest pid_max: never alive.
        let stale = dir.path().join(".ibau-staging-4194304");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("out.onnx"), b"half").unwrap();
        let plan = OutputPlan::new(&Inputs::default(), &dir.path().join("out.onnx"), None).unwrap();
        assert!(!stale.exists());
        assert_eq!(plan.removed, vec![stale.clone()]);
        // A live plan's folder is locked: another plan (here, in the same
        // process, as a concurrent run would) leaves it alone.
        let live = plan.staging().to_path_buf();
        let other = OutputPlan::new(&Inputs::default(), &dir.path().join("b.onnx"), None).unwrap();
        assert!(live.is_dir());
        assert!(other.removed.is_empty(), "{:?}", other.removed);
        // An old-form folder of a live process (this one) stays.
        let ours = dir
            .path()
            .join(format!(".ibau-staging-{}", std::process::id()));
        std::fs::create_dir(&ours).unwrap();
        // A temporary file of a dead run goes; one being written stays;
        // a user's look-alike that is a link is never touched.
        let dead_tmp = dir.path().join(".out.onnx.ibau-tmp-4194304");
        std::fs::write(&dead_tmp, b"half").unwrap();
        let live_tmp = dir.path().join(".r.json.ibau-tmp-1");
        let held = std::fs::File::create(&live_tmp).unwrap();
        held.lock().unwrap();
        let link = dir.path().join(".x.ibau-tmp-2");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        let removed = remove_stale(dir.path());
        assert_eq!(removed, vec![dead_tmp]);
        assert!(ours.is_dir() && live_tmp.exists() && link.is_symlink());
        let line = describe_removed(&plan.removed).unwrap();
        assert!(
            line.contains("removed 1 leftover of") && line.contains(".ibau-staging-4194304"),
            "{line}"
        );
        drop((plan, other, held));
        std::fs::remove_dir(&ours).unwrap();
        std::fs::remove_file(&live_tmp).unwrap();
        assert!(remove_stale(dir.path()).is_empty());
    }

    #[test]
    fn atomic_writes_replace_links_and_never_follow_them() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, b"keep").unwrap();
        let out = dir.path().join("out.png");
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        write_atomic(&out, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&out)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&out).unwrap(), b"new");

        // A link planted at the temporary name is not written through.
        let planted = crate::onnx::temporary_path(&out);
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomic(&out, b"newer").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&out).unwrap(), b"newer");
        assert!(std::fs::symlink_metadata(&planted).is_ok());

        // A folder that is not there fails with the path named.
        let e = write_atomic(&dir.path().join("no/such/out.png"), b"x").unwrap_err();
        assert!(e.to_string().contains("no/such/out.png"), "{e}");
    }
}
