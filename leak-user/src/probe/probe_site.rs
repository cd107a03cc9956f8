//! Where in a function its probe goes. A uprobe on an instruction the kernel can emulate (a
//! jump, a call, a conditional branch, a register push) costs one trap; on any other the
//! kernel also single-steps the instruction out of line, several times the cost (about 16 µs
//! a call on some machines of this kind: jemalloc's `free` starts with three `mov`s, glibc's
//! with `test %rdi,%rdi`).
//!
//! So the probe follows the function's straight-line code from its entry to the first
//! instruction the kernel emulates, which every call executes, as long as what the probe reads
//! is still there when it fires: each argument it reads, in its own register or in a copy the
//! code made (`mov %rdi,%rax` leaves the pointer in both; `mul` turns a count and a size into
//! their product), and, for a function with a return probe, the stack pointer (the kernel finds
//! the return address at it). No instruction the path passes may be a branch target inside the
//! function: a jump there would fire the probe without a call. The x86 decoding is iced-x86's.
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};
use leak_common::{ARGUMENT_SLOTS, NO_ARG};

/// Instructions followed from the entry, at most.
const MAX_FOLLOWED: usize = 32;
/// Instructions followed when the function's end is unknown (no symbol size): its internal
/// branch targets cannot be found, so the path stays short.
const MAX_FOLLOWED_UNSIZED: usize = 5;

/// The registers behind each argument slot (leak_common::ARGUMENT_SLOTS), in slot order: the
/// six argument registers in call order, then those a prologue may copy an argument to.
pub const SLOT_REGISTERS: [Register; ARGUMENT_SLOTS] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
    Register::RAX,
    Register::RBX,
    Register::RBP,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

/// What a probe reads when it fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// Argument indices (0 is the first), NO_ARG for none.
    pub arguments: [u8; 4],
    /// A count and a size whose product is what the probe needs (calloc, reallocarray): a
    /// register holding the product serves as the size with no count.
    pub product: Option<(u8, u8)>,
    /// Whether the stack pointer must be the entry's (a return probe, nesting checks).
    pub stack_pointer: bool,
}

/// Where a probe goes and how it reads there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Offset from the function's start.
    pub offset: u64,
    /// Whether the kernel emulates the instruction there (one trap) or single-steps it.
    pub emulated: bool,
    /// The argument slot each argument index of `Reads::arguments` is read from there (the
    /// same order), NO_ARG where none is read.
    pub slots: [u8; 4],
    /// Whether the product of `Reads::product` is read from the size's slot, with no count.
    pub product_in_size: bool,
}

/// What a register holds, as far as the followed code tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    Argument(u8),
    Product,
}

/// Finds where the probe of the function whose code is `code` goes. `sized` says that `code`
/// is the whole function (its symbol size), so that jumps inside it can be checked.
pub fn place(code: &[u8], reads: &Reads, sized: bool) -> Placement {
    let limit = if sized {
        MAX_FOLLOWED
    } else {
        MAX_FOLLOWED_UNSIZED
    };
    let targets = if sized {
        branch_targets(code)
    } else {
        Vec::new()
    };
    let mut held: [Option<Value>; ARGUMENT_SLOTS] = [None; ARGUMENT_SLOTS];
    for (slot, value) in held.iter_mut().enumerate().take(6) {
        *value = Some(Value::Argument(slot as u8));
    }
    let moved = walk(code, 0, held, reads, &[], limit, &targets).and_then(|(at, held)| {
        let (slots, product_in_size) = readable(&held, reads)?;
        Some(Placement {
            offset: at,
            emulated: true,
            slots,
            product_in_size,
        })
    });
    moved.unwrap_or(Placement {
        offset: 0,
        emulated: false,
        slots: reads.arguments,
        product_in_size: false,
    })
}

/// Follows straight-line code from offset `start`, the registers holding `held`, to the first
/// instruction the kernel emulates (at most `limit` instructions, none of them at one of the
/// branch `targets` past `start`), as long as what the probe `reads` stays readable and
/// nothing is written through its first argument to the bytes it reads there (`protected`:
/// offsets and lengths). Returns that instruction's offset and what the registers hold at it.
fn walk(
    code: &[u8],
    start: u64,
    mut held: [Option<Value>; ARGUMENT_SLOTS],
    reads: &Reads,
    protected: &[(u64, u64)],
    limit: usize,
    targets: &[u64],
) -> Option<(u64, [Option<Value>; ARGUMENT_SLOTS])> {
    let mut decoder = Decoder::with_ip(
        64,
        code.get(usize::try_from(start).ok()?..)?,
        start,
        DecoderOptions::NONE,
    );
    let mut info = InstructionInfoFactory::new();
    let mut instruction = Instruction::default();
    for _ in 0..limit {
        if !decoder.can_decode() {
            return None;
        }
        decoder.decode_out(&mut instruction);
        let at = instruction.ip();
        if instruction.is_invalid() || (at > start && targets.contains(&at)) {
            return None;
        }
        if kernel_emulates(&instruction) {
            return Some((at, held));
        }
        if instruction.flow_control() != FlowControl::Next
            || !follow(&instruction, &mut info, &mut held, reads, protected)
            || readable(&held, reads).is_none()
        {
            return None;
        }
    }
    None
}

/// Where a probe that reads one value, in register slot `slot` at offset `start` of `code` (a
/// function's whole code), can go instead of `start`: the first instruction the kernel
/// emulates on the straight-line path from there, with the value still in a register (the
/// slot returned), no branch target inside the function on the way, and no write through the
/// value to the bytes the probe reads from it (`protected`: offsets and lengths). None: stay.
pub fn follow_value(
    code: &[u8],
    start: u64,
    slot: u8,
    protected: &[(u64, u64)],
) -> Option<(u64, u8)> {
    let mut held = [None; ARGUMENT_SLOTS];
    *held.get_mut(usize::from(slot))? = Some(Value::Argument(0));
    let reads = Reads {
        arguments: [0, NO_ARG, NO_ARG, NO_ARG],
        product: None,
        stack_pointer: false,
    };
    let targets = branch_targets(code);
    let (at, held) = walk(code, start, held, &reads, protected, MAX_FOLLOWED, &targets)?;
    let (slots, _) = readable(&held, &reads)?;
    Some((at, slots[0]))
}

/// The conservative placement for a probe that reads every argument register and the stack
/// pointer (the Go runtime's probes, which read registers of Go's own convention).
pub fn probe_offset(code: &[u8]) -> u64 {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut instruction = Instruction::default();
    for _ in 0..MAX_FOLLOWED_UNSIZED {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        if kernel_emulates(&instruction) {
            return instruction.ip();
        }
        let info = info.info(&instruction);
        let writes_argument_or_sp = info.used_registers().iter().any(|used| {
            writes(used.access())
                && (SLOT_REGISTERS[..6].contains(&used.register().full_register())
                    || used.register().full_register() == Register::RSP)
        });
        let writes_memory = info.used_memory().iter().any(|m| writes(m.access()));
        if instruction.flow_control() != FlowControl::Next || writes_argument_or_sp || writes_memory
        {
            break;
        }
    }
    0
}

/// Where each read argument is, given what the registers hold; None when one is lost.
fn readable(held: &[Option<Value>; ARGUMENT_SLOTS], reads: &Reads) -> Option<([u8; 4], bool)> {
    let find = |value: Value| {
        held.iter()
            .position(|h| *h == Some(value))
            .map(|slot| slot as u8)
    };
    let mut slots = [NO_ARG; 4];
    let mut product_in_size = false;
    for (index, argument) in reads.arguments.iter().enumerate() {
        if *argument == NO_ARG {
            continue;
        }
        match find(Value::Argument(*argument)) {
            Some(slot) => slots[index] = slot,
            None => match reads.product {
                Some((count, size)) if *argument == count || *argument == size => {
                    product_in_size = true;
                }
                _ => return None,
            },
        }
    }
    if product_in_size {
        let (count, size) = reads.product?;
        let product = find(Value::Product)?;
        for (index, argument) in reads.arguments.iter().enumerate() {
            if *argument == size {
                slots[index] = product;
            } else if *argument == count {
                slots[index] = NO_ARG;
            }
        }
    }
    Some((slots, product_in_size))
}

/// Applies a straight-line instruction to what the registers hold. False when the probe could
/// not be moved past it: it moves the stack pointer that a return probe needs, writes the
/// return address, or writes through the first argument to bytes the probe reads
/// (`protected`, see `walk`).
fn follow(
    instruction: &Instruction,
    info: &mut InstructionInfoFactory,
    held: &mut [Option<Value>; ARGUMENT_SLOTS],
    reads: &Reads,
    protected: &[(u64, u64)],
) -> bool {
    let slot_of = |register: Register| {
        SLOT_REGISTERS
            .iter()
            .position(|r| *r == register.full_register())
    };
    let info = info.info(instruction);
    if reads.stack_pointer {
        let moves_sp = info
            .used_registers()
            .iter()
            .any(|used| writes(used.access()) && used.register().full_register() == Register::RSP);
        // A store at or above the stack pointer may overwrite the return address.
        let stores_on_stack = info.used_memory().iter().any(|memory| {
            writes(memory.access())
                && memory.base().full_register() == Register::RSP
                && (memory.displacement() as i64) >= 0
        });
        if moves_sp || stores_on_stack {
            return false;
        }
    }
    let first = Some(Value::Argument(reads.arguments[0]));
    let writes_protected = info.used_memory().iter().any(|memory| {
        writes(memory.access())
            && slot_of(memory.base()).is_some_and(|slot| held[slot] == first)
            && protected.iter().any(|(offset, length)| {
                let from = memory.displacement();
                let to = from.wrapping_add(u64::from(memory.memory_size().size() as u32));
                from < offset + length && *offset < to
            })
    });
    if writes_protected {
        return false;
    }
    // A 64-bit register-to-register copy: the destination holds what the source held.
    if instruction.mnemonic() == Mnemonic::Mov
        && instruction.op_count() == 2
        && instruction.op0_kind() == OpKind::Register
        && instruction.op1_kind() == OpKind::Register
        && instruction.op0_register().is_gpr64()
        && instruction.op1_register().is_gpr64()
    {
        let source = slot_of(instruction.op1_register()).and_then(|slot| held[slot]);
        if let Some(destination) = slot_of(instruction.op0_register()) {
            held[destination] = source;
        }
        return true;
    }
    // `mul r64`: rdx:rax = rax × r64. A count times a size is their product.
    let product = if instruction.mnemonic() == Mnemonic::Mul
        && instruction.op_count() == 1
        && instruction.op0_kind() == OpKind::Register
        && instruction.op0_register().is_gpr64()
    {
        let factors = (
            held[6],
            slot_of(instruction.op0_register()).and_then(|s| held[s]),
        );
        reads.product.is_some_and(|(count, size)| {
            factors == (Some(Value::Argument(count)), Some(Value::Argument(size)))
                || factors == (Some(Value::Argument(size)), Some(Value::Argument(count)))
        })
    } else {
        false
    };
    for used in info.used_registers() {
        if writes(used.access())
            && let Some(slot) = slot_of(used.register())
        {
            held[slot] = None;
        }
    }
    if product {
        held[6] = Some(Value::Product);
    }
    true
}

fn writes(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// Offsets inside `code` that a branch in it jumps to.
fn branch_targets(code: &[u8]) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut targets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if matches!(
            instruction.op0_kind(),
            OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
        ) {
            let target = instruction.near_branch_target();
            if target < code.len() as u64 {
                targets.push(target);
            }
        }
    }
    targets.sort_unstable();
    targets.dedup();
    targets
}

/// The instruction at `offset` of `code` (a function at virtual address `address`), as text
/// for the report, and whether the kernel emulates it.
pub fn describe(code: &[u8], address: u64, offset: u64) -> Option<(String, bool)> {
    let start = usize::try_from(offset).ok()?;
    let mut decoder = Decoder::with_ip(
        64,
        code.get(start..)?,
        address.wrapping_add(offset),
        DecoderOptions::NONE,
    );
    if !decoder.can_decode() {
        return None;
    }
    let instruction = decoder.decode();
    if instruction.is_invalid() {
        return None;
    }
    let mut text = String::new();
    let mut formatter = iced_x86::GasFormatter::new();
    iced_x86::Formatter::format(&mut formatter, &instruction, &mut text);
    Some((text, kernel_emulates(&instruction)))
}

/// The first call or jump the code makes, if the path from the entry to it has no other
/// branch: a wrapper that passes its call on (`operator new(size, nothrow)` calling
/// `operator new(size)`). Returns the branch's target address (`code` starts at `address`).
pub fn first_call(code: &[u8], address: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    for _ in 0..MAX_FOLLOWED {
        if !decoder.can_decode() {
            return None;
        }
        decoder.decode_out(&mut instruction);
        match instruction.flow_control() {
            FlowControl::Next => continue,
            FlowControl::Call | FlowControl::UnconditionalBranch
                if instruction.op0_kind() == OpKind::NearBranch64 =>
            {
                return Some(instruction.near_branch_target());
            }
            _ => return None,
        }
    }
    None
}

/// Whether the function whose first bytes are `code`, at virtual address `address`, jumps
/// to or calls `target` within its first `max` instructions (a thin wrapper: Rust's
/// `__rust_alloc` tail-calling `__rdl_alloc`, the default System allocator).
pub fn branches_to(code: &[u8], address: u64, target: u64, max: usize) -> bool {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    for _ in 0..max {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        if matches!(instruction.mnemonic(), Mnemonic::Jmp | Mnemonic::Call)
            && instruction.op0_kind() == OpKind::NearBranch64
            && instruction.near_branch_target() == target
        {
            return true;
        }
        if instruction.flow_control() == FlowControl::Return {
            break;
        }
    }
    false
}

/// The instructions x86 uprobes emulate instead of single-stepping (arch/x86/kernel/uprobes.c:
/// branch_setup_xol_ops and push_setup_xol_ops).
fn kernel_emulates(instruction: &Instruction) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Jmp | Mnemonic::Call => instruction.op0_kind() == OpKind::NearBranch64,
        Mnemonic::Push => {
            instruction.op0_kind() == OpKind::Register && instruction.op0_register().is_gpr64()
        }
        _ => instruction.is_jcc_short_or_near(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Placement, Reads, branches_to, first_call, follow_value, place, probe_offset};
    use leak_common::NO_ARG;

    /// free(ptr): the pointer, no stack pointer.
    const FREE: Reads = Reads {
        arguments: [0, NO_ARG, NO_ARG, NO_ARG],
        product: None,
        stack_pointer: false,
    };
    /// malloc(size), with a return probe.
    const MALLOC: Reads = Reads {
        arguments: [0, NO_ARG, NO_ARG, NO_ARG],
        product: None,
        stack_pointer: true,
    };
    /// realloc(ptr, size).
    const REALLOC: Reads = Reads {
        arguments: [0, 1, NO_ARG, NO_ARG],
        product: None,
        stack_pointer: true,
    };
    /// reallocarray(ptr, count, size), as its shape reads it: size, count, ptr.
    const REALLOCARRAY: Reads = Reads {
        arguments: [2, 1, 0, NO_ARG],
        product: Some((1, 2)),
        stack_pointer: true,
    };

    fn at(offset: u64, slots: [u8; 4]) -> Placement {
        Placement {
            offset,
            emulated: true,
            slots,
            product_in_size: false,
        }
    }

    #[test]
    fn sees_a_thin_wrapper_jump() {
        // At 0x14010: push %rbp; mov %rsp,%rbp; pop %rbp; jmp 0x29d80 (rustc's __rust_alloc
        // with the System allocator).
        let code = [0x55, 0x48, 0x89, 0xe5, 0x5d, 0xe9, 0x66, 0x5d, 0x01, 0x00];
        assert!(branches_to(&code, 0x14010, 0x29d80, 8));
        assert!(!branches_to(&code, 0x14010, 0x29d90, 8));
        assert!(
            !branches_to(&code, 0x14010, 0x29d80, 3),
            "beyond the first 3"
        );
    }

    #[test]
    fn glibc_free_moves_past_its_test_onto_the_branch() {
        // test %rdi,%rdi; je …; push %rbp
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
        assert_eq!(
            place(&code, &FREE, true),
            at(3, [0, NO_ARG, NO_ARG, NO_ARG])
        );
    }

    #[test]
    fn jemalloc_free_is_followed_past_nine_instructions() {
        // Debian's libjemalloc.so.2 free: mov %rdi,%rax; mov 0xa530e(%rip),%rdx;
        // mov %rdi,%rcx; shr $0x1a,%rax; and $0xffffffffc0000000,%rcx; and $0xf0,%eax;
        // add %fs:0x0,%rax; add %rdx,%rax; cmp 0x1b0(%rax),%rcx; jne …
        let code = [
            0x48, 0x89, 0xf8, 0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, 0x48, 0x89, 0xf9, 0x48,
            0xc1, 0xe8, 0x1a, 0x48, 0x81, 0xe1, 0x00, 0x00, 0x00, 0xc0, 0x25, 0xf0, 0x00, 0x00,
            0x00, 0x64, 0x48, 0x03, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00, 0x48, 0x01, 0xd0, 0x48,
            0x3b, 0x88, 0xb0, 0x01, 0x00, 0x00, 0x75, 0x10,
        ];
        assert_eq!(
            place(&code, &FREE, true),
            at(48, [0, NO_ARG, NO_ARG, NO_ARG])
        );
        // Without the function's size the path stays short: the entry.
        assert!(!place(&code, &FREE, false).emulated);
    }

    #[test]
    fn an_argument_is_read_from_the_copy_the_code_made() {
        // mimalloc's malloc: mov 0xb449(%rip),%rax; mov %rdi,%rsi; mov %fs:(%rax),%rdi;
        // cmp $0x400,%rsi; ja …: the size is in rsi (slot 1) at the branch.
        let code = [
            0x48, 0x8b, 0x05, 0x49, 0xb4, 0x00, 0x00, 0x48, 0x89, 0xfe, 0x64, 0x48, 0x8b, 0x38,
            0x48, 0x81, 0xfe, 0x00, 0x04, 0x00, 0x00, 0x77, 0x29,
        ];
        assert_eq!(
            place(&code, &MALLOC, true),
            at(21, [1, NO_ARG, NO_ARG, NO_ARG])
        );
    }

    #[test]
    fn a_product_stands_for_count_and_size() {
        // glibc's reallocarray: mov %rsi,%rax; mul %rdx; mov %rax,%rsi; jo …; jmp realloc.
        let code = [
            0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x48, 0x89, 0xc6, 0x70, 0x05, 0xe9, 0, 0, 0, 0,
        ];
        let placed = place(&code, &REALLOCARRAY, true);
        assert_eq!(placed.offset, 9);
        assert!(placed.emulated && placed.product_in_size);
        // The size read from rsi (or rax: both hold the product), no count, ptr in rdi.
        assert!(placed.slots[0] == 1 || placed.slots[0] == 6, "{placed:?}");
        assert_eq!(placed.slots[1], NO_ARG);
        assert_eq!(placed.slots[2], 0);
    }

    #[test]
    fn a_return_probe_keeps_the_stack_pointer() {
        // sub $0x18,%rsp; push %rbx: the stack pointer moved before the push.
        let code = [0x48, 0x83, 0xec, 0x18, 0x53];
        assert_eq!(place(&code, &MALLOC, true).offset, 0);
        assert!(!place(&code, &MALLOC, true).emulated);
        // free has no return probe: it may go past the move.
        assert_eq!(
            place(&code, &FREE, true),
            at(4, [0, NO_ARG, NO_ARG, NO_ARG])
        );
        // mov %rax,(%rsp); jmp …: writes the return address.
        assert!(!place(&[0x48, 0x89, 0x04, 0x24, 0xeb, 0x00], &MALLOC, true).emulated);
        // An emulated first instruction keeps the entry: push %r12; push %rbp.
        assert_eq!(
            place(&[0x41, 0x54, 0x55], &MALLOC, true),
            at(0, MALLOC.arguments)
        );
    }

    #[test]
    fn a_lost_argument_stops_the_path() {
        // realloc: mov %rsi,%rax; mov $0,%esi; jmp …: the size was copied to rax first.
        let code = [0x48, 0x89, 0xf0, 0xbe, 0, 0, 0, 0, 0xeb, 0x00];
        assert_eq!(place(&code, &REALLOC, true), at(8, [0, 6, NO_ARG, NO_ARG]));
        // xor %esi,%esi; jmp …: the size is gone.
        assert!(!place(&[0x31, 0xf6, 0xeb, 0x00], &REALLOC, true).emulated);
    }

    #[test]
    fn a_branch_target_on_the_path_stops_it() {
        // 0: mov %rdi,%rax; 3: mov %rdi,%rcx; 6: jne 3 — a jump back to 3 would fire a probe
        // placed at or after 3 without a call.
        let code = [0x48, 0x89, 0xf8, 0x48, 0x89, 0xf9, 0x75, 0xfb];
        assert_eq!(place(&code, &FREE, true).offset, 0);
    }

    #[test]
    fn a_wrapper_passes_its_call_on() {
        // operator new(size, nothrow) at 0x1000: endbr64; sub $0x8,%rsp; call 0x2000.
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x08, 0xe8, 0xf3, 0x0f, 0, 0,
        ];
        assert_eq!(first_call(&code, 0x1000), Some(0x2000));
        // test %rdi,%rdi; je …: a conditional branch first.
        assert_eq!(first_call(&[0x48, 0x85, 0xff, 0x74, 0x00], 0), None);
    }

    #[test]
    fn a_returned_value_is_followed_to_an_emulated_instruction() {
        // After `call allocLarge` at 0: movq $1,0x30(%rax); mov %rax,%rbx; jmp …: the span
        // stays in rax; its field at 0x30 is not one the probe reads.
        let code = [
            0x48, 0xc7, 0x40, 0x30, 0x01, 0x00, 0x00, 0x00, 0x48, 0x89, 0xc3, 0xeb, 0x00,
        ];
        assert_eq!(follow_value(&code, 0, 6, &[(24, 16)]), Some((11, 6)));
        // A write to a field it reads (0x18, startAddr) keeps the probe where it was.
        let code = [0x48, 0xc7, 0x40, 0x18, 0x01, 0x00, 0x00, 0x00, 0xeb, 0x00];
        assert_eq!(follow_value(&code, 0, 6, &[(24, 16)]), None);
        // The value overwritten: xor %eax,%eax; jmp …
        assert_eq!(follow_value(&[0x31, 0xc0, 0xeb, 0x00], 0, 6, &[]), None);
        // Copied first: mov %rax,%rbx; xor %eax,%eax; jmp …
        let code = [0x48, 0x89, 0xc3, 0x31, 0xc0, 0xeb, 0x00];
        assert_eq!(follow_value(&code, 0, 6, &[]), Some((5, 7)));
    }

    #[test]
    fn go_probes_keep_the_old_rules() {
        assert_eq!(probe_offset(&[0x41, 0x54, 0x55]), 0);
        // cmpb $0x0,0x140201(%rip); push %r12
        let code = [0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54];
        assert_eq!(probe_offset(&code), 7);
        assert_eq!(probe_offset(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), 4);
        assert_eq!(probe_offset(&[0x48, 0x89, 0xc3].repeat(6)), 0);
        assert_eq!(probe_offset(&[]), 0);
        assert_eq!(probe_offset(&[0xff, 0xff]), 0);
    }
}
