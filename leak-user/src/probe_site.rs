//! Where in a function its probe goes. A uprobe on an instruction the kernel can emulate (a
//! jump, a call, a conditional branch, a register push) costs one trap; on any other it also
//! single-steps the instruction out of line, about four times the cost (see
//! ../shared/notes/ebpf-on-this-machine.md: glibc's `free` starts with `test %rdi,%rdi`).
//!
//! So the probe moves past leading instructions that change nothing the probes read — the
//! argument registers, the stack pointer (the return probe finds the return address at it),
//! memory — and do not branch, onto the first instruction the kernel emulates. When there is
//! none within a few instructions, the probe stays on the entry. The x86 decoding is iced-x86's.
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

/// Leading instructions a probe may move past.
const MAX_SKIPPED: usize = 4;

/// Registers the probes read at entry: the six argument registers and the stack pointer.
const READ_BY_PROBES: [Register; 7] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
    Register::RSP,
];

/// Offset from the function's start (its first bytes, `code`) where the probe goes.
pub fn probe_offset(code: &[u8]) -> u64 {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut instruction = Instruction::default();
    for _ in 0..=MAX_SKIPPED {
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
        if !changes_nothing_probes_read(&instruction, &mut info) {
            break;
        }
    }
    0
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

/// Falls through to the next instruction, writes no register the probes read and no memory.
fn changes_nothing_probes_read(
    instruction: &Instruction,
    info: &mut InstructionInfoFactory,
) -> bool {
    if instruction.flow_control() != FlowControl::Next {
        return false;
    }
    let info = info.info(instruction);
    let writes = |access: OpAccess| {
        matches!(
            access,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    let writes_read_register = info.used_registers().iter().any(|used| {
        writes(used.access()) && READ_BY_PROBES.contains(&used.register().full_register())
    });
    let writes_memory = info
        .used_memory()
        .iter()
        .any(|memory| writes(memory.access()));
    !writes_read_register && !writes_memory
}

#[cfg(test)]
mod tests {
    use super::{branches_to, probe_offset};

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
        assert_eq!(probe_offset(&code), 3);
    }

    #[test]
    fn an_emulated_first_instruction_keeps_the_entry() {
        // malloc: push %r12; push %rbp
        assert_eq!(probe_offset(&[0x41, 0x54, 0x55]), 0);
    }

    #[test]
    fn a_global_flag_check_is_skipped() {
        // glibc posix_memalign: cmpb $0x0,0x140201(%rip); push %r12
        let code = [0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54];
        assert_eq!(probe_offset(&code), 7);
        // endbr64; push %rbp
        assert_eq!(probe_offset(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), 4);
    }

    #[test]
    fn instructions_that_change_what_probes_read_are_not_skipped() {
        // reallocarray: mov %rsi,%rax; mul %rdx (writes rdx, an argument); …
        let code = [
            0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x48, 0x89, 0xc6, 0x70, 0x05,
        ];
        assert_eq!(probe_offset(&code), 0);
        // sub $0x18,%rsp; push %rbx: the stack pointer moved.
        assert_eq!(probe_offset(&[0x48, 0x83, 0xec, 0x18, 0x53]), 0);
        // mov %rax,(%rdi); jmp …: writes memory.
        assert_eq!(probe_offset(&[0x48, 0x89, 0x07, 0xeb, 0x00]), 0);
        // mov %rdi,%rbx; push %rbp: fine, rbx is not read by the probes.
        assert_eq!(probe_offset(&[0x48, 0x89, 0xfb, 0x55]), 3);
    }

    #[test]
    fn nothing_emulated_nearby_keeps_the_entry() {
        // Five `mov %rax,%rbx` and no branch.
        let code = [0x48, 0x89, 0xc3].repeat(6);
        assert_eq!(probe_offset(&code), 0);
        assert_eq!(probe_offset(&[]), 0);
        assert_eq!(probe_offset(&[0xff, 0xff]), 0);
    }
}
