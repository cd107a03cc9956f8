//! The modes leaktrace runs in; each drives the stages (probe → collect → symbols → analyze
//! → export) and does nothing else: `session` (`attach` and `run`) and `watch` (the
//! long-running sidecar, in two gears).
pub mod session;
pub mod watch;
