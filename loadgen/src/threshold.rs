//! Pass/fail thresholds in the style of k6: `--threshold 'handshake_p99<20ms'`,
//! `--threshold 'errors==0'`. Each is `METRIC OP VALUE`; they are parsed before the run (a bad
//! one refuses the plan) and evaluated on the final report. A crossed threshold makes the run
//! exit with [`EXIT_THRESHOLD_CROSSED`], so that CI can gate on a load test.
//!
//! Metrics (all read from the JSON report, so a threshold says exactly what the report says):
//!
//! - latencies, compared with a unit (`us`, `ms`, `s`; a bare number is refused):
//!   `{handshake,tcp_connect,upgrade,message}_{p50,p90,p99,p999,max,mean}` (`message` is the
//!   echo round trip or, for d2d and push, the one-way delivery), `storm_recovery`;
//! - counts, compared with a bare number: `errors` (handshake errors), `handshakes_ok`,
//!   `connected_peak`, `not_started`, `disconnects`, `closes_timed_out`, `closes_unfinished`,
//!   `lag_events`, `messages_sent`, `messages_received`, `messages_lost` (sent, not received),
//!   `message_gaps`, `message_duplicates`, `tether_errors`, `worker_failures`;
//! - rates: `connect_rate` (achieved connects per second, bare number), `error_rate`
//!   (handshake errors / attempts, as a fraction `0.01` or a percentage `1%`).
//!
//! A metric without data (a latency percentile of an empty histogram, a message metric of a run
//! that sent none) crosses its threshold: a gate that cannot be evaluated does not pass.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Exit status of a run in which at least one threshold was crossed (k6's value).
pub const EXIT_THRESHOLD_CROSSED: u8 = 99;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    /// Operators, longest first, so that `<=` is not read as `<`.
    const ALL: [(&'static str, Op); 6] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];

    fn holds(self, actual: f64, limit: f64) -> bool {
        match self {
            Op::Lt => actual < limit,
            Op::Le => actual <= limit,
            Op::Gt => actual > limit,
            Op::Ge => actual >= limit,
            Op::Eq => actual == limit,
            Op::Ne => actual != limit,
        }
    }

    fn as_str(self) -> &'static str {
        Op::ALL
            .iter()
            .find(|(_, o)| *o == self)
            .map(|(s, _)| *s)
            .expect("every operator is listed")
    }
}

/// How a metric's value is written and compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Microseconds in the report; the threshold needs a unit (`us`, `ms`, `s`).
    LatencyUs,
    /// Seconds in the report; the threshold needs a unit (`us`, `ms`, `s`).
    DurationS,
    /// A count or rate: a bare number.
    Number,
    /// A fraction in [0, 1]: `0.01` or `1%`.
    Fraction,
}

/// One parsed threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// As written (whitespace removed).
    pub expr: String,
    pub metric: String,
    pub op: Op,
    /// The limit in the report's unit (microseconds, seconds, a count or a fraction).
    pub limit: f64,
    kind: Kind,
}

/// The outcome of one threshold on a report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Outcome {
    pub threshold: String,
    pub metric: String,
    pub op: Op,
    pub limit: f64,
    /// The metric's value in the report's unit; `None` when it had no data.
    pub actual: Option<f64>,
    /// Human form of the value, in the threshold's unit.
    pub actual_text: String,
    pub ok: bool,
}

/// Why a threshold expression was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThresholdError {
    NoOperator { expr: String },
    UnknownMetric { expr: String, metric: String },
    BadValue { expr: String, why: String },
}

impl fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThresholdError::NoOperator { expr } => write!(
                f,
                "--threshold {expr:?}: expected METRIC OP VALUE with OP one of < <= > >= == != \
                 (e.g. 'handshake_p99<20ms', 'errors==0')"
            ),
            ThresholdError::UnknownMetric { expr, metric } => write!(
                f,
                "--threshold {expr:?}: unknown metric {metric:?}; known: {}",
                metric_names().join(", ")
            ),
            ThresholdError::BadValue { expr, why } => write!(f, "--threshold {expr:?}: {why}"),
        }
    }
}

impl std::error::Error for ThresholdError {}

const LATENCY_HISTS: [(&str, &str); 4] = [
    ("handshake", "handshake_latency_us"),
    ("tcp_connect", "tcp_connect_latency_us"),
    ("upgrade", "upgrade_latency_us"),
    // Resolved at evaluation: message_rtt_us (echo) or message_delivery_us (d2d, push).
    ("message", ""),
];
const LATENCY_STATS: [&str; 6] = ["p50", "p90", "p99", "p999", "max", "mean"];
const COUNTS: [&str; 15] = [
    "errors",
    "handshakes_ok",
    "connected_peak",
    "not_started",
    "disconnects",
    "closes_timed_out",
    "closes_unfinished",
    "lag_events",
    "messages_sent",
    "messages_received",
    "messages_lost",
    "message_gaps",
    "message_duplicates",
    "tether_errors",
    "worker_failures",
];

/// Every metric name a threshold may use.
pub fn metric_names() -> Vec<String> {
    let mut names = Vec::new();
    for (h, _) in LATENCY_HISTS {
        for s in LATENCY_STATS {
            names.push(format!("{h}_{s}"));
        }
    }
    names.push("storm_recovery".into());
    names.extend(COUNTS.iter().map(|s| s.to_string()));
    names.push("connect_rate".into());
    names.push("error_rate".into());
    names
}

fn kind_of(metric: &str) -> Option<Kind> {
    if metric == "storm_recovery" {
        return Some(Kind::DurationS);
    }
    if metric == "error_rate" {
        return Some(Kind::Fraction);
    }
    if metric == "connect_rate" || COUNTS.contains(&metric) {
        return Some(Kind::Number);
    }
    let (h, s) = metric.rsplit_once('_')?;
    (LATENCY_HISTS.iter().any(|(n, _)| *n == h) && LATENCY_STATS.contains(&s))
        .then_some(Kind::LatencyUs)
}

/// Parses `1.5ms` into microseconds; a bare number is refused (the unit is not guessed).
fn parse_duration_us(s: &str) -> Result<f64, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return Err(format!(
            "{s:?} needs a unit: write it as 500us, 20ms or 1.5s"
        ));
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 20ms)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a non-negative duration"));
    }
    Ok(v * scale)
}

impl Threshold {
    /// Parses `METRIC OP VALUE` (spaces allowed).
    pub fn parse(text: &str) -> Result<Threshold, ThresholdError> {
        let expr: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let (at, op_text, op) = Op::ALL
            .iter()
            .filter_map(|(s, o)| expr.find(s).map(|i| (i, *s, *o)))
            // The earliest operator; at one position the longest (listed first) wins.
            .min_by_key(|(i, _, _)| *i)
            .ok_or_else(|| ThresholdError::NoOperator { expr: expr.clone() })?;
        let metric = expr[..at].to_string();
        let value = &expr[at + op_text.len()..];
        let kind = kind_of(&metric).ok_or_else(|| ThresholdError::UnknownMetric {
            expr: expr.clone(),
            metric: metric.clone(),
        })?;
        let bad = |why: String| ThresholdError::BadValue {
            expr: expr.clone(),
            why,
        };
        let limit = match kind {
            Kind::LatencyUs => parse_duration_us(value).map_err(bad)?,
            Kind::DurationS => parse_duration_us(value).map_err(bad)? / 1e6,
            Kind::Number => {
                let v: f64 = value
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite())
                    .ok_or_else(|| {
                        bad(format!("{value:?} is not a number ({metric} has no unit)"))
                    })?;
                v
            }
            Kind::Fraction => {
                let v = match value.strip_suffix('%') {
                    Some(p) => p.parse::<f64>().map(|v| v / 100.0),
                    None => value.parse::<f64>(),
                }
                .ok()
                .filter(|v| (0.0..=1.0).contains(v))
                .ok_or_else(|| bad(format!("{value:?} is not a share (e.g. 1% or 0.01)")))?;
                v
            }
        };
        Ok(Threshold {
            expr,
            metric,
            op,
            limit,
            kind,
        })
    }

    /// The metric's value in `report` (the JSON summary), in the report's unit.
    fn actual(&self, report: &Value) -> Option<f64> {
        let num = |path: &str| -> Option<f64> {
            let mut cur = report;
            for k in path.split('.') {
                cur = cur.get(k)?;
            }
            cur.as_f64()
        };
        let sum = |key: &str| -> f64 {
            report[key]
                .as_object()
                .map(|m| m.values().filter_map(Value::as_f64).sum())
                .unwrap_or(0.0)
        };
        let m = self.metric.as_str();
        match m {
            "errors" => num("handshake_errors_total"),
            "handshakes_ok" | "connected_peak" => num(m),
            "not_started" => num("clients_not_started"),
            "disconnects" => Some(sum("disconnects")),
            "closes_timed_out" => num("closes.timed_out"),
            "closes_unfinished" => num("closes.unfinished"),
            "lag_events" => num("schedule_lag_events"),
            "messages_sent" => num("messages.sent"),
            "messages_received" => num("messages.received"),
            "messages_lost" => num("messages.unanswered"),
            "message_gaps" => num("messages.gaps"),
            "message_duplicates" => num("messages.duplicates"),
            "tether_errors" => Some(sum("tether_errors")),
            "worker_failures" => report["worker_failures"].as_array().map(|a| a.len() as f64),
            "connect_rate" => num("connect_rate_achieved_per_s"),
            "error_rate" => {
                let attempts = num("handshake_attempts")?;
                (attempts > 0.0).then(|| num("handshake_errors_total").unwrap_or(0.0) / attempts)
            }
            "storm_recovery" => num("storm.recovery_s"),
            _ => {
                let (h, stat) = m.rsplit_once('_')?;
                let key = match h {
                    "message" => {
                        if report.get("message_rtt_us").is_some() {
                            "message_rtt_us"
                        } else {
                            "message_delivery_us"
                        }
                    }
                    _ => LATENCY_HISTS.iter().find(|(n, _)| *n == h)?.1,
                };
                let l = report.get(key)?;
                if l["count"].as_u64().unwrap_or(0) == 0 {
                    return None;
                }
                l[stat].as_f64()
            }
        }
    }

    fn format(&self, v: f64) -> String {
        match self.kind {
            Kind::LatencyUs => format!("{:.3}ms", v / 1e3),
            Kind::DurationS => format!("{v:.3}s"),
            Kind::Number => {
                if v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            }
            Kind::Fraction => format!("{:.3}%", v * 100.0),
        }
    }

    /// Evaluates this threshold on a report.
    pub fn evaluate(&self, report: &Value) -> Outcome {
        let actual = self.actual(report);
        Outcome {
            threshold: self.expr.clone(),
            metric: self.metric.clone(),
            op: self.op,
            limit: self.limit,
            actual,
            actual_text: actual.map_or_else(|| "no data".to_string(), |v| self.format(v)),
            ok: actual.is_some_and(|v| self.op.holds(v, self.limit)),
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.metric,
            self.op.as_str(),
            self.format(self.limit)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> Value {
        json!({
            "handshake_attempts": 200,
            "handshake_errors_total": 2,
            "handshakes_ok": 198,
            "connected_peak": 198,
            "clients_not_started": 0,
            "connect_rate_achieved_per_s": 995.5,
            "disconnects": {"server_eof": 1, "reset": 2},
            "handshake_latency_us": {"count": 198, "p50": 400, "p99": 19_999, "max": 30_000, "mean": 1234.0},
            "upgrade_latency_us": {"count": 0, "p99": 0},
            "closes": {"timed_out": 0, "unfinished": 0},
            "worker_failures": [],
        })
    }

    #[test]
    fn parses_operators_units_and_spaces() {
        let t = Threshold::parse("handshake_p99 < 20ms").unwrap();
        assert_eq!(
            (t.metric.as_str(), t.op, t.limit),
            ("handshake_p99", Op::Lt, 20_000.0)
        );
        assert_eq!(t.expr, "handshake_p99<20ms");
        assert_eq!(Threshold::parse("errors==0").unwrap().op, Op::Eq);
        assert_eq!(Threshold::parse("errors<=3").unwrap().op, Op::Le);
        assert_eq!(Threshold::parse("errors!=3").unwrap().op, Op::Ne);
        assert_eq!(Threshold::parse("connect_rate>=900").unwrap().op, Op::Ge);
        assert_eq!(
            Threshold::parse("upgrade_max>1.5s").unwrap().limit,
            1_500_000.0
        );
        assert_eq!(Threshold::parse("message_p50<250us").unwrap().limit, 250.0);
        assert_eq!(Threshold::parse("error_rate<1%").unwrap().limit, 0.01);
        assert_eq!(Threshold::parse("error_rate<0.5").unwrap().limit, 0.5);
        assert_eq!(Threshold::parse("storm_recovery<=2s").unwrap().limit, 2.0);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        use ThresholdError::*;
        assert!(matches!(
            Threshold::parse("errors 0"),
            Err(NoOperator { .. })
        ));
        assert!(matches!(
            Threshold::parse("p99<20ms"),
            Err(UnknownMetric { .. })
        ));
        assert!(matches!(
            Threshold::parse("handshake_p98<20ms"),
            Err(UnknownMetric { .. })
        ));
        // A latency without a unit is refused, not guessed.
        let e = Threshold::parse("handshake_p99<20").unwrap_err();
        assert!(e.to_string().contains("needs a unit"), "{e}");
        assert!(matches!(
            Threshold::parse("errors==0ms"),
            Err(BadValue { .. })
        ));
        assert!(matches!(
            Threshold::parse("error_rate<150%"),
            Err(BadValue { .. })
        ));
        assert!(matches!(
            Threshold::parse("handshake_p99<-1ms"),
            Err(BadValue { .. })
        ));
    }

    #[test]
    fn every_listed_metric_parses() {
        for m in metric_names() {
            let value = match kind_of(&m).unwrap() {
                Kind::LatencyUs | Kind::DurationS => "1s",
                Kind::Number => "1",
                Kind::Fraction => "1%",
            };
            Threshold::parse(&format!("{m}<{value}")).unwrap();
        }
    }

    #[test]
    fn evaluates_against_a_report() {
        let r = report();
        let eval = |e: &str| Threshold::parse(e).unwrap().evaluate(&r);
        assert!(eval("handshake_p99<20ms").ok);
        assert!(!eval("handshake_p99<19999us").ok);
        assert!(eval("handshake_p99<=19999us").ok);
        assert!(!eval("errors==0").ok);
        assert_eq!(eval("errors==0").actual, Some(2.0));
        assert!(eval("errors<=2").ok);
        assert!(eval("disconnects==3").ok);
        assert!(eval("error_rate<=1%").ok);
        assert!(!eval("error_rate<1%").ok);
        assert!(eval("connect_rate>=900").ok);
        assert!(eval("worker_failures==0").ok);
        assert_eq!(eval("handshake_mean<2ms").actual_text, "1.234ms");
        // No data crosses: an empty histogram, a run without messages.
        let o = eval("upgrade_p99<1s");
        assert_eq!(
            (o.actual, o.ok, o.actual_text.as_str()),
            (None, false, "no data")
        );
        assert!(!eval("message_p99<1s").ok);
        assert!(!eval("messages_lost==0").ok);
    }
}
