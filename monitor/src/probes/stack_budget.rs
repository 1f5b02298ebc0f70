//! The 512-byte BPF stack, checked on the built object. A program shares those bytes with
//! every function it calls (global functions and `bpf_loop` callbacks included); kernels with
//! private BPF stacks accept more, others refuse the program at load ("combined stack size of
//! 2 calls is 576. Too large"), and the agent does not start. Found on one machine only by
//! loading there, so every build checks it here, whatever the kernel it runs on.

use std::collections::{BTreeMap, HashMap};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SymbolKind};

/// `MAX_BPF_STACK`.
pub const MAX_STACK: u64 = 512;

const INSN: usize = 8;
const R10: u8 = 10;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU64: u8 = 0x07;
const CALL: u8 = 0x85;
const LD_IMM64: u8 = 0x18;
const MOV64_REG: u8 = 0xbf;
const ADD64_IMM: u8 = 0x07;
const PSEUDO_CALL: u8 = 1;
const PSEUDO_FUNC: u8 = 4;

/// A function of the object: its frame and the functions it calls (by symbol name).
#[derive(Debug, Default)]
pub struct Function {
    pub frame: u64,
    pub calls: Vec<String>,
}

/// Every function symbol of the object's code sections, by name; `programs` are those outside
/// `.text` (the entry points the kernel loads).
pub fn functions(elf: &[u8]) -> Result<(BTreeMap<String, Function>, Vec<String>), String> {
    let file = object::File::parse(elf).map_err(|e| e.to_string())?;
    let name_of =
        |symbol: &object::Symbol| symbol.name().map(str::to_string).map_err(|e| e.to_string());
    // Every function by (section, offset): where calls land.
    let mut at = HashMap::new();
    for symbol in file.symbols().filter(|s| s.kind() == SymbolKind::Text) {
        if let Some(section) = symbol.section_index() {
            at.insert((section, symbol.address()), name_of(&symbol)?);
        }
    }
    let mut functions = BTreeMap::new();
    let mut programs = Vec::new();
    for section in file.sections() {
        if section.kind() != object::SectionKind::Text {
            continue;
        }
        let code = section.data().map_err(|e| e.to_string())?;
        let index = section.index();
        // Calls across sections go through relocations, keyed by the instruction's offset:
        // to a function's symbol, or to its section's, the offset left in the instruction.
        let mut targets = HashMap::new();
        for (offset, relocation) in section.relocations() {
            if let RelocationTarget::Symbol(symbol) = relocation.target() {
                let symbol = file.symbol_by_index(symbol).map_err(|e| e.to_string())?;
                let target = match symbol.kind() {
                    SymbolKind::Text => Target::Function(name_of(&symbol)?),
                    _ => match symbol.section_index() {
                        Some(section) => Target::InSection(section),
                        None => continue,
                    },
                };
                targets.insert(offset, target);
            }
        }
        let symbols = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.section_index() == Some(index));
        for symbol in symbols {
            let name = name_of(&symbol)?;
            let start = symbol.address() as usize;
            let end = start + symbol.size() as usize;
            let body = code.get(start..end).ok_or("a symbol outside its section")?;
            let mut function = scan(body, start as u64, &targets, |section, offset| {
                at.get(&(section.unwrap_or(index), offset)).cloned()
            })?;
            function.calls.sort();
            function.calls.dedup();
            if section.name().map_err(|e| e.to_string())? != ".text" {
                programs.push(name.clone());
            }
            functions.insert(name, function);
        }
    }
    Ok((functions, programs))
}

/// Where a relocated call goes.
enum Target {
    Function(String),
    /// The instruction's own offset, counted in the given section.
    InSection(object::SectionIndex),
}

/// The frame and calls of one function's instructions (`base`: its offset in its section).
fn scan(
    body: &[u8],
    base: u64,
    targets: &HashMap<u64, Target>,
    function_at: impl Fn(Option<object::SectionIndex>, u64) -> Option<String>,
) -> Result<Function, String> {
    let mut function = Function::default();
    // Registers holding r10 plus an offset (`rX = r10; rX += -n`): pointers to the stack.
    let mut frame_pointers = [None::<i64>; 11];
    for (i, insn) in body.chunks_exact(INSN).enumerate() {
        let offset = base + (i * INSN) as u64;
        let (opcode, dst, src) = (insn[0], insn[1] & 0x0f, insn[1] >> 4);
        let off = i64::from(i16::from_le_bytes([insn[2], insn[3]]));
        let imm = i64::from(i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]));
        let mut deepest = |at: i64| function.frame = function.frame.max((-at).max(0) as u64);
        match opcode & 0x07 {
            CLASS_LDX if src == R10 => deepest(off),
            CLASS_ST | CLASS_STX if dst == R10 => deepest(off),
            _ => {}
        }
        let call_target = match (opcode, src) {
            (CALL, PSEUDO_CALL) | (LD_IMM64, PSEUDO_FUNC) => {
                // The target is the instruction after this one plus `imm` instructions
                // (ld_imm64 takes two slots), in this section unless relocated elsewhere.
                let width = if opcode == LD_IMM64 { 2 } else { 1 };
                let relative = offset as i64 + (width + imm) * INSN as i64;
                let target = match targets.get(&offset) {
                    Some(Target::Function(name)) => Some(name.clone()),
                    // As aya resolves them: a call's `imm` counts instructions less one,
                    // an ld_imm64's bytes.
                    Some(Target::InSection(section)) => {
                        let bytes = if opcode == CALL {
                            (imm + 1) * INSN as i64
                        } else {
                            imm
                        };
                        function_at(Some(*section), bytes as u64)
                    }
                    None => function_at(None, relative as u64),
                };
                Some(target.ok_or_else(|| format!("a call at {offset:#x} to no known function"))?)
            }
            _ => None,
        };
        if let Some(target) = call_target {
            function.calls.push(target);
        }
        if opcode == CALL {
            // A call leaves r1-r5 undefined and its result in r0: none is a stack pointer
            // (taken for one, `r3 = r2` after a map look-up keyed on the stack, then
            // `r3 += -48` for a digit, made a 4-byte frame 52).
            frame_pointers[..=5].fill(None);
        }
        if opcode & 0x07 == CLASS_ALU64 && usize::from(dst) < frame_pointers.len() {
            frame_pointers[usize::from(dst)] = match opcode {
                MOV64_REG if src == R10 => Some(0),
                MOV64_REG => frame_pointers.get(usize::from(src)).copied().flatten(),
                ADD64_IMM => frame_pointers[usize::from(dst)].map(|at| at + imm),
                _ => None,
            };
            if let Some(at) = frame_pointers[usize::from(dst)] {
                deepest(at);
            }
        }
    }
    Ok(function)
}

/// How the kernel sizes a frame in the sum, by the strictest rule: kernels before 6.7 or so
/// round every frame up to 32 bytes and count at least 32 for one that uses none (later ones
/// round a JIT-compiled program's frames to 16). Debian 12's 6.1 refused `sys_exit` at 544
/// bytes where the rule of 16 counted 496.
fn rounded(frame: u64) -> u64 {
    frame.max(1).div_ceil(32) * 32
}

/// The deepest call chain from `name`: its combined stack and the functions on it.
pub fn deepest_chain(functions: &BTreeMap<String, Function>, name: &str) -> (u64, Vec<String>) {
    fn walk(
        functions: &BTreeMap<String, Function>,
        name: &str,
        path: &mut Vec<String>,
    ) -> (u64, Vec<String>) {
        let Some(function) = functions.get(name) else {
            return (0, path.clone());
        };
        path.push(name.to_string());
        let mut best = (0, path.clone());
        for callee in &function.calls {
            if path.contains(callee) {
                continue; // the verifier refuses recursion anyway
            }
            let chain = walk(functions, callee, path);
            if chain.0 > best.0 {
                best = chain;
            }
        }
        path.pop();
        (rounded(function.frame) + best.0, best.1)
    }
    walk(functions, name, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::{loops::Loops, object_for};

    #[test]
    fn every_program_fits_the_stack_with_all_it_calls() {
        for loops in [Loops::Helper, Loops::Bounded] {
            let (functions, programs) = functions(object_for(loops)).unwrap();
            assert!(programs.len() > 10, "programs found: {programs:?}");
            let over: Vec<_> = programs
                .iter()
                .map(|program| (program, deepest_chain(&functions, program)))
                .filter(|(_, (depth, _))| *depth > MAX_STACK)
                .collect();
            assert!(
                over.is_empty(),
                "{loops:?}: combined stack above {MAX_STACK} bytes: {over:#?}"
            );
        }
    }

    #[test]
    fn the_scan_finds_frames_and_calls() {
        // The program that reads the most of the stack, and one global function it calls.
        let (functions, _) = functions(super::super::BPF_OBJECT).unwrap();
        let sys_exit = &functions["sys_exit_raw"];
        assert!(sys_exit.frame >= 128, "{sys_exit:?}");
        assert!(
            sys_exit
                .calls
                .iter()
                .any(|call| call == "track_received_connections"),
            "{sys_exit:?}"
        );
        let (depth, chain) = deepest_chain(&functions, "sys_exit_raw");
        assert!(depth > rounded(sys_exit.frame), "{chain:?}");
    }

    /// The check itself, on hand-made instructions: a 264-byte frame behind a 304-byte one is
    /// the combined 576 bytes a kernel refused.
    #[test]
    fn a_chain_over_the_budget_is_reported() {
        let store = |off: i16| {
            let mut insn = [0u8; 8];
            insn[0] = 0x7b; // *(u64 *)(r10 + off) = r1
            insn[1] = R10 | (1 << 4);
            insn[2..4].copy_from_slice(&off.to_le_bytes());
            insn
        };
        let caller = scan(&store(-304), 0, &HashMap::new(), |_, _| None).unwrap();
        let callee = scan(&store(-264), 0, &HashMap::new(), |_, _| None).unwrap();
        assert_eq!((caller.frame, callee.frame), (304, 264));
        let functions = BTreeMap::from([
            (
                "program".to_string(),
                Function {
                    calls: vec!["callee".to_string()],
                    ..caller
                },
            ),
            ("callee".to_string(), callee),
        ]);
        let (depth, chain) = deepest_chain(&functions, "program");
        // 576 by the rule of 16 that kernel used; the older rule checked here counts more.
        assert_eq!(depth, 320 + 288);
        assert_eq!(chain, ["program", "callee"]);
    }

    /// A register that held a stack pointer before a call holds none after it: the map
    /// look-up's key on the stack, then digit arithmetic in the register the call left.
    #[test]
    fn a_register_after_a_call_is_no_stack_pointer() {
        let insn = |opcode: u8, dst: u8, src: u8, imm: i32| {
            let mut insn = [0u8; 8];
            insn[0] = opcode;
            insn[1] = dst | (src << 4);
            insn[4..8].copy_from_slice(&imm.to_le_bytes());
            insn
        };
        let body = |with_call: bool| {
            let mut body = vec![
                insn(MOV64_REG, 2, R10, 0), // r2 = r10
                insn(ADD64_IMM, 2, 0, -4),  // r2 += -4
            ];
            if with_call {
                body.push(insn(CALL, 0, 0, 1)); // call bpf_map_lookup_elem
            }
            body.push(insn(MOV64_REG, 3, 2, 0)); // r3 = r2
            body.push(insn(ADD64_IMM, 3, 0, -48)); // r3 += -48
            body.concat()
        };
        let frame = |with_call| {
            scan(&body(with_call), 0, &HashMap::new(), |_, _| None)
                .unwrap()
                .frame
        };
        assert_eq!(frame(false), 52, "without a call, r3 is a stack pointer");
        assert_eq!(frame(true), 4);
    }

    /// Debian 12's 6.1 refused `sys_exit` at a combined 544 bytes, which the rule of 16 had
    /// counted below 512: every frame rounded up to 32 bytes, and at least 32.
    #[test]
    fn frames_are_counted_as_older_kernels_count_them() {
        assert_eq!(rounded(360), 384);
        assert_eq!(rounded(0), 32);
        assert_eq!(rounded(72), 96);
        assert_eq!(rounded(64), 64);
    }
}
