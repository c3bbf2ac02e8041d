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
//! The budget is `IBAU_MEMORY_BUDGET` bytes (suffixes `K`, `M`, `G`, `T`, in
//! powers of 1024: `IBAU_MEMORY_BUDGET=32G`), [`DEFAULT_MEMORY_BUDGET`] when
//! unset.

use std::sync::OnceLock;

/// The memory budget when `IBAU_MEMORY_BUDGET` is not set: 8 GiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 8 << 30;

/// Constant folding at import computes a node's output only when it has at
/// most this many elements (16 Mi); larger constants are computed at run
/// time, like any other node.
pub const MAX_FOLDED_ELEMENTS: i64 = 1 << 24;

/// The environment variable that sets the budget.
pub const BUDGET_VARIABLE: &str = "IBAU_MEMORY_BUDGET";

/// An allocation a file asked for that the budget refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{what} would need {} (more than the memory budget of {}; set {BUDGET_VARIABLE} to raise it)", human_bytes(*.bytes), human_bytes(*.budget))]
    OverBudget {
        what: String,
        bytes: u128,
        budget: u64,
    },
    #[error("{what}: the size overflows")]
    Overflow { what: String },
}

/// The memory budget in bytes: `IBAU_MEMORY_BUDGET` (read once), else the
/// default. An unreadable value falls back to the default rather than to no
/// limit.
pub fn memory_budget() -> u64 {
    static BUDGET: OnceLock<u64> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var(BUDGET_VARIABLE)
            .ok()
            .and_then(|v| parse_bytes(&v))
            .unwrap_or(DEFAULT_MEMORY_BUDGET)
    })
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
    let budget = memory_budget();
    if bytes > budget as u128 {
        return Err(LimitError::OverBudget {
            what: what.to_string(),
            bytes,
            budget,
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
}
