//! Conformance against the ONNX backend test data (Debian package
//! `libonnx-testdata`, installed by tools/setup.sh under
//! /usr/share/libonnx-testdata/data).
//!
//! Every test of the folders `node`, `pytorch-converted`, `pytorch-operator` and
//! `simple` is a `model.onnx` with `test_data_set_N/{input_K,output_K}.pb`. Each
//! test is one of:
//! - skipped (unsupported): the registry lacks one of its ops (or opsets);
//! - skipped (non-tensor): a graph input or output is a sequence, an optional,
//!   a map or a string tensor, which our graphs do not carry;
//! - run: imported with [`Registry::standard`] in the production float kind
//!   (f32), every data set run through [`Graph::forward`] with autograd on (as in
//!   training), and every output compared with the expected one: float outputs
//!   within `ATOL + RTOL * |expected|` after converting both to f64, integer and
//!   bool outputs exactly, shapes exactly. A panic counts as a failure.
//!
//! tests/conformance_allowlist.txt lists (`folder/test_name`, one per line) the
//! tests that must pass; one that does not is a regression and fails the test.
//! Tests that pass but are not listed are reported as newly passing.
//!
//! Environment:
//! - `IBAU_UPDATE_ALLOWLIST=1` rewrites the allowlist with exactly the tests that
//!   pass now (sorted);
//! - `IBAU_CONFORMANCE_FILTER=text` runs only the tests whose `folder/test_name`
//!   contains `text` (the allowlist is then checked for those tests only);
//! - `IBAU_ONNX_TESTDATA=dir` reads the data from `dir` instead.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use ibau::graph::ops::Registry;
use ibau::graph::{unsupported_ops, Graph, ImportOptions, ValueInfo};
use ibau::onnx::proto::{type_proto, TensorProto, ValueInfoProto};
use ibau::onnx::{tensor_from_proto, DataType, Model};
use prost::Message;
use tch::{Kind, Tensor};

const DEFAULT_DATA_ROOT: &str = "/usr/share/libonnx-testdata/data";
const FOLDERS: [&str; 4] = ["node", "pytorch-converted", "pytorch-operator", "simple"];
/// Float tolerance: |actual - expected| <= ATOL + RTOL * |expected|. The graph
/// computes in f32 while many expected outputs were computed in f64 by numpy.
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-3;
const ALLOWLIST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/conformance_allowlist.txt"
);

/// What happened to one test.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Pass,
    /// One-line reason.
    Fail(String),
    /// The distinct unsupported op types (with opset when the op exists at
    /// another opset).
    Unsupported(Vec<String>),
    /// Why the test's data cannot be fed to or read from our graphs.
    NonTensor(String),
}

struct CaseResult {
    folder: &'static str,
    name: String,
    outcome: Outcome,
    elapsed: Duration,
}

impl CaseResult {
    fn id(&self) -> String {
        format!("{}/{}", self.folder, self.name)
    }
}

fn data_root() -> PathBuf {
    std::env::var_os("IBAU_ONNX_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_ROOT))
}

/// The data root, or a panic that says how to get the data: a conformance
/// test that passes without data would be a lie.
fn require_data_root() -> PathBuf {
    let root = data_root();
    if !root.join("node").is_dir() {
        panic!(
            "the ONNX backend test data is missing: {} has no `node` folder. \
             Run tools/setup.sh (it installs the Debian package libonnx-testdata), \
             or point IBAU_ONNX_TESTDATA at a copy of its data folder.",
            root.display()
        );
    }
    root
}

/// The test folders of `folder`, sorted by name.
fn list_tests(root: &Path, folder: &str) -> Vec<(String, PathBuf)> {
    let dir = root.join(folder);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut tests: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    tests.sort();
    tests
}

// --- Panics ---------------------------------------------------------------

thread_local! {
    /// Set while this thread runs a test case: the panic hook then records the
    /// message instead of printing it.
    static CAPTURED_PANIC: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that stays quiet on threads running a case and
/// delegates to the previous hook everywhere else (other tests of the binary).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let captured = CAPTURED_PANIC.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let message = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(non-string payload)".into());
                        let at = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        *slot = Some(format!("{message}{at}"));
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into a failure with the panic's message.
fn catch_panic(f: impl FnOnce() -> Outcome) -> Outcome {
    install_panic_hook();
    CAPTURED_PANIC.with(|c| *c.borrow_mut() = Some(None));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let captured = CAPTURED_PANIC.with(|c| c.borrow_mut().take()).flatten();
    match result {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Fail(format!(
            "panic: {}",
            captured.unwrap_or_else(|| "(no message)".into())
        )),
    }
}

// --- One test ---------------------------------------------------------------

/// Messages on one line, so that the failure list has one line per test.
fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Why a declared graph input or output cannot be a tensor of our graphs.
fn non_tensor_reason(v: &ValueInfoProto) -> Option<String> {
    let what = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            let dtype = DataType(t.elem_type());
            if dtype.kind().is_some() {
                return None;
            }
            format!("{dtype} tensor")
        }
        Some(type_proto::Value::SequenceType(_)) => "sequence".into(),
        Some(type_proto::Value::OptionalType(_)) => "optional".into(),
        Some(type_proto::Value::MapType(_)) => "map".into(),
        Some(type_proto::Value::SparseTensorType(_)) => "sparse tensor".into(),
        // No type: leave it to the data files to tell.
        None => return None,
        #[allow(unreachable_patterns)]
        Some(_) => "non-tensor type".into(),
    };
    Some(format!("`{}` is a {what}", v.name()))
}

/// Reads a data file; `declared` is the element type the graph declares for
/// the value, when it declares one.
fn read_tensor(path: &Path, declared: Option<DataType>) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut proto = TensorProto::decode(bytes.as_slice())
        .map_err(|e| format!("{}: not a TensorProto ({e})", path.display()))?;
    // The test data of older ONNX releases stores bfloat16 values as their
    // uint16 bit patterns.
    if declared == Some(DataType::BFLOAT16) && DataType(proto.data_type()) == DataType::UINT16 {
        proto.data_type = Some(DataType::BFLOAT16.0);
    }
    tensor_from_proto(&proto).map_err(|e| format!("{}: {e}", path.display()))
}

/// The element type a graph input or output declares.
fn declared_type(v: Option<&ValueInfo>) -> Option<DataType> {
    v.map(|v| v.data_type).filter(|d| *d != DataType::UNDEFINED)
}

/// `prefix_0.pb`, `prefix_1.pb`, ... in `dir`, in order.
fn numbered_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    (0..)
        .map(|k| dir.join(format!("{prefix}_{k}.pb")))
        .take_while(|p| p.is_file())
        .collect()
}

fn test_data_sets(dir: &Path) -> Vec<PathBuf> {
    let mut sets: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let n = name.strip_prefix("test_data_set_")?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    sets.into_iter().map(|(_, p)| p).collect()
}

fn is_float_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    )
}

fn to_f64s(t: &Tensor) -> Result<Vec<f64>, String> {
    let flat = t
        .f_detach()
        .and_then(|t| t.f_to_device(tch::Device::Cpu))
        .and_then(|t| t.f_to_kind(Kind::Double))
        .and_then(|t| t.f_flatten(0, -1))
        .map_err(|e| e.to_string())?;
    Vec::<f64>::try_from(&flat).map_err(|e| e.to_string())
}

fn to_i64s(t: &Tensor) -> Result<Vec<i64>, String> {
    let flat = t
        .f_to_device(tch::Device::Cpu)
        .and_then(|t| t.f_to_kind(Kind::Int64))
        .and_then(|t| t.f_flatten(0, -1))
        .map_err(|e| e.to_string())?;
    Vec::<i64>::try_from(&flat).map_err(|e| e.to_string())
}

/// Compares one output; `Err` says how it differs. Float expectations are
/// first rounded to `float_kind`, the kind the graph computes in: an f32 graph
/// cannot hold an f64 value beyond the f32 range (some pytorch-operator tests
/// hold uninitialised f64 memory: 1e223 next to subnormals).
fn compare(expected: &Tensor, actual: &Tensor, float_kind: Kind) -> Result<(), String> {
    let (e_kind, a_kind) = (expected.kind(), actual.kind());
    if expected.size() != actual.size() {
        return Err(format!(
            "shape mismatch: expected {:?}, got {:?}",
            expected.size(),
            actual.size()
        ));
    }
    let kind_ok = if is_float_kind(e_kind) {
        is_float_kind(a_kind)
    } else if e_kind == Kind::Bool {
        a_kind == Kind::Bool
    } else {
        !is_float_kind(a_kind) && a_kind != Kind::Bool
    };
    if !kind_ok {
        return Err(format!(
            "element type mismatch: expected {e_kind:?}, got {a_kind:?}"
        ));
    }
    if is_float_kind(e_kind) {
        let rounded = expected.f_to_kind(float_kind).map_err(|e| e.to_string())?;
        let (e, a) = (to_f64s(&rounded)?, to_f64s(actual)?);
        let mut bad = 0usize;
        let mut worst: Option<(usize, f64)> = None;
        for (i, (&e, &a)) in e.iter().zip(&a).enumerate() {
            let ok = if e.is_nan() {
                a.is_nan()
            } else if e.is_infinite() {
                a == e
            } else {
                (a - e).abs() <= ATOL + RTOL * e.abs()
            };
            if !ok {
                bad += 1;
                let diff = if a.is_nan() {
                    f64::INFINITY
                } else {
                    (a - e).abs()
                };
                if worst.is_none_or(|(_, d)| diff > d || d.is_nan()) {
                    worst = Some((i, diff));
                }
            }
        }
        match worst {
            None => Ok(()),
            Some((i, diff)) => Err(format!(
                "max abs diff {diff:.3e} at flat index {i} (expected {:.6e}, got {:.6e}); \
                 {bad} of {} elements out of tolerance",
                e[i],
                a[i],
                e.len()
            )),
        }
    } else {
        let (e, a) = (to_i64s(expected)?, to_i64s(actual)?);
        let bad: Vec<usize> = (0..e.len()).filter(|&i| e[i] != a[i]).collect();
        match bad.first() {
            None => Ok(()),
            Some(&i) => Err(format!(
                "{} of {} values differ; first at flat index {i}: expected {}, got {}",
                bad.len(),
                e.len(),
                e[i],
                a[i]
            )),
        }
    }
}

/// Runs one test folder (a `model.onnx` and its data sets).
fn run_case(dir: &Path, registry: &Registry, options: &ImportOptions) -> Outcome {
    let model = match Model::load(dir.join("model.onnx")) {
        Ok(m) => m,
        Err(e) => return Outcome::Fail(format!("load: {}", one_line(e))),
    };
    let unsupported = unsupported_ops(&model, registry);
    if !unsupported.is_empty() {
        let ops: BTreeSet<String> = unsupported
            .iter()
            .map(|u| {
                if u.reason.starts_with("opset") {
                    format!("{}-{}", u.op_type, u.opset)
                } else if !(u.domain.is_empty() || u.domain == "ai.onnx") {
                    format!("{}:{}", u.domain, u.op_type)
                } else {
                    u.op_type.clone()
                }
            })
            .collect();
        return Outcome::Unsupported(ops.into_iter().collect());
    }
    let graph_proto = model.graph();
    let initializers: BTreeSet<&str> = graph_proto.initializer.iter().map(|t| t.name()).collect();
    if let Some(reason) = graph_proto
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name()))
        .chain(&graph_proto.output)
        .find_map(non_tensor_reason)
    {
        return Outcome::NonTensor(reason);
    }
    let graph = match Graph::import(&model, registry, options) {
        Ok(g) => g,
        Err(e) => return Outcome::Fail(format!("import error: {}", one_line(e))),
    };
    let sets = test_data_sets(dir);
    if sets.is_empty() {
        return Outcome::Fail("no test_data_set_N folder".into());
    }
    for set in &sets {
        let set_name = set.file_name().unwrap().to_string_lossy().into_owned();
        let fail = |reason: String| Outcome::Fail(format!("{set_name}: {reason}"));
        let inputs: Vec<Tensor> = match numbered_files(set, "input")
            .iter()
            .enumerate()
            .map(|(k, p)| read_tensor(p, declared_type(graph.inputs.get(k))))
            .collect()
        {
            Ok(t) => t,
            Err(e) => return fail(format!("input data: {e}")),
        };
        let expected: Vec<Tensor> = match numbered_files(set, "output")
            .iter()
            .enumerate()
            .map(|(k, p)| read_tensor(p, declared_type(graph.outputs.get(k))))
            .collect()
        {
            Ok(t) => t,
            Err(e) => return fail(format!("expected output data: {e}")),
        };
        let actual = match graph.forward(&inputs) {
            Ok(a) => a,
            Err(e) => return fail(format!("runtime error: {}", one_line(e))),
        };
        if actual.len() != expected.len() {
            return fail(format!(
                "{} outputs, expected {}",
                actual.len(),
                expected.len()
            ));
        }
        for (k, (e, a)) in expected.iter().zip(&actual).enumerate() {
            if let Err(why) = compare(e, a, graph.float_kind) {
                let name = graph.outputs.get(k).map(|o| o.name.as_str()).unwrap_or("?");
                return fail(format!("output {k} `{name}`: {why}"));
            }
        }
    }
    Outcome::Pass
}

fn production_options() -> ImportOptions {
    // f32 on the CPU: what `ibau` itself imports with.
    ImportOptions::default()
}

fn run_all(
    root: &Path,
    registry: &Registry,
    options: &ImportOptions,
    filter: Option<&str>,
) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for folder in FOLDERS {
        for (name, dir) in list_tests(root, folder) {
            let id = format!("{folder}/{name}");
            if filter.is_some_and(|f| !id.contains(f)) {
                continue;
            }
            let start = Instant::now();
            let outcome = catch_panic(|| run_case(&dir, registry, options));
            results.push(CaseResult {
                folder,
                name,
                outcome,
                elapsed: start.elapsed(),
            });
        }
    }
    results
}

// --- Reporting --------------------------------------------------------------

fn summary_table(results: &[CaseResult]) -> String {
    #[derive(Default, Clone, Copy)]
    struct Counts {
        passed: usize,
        failed: usize,
        unsupported: usize,
        non_tensor: usize,
    }
    let mut per_folder: BTreeMap<&str, Counts> = BTreeMap::new();
    for r in results {
        let c = per_folder.entry(r.folder).or_default();
        match r.outcome {
            Outcome::Pass => c.passed += 1,
            Outcome::Fail(_) => c.failed += 1,
            Outcome::Unsupported(_) => c.unsupported += 1,
            Outcome::NonTensor(_) => c.non_tensor += 1,
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ONNX backend conformance (libonnx-testdata; f32 graphs; floats within \
         {ATOL:e} + {RTOL:e}*|expected|, ints and bools exact)"
    );
    let _ = writeln!(
        out,
        "| folder            | passed |  run | failed | skipped (unsupported op) | skipped (non-tensor I/O) | total |"
    );
    let _ = writeln!(
        out,
        "|-------------------|-------:|-----:|-------:|-------------------------:|-------------------------:|------:|"
    );
    let mut total = Counts::default();
    let row = |out: &mut String, name: &str, c: Counts| {
        let run = c.passed + c.failed;
        let all = run + c.unsupported + c.non_tensor;
        let _ = writeln!(
            out,
            "| {name:<17} | {:>6} | {run:>4} | {:>6} | {:>24} | {:>24} | {all:>5} |",
            c.passed, c.failed, c.unsupported, c.non_tensor
        );
    };
    for folder in FOLDERS {
        if let Some(&c) = per_folder.get(folder) {
            row(&mut out, folder, c);
            total.passed += c.passed;
            total.failed += c.failed;
            total.unsupported += c.unsupported;
            total.non_tensor += c.non_tensor;
        }
    }
    row(&mut out, "total", total);
    out
}

/// Unsupported op types by the number of tests they block (a test blocked by
/// several ops counts for each).
fn unsupported_ranking(results: &[CaseResult]) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in results {
        if let Outcome::Unsupported(ops) = &r.outcome {
            for op in ops {
                *counts.entry(op.clone()).or_default() += 1;
            }
        }
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

fn read_allowlist(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn write_allowlist(path: &Path, passing: &BTreeSet<String>) {
    let mut text = String::from(
        "# ONNX backend tests (libonnx-testdata) that must pass: tests/conformance.rs.\n\
         # Regenerate with: IBAU_UPDATE_ALLOWLIST=1 cargo test --test main conformance\n",
    );
    for id in passing {
        text.push_str(id);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// The conformance run over the whole test data, checked against the allowlist.
#[test]
fn onnx_backend_conformance() {
    let root = require_data_root();
    let filter = std::env::var("IBAU_CONFORMANCE_FILTER")
        .ok()
        .filter(|f| !f.is_empty());
    let update = std::env::var("IBAU_UPDATE_ALLOWLIST").is_ok_and(|v| v == "1");
    assert!(
        !(update && filter.is_some()),
        "IBAU_UPDATE_ALLOWLIST=1 needs the full run: unset IBAU_CONFORMANCE_FILTER"
    );

    let registry = Registry::standard();
    let started = Instant::now();
    let results = run_all(&root, &registry, &production_options(), filter.as_deref());
    let wall = started.elapsed();
    assert!(
        !results.is_empty(),
        "no test matched IBAU_CONFORMANCE_FILTER={filter:?}"
    );

    println!("{}", summary_table(&results));
    println!("(wall time {:.1} s)", wall.as_secs_f64());
    let mut slowest: Vec<&CaseResult> = results.iter().collect();
    slowest.sort_by_key(|r| std::cmp::Reverse(r.elapsed));
    println!("slowest tests:");
    for r in slowest.iter().take(8) {
        println!("  {:>7.3} s  {}", r.elapsed.as_secs_f64(), r.id());
    }

    let failures: Vec<(String, &str)> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Fail(why) => Some((r.id(), why.as_str())),
            _ => None,
        })
        .collect();
    if !failures.is_empty() {
        eprintln!("failing tests ({}):", failures.len());
        for (id, why) in &failures {
            eprintln!("  FAIL {id}: {why}");
        }
    }
    let ranking = unsupported_ranking(&results);
    if !ranking.is_empty() {
        let list: Vec<String> = ranking
            .iter()
            .take(40)
            .map(|(op, n)| format!("{op} ({n})"))
            .collect();
        eprintln!(
            "unsupported ops by tests blocked ({} op types): {}{}",
            ranking.len(),
            list.join(", "),
            if ranking.len() > 40 { ", ..." } else { "" }
        );
    }

    let passing: BTreeSet<String> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Pass)
        .map(CaseResult::id)
        .collect();
    let allowlist_path = Path::new(ALLOWLIST);
    let allowlist = read_allowlist(allowlist_path);
    if update {
        write_allowlist(allowlist_path, &passing);
        let dropped: Vec<&String> = allowlist.difference(&passing).collect();
        println!(
            "allowlist rewritten: {} tests ({} added, {} dropped{})",
            passing.len(),
            passing.difference(&allowlist).count(),
            dropped.len(),
            if dropped.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    dropped
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        return;
    }

    let newly: Vec<&String> = passing.difference(&allowlist).collect();
    if !newly.is_empty() {
        println!(
            "newly passing, add to the allowlist ({}; or run with IBAU_UPDATE_ALLOWLIST=1):",
            newly.len()
        );
        for id in &newly {
            println!("  {id}");
        }
    }
    let outcome_of: BTreeMap<String, &Outcome> =
        results.iter().map(|r| (r.id(), &r.outcome)).collect();
    let regressions: Vec<String> = allowlist
        .iter()
        .filter(|id| filter.as_deref().is_none_or(|f| id.contains(f)))
        .filter_map(|id| match outcome_of.get(id) {
            Some(Outcome::Pass) => None,
            Some(Outcome::Fail(why)) => Some(format!("{id}: {why}")),
            Some(Outcome::Unsupported(ops)) => {
                Some(format!("{id}: now unsupported ({})", ops.join(", ")))
            }
            Some(Outcome::NonTensor(why)) => Some(format!("{id}: now skipped ({why})")),
            None => Some(format!("{id}: no such test in {}", root.display())),
        })
        .collect();
    assert!(
        regressions.is_empty(),
        "{} allowlisted conformance tests do not pass (regressions):\n  {}",
        regressions.len(),
        regressions.join("\n  ")
    );
}

// --- Checks of the harness itself -------------------------------------------

fn t(values: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(values).reshape(shape)
}

const F32: Kind = Kind::Float;

#[test]
fn compare_applies_the_float_tolerance() {
    let expected = t(&[1.0, 100.0, f32::NAN, f32::INFINITY], &[2, 2]);
    let within = t(&[1.0 + 5e-5, 100.05, f32::NAN, f32::INFINITY], &[2, 2]);
    assert_eq!(compare(&expected, &within, F32), Ok(()));
    let beyond = t(&[1.0, 100.2, f32::NAN, f32::INFINITY], &[2, 2]);
    let err = compare(&expected, &beyond, F32).unwrap_err();
    assert!(err.contains("flat index 1"), "{err}");
    let nan = t(&[1.0, 100.0, 0.0, f32::INFINITY], &[2, 2]);
    assert!(compare(&expected, &nan, F32).is_err());
}

#[test]
fn compare_rounds_f64_expectations_to_the_graph_kind() {
    let expected = Tensor::from_slice(&[0.1f64, 1e200, 1e-310]);
    let actual = Tensor::from_slice(&[0.1f32, f32::INFINITY, 0.0]);
    assert_eq!(compare(&expected, &actual, F32), Ok(()));
    assert!(compare(&expected, &actual.to_kind(Kind::Double), Kind::Double).is_err());
}

#[test]
fn compare_checks_shapes_and_integer_values_exactly() {
    let err = compare(&t(&[1.0, 2.0], &[2]), &t(&[1.0, 2.0], &[1, 2]), F32).unwrap_err();
    assert!(err.starts_with("shape mismatch"), "{err}");
    let ints = Tensor::from_slice(&[1i64, 2, 3]);
    assert_eq!(
        compare(&ints, &Tensor::from_slice(&[1i32, 2, 3]), F32),
        Ok(())
    );
    assert!(compare(&ints, &Tensor::from_slice(&[1i64, 2, 4]), F32).is_err());
    let err = compare(&ints, &Tensor::from_slice(&[1.0f32, 2.0, 3.0]), F32).unwrap_err();
    assert!(err.contains("element type"), "{err}");
    let bools = Tensor::from_slice(&[true, false]);
    assert_eq!(
        compare(&bools, &Tensor::from_slice(&[true, false]), F32),
        Ok(())
    );
    assert!(compare(&bools, &Tensor::from_slice(&[1u8, 0]), F32).is_err());
}

/// The harness on real test data with a private registry: a correct Relu
/// passes, a wrong Abs fails with a diff, a panicking Neg fails without
/// aborting the run, and Add is unsupported.
#[test]
fn harness_tells_pass_fail_panic_and_unsupported() {
    use ibau::graph::ops::{util, OpSpec};
    let root = require_data_root();
    let mut registry = Registry::default();
    registry.insert(OpSpec::new("Relu", |_| Ok(util::unary(|x| x.f_relu()))));
    registry.insert(OpSpec::new("Abs", |_| Ok(util::unary(|x| x.f_neg()))));
    registry.insert(OpSpec::new("Neg", |_| {
        Ok(util::unary(|_| panic!("deliberate panic")))
    }));
    let options = production_options();
    let node = root.join("node");
    let run = |name: &str| catch_panic(|| run_case(&node.join(name), &registry, &options));

    assert_eq!(run("test_relu"), Outcome::Pass);
    match run("test_abs") {
        Outcome::Fail(why) => assert!(why.contains("max abs diff"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    match run("test_neg") {
        Outcome::Fail(why) => assert!(why.contains("deliberate panic"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(run("test_add"), Outcome::Unsupported(vec!["Add".into()]));
}
