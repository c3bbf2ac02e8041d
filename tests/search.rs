//! The targeted perturbation search on a real poisoned export: the JAX CNN
//! (jax2onnx, NHWC input), whose backdoor sends a 3x3 white patch at row 0,
//! column 24 to class 5, and on which the paper's untargeted search finds a
//! natural perturbation towards class 8 instead (docs/limits.md).

use std::path::Path;

use ibau::graph::ImportOptions;
use ibau::ibau::{targeted_search, Batch, Classifier, Config, SearchMemory};
use ibau::model::load_classifier;
use tch::{Kind, Tensor};

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
    let (deltas, found) = targeted_search(
        &model,
        &batches,
        &Config::default(),
        &mut memory,
        &mut |_, _| {},
    )
    .expect("search");
    assert_eq!(deltas.len(), 1, "one class unlearned");
    let delta = &deltas[0];
    eprintln!("{found:?}");
    assert_eq!(found.radii.len(), 10, "one radius per class");
    assert!(found.candidates.is_none(), "10 classes are all searched");
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
    let predicted = tch::no_grad(|| model.logits(&(&held_out + delta)))
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
        targeted_search(
            &model,
            &batches,
            &config,
            &mut SearchMemory::default(),
            &mut |_, _| {},
        )
        .expect("search")
        .1
    };
    let whole = run(None);
    let chunked = run(Some(20));
    eprintln!("{:?}\n{:?}", whole.radii, chunked.radii);
    assert_eq!(whole.class, chunked.class);
    for (a, b) in whole
        .radii
        .iter()
        .flatten()
        .zip(chunked.radii.iter().flatten())
    {
        assert!(
            (a - b).abs() <= 1e-4 * a.max(1.0),
            "{:?} vs {:?}",
            whole.radii,
            chunked.radii
        );
    }
}

/// A tiny random two-layer net with `classes` outputs on `[N, 1, 8, 8]`
/// images, which records the largest batch any forward pass gets: the
/// number of perturbed images held with their autograd graph at once.
struct Recording {
    w1: Tensor,
    w2: Tensor,
    params: Vec<Tensor>,
    largest: std::cell::Cell<i64>,
}

impl Recording {
    fn new(classes: i64) -> Recording {
        tch::manual_seed(classes);
        let w1 = Tensor::randn([64, 32], (Kind::Float, tch::Device::Cpu)) * 0.3;
        let w2 = Tensor::randn([32, classes], (Kind::Float, tch::Device::Cpu)) * 0.3;
        Recording {
            params: vec![w1.shallow_clone(), w2.shallow_clone()],
            w1,
            w2,
            largest: std::cell::Cell::new(0),
        }
    }
}

impl Classifier for Recording {
    fn logits(&self, x: &Tensor) -> Result<Tensor, ibau::ibau::TrainError> {
        let n = x.size()[0];
        self.largest.set(self.largest.get().max(n));
        Ok(x.reshape([n, 64]).matmul(&self.w1).relu().matmul(&self.w2))
    }
    fn parameters(&self) -> &[Tensor] {
        &self.params
    }
    fn device(&self) -> tch::Device {
        tch::Device::Cpu
    }
    fn float_kind(&self) -> Kind {
        Kind::Float
    }
}

/// Issue "Real-size models": one step of the targeted search and of the
/// scan's searches holds at most `max_batch` perturbed images, whatever the
/// number of classes (20: every class searched; 200 and 2000: screened
/// first, then 10 candidates, and for the scan 10 reference classes).
#[test]
fn search_steps_hold_at_most_max_batch_images_whatever_the_class_count() {
    const MAX_BATCH: usize = 16;
    let images = Tensor::rand([64, 1, 8, 8], (Kind::Float, tch::Device::Cpu));
    for classes in [20i64, 200, 2000] {
        let model = Recording::new(classes);
        let labels = Tensor::randint(classes, [64], (Kind::Int64, tch::Device::Cpu));
        let batches: Vec<Batch> = (0..4)
            .map(|b| Batch {
                images: images.narrow(0, 16 * b, 16),
                labels: labels.narrow(0, 16 * b, 16),
            })
            .collect();
        let config = Config {
            max_batch: Some(MAX_BATCH),
            perturbation_steps: Some(3),
            ..Config::default()
        };
        let (deltas, found) = targeted_search(
            &model,
            &batches,
            &config,
            &mut SearchMemory::default(),
            &mut |_, _| {},
        )
        .expect("targeted search");
        assert_eq!(deltas[0].size(), [1, 1, 8, 8]);
        assert_eq!(found.radii.len(), classes as usize);
        let searched = found.radii.iter().flatten().count();
        assert_eq!(
            searched,
            if classes > 20 { 10 } else { 20 },
            "{classes} classes"
        );
        assert!(
            model.largest.get() <= MAX_BATCH as i64,
            "{classes} classes: a forward pass of {} images",
            model.largest.get()
        );

        model.largest.set(0);
        let data = ibau::data::Dataset::new(
            images.shallow_clone(),
            labels.shallow_clone(),
            "random",
            ibau::data::SourceLayout::Nchw,
        )
        .expect("dataset");
        let map = ibau::InputMap {
            model_shape: vec![None, Some(1), Some(8), Some(8)],
            dtype: ibau::onnx::DataType::FLOAT,
            layout: None,
            mean: vec![],
            std: vec![],
            device: tch::Device::Cpu,
        };
        let config = ibau::scan::ScanConfig {
            steps: 2,
            per_class: 2,
            focus: 3,
            thorough_steps: 2,
            max_batch: MAX_BATCH as i64,
            ..Default::default()
        };
        let (result, _) = ibau::scan::scan_classifier(&model, &map, &data, &config, &mut |_, _| {})
            .expect("scan");
        assert_eq!(result.classes.len(), 20, "searched classes");
        assert_eq!(result.screen.is_some(), classes > 20);
        assert!(
            model.largest.get() <= MAX_BATCH as i64,
            "scan of {classes} classes: a forward pass of {} images",
            model.largest.get()
        );
    }
}
