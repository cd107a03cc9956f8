//! JSON report: the [`Report`] model serialized as documented in docs/report.schema.json.
use std::path::Path;

use crate::model::{REPORT_VERSION, Report};

pub fn render(report: &Report) -> String {
    // Serializing plain data structs cannot fail.
    let mut text = serde_json::to_string_pretty(report).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads a saved JSON report.
pub fn parse(text: &str) -> Result<Report, serde_json::Error> {
    serde_json::from_str(text)
}

/// Reads a saved report file, with one line saying what is wrong when it cannot.
pub fn read(path: &Path) -> Result<Report, String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
    let report = parse(&text).map_err(|err| {
        format!(
            "{shown} is not a leaktrace JSON report ({err}); write one with `leaktrace attach … --format json -o FILE`"
        )
    })?;
    if report.version > REPORT_VERSION {
        return Err(format!(
            "{shown} is a version {} report; this leaktrace reads up to version {REPORT_VERSION}: upgrade leaktrace",
            report.version
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Frame, Origin, StackReport, Target, Verdict};

    pub fn sample_report() -> Report {
        Report {
            version: REPORT_VERSION,
            target: Target {
                pid: 42,
                exe: "/usr/bin/demo".into(),
                command_line: "demo --leak".into(),
            },
            mode: "attach".into(),
            duration_s: 10.0,
            exited: None,
            dropped: BTreeMap::from([("stack_id_collision".to_string(), 0)]),
            events: BTreeMap::from([("allocations".to_string(), 160)]),
            omitted_stacks: 0,
            omitted_outstanding_bytes: 0,
            process: None,
            stacks: vec![StackReport {
                verdict: Verdict::Leaking,
                origin: Origin::Heap,
                outstanding_bytes: 10240,
                outstanding_allocs: 160,
                total_allocs: 160,
                total_frees: 0,
                total_bytes: 10240,
                oldest_age_s: Some(9.8),
                growth_bytes_per_s: 1024.0,
                confidence: 0.9,
                growth_onset: Some(0.2),
                r_squared: 0.99,
                survival_fraction: 1.0,
                series: Vec::new(),
                frames: vec![Frame {
                    function: Some("leak_slowly".into()),
                    file: Some("/src/demo.c".into()),
                    line: Some(42),
                    module: Some("/usr/bin/demo".into()),
                    address: 0x55d0c2a01234,
                    module_offset: Some(0x1234),
                    inlined: false,
                }],
            }],
        }
    }

    #[test]
    fn round_trips_and_uses_documented_names() {
        let report = sample_report();
        let text = render(&report);
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid json");
        assert_eq!(value["version"], REPORT_VERSION);
        assert_eq!(value["target"]["pid"], 42);
        assert_eq!(value["stacks"][0]["verdict"], "leaking");
        assert_eq!(value["stacks"][0]["outstanding_bytes"], 10240);
        assert_eq!(value["stacks"][0]["frames"][0]["function"], "leak_slowly");
        assert_eq!(value["stacks"][0]["frames"][0]["address"], "0x55d0c2a01234");
        assert_eq!(value["dropped"]["stack_id_collision"], 0);
        assert_eq!(parse(&text).expect("parse back"), report);
    }

    #[test]
    fn every_schema_required_field_is_present() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/report.schema.json")).expect("schema");
        let value: serde_json::Value =
            serde_json::from_str(&render(&sample_report())).expect("json");
        let check = |object: &serde_json::Value, schema: &serde_json::Value| {
            for field in schema["required"].as_array().expect("required list") {
                let field = field.as_str().expect("field name");
                assert!(object.get(field).is_some(), "missing {field}");
            }
        };
        check(&value, &schema);
        check(&value["stacks"][0], &schema["$defs"]["stack"]);
        check(&value["stacks"][0]["frames"][0], &schema["$defs"]["frame"]);
    }
}
