//! A short seeded run of the fuzzer: a few thousand mutated models (seeds:
//! small models of the ONNX backend test data and the fixtures under
//! models/) are decoded, imported and run, a quarter of the iterations load
//! mutated data files instead (IDX, gzip'd IDX, .npy, .npz, image folders
//! made from real Fashion-MNIST images), and none may panic. The engine is
//! examples/fuzz_onnx.rs, included here as a module so that it exists once.
//!
//! The long campaign (one million executions, crash inputs saved):
//!
//! ```text
//! tools/fuzz.sh
//! cargo run --release --example fuzz_onnx -- --iterations 1000000 --seed 1 --save-crashes /tmp/fuzz-crashes
//! ```
//!
//! A crash the campaign reports replays with `--start N --iterations 1`.

#[path = "../examples/fuzz_onnx.rs"]
mod engine;

use engine::{Config, Corpus, Counter, Fuzzer, Quiet};

/// Executions of the seeded run: a few seconds in a debug build.
const ITERATIONS: u64 = 3000;

#[test]
fn fuzz_seeded_mutations_do_not_panic() {
    // Forward passes only under the fuzzer's small budget: an earlier test in
    // this process may have fixed a larger one.
    let budget = engine::set_memory_budget();
    let (testdata, models) = engine::corpus_paths();
    let corpus = Corpus::load(&testdata, &models).unwrap_or_else(|e| panic!("{e}"));
    let config = Config {
        seed: 1,
        start: 0,
        iterations: ITERATIONS,
        save_crashes: None,
        forward: budget <= 256 << 20,
    };
    let mut fuzzer = Fuzzer::new(corpus, config).unwrap_or_else(|e| panic!("{e}"));
    fuzzer.run(&mut Quiet);

    let stats = fuzzer.stats;
    assert_eq!(stats.get(Counter::Executions), ITERATIONS);
    // The mutations must leave many inputs decodable and importable, or the
    // run tests only the protobuf decoder.
    assert!(
        stats.get(Counter::Imported) > ITERATIONS / 10,
        "too few imports:\n{}",
        stats.lines()
    );
    // Data files: some still load, most mutations are refused.
    assert!(
        stats.get(Counter::DataLoaded) > 0 && stats.get(Counter::DataErrors) > 0,
        "data files not reached:\n{}",
        stats.lines()
    );
    assert!(
        fuzzer.crashes.is_empty(),
        "{} distinct crashes in {ITERATIONS} executions (seed 1):\n{}\n{}",
        fuzzer.crashes.len(),
        engine::describe(&fuzzer.crashes),
        stats.lines()
    );
}
