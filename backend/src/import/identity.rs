//! Which files an import began with: the image and its backing files, by size and modification
//! time, checksummed into the one number the container records, so an import resumes only
//! from the files it began with (a source whose contents changed would mix two images).

use std::os::unix::fs::MetadataExt;

use super::SourceError;
use super::layers::chain_info;
use crate::device::nbd::NbdAddress;

/// The identity of `spec`: a crc32c of the size and modification time (ns) of every file of
/// its chain, top first. `None` for an NBD URI, which has no files to look at.
pub fn source_identity(spec: &str) -> Result<Option<u64>, SourceError> {
    if NbdAddress::is_uri(spec) {
        return Ok(None);
    }
    let chain = chain_info(spec)?;
    let mut files: Vec<String> = chain
        .iter()
        .filter_map(|layer| layer.get("filename").and_then(|f| f.as_str()))
        .map(str::to_string)
        .collect();
    if files.is_empty() {
        files.push(spec.to_string());
    }
    let mut crc = 0u32;
    for file in &files {
        let m =
            std::fs::metadata(file).map_err(|e| SourceError::Open(file.clone(), e.to_string()))?;
        for v in [m.size() as i64, m.mtime(), m.mtime_nsec()] {
            crc = crc32c::crc32c_append(crc, &v.to_le_bytes());
        }
    }
    Ok(Some(u64::from(crc)))
}

/// The error for a source whose files are not those its import began with.
pub fn changed(spec: &str) -> String {
    format!(
        "import source {spec}: it changed since the import began (the size or modification \
         time of the image or of a backing file differs); put the original files back to resume"
    )
}
