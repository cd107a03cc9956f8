//! The soak section of BENCHMARKS.md: `soak` writes it, `bench` rewrites the rest of the
//! document around it.

/// Where the soak section starts and ends in BENCHMARKS.md.
pub const SECTION_START: &str = "<!-- soak: written by cargo xtask soak -->";
pub const SECTION_END: &str = "<!-- soak end -->";

/// The soak section of a BENCHMARKS.md text, markers included, if it has one.
pub fn section_of(text: &str) -> Option<&str> {
    let start = text.find(SECTION_START)?;
    let end = text[start..].find(SECTION_END)? + start + SECTION_END.len();
    Some(&text[start..end])
}

/// `text` with its soak section replaced by `section` (appended when it has none).
pub fn with_section(text: &str, section: &str) -> String {
    let section = section.trim_end();
    match section_of(text) {
        Some(old) => text.replacen(old, section, 1),
        None => format!("{}\n\n{section}\n", text.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_or_appended() {
        let section = format!("{SECTION_START}\nnew\n{SECTION_END}");
        let without = "# Benchmarks\n\ntext\n";
        let appended = with_section(without, &section);
        assert_eq!(section_of(&appended), Some(section.as_str()));
        let old = format!("# B\n\n{SECTION_START}\nold\n{SECTION_END}\n\nafter\n");
        let replaced = with_section(&old, &section);
        assert_eq!(replaced, format!("# B\n\n{section}\n\nafter\n"));
    }
}
