//! Scenario files: a TOML file whose keys are the long options of the command line, for what
//! would otherwise be a long command line (`--scenario FILE`).
//!
//! ```toml
//! url = ["ws://127.0.0.1:9001/echo", "ws://127.0.0.1:9002/echo"]
//! clients = 25000
//! rate = 5000
//! hold = "5s"
//! threshold = ["errors==0", "handshake_p99<50ms"]
//! ```
//!
//! The file is turned into arguments and parsed by the same parser as the command line, so
//! a key means exactly what its option means and is checked the same way. An option given on
//! the command line wins over the file's key (for a repeatable option the command line's
//! values replace the file's). Keys may be written with `-` or `_`; an unknown key, or a value
//! of the wrong shape, refuses the file.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::cli::Args;

/// Why a scenario file was refused.
#[derive(Debug)]
pub enum ScenarioError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    Parse {
        path: PathBuf,
        error: toml::de::Error,
    },
    UnknownKey {
        path: PathBuf,
        key: String,
    },
    BadValue {
        path: PathBuf,
        key: String,
        why: &'static str,
    },
    MissingPath,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScenarioError::Read { path, error } => {
                write!(f, "scenario {}: cannot read: {error}", path.display())
            }
            ScenarioError::Parse { path, error } => {
                write!(f, "scenario {}: bad TOML: {error}", path.display())
            }
            ScenarioError::UnknownKey { path, key } => write!(
                f,
                "scenario {}: unknown key {key:?} (keys are the long options of \
                 `tether-loadgen --help`, e.g. clients, rate, hold, url, threshold)",
                path.display()
            ),
            ScenarioError::BadValue { path, key, why } => {
                write!(f, "scenario {}: key {key:?}: {why}", path.display())
            }
            ScenarioError::MissingPath => write!(f, "--scenario needs a FILE"),
        }
    }
}

impl std::error::Error for ScenarioError {}

/// The value of `--scenario` in `argv` (`--scenario F` or `--scenario=F`), if any.
fn scenario_path(argv: &[OsString]) -> Result<Option<PathBuf>, ScenarioError> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { continue };
        if s == "--" {
            break;
        }
        if s == "--scenario" {
            return it
                .next()
                .map(|p| Some(PathBuf::from(p)))
                .ok_or(ScenarioError::MissingPath);
        }
        if let Some(p) = s.strip_prefix("--scenario=") {
            return Ok(Some(PathBuf::from(p)));
        }
    }
    Ok(None)
}

/// Long option names given on the command line.
fn given_on_command_line(argv: &[OsString]) -> Vec<String> {
    argv.iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .take_while(|s| *s != "--")
        .filter_map(|s| s.strip_prefix("--"))
        .map(|s| s.split('=').next().unwrap_or(s).to_string())
        .collect()
}

/// Turns the scenario `text` into `--option value` arguments, leaving out options that
/// `given` (the command line) sets.
fn scenario_args(
    path: &Path,
    text: &str,
    given: &[String],
) -> Result<Vec<OsString>, ScenarioError> {
    let table: toml::Table = toml::from_str(text).map_err(|error| ScenarioError::Parse {
        path: path.to_path_buf(),
        error,
    })?;
    let cmd = Args::command();
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| long != "scenario" && long != "help" && long != "version")
            .ok_or_else(|| ScenarioError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
            })?;
        if given.contains(&long) {
            continue;
        }
        let bad = |why| ScenarioError::BadValue {
            path: path.to_path_buf(),
            key: key.clone(),
            why,
        };
        let is_flag = !arg.get_action().takes_values();
        let scalar = |v: &toml::Value| -> Result<String, ScenarioError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                _ => Err(bad("expected a string or a number")),
            }
        };
        match value {
            toml::Value::Boolean(b) if is_flag => {
                if *b {
                    out.push(OsString::from(format!("--{long}")));
                }
            }
            _ if is_flag => return Err(bad("a switch: true or false")),
            toml::Value::Array(items) => {
                if !matches!(arg.get_action(), clap::ArgAction::Append) {
                    return Err(bad("takes one value, not a list"));
                }
                for item in items {
                    out.push(OsString::from(format!("--{long}")));
                    out.push(OsString::from(scalar(item)?));
                }
            }
            v => {
                out.push(OsString::from(format!("--{long}")));
                out.push(OsString::from(scalar(v)?));
            }
        }
    }
    Ok(out)
}

/// The command line with the scenario file's options (if `--scenario` is given) put in front
/// of it, ready for `Args::parse_from`.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, ScenarioError> {
    let Some(path) = scenario_path(&argv)? else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|error| ScenarioError::Read {
        path: path.clone(),
        error,
    })?;
    let from_file = scenario_args(&path, &text, &given_on_command_line(&argv))?;
    let mut out = Vec::with_capacity(argv.len() + from_file.len());
    out.extend(argv.first().cloned());
    out.extend(from_file);
    out.extend(argv.into_iter().skip(1));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    const FILE: &str = r#"
url = ["ws://127.0.0.1:9001/echo", "ws://127.0.0.1:9002/echo"]
clients = 2500
rate = "100:500"
ramp = "5s"
hold = "2s"
msg_rate = 1.5
quiet = true
dry-run = false
threshold = ["errors==0", "handshake_p99<50ms"]
"#;

    fn parse(text: &str, cli: &[&str]) -> Result<Args, ScenarioError> {
        let path = Path::new("s.toml");
        let argv = os(cli);
        let mut full = vec![argv[0].clone()];
        full.extend(scenario_args(path, text, &given_on_command_line(&argv))?);
        full.extend(argv.into_iter().skip(1));
        Ok(Args::try_parse_from(full).expect("parses"))
    }

    #[test]
    fn keys_are_options_and_the_command_line_wins() {
        let a = parse(FILE, &["tether-loadgen", "--hold", "9s"]).unwrap();
        assert_eq!(a.urls.len(), 2);
        assert_eq!(a.clients, 2500);
        assert_eq!(a.rate, "100:500");
        assert_eq!(a.ramp, 5000);
        assert_eq!(a.hold, 9000);
        assert_eq!(a.msg_rate, 1.5);
        assert!(a.quiet && !a.dry_run);
        assert_eq!(a.thresholds, ["errors==0", "handshake_p99<50ms"]);
        // A repeatable option on the command line replaces the file's list.
        let a = parse(FILE, &["tether-loadgen", "--url", "ws://127.0.0.1:1/"]).unwrap();
        assert_eq!(a.urls, ["ws://127.0.0.1:1/"]);
        let a = parse(FILE, &["tether-loadgen", "--threshold=errors<5"]).unwrap();
        assert_eq!(a.thresholds, ["errors<5"]);
    }

    #[test]
    fn refuses_unknown_keys_and_wrong_shapes() {
        let cli = ["tether-loadgen"];
        for (text, want) in [
            ("clientz = 5", "unknown key"),
            ("scenario = \"x.toml\"", "unknown key"),
            ("quiet = 1", "a switch"),
            ("clients = [1, 2]", "not a list"),
            ("hold = { s = 1 }", "a string or a number"),
            ("clients = ", "bad TOML"),
        ] {
            let e = parse(text, &cli)
                .err()
                .unwrap_or_else(|| panic!("accepted {text}"));
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn finds_the_scenario_path() {
        let p = |v: &[&str]| scenario_path(&os(v)).unwrap();
        assert_eq!(
            p(&["x", "--scenario", "a.toml"]),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            p(&["x", "--scenario=b.toml"]),
            Some(PathBuf::from("b.toml"))
        );
        assert_eq!(p(&["x", "--clients", "5"]), None);
        assert!(scenario_path(&os(&["x", "--scenario"])).is_err());
    }
}
