//! Resource limits for files nobody vetted.
//!
//! Every size that a file claims (an `.npy` header, an IDX header, an image
//! header, an initializer's dims, an external-data `length`, a node that
//! would build a tensor) is checked against the file's real size where there
//! is one, and against the memory budget, before anything is allocated. The
//! budget bounds one allocation of that kind (and the decoded size of a whole
//! data set), not the process: a model's weights, activations and autograd
//! graph are not counted.
//!
//! The budget is `IBAU_MEMORY_BUDGET` bytes when set (suffixes `K`, `M`,
//! `G`, `T`, in powers of 1024: `IBAU_MEMORY_BUDGET=32G`). Otherwise it is a
//! share ([`MACHINE_SHARE`]) of what this process may still use, the least
//! of:
//! - the memory cgroup's limit less its usage, over the process's cgroup and
//!   its ancestors (cgroup v2 `memory.max` / `memory.current`, v1
//!   `memory.limit_in_bytes` / `memory.usage_in_bytes`): a container's or a
//!   CI runner's limit, which the kernel enforces by killing;
//! - the kernel's `MemAvailable` (`/proc/meminfo`);
//! - the address-space limit (`RLIMIT_AS`, `ulimit -v`) less the address
//!   space already mapped (`VmSize`), and the data-segment limit
//!   (`RLIMIT_DATA`) less `VmData`.
//!
//! A decoded file is held about twice (the bytes as stored and the float
//! tensor), hence half. Where none of these can be read (not Linux), the
//! budget is [`DEFAULT_MEMORY_BUDGET`]; it is never below
//! [`MIN_MEMORY_BUDGET`]. It is measured once, at the first claim.

use std::sync::OnceLock;

/// The memory budget when neither `IBAU_MEMORY_BUDGET` nor the machine
/// tells one: 8 GiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 8 << 30;

/// The share of the memory this process may use that one claim may take:
/// one half (see the module doc).
pub const MACHINE_SHARE: u64 = 2;

/// The smallest budget the machine's figures can set: 64 MiB (a data set of
/// twenty thousand 28x28 images in float32).
pub const MIN_MEMORY_BUDGET: u64 = 64 << 20;

/// Constant folding at import computes a node's output only when it has at
/// most this many elements (16 Mi); larger constants are computed at run
/// time, like any other node.
pub const MAX_FOLDED_ELEMENTS: i64 = 1 << 24;

/// The environment variable that sets the budget.
pub const BUDGET_VARIABLE: &str = "IBAU_MEMORY_BUDGET";

/// An allocation a file asked for that the budget refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{what} would need {} (more than the memory budget of {}, from {}; set {BUDGET_VARIABLE} to change it)", human_bytes(*.bytes), human_bytes(*.budget), budget_origin(origin))]
    OverBudget {
        what: String,
        bytes: u128,
        budget: u64,
        origin: &'static str,
    },
    #[error("{what}: the size overflows")]
    Overflow { what: String },
}

/// The memory budget and where it comes from, measured once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    /// `IBAU_MEMORY_BUDGET`, `the memory cgroup's limit`, `available memory`,
    /// `the address-space limit`, ...
    pub origin: &'static str,
}

/// The memory budget in bytes (see the module doc); an unreadable
/// `IBAU_MEMORY_BUDGET` falls back to the machine's share rather than to
/// no limit.
pub fn memory_budget() -> u64 {
    budget().bytes
}

/// [`memory_budget`] with its origin.
pub fn budget() -> Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        if let Some(bytes) = std::env::var(BUDGET_VARIABLE)
            .ok()
            .and_then(|v| parse_bytes(&v))
        {
            return Budget {
                bytes,
                origin: BUDGET_VARIABLE,
            };
        }
        match machine::available() {
            Some((bytes, origin)) => Budget {
                bytes: (bytes / MACHINE_SHARE).max(MIN_MEMORY_BUDGET),
                origin,
            },
            None => Budget {
                bytes: DEFAULT_MEMORY_BUDGET,
                origin: "the default",
            },
        }
    })
}

/// What the machine lets this process use (Linux only).
pub mod machine {
    use std::path::{Path, PathBuf};

    /// The least of the memory this process may still use, with its origin
    /// (see the module doc of [`crate::limits`]); `None` when nothing is known.
    pub fn available() -> Option<(u64, &'static str)> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let candidates = [
            (cgroup_headroom(), "the memory cgroup's limit"),
            (mem_available(), "available memory"),
            (
                rlimit_headroom(libc::RLIMIT_AS, status_bytes(&status, "VmSize:")),
                "the address-space limit",
            ),
            (
                rlimit_headroom(libc::RLIMIT_DATA, status_bytes(&status, "VmData:")),
                "the data-segment limit",
            ),
        ];
        candidates
            .into_iter()
            .filter_map(|(bytes, origin)| Some((bytes?, origin)))
            .min_by_key(|&(bytes, _)| bytes)
    }

    /// `MemAvailable` of `/proc/meminfo`.
    pub fn mem_available() -> Option<u64> {
        status_bytes(
            &std::fs::read_to_string("/proc/meminfo").ok()?,
            "MemAvailable:",
        )
    }

    /// A `Key:   123 kB` line of a /proc status file, in bytes.
    pub(crate) fn status_bytes(text: &str, key: &str) -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kib: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    }

    /// A resource limit less what is in use; `None` when unlimited.
    fn rlimit_headroom(resource: libc::__rlimit_resource_t, used: Option<u64>) -> Option<u64> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct it is given.
        if unsafe { libc::getrlimit(resource, &mut limit) } != 0
            || limit.rlim_cur == libc::RLIM_INFINITY
        {
            return None;
        }
        Some(limit.rlim_cur.saturating_sub(used.unwrap_or(0)))
    }

    /// The tightest cgroup limit less usage over this process's memory
    /// cgroup and its ancestors; `None` when no limit is set.
    pub fn cgroup_headroom() -> Option<u64> {
        let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mut best: Option<u64> = None;
        for line in membership.lines() {
            // `0::/path` (v2) or `4:memory:/path` (v1).
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next()?, parts.next()?);
            let (root, limit_file, usage_file) = if controllers.is_empty() {
                ("/sys/fs/cgroup", "memory.max", "memory.current")
            } else if controllers.split(',').any(|c| c == "memory") {
                (
                    "/sys/fs/cgroup/memory",
                    "memory.limit_in_bytes",
                    "memory.usage_in_bytes",
                )
            } else {
                continue;
            };
            for folder in ancestors(Path::new(root), path) {
                let Some(limit) = read_number(&folder.join(limit_file)) else {
                    continue;
                };
                // v1 writes "unlimited" as a number near 2^63.
                if limit >= 1 << 60 {
                    continue;
                }
                let used = read_number(&folder.join(usage_file)).unwrap_or(0);
                let headroom = limit.saturating_sub(used);
                best = Some(best.map_or(headroom, |b| b.min(headroom)));
            }
        }
        best
    }

    /// `root/path`, then each of its parents up to `root`.
    fn ancestors(root: &Path, path: &str) -> Vec<PathBuf> {
        let mut folders = vec![root.to_path_buf()];
        let mut current = root.to_path_buf();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
            current.push(part);
            folders.push(current.clone());
        }
        folders
    }

    /// A number in a cgroup file; `None` for `max` or anything unreadable.
    fn read_number(path: &Path) -> Option<u64> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

fn budget_origin(origin: &str) -> String {
    if origin == BUDGET_VARIABLE || origin == "the default" {
        origin.to_string()
    } else {
        format!("half of {origin}")
    }
}

/// Parses `123`, `64K`, `512M`, `8G`, `1T` (powers of 1024, case-insensitive,
/// an optional trailing `B` or `iB`).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let (digits, shift) = match t.chars().last()? {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|&b| b > 0)
}

/// `1.5 GiB`, `300 MiB`, `12 bytes`.
pub fn human_bytes(bytes: impl Into<u128>) -> String {
    let b = bytes.into();
    const UNITS: [(&str, u128); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if b >= size {
            return format!("{:.1} {unit}", b as f64 / size as f64);
        }
    }
    format!("{b} bytes")
}

/// The number of elements of `dims`, refusing negative dims and products
/// that overflow i64.
pub fn element_count(dims: &[i64], what: &str) -> Result<i64, LimitError> {
    dims.iter().try_fold(1i64, |acc, &d| {
        if d < 0 {
            return Err(LimitError::Overflow {
                what: format!("{what} (negative dimension {d})"),
            });
        }
        acc.checked_mul(d).ok_or_else(|| LimitError::Overflow {
            what: what.to_string(),
        })
    })
}

/// Fails when `count` elements of `elem_size` bytes exceed the budget.
pub fn check_elements(count: u128, elem_size: usize, what: &str) -> Result<(), LimitError> {
    check_bytes(count.saturating_mul(elem_size as u128), what)
}

/// Fails when `bytes` exceed the budget.
pub fn check_bytes(bytes: u128, what: &str) -> Result<(), LimitError> {
    let Budget {
        bytes: budget,
        origin,
    } = budget();
    if bytes > budget as u128 {
        return Err(LimitError::OverBudget {
            what: what.to_string(),
            bytes,
            budget,
            origin,
        });
    }
    Ok(())
}

/// Checked element count of `dims` with `elem_size` bytes each, within the
/// budget: what to call before allocating a tensor a file describes.
pub fn check_dims(dims: &[i64], elem_size: usize, what: &str) -> Result<i64, LimitError> {
    let n = element_count(dims, what)?;
    check_elements(n as u128, elem_size, what)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("64k"), Some(64 << 10));
        assert_eq!(parse_bytes("8G"), Some(8 << 30));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("1T"), Some(1 << 40));
        assert_eq!(parse_bytes("0"), None);
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("99999999999T"), None);
    }

    #[test]
    fn dims_are_checked() {
        assert_eq!(element_count(&[2, 3, 4], "t"), Ok(24));
        assert_eq!(element_count(&[], "t"), Ok(1));
        assert!(element_count(&[1 << 62, 4], "t").is_err());
        assert!(element_count(&[-1, 4], "t").is_err());
        let err = check_dims(&[1, 1, 1 << 20, 1 << 20], 4, "input `x`").unwrap_err();
        assert!(err.to_string().contains("input `x`"), "{err}");
        assert!(err.to_string().contains(BUDGET_VARIABLE), "{err}");
    }

    #[test]
    fn the_machine_sets_a_budget() {
        // Linux always tells MemAvailable; the budget, measured once, is at
        // most half of the machine's memory unless the variable is set.
        let (bytes, origin) = machine::available().expect("Linux tells available memory");
        assert!(bytes > 0, "{origin}");
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total = machine::status_bytes(&meminfo, "MemTotal:").unwrap();
        assert!(bytes <= total, "{origin}");
        let b = budget();
        if std::env::var_os(BUDGET_VARIABLE).is_none() {
            assert!(
                b.bytes <= (total / MACHINE_SHARE).max(MIN_MEMORY_BUDGET),
                "{b:?}"
            );
            assert_ne!(b.origin, "the default", "{b:?}");
        }
    }
}
