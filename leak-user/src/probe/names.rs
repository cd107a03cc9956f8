//! Function names as users write them (`--scope`, `--alloc-fn`), matched to the symbols a
//! module defines: the plain name of a function the compiler cloned (`handle.isra.0`,
//! `parse.constprop.0`, `run.part.0`), a C++ function by its demangled name with or without
//! its parameter list (every overload), a Rust function by its path.

/// Clone suffixes of gcc and LLVM whose symbol is a function of its own, entered by calls:
/// interprocedural scalar replacement, constant propagation, partial inlining's outlined
/// part, LTO's private copies, LLVM's internalized and specialized functions.
const CALLABLE_CLONES: [&str; 6] = [
    "isra",
    "constprop",
    "part",
    "lto_priv",
    "llvm",
    "specialized",
];

/// `symbol` without its clone suffixes, if it has only callable ones. A `.cold` part (the
/// code a function moved out of its hot path) is entered by a jump from inside the
/// function, never by a call: probing it as a function would be wrong (its return probe
/// would take a return address that is not one), so it names nothing.
pub fn callable_base(symbol: &str) -> Option<&str> {
    let mut base = symbol;
    loop {
        // ".isra.0": a number after a known suffix; ".cold" and ".cold.1" end it all.
        let Some((head, last)) = base.rsplit_once('.') else {
            return Some(base);
        };
        if last == "cold" {
            return None;
        }
        if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
            let Some((rest, kind)) = head.rsplit_once('.') else {
                return Some(base);
            };
            if kind == "cold" {
                return None;
            }
            if CALLABLE_CLONES.contains(&kind) {
                base = rest;
                continue;
            }
        }
        return Some(base);
    }
}

/// The demangled name of a C++ or Rust symbol (Rust's without its hash), None for a plain
/// C name.
pub fn demangled(symbol: &str) -> Option<String> {
    if let Ok(rust) = rustc_demangle::try_demangle(symbol) {
        return Some(format!("{rust:#}"));
    }
    if symbol.starts_with("_Z") {
        let parsed = cpp_demangle::Symbol::new(symbol).ok()?;
        return parsed.demangle().ok();
    }
    None
}

/// A demangled C++ name without its parameter list and qualifiers: "ns::f(int) const" reads
/// as "ns::f". Template arguments stay.
pub fn without_parameters(name: &str) -> &str {
    let mut depth = 0i32;
    for (at, c) in name.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            '(' if depth == 0 && at > 0 => return &name[..at],
            _ => {}
        }
    }
    name
}

/// How closely a symbol matches a name: the best level found wins, so a function named
/// exactly is not joined by namesakes in other namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// The path ends with the name at a `::` boundary ("Parser::parse" for
    /// "app::Parser::parse").
    Suffix,
    /// The whole demangled name, with or without its parameters.
    Demangled,
    /// The symbol, or its callable clones.
    Symbol,
}

fn level(symbol: &str, wanted: &str) -> Option<Level> {
    let base = callable_base(symbol)?;
    if base == wanted {
        return Some(Level::Symbol);
    }
    let name = demangled(base)?;
    let plain = without_parameters(&name);
    if name == wanted || plain == wanted {
        return Some(Level::Demangled);
    }
    plain
        .strip_suffix(wanted)
        .is_some_and(|head| head.ends_with("::"))
        .then_some(Level::Suffix)
}

/// The symbols of `symbols` that `wanted` names, at the best level any of them reaches:
/// the symbol and its callable clones; else the C++ or Rust functions whose demangled
/// name is it (every overload); else those whose path ends with it.
pub fn matching<'a>(wanted: &str, symbols: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut best: Option<Level> = None;
    let mut found = Vec::new();
    for symbol in symbols {
        let Some(at) = level(symbol, wanted) else {
            continue;
        };
        if best.is_none_or(|best| at > best) {
            best = Some(at);
            found.clear();
        }
        if best == Some(at) {
            found.push(symbol);
        }
    }
    found
}

/// Up to three names of `symbols` (as a user would write them: plain, or demangled without
/// parameters) closest to `wanted`, for a message when nothing matches.
pub fn closest<'a>(wanted: &str, symbols: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(usize, String)> = symbols
        .into_iter()
        .filter_map(callable_base)
        .map(|base| {
            demangled(base)
                .map(|name| without_parameters(&name).to_string())
                .unwrap_or_else(|| base.to_string())
        })
        .filter_map(|name| {
            let distance = strsim::levenshtein(wanted, &name);
            let close = distance <= (wanted.len() / 3).max(2)
                || (wanted.len() >= 4 && name.contains(wanted));
            close.then_some((distance, name))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_are_their_function_but_a_cold_part_is_nothing() {
        assert_eq!(callable_base("qz_ingest_record"), Some("qz_ingest_record"));
        assert_eq!(
            callable_base("qz_ingest_record.isra.0"),
            Some("qz_ingest_record")
        );
        assert_eq!(callable_base("parse.constprop.0.isra.0"), Some("parse"));
        assert_eq!(callable_base("run.part.3"), Some("run"));
        assert_eq!(callable_base("f.lto_priv.0"), Some("f"));
        assert_eq!(callable_base("run.cold"), None);
        assert_eq!(callable_base("run.part.0.cold"), None);
        assert_eq!(callable_base("run.cold.1"), None);
        // A dot that is no clone's stays.
        assert_eq!(callable_base("version.1"), Some("version.1"));
        assert_eq!(callable_base("a.b"), Some("a.b"));
    }

    #[test]
    fn names_match_symbols_at_the_best_level() {
        let symbols = [
            "qz_ingest_record.isra.0",
            "qz_ingest_record.cold",
            "qz_flush",
            // app::Parser::parse(char const*) and its overload parse(int)
            "_ZN3app6Parser5parseEPKc",
            "_ZN3app6Parser5parseEi",
            // other::parse(int)
            "_ZN5other5parseEi",
            // Rust legacy mangling: server::handle_request
            "_ZN6server14handle_request17h0123456789abcdefE",
        ];
        assert_eq!(
            matching("qz_ingest_record", symbols),
            ["qz_ingest_record.isra.0"]
        );
        assert_eq!(
            matching("app::Parser::parse", symbols),
            ["_ZN3app6Parser5parseEPKc", "_ZN3app6Parser5parseEi"]
        );
        assert_eq!(
            matching("app::Parser::parse(int)", symbols),
            ["_ZN3app6Parser5parseEi"]
        );
        assert_eq!(
            matching("Parser::parse", symbols),
            ["_ZN3app6Parser5parseEPKc", "_ZN3app6Parser5parseEi"]
        );
        assert_eq!(
            matching("server::handle_request", symbols),
            ["_ZN6server14handle_request17h0123456789abcdefE"]
        );
        assert_eq!(
            matching("handle_request", symbols),
            ["_ZN6server14handle_request17h0123456789abcdefE"]
        );
        // The mangled name itself still names its symbol alone.
        assert_eq!(
            matching("_ZN5other5parseEi", symbols),
            ["_ZN5other5parseEi"]
        );
        assert!(matching("qz_ingest", symbols).is_empty());
        assert_eq!(closest("qz_ingest_recrd", symbols), ["qz_ingest_record"]);
        assert_eq!(closest("qz_ingest", symbols), ["qz_ingest_record"]);
    }

    #[test]
    fn parameters_go_but_templates_stay() {
        assert_eq!(without_parameters("ns::f(int) const"), "ns::f");
        assert_eq!(
            without_parameters("ns::g<void (*)(int)>(int)"),
            "ns::g<void (*)(int)>"
        );
        assert_eq!(without_parameters("plain"), "plain");
    }
}
