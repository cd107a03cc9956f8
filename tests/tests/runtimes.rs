//! End-to-end: language runtimes. A Node.js service leaking through a native path (Buffers,
//! which Node allocates with malloc) is named by its JavaScript function, through the perf
//! map `node --perf-basic-prof` writes; without the map, the report says how to get one.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use leaktrace_tests::{bpf_available, leaktrace, scratch_dir, targets_dir, tool_available, u64_of};

const NODE: &str = "/usr/bin/node";

/// node running tests/targets/leaky_node.js, killed when dropped (only ever our child).
struct Node {
    child: Child,
}

impl Node {
    fn start(flags: &[&str]) -> Node {
        let mut child = Command::new(NODE)
            .args(flags)
            .arg(targets_dir().join("leaky_node.js"))
            .arg("120")
            // --perf-basic-prof also makes V8 write isolate-…-PID-v8.log to its directory.
            .current_dir(scratch_dir())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("node's first line");
        assert_eq!(line.trim(), "ready");
        // Let the hot functions get compiled (their perf map lines are written then).
        std::thread::sleep(std::time::Duration::from_secs(2));
        Node { child }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
        let log_suffix = format!("-{pid}-v8.log");
        for entry in std::fs::read_dir(scratch_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("isolate-") && name.ends_with(&log_suffix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn has_frame(stack: &serde_json::Value, function: &str) -> bool {
    stack["frames"]
        .as_array()
        .is_some_and(|frames| frames.iter().any(|frame| frame["function"] == function))
}

#[test]
fn node_functions_name_the_leak() {
    if !bpf_available("node_functions_name_the_leak")
        || !tool_available("node_functions_name_the_leak", Path::new(NODE))
    {
        return;
    }
    let node = Node::start(&[
        "--perf-basic-prof",
        "--interpreted-frames-native-stack",
        "--expose-gc",
    ]);
    let traced = leaktrace(
        "node_perf_map",
        &["attach", "--pid", &node.pid(), "-d", "6s", "--top", "0"],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let runtime = &traced.report["runtimes"][0];
    assert_eq!(runtime["runtime"], "node", "{}", traced.report["runtimes"]);
    assert_eq!(
        runtime["perf_map"],
        format!("/tmp/perf-{}.map", node.pid()),
        "{runtime}"
    );
    let leak = traced
        .stacks()
        .iter()
        .find(|stack| stack["verdict"] == "leaking" && has_frame(stack, "stashUpload"))
        .unwrap_or_else(|| {
            panic!(
                "no leaking stack through stashUpload: {}",
                traced.describe()
            )
        });
    // 10 Buffers of 16 KiB every 100 ms: 1.6 MB/s, kept.
    assert!(u64_of(&leak["outstanding_bytes"]) >= 40 * 16384, "{leak}");
    let frame = leak["frames"]
        .as_array()
        .and_then(|frames| {
            frames
                .iter()
                .find(|frame| frame["function"] == "stashUpload")
        })
        .expect("the frame");
    assert_eq!(frame["module"], "[jit]", "{frame}");
    assert!(
        frame["file"]
            .as_str()
            .is_some_and(|file| file.ends_with("leaky_node.js")),
        "{frame}"
    );
    assert_eq!(frame["line"], 10, "{frame}");
    // The JavaScript callers are named too: node's timer loop called the interval callback.
    assert!(has_frame(leak, "listOnTimeout"), "{leak}");
    // handleRead's Buffers are collected (a GC every 500 ms): never a leak.
    assert!(
        !traced
            .stacks()
            .iter()
            .any(|stack| stack["verdict"] == "leaking" && has_frame(stack, "handleRead")),
        "{}",
        traced.describe()
    );
}

#[test]
fn node_without_a_perf_map_is_told_how() {
    if !bpf_available("node_without_a_perf_map_is_told_how")
        || !tool_available("node_without_a_perf_map_is_told_how", Path::new(NODE))
    {
        return;
    }
    let node = Node::start(&[]);
    let traced = leaktrace(
        "node_no_perf_map",
        &["attach", "--pid", &node.pid(), "-d", "2s"],
    );
    assert_eq!(traced.output.status.code(), Some(0), "{}", traced.stderr());
    let runtime = &traced.report["runtimes"][0];
    assert_eq!(runtime["runtime"], "node", "{}", traced.report["runtimes"]);
    assert!(runtime["perf_map"].is_null(), "{runtime}");
    assert!(
        runtime["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("--perf-basic-prof")),
        "{runtime}"
    );
}
