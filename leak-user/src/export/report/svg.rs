//! Interactive flame graph (SVG, drawn by inferno) of the memory each stack still holds. Every
//! stack stands on a frame naming its verdict, and leaking stacks are drawn red, so the leaks
//! are what the eye finds first. The same report always gives the same bytes.
use inferno::flamegraph::{
    self, Options,
    color::{Color, PaletteMap},
};

use crate::{
    export::report::folded,
    model::units::human_bytes,
    model::{Report, Verdict},
};

pub fn render(report: &Report) -> Vec<u8> {
    let title = format!(
        "leaktrace: outstanding memory of pid {} ({})",
        report.target.pid,
        report.target.describe()
    );
    let mut colors = PaletteMap::default();
    let mut lines = Vec::new();
    for stack in folded::holding_memory(report) {
        let highlight = Highlight::of(stack.verdict);
        let names: Vec<String> = std::iter::once(stack.verdict.as_str().to_string())
            .chain(folded::frame_names(stack))
            .map(|name| {
                let tagged = format!("{name}{}", highlight.tag());
                colors.insert(&tagged, highlight.color(&name));
                tagged
            })
            .collect();
        let names = names.join(";");
        for (leaf, bytes) in folded::leaves(stack) {
            match leaf {
                Some(class) => {
                    colors.insert(&class, class_color(&class));
                    lines.push(format!("{names};{class} {bytes}"));
                }
                None => lines.push(format!("{names} {bytes}")),
            }
        }
    }
    // inferno refuses to draw nothing; say so in a picture of the same kind instead.
    if lines.is_empty() {
        return message_svg(&title, "no outstanding memory");
    }

    let mut options = Options::default();
    options.title = title.clone();
    options.subtitle = Some(subtitle(report));
    options.count_name = "bytes".into();
    // Every name has a colour in the map; `deterministic` covers inferno's own "all" frame.
    options.deterministic = true;
    options.palette_map = Some(&mut colors);
    let mut svg = Vec::new();
    match flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg) {
        Ok(()) => svg,
        Err(err) => message_svg(&title, &format!("could not draw the flame graph: {err}")),
    }
}

/// "17.50 KiB in 4 stacks over 10.0s; red: leaking (1 stack, 10.00 KiB, +1.00 KiB/s:
/// leak_slowly); orange: growing", and the stacks beyond --top. Leaks are often thin slivers
/// next to a large stable buffer, so the subtitle names them.
fn subtitle(report: &Report) -> String {
    let drawn: Vec<_> = folded::holding_memory(report).collect();
    let held: u64 = drawn.iter().map(|stack| stack.outstanding_bytes).sum();
    let mut subtitle = format!(
        "{} in {} over {:.1}s",
        human_bytes(held as f64),
        stacks(drawn.len() as u64),
        report.duration_s
    );
    let leaking: Vec<_> = drawn
        .iter()
        .filter(|stack| stack.verdict == Verdict::Leaking)
        .collect();
    if leaking.is_empty() {
        subtitle += "; no leaking stacks (they would be red)";
    } else {
        let bytes: u64 = leaking.iter().map(|stack| stack.outstanding_bytes).sum();
        let rate: f64 = leaking.iter().map(|stack| stack.growth_bytes_per_s).sum();
        let mut names: Vec<String> = leaking
            .iter()
            .filter_map(|stack| stack.frames.first().map(folded::frame_name))
            .take(3)
            .collect();
        if leaking.len() > names.len() {
            names.push("…".into());
        }
        subtitle += &format!(
            "; red: leaking ({}, {}, +{}/s: {})",
            stacks(leaking.len() as u64),
            human_bytes(bytes as f64),
            human_bytes(rate),
            names.join(", ")
        );
    }
    if drawn.iter().any(|stack| stack.verdict == Verdict::Growing) {
        subtitle += "; orange: growing";
    }
    if report.reachability_scan.is_some() {
        let mut lost = 0;
        let mut reachable = 0;
        for reachability in drawn.iter().filter_map(|stack| stack.reachability) {
            lost += reachability.lost_bytes();
            reachable += reachability.reachable.bytes;
        }
        subtitle += &format!(
            "; top frames by reachability: {} lost (dark red, pink), {} still reachable (green)",
            human_bytes(lost as f64),
            human_bytes(reachable as f64)
        );
    }
    if report.omitted_stacks > 0 {
        subtitle += &format!(
            "; beyond --top, not drawn: {} holding {}",
            stacks(report.omitted_stacks),
            human_bytes(report.omitted_outstanding_bytes as f64)
        );
    }
    subtitle
}

/// "1 stack", "4 stacks".
fn stacks(count: u64) -> String {
    format!("{count} stack{}", if count == 1 { "" } else { "s" })
}

/// How a stack is coloured, by verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Highlight {
    Leaking,
    Growing,
    Calm,
}

impl Highlight {
    fn of(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Leaking => Highlight::Leaking,
            Verdict::Suspect | Verdict::Growing => Highlight::Growing,
            Verdict::Reachable | Verdict::Stable | Verdict::Transient => Highlight::Calm,
        }
    }

    /// inferno picks colours by frame name and hides a trailing `_[k]` or `_[w]` from labels,
    /// tooltips and search. The tag gives a function its own colour in a leaking stack, even
    /// when the same function also appears in a calm one, without changing what people see.
    fn tag(self) -> &'static str {
        match self {
            Highlight::Leaking => "_[k]",
            Highlight::Growing => "_[w]",
            Highlight::Calm => "",
        }
    }

    /// A shade of red, orange or grey-blue, varied by name so neighbouring frames differ.
    fn color(self, name: &str) -> Color {
        let hash = fnv1a(name);
        let vary = |shift: u32, range: u64| ((hash >> shift) % range) as u8;
        let (r, g, b) = match self {
            Highlight::Leaking => (205 + vary(0, 50), 30 + vary(8, 60), 30 + vary(16, 40)),
            Highlight::Growing => (230 + vary(0, 25), 140 + vary(8, 50), 20 + vary(16, 40)),
            Highlight::Calm => (150 + vary(0, 40), 175 + vary(8, 40), 200 + vary(16, 40)),
        };
        Color { r, g, b }
    }
}

/// The colour of a reachability leaf (see `folded::leaves`): lost memory dark red, memory
/// only lost memory points to pink, memory only pointed into purple, reachable memory green.
fn class_color(leaf: &str) -> Color {
    let (r, g, b) = match leaf {
        "[lost]" => (150, 0, 20),
        "[indirectly lost]" => (215, 90, 140),
        "[interior pointers only]" => (160, 110, 210),
        _ => (90, 185, 90),
    };
    Color { r, g, b }
}

/// A hash that is the same on every machine and run, so colours are too.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A small SVG that says something in place of a flame graph.
fn message_svg(title: &str, message: &str) -> Vec<u8> {
    format!(
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="80" viewBox="0 0 1200 80" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="#eeeeee"/>
<text x="600" y="24" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>
<text x="600" y="56" text-anchor="middle" font-family="Verdana" font-size="12">{}</text>
</svg>
"##,
        xml_escape(title),
        xml_escape(message)
    )
    .into_bytes()
}

fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::report::fixtures::{empty_report, sample_report, scanned_report};

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        // inferno declares the SVG 1.1 DTD, which roxmltree only reads when asked to.
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..roxmltree::ParsingOptions::default()
        };
        roxmltree::Document::parse_with_options(svg, options).expect("well-formed XML")
    }

    /// The fill of the frame whose tooltip starts with `name`, as (r, g, b).
    fn fill_of(document: &roxmltree::Document<'_>, name: &str) -> (u8, u8, u8) {
        let frame = document
            .descendants()
            .filter(|node| node.has_tag_name("g"))
            .find(|g| {
                g.children().any(|child| {
                    child.has_tag_name("title")
                        && child
                            .text()
                            .is_some_and(|text| text.starts_with(&format!("{name} (")))
                })
            })
            .unwrap_or_else(|| panic!("no frame named {name}"));
        let fill = frame
            .children()
            .find(|child| child.has_tag_name("rect"))
            .and_then(|rect| rect.attribute("fill"))
            .expect("frame rect with a fill");
        let parts: Vec<u8> = fill
            .trim_start_matches("rgb(")
            .trim_end_matches(')')
            .split(',')
            .map(|part| part.parse().expect("colour component"))
            .collect();
        (parts[0], parts[1], parts[2])
    }

    fn is_red((r, g, b): (u8, u8, u8)) -> bool {
        r >= 200 && g < 100 && b < 100
    }

    #[test]
    fn leaking_stacks_are_red_and_names_read_as_in_the_program() {
        let svg = String::from_utf8(render(&sample_report())).expect("UTF-8");
        let document = parse(&svg);
        assert!(svg.contains("leaktrace: outstanding memory of pid 42 (/usr/bin/demo)"));
        // Tags that pick colours never show.
        assert!(!svg.contains("_[k]"), "a colour tag leaked into the labels");
        for leaking in [
            "leaking",
            "leak_slowly",
            "libplugin.so+0x4f2a",
            "0x7ffd1000",
        ] {
            assert!(is_red(fill_of(&document, leaking)), "{leaking} is not red");
        }
        for calm in [
            "stable",
            "Cache<std::string, int>::insert(std::string const&)",
            "[unknown stack]",
        ] {
            assert!(!is_red(fill_of(&document, calm)), "{calm} is red");
        }
        // The transient stack holds nothing, so it has no frame.
        assert!(!svg.contains("parse_request"));
    }

    #[test]
    fn reachability_classes_are_leaves_of_their_own_colour() {
        let svg = String::from_utf8(render(&scanned_report())).expect("UTF-8");
        let document = parse(&svg);
        assert_eq!(fill_of(&document, "[lost]"), (150, 0, 20));
        assert_eq!(fill_of(&document, "[still reachable]"), (90, 185, 90));
        assert_eq!(
            fill_of(&document, "[interior pointers only]"),
            (160, 110, 210)
        );
        // The leaking stack is still red above its classes.
        assert!(is_red(fill_of(&document, "leak_slowly")));
        assert!(svg.contains("11.50 KiB lost"), "subtitle: {svg}");
        assert!(svg.contains("6.95 KiB still reachable"));
    }

    #[test]
    fn the_same_report_gives_the_same_bytes() {
        assert_eq!(render(&sample_report()), render(&sample_report()));
    }

    #[test]
    fn empty_report_says_so_in_a_valid_svg() {
        let svg = String::from_utf8(render(&empty_report())).expect("UTF-8");
        let document = parse(&svg);
        assert_eq!(document.root_element().tag_name().name(), "svg");
        assert!(svg.contains("no outstanding memory"));
    }

    #[test]
    fn message_text_is_escaped() {
        let svg = String::from_utf8(message_svg("a <b> & \"c\"", "d'e")).expect("UTF-8");
        let document = parse(&svg);
        let texts: Vec<&str> = document
            .descendants()
            .filter_map(|node| node.has_tag_name("text").then(|| node.text()).flatten())
            .collect();
        assert_eq!(texts, ["a <b> & \"c\"", "d'e"]);
    }

    #[test]
    fn snapshot() {
        let svg = String::from_utf8(render(&sample_report())).expect("UTF-8");
        insta::assert_snapshot!(svg);
    }
}
