//! Routing tables coming in and load reports going out: the controller's
//! stream ([`stream`]), the standalone file ([`file`](mod@file)), the last table kept
//! on disk ([`persist`]) and the reports to the controller ([`report`]).

pub mod file;
pub mod persist;
pub mod report;
pub mod stream;
