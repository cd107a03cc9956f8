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
    let text =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    from_bytes(&text, &path.display().to_string())
}

/// A saved report's bytes (named `shown` in the message) as a report, or one line saying why
/// they are not one.
pub fn from_bytes(bytes: &[u8], shown: &str) -> Result<Report, String> {
    let report = serde_json::from_slice::<Report>(bytes).map_err(|err| {
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
    use super::*;
    use crate::export::report::fixtures::{sample_report, scoped_report};

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
    fn snapshot() {
        insta::assert_snapshot!(render(&sample_report()));
    }

    #[test]
    fn every_schema_required_field_is_present() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../../docs/report.schema.json"))
                .expect("schema");
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

        let scoped: serde_json::Value =
            serde_json::from_str(&render(&scoped_report())).expect("json");
        let scope = &scoped["scopes"][0];
        check(scope, &schema["$defs"]["scope"]);
        check(&scope["labels"][0], &schema["$defs"]["scope_label"]);
        check(&scope["top_stacks"][0], &schema["$defs"]["scope_stack"]);
        check(&scoped["suspects"][0], &schema["$defs"]["suspect"]);
        // Documented as arrays of those definitions.
        for field in ["scopes", "suspects"] {
            assert!(
                schema["properties"][field]["items"]["$ref"].is_string(),
                "{field}"
            );
        }
        let back: Report = serde_json::from_value(scoped).expect("reads back");
        assert_eq!(back, scoped_report());

        let go: serde_json::Value =
            serde_json::from_str(&render(&crate::export::report::fixtures::go_report()))
                .expect("json");
        check(&go["goroutines"], &schema["$defs"]["goroutines"]);
        check(
            &go["goroutines"]["sites"][0],
            &schema["$defs"]["goroutine_site"],
        );
        check(
            &go["goroutines"]["sites"][0]["site"],
            &schema["$defs"]["frame"],
        );
        check(
            &go["runtimes"][0],
            &schema["properties"]["runtimes"]["items"],
        );
        assert_eq!(
            schema["properties"]["goroutines"]["$ref"], "#/$defs/goroutines",
            "goroutines documented"
        );
        let back: Report = serde_json::from_value(go).expect("reads back");
        assert_eq!(back, crate::export::report::fixtures::go_report());
    }
}
