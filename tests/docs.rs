//! Keeps the operator docs and monitoring assets in step with the code:
//!
//! - every environment variable the binary reads (and `RUST_LOG`) is in `docs/operations.md`;
//! - every metric family `/metrics` exports is in `docs/operations.md`;
//! - `docs/alerts.yml` passes `promtool check rules` and `docs/alerts.test.yml` passes
//!   `promtool test rules`; every alert has `for`, a severity and the three annotations, and
//!   every `runbook_url` points at a heading of `docs/operations.md`;
//! - `docs/grafana-dashboard.json` is valid JSON with a `${DS_PROMETHEUS}` input, and every metric
//!   its panels (and the alert rules) query is one the gateway exports, with the right suffix;
//! - links between the docs (`file.md#anchor`) resolve.

use std::{
    collections::{BTreeSet, HashSet},
    path::PathBuf,
    process::Command,
};

use chat4all_gateway::{config::Config, internals::Metrics};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `(family, type)` from the `# TYPE <family> <type>` lines of a scrape.
fn families() -> Vec<(String, String)> {
    let text = Metrics::new(2, "epoll").render();
    let families: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|rest| {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("family name").to_string();
            let kind = parts.next().expect("family type").to_string();
            (name, kind)
        })
        .collect();
    assert!(families.len() > 10, "suspiciously few families:\n{text}");
    families
}

/// The series names a query may use for each family: counters are sampled with `_total`
/// (OpenMetrics), histograms as `_bucket`, `_sum` and `_count`, gauges as is.
fn queryable_names() -> HashSet<String> {
    let mut names = HashSet::new();
    for (family, kind) in families() {
        match kind.as_str() {
            "counter" => {
                names.insert(format!("{family}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{family}{suffix}"));
                }
            }
            _ => {
                names.insert(family);
            }
        }
    }
    names
}

#[test]
fn every_config_variable_is_documented() {
    let ops = read("docs/operations.md");
    let mut names = Config::env_var_names();
    assert!(names.len() > 30, "suspiciously few variables: {names:?}");
    names.push("RUST_LOG");
    let missing: Vec<&str> = names
        .into_iter()
        .filter(|name| !ops.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md does not document (as `NAME`) these variables: {missing:?}"
    );
}

#[test]
fn every_metric_family_is_documented() {
    let ops = read("docs/operations.md");
    let missing: Vec<String> = families()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !ops.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md does not document these metric families: {missing:?}"
    );
}

fn promtool(args: &[&str]) {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: it comes with the Debian package `prometheus` \
             (apt-get install -y prometheus; scripts/test.sh installs it)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool() {
    promtool(&["check", "rules", "docs/alerts.yml"]);
    promtool(&["test", "rules", "docs/alerts.test.yml"]);
}

#[test]
fn every_alert_is_complete_and_its_runbook_exists() {
    let rules = read("docs/alerts.yml");
    let anchors = anchors(&read("docs/operations.md"));
    let blocks: Vec<&str> = rules.split("- alert:").skip(1).collect();
    assert!(blocks.len() >= 9, "expected the documented alerts");
    for block in blocks {
        let block = block.split("- record:").next().unwrap();
        let name = block.split_whitespace().next().unwrap_or_default();
        for key in [
            "expr:",
            "for:",
            "severity:",
            "summary:",
            "description:",
            "runbook_url:",
        ] {
            assert!(block.contains(key), "alert {name} has no {key}");
        }
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url:"))
            .unwrap()
            .trim()
            .trim_matches('"');
        let anchor = url
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not docs/operations.md#..."));
        assert!(
            anchors.contains(anchor),
            "{name}: no heading in docs/operations.md has the anchor #{anchor}"
        );
    }
}

/// The PromQL expressions of a rules file (inline, or YAML block scalars after `expr:`).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        i += 1;
        let Some(rest) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with(['|', '>']) {
            exprs.push(rest.trim_matches(['"', '\'']).to_string());
            continue;
        }
        let mut expr = String::new();
        while i < lines.len() {
            let l = lines[i];
            if !l.trim().is_empty() && l.len() - l.trim_start().len() <= indent {
                break;
            }
            expr.push_str(l);
            expr.push('\n');
            i += 1;
        }
        exprs.push(expr);
    }
    exprs
}

/// Metric names referenced by a PromQL expression, without a full parser: drops strings,
/// comments, label matchers, ranges, Grafana variables, numbers and durations, function and
/// aggregation names (anything followed by `(`), keywords, and the label lists of
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`.
fn promql_metric_names(expr: &str) -> Vec<String> {
    // Strings and comments first (a quoted value may hold any character).
    let mut plain = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                plain.push(' ');
            }
            '#' => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                plain.push(' ');
            }
            _ => plain.push(c),
        }
    }
    // Then label matchers and ranges.
    let mut flat = String::new();
    let mut depth = 0usize;
    for c in plain.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => flat.push(c),
            _ => {}
        }
    }
    // Aggregation operators may put `by (...)` between their name and `(`.
    const KEYWORDS: [&str; 21] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = flat.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'$' || c.is_ascii_digit() || c == b'.' {
            // Variable, number or duration: skip the whole run.
            i += 1;
            while i < b.len() && (is_ident(b[i]) || b[i] == b'.') {
                i += 1;
            }
            continue;
        }
        if !is_ident(c) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        let word = &flat[start..i];
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let before_paren = j < b.len() && b[j] == b'(';
        if LABEL_LISTS.contains(&word) {
            if before_paren {
                // Skip the label list.
                while j < b.len() && b[j] != b')' {
                    j += 1;
                }
                i = j + 1;
            }
            continue;
        }
        if before_paren || KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
            continue;
        }
        names.push(word.to_string());
    }
    names
}

#[test]
fn promql_name_extraction_works() {
    let names = promql_metric_names(
        "histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{x=~\"$job\", y=\"b c\"}[$__rate_interval])))\n\
         / on () group_left () rec:ord:ed and b_total offset 10m > 1e6 # c_total in a comment",
    );
    assert_eq!(names, ["a_bucket", "rec:ord:ed", "b_total"]);
}

/// Checks that every metric in `exprs` is exported by the gateway (recording rules and `up`
/// allowed where `extra` says so).
fn check_metrics(what: &str, exprs: &[String], extra: &[&str]) {
    let known = queryable_names();
    let mut unknown = BTreeSet::new();
    for expr in exprs {
        for name in promql_metric_names(expr) {
            if !known.contains(&name) && !extra.contains(&name.as_str()) {
                unknown.insert(format!("{name} (in {})", expr.trim()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{what} queries metrics the gateway does not export (counters need `_total`, \
         histograms `_bucket`/`_sum`/`_count`):\n{}",
        unknown.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn alert_rules_query_only_exported_metrics() {
    let yaml = read("docs/alerts.yml");
    let exprs = rule_exprs(&yaml);
    assert!(exprs.len() >= 10, "found only {} exprs", exprs.len());
    let recorded: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(str::trim)
        .collect();
    let mut extra = vec!["up"];
    extra.extend(recorded);
    check_metrics("docs/alerts.yml", &exprs, &extra);
}

/// Every `expr` of every panel (rows may nest panels).
fn panel_exprs(panels: &[serde_json::Value], out: &mut Vec<String>, ids: &mut Vec<u64>) {
    for panel in panels {
        if let Some(id) = panel.get("id").and_then(|v| v.as_u64()) {
            ids.push(id);
        }
        let title = panel["title"].as_str().unwrap_or("?");
        let kind = panel["type"].as_str().unwrap_or("?");
        if kind != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {title:?} must use the ${{DS_PROMETHEUS}} data source"
            );
            let targets = panel["targets"].as_array();
            assert!(
                targets.is_some_and(|t| !t.is_empty()),
                "panel {title:?} has no query"
            );
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str();
            out.push(
                expr.unwrap_or_else(|| panic!("panel {title:?} has a target without expr"))
                    .to_string(),
            );
        }
        if let Some(nested) = panel["panels"].as_array() {
            panel_exprs(nested, out, ids);
        }
    }
}

#[test]
fn grafana_dashboard_is_valid_and_queries_exported_metrics() {
    let text = read("docs/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("docs/grafana-dashboard.json is not valid JSON: {e}"));
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS datasource input"
    );
    let mut exprs = Vec::new();
    let mut ids = Vec::new();
    panel_exprs(
        dash["panels"].as_array().expect("panels"),
        &mut exprs,
        &mut ids,
    );
    assert!(exprs.len() >= 15, "found only {} queries", exprs.len());
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate panel ids");
    check_metrics("docs/grafana-dashboard.json", &exprs, &[]);
}

/// GitHub's heading anchors: lower case, punctuation other than `-` and `_` removed, spaces to
/// hyphens; repeated headings get `-1`, `-2`.
fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 1;
        while seen.contains(&unique) {
            unique = format!("{slug}-{n}");
            n += 1;
        }
        seen.insert(unique);
    }
    seen
}

#[test]
fn links_between_docs_resolve() {
    let docs = root().join("docs");
    for file in ["operations.md", "architecture.md"] {
        let text = read(&format!("docs/{file}"));
        for (i, _) in text.match_indices("](") {
            let target = &text[i + 2..];
            let target = &target[..target.find(')').unwrap_or(target.len())];
            if target.starts_with("http") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let linked = if path.is_empty() {
                docs.join(file)
            } else {
                docs.join(path)
            };
            assert!(
                linked.exists(),
                "docs/{file}: link to {target}: {} does not exist",
                linked.display()
            );
            if !anchor.is_empty() {
                let body = std::fs::read_to_string(&linked).unwrap();
                assert!(
                    anchors(&body).contains(anchor),
                    "docs/{file}: link to {target}: no such heading"
                );
            }
        }
    }
}
