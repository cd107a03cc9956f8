//! Reading a whole BPF hash map with `BPF_MAP_LOOKUP_BATCH`: one system call per few
//! thousand entries, where aya's iterator makes two per entry (next key, then lookup). The
//! live-allocation map is read this way every interval, and inside the reachability scan's
//! freeze, where each microsecond is the target's pause. Array slots are written the same
//! way (`BPF_MAP_UPDATE_BATCH`): the unwind tables, hundreds of thousands of rows for a large
//! executable, took 1.3 µs a row written one by one.
//!
//! The kernel walks the map a bucket at a time under the bucket's lock, so entries added or
//! removed meanwhile are either seen once or not at all: never twice, which the key-by-key
//! walk cannot promise (it restarts from the beginning when its current key is deleted).
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::Pod;

/// `enum bpf_cmd`'s BPF_MAP_LOOKUP_BATCH and BPF_MAP_UPDATE_BATCH.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Linux's ENOTSUPP (not the libc EOPNOTSUPP), returned for maps without batch support.
const ENOTSUPP: i32 = 524;
/// Entries asked for per call; grown when one bucket holds more (ENOSPC).
const CHUNK: usize = 4096;

/// `union bpf_attr`'s `batch` member.
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

/// Calls `visit` with every (key, value) of the hash map `map`, a chunk at a time (no copy
/// of the whole map is made). Ok(false), before any visit, when the kernel has no batch
/// lookup for it (before 5.6): read it key by key then.
pub fn for_each<K: Pod, V: Pod>(map: &impl AsFd, visit: impl FnMut(&K, &V)) -> io::Result<bool> {
    for_each_in(map, CHUNK, visit)
}

fn for_each_in<K: Pod, V: Pod>(
    map: &impl AsFd,
    mut chunk: usize,
    mut visit: impl FnMut(&K, &V),
) -> io::Result<bool> {
    // SAFETY: Pod types are valid for any bit pattern, zeroes included.
    let zero_key: K = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let zero_value: V = unsafe { std::mem::zeroed() };
    let mut keys = vec![zero_key; chunk];
    let mut values = vec![zero_value; chunk];
    // The position token (a bucket index for hash maps; 8 bytes is room enough).
    let mut position = 0u64;
    let mut next = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const position as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers of `chunk` keys and values and at two
        // tokens, all alive for the call; the kernel writes no further.
        let result = unsafe { crate::sys::bpf_call::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let error = result.err().map(|err| err.raw_os_error());
        match error {
            // More to come (Ok) or the end reached (ENOENT): `count` entries were copied.
            None | Some(Some(libc::ENOENT)) => {
                let copied = (attr.count as usize).min(chunk);
                for (key, value) in keys[..copied].iter().zip(&values[..copied]) {
                    visit(key, value);
                }
                if error.is_some() {
                    return Ok(true);
                }
                position = next;
                first = false;
            }
            // One bucket holds more than `chunk` entries: ask again with room for them.
            Some(Some(libc::ENOSPC)) if chunk < 1 << 20 => {
                chunk *= 2;
                keys.resize(chunk, zero_key);
                values.resize(chunk, zero_value);
            }
            Some(Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)) if first => return Ok(false),
            Some(code) => {
                return Err(
                    code.map_or_else(io::Error::last_os_error, io::Error::from_raw_os_error)
                );
            }
        }
    }
}

/// Writes `values` into the array map `map` from slot `first` on, a chunk per system call.
/// Ok(false), before any write, when the kernel has no batch update for it (before 5.6):
/// write them one by one then.
pub fn set_array<V: Pod>(map: &impl AsFd, first: u32, values: &[V]) -> io::Result<bool> {
    let mut keys: Vec<u32> = Vec::with_capacity(values.len().min(CHUNK * 16));
    for (chunk_index, chunk) in values.chunks(CHUNK * 16).enumerate() {
        let start = (chunk_index * CHUNK * 16) as u32;
        keys.clear();
        keys.extend((0..chunk.len() as u32).map(|offset| first + start + offset));
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map.as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at `count` keys and values, alive for the call; the
        // kernel only reads them.
        let result = unsafe { crate::sys::bpf_call::bpf(BPF_MAP_UPDATE_BATCH, &mut attr) };
        match result.err().map(|err| err.raw_os_error()) {
            None => {}
            Some(Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)) if chunk_index == 0 => {
                return Ok(false);
            }
            Some(code) => {
                return Err(
                    code.map_or_else(io::Error::last_os_error, io::Error::from_raw_os_error)
                );
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    const BPF_MAP_TYPE_HASH: u32 = 1;

    /// `union bpf_attr` for the calls below, zero-padded to the size the kernel checks.
    #[repr(C)]
    struct Attr([u64; 16]);

    /// A hash map of u64 → [u64; 3] with room for `entries`; None without the privilege to
    /// create one, unless CI (LEAKTRACE_REQUIRE_BPF=1) says every test must run.
    fn hash_map(entries: u32) -> Option<OwnedFd> {
        let mut attr = Attr([0; 16]);
        attr.0[0] = u64::from(BPF_MAP_TYPE_HASH) | (8 << 32);
        attr.0[1] = 24 | (u64::from(entries) << 32);
        // SAFETY: a zeroed bpf_attr with the map's type and sizes; no pointers.
        match unsafe { crate::sys::bpf_call::bpf_fd(BPF_MAP_CREATE, &mut attr) } {
            Ok(fd) => Some(fd),
            Err(err) if std::env::var("LEAKTRACE_REQUIRE_BPF").is_ok_and(|v| v == "1") => {
                panic!("LEAKTRACE_REQUIRE_BPF=1, but no BPF map could be created: {err}")
            }
            Err(err) => {
                eprintln!("SKIPPED map_batch test: no BPF map could be created: {err}");
                None
            }
        }
    }

    fn update(map: &OwnedFd, key: u64, value: [u64; 3]) {
        let mut attr = Attr([0; 16]);
        attr.0[0] = map.as_raw_fd() as u64;
        attr.0[1] = &raw const key as u64;
        attr.0[2] = value.as_ptr() as u64;
        // SAFETY: the key and value the attribute points to live for the call.
        unsafe { crate::sys::bpf_call::bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.expect("update");
    }

    fn delete(map: &OwnedFd, key: u64) {
        let mut attr = Attr([0; 16]);
        attr.0[0] = map.as_raw_fd() as u64;
        attr.0[1] = &raw const key as u64;
        // SAFETY: the key the attribute points to lives for the call.
        unsafe { crate::sys::bpf_call::bpf(BPF_MAP_DELETE_ELEM, &mut attr) }.expect("delete");
    }

    fn value_of(key: u64) -> [u64; 3] {
        [key, key * 3, !key]
    }

    #[test]
    fn every_entry_is_read_once_whatever_the_chunk() {
        let Some(map) = hash_map(20_000) else { return };
        // Addresses like the allocator's: 16-byte aligned, many to a bucket at chunk 1.
        let keys: Vec<u64> = (0..10_000u64).map(|i| 0x5555_0000_0000 + i * 16).collect();
        for &key in &keys {
            update(&map, key, value_of(key));
        }
        for &key in keys.iter().step_by(3) {
            delete(&map, key);
        }
        let expected: Vec<(u64, [u64; 3])> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, &key)| (key, value_of(key)))
            .collect();
        for chunk in [1, 7, CHUNK, 1 << 16] {
            let mut read = Vec::new();
            let supported = for_each_in(&map, chunk, |key: &u64, value: &[u64; 3]| {
                read.push((*key, *value))
            })
            .expect("batch lookup");
            assert!(supported, "this kernel has batch lookup");
            read.sort_unstable();
            assert_eq!(read.len(), expected.len(), "chunk {chunk}");
            assert!(read == expected, "chunk {chunk}: entries differ");
        }
    }

    #[test]
    fn array_slots_are_written_in_batches() {
        const BPF_MAP_TYPE_ARRAY: u32 = 2;
        const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
        let entries = 3 * CHUNK as u32 * 16 + 100;
        let mut attr = Attr([0; 16]);
        attr.0[0] = u64::from(BPF_MAP_TYPE_ARRAY) | (4 << 32);
        attr.0[1] = 8 | (u64::from(entries) << 32);
        // SAFETY: a zeroed bpf_attr with the map's type and sizes; no pointers.
        let map = match unsafe { crate::sys::bpf_call::bpf_fd(BPF_MAP_CREATE, &mut attr) } {
            Ok(fd) => fd,
            Err(err) if std::env::var("LEAKTRACE_REQUIRE_BPF").is_ok_and(|v| v == "1") => {
                panic!("LEAKTRACE_REQUIRE_BPF=1, but no BPF map could be created: {err}")
            }
            Err(err) => {
                eprintln!("SKIPPED map_batch test: no BPF map could be created: {err}");
                return;
            }
        };
        // More than two chunks, from an offset.
        let values: Vec<u64> = (0..2 * CHUNK as u64 * 16 + 7).map(|i| i * 7 + 1).collect();
        let first = 50;
        assert!(set_array(&map, first, &values).expect("batch update"));
        let read = |slot: u32| {
            let mut value = 0u64;
            let mut attr = Attr([0; 16]);
            attr.0[0] = map.as_raw_fd() as u64;
            attr.0[1] = &raw const slot as u64;
            attr.0[2] = &raw mut value as u64;
            // SAFETY: the key and value the attribute points to live for the call.
            unsafe { crate::sys::bpf_call::bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }.expect("lookup");
            value
        };
        assert_eq!(read(first - 1), 0);
        for (offset, value) in values.iter().enumerate() {
            assert_eq!(read(first + offset as u32), *value, "slot {offset}");
        }
        assert_eq!(read(first + values.len() as u32), 0);
        // Past the end: refused, not silently cut.
        assert!(set_array(&map, entries - 1, &values[..2]).is_err());
    }

    #[test]
    fn an_empty_map_reads_as_empty() {
        let Some(map) = hash_map(16) else { return };
        let mut visits = 0;
        let supported = for_each(&map, |_: &u64, _: &[u64; 3]| visits += 1).expect("batch lookup");
        assert!(supported);
        assert_eq!(visits, 0);
    }
}
