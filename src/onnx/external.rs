//! External data: tensors whose bytes live in files beside the model
//! (`data_location = EXTERNAL`, keys `location`, `offset`, `length`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use super::OnnxError;

const EXTERNAL: i32 = 1;

/// Which tensors were stored externally, by tensor name, with their original
/// `external_data` entries (kept for reference; saving writes new ones).
pub type ExternalTensors = BTreeMap<String, Vec<StringStringEntryProto>>;

/// Calls `f` on every tensor in the model that can hold data: initializers,
/// sparse initializers, tensor attributes, in every (sub)graph and function.
pub fn for_each_tensor_mut(model: &mut ModelProto, f: &mut dyn FnMut(&mut TensorProto)) {
    if let Some(graph) = model.graph.as_mut() {
        graph_tensors_mut(graph, f);
    }
    for info in &mut model.training_info {
        for g in [info.initialization.as_mut(), info.algorithm.as_mut()]
            .into_iter()
            .flatten()
        {
            graph_tensors_mut(g, f);
        }
    }
    for function in &mut model.functions {
        for node in &mut function.node {
            for attr in &mut node.attribute {
                attribute_tensors_mut(attr, f);
            }
        }
    }
}

fn graph_tensors_mut(graph: &mut GraphProto, f: &mut dyn FnMut(&mut TensorProto)) {
    graph.initializer.iter_mut().for_each(&mut *f);
    for sparse in &mut graph.sparse_initializer {
        sparse.values.iter_mut().for_each(&mut *f);
        sparse.indices.iter_mut().for_each(&mut *f);
    }
    for node in &mut graph.node {
        for attr in &mut node.attribute {
            attribute_tensors_mut(attr, f);
        }
    }
}

fn attribute_tensors_mut(
    attr: &mut super::proto::AttributeProto,
    f: &mut dyn FnMut(&mut TensorProto),
) {
    attr.t.iter_mut().for_each(&mut *f);
    attr.tensors.iter_mut().for_each(&mut *f);
    for sparse in attr
        .sparse_tensor
        .iter_mut()
        .chain(attr.sparse_tensors.iter_mut())
    {
        sparse.values.iter_mut().for_each(&mut *f);
        sparse.indices.iter_mut().for_each(&mut *f);
    }
    for g in attr.g.iter_mut().chain(attr.graphs.iter_mut()) {
        graph_tensors_mut(g, f);
    }
}

fn entry<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data
        .iter()
        .find(|e| e.key() == key)
        .map(|e| e.value())
}

/// Reads every external tensor's bytes into its `raw_data` and clears its
/// external reference; returns which tensors were external.
pub fn load(
    model: &mut ModelProto,
    model_path: &Path,
    dir: &Path,
) -> Result<ExternalTensors, OnnxError> {
    let mut external = ExternalTensors::new();
    let mut first_error = None;
    for_each_tensor_mut(model, &mut |t| {
        if t.data_location != Some(EXTERNAL) || first_error.is_some() {
            return;
        }
        match read_external(t, dir) {
            Ok(bytes) => {
                external.insert(t.name().to_string(), std::mem::take(&mut t.external_data));
                t.raw_data = Some(bytes.into());
                t.data_location = None;
            }
            Err(reason) => {
                first_error = Some(OnnxError::ExternalData {
                    model: model_path.to_path_buf(),
                    tensor: t.name().to_string(),
                    reason,
                })
            }
        }
    });
    match first_error {
        Some(e) => Err(e),
        None => Ok(external),
    }
}

/// The file an external `location` names, refusing any path that is absolute
/// or climbs out of the model's folder.
pub fn resolve_location(dir: &Path, location: &str) -> Result<PathBuf, String> {
    let rel = Path::new(location);
    if location.is_empty() {
        return Err("has an empty `location`".into());
    }
    let escapes = rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes {
        return Err(format!(
            "location `{location}` escapes the model's folder (absolute paths and `..` are refused)"
        ));
    }
    Ok(dir.join(rel))
}

/// Opens an external-data file for reading: every component below `dir`
/// must be a real folder or file, never a symbolic link (a link inside the
/// model's folder could point anywhere, and sanitize would copy what it
/// reads into the model it writes), and the file must be a regular file (a
/// FIFO would block, a device would never end).
fn open_contained(dir: &Path, location: &str, path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut walked = dir.to_path_buf();
    for component in Path::new(location).components() {
        let Component::Normal(part) = component else {
            continue;
        };
        walked.push(part);
        let meta = std::fs::symlink_metadata(&walked)
            .map_err(|e| format!("file `{}` cannot be opened: {e}", path.display()))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "location `{location}`: `{}` is a symbolic link; ibau does not follow links in external data",
                walked.display()
            ));
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("file `{}` cannot be opened: {e}", path.display()))?;
    // Checked on the open file: it cannot be swapped after the check.
    let meta = file
        .metadata()
        .map_err(|e| format!("file `{}`: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "file `{}` is not a regular file (a device, FIFO or folder)",
            path.display()
        ));
    }
    Ok(file)
}

/// The bytes a tensor's dims and element type need, when the type has a
/// fixed size; over the memory budget is an error.
fn expected_length(t: &TensorProto) -> Result<Option<u64>, String> {
    let Some(size) = super::DataType(t.data_type()).byte_size() else {
        return Ok(None);
    };
    let what = "the tensor";
    let n = crate::limits::element_count(&t.dims, what).map_err(|e| e.to_string())?;
    let bytes = (n as u128) * size as u128;
    crate::limits::check_bytes(bytes, &format!("its shape {:?}", t.dims))
        .map_err(|e| e.to_string())?;
    Ok(Some(bytes as u64))
}

fn read_external(t: &TensorProto, dir: &Path) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let location = entry(t, "location").ok_or("has no `location` key")?;
    let path = resolve_location(dir, location)?;
    let parse = |key: &str| -> Result<Option<u64>, String> {
        entry(t, key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("has a bad `{key}` value `{v}`"))
            })
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let expected = expected_length(t)?;
    let mut file = open_contained(dir, location, &path)?;
    let size = file
        .metadata()
        .map_err(|e| format!("file `{}`: {e}", path.display()))?
        .len();
    let length = match parse("length")? {
        Some(n) => n,
        None => expected.unwrap_or_else(|| size.saturating_sub(offset)),
    };
    // Checked before reading: the dims and type say how many bytes belong
    // to the tensor, whatever `length` claims.
    if let Some(expected) = expected.filter(|&e| e != length) {
        return Err(format!(
            "`length` {length} does not match the {expected} bytes its shape {:?} needs",
            t.dims
        ));
    }
    crate::limits::check_bytes(length as u128, "the tensor's `length`")
        .map_err(|e| e.to_string())?;
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "file `{}` is too short: {size} bytes, the tensor needs bytes {offset}..{}",
            path.display(),
            offset.saturating_add(length)
        ));
    }
    let mut bytes = vec![0u8; length as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| format!("file `{}`: {e}", path.display()))?;
    Ok(bytes)
}

/// Moves the bytes of the tensors named in `external` out of `raw_data`, into
/// one data file `<output file name>.data` beside `output`. Returns that file's
/// path and contents (the caller writes it), or `None` when nothing is external.
pub fn save(
    model: &mut ModelProto,
    external: &ExternalTensors,
    input: &Path,
    output: &Path,
) -> Result<Option<(PathBuf, Vec<u8>)>, OnnxError> {
    if external.is_empty() {
        return Ok(None);
    }
    let file_name = format!(
        "{}.data",
        output
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let data_path = output.with_file_name(&file_name);
    // Never overwrite a data file the input model reads from.
    if let Ok(target) = data_path.canonicalize() {
        let input_dir = input.parent().unwrap_or(Path::new("."));
        let reads_target = external.values().flatten().any(|e| {
            e.key() == "location"
                && input_dir.join(e.value()).canonicalize().ok().as_ref() == Some(&target)
        });
        if reads_target {
            return Err(OnnxError::Refused {
                path: data_path,
                reason: "it is an external-data file of the input model".into(),
            });
        }
    }
    let mut data = Vec::new();
    for_each_tensor_mut(model, &mut |t| {
        if !external.contains_key(t.name()) {
            return;
        }
        let Some(bytes) = t.raw_data.take() else {
            return;
        };
        // Align each tensor to 4 KiB, as onnx's own writer does, so that
        // runtimes can map the file.
        while data.len() % 4096 != 0 {
            data.push(0);
        }
        let offset = data.len();
        data.extend_from_slice(&bytes);
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            kv("location", file_name.clone()),
            kv("offset", offset.to_string()),
            kv("length", bytes.len().to_string()),
        ];
        t.data_location = Some(EXTERNAL);
    });
    Ok(Some((data_path, data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_that_escape_are_refused() {
        let dir = Path::new("/models");
        assert!(resolve_location(dir, "w.bin").is_ok());
        assert!(resolve_location(dir, "sub/w.bin").is_ok());
        assert!(resolve_location(dir, "../w.bin").is_err());
        assert!(resolve_location(dir, "sub/../../w.bin").is_err());
        assert!(resolve_location(dir, "/etc/passwd").is_err());
        assert!(resolve_location(dir, "").is_err());
    }
}
