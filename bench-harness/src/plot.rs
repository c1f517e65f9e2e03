//! SVG plots for a results file, drawn with plotters: latency percentiles per server (median of
//! the repetitions), and the server's connections, CPU and RSS over time as the runner sampled
//! them (first successful repetition of each server), and the connects/s loadgen saw.
//!
//! Rules that keep a plot readable: tether's lines are drawn last and thicker, so no peer hides
//! them; a y axis whose servers differ by more than [`LOG_SCALE_RATIO`] is logarithmic (one
//! peer's 1.3 GiB must not flatten tether's 20 MiB); a timeline whose servers' lines cannot be
//! told apart (all within [`SAME_LINE_TOLERANCE`] of the plot's range: every server kept the
//! offered schedule) is not drawn, since it says nothing about the servers.

use std::path::Path;

use plotters::prelude::*;

use crate::results::{LoadgenSecond, Results, RunResult, Sample, ServerResult};
use crate::scenario::ServerKind;

const SIZE_PX: (u32, u32) = (900, 500);
/// Latency families plotted when present, with their percentile keys.
const LATENCY_FAMILIES: [(&str, &str); 2] = [
    ("handshake_latency_us", "handshake latency"),
    ("message_rtt_us", "message round trip"),
];
/// One plotted line: the server's position (for its shade), the server, its points.
type Line<'a> = (usize, &'a ServerResult, Vec<(f64, f64)>);

const PERCENTILES: [&str; 5] = ["p50", "p90", "p99", "p999", "max"];
/// Servers whose largest values differ by more than this factor get a logarithmic y axis.
const LOG_SCALE_RATIO: f64 = 10.0;
/// Lines closer than this share of the plot's largest value at every point are "the same"
/// (a 1-second rate from live lines moves by a few per cent on its own).
const SAME_LINE_TOLERANCE: f64 = 0.10;
/// Stroke widths: tether, and everyone else.
const TETHER_STROKE_PX: u32 = 3;
const PEER_STROKE_PX: u32 = 2;

/// A written plot: its title and file name (relative to the report's folder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plot {
    pub title: String,
    pub file: String,
}

fn color_for(index: usize, kind: ServerKind) -> RGBColor {
    match kind {
        ServerKind::Tether => RGBColor(0xd6, 0x27, 0x28),
        ServerKind::Raw101 => RGBColor(0x44, 0x44, 0x44),
        ServerKind::Tungstenite => RGBColor(0x1f, 0x77, 0xb4),
        ServerKind::Fastwebsockets => RGBColor(0x2c, 0xa0, 0x2c),
        ServerKind::NodeWs => RGBColor(0x94, 0x67, 0xbd),
        ServerKind::TungsteniteRustls => RGBColor(0x17, 0xbe, 0xcf),
        ServerKind::NginxTether => RGBColor(0xff, 0x7f, 0x0e),
        ServerKind::NatsWs => RGBColor(0x8c, 0x56, 0x4b),
        ServerKind::Hold101 => RGBColor(0x7f, 0x7f, 0x7f),
    }
    .mix_index(index)
}

trait MixIndex {
    fn mix_index(self, index: usize) -> RGBColor;
}

impl MixIndex for RGBColor {
    /// Several servers of one kind (tether with 1 and 2 shards) get darker shades.
    fn mix_index(self, index: usize) -> RGBColor {
        let f = 1.0 - 0.25 * (index % 3) as f64;
        RGBColor(
            (self.0 as f64 * f) as u8,
            (self.1 as f64 * f) as u8,
            (self.2 as f64 * f) as u8,
        )
    }
}

/// Index of each server among servers of its kind (for shading).
fn shade_index(results: &Results, pos: usize) -> usize {
    let kind = results.servers[pos].kind;
    results.servers[..pos]
        .iter()
        .filter(|s| s.kind == kind)
        .count()
}

/// Writes every plot that the results have data for into `dir`; returns what was written.
pub fn write_all(results: &Results, dir: &Path) -> Result<Vec<Plot>, String> {
    let mut plots = Vec::new();
    for (family, title) in LATENCY_FAMILIES {
        let file = format!("{}.svg", family.replace('_', "-"));
        if let Some(svg) = latency_svg(results, family, title)? {
            write(dir, &file, &svg)?;
            plots.push(Plot {
                title: format!("{title} percentiles (median of runs, log scale)"),
                file,
            });
        }
    }
    type Series = fn(&RunResult) -> Vec<(f64, f64)>;
    // Not plotted: echo messages/s (open loop: every server that answers shows the offered
    // rate; the round-trip plot and the unanswered count carry the difference) and the
    // server's Δ fds per second (a noisier copy of loadgen's connects/s).
    let timelines: [(&str, &str, &str, Series); 4] = [
        (
            "loadgen-connects.svg",
            "connects/s over time, as loadgen saw them (its live lines)",
            "connects/s",
            |r| loadgen_series(r, |s| s.connects_per_s),
        ),
        (
            "connections.svg",
            "server connections over time (open fds − fds before the load)",
            "connections",
            |r| connections_series(&r.timeline),
        ),
        (
            "cpu.svg",
            "server CPU over time (% of one core)",
            "CPU %",
            |r| cpu_series(&r.timeline),
        ),
        ("rss.svg", "server RSS over time (MiB)", "RSS MiB", |r| {
            rss_series(&r.timeline)
        }),
    ];
    for (file, title, y_desc, series) in timelines {
        if let Some(svg) = timeline_svg(results, title, y_desc, series)? {
            write(dir, file, &svg)?;
            plots.push(Plot {
                title: title.to_string(),
                file: file.to_string(),
            });
        }
    }
    Ok(plots)
}

fn write(dir: &Path, file: &str, svg: &str) -> Result<(), String> {
    let path = dir.join(file);
    std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))
}

fn latency_svg(results: &Results, family: &str, title: &str) -> Result<Option<String>, String> {
    let mut lines: Vec<Line> = Vec::new();
    for (pos, server) in results.servers.iter().enumerate() {
        let points: Vec<(f64, f64)> = PERCENTILES
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                server
                    .summary(&format!("{family}.{p}"))
                    .map(|s| (i as f64, s.median.max(1.0)))
            })
            .collect();
        if !points.is_empty() {
            lines.push((pos, server, points));
        }
    }
    if lines.is_empty() {
        return Ok(None);
    }
    let (y_min, y_max) = lines
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|&(_, y)| y))
        .fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE_PX).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: {title} (log scale)", results.scenario.name),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(
                -0.2f64..(PERCENTILES.len() as f64 - 0.8),
                ((y_min / 2.0).max(0.5)..y_max * 2.0).log_scale(),
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(PERCENTILES.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < PERCENTILES.len() {
                    PERCENTILES[i as usize].to_string()
                } else {
                    String::new()
                }
            })
            .y_desc("latency")
            .y_label_formatter(&|y| duration_label(*y))
            .draw()
            .map_err(|e| e.to_string())?;
        for (pos, server, points) in tether_last(lines) {
            let color = color_for(shade_index(results, pos), server.kind);
            let width = stroke_px(server);
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
                .map_err(|e| e.to_string())?
                .label(server.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            // Percentiles rise to the right: the lower right is the empty corner.
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(Some(svg))
}

/// A latency axis label from microseconds: `850 µs`, `14.7 ms`, `2.1 s`.
fn duration_label(us: f64) -> String {
    if us < 1e3 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        let ms = format!("{:.3}", us / 1e3);
        format!("{} ms", ms.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn first_good_run(server: &ServerResult) -> Option<&RunResult> {
    server
        .runs
        .iter()
        .find(|r| r.error.is_none() && r.timeline.len() >= 2)
}

/// A loadgen live-line field over time; empty when it is zero throughout (nothing to plot).
fn loadgen_series(r: &RunResult, field: fn(&LoadgenSecond) -> u64) -> Vec<(f64, f64)> {
    if r.loadgen_seconds.iter().all(|s| field(s) == 0) {
        return Vec::new();
    }
    r.loadgen_seconds
        .iter()
        .map(|s| (s.t_s, field(s) as f64))
        .collect()
}

fn connections_series(t: &[Sample]) -> Vec<(f64, f64)> {
    let base = t.first().map(|s| s.fds).unwrap_or(0) as f64;
    t.iter()
        .map(|s| (s.t_s, (s.fds as f64 - base).max(0.0)))
        .collect()
}

fn cpu_series(t: &[Sample]) -> Vec<(f64, f64)> {
    t.windows(2)
        .filter(|w| w[1].t_s > w[0].t_s)
        .map(|w| {
            (
                w[1].t_s,
                100.0 * (w[1].cpu_s - w[0].cpu_s) / (w[1].t_s - w[0].t_s),
            )
        })
        .collect()
}

fn rss_series(t: &[Sample]) -> Vec<(f64, f64)> {
    t.iter()
        .map(|s| (s.t_s, s.rss_bytes as f64 / (1024.0 * 1024.0)))
        .collect()
}

/// Tether's lines last, so that they are drawn over every peer's.
fn tether_last(mut lines: Vec<Line>) -> Vec<Line> {
    lines.sort_by_key(|(_, s, _)| s.kind == ServerKind::Tether);
    lines
}

fn stroke_px(server: &ServerResult) -> u32 {
    if server.kind == ServerKind::Tether {
        TETHER_STROKE_PX
    } else {
        PEER_STROKE_PX
    }
}

/// True when every line stays within [`SAME_LINE_TOLERANCE`] of the first at each point (in
/// order; the runner samples every server on the same period): nothing to tell apart.
fn indistinguishable(lines: &[Line], y_max: f64) -> bool {
    let Some((_, _, first)) = lines.first() else {
        return true;
    };
    lines.len() > 1
        && lines.iter().skip(1).all(|(_, _, p)| {
            p.iter()
                .zip(first)
                .all(|(a, b)| (a.1 - b.1).abs() <= SAME_LINE_TOLERANCE * y_max)
        })
}

/// Log scale when the servers' largest values differ by more than [`LOG_SCALE_RATIO`].
fn wants_log_scale(lines: &[Line]) -> bool {
    let peaks: Vec<f64> = lines
        .iter()
        .map(|(_, _, p)| p.iter().map(|&(_, y)| y).fold(0.0f64, f64::max))
        .filter(|&y| y > 0.0)
        .collect();
    let hi = peaks.iter().copied().fold(0.0f64, f64::max);
    let lo = peaks.iter().copied().fold(f64::MAX, f64::min);
    peaks.len() > 1 && hi > LOG_SCALE_RATIO * lo
}

fn timeline_svg(
    results: &Results,
    title: &str,
    y_desc: &str,
    series: fn(&RunResult) -> Vec<(f64, f64)>,
) -> Result<Option<String>, String> {
    let lines: Vec<Line> = results
        .servers
        .iter()
        .enumerate()
        .filter_map(|(pos, s)| first_good_run(s).map(|r| (pos, s, series(r))))
        .filter(|(_, _, p)| !p.is_empty())
        .collect();
    if lines.is_empty() {
        return Ok(None);
    }
    let x_max = lines
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|&(x, _)| x))
        .fold(1.0f64, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|&(_, y)| y))
        .fold(1.0f64, f64::max);
    if indistinguishable(&lines, y_max) {
        return Ok(None);
    }
    let y_min = lines
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::min);
    let log = wants_log_scale(&lines);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE_PX).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let caption = format!(
            "{}: {title}{}",
            results.scenario.name,
            if log { " (log scale)" } else { "" }
        );
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(caption, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(80);
        if log {
            // The smallest positive value sets the floor; zeros (before the load) sit on it.
            let floor = lines
                .iter()
                .flat_map(|(_, _, p)| p.iter().map(|&(_, y)| y))
                .filter(|&y| y > 0.0)
                .fold(f64::MAX, f64::min)
                .min(y_max)
                / 2.0;
            let mut chart = builder
                .build_cartesian_2d(0f64..x_max * 1.02, (floor..y_max * 2.0).log_scale())
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("seconds since the load started")
                .y_desc(y_desc)
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()
                .map_err(|e| e.to_string())?;
            draw_lines(&mut chart, results, lines, Some(floor))?;
        } else {
            let mut chart = builder
                .build_cartesian_2d(0f64..x_max * 1.02, y_min..y_max * 1.1)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("seconds since the load started")
                .y_desc(y_desc)
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()
                .map_err(|e| e.to_string())?;
            draw_lines(&mut chart, results, lines, None)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(Some(svg))
}

/// Draws each server's line (tether's last, on top) and the legend; with a `floor` (a log
/// scale's), values below it are drawn at it.
fn draw_lines<'a, CT>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    results: &Results,
    lines: Vec<Line>,
    floor: Option<f64>,
) -> Result<(), String>
where
    CT: CoordTranslate<From = (f64, f64)>,
{
    for (pos, server, points) in tether_last(lines) {
        let color = color_for(shade_index(results, pos), server.kind);
        let width = stroke_px(server);
        let points: Vec<(f64, f64)> = match floor {
            Some(floor) => points.into_iter().map(|(x, y)| (x, y.max(floor))).collect(),
            None => points,
        };
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(width)))
            .map_err(|e| e.to_string())?
            .label(server.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_s: f64, fds: u64, cpu_s: f64) -> Sample {
        Sample {
            t_s,
            fds,
            cpu_s,
            ..Sample::default()
        }
    }

    #[test]
    fn derived_series() {
        let t = [
            s(0.0, 10, 1.0),
            s(0.5, 60, 1.25),
            s(1.0, 110, 1.5),
            s(2.0, 110, 1.5),
        ];
        assert_eq!(
            connections_series(&t),
            vec![(0.0, 0.0), (0.5, 50.0), (1.0, 100.0), (2.0, 100.0)]
        );
        assert_eq!(cpu_series(&t), vec![(0.5, 50.0), (1.0, 50.0), (2.0, 0.0)]);
    }

    #[test]
    fn latency_labels() {
        assert_eq!(duration_label(850.0), "850 µs");
        assert_eq!(duration_label(14_687.0), "14.687 ms");
        assert_eq!(duration_label(20_000.0), "20 ms");
        assert_eq!(duration_label(2_091_007.0), "2.09 s");
    }

    fn server(kind: ServerKind) -> ServerResult {
        ServerResult {
            label: format!("{kind:?}"),
            kind,
            command: String::new(),
            skipped: None,
            runs: Vec::new(),
        }
    }

    #[test]
    fn readability_rules() {
        let (t, p) = (server(ServerKind::Tether), server(ServerKind::Tungstenite));
        let line = |s, ys: &[f64]| -> Line {
            (
                0,
                s,
                ys.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect(),
            )
        };
        // 1.3 GiB against 20 MiB: log; 30 against 20: linear.
        assert!(wants_log_scale(&[
            line(&t, &[0.0, 20.0]),
            line(&p, &[0.0, 1300.0])
        ]));
        assert!(!wants_log_scale(&[
            line(&t, &[0.0, 20.0]),
            line(&p, &[0.0, 30.0])
        ]));
        // Lines within 10 % of the largest value at every point say nothing; one apart does.
        let same = [
            line(&t, &[0.0, 1000.0, 1000.0]),
            line(&p, &[0.0, 990.0, 1000.0]),
        ];
        assert!(indistinguishable(&same, 1000.0));
        let apart = [
            line(&t, &[0.0, 1000.0, 1000.0]),
            line(&p, &[0.0, 700.0, 1000.0]),
        ];
        assert!(!indistinguishable(&apart, 1000.0));
        assert!(!indistinguishable(&same[..1], 1000.0));
        // Tether is drawn last, over the peers.
        let order = tether_last(vec![line(&t, &[1.0]), line(&p, &[1.0])]);
        assert_eq!(order.last().map(|l| l.1.kind), Some(ServerKind::Tether));
    }
}
