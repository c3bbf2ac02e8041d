//! Import phase 2: parameter roles.
//!
//! A float initializer is trained when it is a weight: it lies on a
//! differentiable path to a graph output (decided by each op's
//! [`Differentiable`](crate::graph::ops::Differentiable) inputs), holds more
//! than one element and only finite values. `--freeze` and `--train` override
//! the rule by name. Every initializer then becomes a trainable tensor in
//! [`Parameters`] or a constant, converted to the graph's float kind and
//! device.

use std::collections::HashSet;

use tch::Tensor;

use super::fold::Constants;
use super::Slots;
use crate::graph::ops::Registry;
use crate::graph::{GraphError, ImportOptions, Parameters};
use crate::onnx::proto::GraphProto;
use crate::onnx::{tensor_from_proto, DataType, Model, TensorError};

/// Why an initializer is or is not trainable (for `inspect`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitializerRole {
    pub name: String,
    pub dtype: String,
    pub elements: i64,
    pub trainable: bool,
    pub reason: ParamRole,
}

/// Why an initializer is trained or frozen. Displays and serializes as the
/// text `inspect` prints (and its JSON holds), e.g. `"frozen by --freeze"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamRole {
    /// Trained: a float tensor of several finite values on a differentiable
    /// path to an output.
    Weight,
    /// Trained because `--train` names it.
    TrainedByOption,
    /// Frozen because `--freeze` names it.
    FrozenByOption,
    /// Frozen: integers, booleans and the like are never trained.
    NotFloat,
    /// Frozen: no gradient reaches it from an output.
    NotOnDifferentiablePath,
    /// Frozen: a scalar (epsilon, exponent, clip bound) rather than a weight.
    OneElement,
    /// Frozen: it holds infinite values, so it is a mask.
    Infinite,
}

impl ParamRole {
    /// Whether an initializer in this role is trained.
    pub fn trainable(self) -> bool {
        matches!(self, ParamRole::Weight | ParamRole::TrainedByOption)
    }

    /// The text shown for the role (stable: `inspect --json` holds it).
    pub fn as_str(self) -> &'static str {
        match self {
            ParamRole::Weight => "weight",
            ParamRole::TrainedByOption => "trained by --train",
            ParamRole::FrozenByOption => "frozen by --freeze",
            ParamRole::NotFloat => "not a float tensor",
            ParamRole::NotOnDifferentiablePath => "not on a differentiable path to an output",
            ParamRole::OneElement => "one-element constant",
            ParamRole::Infinite => "holds infinite values (a mask, not a weight)",
        }
    }
}

impl std::fmt::Display for ParamRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl serde::Serialize for ParamRole {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The values that lie on a differentiable path to a graph output: the
/// outputs, and every input a node reads through a differentiable position
/// when one of its outputs is on the path. `order` is topological; nodes the
/// registry cannot run (import rejects them first) lead nowhere.
pub(super) fn differentiable_values<'g>(
    model: &'g Model,
    registry: &Registry,
    order: &[usize],
) -> HashSet<&'g str> {
    let graph = model.graph();
    let mut on_path: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    for &i in order.iter().rev() {
        let node = &graph.node[i];
        if !node.output.iter().any(|o| on_path.contains(o.as_str())) {
            continue;
        }
        let opset = model.opset(node.domain()).unwrap_or(0);
        let Some(spec) = registry.find(node.op_type(), opset) else {
            continue;
        };
        for (k, input) in node.input.iter().enumerate() {
            if !input.is_empty() && spec.differentiable.includes(k) {
                on_path.insert(input.as_str());
            }
        }
    }
    on_path
}

/// Why initializer `name` (of `dtype`, `elements` elements, values `tensor`)
/// is trained or frozen. `tensor` is read only when the rule gets as far as
/// checking for infinite values; a NaN in a weight is an error.
pub(super) fn param_role(
    name: &str,
    dtype: DataType,
    elements: i64,
    tensor: &Tensor,
    on_path: &HashSet<&str>,
    options: &ImportOptions,
) -> Result<ParamRole, GraphError> {
    Ok(if !dtype.is_float() {
        ParamRole::NotFloat
    } else if options.freeze.as_ref().is_some_and(|r| r.is_match(name)) {
        ParamRole::FrozenByOption
    } else if options.train.as_ref().is_some_and(|r| r.is_match(name)) {
        ParamRole::TrainedByOption
    } else if !on_path.contains(name) {
        ParamRole::NotOnDifferentiablePath
    } else if elements <= 1 {
        ParamRole::OneElement
    } else {
        match non_finite(tensor, name)? {
            NonFinite::None => ParamRole::Weight,
            NonFinite::Infinite => ParamRole::Infinite,
            NonFinite::NaN => {
                return Err(GraphError::Initializer(TensorError::NaN {
                    name: name.to_string(),
                }))
            }
        }
    })
}

/// The initializers of a graph, sorted into trainable parameters and
/// constants.
pub(super) struct Initializers {
    pub params: Parameters,
    /// One per initializer, in file order.
    pub roles: Vec<InitializerRole>,
    pub constants: Constants,
}

/// Reads every initializer of `graph`, decides its role and stores it, in the
/// graph's float kind and on its device, as a parameter or a constant in the
/// slot of its name.
pub(super) fn initializers(
    graph: &GraphProto,
    on_path: &HashSet<&str>,
    options: &ImportOptions,
    slots: &mut Slots,
) -> Result<Initializers, GraphError> {
    let mut params = Parameters::default();
    let mut roles = Vec::new();
    let mut constants = Constants::default();
    for init in &graph.initializer {
        let name = init.name();
        let dtype = DataType(init.data_type());
        let elements = crate::limits::element_count(&init.dims, &format!("initializer `{name}`"))?;
        let mut tensor = tensor_from_proto(init)?;
        let role = param_role(name, dtype, elements, &tensor, on_path, options)?;
        let trainable = role.trainable();
        roles.push(InitializerRole {
            name: name.to_string(),
            dtype: dtype.name().to_string(),
            elements,
            trainable,
            reason: role,
        });
        let s = slots.slot(name);
        let wrap = |source| {
            GraphError::Initializer(TensorError::Torch {
                name: name.to_string(),
                source,
            })
        };
        if dtype.is_float() {
            tensor = tensor.f_to_kind(options.float_kind).map_err(wrap)?;
        }
        tensor = tensor.f_to_device(options.device).map_err(wrap)?;
        if trainable {
            params.index.insert(name.to_string(), params.tensors.len());
            params.names.push(name.to_string());
            params.dtypes.push(dtype);
            params.slots.push(s);
            params.tensors.push(tensor.set_requires_grad(true));
        } else {
            constants.insert(s, tensor);
        }
    }
    Ok(Initializers {
        params,
        roles,
        constants,
    })
}

/// Whether a float tensor holds NaN or infinite values.
enum NonFinite {
    None,
    Infinite,
    NaN,
}

fn non_finite(t: &Tensor, name: &str) -> Result<NonFinite, GraphError> {
    let wrap = |source| {
        GraphError::Initializer(TensorError::Torch {
            name: name.to_string(),
            source,
        })
    };
    let any = |t: Result<Tensor, tch::TchError>| -> Result<bool, GraphError> {
        Ok(t.and_then(|t| t.f_any()).map_err(wrap)?.int64_value(&[]) != 0)
    };
    if any(t.f_isnan())? {
        Ok(NonFinite::NaN)
    } else if any(t.f_isinf())? {
        Ok(NonFinite::Infinite)
    } else {
        Ok(NonFinite::None)
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;
    use crate::graph::{Graph, ImportOptions};
    use crate::onnx::build::{floats, int64s, model, node};

    const EVERY_ROLE: [(ParamRole, &str); 7] = [
        (ParamRole::Weight, "weight"),
        (ParamRole::TrainedByOption, "trained by --train"),
        (ParamRole::FrozenByOption, "frozen by --freeze"),
        (ParamRole::NotFloat, "not a float tensor"),
        (
            ParamRole::NotOnDifferentiablePath,
            "not on a differentiable path to an output",
        ),
        (ParamRole::OneElement, "one-element constant"),
        (
            ParamRole::Infinite,
            "holds infinite values (a mask, not a weight)",
        ),
    ];

    #[test]
    fn roles_display_and_serialize_as_the_inspect_text() {
        for (role, text) in EVERY_ROLE {
            assert_eq!(role.to_string(), text);
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{text}\""));
            assert_eq!(
                role.trainable(),
                matches!(role, ParamRole::Weight | ParamRole::TrainedByOption)
            );
        }
        let role = InitializerRole {
            name: "conv.weight".into(),
            dtype: "float32".into(),
            elements: 27,
            trainable: false,
            reason: ParamRole::FrozenByOption,
        };
        assert_eq!(
            serde_json::to_string(&role).unwrap(),
            r#"{"name":"conv.weight","dtype":"float32","elements":27,"trainable":false,"reason":"frozen by --freeze"}"#
        );
        assert_eq!(format!("({:<8})", ParamRole::Weight), "(weight  )");
    }

    /// x[1, 4] -> MatMul w -> Add b -> Add mask -> Mul s -> Mul t -> Reshape
    /// shape -> y, with `unused` read by no node.
    fn every_role_model() -> Model {
        let inf = f32::NEG_INFINITY;
        model(
            vec![
                node("matmul", "MatMul", &["x", "w"], &["h1"]),
                node("bias", "Add", &["h1", "b"], &["h2"]),
                node("mask", "Add", &["h2", "mask"], &["h3"]),
                node("scale", "Mul", &["h3", "s"], &["h4"]),
                node("trained_scale", "Mul", &["h4", "t"], &["h5"]),
                node("reshape", "Reshape", &["h5", "shape"], &["y"]),
            ],
            vec![
                floats("w", &[4, 3], &[0.5; 12]),
                floats("b", &[3], &[0.1, 0.2, 0.3]),
                floats("mask", &[3], &[0.0, inf, 0.0]),
                floats("s", &[1], &[2.0]),
                floats("t", &[1], &[3.0]),
                int64s("shape", &[2], &[1, 3]),
                floats("unused", &[2], &[1.0, 2.0]),
            ],
            &[("x", &[1, 4])],
            &[("y", &[1, 3])],
        )
    }

    #[test]
    fn differentiable_values_stop_at_shape_inputs() {
        let m = every_role_model();
        let order: Vec<usize> = (0..m.graph().node.len()).collect();
        let on_path = differentiable_values(&m, &Registry::standard(), &order);
        for name in ["y", "h5", "h1", "x", "w", "b", "mask", "s", "t"] {
            assert!(on_path.contains(name), "{name} is on the path");
        }
        for name in ["shape", "unused"] {
            assert!(!on_path.contains(name), "{name} is not on the path");
        }
    }

    #[test]
    fn every_initializer_gets_its_role_in_file_order() {
        let options = ImportOptions {
            freeze: Some(Regex::new("^b$").unwrap()),
            train: Some(Regex::new("^t$").unwrap()),
            ..Default::default()
        };
        let g = Graph::import(&every_role_model(), &Registry::standard(), &options).unwrap();
        let roles: Vec<(&str, bool, ParamRole)> = g
            .roles
            .iter()
            .map(|r| (r.name.as_str(), r.trainable, r.reason))
            .collect();
        assert_eq!(
            roles,
            [
                ("w", true, ParamRole::Weight),
                ("b", false, ParamRole::FrozenByOption),
                ("mask", false, ParamRole::Infinite),
                ("s", false, ParamRole::OneElement),
                ("t", true, ParamRole::TrainedByOption),
                ("shape", false, ParamRole::NotFloat),
                ("unused", false, ParamRole::NotOnDifferentiablePath),
            ]
        );
        assert_eq!(g.params.names, ["w", "t"]);
        assert!(g.params.tensors.iter().all(Tensor::requires_grad));
        assert_eq!(g.params.position("t"), Some(1));
        // The graph still computes: 4 * 0.5 + bias, masked, times 2 * 3.
        let y = g
            .forward(&[Tensor::ones([1, 4], tch::kind::FLOAT_CPU)])
            .unwrap();
        let y = Vec::<f64>::try_from(y[0].to_kind(tch::Kind::Double).flatten(0, -1)).unwrap();
        assert!((y[0] - 6.0 * 2.1).abs() < 1e-5 && (y[2] - 6.0 * 2.3).abs() < 1e-5);
        assert_eq!(y[1], f64::NEG_INFINITY);
    }

    #[test]
    fn a_nan_in_a_weight_is_an_error_naming_it() {
        let on_path: HashSet<&str> = ["w"].into();
        let nan = Tensor::from_slice(&[1.0f32, f32::NAN]);
        let err = param_role(
            "w",
            DataType::FLOAT,
            2,
            &nan,
            &on_path,
            &ImportOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            GraphError::Initializer(TensorError::NaN { ref name }) if name == "w"
        ));
        // Frozen by name, the same tensor is never read.
        let options = ImportOptions {
            freeze: Some(Regex::new("w").unwrap()),
            ..Default::default()
        };
        let role = param_role("w", DataType::FLOAT, 2, &nan, &on_path, &options).unwrap();
        assert_eq!(role, ParamRole::FrozenByOption);
    }
}
