//! Which function a PLT stub calls: a call through `malloc@plt` is a call to malloc. Each
//! stub of `.plt`, `.plt.sec` and `.plt.got` starts with one `jmp *GOT(%rip)`, or with
//! `endbr64` and that jump; the GOT slot's dynamic relocation names the function.
use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use object::{Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, RelocationTarget};

/// The function each PLT stub of an ELF file jumps to, by the stub's virtual address.
pub fn stub_names(file: &object::File<'_>) -> HashMap<u64, String> {
    let mut slots: HashMap<u64, String> = HashMap::new();
    if let (Some(relocations), Some(table)) =
        (file.dynamic_relocations(), file.dynamic_symbol_table())
    {
        for (got, relocation) in relocations {
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            if let Some(name) = table
                .symbol_by_index(index)
                .ok()
                .and_then(|symbol| symbol.name().ok().map(str::to_string))
            {
                slots.insert(got, name);
            }
        }
    }
    let mut stubs = HashMap::new();
    if slots.is_empty() {
        return stubs;
    }
    for section in file.sections() {
        if !matches!(section.name(), Ok(".plt" | ".plt.sec" | ".plt.got")) {
            continue;
        }
        let Ok(code) = section.data() else { continue };
        let start = section.address();
        let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
        let mut instruction = Instruction::default();
        let mut endbr64_at = None;
        while decoder.can_decode() {
            decoder.decode_out(&mut instruction);
            if instruction.mnemonic() == Mnemonic::Jmp
                && instruction.op0_kind() == OpKind::Memory
                && instruction.memory_base() == Register::RIP
            {
                let got = instruction.ip_rel_memory_address();
                if let Some(name) = slots.get(&got) {
                    stubs.insert(endbr64_at.unwrap_or(instruction.ip()), name.clone());
                }
            }
            endbr64_at = (instruction.mnemonic() == Mnemonic::Endbr64).then_some(instruction.ip());
        }
    }
    stubs
}

#[cfg(test)]
mod tests {
    use super::stub_names;

    #[test]
    fn names_libstdcxx_stubs() {
        // Debian's libstdc++ calls malloc and its own operator new through its PLT.
        let path = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";
        let Ok(data) = std::fs::read(path) else {
            panic!("{path} is needed (g++ installs it)");
        };
        let file = object::File::parse(&*data).expect("libstdc++ is an ELF file");
        let stubs = stub_names(&file);
        assert!(stubs.values().any(|name| name == "malloc"), "{stubs:?}");
        assert!(stubs.values().any(|name| name == "_Znwm"));
    }
}
