//! Deletion vectors (Delta table feature `deletionVectors`): which rows of a data file are
//! deleted, as a 64-bit RoaringBitmap of row positions in the protocol's portable format.
//!
//! lakets writes the vectors of one commit into one `deletion_vector_<uuid>.bin` file at
//! the table's root (the format's version byte, then per vector its size, the magic, the
//! bitmap and a CRC-32, through the Delta kernel's writer), as Delta Spark does. It reads
//! those of any writer: in such a file (by the z85-encoded UUID of the descriptor, or an
//! absolute path) or inline in the log.

use std::io::Cursor;

use deltalake::DeltaTable;
use deltalake::kernel::{DeletionVectorDescriptor, StorageType};
use object_store::ObjectStoreExt as _;
use roaring::RoaringTreemap;

use crate::error::{DeltaResultExt, Error, Result};

/// The magic number of a RoaringBitmapArray in the portable format.
const PORTABLE_MAGIC: u32 = 1_681_511_377;

/// The rows `descriptor` deletes.
pub async fn read(
    table: &DeltaTable,
    descriptor: &DeletionVectorDescriptor,
) -> Result<RoaringTreemap> {
    let location = super::table::display_location(table.table_url());
    let invalid = |why: String| {
        Error::Diverged(format!(
            "a deletion vector of the Delta table at {location}: {why}"
        ))
    };
    let bitmap = match descriptor.storage_type {
        StorageType::Inline => decode_inline(&descriptor.path_or_inline_dv).map_err(invalid)?,
        StorageType::UuidRelativePath | StorageType::AbsolutePath => {
            let path = file_path(table, descriptor)?;
            let object = object_store::path::Path::parse(&path)
                .delta_context(|| format!("deletion vector path {path}"))?;
            let data = table
                .object_store()
                .get(&object)
                .await
                .delta_context(|| format!("reading deletion vector {path}"))?
                .bytes()
                .await
                .delta_context(|| format!("reading deletion vector {path}"))?;
            decode_file(&data, descriptor.offset, descriptor.size_in_bytes)
                .map_err(|why| invalid(format!("{path}: {why}")))?
        }
    };
    if bitmap.len() != descriptor.cardinality as u64 {
        return Err(invalid(format!(
            "it holds {} rows, its descriptor says {}",
            bitmap.len(),
            descriptor.cardinality
        )));
    }
    Ok(bitmap)
}

/// A vector stored inline in the log: z85 of the magic and the bitmap.
fn decode_inline(text: &str) -> std::result::Result<RoaringTreemap, String> {
    let bytes = z85::decode(text).map_err(|e| format!("inline data is not z85: {e}"))?;
    if bytes.len() < 4
        || u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) != PORTABLE_MAGIC
    {
        return Err("inline data lacks the portable magic number".into());
    }
    RoaringTreemap::deserialize_from(&bytes[4..]).map_err(|e| format!("inline bitmap: {e}"))
}

/// The vector at `offset` (1 when absent: the first) of a vector file's bytes, its size
/// and checksum checked.
fn decode_file(
    data: &[u8],
    offset: Option<i32>,
    size: i32,
) -> std::result::Result<RoaringTreemap, String> {
    let start = offset.unwrap_or(1).max(0) as usize;
    let size = size.max(0) as usize;
    if data.first() != Some(&1) {
        return Err("no version-1 header".into());
    }
    if size < 4 || data.len() < start + 4 + size + 4 {
        return Err("shorter than its descriptor says".into());
    }
    let word = |at: usize| -> [u8; 4] { data[at..at + 4].try_into().expect("4 bytes") };
    let stored = u32::from_be_bytes(word(start)) as usize;
    if stored != size {
        return Err(format!("size {stored} in the file, {size} in the log"));
    }
    let body = &data[start + 4..start + 4 + size];
    if crc32(body) != u32::from_be_bytes(word(start + 4 + size)) {
        return Err("checksum mismatch".into());
    }
    if u32::from_le_bytes(body[0..4].try_into().expect("4 bytes")) != PORTABLE_MAGIC {
        return Err("not the portable bitmap format".into());
    }
    RoaringTreemap::deserialize_from(Cursor::new(&body[4..])).map_err(|e| e.to_string())
}

/// The rows a file's optional vector deletes (none without one).
pub async fn deleted_rows(
    table: &DeltaTable,
    descriptor: Option<&DeletionVectorDescriptor>,
) -> Result<Option<RoaringTreemap>> {
    match descriptor {
        Some(d) => Ok(Some(read(table, d).await?)),
        None => Ok(None),
    }
}

/// Writes `bitmaps` into one new vector file at the table's root; returns their
/// descriptors (in order) and the file's path, to delete should the commit not land.
pub async fn write(
    table: &DeltaTable,
    bitmaps: Vec<RoaringTreemap>,
) -> Result<(Vec<DeletionVectorDescriptor>, String)> {
    use delta_kernel::actions::deletion_vector_writer::{
        KernelDeletionVector, StreamingDeletionVectorWriter,
    };
    let uuid = uuid::Uuid::new_v4();
    let path = format!("deletion_vector_{uuid}.bin");
    let encoded = z85::encode(uuid.as_bytes());
    let mut buffer = Vec::new();
    let mut descriptors = Vec::with_capacity(bitmaps.len());
    {
        let mut writer = StreamingDeletionVectorWriter::new(&mut buffer);
        for bitmap in bitmaps {
            let mut dv = KernelDeletionVector::new();
            dv.add_deleted_row_indexes(bitmap.iter());
            let written = writer
                .write_deletion_vector(dv)
                .map_err(|e| Error::Operator(format!("serialising a deletion vector: {e}")))?;
            descriptors.push(DeletionVectorDescriptor {
                storage_type: StorageType::UuidRelativePath,
                path_or_inline_dv: encoded.clone(),
                offset: Some(written.offset),
                size_in_bytes: written.size_in_bytes,
                cardinality: written.cardinality,
            });
        }
        writer
            .finalize()
            .map_err(|e| Error::Operator(format!("serialising a deletion vector: {e}")))?;
    }
    let object = object_store::path::Path::parse(&path)
        .delta_context(|| format!("deletion vector path {path}"))?;
    table
        .object_store()
        .put(&object, buffer.into())
        .await
        .delta_context(|| format!("writing deletion vector {path}"))?;
    Ok((descriptors, path))
}

/// The object store path (from the table's root) of a vector kept in a file.
fn file_path(table: &DeltaTable, d: &DeletionVectorDescriptor) -> Result<String> {
    match d.storage_type {
        StorageType::UuidRelativePath => {
            let bytes = d.path_or_inline_dv.as_bytes();
            if bytes.len() < 20 {
                return Err(Error::Diverged(format!(
                    "a deletion vector path {:?} is too short",
                    d.path_or_inline_dv
                )));
            }
            let (prefix, id) = bytes.split_at(bytes.len() - 20);
            let uuid = z85::decode(id)
                .ok()
                .and_then(|b| uuid::Uuid::from_slice(&b).ok())
                .ok_or_else(|| {
                    Error::Diverged(format!(
                        "a deletion vector path {:?} holds no UUID",
                        d.path_or_inline_dv
                    ))
                })?;
            let prefix = std::str::from_utf8(prefix).unwrap_or_default();
            Ok(if prefix.is_empty() {
                format!("deletion_vector_{uuid}.bin")
            } else {
                format!("{prefix}/deletion_vector_{uuid}.bin")
            })
        }
        StorageType::AbsolutePath => {
            let url = url::Url::parse(&d.path_or_inline_dv).map_err(|e| {
                Error::Diverged(format!(
                    "a deletion vector path {:?}: {e}",
                    d.path_or_inline_dv
                ))
            })?;
            let root = table.table_url().as_str().trim_end_matches('/').to_owned() + "/";
            url.as_str()
                .strip_prefix(&root)
                .map(str::to_owned)
                .ok_or_else(|| {
                    Error::Unsupported(format!(
                        "a deletion vector outside the table ({url}), which lakets does not read"
                    ))
                })
        }
        StorageType::Inline => Err(Error::Operator("an inline vector has no file".into())),
    }
}

/// CRC-32 (ISO-HDLC), as the vector file format checks its data.
fn crc32(data: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use delta_kernel::actions::deletion_vector_writer::{
        KernelDeletionVector, StreamingDeletionVectorWriter,
    };

    fn bitmap(rows: &[u64]) -> RoaringTreemap {
        rows.iter().copied().collect()
    }

    #[test]
    fn a_vector_file_of_the_kernels_writer_reads_back_and_a_flipped_byte_is_refused() {
        let (first, second) = (bitmap(&[0, 3, 7, 1 << 33]), bitmap(&[5]));
        let mut buffer = Vec::new();
        let mut writer = StreamingDeletionVectorWriter::new(&mut buffer);
        let mut results = Vec::new();
        for b in [&first, &second] {
            let mut dv = KernelDeletionVector::new();
            dv.add_deleted_row_indexes(b.iter());
            results.push(writer.write_deletion_vector(dv).unwrap());
        }
        writer.finalize().unwrap();
        for (want, r) in [&first, &second].into_iter().zip(&results) {
            let got = decode_file(&buffer, Some(r.offset), r.size_in_bytes).unwrap();
            assert_eq!(&got, want);
        }
        let r = &results[0];
        let mut corrupt = buffer.clone();
        corrupt[r.offset as usize + 10] ^= 0xff;
        let err = decode_file(&corrupt, Some(r.offset), r.size_in_bytes).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        let err = decode_file(&buffer, Some(r.offset), r.size_in_bytes + 4).unwrap_err();
        assert!(err.contains("size") || err.contains("shorter"), "{err}");
    }

    #[test]
    fn an_inline_vector_reads_back_and_garbage_is_refused() {
        let want = bitmap(&[1, 2, 99]);
        let mut bytes = PORTABLE_MAGIC.to_le_bytes().to_vec();
        want.serialize_into(&mut bytes).unwrap();
        while !bytes.len().is_multiple_of(4) {
            bytes.push(0); // z85 works in words; readers ignore the padding
        }
        assert_eq!(decode_inline(&z85::encode(&bytes)).unwrap(), want);
        assert!(
            decode_inline(&z85::encode([0u8; 8]))
                .unwrap_err()
                .contains("magic")
        );
        assert!(decode_inline("not z85 at all ~~~").is_err());
    }
}
