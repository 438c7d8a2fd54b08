//! Writing many entries of an array map in one syscall
//! (`BPF_MAP_UPDATE_BATCH`, Linux 5.6), which aya 0.14 does not wrap: the
//! classifier's tables are hundreds of thousands of chunks at 100,000
//! prefixes, and one `BPF_MAP_UPDATE_ELEM` each took the install past a
//! second.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    maps::{Array, Map, MapData},
    Ebpf, Pod,
};

use super::{policy_maps::typed_map, DatapathError};

/// `BPF_MAP_UPDATE_BATCH` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);

/// Elements per syscall: the kernel copies keys and values from user
/// memory one element at a time, so any size works; this bounds the time
/// one syscall holds the CPU.
const PER_CALL: usize = 65_536;

/// Sets `values[i]` at index `first + i` of array map `name`, whose
/// values must be `V`s.
pub(super) fn set_array<V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    first: u32,
    values: &[V],
) -> Result<(), DatapathError> {
    // Typed first: aya checks the map's value size against `V`'s.
    let _: Array<&mut MapData, V> = typed_map(ebpf, name)?;
    let missing = DatapathError::Missing {
        kind: "array map",
        name,
    };
    let fd = match ebpf.map_mut(name).ok_or(missing)? {
        Map::Array(d) => d.fd().as_fd().as_raw_fd(),
        _ => {
            return Err(DatapathError::Missing {
                kind: "array map",
                name,
            })
        }
    };
    for (n, chunk) in values.chunks(PER_CALL).enumerate() {
        let start = first.saturating_add(u32::try_from(n * PER_CALL).unwrap_or(u32::MAX));
        let keys: Vec<u32> = (0..chunk.len())
            .map(|i| start.saturating_add(u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: chunk.as_ptr() as u64,
            count: u32::try_from(chunk.len()).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the kernel's `batch` layout (asserted above);
        // `keys` and `values` point at `count` keys and values of the map's
        // key (u32) and value (`V`, the map's value type: aya checked its
        // size above) sizes, alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if rc != 0 {
            return Err(DatapathError::Batch {
                map: name,
                // The kernel counts what this call wrote.
                written: start.saturating_sub(first).saturating_add(attr.count),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
