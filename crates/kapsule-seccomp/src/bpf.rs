//! Classic BPF, as seccomp runs it: the few instructions a filter needs, and an assembler that
//! resolves jumps to labels.

use serde::{Deserialize, Serialize};

use crate::Error;

/// One instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Instruction codes (linux/bpf_common.h): class | size or operation | source (K: the constant).
const LD: u16 = 0x00;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const K: u16 = 0x00;
/// A = 32-bit word at offset k of the data (BPF_W | BPF_ABS).
pub(crate) const LD_W_ABS: u16 = LD | 0x20;
pub(crate) const ALU_AND_K: u16 = ALU | 0x50 | K;
pub(crate) const JMP_JA: u16 = JMP;
pub(crate) const JMP_JEQ_K: u16 = JMP | 0x10 | K;
pub(crate) const JMP_JGT_K: u16 = JMP | 0x20 | K;
pub(crate) const JMP_JGE_K: u16 = JMP | 0x30 | K;
pub(crate) const RET_K: u16 = RET | K;

/// A place in the program, to jump to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Label(usize);

/// What the assembler takes: instructions with symbolic targets, and where labels are.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// A = the 32-bit word at this offset of the system call's data.
    Load(u32),
    /// A &= k.
    And(u32),
    /// To the first label if A == k, else to the second.
    JumpIfEqual(u32, Label, Label),
    /// To the first label if A > k, else to the second.
    JumpIfGreater(u32, Label, Label),
    /// To the first label if A >= k, else to the second.
    JumpIfAtLeast(u32, Label, Label),
    /// Always to the label (any distance).
    Goto(Label),
    /// Ends the filter with this action.
    Return(u32),
    /// The label is here (takes no instruction).
    Here(Label),
}

/// Collects steps; [`Assembler::finish`] lays them out. A conditional jump reaches at most 255
/// instructions ahead, so the compiler jumps conditionally only within a rule and uses
/// [`Step::Goto`] beyond.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    steps: Vec<Step>,
    labels: usize,
}

impl Assembler {
    pub(crate) fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    pub(crate) fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    pub(crate) fn finish(self) -> Result<Vec<Instruction>, Error> {
        let mut at = vec![None; self.labels];
        let mut position = 0;
        for step in &self.steps {
            match step {
                Step::Here(label) => at[label.0] = Some(position),
                _ => position += 1,
            }
        }
        let mut program = Vec::with_capacity(position);
        for step in &self.steps {
            let here = program.len();
            // Jumps are relative to the next instruction, and only forward.
            let offset = |label: &Label| -> Result<usize, Error> {
                at[label.0]
                    .and_then(|target| target.checked_sub(here + 1))
                    .ok_or(Error::Internal("a jump backwards or to no label"))
            };
            let short = |label: &Label| -> Result<u8, Error> {
                let distance = offset(label)?;
                u8::try_from(distance).map_err(|_| Error::Internal("a conditional jump of more than 255 instructions"))
            };
            let instruction = |code, jt, jf, k| Instruction { code, jt, jf, k };
            program.push(match step {
                Step::Here(_) => continue,
                Step::Load(offset) => instruction(LD_W_ABS, 0, 0, *offset),
                Step::And(k) => instruction(ALU_AND_K, 0, 0, *k),
                Step::JumpIfEqual(k, yes, no) => instruction(JMP_JEQ_K, short(yes)?, short(no)?, *k),
                Step::JumpIfGreater(k, yes, no) => instruction(JMP_JGT_K, short(yes)?, short(no)?, *k),
                Step::JumpIfAtLeast(k, yes, no) => instruction(JMP_JGE_K, short(yes)?, short(no)?, *k),
                Step::Goto(label) => {
                    let distance = offset(label)?;
                    instruction(
                        JMP_JA,
                        0,
                        0,
                        u32::try_from(distance).map_err(|_| Error::Internal("a jump beyond 2^32 instructions"))?,
                    )
                }
                Step::Return(action) => instruction(RET_K, 0, 0, *action),
            });
        }
        Ok(program)
    }
}
