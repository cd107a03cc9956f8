//! Analysing: the drained stacks grouped by frames and judged into the report's stacks
//! (`aggregate`), stacks' histories into trends and verdicts (`verdicts`), what the runtimes
//! keep for themselves (`c_runtime`), lost and reachable blocks (`reachability`,
//! `exit_stack`), request scopes and their suspects, suppressions.
pub mod aggregate;
pub mod c_runtime;
pub mod exit_stack;
pub mod go_heap;
pub mod reachability;
pub mod scope;
pub mod suppress;
pub mod suspects;
pub mod verdicts;
