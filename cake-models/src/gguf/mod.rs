//! GGUF container: header, typed metadata, tensor table and dequantised tensor data.
//!
//! The parser trusts no size from the file: every count and length is checked against the
//! bytes that remain before anything is allocated, and every tensor's data range is checked
//! against the file length when the file is opened.

mod dequant;
mod hf;

pub use dequant::{GgmlType, dequantize};
pub use hf::{gguf_name, hf_name};

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Largest number of dimensions a GGUF tensor may have (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Alignment of the tensor data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Little-endian `GGUF`.
const MAGIC: &[u8; 4] = b"GGUF";

/// Everything that can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("{path} is not a GGUF file (magic bytes {found:?}, expected \"GGUF\")")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A GGUF version this parser does not read.
    #[error("{path}: GGUF version {version} is not supported (only versions 2 and 3)")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        version: u32,
    },
    /// The file ends (or a declared size runs) past the end of the file.
    #[error(
        "{path}: truncated or corrupt GGUF: {what} at byte {offset} needs {needed} bytes, file has {available} left"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Byte offset of the read.
        offset: u64,
        /// Bytes needed.
        needed: u64,
        /// Bytes remaining in the file from `offset`.
        available: u64,
    },
    /// A structurally invalid value (bad type id, bad UTF-8, impossible shape, ...).
    #[error("{path}: corrupt GGUF: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A metadata key that is required is missing.
    #[error("GGUF metadata key `{key}` is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata key has a different type than needed.
    #[error("GGUF metadata key `{key}` is {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type wanted.
        expected: &'static str,
        /// The type found.
        found: &'static str,
    },
    /// A tensor name that is not in the file.
    #[error("tensor `{name}` is not in the GGUF file")]
    MissingTensor {
        /// The name looked for.
        name: String,
    },
    /// A tensor type that cannot be dequantised.
    #[error("tensor `{name}` has type {ty}, which cake cannot dequantise (supported: {supported})")]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// Its GGML type.
        ty: GgmlType,
        /// The supported types.
        supported: &'static str,
    },
    /// The architecture in `general.architecture` is not one cake runs.
    #[error("GGUF architecture `{0}` is not supported (supported: llama, mistral, qwen2)")]
    UnsupportedArchitecture(String),
    /// A GGUF tensor name that has no Hugging Face equivalent.
    #[error("GGUF tensor `{0}` has no Hugging Face name this loader knows")]
    UnknownTensorName(String),
}

/// A metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float32`.
    F32(f32),
    /// `float64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// UTF-8 `string`.
    String(String),
    /// `array` of values (all of one type).
    Array(Vec<Value>),
}

impl Value {
    /// The GGUF name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "uint8",
            Value::I8(_) => "int8",
            Value::U16(_) => "uint16",
            Value::I16(_) => "int16",
            Value::U32(_) => "uint32",
            Value::I32(_) => "int32",
            Value::U64(_) => "uint64",
            Value::I64(_) => "int64",
            Value::F32(_) => "float32",
            Value::F64(_) => "float64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// The value as a signed 128-bit integer, if it is an integer of any width.
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as `f64`, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }
}

/// The typed key/value metadata of a GGUF file.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: BTreeMap<String, Value>,
}

impl Metadata {
    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// All keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    fn wrong(key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: found.type_name(),
        }
    }

    /// An integer key that fits in `u32` (any integer width is accepted).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| Self::wrong(key, "an integer in u32 range", v))
    }

    /// An integer key that fits in `u64` (any integer width is accepted).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| Self::wrong(key, "an integer in u64 range", v))
    }

    /// A float (or integer) key as `f64`.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| Self::wrong(key, "a number", v))
    }

    /// A float (or integer) key as `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_f64(key).map(|v| v as f32)
    }

    /// A boolean key.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(Self::wrong(key, "bool", v)),
        }
    }

    /// A string key.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            v => Err(Self::wrong(key, "string", v)),
        }
    }

    /// An array-of-strings key.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.require(key)?;
        let Value::Array(items) = v else {
            return Err(Self::wrong(key, "array of strings", v));
        };
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.as_str()),
                other => Err(Self::wrong(key, "array of strings", other)),
            })
            .collect()
    }

    /// An array-of-integers key as `i64` values.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let v = self.require(key)?;
        let Value::Array(items) = v else {
            return Err(Self::wrong(key, "array of integers", v));
        };
        items
            .iter()
            .map(|item| {
                item.as_int()
                    .and_then(|i| i64::try_from(i).ok())
                    .ok_or_else(|| Self::wrong(key, "array of integers", item))
            })
            .collect()
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// GGUF tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions as GGUF lists them: innermost (contiguous) first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes (checked to lie inside the file).
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Dimensions in PyTorch order (outermost first): `[out, in]` for a linear weight.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An opened GGUF file: metadata and tensor table parsed, data memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    data_start: u64,
    storage: Storage,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .field("metadata_keys", &self.metadata.entries.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses `path` (the tensor data is memory-mapped, not read).
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only; cake never writes model files while they are open,
            // and a concurrent writer could only change values, never memory safety of `&[u8]`
            // reads within the mapped length.
            Storage::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Self::parse(path.to_path_buf(), storage)
    }

    /// Parses a GGUF image held in memory; `name` is used in error messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(name.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<GgufFile, GgufError> {
        let bytes = storage.bytes();
        let mut r = Reader {
            bytes,
            pos: 0,
            path: &path,
        };
        let magic: [u8; 4] = r.take(4, "magic")?.try_into().unwrap_or([0; 4]);
        if &magic != MAGIC {
            return Err(GgufError::BadMagic { path, found: magic });
        }
        let version = r.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { path, version });
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;

        // Each metadata entry takes at least 8 (key length) + 4 (type) bytes.
        r.check_count(n_kv, 12, "metadata entries")?;
        let mut entries = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32("metadata value type")?;
            let value = r.value(ty, &key, 0)?;
            entries.insert(key, value);
        }
        let metadata = Metadata { entries };

        // Each tensor entry takes at least 8 (name) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
        r.check_count(n_tensors, 24, "tensor table entries")?;
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.corrupt(format!(
                    "tensor `{name}` has {n_dims} dimensions (1..=4 allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            let ty_id = r.u32("tensor type")?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
                r.corrupt(format!("tensor `{name}` has unknown GGML type id {ty_id}"))
            })?;
            let offset = r.u64("tensor offset")?;
            raw.push((name, dims, ty, offset));
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_int() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 20 => a as u64,
                _ => {
                    return Err(r.corrupt(format!("general.alignment {v:?} is not a power of two")));
                }
            },
        };
        let file_len = bytes.len() as u64;
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let data_len = file_len.saturating_sub(data_start);

        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let corrupt = |what: String| GgufError::Corrupt {
                path: path.clone(),
                what,
            };
            let n = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| corrupt(format!("tensor `{name}` dims {dims:?} overflow")))?;
            let (block, block_bytes) = ty.block();
            if !dims[0].is_multiple_of(block) {
                return Err(corrupt(format!(
                    "tensor `{name}` has inner dimension {} not divisible by the {ty} block size {block}",
                    dims[0]
                )));
            }
            let size = (n / block)
                .checked_mul(block_bytes)
                .ok_or_else(|| corrupt(format!("tensor `{name}` size overflows")))?;
            if !offset.is_multiple_of(alignment) {
                return Err(corrupt(format!(
                    "tensor `{name}` offset {offset} is not aligned to {alignment}"
                )));
            }
            let end = offset.checked_add(size);
            if end.is_none_or(|e| e > data_len) {
                return Err(GgufError::Truncated {
                    path: path.clone(),
                    what: format!("data of tensor `{name}` ({ty}, dims {dims:?})"),
                    offset: data_start.saturating_add(offset),
                    needed: size,
                    available: data_len.saturating_sub(offset),
                });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }

        Ok(GgufFile {
            path,
            version,
            metadata,
            tensors,
            data_start,
            storage,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The typed metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// `general.architecture`, e.g. `llama` or `qwen2`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.metadata.get_str("general.architecture")
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The table entry of the tensor named `name` (GGUF name).
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::MissingTensor {
                name: name.to_string(),
            })
    }

    /// The raw (still quantised) bytes of a tensor; in range by construction.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_start + info.offset) as usize;
        &self.storage.bytes()[start..start + info.size as usize]
    }

    /// A tensor (GGUF name) dequantised to f32, in file element order.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor_info(name)?;
        dequantize(info.ty, self.tensor_bytes(info), &info.name)
    }
}

/// Bounds-checked little-endian cursor over the file bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

/// Arrays nested deeper than this are rejected (GGUF uses one level).
const MAX_ARRAY_NESTING: u32 = 8;

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn truncated(&self, what: &str, needed: u64) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: self.pos as u64,
            needed,
            available: self.remaining(),
        }
    }

    fn corrupt(&self, what: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            what,
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.truncated(what, n));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    /// Fails unless `count` items of at least `min_size` bytes each can fit in what remains.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(self.truncated(&format!("{count} {what}"), count.saturating_mul(min_size))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| self.corrupt(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(key)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.corrupt(format!("metadata `{key}` has bool byte {b}"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(self.corrupt(format!("metadata `{key}` nests arrays too deeply")));
                }
                let item_ty = self.u32(key)?;
                let count = self.u64(key)?;
                let min_size = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(self.corrupt(format!(
                            "metadata `{key}` has unknown array item type {other}"
                        )));
                    }
                };
                self.check_count(count, min_size, &format!("array items of `{key}`"))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(key)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(
                    self.corrupt(format!("metadata `{key}` has unknown value type {other}"))
                );
            }
        })
    }
}
