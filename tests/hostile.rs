//! Hostile input (issue 13): files built on the fly, as an attacker or a
//! careless user would make them, run through the `ibau` binary under an
//! address-space limit (so that an allocation abort shows up as a failure,
//! not as a machine out of memory) and a wall-clock limit (a hang fails).
//! Each case asserts exit 2, one line on stderr naming the culprit, the
//! inputs byte-identical afterwards and nothing written. The fixtures
//! edited here are made by tools/make_fixtures.py (models/README.md).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ibau::onnx::build::{self, int64s, node};
use ibau::onnx::proto::{
    tensor_shape_proto::dimension::Value as DimValue, NodeProto, StringStringEntryProto,
    TensorProto,
};

use crate::common::{self, decode_fixture, dims_mut, write_model};

const FASHION: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
const VGG: &str = "vgg_badnets_legacy.onnx";
/// The child's address-space limit, that of a small CI runner: ibau's
/// `sanitize` of a fixture on 100 images fits in it (0.56 GB peak RSS in a
/// release build); a header's claim allocated for real does not.
const ADDRESS_LIMIT: u64 = 2 << 30;
/// A case that takes longer has hung.
const TIME_LIMIT: Duration = Duration::from_secs(120);

/// What a limited run of the binary did.
struct Run {
    code: Option<i32>,
    /// The child's peak resident memory.
    max_rss_kib: u64,
    stdout: Vec<u8>,
    stderr: String,
}

/// The binary under test: this build's, or `IBAU_BIN` (an older build, to
/// show that a case failed before its fix).
fn binary() -> PathBuf {
    std::env::var_os("IBAU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ibau")))
}

/// Runs `ibau args` with `env`, under the address-space and time limits.
fn run_with(args: &[&str], env: &[(&str, &str)], stdout: Option<Stdio>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(binary());
    // The budget the machine gives, unless the case sets one (the fuzz test
    // sets a small one in this process's environment).
    cmd.args(args)
        .env_remove(ibau::limits::BUDGET_VARIABLE)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout.unwrap_or_else(|| std::fs::File::create(&out_path).unwrap().into()))
        .stderr(std::fs::File::create(&err_path).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: ADDRESS_LIMIT,
                rlim_max: ADDRESS_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Reaped by wait4 below (clippy cannot see it).
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().expect("the ibau binary runs");
    let start = Instant::now();
    // wait4 rather than try_wait: it also tells the child's peak memory.
    let pid = child.id() as libc::pid_t;
    // The child's own peak, VmHWM, read while it runs: wait4's ru_maxrss
    // also counts the test process's memory at the fork (Linux keeps the
    // pre-exec high-water mark), which a full test run makes large.
    let mut hwm_kib = 0;
    let (status, max_rss_kib) = loop {
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if done == pid {
            let peak = if hwm_kib > 0 {
                hwm_kib
            } else {
                usage.ru_maxrss as u64
            };
            break (status, peak);
        }
        hwm_kib = hwm_kib.max(vm_hwm_kib(pid).unwrap_or(0));
        assert!(
            done == 0,
            "wait4 failed: {}",
            std::io::Error::last_os_error()
        );
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ibau {args:?} hung: killed after {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        max_rss_kib,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path).unwrap()).into_owned(),
    }
}

/// The peak resident memory of process `pid` (`VmHWM`), in KiB.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn run(args: &[&str]) -> Run {
    run_with(args, &[], None)
}

/// `ibau sanitize MODEL` on 100 clean Fashion-MNIST images with `extra`.
fn sanitize(model: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "sanitize",
        "--no-scan",
        s(model),
        "--clean",
        FASHION,
        "--clean-range",
        "0:100",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Options that make `sanitize` fail after its output plan is made: a
/// target the model lacks.
const WRONG_TARGET: [&str; 8] = [
    "--test",
    FASHION,
    "--test-range",
    "0:100",
    "--trigger",
    "patch:size=3,value=1,row=24,col=24",
    "--target",
    "99",
];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit 2, one line starting `error: `, naming `needle`, no raw control
/// characters, no panic.
fn assert_refused(run: &Run, needle: &str) {
    let err = &run.stderr;
    assert_eq!(run.code, Some(2), "expected exit 2, stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !err.trim_end().chars().any(|c| c.is_control()),
        "raw control characters: {err:?}"
    );
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

/// Every file under a folder with its bytes: taken before and after a run,
/// equal means nothing changed and nothing was written there.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path.clone());
                files.insert(path, b"<dir>".to_vec());
            } else if kind.is_file() {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            } else {
                files.insert(path, b"<special>".to_vec());
            }
        }
    }
    files
}

/// `dir/name`: the VGG fixture with every initializer's bytes in one
/// external file `location` beside it.
fn external_vgg(dir: &Path, name: &str, location: &str) -> PathBuf {
    let mut model = decode_fixture(VGG);
    let mut data = Vec::new();
    for init in &mut model.graph.as_mut().unwrap().initializer {
        let Some(raw) = init.raw_data.take() else {
            continue;
        };
        init.external_data = vec![
            kv("location", location),
            kv("offset", &data.len().to_string()),
            kv("length", &raw.len().to_string()),
        ];
        init.data_location = Some(1);
        data.extend_from_slice(&raw);
    }
    std::fs::write(dir.join(location), data).unwrap();
    write_model(dir, name, &model)
}

fn kv(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    }
}

/// The VGG fixture with its first initializer external at `location`,
/// claiming `length` bytes (no data file is written).
fn vgg_with_external_first(dir: &Path, location: &str, length: Option<u64>) -> PathBuf {
    let mut model = decode_fixture(VGG);
    let init = &mut model.graph.as_mut().unwrap().initializer[0];
    let raw = init.raw_data.take().unwrap();
    init.external_data = vec![
        kv("location", location),
        kv("offset", "0"),
        kv("length", &length.unwrap_or(raw.len() as u64).to_string()),
    ];
    init.data_location = Some(1);
    write_model(dir, "model.onnx", &model)
}

/// A model of `nodes` on one float input `x` of `input_dims`, output `y`
/// (its shape left for the run to tell).
fn small_model(
    dir: &Path,
    name: &str,
    input_dims: &[i64],
    nodes: Vec<NodeProto>,
    initializer: Vec<TensorProto>,
) -> PathBuf {
    let mut model = build::model(nodes, initializer, &[("x", input_dims)], &[("y", &[])]);
    model.proto.graph.as_mut().unwrap().output[0].r#type = None;
    write_model(dir, name, &model.proto)
}

// 1. ------------------------------------------------------------------------

#[test]
fn outputs_never_overwrite_the_input_its_external_data_or_data_files() {
    let dir = tempfile::tempdir().unwrap();
    let model = external_vgg(dir.path(), "a.onnx", "vgg.onnx.data");
    let labels = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";
    let before = snapshot(dir.path());
    let sanitize = |extra: &[&str]| sanitize(&model, extra);
    // -o vgg.onnx would write its external data to vgg.onnx.data: the input's.
    let vgg = dir.path().join("vgg.onnx");
    assert_refused(&sanitize(&["-o", s(&vgg)]), "vgg.onnx.data");
    let data = dir.path().join("vgg.onnx.data");
    assert_refused(&sanitize(&["-o", s(&data)]), "vgg.onnx.data");
    let out = dir.path().join("out.onnx");
    assert_refused(
        &sanitize(&["-o", s(&out), "--report", s(&data)]),
        "vgg.onnx.data",
    );
    assert_refused(&sanitize(&["-o", s(&model)]), "a.onnx");
    // A hard link to the input is the input.
    let hard = dir.path().join("hard.onnx");
    std::fs::hard_link(&model, &hard).unwrap();
    let before_link = snapshot(dir.path());
    assert_refused(&sanitize(&["-o", s(&hard)]), "hard.onnx");
    assert_eq!(snapshot(dir.path()), before_link);
    std::fs::remove_file(&hard).unwrap();
    // The label file found beside the clean images is an input too.
    let before_labels = std::fs::read(labels).unwrap();
    assert_refused(&sanitize(&["-o", labels]), "t10k-labels-idx1-ubyte.gz");
    assert_eq!(std::fs::read(labels).unwrap(), before_labels);
    assert_eq!(snapshot(dir.path()), before, "the folder changed");
}

/// Trigger files are inputs too, those of every --trigger/--target pair:
/// `-o` or `--report` onto one is refused before any work.
#[test]
fn outputs_never_overwrite_a_trigger_file_of_any_pair() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = dir.path().join("sig.npy");
    ndarray_npy::write_npy(&pattern, &ndarray::Array2::<f32>::zeros((28, 28))).unwrap();
    let grid = dir.path().join("grid.npy");
    ndarray_npy::write_npy(&grid, &ndarray::Array3::<f32>::zeros((28, 28, 2))).unwrap();
    let before = snapshot(dir.path());
    let vgg = common::fixture(VGG);
    let additive = format!("additive:pattern={}", s(&pattern));
    let warp = format!("warp:grid={}", s(&grid));
    #[rustfmt::skip]
    let attacks = [
        "--test", FASHION, "--test-range", "0:100",
        "--trigger", "patch:size=3,value=1,row=24,col=24", "--target", "0",
        "--trigger", &additive, "--target", "next",
        "--trigger", &warp, "--target", "1",
    ];
    // --rounds 1000000: a refusal found after training would hang.
    let with = |outputs: &[&str]| {
        sanitize(
            &vgg,
            &[&attacks[..], outputs, &["--rounds", "1000000"]].concat(),
        )
    };
    assert_refused(&with(&["-o", s(&pattern)]), "sig.npy");
    let out = dir.path().join("out.onnx");
    assert_refused(&with(&["-o", s(&out), "--report", s(&grid)]), "grid.npy");
    assert_eq!(snapshot(dir.path()), before);
}

// 2. ------------------------------------------------------------------------

#[test]
fn device_nodes_fifos_and_folders_are_never_outputs() {
    use std::os::unix::fs::FileTypeExt;
    let model = common::fixture(VGG);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.onnx");
    let c_path = std::ffi::CString::new(s(&fifo)).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let before = snapshot(dir.path());
    // --rounds 1000000: a refusal found after training would hang.
    for (output, needle) in [
        ("/dev/null", "device"),
        (s(&fifo), "FIFO"),
        (s(dir.path()), "directory"),
    ] {
        let out = sanitize(&model, &["--rounds", "1000000", "-o", output]);
        assert_refused(&out, needle);
    }
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(snapshot(dir.path()), before);
}

// 3. ------------------------------------------------------------------------

#[test]
fn external_data_behind_a_symbolic_link_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A link to a file outside the folder, with exactly the bytes the tensor needs.
    let first = &decode_fixture(VGG).graph.unwrap().initializer[0];
    let secret = outside.path().join("secret.bin");
    std::fs::write(&secret, first.raw_data.as_ref().unwrap()).unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("w.bin")).unwrap();
    let model = vgg_with_external_first(dir.path(), "w.bin", None);
    assert_refused(&run(&["inspect", s(&model)]), "symbolic link");
    let before = snapshot(dir.path());
    let out = dir.path().join("out.onnx");
    assert_refused(&sanitize(&model, &["-o", s(&out)]), "symbolic link");
    assert_eq!(snapshot(dir.path()), before);
    // A linked folder on the way is a link too.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
    let model = vgg_with_external_first(dir.path(), "sub/secret.bin", None);
    assert_refused(&run(&["inspect", s(&model)]), "symbolic link");
}

// 4. ------------------------------------------------------------------------

#[test]
fn sizes_claimed_by_headers_are_checked_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture(VGG);
    // A 1 KB .npy whose header claims 28 TB.
    let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (28000000, 1000, 1000), }";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let padded = format!("{header:<117}\n");
    npy.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    npy.extend_from_slice(padded.as_bytes());
    npy.extend_from_slice(&[0u8; 1024]);
    let images = dir.path().join("huge.npy");
    std::fs::write(&images, &npy).unwrap();
    assert_refused(&run(&["eval", s(&model), "--data", s(&images)]), "huge.npy");

    // An external-data length of 20 GB on a sparse file of that size.
    let sparse = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(sparse.path().join("w.bin")).unwrap();
    file.set_len(20 << 30).unwrap();
    let huge = vgg_with_external_first(sparse.path(), "w.bin", Some(20 << 30));
    assert_refused(&run(&["inspect", s(&huge)]), "length");

    // Image folders: the decoded size of the set is checked first.
    let folder = dir.path().join("images");
    for class in ["a", "b"] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        image::RgbImage::new(2048, 2048)
            .save(folder.join(class).join("0.png"))
            .unwrap();
    }
    let out = run_with(
        &["eval", s(&model), "--data", s(&folder)],
        &[("IBAU_MEMORY_BUDGET", "64M")],
        None,
    );
    assert_refused(&out, "IBAU_MEMORY_BUDGET");
}

// 5. ------------------------------------------------------------------------

#[test]
fn sizes_that_overflow_or_exceed_the_budget_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let vgg = common::fixture(VGG);
    assert_refused(
        &run(&["verify", s(&vgg), "--batch", "1000000000"]),
        "--batch",
    );

    // An input declared [1, 1, 2^20, 2^20].
    let mut model = decode_fixture(VGG);
    let graph = model.graph.as_mut().unwrap();
    for (d, v) in dims_mut(&mut graph.input[0])
        .iter_mut()
        .zip([1, 1, 1 << 20, 1 << 20])
    {
        d.value = Some(DimValue::DimValue(v));
    }
    let input_name = graph.input[0].name().to_string();
    let wide = write_model(dir.path(), "wide.onnx", &model);
    assert_refused(&run(&["verify", s(&wide)]), &input_name);

    // A Range of 10^13 elements, folded at import.
    let range = small_model(
        dir.path(),
        "range.onnx",
        &[1],
        vec![node(
            "big_range",
            "Range",
            &["start", "limit", "delta"],
            &["y"],
        )],
        vec![
            int64s("start", &[], &[0]),
            int64s("limit", &[], &[10_000_000_000_000]),
            int64s("delta", &[], &[1]),
        ],
    );
    assert_refused(&run(&["inspect", s(&range)]), "big_range");

    // Initializers whose dims overflow, with empty raw data.
    for dims in [vec![1i64 << 62], vec![1 << 32, 1 << 32], vec![1 << 62, 4]] {
        let mut model = decode_fixture(VGG);
        let init = &mut model.graph.as_mut().unwrap().initializer[0];
        init.dims = dims;
        init.raw_data = Some(Vec::new().into());
        let name = init.name().to_string();
        let path = write_model(dir.path(), "dims.onnx", &model);
        assert_refused(&run(&["inspect", s(&path)]), &name);
        assert_refused(&run(&["verify", s(&path)]), &name);
    }

    let out = run(&[
        "eval",
        s(&vgg),
        "--data",
        FASHION,
        "--trigger",
        "patch:size=9223372036854775807,value=1,row=0,col=0",
        "--target",
        "0",
    ]);
    assert_refused(&out, "size");
}

#[test]
fn a_closed_or_full_stdout_is_not_a_panic() {
    let vgg = common::fixture(VGG);
    // `ibau inspect MODEL | true`: the reader is gone before ibau writes.
    let mut child = Command::new(binary())
        .args(["inspect", s(&vgg)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // `> /dev/full`.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = run_with(&["inspect", s(&vgg)], &[], Some(full.into()));
    assert_refused(&out, "No space left");
}

// 6. ------------------------------------------------------------------------

#[test]
fn nothing_hangs_on_huge_constants_fifos_or_long_graphs() {
    let dir = tempfile::tempdir().unwrap();
    // An Expand to 10^12 elements, all constant.
    let expand = small_model(
        dir.path(),
        "expand.onnx",
        &[1],
        vec![node("big_expand", "Expand", &["one", "shape"], &["y"])],
        vec![
            build::floats("one", &[], &[1.0]),
            int64s("shape", &[2], &[1_000_000, 1_000_000]),
        ],
    );
    assert_refused(&run(&["inspect", s(&expand)]), "big_expand");

    // External data that is a FIFO: opening it for reading would block.
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("w.bin");
    let c_path = std::ffi::CString::new(s(&fifo)).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let model = vgg_with_external_first(fifo_dir.path(), "w.bin", None);
    assert_refused(&run(&["inspect", s(&model)]), "not a regular file");

    // tract gets a time budget (its optimiser is superlinear in the graph's
    // length) and is reported as skipped when it runs out.
    let n = 2000;
    let mut nodes = Vec::new();
    for i in 0..n {
        let input = if i == 0 {
            "x".to_string()
        } else {
            format!("v{i}")
        };
        let output = if i + 1 == n {
            "y".to_string()
        } else {
            format!("v{}", i + 1)
        };
        let op = if i % 2 == 0 { "Add" } else { "Mul" };
        nodes.push(node(&format!("n{i}"), op, &[&input, "c"], &[&output]));
    }
    let c = build::floats("c", &[4], &[1.0; 4]);
    let long = small_model(dir.path(), "long.onnx", &[1, 4], nodes, vec![c]);
    let out = run_with(
        &["verify", s(&long), "--json"],
        // No time at all: tract cannot finish, the budget must cut it off.
        &[("IBAU_TRACT_SECONDS", "0")],
        None,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let skipped = json["skipped"].as_array().unwrap();
    assert!(
        skipped.iter().any(|s| s["runtime"] == "tract"),
        "tract not skipped: {json}"
    );
}

/// A data file, a labels file or a model that is a FIFO or a device is
/// refused at once: opening a FIFO for reading would wait for a writer for
/// ever, a device would stream without end.
#[test]
fn data_files_that_are_fifos_or_devices_are_refused_not_waited_on() {
    let vgg = common::fixture(VGG);
    let dir = tempfile::tempdir().unwrap();
    let mkfifo = |name: &str| {
        let path = dir.path().join(name);
        let c_path = std::ffi::CString::new(s(&path)).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        path
    };
    for name in ["pipe-images-idx3-ubyte.gz", "pipe.npz", "pipe.npy"] {
        let fifo = mkfifo(name);
        assert_refused(
            &run(&["eval", s(&vgg), "--data", s(&fifo)]),
            "not a regular file",
        );
        assert_refused(&run(&["eval", s(&vgg), "--data", s(&fifo)]), name);
        // scan reports per model (stdout), then a summary line.
        let scan = run(&["scan", s(&vgg), "--clean", s(&fifo)]);
        let all = format!("{}{}", String::from_utf8_lossy(&scan.stdout), scan.stderr);
        assert_eq!(scan.code, Some(2), "{all}");
        assert!(
            all.contains(&format!("`{}`: not a regular file", s(&fifo))),
            "{all}"
        );
        assert!(!all.contains("panicked"), "{all}");
        assert_refused(
            &run(&[
                "sanitize",
                s(&vgg),
                "--clean",
                s(&fifo),
                "-o",
                s(&dir.path().join("o.onnx")),
            ]),
            "not a regular file",
        );
    }
    assert_refused(&run(&["eval", s(&vgg), "--data", "/dev/zero"]), "/dev/zero");
    // Regular images whose labels file (found by its name) is a FIFO.
    let images = dir.path().join("t-images-idx3-ubyte.gz");
    std::fs::copy(FASHION, &images).unwrap();
    let labels = mkfifo("t-labels-idx1-ubyte.gz");
    assert_refused(
        &run(&["eval", s(&vgg), "--data", s(&images), "--range", "0:10"]),
        s(&labels),
    );
}

// 7. ------------------------------------------------------------------------

#[test]
fn compressed_data_is_inflated_within_limits() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let vgg = common::fixture(VGG);
    // A gzip'd IDX whose header claims 2^40 images of 28x28.
    let mut idx = vec![0, 0, 0x08, 3];
    for d in [1u32 << 31, 28, 28] {
        idx.extend_from_slice(&d.to_be_bytes());
    }
    let path = dir.path().join("bomb-images-idx3-ubyte.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&idx).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap();
    assert_refused(
        &run(&["eval", s(&vgg), "--data", s(&path)]),
        "bomb-images-idx3-ubyte.gz",
    );

    // A gzip bomb: the header says 100 images, the stream inflates to 4 GiB
    // (above the child's address-space limit with what ibau already maps).
    // Made by Python's zlib, which compresses zeros far faster than a debug
    // build of flate2.
    let bomb = dir.path().join("small-images-idx3-ubyte.gz");
    let script = "import sys, zlib\n\
        c = zlib.compressobj(1, zlib.DEFLATED, 31)\n\
        out = open(sys.argv[1], 'wb')\n\
        out.write(c.compress(bytes([0, 0, 8, 3]) + (100).to_bytes(4, 'big') + (28).to_bytes(4, 'big') * 2))\n\
        zeros = bytes(1 << 24)\n\
        for _ in range(256): out.write(c.compress(zeros))\n\
        out.write(c.flush())\n";
    let made = Command::new(common::python())
        .args(["-c", script, s(&bomb)])
        .status()
        .unwrap();
    assert!(made.success());
    let out = run(&["eval", s(&vgg), "--data", s(&bomb)]);
    assert_refused(&out, "small-images-idx3-ubyte.gz");
    // Read no further than the header says: ibau itself needs about 250 MB.
    assert!(
        out.max_rss_kib < 1 << 20,
        "peak memory {} MiB: the bomb was inflated",
        out.max_rss_kib >> 10
    );
}

// 8. ------------------------------------------------------------------------

#[test]
fn outputs_are_checked_before_any_work_and_staging_never_lingers() {
    let dir = tempfile::tempdir().unwrap();
    let vgg = common::fixture(VGG);
    let out = dir.path().join("out.onnx");
    // A staging folder left by a run killed with SIGKILL (its PID is above
    // Linux's largest pid_max: never alive).
    let stale = dir.path().join(".ibau-staging-4194304");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("out.onnx"), b"half written").unwrap();
    let sanitize = |extra: &[&str]| {
        let mut args = vec!["--rounds", "1000000", "-o", s(&out)];
        args.extend_from_slice(extra);
        sanitize(&vgg, &args)
    };
    assert_refused(&sanitize(&["--report", s(&out)]), "--report");
    let missing = dir.path().join("missing/report.json");
    assert_refused(&sanitize(&["--report", s(&missing)]), "does not exist");
    // An error found after the plan is made (a target the model lacks):
    // the stale folder is gone, nothing is written.
    let out_err = sanitize(&WRONG_TARGET);
    // The removal is said on a line of its own, before the error.
    let (note, error) = out_err.stderr.split_once('\n').unwrap();
    assert!(note.starts_with("note: removed 1 leftover of"), "{note}");
    assert_refused(
        &Run {
            stderr: error.to_string(),
            stdout: Vec::new(),
            ..out_err
        },
        "--target 99",
    );
    assert!(!stale.exists(), "the stale staging folder is still there");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

// 9. ------------------------------------------------------------------------

#[test]
fn nonsense_options_and_labels_are_refused() {
    let vgg = common::fixture(VGG);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", s(&vgg), "--data", FASHION, "--range", "0:50"];
        args.extend_from_slice(extra);
        run(&args)
    };
    let trigger = "patch:size=3,value=1,row=24,col=24";
    assert_refused(
        &eval(&["--trigger", trigger, "--target", "99"]),
        "--target 99",
    );
    assert_refused(&eval(&["--trigger", trigger, "--target=-1"]), "--target -1");
    assert_refused(&eval(&["--std", "-1"]), "--std");
    assert_refused(&eval(&["--std=-0.5,1"]), "--std");
    assert_refused(&eval(&["--std", "0"]), "--std");
    assert_refused(&eval(&["--mean", "NaN"]), "--mean");
    assert_refused(
        &run(&["eval", s(&vgg), "--data", FASHION, "--range", "5:5"]),
        "5:5",
    );
    for (option, value) in [
        ("--rounds", "0"),
        ("--k", "0"),
        ("--radius", "-1"),
        ("--radius", "NaN"),
        ("--inner-step", "-1"),
        ("--lr", "inf"),
        ("--perturbation-steps", "0"),
        ("--stop-below-asr", "2"),
    ] {
        let flag = format!("{option}={value}");
        let extra = [
            "-o",
            s(&out),
            "--test",
            FASHION,
            "--trigger",
            trigger,
            "--target",
            "0",
        ];
        let got = sanitize(&vgg, &[&extra[..], &[flag.as_str()]].concat());
        assert_refused(&got, option);
    }
    for value in ["-1", "NaN"] {
        let flag = format!("--tolerance={value}");
        assert_refused(&run(&["verify", s(&vgg), &flag]), "--tolerance");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Labels of 200 for a 10-class model.
    let npz = dir.path().join("labels.npz");
    {
        use ndarray_npy::NpzWriter;
        let mut w = NpzWriter::new(std::fs::File::create(&npz).unwrap());
        w.add_array("x", &ndarray::Array3::<u8>::zeros((4, 28, 28)))
            .unwrap();
        w.add_array("y", &ndarray::Array1::<i64>::from(vec![0, 1, 200, 3]))
            .unwrap();
        w.finish().unwrap();
    }
    assert_refused(&run(&["eval", s(&vgg), "--data", s(&npz)]), "200");
}

#[test]
fn weights_that_are_not_numbers_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let poisoned = |value: f32, name: &str| {
        let mut model = decode_fixture(VGG);
        let graph = model.graph.as_mut().unwrap();
        // The largest float initializer: a convolution or linear weight.
        let init = graph
            .initializer
            .iter_mut()
            .filter(|t| t.data_type() == 1)
            .max_by_key(|t| t.raw_data.as_ref().map_or(0, |r| r.len()))
            .unwrap();
        let mut raw = init.raw_data.take().unwrap().to_vec();
        for chunk in raw.chunks_exact_mut(4) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        init.raw_data = Some(raw.into());
        let tensor = init.name().to_string();
        (write_model(dir.path(), name, &model), tensor)
    };
    let (nan, tensor) = poisoned(f32::NAN, "nan.onnx");
    assert_refused(
        &run(&["eval", s(&nan), "--data", FASHION, "--range", "0:50"]),
        &tensor,
    );
    let (inf, _) = poisoned(f32::INFINITY, "inf.onnx");
    assert_refused(
        &run(&["eval", s(&inf), "--data", FASHION, "--range", "0:50"]),
        "not finite",
    );
    assert_refused(&run(&["verify", s(&inf)]), "not finite");
}

// 10. -----------------------------------------------------------------------

#[test]
fn messages_are_one_line_named_and_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let vgg = common::fixture(VGG);
    // clap's missing-argument names.
    let out = run(&["sanitize", s(&vgg), "-o", "x.onnx"]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("--clean"), "{}", out.stderr);
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);

    // Node names with ESC, CR and NUL: escaped in inspect's text and in errors.
    let mut model = decode_fixture(VGG);
    let graph = model.graph.as_mut().unwrap();
    graph.node[0].name = Some("\u{1b}[31mred\r\0".into());
    let input = graph.node[0].output[0].clone();
    graph.node.push(NodeProto {
        name: Some("\u{1b}]0;owned\u{7}".into()),
        op_type: Some("Frobnicate".into()),
        input: vec![input],
        output: vec!["unused".into()],
        ..Default::default()
    });
    let path = write_model(dir.path(), "names.onnx", &model);
    let out = run(&["inspect", s(&path)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !out.stdout.contains(&0x1b) && !out.stdout.contains(&0),
        "raw control bytes on stdout"
    );
    let out = run(&["verify", s(&path)]);
    assert_refused(&out, "Frobnicate");
    assert!(out.stderr.contains("\\u{1b}"), "{}", out.stderr);

    // The unsupported-op list stays on one line (assert_refused checks).
    // ONNX Runtime's own log lines do not reach stderr: an initializer no
    // node uses makes it warn.
    let mut model = decode_fixture(VGG);
    let graph = model.graph.as_mut().unwrap();
    graph.initializer.push(TensorProto {
        name: Some("never_used".into()),
        data_type: Some(1),
        dims: vec![2],
        float_data: vec![1.0, 2.0],
        ..Default::default()
    });
    let path = write_model(dir.path(), "unused.onnx", &model);
    let out = run(&["verify", s(&path)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stderr, "", "stderr should be empty");

    // A libtorch error is said once, with its cause.
    let eval_flat = |model: &Path| {
        run(&[
            "eval",
            s(model),
            "--data",
            FASHION,
            "--range",
            "0:10",
            "--layout",
            "flat",
        ])
    };
    let out = eval_flat(&vgg);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let parts: Vec<&str> = out
        .stderr
        .trim()
        .split(": ")
        .filter(|p| p.len() > 20)
        .collect();
    let mut unique = parts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(parts.len(), unique.len(), "repeated: {}", out.stderr);

    // TorchScript forward failures carry their cause.
    let ts = common::fixture("vgg_badnets_traced.pt");
    assert_refused(&eval_flat(&ts), "flat: ");
}

// 12. Bounded by the machine, safe when killed (issue 32) --------------------

/// Writes `path` with Python's zlib (far faster on zeros than a debug build
/// of flate2): a gzip stream (`kind = "gzip"`) holding `head` then `zeros`
/// zero bytes, or (`kind = "zip"`) a copy of the zip archive `source` whose
/// entry `entry` gets `zeros` zero bytes appended, deflated.
fn python_bomb(kind: &str, path: &Path, head: &[u8], zeros: u64, source: &str, entry: &str) {
    let script = "import sys, zlib, zipfile\n\
        kind, path, head, zeros, source, entry = sys.argv[1:7]\n\
        head, zeros = bytes.fromhex(head), int(zeros)\n\
        chunk = bytes(1 << 24)\n\
        if kind == 'gzip':\n\
        \x20   c = zlib.compressobj(1, zlib.DEFLATED, 31)\n\
        \x20   out = open(path, 'wb')\n\
        \x20   out.write(c.compress(head))\n\
        \x20   for _ in range(zeros // len(chunk)): out.write(c.compress(chunk))\n\
        \x20   out.write(c.compress(bytes(zeros % len(chunk))))\n\
        \x20   out.write(c.flush())\n\
        else:\n\
        \x20   src = zipfile.ZipFile(source)\n\
        \x20   with zipfile.ZipFile(path, 'w') as out:\n\
        \x20       for info in src.infolist():\n\
        \x20           data = src.read(info)\n\
        \x20           if info.filename != entry:\n\
        \x20               out.writestr(info, data)\n\
        \x20               continue\n\
        \x20           big = zipfile.ZipInfo(info.filename)\n\
        \x20           big.compress_type = zipfile.ZIP_DEFLATED\n\
        \x20           with out.open(big, 'w', force_zip64=True) as w:\n\
        \x20               w.write(data)\n\
        \x20               for _ in range(zeros // len(chunk)): w.write(chunk)\n";
    let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
    let made = Command::new(common::python())
        .args([
            "-c",
            script,
            kind,
            s(path),
            &hex,
            &zeros.to_string(),
            source,
            entry,
        ])
        .status()
        .unwrap();
    assert!(made.success(), "making {}", path.display());
}

#[test]
fn the_memory_budget_fits_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let vgg = common::fixture(VGG);
    // A gzip'd IDX whose header tells the truth: 2 M images of 28x28, 1.5 GiB
    // once inflated, from about 6 MB. Under the old fixed budget of 8 GiB it
    // was inflated until the address space ran out; in a 2 GiB address
    // space the budget is a share of what is left, and the claim is refused
    // before anything is inflated.
    let images: u32 = 2 << 20;
    let mut head = vec![0, 0, 0x08, 3];
    for d in [images, 28, 28] {
        head.extend_from_slice(&d.to_be_bytes());
    }
    let bomb = dir.path().join("true-images-idx3-ubyte.gz");
    python_bomb("gzip", &bomb, &head, u64::from(images) * 784, "", "");
    let before = snapshot(dir.path());
    let out = run(&["eval", s(&vgg), "--data", s(&bomb)]);
    assert_refused(&out, "true-images-idx3-ubyte.gz");
    assert!(out.stderr.contains("memory budget"), "{}", out.stderr);
    // Half of the address space left, or less where the machine has less
    // (a small runner's available memory or cgroup limit).
    assert!(
        ["address-space limit", "available memory", "cgroup"]
            .iter()
            .any(|origin| out.stderr.contains(origin)),
        "{}",
        out.stderr
    );
    assert!(
        out.max_rss_kib < 512 << 10,
        "peak memory {} MiB: the stream was inflated",
        out.max_rss_kib >> 10
    );
    // The budget can still be raised on purpose: then it is the address
    // space that stops it, still as an error naming the file.
    let raised = run_with(
        &["eval", s(&vgg), "--data", s(&bomb)],
        &[("IBAU_MEMORY_BUDGET", "64G")],
        None,
    );
    assert_refused(&raised, "true-images-idx3-ubyte.gz");
    assert_eq!(before, snapshot(dir.path()), "an input changed");

    // A model file larger than the budget is refused before it is read.
    let small = run_with(
        &["inspect", s(&vgg)],
        &[("IBAU_MEMORY_BUDGET", "64K")],
        None,
    );
    assert_refused(&small, VGG);
    assert!(
        small.stderr.contains("reading and decoding it"),
        "{}",
        small.stderr
    );

    // A TorchScript archive whose first weight record inflates to 1.5 GiB:
    // libtorch's loader would allocate it; the archive is inspected first.
    let ts = dir.path().join("inflating.pt");
    python_bomb(
        "zip",
        &ts,
        &[],
        3 << 29,
        s(&common::fixture("vgg_badnets_traced.pt")),
        "vgg_badnets_traced/data/0",
    );
    // Deflated: a small file (the run's peak memory counts what the test
    // process holds when it forks the child).
    assert!(std::fs::metadata(&ts).unwrap().len() < 16 << 20);
    let before = snapshot(dir.path());
    for args in [
        vec!["inspect", s(&ts)],
        vec!["eval", s(&ts), "--data", FASHION, "--range", "0:10"],
    ] {
        let out = run(&args);
        assert_refused(&out, "inflating.pt");
        assert!(
            out.stderr.contains("vgg_badnets_traced/data/0"),
            "{}",
            out.stderr
        );
        assert!(
            out.max_rss_kib < 512 << 10,
            "peak {} MiB",
            out.max_rss_kib >> 10
        );
    }
    assert_eq!(before, snapshot(dir.path()), "an input changed");
}

#[test]
fn a_killed_sanitize_leaves_nothing_after_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let vgg = common::fixture(VGG);
    let out = dir.path().join("out.onnx");
    let staging = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains(".ibau-staging-"))
            .collect()
    };
    // A real run, killed with SIGKILL while it trains.
    let mut child = Command::new(binary())
        .args([
            "sanitize",
            "--no-scan",
            s(&vgg),
            "--clean",
            FASHION,
            "--clean-range",
            "0:100",
            "--rounds",
            "1000000",
            "-o",
            s(&out),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while staging(dir.path()).is_empty() {
        assert!(start.elapsed() < TIME_LIMIT, "no staging folder appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    let left = staging(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    // A leftover named for a PID that is alive (PID 1, as in another
    // container), and a temporary file of a killed report write.
    let foreign = dir.path().join(".ibau-staging-1-00000000deadbeef");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("out.onnx"), b"half").unwrap();
    let tmp = dir.path().join(".report.json.ibau-tmp-1");
    std::fs::write(&tmp, b"{\"half").unwrap();
    // A user's file that only looks alike stays.
    let keep = dir.path().join("notes.ibau-tmp-1");
    std::fs::write(&keep, b"mine").unwrap();

    // The next run into the folder (one that then fails on its options)
    // removes them and says so, on its own line before the error.
    let mut args = vec!["-o", s(&out)];
    args.extend(WRONG_TARGET);
    let next = sanitize(&vgg, &args);
    assert_eq!(next.code, Some(2), "{}", next.stderr);
    let lines: Vec<&str> = next.stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 2, "{}", next.stderr);
    assert!(
        lines[0].starts_with("note: removed 3 leftovers of killed ibau runs"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("error: ") && lines[1].contains("--target 99"),
        "{}",
        lines[1]
    );
    let remaining: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(remaining, vec![keep], "left behind");
}

#[test]
fn runtime_failures_are_said_in_our_words() {
    let dir = tempfile::tempdir().unwrap();
    // A graph with no nodes and no outputs: ONNX Runtime's C++ check text
    // used to come through.
    let mut empty = build::model(vec![], vec![], &[("x", &[1, 1, 28, 28])], &[]);
    empty.proto.graph.as_mut().unwrap().output.clear();
    let path = write_model(dir.path(), "empty.onnx", &empty.proto);
    assert_refused(&run(&["verify", s(&path)]), "has no graph outputs");

    // No nodes, the output a weight: libtorch's "Expected a proper Tensor
    // but got None" during training.
    let constant = small_model(
        dir.path(),
        "constant.onnx",
        &[1, 1, 28, 28],
        vec![node("id", "Identity", &["w"], &["y"])],
        vec![build::floats("w", &[1, 10], &[0.5; 10])],
    );
    let out = sanitize(&constant, &["-o", s(&dir.path().join("c-out.onnx"))]);
    assert_refused(&out, "does not depend on the graph input `x`");
    assert!(out.stderr.contains("constant.onnx"), "{}", out.stderr);

    // An input declared with a negative dimension: "mat1 and mat2 shapes
    // cannot be multiplied" from the first Gemm.
    let mut model = decode_fixture("jax_mlp.onnx");
    let input = &mut model.graph.as_mut().unwrap().input[0];
    dims_mut(input)[1].value = Some(DimValue::DimValue(-784));
    let path = write_model(dir.path(), "negative.onnx", &model);
    let out = run(&["verify", s(&path)]);
    assert_refused(&out, "declares dimension -784 at axis 1");

    assert_eq!(
        snapshot(dir.path()).len(),
        3,
        "only the three models are in the folder"
    );

    // --std without --mean.
    let out = run(&[
        "eval",
        s(&common::fixture(VGG)),
        "--data",
        FASHION,
        "--range",
        "0:10",
        "--std",
        "0.5",
    ]);
    assert_refused(&out, "--std");
    assert!(out.stderr.contains("without --mean"), "{}", out.stderr);
    assert!(!out.stderr.contains("give 1 or 1"), "{}", out.stderr);
}
