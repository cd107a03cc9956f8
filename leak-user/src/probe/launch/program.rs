//! Which program a command runs: the command found through PATH, and a script's
//! interpreter in its place.
use std::path::{Path, PathBuf};

/// Resolves a command name through PATH like execvp would.
pub fn resolve_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.exists().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// The program the kernel really runs for `program`: a `#!` script's interpreter (through
/// `/usr/bin/env NAME`, NAME found in PATH), followed as the kernel follows them (a script
/// whose interpreter is a script, up to 4 deep); `program` itself when it is no script. The
/// allocator, the unwind tables and the language runtime are those of that program.
pub fn program_image(program: &Path) -> PathBuf {
    let mut image = program.to_path_buf();
    for _ in 0..4 {
        match interpreter_of(&image) {
            Some(next) => image = next,
            None => break,
        }
    }
    image
}

/// The interpreter a `#!` line names, resolved as above.
fn interpreter_of(script: &Path) -> Option<PathBuf> {
    use std::io::Read as _;
    let mut head = [0u8; 256];
    let read = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let line = head[..read].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n')?];
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let interpreter = PathBuf::from(words.next()?);
    if interpreter.file_name().is_some_and(|name| name == "env") {
        // `#!/usr/bin/env [-S] NAME …`: NAME through PATH (options and VAR=value skipped).
        let name = words.find(|word| !word.starts_with('-') && !word.contains('='))?;
        return resolve_program(name);
    }
    Some(interpreter)
}

/// A regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_run_their_interpreter() {
        let dir = std::env::temp_dir().join(format!("leaktrace-shebang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let shell = write("plain.sh", "#!/bin/sh\necho hi\n");
        assert_eq!(program_image(&shell), PathBuf::from("/bin/sh"));
        let env = write("env.sh", "#!/usr/bin/env -S sh -e\necho hi\n");
        assert_eq!(Some(program_image(&env)), resolve_program("sh"));
        // A script whose interpreter is a script.
        let inner = write("inner", "#!/bin/sh\n");
        let outer = write("outer", &format!("#! {} -x\n", inner.display()));
        assert_eq!(program_image(&outer), PathBuf::from("/bin/sh"));
        // Not a script: itself.
        assert_eq!(
            program_image(Path::new("/bin/true")),
            PathBuf::from("/bin/true")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn resolves_through_path() {
        let sh = resolve_program("sh").expect("sh is on PATH");
        assert!(sh.is_absolute());
        assert!(resolve_program("/definitely/not/here").is_none());
        assert!(resolve_program("leaktrace-no-such-command").is_none());
    }
}
