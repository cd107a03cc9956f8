//! Exit statuses: one per kind of failure, so a script or a supervisor can tell "not root"
//! from "no such process" from "the kernel cannot do it" without reading the message. The
//! numbers follow sysexits.h where one fits, and the shell's 126/127 for a command that
//! cannot run. docs/errors.md has the table.

/// Why leaktrace stopped, as its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Success = 0,
    /// A flag, a flag combination or the config file is wrong.
    Usage = 2,
    /// `attach`: the target exited while traced (the report is written).
    TargetExited = 3,
    /// The target lacks what was asked for: no allocator, no such --alloc-fn or --scope
    /// function (EX_DATAERR).
    NotInTarget = 65,
    /// A saved report given to `report` or `diff` cannot be read or is not a report
    /// (EX_NOINPUT).
    BadReport = 66,
    /// No process to trace: no such pid, a zombie, or a kernel thread (EX_NOUSER).
    NoTarget = 67,
    /// The kernel cannot do it: no uprobes, no BTF, no tracefs (EX_UNAVAILABLE).
    KernelLacks = 69,
    /// Something failed inside leaktrace or the kernel refused a program (EX_SOFTWARE).
    Internal = 70,
    /// The report could not be written: the file cannot be created, or the disk is full
    /// (EX_CANTCREAT).
    CannotWrite = 73,
    /// Another tracer holds a probe on the same function in a way that excludes ours.
    ProbeConflict = 76,
    /// Not privileged enough: root or the capabilities are missing (EX_NOPERM).
    NotPermitted = 77,
    /// `run`: the command exists but cannot be started.
    CommandNotRunnable = 126,
    /// `run`: no such command.
    CommandNotFound = 127,
}

impl Status {
    pub fn code(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_its_own_status() {
        let all = [
            Status::Success,
            Status::Usage,
            Status::TargetExited,
            Status::NotInTarget,
            Status::BadReport,
            Status::NoTarget,
            Status::KernelLacks,
            Status::Internal,
            Status::CannotWrite,
            Status::ProbeConflict,
            Status::NotPermitted,
            Status::CommandNotRunnable,
            Status::CommandNotFound,
        ];
        let mut codes: Vec<u8> = all.iter().map(|status| status.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
