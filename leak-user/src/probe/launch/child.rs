//! The command's child process, forked and seized by the launcher thread and held before
//! exec until leaktrace is ready for it.
use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

/// The command as execve takes it: the program, its arguments, and leaktrace's environment.
pub(super) struct CommandLine {
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

impl CommandLine {
    pub(super) fn new(program: &Path, args: &[String]) -> io::Result<CommandLine> {
        let to_c = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
        };
        let program = to_c(program.as_os_str().as_bytes())?;
        let mut argv = Vec::with_capacity(args.len());
        for arg in args {
            argv.push(to_c(arg.as_bytes())?);
        }
        let mut envp = Vec::new();
        for (key, value) in std::env::vars_os() {
            let mut entry = key.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            envp.push(to_c(&entry)?);
        }
        Ok(CommandLine {
            program,
            argv,
            envp,
        })
    }
}

/// A C array of `strings`, ended by a null pointer: valid while `strings` is.
pub(super) fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|string| string.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A forked child waiting before exec: it executes the command once a byte comes on its
/// pipe, and reports on another why that failed, if it did.
pub(super) struct HeldChild {
    pub pid: libc::pid_t,
    /// The end of the pipe the child waits on.
    go_writer: libc::c_int,
    /// The end of the pipe an exec failure's errno comes back on (closed by a successful
    /// exec).
    error_reader: libc::c_int,
}

impl HeldChild {
    /// Forks the child that executes `program` with `argv` and `envp` when released.
    ///
    /// # Safety
    /// `argv` and `envp` are arrays of C strings ended by a null pointer, valid for the call.
    pub(super) unsafe fn fork(
        program: &CString,
        argv: &[*const libc::c_char],
        envp: &[*const libc::c_char],
    ) -> io::Result<HeldChild> {
        // SAFETY: pipes and fork; the child only calls async-signal-safe functions
        // (read, execve, write, _exit) on memory prepared before fork.
        unsafe {
            let mut go_pipe = [0; 2];
            let mut err_pipe = [0; 2];
            if libc::pipe2(go_pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0
                || libc::pipe2(err_pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let pid = libc::fork();
            if pid < 0 {
                return Err(io::Error::last_os_error());
            }
            if pid == 0 {
                libc::close(go_pipe[1]);
                libc::close(err_pipe[0]);
                let mut byte = 0u8;
                if libc::read(go_pipe[0], (&raw mut byte).cast(), 1) == 1 {
                    libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    let errno = *libc::__errno_location();
                    libc::write(err_pipe[1], (&raw const errno).cast(), size_of::<i32>());
                }
                libc::_exit(127);
            }
            libc::close(go_pipe[0]);
            libc::close(err_pipe[1]);
            Ok(HeldChild {
                pid,
                go_writer: go_pipe[1],
                error_reader: err_pipe[0],
            })
        }
    }

    /// Lets the child execute the command; the errno of its failure, if it failed.
    ///
    /// # Safety
    /// The child is ours, its pipes open.
    pub(super) unsafe fn exec(self) -> Option<i32> {
        // SAFETY: writes and reads on our own pipes, into local values.
        unsafe {
            let byte = 1u8;
            libc::write(self.go_writer, (&raw const byte).cast(), 1);
            libc::close(self.go_writer);
            let mut errno = 0i32;
            let got = libc::read(self.error_reader, (&raw mut errno).cast(), size_of::<i32>());
            libc::close(self.error_reader);
            (got == size_of::<i32>() as isize).then_some(errno)
        }
    }

    /// Never lets the child execute anything: it exits, and is reaped.
    ///
    /// # Safety
    /// As for `exec`.
    pub(super) unsafe fn abandon(self) {
        // SAFETY: closing our own pipe; reaping our own child.
        unsafe {
            libc::close(self.go_writer);
            libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WALL);
        }
    }
}

/// Seizes the held child with ptrace: exit, exec and fork events only (and, with
/// `every_thread`, its threads' creation), signals passing through. The child is killed if
/// that fails.
///
/// # Safety
/// `pid` is our own child; every later ptrace request about it comes from this thread.
pub(super) unsafe fn seize(pid: libc::pid_t, every_thread: bool) -> io::Result<()> {
    let mut options = libc::PTRACE_O_TRACEEXIT
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK;
    if every_thread {
        options |= libc::PTRACE_O_TRACECLONE;
    }
    // SAFETY: seizing, or killing and reaping, our own child.
    unsafe {
        let seized = libc::ptrace(
            libc::PTRACE_SEIZE,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            options as usize as *mut libc::c_void,
        );
        if seized != 0 {
            let error = io::Error::last_os_error();
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            return Err(error);
        }
    }
    Ok(())
}
