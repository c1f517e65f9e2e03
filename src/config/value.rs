//! The value types of settings and their one grammar, shared by flags, environment variables
//! and the TOML file: [`SettingValue`] parses the text of a flag or variable, reads a TOML value
//! and renders the TOML form that `tether config check` and `tether config example` print.
//!
//! Durations are `<integer><unit>` with unit `ms`, `s`, `m` or `h` (`250ms`, `2s`, `5m`, `1h`);
//! a bare number is refused, because `2` meant seconds for some settings and milliseconds for
//! others before this grammar existed.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use tether_shards::ShardCount;

/// How a setting is written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--name VALUE`.
    Value,
    /// `--name` alone means `true`; `--name=false` is accepted too.
    Switch,
    /// `--name A,B` (comma-separated, repeatable).
    List,
    /// `--name VALUE` whose value is never printed (help, errors, `config check`).
    Secret,
}

/// A type a setting can have.
pub trait SettingValue: Sized {
    /// How the flag is written.
    const FLAG: FlagKind = FlagKind::Value;
    /// Parses the text of a flag or environment variable.
    fn parse(text: &str) -> Result<Self, String>;
    /// Reads a TOML value: by default a TOML string holding the same text as the flag.
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Self::parse(s),
            other => Err(format!("expected a string, got {}", describe(other))),
        }
    }
    /// The TOML form of the value; `None` when the setting is unset.
    fn to_toml(&self) -> Option<String>;
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("the string {s:?}"),
        other => format!("{} {other}", other.type_str()),
    }
}

fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Parses a duration: `<integer><unit>`, unit one of `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: write a whole number and a unit, e.g. 250ms, 2s, 5m, 1h"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: {digits} is too large"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "invalid duration {text:?}: a bare number is refused, give the unit: \
                 {n}ms, {n}s, {n}m or {n}h"
            ))
        }
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?}, use ms, s, m or h \
                 (e.g. 250ms, 2s, 5m, 1h)"
            ))
        }
    };
    let ms = n
        .checked_mul(ms_per_unit)
        .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Writes a duration in the largest unit that divides it exactly (`90s`, `2m`, `1500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    if ms == 0 {
        return "0s".to_owned();
    }
    format!("{ms}ms")
}

impl SettingValue for Duration {
    fn parse(text: &str) -> Result<Self, String> {
        parse_duration(text)
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => parse_duration(s),
            toml::Value::Integer(n) => Err(format!(
                "invalid duration {n}: a bare number is refused, write a string with the unit: \
                 \"{n}ms\", \"{n}s\", \"{n}m\" or \"{n}h\""
            )),
            other => Err(format!(
                "expected a duration string such as \"2s\", got {}",
                describe(other)
            )),
        }
    }
    fn to_toml(&self) -> Option<String> {
        Some(quote(&format_duration(*self)))
    }
}

fn parse_count<T: TryFrom<u64>>(text: &str) -> Result<T, String> {
    let t = text.trim();
    let n: u64 = t
        .parse()
        .map_err(|_| format!("invalid number {text:?}: expected a whole number, e.g. 1024"))?;
    T::try_from(n).map_err(|_| format!("{n} is too large"))
}

fn count_from_toml<T: TryFrom<u64>>(value: &toml::Value) -> Result<T, String> {
    match value {
        toml::Value::Integer(n) => {
            let n = u64::try_from(*n).map_err(|_| format!("{n} is negative"))?;
            T::try_from(n).map_err(|_| format!("{n} is too large"))
        }
        other => Err(format!("expected a whole number, got {}", describe(other))),
    }
}

impl SettingValue for usize {
    fn parse(text: &str) -> Result<Self, String> {
        parse_count(text)
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        count_from_toml(value)
    }
    fn to_toml(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl SettingValue for u32 {
    fn parse(text: &str) -> Result<Self, String> {
        parse_count(text)
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        count_from_toml(value)
    }
    fn to_toml(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl SettingValue for bool {
    const FLAG: FlagKind = FlagKind::Switch;
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(format!("invalid switch {other:?}: use true or false")),
        }
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Boolean(b) => Ok(*b),
            other => Err(format!("expected true or false, got {}", describe(other))),
        }
    }
    fn to_toml(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl SettingValue for SocketAddr {
    fn parse(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("invalid address {text:?}: expected IP:PORT, e.g. 0.0.0.0:8080"))
    }
    fn to_toml(&self) -> Option<String> {
        Some(quote(&self.to_string()))
    }
}

impl SettingValue for ShardCount {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Integer(n) => n.to_string().parse(),
            toml::Value::String(s) => s.parse(),
            other => Err(format!(
                "expected a number or \"auto\", got {}",
                describe(other)
            )),
        }
    }
    fn to_toml(&self) -> Option<String> {
        Some(match self {
            ShardCount::Auto => quote("auto"),
            ShardCount::Fixed(n) => n.to_string(),
        })
    }
}

impl SettingValue for String {
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("must not be empty".into());
        }
        Ok(text.trim().to_owned())
    }
    fn to_toml(&self) -> Option<String> {
        Some(quote(self))
    }
}

impl SettingValue for PathBuf {
    fn parse(text: &str) -> Result<Self, String> {
        String::parse(text).map(PathBuf::from)
    }
    fn to_toml(&self) -> Option<String> {
        Some(quote(&self.display().to_string()))
    }
}

/// A list of strings: `a,b` on the command line, a TOML array (or one string) in the file.
impl SettingValue for Vec<String> {
    const FLAG: FlagKind = FlagKind::List;
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect())
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Self::parse(s),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => String::parse(s),
                    other => Err(format!("expected strings, got {}", describe(other))),
                })
                .collect(),
            other => Err(format!(
                "expected an array of strings, got {}",
                describe(other)
            )),
        }
    }
    fn to_toml(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let items: Vec<String> = self.iter().map(|s| quote(s)).collect();
        Some(format!("[{}]", items.join(", ")))
    }
}

/// A list of paths: repeated (or `a,b`) on the command line, a TOML array (or one string) in
/// the file. A path holding a comma cannot be given.
impl SettingValue for Vec<PathBuf> {
    const FLAG: FlagKind = FlagKind::List;
    fn parse(text: &str) -> Result<Self, String> {
        Vec::<String>::parse(text).map(|v| v.into_iter().map(PathBuf::from).collect())
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        Vec::<String>::from_toml(value).map(|v| v.into_iter().map(PathBuf::from).collect())
    }
    fn to_toml(&self) -> Option<String> {
        let texts: Vec<String> = self.iter().map(|p| p.display().to_string()).collect();
        texts.to_toml()
    }
}

impl<T: SettingValue> SettingValue for Option<T> {
    const FLAG: FlagKind = T::FLAG;
    fn parse(text: &str) -> Result<Self, String> {
        T::parse(text).map(Some)
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        T::from_toml(value).map(Some)
    }
    fn to_toml(&self) -> Option<String> {
        self.as_ref().and_then(T::to_toml)
    }
}

/// A secret (a JWT signing secret): never printed, in help, errors or `config check`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// What `config check` prints instead of the value.
    pub const REDACTED: &'static str = "<redacted>";

    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A secret read from a file: the file's text without its trailing line break.
    pub fn from_file(path: &std::path::Path) -> Result<Secret, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        Ok(Secret(text.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Secret::REDACTED)
    }
}

impl SettingValue for Secret {
    const FLAG: FlagKind = FlagKind::Secret;
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Secret(text.to_owned()))
    }
    fn to_toml(&self) -> Option<String> {
        Some(quote(Secret::REDACTED))
    }
}

/// A CPU list such as `0-3,6`, kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList {
    text: String,
    cpus: Vec<usize>,
}

impl CpuList {
    /// The CPUs, in the order listed.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }
}

impl SettingValue for CpuList {
    fn parse(text: &str) -> Result<Self, String> {
        let cpus = tether_shards::cpus::parse_cpu_list(text).map_err(|e| e.to_string())?;
        Ok(CpuList {
            text: text.trim().to_owned(),
            cpus,
        })
    }
    fn to_toml(&self) -> Option<String> {
        Some(quote(&self.text))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl SettingValue for LogFormat {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("invalid log format {other:?}: use text or json")),
        }
    }
    fn to_toml(&self) -> Option<String> {
        Some(quote(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }))
    }
}

/// The listeners that expect a PROXY protocol header (v1 or v2) before the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    /// None: the socket's peer is the client.
    #[default]
    Off,
    /// The `ws://` listener only.
    Ws,
    /// The `wss://` listener only (the header comes before the TLS ClientHello).
    Wss,
    /// Both listeners.
    All,
}

impl ProxyProtocol {
    /// Whether the `ws://` (`tls == false`) or `wss://` listener expects the header.
    pub fn expected_on(self, tls: bool) -> bool {
        matches!(
            (self, tls),
            (ProxyProtocol::All, _) | (ProxyProtocol::Ws, false) | (ProxyProtocol::Wss, true)
        )
    }
}

impl SettingValue for ProxyProtocol {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "off" => Ok(ProxyProtocol::Off),
            "ws" => Ok(ProxyProtocol::Ws),
            "wss" => Ok(ProxyProtocol::Wss),
            "all" => Ok(ProxyProtocol::All),
            other => Err(format!(
                "invalid proxy_protocol {other:?}: use off, ws, wss or all"
            )),
        }
    }
    fn to_toml(&self) -> Option<String> {
        Some(quote(match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::Ws => "ws",
            ProxyProtocol::Wss => "wss",
            ProxyProtocol::All => "all",
        }))
    }
}

/// Signature algorithm of a public-key device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlg {
    /// RSA PKCS#1 v1.5 with SHA-256.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

impl SettingValue for JwtAlg {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_uppercase().as_str() {
            "RS256" => Ok(JwtAlg::Rs256),
            "ES256" => Ok(JwtAlg::Es256),
            _ => Err(format!("invalid algorithm {text:?}: use RS256 or ES256")),
        }
    }
    fn to_toml(&self) -> Option<String> {
        Some(quote(match self {
            JwtAlg::Rs256 => "RS256",
            JwtAlg::Es256 => "ES256",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_duration_grammar() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        let bare = parse_duration("2").unwrap_err();
        assert!(bare.contains("2ms, 2s, 2m or 2h"), "{bare}");
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
        let toml_bare = Duration::from_toml(&toml::Value::Integer(30)).unwrap_err();
        assert!(toml_bare.contains("\"30s\""), "{toml_bare}");
    }

    #[test]
    fn durations_round_trip() {
        for text in ["250ms", "1500ms", "2s", "90s", "5m", "1h", "0s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = Secret::parse("a secret of sixteen bytes").unwrap();
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.to_toml().unwrap(), "\"<redacted>\"");
    }
}
