//! Descriptors from files: `.proto` sources compiled with protox, and
//! protosets.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use miette::Diagnostic as _;
use prost::Message as _;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;
use protox::file::{FileResolver as _, GoogleFileResolver};

use super::GrpcMessageError;

/// Compiles `files`, looking imports up in `import_paths`, then in each
/// file's own directory (as ghz does), then among the well-known types.
pub(super) fn compile(
    files: &[PathBuf],
    import_paths: &[PathBuf],
) -> Result<DescriptorPool, GrpcMessageError> {
    for dir in import_paths {
        if !dir.is_dir() {
            return Err(GrpcMessageError::ProtoFile {
                path: dir.clone(),
                reason: "the import path is not a directory".to_owned(),
            });
        }
    }
    let mut includes: Vec<PathBuf> = import_paths.to_vec();
    for file in files {
        // protox would only say the file is "not in any include path".
        if let Err(e) = std::fs::metadata(file) {
            return Err(GrpcMessageError::ProtoFile {
                path: file.clone(),
                reason: e.to_string(),
            });
        }
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !includes.contains(&dir) {
            includes.push(dir);
        }
    }
    let mut compiler = protox::Compiler::new(&includes).map_err(|e| compile_error(&e))?;
    compiler
        .include_imports(true)
        .open_files(files)
        .map_err(|e| compile_error(&e))?;
    Ok(compiler.descriptor_pool())
}

/// `file:line:column: message (help)` from protox's diagnostic, so the
/// user can go straight to the mistake.
fn compile_error(err: &protox::Error) -> GrpcMessageError {
    let at = err
        .labels()
        .and_then(|mut labels| labels.next())
        .and_then(|label| {
            let source = err.source_code()?;
            let span = source.read_span(label.inner(), 0, 0).ok()?;
            let name = span.name().or(err.file())?.to_owned();
            Some(format!("{name}:{}:{}", span.line() + 1, span.column() + 1))
        })
        .or_else(|| err.file().map(str::to_owned));
    let mut text = match at {
        Some(at) => format!("{at}: {err}"),
        None => err.to_string(),
    };
    if let Some(help) = err.help() {
        text.push_str(&format!(" (help: {help})"));
    }
    GrpcMessageError::ProtoCompile(text)
}

/// Reads a serialized `FileDescriptorSet`. Well-known imports the set
/// lacks (written without `--include_imports`) are filled in.
pub(super) fn protoset(path: &Path) -> Result<DescriptorPool, GrpcMessageError> {
    let bytes = std::fs::read(path).map_err(|e| GrpcMessageError::ProtosetRead {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| GrpcMessageError::InvalidProtoset {
        path: path.to_owned(),
        reason,
    };
    let set = prost_types::FileDescriptorSet::decode(bytes.as_slice())
        .map_err(|e| invalid(e.to_string()))?;
    if set.file.is_empty() {
        return Err(invalid("it holds no files".to_owned()));
    }
    pool_from_files(set.file).map_err(invalid)
}

/// Builds a pool from files in any order, adding the well-known
/// `google/protobuf/*.proto` files they import but do not include.
pub(super) fn pool_from_files(
    mut files: Vec<FileDescriptorProto>,
) -> Result<DescriptorPool, String> {
    add_well_known_imports(&mut files);
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(files)
        .map_err(|e| e.to_string())?;
    Ok(pool)
}

/// The dependencies of `files` that none of them is.
pub(super) fn missing_imports(files: &[FileDescriptorProto]) -> Vec<String> {
    let have: HashSet<&str> = files.iter().map(|f| f.name()).collect();
    let mut missing: Vec<String> = files
        .iter()
        .flat_map(|f| &f.dependency)
        .filter(|d| !have.contains(d.as_str()))
        .cloned()
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// A well-known file (`google/protobuf/timestamp.proto`) built into protox.
pub(super) fn well_known(name: &str) -> Option<FileDescriptorProto> {
    if !name.starts_with("google/protobuf/") {
        return None;
    }
    let file = GoogleFileResolver::new().open_file(name).ok()?;
    Some(file.file_descriptor_proto().clone())
}

fn add_well_known_imports(files: &mut Vec<FileDescriptorProto>) {
    // Each round adds at least one file or stops; well-known files import
    // only each other, so this ends after a few rounds.
    loop {
        let found: Vec<FileDescriptorProto> = missing_imports(files)
            .iter()
            .filter_map(|name| well_known(name))
            .collect();
        if found.is_empty() {
            return;
        }
        files.extend(found);
    }
}
