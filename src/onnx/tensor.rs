//! `TensorProto` <-> `tch::Tensor`, both directions, from `raw_data` (little
//! endian) and from the typed fields (`float_data`, `int32_data`, ...), for
//! float32/64, float16, bfloat16, int8/16/32/64, uint8/16/32/64 and bool.

use half::{bf16, f16};
use tch::{Device, Kind, Tensor};

use super::dtype::DataType;
use super::proto::TensorProto;

/// Errors converting tensor data.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("tensor `{name}`: {dtype} tensors cannot be used as numbers")]
    NotNumeric { name: String, dtype: DataType },
    #[error("tensor `{name}`: element type {dtype} ({code}) is not supported")]
    Unsupported {
        name: String,
        dtype: DataType,
        code: i32,
    },
    #[error("tensor `{name}`: {field} holds {got} values but its shape {dims:?} needs {expected}")]
    Length {
        name: String,
        field: &'static str,
        dims: Vec<i64>,
        expected: usize,
        got: usize,
    },
    #[error("tensor `{name}`: holds NaN values, which no weight can be")]
    NaN { name: String },
    #[error("tensor `{name}`: negative dimension in shape {dims:?}")]
    BadShape { name: String, dims: Vec<i64> },
    #[error("tensor `{name}`: value {value} of uint64 does not fit in int64")]
    Overflow { name: String, value: u64 },
    #[error("tensor `{name}`: shape {got:?} of the new value differs from the stored shape {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    #[error("tensor `{name}`: {source}")]
    Torch {
        name: String,
        #[source]
        source: tch::TchError,
    },
}

fn numel(t: &TensorProto) -> Result<usize, TensorError> {
    t.dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| TensorError::BadShape {
                name: t.name().to_string(),
                dims: t.dims.clone(),
            })
    })
}

/// The tensor stored in `t`, on the CPU, in the tch kind of its ONNX type
/// (see [`DataType::kind`]). External data must already be loaded.
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor, TensorError> {
    let name = || t.name().to_string();
    let dtype = DataType(t.data_type());
    let kind = match dtype.kind() {
        Some(kind) => kind,
        None if matches!(dtype.0, 8 | 14 | 15) => {
            return Err(TensorError::NotNumeric {
                name: name(),
                dtype,
            })
        }
        None => {
            return Err(TensorError::Unsupported {
                name: name(),
                dtype,
                code: dtype.0,
            })
        }
    };
    let n = numel(t)?;
    // The tensor, copied once from bytes in the tch kind's layout.
    let from_bytes = |bytes: &[u8]| {
        Tensor::f_from_data_size(bytes, &t.dims, kind).map_err(|source| TensorError::Torch {
            name: name(),
            source,
        })
    };
    let length_error = |field, got| TensorError::Length {
        name: name(),
        field,
        dims: t.dims.clone(),
        expected: n,
        got,
    };
    // Bytes in the tch kind's layout (little endian, as on every host we build for).
    let bytes: std::borrow::Cow<'_, [u8]> = if let Some(raw) = t.raw_data.as_ref() {
        let size = dtype.byte_size().expect("numeric types have a byte size");
        // A shape whose byte size overflows can match no raw_data.
        if n.checked_mul(size) != Some(raw.len()) {
            return Err(length_error("raw_data (bytes)", raw.len()));
        }
        match dtype {
            DataType::UINT16 => raw
                .chunks_exact(2)
                .flat_map(|c| i32::from(u16::from_le_bytes([c[0], c[1]])).to_le_bytes())
                .collect(),
            DataType::UINT32 => raw
                .chunks_exact(4)
                .flat_map(|c| i64::from(u32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
                .collect(),
            DataType::UINT64 => {
                let mut out = Vec::with_capacity(raw.len());
                for c in raw.chunks_exact(8) {
                    let v = u64::from_le_bytes(c.try_into().unwrap());
                    let v = i64::try_from(v).map_err(|_| TensorError::Overflow {
                        name: name(),
                        value: v,
                    })?;
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out
            }
            _ => return from_bytes(raw),
        }
        .into()
    } else {
        let check = |field: &'static str, got: usize| {
            if got == n {
                Ok(())
            } else {
                Err(length_error(field, got))
            }
        };
        match dtype {
            DataType::FLOAT => {
                check("float_data", t.float_data.len())?;
                t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            DataType::DOUBLE => {
                check("double_data", t.double_data.len())?;
                t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            DataType::INT64 => {
                check("int64_data", t.int64_data.len())?;
                t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            DataType::UINT32 | DataType::UINT64 => {
                check("uint64_data", t.uint64_data.len())?;
                let mut out = Vec::with_capacity(n * 8);
                for &v in &t.uint64_data {
                    let v = i64::try_from(v).map_err(|_| TensorError::Overflow {
                        name: name(),
                        value: v,
                    })?;
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out
            }
            _ => {
                // int32, int16, int8, uint16, uint8, bool, float16 and bfloat16
                // values are all stored one per int32_data entry.
                check("int32_data", t.int32_data.len())?;
                let data = &t.int32_data;
                match kind {
                    Kind::Int => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    Kind::Int16 | Kind::Half | Kind::BFloat16 => data
                        .iter()
                        .flat_map(|&v| (v as u16).to_le_bytes())
                        .collect(),
                    _ => data.iter().map(|&v| v as u8).collect(),
                }
            }
        }
        .into()
    };
    from_bytes(&bytes)
}

/// Writes `value` into `t`'s data, converting it to `t`'s element type and
/// keeping `t`'s storage form: `raw_data` stays `raw_data`, a typed field stays
/// that field. The shape must be the stored one. Every other field is kept.
pub fn write_tensor_data(t: &mut TensorProto, value: &Tensor) -> Result<(), TensorError> {
    let name = t.name().to_string();
    let torch = |source| TensorError::Torch {
        name: name.clone(),
        source,
    };
    let dtype = DataType(t.data_type());
    let kind = dtype.kind().ok_or(TensorError::Unsupported {
        name: name.clone(),
        dtype,
        code: dtype.0,
    })?;
    let size = value.size();
    let numel = numel(t)?;
    if size.iter().product::<i64>() as usize != numel
        || (size != t.dims && !(size.is_empty() && t.dims.is_empty()))
    {
        return Err(TensorError::ShapeMismatch {
            name,
            expected: t.dims.clone(),
            got: size,
        });
    }
    let value = value
        .f_detach()
        .and_then(|v| v.f_to_device(Device::Cpu))
        .and_then(|v| v.f_to_kind(kind))
        .and_then(|v| v.f_contiguous())
        .map_err(torch)?;
    let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
    value.f_copy_data_u8(&mut bytes, numel).map_err(torch)?;

    if t.raw_data.is_some() {
        t.raw_data = Some(match dtype {
            // Narrow back the unsigned types that were widened on load.
            DataType::UINT16 => bytes
                .chunks_exact(4)
                .flat_map(|c| (i32::from_le_bytes(c.try_into().unwrap()) as u16).to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
            DataType::UINT32 => bytes
                .chunks_exact(8)
                .flat_map(|c| (i64::from_le_bytes(c.try_into().unwrap()) as u32).to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
            _ => bytes.into(),
        });
        return Ok(());
    }
    let i64s = || {
        bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
    };
    match dtype {
        DataType::FLOAT => {
            t.float_data = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }
        DataType::DOUBLE => {
            t.double_data = bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }
        DataType::INT64 => t.int64_data = i64s().collect(),
        DataType::UINT32 | DataType::UINT64 => t.uint64_data = i64s().map(|v| v as u64).collect(),
        DataType::INT32 | DataType::UINT16 => {
            t.int32_data = bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }
        DataType::INT16 => {
            t.int32_data = bytes
                .chunks_exact(2)
                .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
                .collect()
        }
        DataType::FLOAT16 | DataType::BFLOAT16 => {
            t.int32_data = bytes
                .chunks_exact(2)
                .map(|c| i32::from(u16::from_le_bytes([c[0], c[1]])))
                .collect()
        }
        DataType::INT8 => t.int32_data = bytes.iter().map(|&b| i32::from(b as i8)).collect(),
        _ => t.int32_data = bytes.iter().map(|&b| i32::from(b)).collect(),
    }
    Ok(())
}

/// The value of a float16 or bfloat16 bit pattern as f32 (for summaries).
pub fn half_bits_to_f32(dtype: DataType, bits: u16) -> f32 {
    if dtype == DataType::BFLOAT16 {
        bf16::from_bits(bits).to_f32()
    } else {
        f16::from_bits(bits).to_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(dtype: DataType, dims: &[i64]) -> TensorProto {
        TensorProto {
            name: Some("w".into()),
            data_type: Some(dtype.0),
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn typed_and_raw_round_trip_for_every_numeric_type() {
        let source = Tensor::from_slice(&[0.0f64, 1.0, 2.0, 3.0, 4.0, 5.0]).view([2, 3]);
        for code in [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 16] {
            let dtype = DataType(code);
            for raw in [false, true] {
                let mut t = proto(dtype, &[2, 3]);
                if raw {
                    t.raw_data = Some(Vec::new().into());
                }
                write_tensor_data(&mut t, &source).unwrap();
                assert_eq!(t.raw_data.is_some(), raw, "{dtype} storage kept");
                let back = tensor_from_proto(&t).unwrap().to_kind(Kind::Double);
                let expected = if dtype == DataType::BOOL {
                    source.ne(0.0).to_kind(Kind::Double)
                } else {
                    source.shallow_clone()
                };
                assert!(back.equal(&expected), "{dtype} raw={raw}: {back:?}");
            }
        }
    }

    #[test]
    fn float16_typed_field_holds_bit_patterns() {
        let mut t = proto(DataType::FLOAT16, &[2]);
        t.int32_data = vec![0x3C00, 0xC000]; // 1.0, -2.0
        let v = tensor_from_proto(&t).unwrap().to_kind(Kind::Float);
        assert_eq!(Vec::<f32>::try_from(&v).unwrap(), vec![1.0, -2.0]);
        assert_eq!(half_bits_to_f32(DataType::FLOAT16, 0x3C00), 1.0);
    }

    #[test]
    fn bad_lengths_and_strings_are_errors() {
        let mut t = proto(DataType::FLOAT, &[3]);
        t.float_data = vec![1.0, 2.0];
        let err = tensor_from_proto(&t).unwrap_err().to_string();
        assert!(err.contains("float_data holds 2 values"), "{err}");
        let mut t = proto(DataType::FLOAT, &[3]);
        t.raw_data = Some(vec![0; 11].into());
        assert!(tensor_from_proto(&t).is_err());
        let t = proto(DataType::STRING, &[1]);
        let err = tensor_from_proto(&t).unwrap_err().to_string();
        assert!(
            err.contains("string tensors cannot be used as numbers"),
            "{err}"
        );
    }

    #[test]
    fn uint64_out_of_range_is_an_error() {
        let mut t = proto(DataType::UINT64, &[1]);
        t.uint64_data = vec![u64::MAX];
        assert!(matches!(
            tensor_from_proto(&t),
            Err(TensorError::Overflow { .. })
        ));
    }
}
