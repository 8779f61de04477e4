//! Reports as text (a `kubectl describe`-like head and a `kubectl get`-like
//! table), JSON or YAML. Pure: every clock-dependent figure is already in
//! the report.

use std::time::Duration;

use serde::Serialize;
use thaw_core::GoStyle;

use super::{
    human::human,
    report::{ColdStart, FunctionReport, InstanceReport, State},
};

/// Output formats, as `-o` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable head and table.
    Text,
    Json,
    Yaml,
}

/// Several Functions in JSON/YAML: `{"items": [...]}`.
#[derive(Serialize)]
struct List<'r> {
    items: &'r [FunctionReport],
}

/// `reports` in `format`. `single`: one named Function, printed as the
/// object itself in JSON/YAML (a list otherwise, even of one).
pub fn render(reports: &[FunctionReport], format: Format, single: bool) -> anyhow::Result<String> {
    Ok(match (format, single, reports) {
        (Format::Text, _, []) => "No Functions found.\n".to_owned(),
        (Format::Text, _, _) => reports.iter().map(text).collect::<Vec<_>>().join("\n"),
        (Format::Json, true, [one]) => format!("{}\n", serde_json::to_string_pretty(one)?),
        (Format::Json, _, _) => format!(
            "{}\n",
            serde_json::to_string_pretty(&List { items: reports })?
        ),
        (Format::Yaml, true, [one]) => serde_yaml::to_string(one)?,
        (Format::Yaml, _, _) => serde_yaml::to_string(&List { items: reports })?,
    })
}

/// One Function: its head, then a row per instance.
pub fn text(report: &FunctionReport) -> String {
    let mut head: Vec<(&str, String)> = vec![
        ("Function", format!("{}/{}", report.namespace, report.name)),
        ("Ready", ready(report)),
    ];
    if let Some(url) = &report.url {
        head.push(("URL", url.clone()));
    }
    head.push(("Instances", counts(report)));
    let s = &report.scaling;
    head.push((
        "Scaling",
        format!(
            "minInstances {}, maxInstances {}, warmInstances {}, keepAlive {}, concurrency {}",
            s.min_instances,
            s.max_instances,
            s.warm_instances,
            s.keep_alive,
            match s.concurrency {
                0 => "unlimited".to_owned(),
                n => n.to_string(),
            }
        ),
    ));
    head.push((
        "Last request",
        report
            .last_request_seconds_ago
            .map_or_else(|| "never".to_owned(), |s| format!("{} ago", human(secs(s)))),
    ));
    if let Some(why) = &report.gate_error {
        head.push(("Gate", format!("? = unknown: {why}")));
    }
    let width = head.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (key, value) in &head {
        out.push_str(&format!("{:<width$}{value}\n", format!("{key}:")));
    }
    out.push('\n');
    if report.instances.is_empty() {
        out.push_str("No instances.\n");
    } else {
        out.push_str(&table(&report.instances));
    }
    out
}

const COLUMNS: [&str; 8] = [
    "NAME",
    "STATE",
    "IN-FLIGHT",
    "SERVED",
    "IDLE-FOR",
    "EXPIRES",
    "COLD-START",
    "AGE",
];

/// The instance table, columns padded like kubectl's (three spaces apart).
pub fn table(instances: &[InstanceReport]) -> String {
    let rows: Vec<[String; 8]> = std::iter::once(COLUMNS.map(str::to_owned))
        .chain(instances.iter().map(row))
        .collect();
    let mut widths = [0; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] + 3 - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row(i: &InstanceReport) -> [String; 8] {
    let known = |n: Option<String>| n.unwrap_or_else(|| unknown(i).to_owned());
    let in_flight = known(i.in_flight.map(|n| match i.waiting {
        Some(w) if w > 0 => format!("{n} ({w} held)"),
        _ => n.to_string(),
    }));
    [
        i.name.clone(),
        i.state.as_str().to_owned(),
        in_flight,
        known(i.served.map(|n| n.to_string())),
        match i.idle_for_ms {
            Some(d) => human(d),
            // The gate answered: busy, so no idle time.
            None if i.in_flight.is_some() || i.state == State::Busy => "-".to_owned(),
            None => known(None),
        },
        expires(i),
        i.cold_start
            .as_ref()
            .map_or_else(|| "-".to_owned(), cold_start),
        i.age_seconds
            .map_or_else(|| "-".to_owned(), |s| human(secs(s))),
    ]
}

/// What a number the gate did not give reads as: `?` for a pod whose gate
/// was asked and did not answer (the head says why), `-` where there is no
/// gate to ask yet.
fn unknown(i: &InstanceReport) -> &'static str {
    match i.state {
        State::Starting | State::Failed => "-",
        _ => "?",
    }
}

fn expires(i: &InstanceReport) -> String {
    if let Some(why) = &i.kept {
        return format!("kept ({why})");
    }
    match i.expires_in_seconds {
        Some(s) if s > 0 => format!("in {}", human(secs(s.unsigned_abs()))),
        Some(_) => "due".to_owned(),
        None => "-".to_owned(),
    }
}

/// `1.21s (10ms+1.1s+100ms)`: decision to ready, as scheduled + process
/// started + ready.
fn cold_start(c: &ColdStart) -> String {
    format!(
        "{} ({}+{}+{})",
        GoStyle(c.total_ms),
        GoStyle(c.schedule_ms),
        GoStyle(c.start_ms),
        GoStyle(c.ready_ms)
    )
}

fn ready(report: &FunctionReport) -> String {
    match &report.ready {
        None => "Unknown (no Ready condition yet)".to_owned(),
        Some(r) if r.message.is_empty() => format!("{} ({})", r.status, r.reason),
        Some(r) => format!("{} ({}): {}", r.status, r.reason, r.message),
    }
}

fn counts(report: &FunctionReport) -> String {
    let desired = report
        .desired_instances
        .map(|d| format!(", desired {d}"))
        .unwrap_or_default();
    match &report.instance_counts {
        Some(c) => format!(
            "{} starting, {} busy, {} idle, {} draining{desired}",
            c.starting, c.busy, c.idle, c.draining
        ),
        None => format!("none recorded yet{desired}"),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
