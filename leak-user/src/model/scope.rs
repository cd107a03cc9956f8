//! Request scopes (`--scope FUNCTION[:argN=str|int]`): the flag, and what the kernel's
//! scope maps said about each (function, label) — collected by `collect::scope`, analysed by
//! `analyze::scope`.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use leak_common::{
    MAX_SCOPES, SCOPE_LABEL_INT, SCOPE_LABEL_STR, SCOPE_NO_LABEL, ScopeLabel, ScopeShape,
    ScopeTotals,
};

/// What labels a scope's calls: a register argument (0-based) read as an integer or as a
/// pointer to a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelArg {
    pub index: u8,
    pub kind: LabelKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelKind {
    Int,
    Str,
}

/// One `--scope` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeSpec {
    pub function: String,
    pub label: Option<LabelArg>,
}

impl ScopeSpec {
    /// The kernel's view of it, as scope number `index`.
    pub fn shape(&self, index: u8) -> ScopeShape {
        ScopeShape {
            index,
            label_arg: self.label.map_or(SCOPE_NO_LABEL, |label| label.index),
            label_kind: match self.label.map(|label| label.kind) {
                Some(LabelKind::Str) => SCOPE_LABEL_STR,
                _ => SCOPE_LABEL_INT,
            },
        }
    }

    /// "handle_request:arg1=str", as given.
    pub fn describe(&self) -> String {
        match self.label {
            Some(label) => format!(
                "{}:arg{}={}",
                self.function,
                label.index,
                match label.kind {
                    LabelKind::Int => "int",
                    LabelKind::Str => "str",
                }
            ),
            None => self.function.clone(),
        }
    }
}

/// Parses `FUNCTION` or `FUNCTION:argN=str|int` (N from 0, the first argument, to 5).
pub fn parse_scope(text: &str) -> Result<ScopeSpec, String> {
    // The last `:` starts the label, unless it belongs to a `::` of a C++ name.
    let (function, label) = match text.rsplit_once(':') {
        Some((function, label)) if !function.ends_with(':') && !label.is_empty() => {
            (function, Some(label))
        }
        _ => (text, None),
    };
    // Whitespace only inside a C++ parameter list ("parse(char const*)").
    let outside_parameters = function.split('(').next().unwrap_or(function);
    if function.is_empty() || outside_parameters.contains(char::is_whitespace) {
        return Err(format!(
            "'{text}': give a function name, optionally with :argN=str or :argN=int"
        ));
    }
    let label = match label {
        None => None,
        Some(label) => {
            let parsed = label.strip_prefix("arg").and_then(|rest| {
                let (index, kind) = rest.split_once('=')?;
                let index: u8 = index
                    .parse()
                    .ok()
                    .filter(|index| *index < leak_common::ARGUMENT_REGISTERS)?;
                let kind = match kind {
                    "str" => LabelKind::Str,
                    "int" => LabelKind::Int,
                    _ => return None,
                };
                Some(LabelArg { index, kind })
            });
            Some(parsed.ok_or_else(|| {
                format!(
                    "'{text}': the label is argN=str or argN=int, N the argument from 0 (the first) to 5"
                )
            })?)
        }
    };
    Ok(ScopeSpec {
        function: function.to_string(),
        label,
    })
}

/// Checks the list of --scope flags as a whole.
pub fn check_scopes(scopes: &[ScopeSpec]) -> Result<(), String> {
    if scopes.len() > MAX_SCOPES as usize {
        return Err(format!(
            "--scope is given {} times; at most {MAX_SCOPES} functions can be scopes",
            scopes.len()
        ));
    }
    let mut seen = HashSet::new();
    if let Some(twice) = scopes.iter().find(|spec| !seen.insert(&spec.function)) {
        return Err(format!(
            "--scope {} is given twice: one label argument per function",
            twice.function
        ));
    }
    Ok(())
}

/// The label of a tag as people read it: the string, or the integer in decimal.
pub fn label_text(label: &ScopeLabel) -> String {
    if label.kind == u32::from(SCOPE_LABEL_STR) {
        let end = label
            .text
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(label.text.len());
        String::from_utf8_lossy(&label.text[..end]).into_owned()
    } else {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&label.text[..8]);
        u64::from_le_bytes(bytes).to_string()
    }
}

/// What one tag ((function, label), or a function's calls without a label of their own)
/// did, summed over the CPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TagFigures {
    /// Calls, bytes allocated, held now (negative sums read as 0) and held at return.
    pub totals: ScopeTotals,
    /// Calls followed to `retain_after` past their return, and what they then still held.
    pub followed_calls: u64,
    pub held_later_bytes: u64,
    /// Of the returned calls that held nothing, the ones that returned at least `retain_after` ago (as of the last sample
    /// that old): they count with the followed calls.
    pub returned_empty_aged: u64,
    /// (ns, returned_empty) at recent samples, back to `retain_after` ago.
    pub empty_history: VecDeque<(u64, u64)>,
    /// When its first call was seen, ns (CLOCK_MONOTONIC), at sample resolution.
    pub first_seen_ns: Option<u64>,
    /// (ns, held bytes) at each sample.
    pub series: Vec<(u64, u64)>,
}

/// What the scope maps said so far, as the analysis reads it.
#[derive(Debug, Default)]
pub struct ScopeRecords {
    /// By tag.
    pub figures: BTreeMap<u32, TagFigures>,
    /// Tag → (scope index, label); tags 1..=MAX_SCOPES have no label.
    pub labels: HashMap<u32, (u32, String)>,
    /// By scope index: (ns, bytes its calls hold, all labels together) at each sample.
    pub scope_series: BTreeMap<u32, Vec<(u64, u64)>>,
    /// By scope index: the functions probed for it ("symbol in module"), as the report
    /// lists them.
    pub probed: Vec<Vec<String>>,
}

impl ScopeRecords {
    /// The scope function (index into the --scope list) and label of a tag: tags
    /// 1..=MAX_SCOPES are a function's calls without a label of their own.
    pub fn describe_tag(&self, tag: u32) -> Option<(u32, Option<&str>)> {
        if (1..=MAX_SCOPES).contains(&tag) {
            return Some((tag - 1, None));
        }
        self.labels
            .get(&tag)
            .map(|(index, label)| (*index, Some(label.as_str())))
    }
}

pub fn add_figures(sum: &mut TagFigures, figures: &TagFigures) {
    sum.totals.add(&figures.totals);
    sum.followed_calls += figures.followed_calls;
    sum.held_later_bytes += figures.held_later_bytes;
    sum.returned_empty_aged += figures.returned_empty_aged;
    sum.first_seen_ns = match (sum.first_seen_ns, figures.first_seen_ns) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
}

/// A wrapping counter read as two's complement, negative values as 0.
pub fn signed_floor(value: u64) -> u64 {
    u64::try_from(value as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_functions_and_label_arguments() {
        assert_eq!(
            parse_scope("handle_request"),
            Ok(ScopeSpec {
                function: "handle_request".into(),
                label: None
            })
        );
        let spec = parse_scope("handle_request:arg1=str").expect("valid");
        assert_eq!(
            spec.label,
            Some(LabelArg {
                index: 1,
                kind: LabelKind::Str
            })
        );
        assert_eq!(spec.describe(), "handle_request:arg1=str");
        assert_eq!(spec.shape(3).label_arg, 1);
        assert_eq!(spec.shape(3).label_kind, SCOPE_LABEL_STR);
        assert_eq!(
            parse_scope("Server::handle:arg0=int").map(|s| s.function),
            Ok("Server::handle".to_string())
        );
        assert_eq!(parse_scope("Server::handle").map(|s| s.label), Ok(None));
        assert_eq!(
            parse_scope("Parser::parse(char const*)").map(|s| s.function),
            Ok("Parser::parse(char const*)".to_string())
        );
        assert!(parse_scope("handle request").is_err());
        for bad in [
            "",
            ":arg1=str",
            "f:arg6=str",
            "f:arg1=float",
            "f:x",
            "two words",
        ] {
            assert!(parse_scope(bad).is_err(), "{bad}");
        }
        let many: Vec<ScopeSpec> = (0..=MAX_SCOPES)
            .map(|i| parse_scope(&format!("f{i}")).expect("valid"))
            .collect();
        assert!(check_scopes(&many).is_err());
        assert!(check_scopes(&many[..2]).is_ok());
        let twice = [
            parse_scope("f").expect("f"),
            parse_scope("f:arg0=int").expect("f"),
        ];
        assert!(check_scopes(&twice).is_err());
    }

    #[test]
    fn labels_read_as_text_or_decimal() {
        let mut label = ScopeLabel {
            index: 0,
            kind: u32::from(SCOPE_LABEL_STR),
            text: [0; leak_common::SCOPE_LABEL_BYTES],
        };
        label.text[..7].copy_from_slice(b"/upload");
        assert_eq!(label_text(&label), "/upload");
        label.kind = u32::from(SCOPE_LABEL_INT);
        label.text = [0; leak_common::SCOPE_LABEL_BYTES];
        label.text[..8].copy_from_slice(&404u64.to_le_bytes());
        assert_eq!(label_text(&label), "404");
    }
}
