//! The Markdown report of a results file: medians with spread per server, ratios to the best
//! Rust peer and to the raw ceiling measured in the same run, the targets met or missed (and by
//! how much), the plots, and how the run was made.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::plot::{self, Plot};
use crate::results::{Results, ServerResult};
use crate::scenario::{Better, MetricSpec, ServerKind, TargetSpec};
use crate::stats::{Summary, IQR_RUNS_MIN};

/// Formats a number for a table: thousands separators at or above 100, else a few decimals.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "—".to_string();
    }
    if x.abs() >= 100.0 {
        let n = x.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if x.fract() == 0.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// "median (min–max)", or "median (IQR q1–q3)" with enough runs.
pub fn fmt_summary(s: &Summary) -> String {
    if s.runs >= IQR_RUNS_MIN {
        format!(
            "{} (IQR {}–{})",
            fmt_num(s.median),
            fmt_num(s.q1),
            fmt_num(s.q3)
        )
    } else {
        format!(
            "{} ({}–{})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        )
    }
}

/// Whether `a` is strictly better than `b` in direction `better`.
pub fn is_ahead(better: Better, a: f64, b: f64) -> bool {
    match better {
        Better::Higher => a > b,
        Better::Lower => a < b,
    }
}

/// Performance of `a` as a fraction of `reference` (> 1 means better), whatever the direction.
pub fn performance_ratio(better: Better, a: f64, reference: f64) -> f64 {
    match better {
        Better::Higher => a / reference,
        Better::Lower => reference / a,
    }
}

/// The Rust peer with the best median of `metric`, and that median.
pub fn best_rust_peer<'a>(
    results: &'a Results,
    metric: &MetricSpec,
) -> Option<(&'a ServerResult, f64)> {
    results
        .servers
        .iter()
        .filter(|s| s.kind.is_rust_peer())
        .filter_map(|s| s.summary(&metric.key).map(|sum| (s, sum.median)))
        .fold(None, |best, (s, m)| match best {
            Some((_, bm)) if !is_ahead(metric.better, m, bm) => best,
            _ => Some((s, m)),
        })
}

/// The raw ceiling's median of `key` in the same run.
pub fn raw_ceiling(results: &Results, key: &str) -> Option<f64> {
    results
        .servers
        .iter()
        .find(|s| s.kind == ServerKind::Raw101)
        .and_then(|s| s.summary(key))
        .map(|s| s.median)
}

/// One target checked on one tether server.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetOutcome {
    pub description: String,
    pub server: String,
    pub measured: Option<f64>,
    pub met: bool,
    /// What was compared, and the margin or the shortfall.
    pub detail: String,
}

/// Checks every target on every tether server's medians.
pub fn check_targets(results: &Results) -> Vec<TargetOutcome> {
    let mut out = Vec::new();
    for target in &results.scenario.targets {
        let Some(metric) = results.scenario.metric(&target.key) else {
            continue;
        };
        for server in results
            .servers
            .iter()
            .filter(|s| s.kind == ServerKind::Tether)
        {
            out.push(check_target(results, target, metric, server));
        }
    }
    out
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// `m` against the bound `bound`: a relative margin, or the difference when the bound is 0
/// (a count that must stay at zero has no relative margin).
fn margin(m: f64, bound: f64, relative: f64) -> String {
    if bound == 0.0 {
        fmt_num((m - bound).abs())
    } else {
        pct(relative)
    }
}

/// Checks one target against a server's median: each bound the target sets is one clause of
/// the detail; the target is met when every clause is.
fn check_target(
    results: &Results,
    target: &TargetSpec,
    metric: &MetricSpec,
    server: &ServerResult,
) -> TargetOutcome {
    let mut outcome = TargetOutcome {
        description: target.description.clone(),
        server: server.label.clone(),
        measured: None,
        met: false,
        detail: String::new(),
    };
    let Some(m) = server.summary(&target.key).map(|s| s.median) else {
        outcome.detail = "not measured (no successful run)".into();
        return outcome;
    };
    outcome.measured = Some(m);
    let clauses: Vec<(bool, String)> = [
        target.at_least.map(|min| at_least(m, min)),
        target.at_most.map(|max| at_most(m, max)),
        target
            .ratio_to_raw_at_least
            .map(|frac| ratio_to_raw(results, &target.key, metric, m, frac)),
        target
            .ahead_of_best_rust
            .then(|| ahead_of_best_rust(results, metric, m)),
    ]
    .into_iter()
    .flatten()
    .collect();
    outcome.met = clauses.iter().all(|(met, _)| *met);
    outcome.detail = clauses
        .into_iter()
        .map(|(_, part)| part)
        .collect::<Vec<_>>()
        .join("; ");
    outcome
}

/// `at_least`: whether the median `m` reaches `min`, and the clause saying by how much.
fn at_least(m: f64, min: f64) -> (bool, String) {
    if m >= min {
        (
            true,
            format!(
                "{} ≥ {} (margin {})",
                fmt_num(m),
                fmt_num(min),
                margin(m, min, m / min - 1.0)
            ),
        )
    } else {
        (
            false,
            format!(
                "{} < {}: missed by {}",
                fmt_num(m),
                fmt_num(min),
                margin(m, min, 1.0 - m / min)
            ),
        )
    }
}

/// `at_most`: whether the median `m` stays at or below `max`, and the clause saying by how much.
fn at_most(m: f64, max: f64) -> (bool, String) {
    if m <= max {
        (
            true,
            format!(
                "{} ≤ {} (margin {})",
                fmt_num(m),
                fmt_num(max),
                margin(m, max, 1.0 - m / max)
            ),
        )
    } else {
        (
            false,
            format!(
                "{} > {}: missed by {}",
                fmt_num(m),
                fmt_num(max),
                if max == 0.0 {
                    fmt_num(m)
                } else if m / max >= 2.0 {
                    format!("{:.0}× the limit", m / max)
                } else {
                    pct(m / max - 1.0)
                }
            ),
        )
    }
}

/// `ratio_to_raw_at_least`: whether the median `m` is at least `frac` of the raw ceiling
/// measured for `key`; missed when no raw ceiling was measured.
fn ratio_to_raw(
    results: &Results,
    key: &str,
    metric: &MetricSpec,
    m: f64,
    frac: f64,
) -> (bool, String) {
    let Some(raw) = raw_ceiling(results, key) else {
        return (false, "raw ceiling not measured".into());
    };
    let r = performance_ratio(metric.better, m, raw);
    if r >= frac {
        (
            true,
            format!(
                "{} of raw ceiling {} (≥ {})",
                pct(r),
                fmt_num(raw),
                pct(frac)
            ),
        )
    } else {
        (
            false,
            format!(
                "{} of raw ceiling {} (< {}: missed by {:.1} points)",
                pct(r),
                fmt_num(raw),
                pct(frac),
                (frac - r) * 100.0
            ),
        )
    }
}

/// `ahead_of_best_rust`: whether the median `m` is ahead of the best Rust peer; missed when no
/// Rust peer was measured.
fn ahead_of_best_rust(results: &Results, metric: &MetricSpec, m: f64) -> (bool, String) {
    let Some((peer, pm)) = best_rust_peer(results, metric) else {
        return (false, "no Rust peer measured".into());
    };
    let r = performance_ratio(metric.better, m, pm);
    if is_ahead(metric.better, m, pm) {
        (
            true,
            format!("ahead of {} {} ({:.2}×)", peer.label, fmt_num(pm), r),
        )
    } else {
        (
            false,
            format!(
                "behind {} {} ({:.2}×: missed by {})",
                peer.label,
                fmt_num(pm),
                r,
                pct(1.0 - r)
            ),
        )
    }
}

fn schedule_line(results: &Results) -> String {
    let l = &results.scenario.loadgen;
    let mut parts = vec![format!("{} clients", fmt_num(l.clients as f64))];
    if let Some(r) = l.rate {
        parts.push(format!("{} connects/s", fmt_num(r)));
    }
    if let Some(r) = l.ramp {
        parts.push(format!(
            "ramp {}→{} connects/s over {} s",
            fmt_num(r.from),
            fmt_num(r.to),
            r.over_s
        ));
    }
    parts.push(format!("hold {} s", l.hold_s));
    if let (Some(rate), Some(size)) = (l.msg_rate, l.msg_size) {
        if rate > 0.0 {
            parts.push(format!("{rate} msg/s per client of {size} B"));
        }
    }
    if !l.extra_args.is_empty() {
        parts.push(format!("extra loadgen args `{}`", l.extra_args.join(" ")));
    }
    parts.join(", ")
}

/// Renders the whole report; `plots` are linked by file name.
#[expect(
    clippy::too_many_lines,
    reason = "straight-line emitter: one section after another in output order, split it and the format scatters"
)]
pub fn render_markdown(results: &Results, plots: &[Plot]) -> String {
    let sc = &results.scenario;
    let m = &results.machine;
    let mut md = String::new();
    let _ = writeln!(md, "# Scenario `{}`\n", sc.name);
    let _ = writeln!(md, "{}\n", sc.description.trim());
    let _ = writeln!(
        md,
        "- Schedule (identical for every server): {}.",
        schedule_line(results)
    );
    let _ = writeln!(
        md,
        "- Repetitions: {} per server, interleaved; cells are the median over runs with the \
         spread ({}).",
        sc.repetitions,
        if sc.repetitions as usize >= IQR_RUNS_MIN {
            "interquartile range"
        } else {
            "min–max"
        }
    );
    let _ = writeln!(
        md,
        "- Machine: {} CPUs, kernel {}, {}; started {} UTC; load average at start {}.",
        m.nproc, m.kernel, m.rustc, m.started_utc, m.loadavg_at_start
    );
    if !m.versions.is_empty() {
        let v: Vec<String> = m.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(md, "- Versions: {}.", v.join(", "));
    }
    if !m.command.is_empty() {
        let _ = writeln!(md, "- Command: `{}`", m.command);
    }

    let _ = writeln!(md, "\n## Results\n");
    let _ = write!(md, "| server |");
    for metric in &sc.metrics {
        let arrow = match metric.better {
            Better::Higher => "↑",
            Better::Lower => "↓",
        };
        let _ = write!(md, " {} {arrow} |", metric.label);
    }
    let _ = write!(md, "\n|---|");
    for _ in &sc.metrics {
        let _ = write!(md, "---:|");
    }
    md.push('\n');
    for server in &results.servers {
        let _ = write!(md, "| {} |", server.label);
        for (col, metric) in sc.metrics.iter().enumerate() {
            let cell = if let Some(why) = &server.skipped {
                if col == 0 {
                    format!("skipped: {why}")
                } else {
                    "—".into()
                }
            } else {
                server
                    .summary(&metric.key)
                    .map(|s| fmt_summary(&s))
                    .unwrap_or_else(|| "—".into())
            };
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }

    let compared: Vec<&MetricSpec> = sc.metrics.iter().filter(|m| m.compare).collect();
    let has_raw = results.servers.iter().any(|s| s.kind == ServerKind::Raw101);
    if !compared.is_empty() {
        let _ = writeln!(md, "\n## Ratios (medians, same run)\n");
        let _ = writeln!(
            md,
            "Performance relative to the reference: > 1.00× is better, whatever the metric's \
             direction (for lower-is-better metrics the ratio is reference / server).\n"
        );
        let _ = writeln!(
            md,
            "| metric | server | vs best Rust peer | vs raw ceiling |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|");
        for metric in &compared {
            let best = best_rust_peer(results, metric);
            let raw = raw_ceiling(results, &metric.key);
            for server in results
                .servers
                .iter()
                .filter(|s| s.kind != ServerKind::Raw101)
            {
                let Some(sm) = server.summary(&metric.key).map(|s| s.median) else {
                    continue;
                };
                let vs_best = match best {
                    Some((peer, pm)) => format!(
                        "{:.2}× ({} {})",
                        performance_ratio(metric.better, sm, pm),
                        peer.label,
                        fmt_num(pm)
                    ),
                    None => "—".into(),
                };
                let vs_raw = match raw {
                    Some(r) if has_raw => {
                        format!(
                            "{:.2}× ({})",
                            performance_ratio(metric.better, sm, r),
                            fmt_num(r)
                        )
                    }
                    _ => "—".into(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {vs_best} | {vs_raw} |",
                    metric.label, server.label
                );
            }
        }
    }

    let outcomes = check_targets(results);
    if !outcomes.is_empty() {
        let _ = writeln!(md, "\n## Targets\n");
        let _ = writeln!(md, "| target | server | result | detail |");
        let _ = writeln!(md, "|---|---|---|---|");
        for o in &outcomes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                o.description,
                o.server,
                if o.met { "met" } else { "**missed**" },
                o.detail
            );
        }
    }

    if !plots.is_empty() {
        let _ = writeln!(md, "\n## Plots\n");
        for p in plots {
            let _ = writeln!(md, "![{}]({})\n", p.title, p.file);
        }
    }

    let _ = writeln!(md, "\n## Servers and runs\n");
    for server in &results.servers {
        if let Some(why) = &server.skipped {
            let _ = writeln!(md, "- **{}**: skipped: {why}", server.label);
            continue;
        }
        let _ = write!(md, "- **{}**: `{}`", server.label, server.command);
        let ok = server.runs.len() - server.failed_runs();
        let _ = writeln!(md, " — {ok}/{} runs succeeded", server.runs.len());
        for run in server.runs.iter().filter(|r| r.error.is_some()) {
            let _ = writeln!(
                md,
                "  - run {} failed: {}",
                run.repetition,
                run.error.as_deref().unwrap_or_default()
            );
        }
    }
    md
}

/// Writes `report.md` and the SVG plots for `results` into `dir`; returns the files written.
pub fn write_report(results: &Results, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let plots = plot::write_all(results, dir)?;
    let md = render_markdown(results, &plots);
    let report = dir.join("report.md");
    std::fs::write(&report, md).map_err(|e| format!("{}: {e}", report.display()))?;
    let mut files = vec![report];
    files.extend(plots.iter().map(|p| dir.join(&p.file)));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(1234567.4), "1,234,567");
        assert_eq!(fmt_num(100.0), "100");
        assert_eq!(fmt_num(-2500.0), "-2,500");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.5), "1.50");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(40.0), "40");
        assert_eq!(fmt_num(f64::NAN), "—");
    }

    #[test]
    fn ratios_follow_direction() {
        assert!(is_ahead(Better::Higher, 2.0, 1.0));
        assert!(is_ahead(Better::Lower, 1.0, 2.0));
        assert!(!is_ahead(Better::Lower, 2.0, 2.0));
        assert_eq!(performance_ratio(Better::Lower, 5.0, 10.0), 2.0);
        assert_eq!(performance_ratio(Better::Higher, 5.0, 10.0), 0.5);
    }
}
