//! The targeted perturbation search on a real poisoned export: the JAX CNN
//! (jax2onnx, NHWC input), whose backdoor sends a 3x3 white patch at row 0,
//! column 24 to class 5, and on which the paper's untargeted search finds a
//! natural perturbation towards class 8 instead (README, known limits).

use std::path::Path;

use ibau::graph::ImportOptions;
use ibau::ibau::{targeted_search, Batch, Classifier, Config, SearchMemory};
use ibau::model::load_classifier;
use tch::Kind;

use crate::common;

const FASHION: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
/// The fixture's attack (models/fixtures_jax.json).
const TARGET: i64 = 5;

#[test]
fn targeted_search_finds_the_backdoor_target_of_a_jax_export() {
    let (_, model) = load_classifier(&common::fixture("jax_cnn.onnx"), &ImportOptions::default())
        .expect("import");
    let data = ibau::data::load(Path::new(FASHION))
        .and_then(|d| d.slice(0..1100))
        .expect("Fashion-MNIST test images");
    // IDX gives [N, 1, 28, 28]; the export takes NHWC.
    let images = data.images.permute([0, 2, 3, 1]).contiguous();
    let batches: Vec<Batch> = (0..10)
        .map(|b| Batch {
            images: images.narrow(0, 100 * b, 100),
            labels: data.labels.narrow(0, 100 * b, 100),
        })
        .collect();

    let mut memory = SearchMemory::default();
    let (delta, found) =
        targeted_search(&model, &batches, &Config::default(), &mut memory).expect("search");
    eprintln!("{found:?}");
    assert_eq!(found.radii.len(), 10, "one radius per class");
    assert_eq!(found.class, TARGET, "radii by class: {:?}", found.radii);
    assert!(
        found.radius < 0.6 * found.median_radius,
        "the target stands out: radius {} vs median {}",
        found.radius,
        found.median_radius
    );
    let norm = delta.square().sum(Kind::Double).sqrt().double_value(&[]);
    assert!(
        (norm - found.radius).abs() < 0.5 * found.radius,
        "the perturbation has about the class's radius: {norm} vs {}",
        found.radius
    );

    // On images the search never saw, the perturbation acts as the trigger.
    let held_out = images.narrow(0, 1000, 100);
    let predicted = tch::no_grad(|| model.logits(&(&held_out + &delta)))
        .expect("forward")
        .argmax(-1, false);
    let share = predicted
        .eq(TARGET)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(
        share > 0.7,
        "{:.0}% of held-out images sent to {TARGET}",
        100.0 * share
    );
}

/// With `max_batch` of one class's images per forward pass (ten chunks
/// instead of one), the search computes the same radii and picks the same
/// class: memory follows `max_batch`, the result does not.
#[test]
fn the_targeted_search_in_class_chunks_finds_the_same_radii() {
    let (_, model) = load_classifier(&common::fixture("jax_cnn.onnx"), &ImportOptions::default())
        .expect("import");
    let data = ibau::data::load(Path::new(FASHION))
        .and_then(|d| d.slice(0..500))
        .expect("Fashion-MNIST test images");
    let images = data.images.permute([0, 2, 3, 1]).contiguous();
    let batches: Vec<Batch> = (0..5)
        .map(|b| Batch {
            images: images.narrow(0, 100 * b, 100),
            labels: data.labels.narrow(0, 100 * b, 100),
        })
        .collect();
    let run = |max_batch: Option<usize>| {
        let config = Config {
            max_batch,
            perturbation_steps: Some(20),
            ..Config::default()
        };
        targeted_search(&model, &batches, &config, &mut SearchMemory::default())
            .expect("search")
            .1
    };
    let whole = run(None);
    let chunked = run(Some(20));
    eprintln!("{:?}\n{:?}", whole.radii, chunked.radii);
    assert_eq!(whole.class, chunked.class);
    for (a, b) in whole.radii.iter().zip(&chunked.radii) {
        assert!(
            (a - b).abs() <= 1e-4 * a.max(1.0),
            "{:?} vs {:?}",
            whole.radii,
            chunked.radii
        );
    }
}
