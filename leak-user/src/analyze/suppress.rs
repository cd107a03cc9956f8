//! Suppressions, as test suites keep them for LeakSanitizer and valgrind: a stack that one
//! matches is known and accepted, so it is counted apart and never called leaking.
//!
//! Both formats are read, in one file or several (`--suppressions FILE`):
//! - LeakSanitizer's `leak:PATTERN` lines: the pattern matches a stack when it matches a
//!   frame's function, module path or source file; `*` is any run of characters, and
//!   without `^`/`$` anchors a pattern may match anywhere in the name.
//! - valgrind's `{ name  Memcheck:Leak  [match-leak-kinds: …]  fun:…/obj:…/... }` blocks:
//!   the frame lines match the stack's frames in order from the innermost (`...` any number
//!   of frames; `*` and `?` wildcards). valgrind's stacks start in the allocator
//!   (`fun:malloc`), leaktrace's at its caller: leading allocator frames are skipped.
//!
//! A default set for the C and C++ runtimes is built in (`DEFAULT`).
use crate::model::Frame;

/// One suppression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    /// What the reports name it by: the valgrind block's name, or `leak:PATTERN`.
    pub name: String,
    kind: Kind,
    /// valgrind's `match-leak-kinds`: None for any.
    leak_kinds: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Lsan(String),
    Valgrind(Vec<FramePattern>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum FramePattern {
    Fun(String),
    Obj(String),
    /// `...`: any number of frames.
    Any,
}

/// Built in: what the C and C++ runtimes and allocators allocate on purpose and keep
/// (LeakSanitizer's own default suppressions, libstdc++'s exception-handling pool and
/// globals, tcmalloc's extension registry).
pub const DEFAULT: &str = "\
# A thread that ends in pthread_exit leaves its cleanup buffers to the runtime.
leak:pthread_exit
# The loader's dependency lists and dynamic TLS.
leak:_dl_map_object_deps
leak:__tls_get_addr
# libstdc++: the emergency pool for exceptions thrown out of memory, and each thread's
# exception globals.
leak:(anonymous namespace)::pool::pool
leak:__cxa_get_globals
# gperftools' tcmalloc: its registry of malloc extensions, allocated through itself.
leak:MallocExtension::Register
";

/// Reads suppressions from `text` (from `source`, for the message); Err names the line that
/// is not understood.
pub fn parse(text: &str, source: &str) -> Result<Vec<Suppression>, String> {
    let mut found = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(pattern) = line.strip_prefix("leak:") {
            let pattern = pattern.trim();
            if pattern.is_empty() {
                return Err(format!("{source}:{}: `leak:` without a pattern", index + 1));
            }
            found.push(Suppression {
                name: line.to_string(),
                kind: Kind::Lsan(pattern.to_string()),
                leak_kinds: None,
            });
            continue;
        }
        if line != "{" {
            return Err(format!(
                "{source}:{}: `{line}` is neither a `leak:PATTERN` line nor the `{{` of a valgrind suppression",
                index + 1
            ));
        }
        let start = index + 1;
        let mut body = Vec::new();
        loop {
            match lines.next() {
                Some((_, line)) if line.trim() == "}" => break,
                Some((_, line)) => body.push(line.trim().to_string()),
                None => {
                    return Err(format!(
                        "{source}:{start}: a valgrind suppression without its closing `}}`"
                    ));
                }
            }
        }
        if let Some(suppression) = valgrind_block(&body) {
            found.push(suppression);
        }
    }
    Ok(found)
}

/// A valgrind block's lines (name, tool:kind, frames); None when it is not a leak
/// suppression (other kinds of error have nothing to do with leaks).
fn valgrind_block(body: &[String]) -> Option<Suppression> {
    let mut lines = body.iter().filter(|line| !line.is_empty());
    let name = lines.next()?.clone();
    let kind = lines.next()?;
    if kind != "Memcheck:Leak" {
        return None;
    }
    let mut leak_kinds = None;
    let mut frames = Vec::new();
    for line in lines {
        if let Some(kinds) = line.strip_prefix("match-leak-kinds:") {
            leak_kinds = Some(
                kinds
                    .split(',')
                    .map(|kind| kind.trim().to_string())
                    .collect(),
            );
        } else if let Some(function) = line.strip_prefix("fun:") {
            frames.push(FramePattern::Fun(function.to_string()));
        } else if let Some(object) = line.strip_prefix("obj:") {
            frames.push(FramePattern::Obj(object.to_string()));
        } else if line == "..." {
            frames.push(FramePattern::Any);
        }
    }
    Some(Suppression {
        name,
        kind: Kind::Valgrind(frames),
        leak_kinds,
    })
}

/// valgrind's demangled names of the C++ allocation operators its stacks may start in.
const CXX_DEMANGLED_NEW: [&str; 2] = [
    "operator new(unsigned long)",
    "operator new[](unsigned long)",
];

/// Whether valgrind's stacks may start in a function of this name (the allocator's entry).
fn is_allocator(pattern: &str) -> bool {
    crate::model::allocators::c_family_names()
        .chain(CXX_DEMANGLED_NEW)
        .chain(crate::model::allocators::CXX_NEW_SYMBOLS)
        .any(|name| glob(pattern, name))
}

impl Suppression {
    /// Whether it matches a stack (innermost frame first) whose blocks are `lost` or not.
    pub fn matches(&self, frames: &[Frame], lost: bool) -> bool {
        if let Some(kinds) = &self.leak_kinds {
            let wanted = kinds.iter().any(|kind| {
                kind == "all"
                    || if lost {
                        matches!(kind.as_str(), "definite" | "indirect" | "possible")
                    } else {
                        kind == "reachable"
                    }
            });
            if !wanted {
                return false;
            }
        }
        match &self.kind {
            Kind::Lsan(pattern) => frames.iter().any(|frame| {
                [
                    frame.function.as_deref(),
                    frame.module.as_deref(),
                    frame.file.as_deref(),
                ]
                .into_iter()
                .flatten()
                .any(|name| lsan_match(pattern, name))
            }),
            Kind::Valgrind(patterns) => {
                let mut patterns = patterns.as_slice();
                while let [FramePattern::Fun(pattern), rest @ ..] = patterns
                    && is_allocator(pattern)
                {
                    patterns = rest;
                }
                frames_match(patterns, frames)
            }
        }
    }
}

/// The first suppression of `rules` that matches the stack, by name.
pub fn matching<'a>(rules: &'a [Suppression], frames: &[Frame], lost: bool) -> Option<&'a str> {
    rules
        .iter()
        .find(|rule| rule.matches(frames, lost))
        .map(|rule| rule.name.as_str())
}

/// valgrind's frame lines against frames, in order; the stack may go on past them.
fn frames_match(patterns: &[FramePattern], frames: &[Frame]) -> bool {
    match patterns.split_first() {
        None => true,
        Some((FramePattern::Any, rest)) => {
            (0..=frames.len()).any(|skip| frames_match(rest, &frames[skip..]))
        }
        Some((pattern, rest)) => {
            let Some((frame, later)) = frames.split_first() else {
                return false;
            };
            let hit = match pattern {
                FramePattern::Fun(pattern) => frame
                    .function
                    .as_deref()
                    .is_some_and(|function| glob(pattern, function)),
                FramePattern::Obj(pattern) => frame
                    .module
                    .as_deref()
                    .is_some_and(|module| glob(pattern, module)),
                FramePattern::Any => unreachable!("handled above"),
            };
            hit && frames_match(rest, later)
        }
    }
}

/// valgrind's wildcards: `*` any run of characters, `?` any one; the whole name must match.
fn glob(pattern: &str, name: &str) -> bool {
    fn go(pattern: &[char], name: &[char]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some(('*', rest)) => (0..=name.len()).any(|skip| go(rest, &name[skip..])),
            Some(('?', rest)) => !name.is_empty() && go(rest, &name[1..]),
            Some((c, rest)) => name.first() == Some(c) && go(rest, &name[1..]),
        }
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    go(&pattern, &name)
}

/// LeakSanitizer's patterns: `*` wildcards, matched anywhere in the name unless anchored
/// with `^` (start) or `$` (end).
fn lsan_match(pattern: &str, name: &str) -> bool {
    let (start, pattern) = match pattern.strip_prefix('^') {
        Some(rest) => ("", rest),
        None => ("*", pattern),
    };
    let (pattern, end) = match pattern.strip_suffix('$') {
        Some(rest) => (rest, ""),
        None => (pattern, "*"),
    };
    // Only `*` is special to LeakSanitizer: a `?` is itself.
    let pattern = format!("{start}{pattern}{end}");
    let parts: Vec<&str> = pattern.split('*').collect();
    if let [whole] = parts[..] {
        return name == whole;
    }
    let mut at = 0;
    for (index, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        let first = index == 0;
        let last = index == parts.len() - 1;
        if first {
            if !name.starts_with(part) {
                return false;
            }
            at = part.len();
        } else if last {
            return name.len() >= at + part.len() && name.ends_with(part);
        } else {
            match name[at..].find(part) {
                Some(found) => at += found + part.len(),
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, module: &str, file: Option<&str>) -> Frame {
        Frame {
            function: Some(function.to_string()),
            file: file.map(str::to_string),
            line: None,
            module: Some(module.to_string()),
            address: 0x1000,
            module_offset: None,
            inlined: false,
        }
    }

    fn stack() -> Vec<Frame> {
        vec![
            frame("make_entry", "/srv/app", Some("/src/cache.c")),
            frame("cache_put", "/srv/app", Some("/src/cache.c")),
            frame("main", "/srv/app", Some("/src/main.c")),
            frame("__libc_start_call_main", "/usr/lib/libc.so.6", None),
        ]
    }

    #[test]
    fn leaksanitizer_patterns() {
        let rules = parse(
            "# comment\nleak:cache_put\nleak:^main$\nleak:libfoo.so\n",
            "s",
        )
        .expect("parse");
        assert_eq!(rules.len(), 3);
        assert_eq!(matching(&rules, &stack(), true), Some("leak:cache_put"));
        assert!(rules[1].matches(&stack(), true), "anchored, whole name");
        assert!(!rules[2].matches(&stack(), true));
        assert!(lsan_match("cache*", "cache_put"));
        assert!(lsan_match("src/cache.c", "/src/cache.c"));
        assert!(!lsan_match("^cache", "my_cache"));
        assert!(lsan_match("put$", "cache_put"));
        assert!(!lsan_match("put$", "cache_put_all"));
        assert!(lsan_match("a*c*e", "xxabcdexx"));
        assert!(!lsan_match("a*z", "abc"));
        assert!(!lsan_match("^main$", "main_loop"));
    }

    #[test]
    fn valgrind_blocks() {
        let text = "\
{
   cache entries
   Memcheck:Leak
   match-leak-kinds: definite
   fun:malloc
   fun:make_entry
   ...
   fun:main
}
{
   not a leak
   Memcheck:Cond
   fun:strlen
}
{
   reachable only
   Memcheck:Leak
   match-leak-kinds: reachable
   obj:/srv/*
}
";
        let rules = parse(text, "v.supp").expect("parse");
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(matching(&rules, &stack(), true), Some("cache entries"));
        // match-leak-kinds: definite does not suppress what is still reachable…
        assert_eq!(matching(&rules, &stack(), false), Some("reachable only"));
        // …and the frames must match in order from the innermost.
        let mut other = stack();
        other.swap(0, 1);
        assert_eq!(matching(&rules, &other, true), None);
        assert!(glob("ma?e_*", "make_entry"));
        assert!(!glob("make", "make_entry"));
    }

    #[test]
    fn bad_files_say_which_line() {
        let error = parse("leak:ok\nnonsense\n", "x.supp").expect_err("refused");
        assert!(error.starts_with("x.supp:2: `nonsense`"), "{error}");
        let error = parse("{\n name\n Memcheck:Leak\n", "y.supp").expect_err("refused");
        assert!(
            error.contains("y.supp:1: a valgrind suppression without its closing"),
            "{error}"
        );
        assert!(parse(DEFAULT, "default").is_ok_and(|rules| rules.len() == 6));
    }
}
