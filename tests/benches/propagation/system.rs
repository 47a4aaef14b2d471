//! The machine the figures come from, for the report's header.

use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".to_string())
}

/// Date, kernel, CPU, cores, load and commit, one per line.
pub fn describe() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string());
    format!(
        "date:   {}\nkernel: {}\ncpu:    {cpu}, {cores} cores (nproc)\nload:   {load} at start\ncommit: {}",
        run("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        run("uname", &["-srm"]),
        run("git", &["rev-parse", "--short", "HEAD"]),
    )
}
