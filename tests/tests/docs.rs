//! The reference in `docs/` against the code, so neither drifts from the
//! other: every flag and its variable (`docs/cli.md`), every metric and its
//! type (`docs/metrics.md`), every field of both CRDs (`docs/crds.md`). Each
//! check names what is missing on which side; adding a flag, a metric or a
//! field means adding its row, and nothing else.
//!
//! The pages are read as Markdown tables: a heading whose first `code` span
//! names a section (`sluice-dataplane demo`, `BackendPool`), and under it
//! (subheadings included) the rows of tables whose first column is headed
//! `flag`, `metric` or `field`, keyed by the first `code` span of their first
//! cell (`--http ADDR`, `sluice_requests_total`, `spec.hosts`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clap::CommandFactory;
use serde_json::Value;

/// One table row: its key (the first cell's first code span) and every cell.
#[derive(Debug)]
struct Row {
    key: String,
    cells: Vec<String>,
}

/// A page's rows by section, from the tables whose first column is headed
/// `column` (other tables on the page are prose).
fn read_page(name: &str, column: &str) -> BTreeMap<String, Vec<Row>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut sections: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    // The section, and the level of the heading that opened it.
    let mut current: Option<String> = None;
    let mut level = 0;
    // Whether the table being read is one of ours.
    let mut ours = false;
    for line in text.lines() {
        if line.starts_with('#') {
            let depth = line.len() - line.trim_start_matches('#').len();
            match first_code(line) {
                Some(section) => {
                    sections.entry(section.clone()).or_default();
                    (current, level) = (Some(section), depth);
                }
                // A heading without a name ends the section unless it is
                // a subsection of it.
                None if depth <= level => current = None,
                None => {}
            }
        } else if let (Some(section), Some(row)) = (&current, line.strip_prefix('|')) {
            let cells: Vec<String> = row
                .trim_end()
                .trim_end_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            if !cells.first().is_some_and(|c| c.starts_with('`')) {
                // A header (or its `---` line): is this table one of ours?
                if !cells.first().is_some_and(|c| c.starts_with('-')) {
                    ours = cells.first().map(String::as_str) == Some(column);
                }
                continue;
            }
            if !ours {
                continue;
            }
            let Some(key) = cells
                .first()
                .filter(|c| c.starts_with('`'))
                .and_then(|c| first_code(c))
            else {
                continue;
            };
            sections
                .entry(section.clone())
                .or_default()
                .push(Row { key, cells });
        }
    }
    sections
}

/// The text of the first `code` span in `s`.
fn first_code(s: &str) -> Option<String> {
    let (_, rest) = s.split_once('`')?;
    let (code, _) = rest.split_once('`')?;
    Some(code.to_string())
}

fn fail_on(problems: Vec<String>, page: &str) {
    assert!(
        problems.is_empty(),
        "docs/{page} and the code disagree:\n  - {}",
        problems.join("\n  - ")
    );
}

// === docs/cli.md ===

/// `(flag, env, defaults)` of every flag of `cmd` and of each subcommand, by
/// command path (`sluice-dataplane`, `sluice-dataplane demo`).
fn flags(cmd: &clap::Command) -> BTreeMap<String, BTreeMap<String, (String, Vec<String>)>> {
    let mut out = BTreeMap::new();
    let name = cmd.get_name().to_string();
    let mut commands = vec![(name.clone(), cmd)];
    commands.extend(
        cmd.get_subcommands()
            .map(|sub| (format!("{name} {}", sub.get_name()), sub)),
    );
    for (path, cmd) in commands {
        let mut args = BTreeMap::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let env = arg
                .get_env()
                .and_then(|e| e.to_str())
                .unwrap_or_default()
                .to_string();
            let defaults = arg
                .get_default_values()
                .iter()
                .filter_map(|v| v.to_str().map(str::to_string))
                .collect();
            args.insert(format!("--{long}"), (env, defaults));
        }
        out.insert(path, args);
    }
    out
}

#[test]
fn every_flag_of_both_binaries_is_in_docs_cli_md_and_only_those() {
    let page = read_page("cli.md", "flag");
    let mut problems = Vec::new();
    let mut code = flags(&sluice_dataplane::cli::Cli::command());
    code.extend(flags(&sluice_controller::cli::Cli::command()));
    for (command, args) in &code {
        let Some(rows) = page.get(command) else {
            problems.push(format!("no section (a heading naming `{command}`)"));
            continue;
        };
        for (flag, (env, defaults)) in args {
            let Some(row) = rows.iter().find(|r| r.key.split(' ').next() == Some(flag)) else {
                problems.push(format!("`{command}`: flag {flag} ({env}) has no row"));
                continue;
            };
            if !env.is_empty() && !row.cells.iter().any(|c| c.contains(&format!("`{env}`"))) {
                problems.push(format!(
                    "`{command}` {flag}: the row does not name its variable `{env}`"
                ));
            }
            for default in defaults {
                if !row
                    .cells
                    .iter()
                    .any(|c| c.contains(&format!("`{default}`")))
                {
                    problems.push(format!(
                        "`{command}` {flag}: the row does not give its default `{default}`"
                    ));
                }
            }
        }
        for row in rows {
            let flag = row.key.split(' ').next().unwrap_or_default();
            if !args.contains_key(flag) {
                problems.push(format!("`{command}`: documented {flag} does not exist"));
            }
        }
    }
    for command in page.keys() {
        if command.starts_with("sluice-") && !code.contains_key(command) {
            problems.push(format!("documented command `{command}` does not exist"));
        }
    }
    fail_on(problems, "cli.md");
}

// === docs/metrics.md ===

/// `name → type` from a registry's text exposition, names as queried:
/// counters with their `_total` suffix.
fn metric_types(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| {
            let name = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            };
            (name, kind.to_string())
        })
        .collect()
}

/// The dataplane's exposition with one series in every family: an empty
/// family is left out of the text, so each is given a sample here.
fn dataplane_exposition() -> String {
    let metrics = sluice_dataplane::metrics::Metrics::new();
    let pool = std::sync::Arc::new(metrics.pool("web"));
    pool.begin().respond(200);
    pool.rate_limited();
    let endpoint = std::net::SocketAddr::from(([127, 0, 0, 1], 9001));
    metrics.endpoint("web", endpoint).inc(200);
    let _healthy = metrics.endpoint_healthy("web", endpoint);
    metrics.encode()
}

/// The controller's exposition with one series in every family.
fn controller_exposition() -> String {
    use sluice_controller::metrics::{KindLabel, ScaleLabels, TriggerLabel};
    let metrics = sluice_controller::metrics::Metrics::new();
    let kind = KindLabel {
        kind: "BackendPool".into(),
    };
    metrics
        .reconcile_duration
        .get_or_create(&kind)
        .observe(0.001);
    let scale = ScaleLabels {
        trigger: "shop/web".into(),
        direction: "up".into(),
    };
    metrics.scale_decisions.get_or_create(&scale).inc();
    let trigger = TriggerLabel {
        trigger: "shop/web".into(),
    };
    metrics.desired_replicas.get_or_create(&trigger).set(2);
    let limit = sluice_controller::metrics::LimitLabels {
        trigger: "shop/web".into(),
        reason: "TooManyReplicas".into(),
    };
    metrics.scaling_limited.get_or_create(&limit).set(1);
    metrics.encode()
}

/// How many families `file` registers, counted in its source: a family
/// added there but given no sample above would otherwise go unseen.
fn registered_in(file: &str) -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.matches(".register(").count() + text.matches(".register_with_unit(").count()
}

#[test]
fn every_metric_of_both_binaries_is_in_docs_metrics_md_with_its_type() {
    let page = read_page("metrics.md", "metric");
    let mut problems = Vec::new();
    let code = [
        (
            "sluice-dataplane",
            metric_types(&dataplane_exposition()),
            "dataplane/src/metrics.rs",
        ),
        (
            "sluice-controller",
            metric_types(&controller_exposition()),
            "controller/src/metrics.rs",
        ),
    ];
    for (binary, metrics, source) in &code {
        assert_eq!(
            metrics.len(),
            registered_in(source),
            "{source} registers a family that {}'s exposition here does not show: \
             give it a sample in tests/tests/docs.rs. Shown: {:?}",
            binary,
            metrics.keys().collect::<Vec<_>>()
        );
        let Some(rows) = page.get(*binary) else {
            problems.push(format!("no section (a heading naming `{binary}`)"));
            continue;
        };
        for (name, kind) in metrics {
            match rows.iter().find(|r| &r.key == name) {
                None => problems.push(format!("{binary}: metric {name} ({kind}) has no row")),
                Some(row) if row.cells.get(1).map(String::as_str) != Some(kind.as_str()) => {
                    problems.push(format!(
                        "{binary}: {name} is a {kind}, documented as {:?}",
                        row.cells.get(1)
                    ))
                }
                Some(_) => {}
            }
        }
        for row in rows {
            if !metrics.contains_key(&row.key) {
                problems.push(format!(
                    "{binary}: documented metric {} is not registered",
                    row.key
                ));
            }
        }
    }
    fail_on(problems, "metrics.md");
}

// === docs/crds.md ===

/// The type of a schema node in words: `string`, `array of object`,
/// `int or string`.
fn schema_type(node: &Value) -> String {
    if node["x-kubernetes-int-or-string"] == Value::Bool(true) {
        return "int or string".to_string();
    }
    match node["type"].as_str() {
        Some("array") => format!("array of {}", schema_type(&node["items"])),
        Some(t) => t.to_string(),
        None => "any".to_string(),
    }
}

/// Every property under `node`, by path (`spec.backends[].weight`).
fn fields(node: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    let node = match node["type"].as_str() {
        Some("array") => &node["items"],
        _ => node,
    };
    let Some(props) = node["properties"].as_object() else {
        return;
    };
    for (name, prop) in props {
        let path = format!("{prefix}{name}");
        out.insert(path.clone(), prop.clone());
        let inner = if prop["type"] == "array" { "[]." } else { "." };
        fields(prop, &format!("{path}{inner}"), out);
    }
}

fn crd_fields(crd: &impl serde::Serialize) -> BTreeMap<String, Value> {
    let crd = serde_json::to_value(crd).expect("a CRD serializes");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut out = BTreeMap::new();
    for top in ["spec", "status"] {
        fields(&schema["properties"][top], &format!("{top}."), &mut out);
    }
    out
}

#[test]
fn every_field_of_both_crds_is_in_docs_crds_md_with_its_type_and_default() {
    use kube::CustomResourceExt;
    let page = read_page("crds.md", "field");
    let mut problems = Vec::new();
    let code = [
        ("BackendPool", crd_fields(&sluice_crds::BackendPool::crd())),
        (
            "ScalingTrigger",
            crd_fields(&sluice_crds::ScalingTrigger::crd()),
        ),
    ];
    for (kind, schema) in &code {
        let Some(rows) = page.get(*kind) else {
            problems.push(format!("no section (a heading naming `{kind}`)"));
            continue;
        };
        for (path, node) in schema {
            let Some(row) = rows.iter().find(|r| &r.key == path) else {
                problems.push(format!("{kind}: field {path} has no row"));
                continue;
            };
            let want = schema_type(node);
            if row.cells.get(1).map(String::as_str) != Some(want.as_str()) {
                problems.push(format!(
                    "{kind}: {path} is {want}, documented as {:?}",
                    row.cells.get(1)
                ));
            }
            if let Some(default) = node.get("default") {
                let default = default.as_str().map_or(default.to_string(), str::to_string);
                if !row
                    .cells
                    .get(2)
                    .is_some_and(|c| c.contains(&format!("`{default}`")))
                {
                    problems.push(format!(
                        "{kind}: {path} defaults to `{default}`, not in its row's default column"
                    ));
                }
            }
        }
        let documented: BTreeSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        for path in documented {
            if !schema.contains_key(path) {
                problems.push(format!("{kind}: documented field {path} is not in the CRD"));
            }
        }
    }
    fail_on(problems, "crds.md");
}
