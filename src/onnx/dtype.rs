//! ONNX element types (`TensorProto.DataType`) and their tch counterparts.

use tch::Kind;

/// An ONNX element type code, with the names the ONNX spec gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataType(pub i32);

impl DataType {
    pub const UNDEFINED: DataType = DataType(0);
    pub const FLOAT: DataType = DataType(1);
    pub const UINT8: DataType = DataType(2);
    pub const INT8: DataType = DataType(3);
    pub const UINT16: DataType = DataType(4);
    pub const INT16: DataType = DataType(5);
    pub const INT32: DataType = DataType(6);
    pub const INT64: DataType = DataType(7);
    pub const STRING: DataType = DataType(8);
    pub const BOOL: DataType = DataType(9);
    pub const FLOAT16: DataType = DataType(10);
    pub const DOUBLE: DataType = DataType(11);
    pub const UINT32: DataType = DataType(12);
    pub const UINT64: DataType = DataType(13);
    pub const COMPLEX64: DataType = DataType(14);
    pub const COMPLEX128: DataType = DataType(15);
    pub const BFLOAT16: DataType = DataType(16);

    /// The spec's name of the type (`float`, `int64`, ...), for messages and reports.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "undefined",
            1 => "float",
            2 => "uint8",
            3 => "int8",
            4 => "uint16",
            5 => "int16",
            6 => "int32",
            7 => "int64",
            8 => "string",
            9 => "bool",
            10 => "float16",
            11 => "double",
            12 => "uint32",
            13 => "uint64",
            14 => "complex64",
            15 => "complex128",
            16 => "bfloat16",
            17 => "float8e4m3fn",
            18 => "float8e4m3fnuz",
            19 => "float8e5m2",
            20 => "float8e5m2fnuz",
            21 => "uint4",
            22 => "int4",
            23 => "float4e2m1",
            24 => "float8e8m0",
            25 => "uint2",
            26 => "int2",
            _ => "unknown",
        }
    }

    /// Bytes per element in `raw_data`, where the type has a whole-byte size.
    pub fn byte_size(self) -> Option<usize> {
        Some(match self.0 {
            1 | 6 | 12 => 4,
            2 | 3 | 9 | 17..=20 | 24 => 1,
            4 | 5 | 10 | 16 => 2,
            7 | 11 | 13 | 14 => 8,
            15 => 16,
            _ => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self.0, 1 | 10 | 11 | 16)
    }

    /// The tch kind a tensor of this type is held in. Unsigned types that tch
    /// lacks are widened (uint16 -> int32, uint32/uint64 -> int64).
    pub fn kind(self) -> Option<Kind> {
        Some(match self.0 {
            1 => Kind::Float,
            2 => Kind::Uint8,
            3 => Kind::Int8,
            4 => Kind::Int,
            5 => Kind::Int16,
            6 => Kind::Int,
            7 | 12 | 13 => Kind::Int64,
            9 => Kind::Bool,
            10 => Kind::Half,
            11 => Kind::Double,
            16 => Kind::BFloat16,
            _ => return None,
        })
    }

    /// The ONNX type of a tch kind.
    pub fn from_kind(kind: Kind) -> Option<DataType> {
        Some(match kind {
            Kind::Float => Self::FLOAT,
            Kind::Uint8 => Self::UINT8,
            Kind::Int8 => Self::INT8,
            Kind::Int16 => Self::INT16,
            Kind::Int => Self::INT32,
            Kind::Int64 => Self::INT64,
            Kind::Bool => Self::BOOL,
            Kind::Half => Self::FLOAT16,
            Kind::Double => Self::DOUBLE,
            Kind::BFloat16 => Self::BFLOAT16,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
