//! Where an ELF file's addresses are: in the file, and in a process's mapping of it.
use object::{Object, ObjectSegment};

use crate::sys::procfs::Mapping;

/// The file offset of virtual `address`, from the segment that holds it.
pub fn virtual_to_file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (file_start, file_size) = segment.file_range();
        let start = segment.address();
        (start <= address && address < start + file_size).then(|| address - start + file_start)
    })
}

/// Where an executable mapping's addresses are in the module: `address - bias` is the
/// module's virtual address. The mapping starts at a page boundary, which may lie before its
/// segment's first byte (rustc's segments are not page-aligned in the file): the bias comes
/// from the executable segment the mapping holds.
pub fn mapping_bias(elf: &[u8], mapping: &Mapping) -> Option<u64> {
    let file = object::File::parse(elf).ok()?;
    let length = mapping.end - mapping.start;
    file.segments().find_map(|segment| {
        let executable = matches!(
            segment.flags(),
            object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
        );
        let (file_start, file_size) = segment.file_range();
        let overlaps =
            file_start < mapping.offset + length && mapping.offset < file_start + file_size;
        (executable && overlaps).then(|| {
            // The segment's first byte is at start + (file_start - offset) in memory.
            mapping
                .start
                .wrapping_add(file_start)
                .wrapping_sub(mapping.offset)
                .wrapping_sub(segment.address())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_of_a_mapping_that_starts_before_its_segment() {
        // rustc's layout: the executable segment is at file offset 0x129e0, address 0x139e0;
        // the kernel maps it from the page at file offset 0x12000.
        let Ok(this) = std::fs::read("/proc/self/exe") else {
            return;
        };
        let file = object::File::parse(&*this).expect("parse self");
        let segment = file
            .segments()
            .find(|segment| {
                matches!(segment.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0)
            })
            .expect("an executable segment");
        let (file_start, _) = segment.file_range();
        let mapping = Mapping {
            start: 0x5555_0000_0000 + (segment.address() & !0xfff),
            end: 0x5555_0000_0000 + (segment.address() & !0xfff) + 0x1000,
            offset: file_start & !0xfff,
            ..Mapping::default()
        };
        assert_eq!(mapping_bias(&this, &mapping), Some(0x5555_0000_0000));
    }
}
