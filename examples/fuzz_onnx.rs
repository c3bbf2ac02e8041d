//! A seeded mutation fuzzer for the ONNX decoder and the import, on stable
//! Rust (no cargo-fuzz). Small real models (the ONNX backend test data of
//! Debian's libonnx-testdata, the fixtures under models/) are mutated byte by
//! byte and through the decoded `ModelProto` (huge, negative and zero dims,
//! extreme attributes, rewired nodes, other op types, odd opsets and data
//! types), then decoded, their external data resolved, imported on the CPU
//! and, when the declared input is small, run forward and backward once; a
//! share of the imported models also goes through the classifier loader and
//! `inspect`'s summary. A panic anywhere is a crash. Everything runs under a
//! memory budget of [`MEMORY_BUDGET`], so that a file claiming a huge tensor
//! is refused rather than allocated.
//!
//! The long campaign (tools/fuzz.sh runs it):
//!
//! ```text
//! cargo run --release --example fuzz_onnx -- --iterations 1000000 --seed 1 --save-crashes /tmp/fuzz-crashes
//! ```
//!
//! A debug build (`cargo run --example fuzz_onnx -- ...`) also catches integer
//! overflow. The campaign runs in a child process that a supervisor restarts,
//! so that an abort or a signal in libtorch, an execution that hangs or one
//! that runs past the RSS limit is recorded as a crash with its input instead
//! of ending the campaign. Iterations are independent: iteration `N` of seed
//! `S` is the same input on every run, and `--start N --iterations 1`
//! replays it. Exit codes: 0 no crash, 1 crashes found, 2 error.
//!
//! tests/fuzz.rs includes this file as a module for a short seeded run in the
//! default tests; the engine exists once.

use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ibau::graph::ops::Registry;
use ibau::graph::{rebatch, unsupported_ops, Graph, ImportOptions, ValueInfo};
use ibau::ibau::Classifier;
use ibau::onnx::proto::{
    tensor_shape_proto::{dimension::Value as DimValue, Dimension},
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use ibau::onnx::{decode_model, external, tensor_from_proto, Model};
use prost::Message;
use tch::{Device, Kind, Tensor};

/// The memory budget (`IBAU_MEMORY_BUDGET`) the fuzzer runs under.
pub const MEMORY_BUDGET: &str = "256M";
/// The default root of the ONNX backend test data.
pub const TESTDATA: &str = "/usr/share/libonnx-testdata/data";
const TESTDATA_FOLDERS: [&str; 4] = ["node", "pytorch-converted", "pytorch-operator", "simple"];
/// Test-data models larger than this are not seeds (they slow the loop).
const MAX_SEED_BYTES: u64 = 20 << 10;
/// A forward pass runs only when the graph inputs hold at most this many
/// elements in all: small inputs keep every intermediate small too.
const FORWARD_MAX_ELEMENTS: i64 = 1 << 14;
/// Iterations per thousand that start from a fixture (about 1 MB each).
const FIXTURE_PER_MILLE: u64 = 40;
/// Iterations per thousand that start from a seed with an unsupported op.
const UNSUPPORTED_PER_MILLE: u64 = 100;
/// Imported models per thousand that also go through the classifier loader
/// and `inspect` (each imports again).
const DEEP_PER_MILLE: u64 = 200;
/// Iterations per thousand that mutate a data file instead of a model.
const DATA_PER_MILLE: u64 = 250;
/// The real images the data seeds hold (Debian's dataset-fashion-mnist).
pub const FASHION: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
/// Images per data seed.
const DATA_SEED_IMAGES: usize = 6;
/// Inputs saved per distinct crash.
const SAVED_PER_CRASH: u64 = 3;

/// Sets `IBAU_MEMORY_BUDGET` to [`MEMORY_BUDGET`] unless it is set, and
/// returns the budget in force (the library reads the variable once: a test
/// that ran earlier in the same process may have fixed another value).
pub fn set_memory_budget() -> u64 {
    if std::env::var_os(ibau::limits::BUDGET_VARIABLE).is_none() {
        std::env::set_var(ibau::limits::BUDGET_VARIABLE, MEMORY_BUDGET);
    }
    ibau::limits::memory_budget()
}

// ---------------------------------------------------------------- random

/// splitmix64: small, seedable, and good enough to choose mutations.
pub struct Rng(u64);

const INTERESTING_INTS: [i64; 23] = [
    0,
    1,
    -1,
    2,
    -2,
    3,
    4,
    7,
    8,
    16,
    255,
    256,
    65_535,
    (1 << 31) - 1,
    1 << 31,
    1 << 32,
    10_000_000_000_000,
    1 << 62,
    -(1 << 62),
    i64::MAX,
    i64::MAX - 1,
    i64::MIN,
    i64::MIN + 1,
];

const INTERESTING_FLOATS: [f32; 12] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::MAX,
    f32::MIN,
    f32::MIN_POSITIVE,
    1e-45,
    1e30,
];

impl Rng {
    /// The generator of one iteration: iterations are independent.
    pub fn for_iteration(seed: u64, iteration: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ iteration.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ stream);
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }

    /// An index into a collection of `len` items, `None` when empty.
    pub fn index(&mut self, len: usize) -> Option<usize> {
        (len > 0).then(|| self.below(len))
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// Mostly boundary values, some small ones, some random bits.
    pub fn int(&mut self) -> i64 {
        match self.below(4) {
            0 | 1 => self.pick(&INTERESTING_INTS),
            2 => self.below(17) as i64 - 8,
            _ => self.next_u64() as i64,
        }
    }

    pub fn float(&mut self) -> f32 {
        match self.below(3) {
            0 | 1 => self.pick(&INTERESTING_FLOATS),
            _ => f32::from_bits(self.next_u64() as u32),
        }
    }
}

// ---------------------------------------------------------------- corpus

/// One seed model.
pub struct Seed {
    /// `folder/test_name` or the fixture's file name.
    pub name: String,
    pub bytes: Vec<u8>,
    pub proto: ModelProto,
    /// The inputs of the test's first data set, by graph input name.
    pub inputs: Vec<(String, TensorProto)>,
}

/// The seeds, grouped so that every op family is drawn about as often.
pub struct Corpus {
    pub seeds: Vec<Seed>,
    /// Test-data seeds the registry supports, by op types.
    supported: Vec<Vec<usize>>,
    /// Test-data seeds with an op the registry lacks.
    unsupported: Vec<usize>,
    fixtures: Vec<usize>,
    /// The supported op types, for `op_type` mutations.
    op_types: Vec<&'static str>,
    /// The external-data files beside the fixtures.
    pub data_files: Vec<PathBuf>,
    /// Data files in every format ibau reads, made from real images.
    pub data: Vec<DataSeed>,
}

/// One data file of a data set: the mutated file is written as `name` in a
/// folder that also holds the seed's other files (`companions`).
pub struct DataSeed {
    /// The path inside the data folder, `images-idx3-ubyte.gz`, `set/1/a.png`.
    pub name: String,
    pub bytes: Vec<u8>,
    /// The other files of the set, written as they are.
    pub companions: Vec<(String, Vec<u8>)>,
    /// What `ibau::data::load` is given, relative to the data folder.
    pub load: String,
}

/// The data seeds: the first [`DATA_SEED_IMAGES`] Fashion-MNIST test images
/// and labels as IDX (plain and gzip'd), `.npy` pairs (uint8 `[N, H, W]` and
/// float32 `[N, 1, H, W]`), `.npz`, and a folder of PNG, JPEG and BMP files.
/// Empty when the data set is not installed.
pub fn data_seeds() -> Vec<DataSeed> {
    use std::io::{Read, Write};
    let Ok(file) = std::fs::File::open(FASHION) else {
        return Vec::new();
    };
    let mut images = Vec::new();
    let n = DATA_SEED_IMAGES;
    if flate2::read::GzDecoder::new(file)
        .take((16 + n * 784) as u64)
        .read_to_end(&mut images)
        .is_err()
        || images.len() < 16 + n * 784
    {
        return Vec::new();
    }
    let pixels = images[16..].to_vec();
    let labels: Vec<u8> = (0..n as u8).map(|i| i % 3).collect();
    let idx = |magic: [u8; 4], dims: &[u32], data: &[u8]| {
        let mut out = magic.to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    };
    let image_idx = idx([0, 0, 8, 3], &[n as u32, 28, 28], &pixels);
    let label_idx = idx([0, 0, 8, 1], &[n as u32], &labels);
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).expect("in memory");
        e.finish().expect("in memory")
    };
    let npy = |descr: &str, shape: &[usize], data: &[u8]| {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({},), }}",
            dims.join(", ")
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    };
    let floats: Vec<u8> = pixels
        .iter()
        .flat_map(|&p| (f32::from(p) / 255.0).to_le_bytes())
        .collect();
    let x_u8 = npy("|u1", &[n, 28, 28], &pixels);
    let x_f32 = npy("<f4", &[n, 1, 28, 28], &floats);
    let y = npy(
        "<i8",
        &[n],
        &labels
            .iter()
            .flat_map(|&l| i64::from(l).to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let npz = {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::FileOptions::default();
        for (name, bytes) in [("x.npy", &x_u8), ("y.npy", &y)] {
            zip.start_file(name, options).expect("in memory");
            zip.write_all(bytes).expect("in memory");
        }
        zip.finish().expect("in memory").into_inner()
    };
    let picture = |i: usize, format: image::ImageFormat| {
        let img = image::GrayImage::from_raw(28, 28, pixels[i * 784..(i + 1) * 784].to_vec())
            .expect("28x28");
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("in memory");
        out.into_inner()
    };
    let folder_files = [
        (
            "set/0/a.png".to_string(),
            picture(0, image::ImageFormat::Png),
        ),
        (
            "set/0/b.jpg".to_string(),
            picture(1, image::ImageFormat::Jpeg),
        ),
        (
            "set/1/c.bmp".to_string(),
            picture(2, image::ImageFormat::Bmp),
        ),
        (
            "set/1/d.png".to_string(),
            picture(3, image::ImageFormat::Png),
        ),
    ];
    let seed = |name: &str, bytes: &[u8], companions: Vec<(&str, &[u8])>, load: &str| DataSeed {
        name: name.to_string(),
        bytes: bytes.to_vec(),
        companions: companions
            .into_iter()
            .map(|(n, b)| (n.to_string(), b.to_vec()))
            .collect(),
        load: load.to_string(),
    };
    let images_name = "t-images-idx3-ubyte";
    let labels_name = "t-labels-idx1-ubyte";
    let mut seeds = vec![
        seed(
            images_name,
            &image_idx,
            vec![(labels_name, &label_idx)],
            images_name,
        ),
        seed(
            labels_name,
            &label_idx,
            vec![(images_name, &image_idx)],
            images_name,
        ),
        seed(
            "g-images-idx3-ubyte.gz",
            &gz(&image_idx),
            vec![("g-labels-idx1-ubyte.gz", &gz(&label_idx))],
            "g-images-idx3-ubyte.gz",
        ),
        seed(
            "g-labels-idx1-ubyte.gz",
            &gz(&label_idx),
            vec![("g-images-idx3-ubyte.gz", &gz(&image_idx))],
            "g-images-idx3-ubyte.gz",
        ),
        seed("x.npy", &x_u8, vec![("y.npy", &y)], "x.npy"),
        seed("x.npy", &x_f32, vec![("y.npy", &y)], "x.npy"),
        seed("y.npy", &y, vec![("x.npy", &x_u8)], "x.npy"),
        seed("d.npz", &npz, vec![], "d.npz"),
    ];
    for (i, (name, bytes)) in folder_files.iter().enumerate() {
        let others: Vec<(&str, &[u8])> = folder_files
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, (n, b))| (n.as_str(), b.as_slice()))
            .collect();
        seeds.push(seed(name, bytes, others, "set"));
    }
    seeds
}

impl Corpus {
    /// Every test-data `model.onnx` of at most 20 KiB under `testdata` (sorted)
    /// and every `*.onnx` under `models`.
    pub fn load(testdata: &Path, models: &Path) -> Result<Corpus, String> {
        let registry = Registry::standard();
        let mut corpus = Corpus {
            seeds: Vec::new(),
            supported: Vec::new(),
            unsupported: Vec::new(),
            fixtures: Vec::new(),
            op_types: registry.op_types(),
            data_files: Vec::new(),
            data: data_seeds(),
        };
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for path in testdata_models(testdata)? {
            let Some(seed) = read_seed(&path, testdata) else {
                continue;
            };
            let model = seed_model(&seed);
            let index = corpus.seeds.len();
            if unsupported_ops(&model, &registry).is_empty() {
                groups.entry(op_key(&seed.proto)).or_default().push(index);
            } else {
                corpus.unsupported.push(index);
            }
            corpus.seeds.push(seed);
        }
        corpus.supported = groups.into_values().collect();
        for path in sorted_files(models)? {
            let name = file_name(&path);
            if name.ends_with(".data") {
                corpus.data_files.push(path);
                continue;
            }
            if !name.ends_with(".onnx") {
                continue;
            }
            let Some(seed) = read_seed(&path, models) else {
                continue;
            };
            corpus.fixtures.push(corpus.seeds.len());
            corpus.seeds.push(seed);
        }
        if corpus.supported.is_empty() {
            return Err(format!(
                "no supported seed models under {}: is libonnx-testdata installed (tools/setup.sh)?",
                testdata.display()
            ));
        }
        Ok(corpus)
    }

    /// How many seeds: supported test data, unsupported test data, fixtures.
    pub fn counts(&self) -> (usize, usize, usize) {
        let supported = self.supported.iter().map(Vec::len).sum();
        (supported, self.unsupported.len(), self.fixtures.len())
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        if !self.fixtures.is_empty() && rng.chance(FIXTURE_PER_MILLE) {
            return rng.pick(&self.fixtures);
        }
        if !self.unsupported.is_empty() && rng.chance(UNSUPPORTED_PER_MILLE) {
            return rng.pick(&self.unsupported);
        }
        let group = &self.supported[rng.below(self.supported.len())];
        rng.pick(group)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    Ok(files)
}

fn testdata_models(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut models = Vec::new();
    for folder in TESTDATA_FOLDERS {
        let Ok(tests) = sorted_files(&root.join(folder)) else {
            continue;
        };
        for test in tests {
            let model = test.join("model.onnx");
            if model.metadata().is_ok_and(|m| m.len() <= MAX_SEED_BYTES) {
                models.push(model);
            }
        }
    }
    if models.is_empty() {
        return Err(format!(
            "{} holds no test models: run tools/setup.sh (installs Debian's libonnx-testdata)",
            root.display()
        ));
    }
    Ok(models)
}

fn read_seed(path: &Path, root: &Path) -> Option<Seed> {
    let bytes = std::fs::read(path).ok()?;
    let proto = ModelProto::decode(bytes.as_slice()).ok()?;
    let name = path
        .strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
        .trim_end_matches("/model.onnx")
        .to_string();
    let inputs = path
        .parent()
        .map(|dir| seed_inputs(&dir.join("test_data_set_0"), &proto))
        .unwrap_or_default();
    Some(Seed {
        name,
        bytes,
        proto,
        inputs,
    })
}

/// `input_K.pb` of a test data set, named after the K-th graph input that is
/// not an initializer.
fn seed_inputs(dir: &Path, proto: &ModelProto) -> Vec<(String, TensorProto)> {
    let Some(graph) = proto.graph.as_ref() else {
        return Vec::new();
    };
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    graph
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name()))
        .enumerate()
        .map_while(|(k, v)| {
            let bytes = std::fs::read(dir.join(format!("input_{k}.pb"))).ok()?;
            let tensor = TensorProto::decode(bytes.as_slice()).ok()?;
            Some((v.name().to_string(), tensor))
        })
        .collect()
}

fn seed_model(seed: &Seed) -> Model {
    Model {
        proto: seed.proto.clone(),
        path: PathBuf::from(&seed.name),
        external: Default::default(),
    }
}

/// The sorted distinct op types of a model: seeds of one op family share it.
fn op_key(proto: &ModelProto) -> String {
    let mut ops: Vec<&str> = proto
        .graph
        .iter()
        .flat_map(|g| g.node.iter().map(|n| n.op_type()))
        .collect();
    ops.sort_unstable();
    ops.dedup();
    ops.join("+")
}

// ---------------------------------------------------------------- mutation

/// One generated input.
pub struct Input {
    pub bytes: Vec<u8>,
    /// Index of the seed in [`Corpus::seeds`], or in [`Corpus::data`] when
    /// `data` is set.
    pub seed: usize,
    /// A data file rather than a model.
    pub data: bool,
    /// The mutations applied, in order.
    pub mutations: Vec<&'static str>,
}

/// The input of `iteration` under `seed`: a seed model with one to four
/// structure-aware mutations (70%), one to four byte-level ones (20%), or
/// both (10%).
pub fn generate(corpus: &Corpus, seed: u64, iteration: u64) -> Input {
    let mut rng = Rng::for_iteration(seed, iteration, 0);
    if !corpus.data.is_empty() && rng.chance(DATA_PER_MILLE) {
        return generate_data(corpus, &mut rng);
    }
    let index = corpus.pick(&mut rng);
    let source = &corpus.seeds[index];
    let mut mutations = Vec::new();
    let mode = rng.below(100);
    let mut bytes = if mode < 20 {
        source.bytes.clone()
    } else {
        let mut proto = source.proto.clone();
        for _ in 0..1 + rng.below(4) {
            mutations.push(mutate_model(&mut proto, &mut rng, &corpus.op_types));
        }
        proto.encode_to_vec()
    };
    if !(20..90).contains(&mode) {
        for _ in 0..1 + rng.below(4) {
            mutations.push(mutate_bytes(&mut bytes, &mut rng, corpus));
        }
    }
    Input {
        bytes,
        seed: index,
        data: false,
        mutations,
    }
}

/// A data seed with one to four byte-level mutations; a gzip'd seed is
/// mutated inside its stream half of the time (then compressed again), so
/// that the IDX header behind the gzip is reached.
fn generate_data(corpus: &Corpus, rng: &mut Rng) -> Input {
    use std::io::{Read, Write};
    let index = rng.below(corpus.data.len());
    let seed = &corpus.data[index];
    let mut mutations = Vec::new();
    let gz = seed.name.ends_with(".gz");
    let mut bytes = if gz && rng.chance(500) {
        let mut plain = Vec::new();
        let _ = flate2::read::GzDecoder::new(seed.bytes.as_slice()).read_to_end(&mut plain);
        for _ in 0..1 + rng.below(4) {
            mutations.push(mutate_bytes(&mut plain, rng, corpus));
        }
        mutations.push("gzip_again");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = encoder.write_all(&plain);
        encoder.finish().unwrap_or_default()
    } else {
        seed.bytes.clone()
    };
    if mutations.is_empty() {
        for _ in 0..1 + rng.below(4) {
            mutations.push(mutate_bytes(&mut bytes, rng, corpus));
        }
    }
    Input {
        bytes,
        seed: index,
        data: true,
        mutations,
    }
}

/// A position in `len` bytes: a third near the start, a third near the end
/// (where a large model keeps its graph inputs and outputs), a third anywhere.
fn position(len: usize, rng: &mut Rng) -> usize {
    let window = len.min(4096);
    match rng.below(3) {
        0 => rng.below(window),
        1 => len - 1 - rng.below(window),
        _ => rng.below(len),
    }
}

fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut Rng, corpus: &Corpus) -> &'static str {
    if bytes.is_empty() {
        bytes.push(rng.next_u64() as u8);
        return "insert_byte";
    }
    let pos = position(bytes.len(), rng);
    let rest = bytes.len() - pos;
    match rng.below(10) {
        0 => {
            bytes[pos] ^= 1 << rng.below(8);
            "flip_bit"
        }
        1 => {
            bytes[pos] = rng.pick(&[0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe]);
            "interesting_byte"
        }
        2 => {
            let word = rng.int().to_le_bytes();
            let n = rng.pick(&[2usize, 4, 8]).min(rest);
            bytes[pos..pos + n].copy_from_slice(&word[..n]);
            "interesting_word"
        }
        3 => {
            let n = 1 + rng.below(16);
            let new: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            bytes.splice(pos..pos, new);
            "insert_bytes"
        }
        4 => {
            let n = 1 + rng.below(rest.min(64));
            bytes.drain(pos..pos + n);
            "delete_bytes"
        }
        5 => {
            let from = rng.below(bytes.len());
            let n = 1 + rng.below((bytes.len() - from).min(256));
            let copy = bytes[from..from + n].to_vec();
            bytes.splice(pos..pos, copy);
            "duplicate_bytes"
        }
        6 => {
            bytes.truncate(pos);
            "truncate"
        }
        7 => {
            // Over-long and 64-bit varints where a length or a tag is read.
            let varint: &[u8] = match rng.below(3) {
                0 => &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                1 => &[
                    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
                ],
                _ => &[0xff, 0xff, 0xff, 0xff, 0x0f],
            };
            bytes.splice(pos..pos, varint.iter().copied());
            "varint"
        }
        8 => {
            let other = &corpus.seeds[rng.below(corpus.seeds.len())].bytes;
            let from = rng.below(other.len());
            bytes.truncate(pos);
            bytes.extend_from_slice(&other[from..other.len().min(from + 4096)]);
            "splice"
        }
        _ => {
            bytes[pos] = rng.next_u64() as u8;
            "random_byte"
        }
    }
}

const DATA_TYPES: [i32; 10] = [0, 1, 7, 8, 10, 14, 16, 23, 1000, -1];
const OPSETS: [i64; 16] = [
    -1,
    0,
    1,
    5,
    6,
    7,
    9,
    10,
    11,
    13,
    17,
    18,
    22,
    23,
    100,
    i64::MAX,
];
const INT_ATTRIBUTES: [&str; 22] = [
    "axis",
    "axes",
    "pads",
    "strides",
    "kernel_shape",
    "dilations",
    "group",
    "perm",
    "keepdims",
    "to",
    "split",
    "starts",
    "ends",
    "output_padding",
    "output_shape",
    "ceil_mode",
    "transA",
    "transB",
    "allowzero",
    "blocksize",
    "batch_dims",
    "k",
];
const FLOAT_ATTRIBUTES: [&str; 7] = [
    "alpha", "beta", "epsilon", "momentum", "gamma", "min", "max",
];
const STRING_ATTRIBUTES: [&str; 4] = [
    "mode",
    "auto_pad",
    "coordinate_transformation_mode",
    "nearest_mode",
];
const STRINGS: [&str; 10] = [
    "SAME_UPPER",
    "SAME_LOWER",
    "VALID",
    "NOTSET",
    "",
    "linear",
    "nearest",
    "cubic",
    "tf_crop_and_resize",
    "bogus",
];
const LOCATIONS: [&str; 7] = [
    "fuzz.onnx.data",
    "vgg_badnets_external.onnx.data",
    "missing.data",
    "../fuzz.onnx.data",
    "/etc/hostname",
    "",
    ".",
];
const OFFSETS: [&str; 8] = [
    "0",
    "1",
    "4096",
    "65535",
    "18446744073709551615",
    "9223372036854775807",
    "-1",
    "x",
];

/// One structure-aware mutation of `model`; returns its name.
fn mutate_model(model: &mut ModelProto, rng: &mut Rng, op_types: &[&'static str]) -> &'static str {
    match rng.below(20) {
        0 => mutate_opset(model, rng),
        1 => {
            model.ir_version = Some(rng.pick(&[-1, 0, 1, 3, 7, 10, 11, 12, i64::MAX]));
            "ir_version"
        }
        choice => {
            let graph = model.graph.get_or_insert_with(GraphProto::default);
            mutate_graph(graph, rng, op_types, choice)
        }
    }
}

fn mutate_opset(model: &mut ModelProto, rng: &mut Rng) -> &'static str {
    match rng.below(6) {
        0..=3 => {
            let Some(k) = rng.index(model.opset_import.len()) else {
                return "opset_none";
            };
            model.opset_import[k].version = Some(rng.pick(&OPSETS));
            "opset_version"
        }
        4 => {
            model.opset_import.clear();
            "opset_clear"
        }
        _ => {
            model.opset_import.push(OperatorSetIdProto {
                domain: Some(
                    rng.pick(&["", "ai.onnx", "com.microsoft", "ai.onnx.ml"])
                        .into(),
                ),
                version: Some(rng.pick(&OPSETS)),
            });
            "opset_add"
        }
    }
}

fn mutate_graph(
    graph: &mut GraphProto,
    rng: &mut Rng,
    op_types: &[&'static str],
    choice: usize,
) -> &'static str {
    match choice {
        2..=4 => match rng.index(graph.initializer.len()) {
            Some(k) => mutate_tensor(&mut graph.initializer[k], rng),
            None => mutate_value_info(graph, rng),
        },
        5..=7 => mutate_value_info(graph, rng),
        8..=11 => match rng.index(graph.node.len()) {
            Some(k) => mutate_attribute(&mut graph.node[k], rng),
            None => "attribute_no_node",
        },
        12..=14 => mutate_wiring(graph, rng),
        15 | 16 => {
            let Some(k) = rng.index(graph.node.len()) else {
                return "op_type_no_node";
            };
            let op = if rng.chance(100) {
                "FuzzUnknownOp"
            } else {
                rng.pick(op_types)
            };
            graph.node[k].op_type = Some(op.to_string());
            "op_type"
        }
        17 => {
            let Some(k) = rng.index(graph.node.len()) else {
                return "domain_no_node";
            };
            graph.node[k].domain = Some(rng.pick(&["", "ai.onnx", "com.microsoft"]).into());
            "node_domain"
        }
        _ => mutate_node_list(graph, rng),
    }
}

fn mutate_dims(dims: &mut Vec<i64>, rng: &mut Rng) {
    match rng.below(6) {
        0..=3 if !dims.is_empty() => {
            let k = rng.below(dims.len());
            dims[k] = rng.int();
        }
        4 => dims.push(rng.int()),
        _ => {
            dims.pop();
        }
    }
}

fn mutate_tensor(tensor: &mut TensorProto, rng: &mut Rng) -> &'static str {
    match rng.below(9) {
        0..=2 => {
            mutate_dims(&mut tensor.dims, rng);
            "tensor_dims"
        }
        3 => {
            tensor.data_type = Some(match rng.below(2) {
                0 => rng.below(27) as i32,
                _ => rng.pick(&DATA_TYPES),
            });
            "tensor_data_type"
        }
        4 => {
            tensor.raw_data = None;
            "drop_raw_data"
        }
        5 => {
            let mut raw = tensor.raw_data.take().unwrap_or_default().to_vec();
            match rng.below(2) {
                0 => raw.truncate(rng.below(raw.len() + 1)),
                _ => raw.extend((0..1 + rng.below(8)).map(|_| rng.next_u64() as u8)),
            }
            tensor.raw_data = Some(raw.into());
            "resize_raw_data"
        }
        6 => {
            let n = rng.below(5);
            match rng.below(3) {
                0 => tensor.float_data = (0..n).map(|_| rng.float()).collect(),
                1 => tensor.int64_data = (0..n).map(|_| rng.int()).collect(),
                _ => tensor.int32_data = (0..n).map(|_| rng.int() as i32).collect(),
            }
            "typed_data"
        }
        7 => {
            let entry = |key: &str, value: &str| StringStringEntryProto {
                key: Some(key.into()),
                value: Some(value.into()),
            };
            tensor.data_location = Some(1);
            tensor.external_data = vec![entry("location", rng.pick(&LOCATIONS))];
            for key in ["offset", "length"] {
                if rng.chance(700) {
                    let value = match rng.below(2) {
                        0 => rng.pick(&OFFSETS).to_string(),
                        _ => rng.below(70_000).to_string(),
                    };
                    tensor.external_data.push(entry(key, &value));
                }
            }
            "external_data"
        }
        _ => {
            tensor.data_location = Some(rng.int() as i32);
            "data_location"
        }
    }
}

fn tensor_type(value: &mut ValueInfoProto) -> Option<&mut type_proto::Tensor> {
    match value.r#type.as_mut()?.value.as_mut()? {
        type_proto::Value::TensorType(t) => Some(t),
        _ => None,
    }
}

fn mutate_value_info(graph: &mut GraphProto, rng: &mut Rng) -> &'static str {
    let list = match rng.below(10) {
        0..=5 => &mut graph.input,
        6..=8 => &mut graph.output,
        _ => &mut graph.value_info,
    };
    let Some(k) = rng.index(list.len()) else {
        return "value_info_none";
    };
    let value = &mut list[k];
    let choice = rng.below(10);
    let Some(tensor) = tensor_type(value) else {
        value.r#type = Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: None,
            })),
            ..Default::default()
        });
        return "value_tensor_type";
    };
    match choice {
        0 => {
            tensor.elem_type = Some(rng.pick(&DATA_TYPES));
            "value_elem_type"
        }
        1 => {
            tensor.shape = None;
            "value_no_shape"
        }
        2 => {
            value.r#type = None;
            "value_no_type"
        }
        _ => {
            let dims = &mut tensor
                .shape
                .get_or_insert_with(TensorShapeProto::default)
                .dim;
            let dim = Dimension {
                value: match rng.below(8) {
                    0 => Some(DimValue::DimParam("N".into())),
                    1 => None,
                    _ => Some(DimValue::DimValue(rng.int())),
                },
                ..Default::default()
            };
            match rng.index(dims.len()) {
                Some(d) if rng.chance(800) => dims[d] = dim,
                _ if rng.chance(500) => dims.push(dim),
                _ => {
                    dims.pop();
                }
            }
            "value_dims"
        }
    }
}

fn mutate_attribute(node: &mut NodeProto, rng: &mut Rng) -> &'static str {
    if node.attribute.is_empty() || rng.chance(200) {
        node.attribute.push(random_attribute(rng));
        return "attribute_add";
    }
    let k = rng.below(node.attribute.len());
    let attr = &mut node.attribute[k];
    match rng.below(9) {
        0..=2 if !attr.ints.is_empty() => {
            let i = rng.below(attr.ints.len());
            attr.ints[i] = rng.int();
            "attribute_ints"
        }
        0..=2 if attr.i.is_some() => {
            attr.i = Some(rng.int());
            "attribute_int"
        }
        0..=2 if attr.f.is_some() => {
            attr.f = Some(rng.float());
            "attribute_float"
        }
        0..=3 => {
            match rng.below(3) {
                0 => attr.ints.clear(),
                1 => attr.ints.push(rng.int()),
                _ => attr.ints = attr.ints.repeat(1 + rng.below(3)),
            }
            "attribute_ints_length"
        }
        4 => match attr.t.as_mut() {
            Some(t) => mutate_tensor(t, rng),
            None => {
                attr.floats = (0..rng.below(5)).map(|_| rng.float()).collect();
                "attribute_floats"
            }
        },
        5 => {
            attr.r#type = Some(rng.below(16) as i32);
            "attribute_type"
        }
        6 => {
            attr.s = Some(match rng.below(4) {
                0 => vec![0xff, 0xfe],
                _ => rng.pick(&STRINGS).as_bytes().to_vec(),
            });
            "attribute_string"
        }
        7 => {
            node.attribute.push(node.attribute[k].clone());
            "attribute_duplicate"
        }
        _ => {
            let names: Vec<&str> = INT_ATTRIBUTES
                .iter()
                .chain(&FLOAT_ATTRIBUTES)
                .chain(&STRING_ATTRIBUTES)
                .copied()
                .collect();
            attr.name = Some(rng.pick(&names).into());
            "attribute_rename"
        }
    }
}

/// An attribute with a known name and a value of the right or the wrong kind.
fn random_attribute(rng: &mut Rng) -> AttributeProto {
    let mut attr = AttributeProto::default();
    match rng.below(4) {
        0 | 1 => {
            attr.name = Some(rng.pick(&INT_ATTRIBUTES).into());
            if rng.chance(500) {
                attr.i = Some(rng.int());
                attr.r#type = Some(2);
            } else {
                attr.ints = (0..rng.below(6)).map(|_| rng.int()).collect();
                attr.r#type = Some(7);
            }
        }
        2 => {
            attr.name = Some(rng.pick(&FLOAT_ATTRIBUTES).into());
            attr.f = Some(rng.float());
            attr.r#type = Some(1);
        }
        _ => {
            attr.name = Some(rng.pick(&STRING_ATTRIBUTES).into());
            attr.s = Some(rng.pick(&STRINGS).as_bytes().to_vec());
            attr.r#type = Some(3);
        }
    }
    if rng.chance(150) {
        attr.r#type = Some(rng.below(16) as i32);
    }
    attr
}

/// Every value name of the graph: inputs, initializers, node outputs.
fn value_names(graph: &GraphProto) -> Vec<String> {
    graph
        .input
        .iter()
        .map(|v| v.name().to_string())
        .chain(graph.initializer.iter().map(|t| t.name().to_string()))
        .chain(graph.node.iter().flat_map(|n| n.output.iter().cloned()))
        .collect()
}

/// Points one input or output somewhere else: cycles, dangling inputs,
/// duplicate outputs, outputs that shadow inputs or initializers.
fn mutate_wiring(graph: &mut GraphProto, rng: &mut Rng) -> &'static str {
    let names = value_names(graph);
    let Some(i) = rng.index(graph.node.len()) else {
        return "wiring_no_node";
    };
    let n = graph.node.len();
    let any_name = |rng: &mut Rng| match rng.index(names.len()) {
        Some(k) => names[k].clone(),
        None => "fuzz_value".to_string(),
    };
    let (list, name, what) = match rng.below(8) {
        0 | 1 => {
            // An input read from this node's or a later node's output.
            let j = i + rng.below(n - i);
            let later = &graph.node[j].output;
            let name = match rng.index(later.len()) {
                Some(k) => later[k].clone(),
                None => any_name(rng),
            };
            (&mut graph.node[i].input, name, "cycle")
        }
        2 => (
            &mut graph.node[i].input,
            "fuzz_dangling".into(),
            "dangling_input",
        ),
        3 => (&mut graph.node[i].input, String::new(), "empty_input"),
        4 | 5 => {
            let name = any_name(rng);
            (&mut graph.node[i].input, name, "rewire_input")
        }
        _ => {
            let name = any_name(rng);
            (&mut graph.node[i].output, name, "duplicate_output")
        }
    };
    match rng.index(list.len()) {
        Some(k) if rng.chance(800) => list[k] = name,
        _ => list.push(name),
    }
    what
}

/// Adds, drops, duplicates or reorders nodes and graph inputs and outputs.
fn mutate_node_list(graph: &mut GraphProto, rng: &mut Rng) -> &'static str {
    let n = graph.node.len();
    match rng.below(8) {
        0 if n > 0 => {
            graph.node.remove(rng.below(n));
            "node_remove"
        }
        1 if n > 0 => {
            let node = graph.node[rng.below(n)].clone();
            graph.node.insert(rng.below(n + 1), node);
            "node_duplicate"
        }
        2 if n > 1 => {
            graph.node.swap(rng.below(n), rng.below(n));
            "node_swap"
        }
        3 if n > 0 => {
            let k = rng.below(n);
            let node = &mut graph.node[k];
            match rng.below(2) {
                0 => {
                    node.input.pop();
                }
                _ => {
                    node.output.pop();
                }
            }
            "node_arity"
        }
        4 => {
            graph.output.clear();
            "graph_outputs_clear"
        }
        5 => {
            let names = value_names(graph);
            let name = match rng.index(names.len()) {
                Some(k) => names[k].clone(),
                None => "fuzz_output".into(),
            };
            graph.output.push(ValueInfoProto {
                name: Some(name),
                ..Default::default()
            });
            "graph_output_add"
        }
        6 => match rng.index(graph.input.len()) {
            Some(k) => {
                let input = graph.input[k].clone();
                graph.input.push(input);
                "graph_input_duplicate"
            }
            None => "graph_input_none",
        },
        _ => match rng.index(graph.input.len()) {
            Some(k) => {
                graph.input.remove(k);
                "graph_input_remove"
            }
            None => "graph_input_none",
        },
    }
}

// ---------------------------------------------------------------- execution

/// How far one execution got, counted over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Executions,
    DecodeErrors,
    ExternalErrors,
    Unsupported,
    ImportErrors,
    Imported,
    ForwardOk,
    ForwardErrors,
    ForwardSkipped,
    Deep,
    Panics,
    Fatal,
    DataLoaded,
    DataErrors,
}

/// How many counters there are.
const COUNTER_COUNT: usize = 14;

const COUNTERS: [(Counter, &str); COUNTER_COUNT] = [
    (Counter::Executions, "executions"),
    (Counter::DecodeErrors, "decode errors"),
    (Counter::ExternalErrors, "external-data errors"),
    (Counter::Unsupported, "unsupported ops"),
    (Counter::ImportErrors, "import errors"),
    (Counter::Imported, "imported"),
    (Counter::ForwardOk, "forward ok"),
    (Counter::ForwardErrors, "forward errors"),
    (Counter::ForwardSkipped, "forward skipped (large input)"),
    (Counter::Deep, "classifier + inspect runs"),
    (Counter::Panics, "panics"),
    (Counter::Fatal, "fatal (signal, hang, RSS)"),
    (Counter::DataLoaded, "data files loaded"),
    (Counter::DataErrors, "data files refused"),
];

/// The counters of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats(pub [u64; COUNTER_COUNT]);

impl Stats {
    pub fn add(&mut self, counter: Counter) {
        self.0[counter as usize] += 1;
    }
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
    pub fn merge(&mut self, other: &Stats) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
    /// One counter a line.
    pub fn lines(&self) -> String {
        COUNTERS
            .iter()
            .map(|(c, name)| format!("  {name:<32} {}\n", self.get(*c)))
            .collect()
    }
}

thread_local! {
    /// Set while an execution runs: the panic hook records instead of printing.
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    /// The stage an execution is in, for crash reports.
    static STAGE: Cell<&'static str> = const { Cell::new("") };
    static CAUGHT: RefCell<Option<Caught>> = const { RefCell::new(None) };
}

struct Caught {
    key: String,
    message: String,
    location: String,
    frames: String,
}

/// Chains a panic hook that records panics of fuzzing threads (message,
/// location, the innermost frames in ibau) and leaves every other thread's
/// panics to the previous hook.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !FUZZING.with(Cell::get) {
                return previous(info);
            }
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-string panic payload)".into());
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            let frames = ibau_frames(&Backtrace::force_capture());
            let caught = Caught {
                key: crash_key(&location, &frames, &message),
                message: short_message(&message),
                location,
                frames,
            };
            CAUGHT.with(|c| *c.borrow_mut() = Some(caught));
        }));
    });
}

/// Panics of one kind: the location, the innermost ibau frame, and the
/// message's start with numbers blanked (tch's panics share one location;
/// their callers and messages tell them apart).
fn crash_key(location: &str, frames: &str, message: &str) -> String {
    let caller = frames
        .lines()
        .find(|l| l.trim_start().starts_with("at "))
        .unwrap_or("")
        .trim();
    // Numbers blanked, each run of digits to one `#`.
    let mut normalized = String::new();
    for c in short_message(message).chars() {
        if !c.is_ascii_digit() {
            normalized.push(c);
        } else if !normalized.ends_with('#') {
            normalized.push('#');
        }
    }
    let normalized: String = normalized.chars().take(160).collect();
    format!("{location} | {caller} | {normalized}")
}

/// The message without libtorch's C++ backtrace, on one line.
fn short_message(message: &str) -> String {
    let head = match message.find("Exception raised from") {
        Some(end) => message[..end].trim_end_matches("\\n").trim_end(),
        None => message,
    };
    let text = head.replace("\\n", " ").replace('\n', " ");
    text.chars().take(400).collect()
}

/// The innermost frames of the backtrace in the ibau library (symbol and
/// file:line), at most six.
fn ibau_frames(backtrace: &Backtrace) -> String {
    let text = backtrace.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut kept = 0;
    for (k, line) in lines.iter().enumerate() {
        let Some((number, symbol)) = line.trim_start().split_once(": ") else {
            continue;
        };
        if !number.chars().all(|c| c.is_ascii_digit()) || !symbol.contains("ibau::") {
            continue;
        }
        out.push_str(symbol.trim());
        out.push('\n');
        if let Some(at) = lines
            .get(k + 1)
            .filter(|l| l.trim_start().starts_with("at "))
        {
            out.push_str("  ");
            out.push_str(at.trim());
            out.push('\n');
        }
        kept += 1;
        if kept == 6 {
            break;
        }
    }
    out
}

/// One kind of crash, with its first input.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Crash {
    pub key: String,
    /// `panic`, or (from the supervisor) `signal N`, `hang`, `rss`.
    pub kind: String,
    pub stage: String,
    pub message: String,
    pub location: String,
    pub frames: String,
    pub iteration: u64,
    pub seed_model: String,
    pub mutations: Vec<String>,
    /// How many inputs crashed this way.
    pub count: u64,
    /// The first saved input.
    pub input: Option<PathBuf>,
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} x{} in {}: {}",
            self.kind, self.count, self.stage, self.message
        )?;
        writeln!(f, "  at {}", self.location)?;
        writeln!(
            f,
            "  first: iteration {} from `{}` after {}",
            self.iteration,
            self.seed_model,
            self.mutations.join(", ")
        )?;
        if let Some(path) = &self.input {
            writeln!(f, "  input: {}", path.display())?;
        }
        for line in self.frames.lines() {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// What the importer runs on: CPU, the default options, a folder for the
/// external-data files a mutated model may name.
pub struct Target {
    registry: Registry,
    options: ImportOptions,
    dir: tempfile::TempDir,
    model_path: PathBuf,
    /// Run forward passes (only under a small memory budget).
    forward: bool,
}

impl Target {
    pub fn new(corpus: &Corpus, forward: bool) -> Result<Target, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
        let pattern: Vec<u8> = (0..65_536u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(dir.path().join("fuzz.onnx.data"), pattern)
            .map_err(|e| format!("temporary folder: {e}"))?;
        for file in &corpus.data_files {
            std::fs::copy(file, dir.path().join(file_name(file)))
                .map_err(|e| format!("{}: {e}", file.display()))?;
        }
        let model_path = dir.path().join("fuzz.onnx");
        Ok(Target {
            registry: Registry::standard(),
            options: ImportOptions {
                device: Device::Cpu,
                ..Default::default()
            },
            dir,
            model_path,
            forward,
        })
    }

    /// Writes a data set with one mutated file into a fresh folder and loads
    /// it as `--clean` or `--data` would.
    fn execute_data(&self, bytes: &[u8], seed: &DataSeed, stats: &mut Stats) {
        stats.add(Counter::Executions);
        STAGE.set("data files");
        let folder = self.dir.path().join("data");
        let _ = std::fs::remove_dir_all(&folder);
        let write = |name: &str, bytes: &[u8]| {
            let path = folder.join(name);
            std::fs::create_dir_all(path.parent().expect("inside the folder"))
                .and_then(|()| std::fs::write(&path, bytes))
        };
        for (name, companion) in &seed.companions {
            write(name, companion).expect("the fuzzer's temporary folder is writable");
        }
        write(&seed.name, bytes).expect("the fuzzer's temporary folder is writable");
        STAGE.set("data load");
        match ibau::data::load(&folder.join(&seed.load)) {
            Ok(set) => {
                stats.add(Counter::DataLoaded);
                STAGE.set("data use");
                let _ = set.num_classes();
                let _ = set.slice(0..set.len().min(2));
            }
            Err(e) => {
                let _ = e.to_string();
                stats.add(Counter::DataErrors);
            }
        }
    }

    /// Decode, resolve external data, import, and run what is cheap to run.
    fn execute(&self, bytes: &[u8], seed: &Seed, rng: &mut Rng, stats: &mut Stats) {
        stats.add(Counter::Executions);
        STAGE.set("decode");
        let Ok(mut proto) = decode_model(&self.model_path, bytes.to_vec().into()) else {
            return stats.add(Counter::DecodeErrors);
        };
        STAGE.set("external data");
        let external = match external::load(&mut proto, &self.model_path, self.dir.path()) {
            Ok(external) => external,
            Err(e) => {
                let _ = e.to_string();
                return stats.add(Counter::ExternalErrors);
            }
        };
        let model = Model {
            proto,
            path: self.model_path.clone(),
            external,
        };
        STAGE.set("unsupported ops");
        if !unsupported_ops(&model, &self.registry).is_empty() {
            return stats.add(Counter::Unsupported);
        }
        STAGE.set("tolerance");
        let _ = Graph::default_tolerance(&model);
        STAGE.set("import");
        let graph = match Graph::import(&model, &self.registry, &self.options) {
            Ok(graph) => graph,
            Err(e) => {
                let _ = format!("{e}");
                return stats.add(Counter::ImportErrors);
            }
        };
        stats.add(Counter::Imported);
        if !self.forward {
            return;
        }
        STAGE.set("forward inputs");
        let Some(inputs) = forward_inputs(&graph, &seed.inputs) else {
            return stats.add(Counter::ForwardSkipped);
        };
        STAGE.set("forward");
        match forward_and_backward(&graph, &inputs) {
            Ok(()) => stats.add(Counter::ForwardOk),
            Err(_) => stats.add(Counter::ForwardErrors),
        }
        if inputs.len() == 1 && rng.chance(DEEP_PER_MILLE) && small_fixed_batch(&model) {
            stats.add(Counter::Deep);
            self.deep(&model, bytes, &inputs[0]);
        }
    }

    /// The command line's paths: the classifier loader (Softmax detection,
    /// the fixed-batch rewrite and its probe) and `inspect`'s summary.
    fn deep(&self, model: &Model, bytes: &[u8], input: &Tensor) {
        STAGE.set("classifier");
        if std::fs::write(&self.model_path, bytes).is_ok() {
            if let Ok((_, classifier)) =
                ibau::model::load_classifier(&self.model_path, &self.options)
            {
                STAGE.set("classifier logits");
                let _ = classifier.logits(input);
            }
        }
        STAGE.set("inspect");
        if let Ok(summary) = ibau::inspect::summarize(model, &self.options) {
            let _ = serde_json::to_string(&summary);
        }
        STAGE.set("rebatch");
        if let Some(b) = model.graph().input.first().and_then(rebatch::fixed_batch) {
            let _ = rebatch::free_batch(model, b);
        }
    }
}

/// The classifier loader probes a fixed batch `b` with `2b + 1` samples: run
/// it only when that probe is small.
fn small_fixed_batch(model: &Model) -> bool {
    let Some(first) = model.graph().input.first() else {
        return false;
    };
    let Some(b) = rebatch::fixed_batch(first) else {
        return true;
    };
    let dims = ValueInfo::from_proto(first)
        .fixed_dims()
        .unwrap_or_default();
    let rest = dims
        .iter()
        .skip(1)
        .try_fold(1i64, |acc, d| acc.checked_mul(d.unwrap_or(1)));
    b <= 16 && rest.is_some_and(|r| r.saturating_mul(2 * b + 1) <= 4 * FORWARD_MAX_ELEMENTS)
}

/// One tensor per graph input: the seed test's data where the name matches,
/// else random values (zeros for integers) of the declared shape with a
/// batch of 1; `None` when they would be large.
fn forward_inputs(graph: &Graph, seed_inputs: &[(String, TensorProto)]) -> Option<Vec<Tensor>> {
    let mut total = 0i64;
    let mut tensors = Vec::new();
    for info in &graph.inputs {
        let seed = seed_inputs.iter().find(|(name, _)| *name == info.name);
        let tensor = match seed {
            Some((_, proto)) => {
                let n = ibau::limits::element_count(&proto.dims, "seed input").ok()?;
                if n > FORWARD_MAX_ELEMENTS {
                    return None;
                }
                tensor_from_proto(proto).ok()?
            }
            None => synthesize(info)?,
        };
        total += tensor.numel() as i64;
        if total > FORWARD_MAX_ELEMENTS {
            return None;
        }
        tensors.push(tensor);
    }
    Some(tensors)
}

fn synthesize(info: &ValueInfo) -> Option<Tensor> {
    let shape = info.concrete_shape(1).unwrap_or_else(|| vec![1]);
    let n = shape.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d))?;
    if n > FORWARD_MAX_ELEMENTS {
        return None;
    }
    let kind = info.data_type.kind().unwrap_or(Kind::Float);
    let options = (kind, Device::Cpu);
    match kind {
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {
            Tensor::f_rand(shape.as_slice(), options).ok()
        }
        _ => Tensor::f_zeros(shape.as_slice(), options).ok(),
    }
}

/// A forward pass, then a backward pass from the first float output (the
/// training path differentiates the graph).
fn forward_and_backward(
    graph: &Graph,
    inputs: &[Tensor],
) -> Result<(), Box<dyn std::error::Error>> {
    let outputs = graph.forward(inputs)?;
    for out in &outputs {
        let _ = out.f_to_kind(Kind::Double)?.f_sum(Kind::Double)?;
    }
    if let Some(out) = outputs.iter().find(|t| t.requires_grad()) {
        out.f_to_kind(Kind::Float)?
            .f_sum(Kind::Float)?
            .f_backward()?;
    }
    Ok(())
}

// ---------------------------------------------------------------- the loop

/// What one run does.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// The first iteration.
    pub start: u64,
    pub iterations: u64,
    /// Where crash inputs go (none: not saved).
    pub save_crashes: Option<PathBuf>,
    /// Run forward passes (set it only under a small memory budget).
    pub forward: bool,
}

/// Told about the run as it goes; every method does nothing by default.
pub trait Observer {
    /// Before iteration `iteration` runs; `stats` counts those before it.
    fn before(&mut self, _iteration: u64, _stats: &Stats) {}
    /// The first crash of a kind.
    fn crash(&mut self, _crash: &Crash) {}
}

/// An observer that reports nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// The corpus, the target, and what a run found.
pub struct Fuzzer {
    pub corpus: Corpus,
    target: Target,
    pub config: Config,
    pub stats: Stats,
    /// By crash key.
    pub crashes: BTreeMap<String, Crash>,
}

impl Fuzzer {
    pub fn new(corpus: Corpus, config: Config) -> Result<Fuzzer, String> {
        install_panic_hook();
        if let Some(dir) = &config.save_crashes {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(Fuzzer {
            target: Target::new(&corpus, config.forward)?,
            corpus,
            config,
            stats: Stats::default(),
            crashes: BTreeMap::new(),
        })
    }

    /// Runs every iteration of the configuration.
    pub fn run(&mut self, observer: &mut dyn Observer) {
        let end = self.config.start.saturating_add(self.config.iterations);
        for iteration in self.config.start..end {
            observer.before(iteration, &self.stats);
            if let Some((crash, true)) = self.run_one(iteration) {
                observer.crash(&crash);
            }
        }
    }

    /// Runs one iteration; returns its crash, if any, and whether it is the
    /// first of its kind.
    pub fn run_one(&mut self, iteration: u64) -> Option<(Crash, bool)> {
        let input = generate(&self.corpus, self.config.seed, iteration);
        let mut rng = Rng::for_iteration(self.config.seed, iteration, 0x5EED);
        tch::manual_seed((iteration & 0x7fff_ffff) as i64);
        let seed_name = if input.data {
            self.corpus.data[input.seed].name.clone()
        } else {
            self.corpus.seeds[input.seed].name.clone()
        };
        let (target, stats, corpus) = (&self.target, &mut self.stats, &self.corpus);
        FUZZING.set(true);
        STAGE.set("");
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            if input.data {
                target.execute_data(&input.bytes, &corpus.data[input.seed], stats)
            } else {
                target.execute(&input.bytes, &corpus.seeds[input.seed], &mut rng, stats)
            }
        }));
        FUZZING.set(false);
        result.is_err().then_some(())?;
        self.stats.add(Counter::Panics);
        let caught = CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or(Caught {
            key: "(panic not seen by the hook)".into(),
            message: "(panic not seen by the hook)".into(),
            location: String::new(),
            frames: String::new(),
        });
        let crash = Crash {
            key: caught.key,
            kind: "panic".into(),
            stage: STAGE.get().into(),
            message: caught.message,
            location: caught.location,
            frames: caught.frames,
            iteration,
            seed_model: seed_name,
            mutations: input.mutations.iter().map(|m| m.to_string()).collect(),
            count: 1,
            input: None,
        };
        Some(self.record(crash, &input.bytes))
    }

    /// Counts `crash` under its key and saves its input when a folder is set
    /// and fewer than [`SAVED_PER_CRASH`] of its kind were saved; returns it
    /// and whether it is the first of its kind.
    pub fn record(&mut self, mut crash: Crash, bytes: &[u8]) -> (Crash, bool) {
        let seen = self.crashes.get(&crash.key).map_or(0, |c| c.count);
        if seen < SAVED_PER_CRASH {
            if let Some(dir) = &self.config.save_crashes {
                crash.input = save_crash(dir, &crash, bytes);
            }
        }
        match self.crashes.get_mut(&crash.key) {
            Some(known) => {
                known.count += 1;
                (crash, false)
            }
            None => {
                self.crashes.insert(crash.key.clone(), crash.clone());
                (crash, true)
            }
        }
    }

    /// Adds a crash counted elsewhere (a worker process's).
    pub fn merge(&mut self, crash: Crash) {
        match self.crashes.get_mut(&crash.key) {
            Some(known) => known.count += crash.count,
            None => {
                self.crashes.insert(crash.key.clone(), crash);
            }
        }
    }
}

/// Writes `crash-<iteration>.onnx` and a `.txt` beside it with the report.
fn save_crash(dir: &Path, crash: &Crash, bytes: &[u8]) -> Option<PathBuf> {
    let path = dir.join(format!("crash-{}.onnx", crash.iteration));
    std::fs::write(&path, bytes).ok()?;
    let mut report = crash.clone();
    report.input = Some(path.clone());
    let _ = std::fs::write(path.with_extension("txt"), report.to_string());
    Some(path)
}

/// Every crash, one report each.
pub fn describe(crashes: &BTreeMap<String, Crash>) -> String {
    crashes.values().map(|c| c.to_string()).collect()
}

/// The paths the corpus is read from: `IBAU_ONNX_TESTDATA` or the default,
/// and the checked-in fixtures.
pub fn corpus_paths() -> (PathBuf, PathBuf) {
    let testdata = std::env::var_os("IBAU_ONNX_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(TESTDATA));
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    (testdata, models)
}

// ---------------------------------------------------------------- command line

#[allow(dead_code)]
fn main() {
    std::process::exit(cli::main());
}

/// The command line: a supervisor that runs the loop in a child process
/// (`--worker`) and restarts it after a fatal crash.
#[allow(dead_code)]
mod cli {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    use std::os::unix::process::ExitStatusExt as _;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use clap::Parser;

    use super::*;

    /// Seeded mutation fuzzing of the ONNX decoder and import.
    #[derive(Debug, Parser)]
    #[command(name = "fuzz_onnx")]
    struct Args {
        /// Executions to run.
        #[arg(long, default_value_t = 1_000_000)]
        iterations: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The first iteration (`--start N --iterations 1` replays iteration N).
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Save each crash's input (`crash-<iteration>.onnx`) and report here.
        #[arg(long, value_name = "DIR")]
        save_crashes: Option<PathBuf>,
        /// Print progress every this many executions.
        #[arg(long, default_value_t = 50_000)]
        progress: u64,
        /// Skip forward passes: decode and import only.
        #[arg(long)]
        no_forward: bool,
        /// libtorch threads.
        #[arg(long, default_value_t = 1)]
        threads: i32,
        /// Run the loop in this process (a fatal crash then ends the run).
        #[arg(long)]
        in_process: bool,
        /// An execution running longer than this is a hang.
        #[arg(long, default_value_t = 120)]
        hang_seconds: u64,
        /// A worker whose resident memory exceeds this aborts (MiB).
        #[arg(long, default_value_t = 4096)]
        rss_limit_mib: u64,
        /// Internal: run as the supervisor's child, with its status files.
        #[arg(long, hide = true, value_name = "DIR")]
        worker: Option<PathBuf>,
    }

    /// The worker writes, before each iteration, the iteration and its
    /// counters (little-endian u64s) to this file in its folder.
    const STATUS: &str = "status";
    /// One JSON crash report a line, appended by the worker.
    const CRASHES: &str = "crashes.jsonl";
    /// Why the worker aborted itself, when it did.
    const FATAL: &str = "fatal.txt";
    /// Worker deaths after which the campaign stops.
    const MAX_FATAL: usize = 200;

    pub fn main() -> i32 {
        let args = Args::parse();
        match run(&args) {
            Ok(found) => i32::from(found),
            Err(e) => {
                eprintln!("fuzz_onnx: {e}");
                2
            }
        }
    }

    /// Returns whether anything crashed.
    fn run(args: &Args) -> Result<bool, String> {
        let budget = set_memory_budget();
        tch::set_num_threads(args.threads);
        let (testdata, models) = corpus_paths();
        let corpus = Corpus::load(&testdata, &models)?;
        let config = Config {
            seed: args.seed,
            start: args.start,
            iterations: args.iterations,
            save_crashes: args.save_crashes.clone(),
            forward: !args.no_forward,
        };
        if let Some(dir) = &args.worker {
            return worker(args, corpus, config, dir);
        }
        let (supported, unsupported, fixtures) = corpus.counts();
        eprintln!(
            "fuzz_onnx: seed {}, iterations {}..{}, {supported} supported + {unsupported} unsupported \
             test models and {fixtures} fixtures, memory budget {}",
            args.seed,
            args.start,
            args.start + args.iterations,
            ibau::limits::human_bytes(budget)
        );
        let started = Instant::now();
        let (stats, crashes) = if args.in_process {
            let mut fuzzer = Fuzzer::new(corpus, config)?;
            fuzzer.run(&mut Progress::new(args, None));
            (fuzzer.stats, fuzzer.crashes)
        } else {
            supervise(args, corpus, config)?
        };
        let seconds = started.elapsed().as_secs_f64();
        let executions = stats.get(Counter::Executions);
        println!(
            "fuzz_onnx summary: seed {}, {executions} executions in {seconds:.0} s ({:.0} exec/s), {} distinct crashes",
            args.seed,
            executions as f64 / seconds.max(1e-9),
            crashes.len()
        );
        print!("{}", stats.lines());
        for crash in crashes.values() {
            println!("{crash}");
        }
        Ok(!crashes.is_empty())
    }

    /// Progress on stderr every `--progress` executions; crashes as found.
    struct Progress {
        every: u64,
        end: u64,
        started: Instant,
        status: Option<std::fs::File>,
        last: Instant,
        last_executions: u64,
    }

    impl Progress {
        fn new(args: &Args, status: Option<std::fs::File>) -> Progress {
            Progress {
                every: args.progress.max(1),
                end: args.start + args.iterations,
                started: Instant::now(),
                status,
                last: Instant::now(),
                last_executions: 0,
            }
        }
    }

    impl Observer for Progress {
        fn before(&mut self, iteration: u64, stats: &Stats) {
            if let Some(file) = &self.status {
                let _ = file.write_at(&status_bytes(iteration, stats), 0);
            }
            CURRENT.store(iteration, Ordering::Relaxed);
            let done = stats.get(Counter::Executions);
            if done > 0 && done.is_multiple_of(self.every) {
                let rate = (done - self.last_executions) as f64 / self.last.elapsed().as_secs_f64();
                eprintln!(
                    "fuzz_onnx: iteration {iteration}/{}: {rate:.0} exec/s, {:.0} s, {} imported, {} panics",
                    self.end,
                    self.started.elapsed().as_secs_f64(),
                    stats.get(Counter::Imported),
                    stats.get(Counter::Panics)
                );
                self.last = Instant::now();
                self.last_executions = done;
            }
        }
        fn crash(&mut self, crash: &Crash) {
            eprintln!("fuzz_onnx: new crash\n{crash}");
        }
    }

    /// The iteration the worker runs, for its RSS watchdog.
    static CURRENT: AtomicU64 = AtomicU64::new(0);

    fn status_bytes(iteration: u64, stats: &Stats) -> Vec<u8> {
        std::iter::once(iteration)
            .chain(stats.0)
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    fn read_status(dir: &Path) -> Option<(u64, Stats)> {
        let bytes = std::fs::read(dir.join(STATUS)).ok()?;
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let mut stats = Stats::default();
        stats.0.copy_from_slice(words.get(1..1 + COUNTER_COUNT)?);
        Some((words[0], stats))
    }

    /// A line of the worker's crash log: the first crash of a kind in full,
    /// later ones by key.
    #[derive(serde::Serialize, serde::Deserialize)]
    enum LogLine {
        First(Box<Crash>),
        Repeat(String),
    }

    fn worker(args: &Args, corpus: Corpus, config: Config, dir: &Path) -> Result<bool, String> {
        let status = std::fs::File::create(dir.join(STATUS)).map_err(|e| e.to_string())?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(CRASHES))
            .map_err(|e| e.to_string())?;
        spawn_rss_watchdog(args.rss_limit_mib, dir.join(FATAL));
        let end = config.start + config.iterations;
        let mut fuzzer = Fuzzer::new(corpus, config)?;
        let mut progress = Progress::new(args, Some(status));
        for iteration in fuzzer.config.start..end {
            progress.before(iteration, &fuzzer.stats);
            let Some((crash, first)) = fuzzer.run_one(iteration) else {
                continue;
            };
            let line = if first {
                progress.crash(&crash);
                LogLine::First(Box::new(crash))
            } else {
                LogLine::Repeat(crash.key)
            };
            let line = serde_json::to_string(&line).map_err(|e| e.to_string())?;
            writeln!(log, "{line}").map_err(|e| e.to_string())?;
        }
        if let Some(file) = &progress.status {
            let _ = file.write_at(&status_bytes(end, &fuzzer.stats), 0);
        }
        Ok(false)
    }

    fn spawn_rss_watchdog(limit_mib: u64, fatal: PathBuf) {
        let page = 4096u64;
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
                continue;
            };
            let pages: u64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let mib = (pages * page) >> 20;
            if mib > limit_mib {
                let iteration = CURRENT.load(Ordering::Relaxed);
                let _ = std::fs::write(
                    &fatal,
                    format!(
                        "{iteration}\nresident memory {mib} MiB over the limit of {limit_mib} MiB"
                    ),
                );
                eprintln!("fuzz_onnx: iteration {iteration}: resident memory {mib} MiB, aborting");
                std::process::abort();
            }
        });
    }

    fn spawn_worker(args: &Args, dir: &Path, start: u64, end: u64) -> Result<Child, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = Command::new(exe);
        command
            .arg("--worker")
            .arg(dir)
            .args(["--seed", &args.seed.to_string()])
            .args(["--start", &start.to_string()])
            .args(["--iterations", &(end - start).to_string()])
            .args(["--progress", &args.progress.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .args(["--rss-limit-mib", &args.rss_limit_mib.to_string()]);
        if let Some(save) = &args.save_crashes {
            command.arg("--save-crashes").arg(save);
        }
        if args.no_forward {
            command.arg("--no-forward");
        }
        command
            .spawn()
            .map_err(|e| format!("starting the worker: {e}"))
    }

    /// Runs the worker until every iteration ran, restarting it after the
    /// iteration that killed it (recorded as a crash, its input regenerated).
    fn supervise(
        args: &Args,
        corpus: Corpus,
        config: Config,
    ) -> Result<(Stats, BTreeMap<String, Crash>), String> {
        let work = tempfile::tempdir().map_err(|e| e.to_string())?;
        let end = config.start + config.iterations;
        let mut recorder = Fuzzer::new(
            corpus,
            Config {
                forward: false,
                ..config.clone()
            },
        )?;
        let mut total = Stats::default();
        let mut next = config.start;
        let mut fatal = 0;
        while next < end {
            let _ = std::fs::remove_file(work.path().join(FATAL));
            let _ = std::fs::remove_file(work.path().join(STATUS));
            let mut child = spawn_worker(args, work.path(), next, end)?;
            let (status, hung) = wait_watching(&mut child, work.path(), args.hang_seconds)?;
            let Some((iteration, stats)) = read_status(work.path()) else {
                return Err(format!(
                    "the worker stopped before its first iteration ({status})"
                ));
            };
            total.merge(&stats);
            if status.success() && !hung && iteration >= end {
                break;
            }
            if status.code() == Some(2) {
                return Err(format!("the worker failed at iteration {iteration}"));
            }
            fatal += 1;
            if fatal > MAX_FATAL {
                return Err(format!("more than {MAX_FATAL} fatal crashes: stopping"));
            }
            let (kind, reason) = if hung {
                (
                    "hang".to_string(),
                    format!("still running after {} s", args.hang_seconds),
                )
            } else if let Ok(text) = std::fs::read_to_string(work.path().join(FATAL)) {
                (
                    "rss".to_string(),
                    text.lines().nth(1).unwrap_or("").to_string(),
                )
            } else if let Some(signal) = status.signal() {
                (
                    format!("signal {signal}"),
                    format!("killed by signal {signal}"),
                )
            } else {
                ("exit".to_string(), format!("exited with {status}"))
            };
            eprintln!("fuzz_onnx: iteration {iteration} is fatal: {kind}: {reason}");
            total.add(Counter::Executions);
            total.add(Counter::Fatal);
            let input = generate(&recorder.corpus, config.seed, iteration);
            let seed_model = recorder.corpus.seeds[input.seed].name.clone();
            let crash = Crash {
                key: format!("fatal {kind} {seed_model}"),
                kind,
                stage: "(unknown: the process died)".into(),
                message: reason,
                location: String::new(),
                frames: String::new(),
                iteration,
                seed_model,
                mutations: input.mutations.iter().map(|m| m.to_string()).collect(),
                count: 1,
                input: None,
            };
            recorder.record(crash, &input.bytes);
            next = iteration + 1;
        }
        merge_logged_crashes(&mut recorder, &work.path().join(CRASHES));
        Ok((total, recorder.crashes))
    }

    fn wait_watching(
        child: &mut Child,
        dir: &Path,
        hang_seconds: u64,
    ) -> Result<(std::process::ExitStatus, bool), String> {
        let mut last = (u64::MAX, Instant::now());
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok((status, false));
            }
            std::thread::sleep(Duration::from_millis(200));
            let iteration = read_status(dir).map_or(u64::MAX, |(i, _)| i);
            if iteration != last.0 {
                last = (iteration, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(hang_seconds) {
                let _ = child.kill();
                let status = child.wait().map_err(|e| e.to_string())?;
                return Ok((status, true));
            }
        }
    }

    /// Adds the panics the workers logged to the fatal crashes.
    fn merge_logged_crashes(recorder: &mut Fuzzer, log: &Path) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            match serde_json::from_str::<LogLine>(line) {
                Ok(LogLine::First(crash)) => recorder.merge(*crash),
                Ok(LogLine::Repeat(key)) => {
                    if let Some(known) = recorder.crashes.get_mut(&key) {
                        known.count += 1;
                    }
                }
                Err(_) => {}
            }
        }
    }
}
