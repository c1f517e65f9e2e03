//! CPU set discovery and shard placement.
//!
//! A node may use the CPUs that are both online (`/sys/devices/system/cpu/online`) and in the
//! process's affinity mask (`sched_getaffinity`, which is what `taskset` and cgroup cpusets
//! restrict). `--cpus 0-3,6` narrows that set further (every listed CPU must be usable);
//! `--shards auto` places one shard per CPU of the set, `--shards N` uses the first N CPUs of the
//! set. Two shards never share a CPU: a thread-per-core design gains nothing from it and loses
//! its latency, so asking for more shards than CPUs is an error that names both numbers.

use std::{fmt, str::FromStr};

/// Highest CPU number a `cpu_set_t` can hold (glibc's `CPU_SETSIZE`).
pub const CPU_NUMBER_MAX: usize = 1023;

/// Errors in a CPU list such as `0-3,6`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// No CPU at all (an empty string or only commas).
    #[error("empty CPU list")]
    Empty,
    /// An item that is not a number or a `start-end` range (the item as written).
    #[error("invalid CPU number {0:?} in CPU list (expected e.g. 0-3,6)")]
    BadNumber(String),
    /// `start-end` with `start > end`.
    #[error("CPU range {start}-{end} is reversed")]
    ReversedRange {
        /// The range's first CPU as written.
        start: usize,
        /// The range's last CPU as written.
        end: usize,
    },
    /// A CPU number above the largest a CPU set can hold.
    #[error("CPU {cpu} is above the maximum CPU number {max}")]
    TooLarge {
        /// The CPU number written.
        cpu: usize,
        /// The largest CPU number accepted.
        max: usize,
    },
}

/// Parses a Linux CPU list (`0-3,6`, the syntax of `/sys/devices/system/cpu/online` and
/// `taskset -c`). Returns the CPUs sorted and without duplicates.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, CpuListError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CpuListError::Empty);
    }
    let number = |s: &str| -> Result<usize, CpuListError> {
        let cpu: usize = s
            .trim()
            .parse()
            .map_err(|_| CpuListError::BadNumber(s.trim().to_string()))?;
        if cpu > CPU_NUMBER_MAX {
            return Err(CpuListError::TooLarge {
                cpu,
                max: CPU_NUMBER_MAX,
            });
        }
        Ok(cpu)
    };
    let mut cpus = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (start, end) = (number(a)?, number(b)?);
                if start > end {
                    return Err(CpuListError::ReversedRange { start, end });
                }
                cpus.extend(start..=end);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats CPUs back into the compact list syntax (`0-3,6`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

/// The process's CPU affinity mask (the CPUs this process may run on).
pub fn affinity_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed; pid 0 is this thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..=CPU_NUMBER_MAX)
        // SAFETY: `cpu` is below CPU_SETSIZE, the bound CPU_ISSET requires.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// The CPUs the kernel reports online. Falls back to the affinity mask when sysfs is missing.
pub fn online_cpus() -> std::io::Result<Vec<usize>> {
    match std::fs::read_to_string("/sys/devices/system/cpu/online") {
        Ok(text) => parse_cpu_list(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
        Err(_) => affinity_cpus(),
    }
}

/// Online CPUs within the affinity mask: the CPUs a node may place shards on.
pub fn usable_cpus() -> std::io::Result<Vec<usize>> {
    let online = online_cpus()?;
    let allowed = affinity_cpus()?;
    Ok(online.into_iter().filter(|c| allowed.contains(c)).collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu > CPU_NUMBER_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is above {CPU_NUMBER_MAX}"),
        ));
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` was checked to be below CPU_SETSIZE above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `--shards`: a number, or `auto` for one shard per usable CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardCount {
    /// One shard per usable CPU (online and within the affinity mask).
    #[default]
    Auto,
    /// Exactly this many shards (at least 1), one per CPU.
    Fixed(usize),
}

impl FromStr for ShardCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ShardCount::Auto);
        }
        match s.parse::<usize>() {
            Ok(0) => Err("shard count must be at least 1 (or `auto`)".to_string()),
            Ok(n) => Ok(ShardCount::Fixed(n)),
            Err(_) => Err(format!(
                "invalid shard count {s:?}: expected a number or `auto`"
            )),
        }
    }
}

impl fmt::Display for ShardCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardCount::Auto => f.write_str("auto"),
            ShardCount::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Errors choosing where shards run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The online CPUs or the affinity mask cannot be read.
    #[error("cannot read the usable CPU set: {0}")]
    Discovery(String),
    /// Online CPUs within the affinity mask: none.
    #[error("no usable CPUs (online CPUs within the affinity mask are empty)")]
    NoCpus,
    #[error(
        "--cpus lists CPU(s) {missing} that this process cannot use; usable CPUs are {usable} \
         (online CPUs within the affinity mask; check taskset/cgroup cpuset)"
    )]
    /// `--cpus` names CPUs outside the usable set.
    CpusNotUsable {
        /// The listed CPUs that cannot be used, as a CPU list.
        missing: String,
        /// The usable CPUs, as a CPU list.
        usable: String,
    },
    #[error(
        "{required} shards requested but only {available} CPU(s) available ({cpus}); one shard \
         per CPU: lower --shards or widen --cpus"
    )]
    /// More shards than CPUs to pin them to.
    InsufficientCpus {
        /// Shards asked for.
        required: usize,
        /// CPUs usable (within `--cpus` when given).
        available: usize,
        /// Those CPUs, as a CPU list.
        cpus: String,
    },
}

/// Where each shard runs: `cpus[i]` is the CPU of shard `i`. Shard indexes are dense `0..n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The CPU of each shard, by shard index; no CPU twice.
    pub cpus: Vec<usize>,
}

impl Placement {
    /// Chooses CPUs for `count` shards among `requested` (or every usable CPU) given `usable`.
    pub fn choose(
        count: ShardCount,
        requested: Option<&[usize]>,
        usable: &[usize],
    ) -> Result<Placement, PlacementError> {
        if usable.is_empty() {
            return Err(PlacementError::NoCpus);
        }
        let set: Vec<usize> = match requested {
            Some(req) => {
                let missing: Vec<usize> = req
                    .iter()
                    .copied()
                    .filter(|c| !usable.contains(c))
                    .collect();
                if !missing.is_empty() {
                    return Err(PlacementError::CpusNotUsable {
                        missing: format_cpu_list(&missing),
                        usable: format_cpu_list(usable),
                    });
                }
                req.to_vec()
            }
            None => usable.to_vec(),
        };
        let n = match count {
            ShardCount::Auto => set.len(),
            ShardCount::Fixed(n) => n,
        };
        if n > set.len() || n == 0 {
            return Err(PlacementError::InsufficientCpus {
                required: n,
                available: set.len(),
                cpus: format_cpu_list(&set),
            });
        }
        Ok(Placement {
            cpus: set[..n].to_vec(),
        })
    }

    /// Discovers the usable CPUs of this process and chooses among them.
    pub fn discover(
        count: ShardCount,
        requested: Option<&[usize]>,
    ) -> Result<Placement, PlacementError> {
        let usable = usable_cpus().map_err(|e| PlacementError::Discovery(e.to_string()))?;
        Placement::choose(count, requested, &usable)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.cpus.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(parse_cpu_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list(" 5 ,1-2,2\n").unwrap(), vec![1, 2, 5]);
        assert_eq!(parse_cpu_list("").unwrap_err(), CpuListError::Empty);
        assert_eq!(
            parse_cpu_list("3-1").unwrap_err(),
            CpuListError::ReversedRange { start: 3, end: 1 }
        );
        assert!(matches!(
            parse_cpu_list("a"),
            Err(CpuListError::BadNumber(_))
        ));
        assert!(matches!(
            parse_cpu_list("0-5000"),
            Err(CpuListError::TooLarge { .. })
        ));
    }

    #[test]
    fn formats_lists() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(format_cpu_list(&[1]), "1");
        assert_eq!(format_cpu_list(&[1, 3, 4]), "1,3-4");
    }

    #[test]
    fn shard_count() {
        assert_eq!("auto".parse::<ShardCount>().unwrap(), ShardCount::Auto);
        assert_eq!("4".parse::<ShardCount>().unwrap(), ShardCount::Fixed(4));
        assert!("0".parse::<ShardCount>().is_err());
        assert!("x".parse::<ShardCount>().is_err());
    }

    #[test]
    fn placement() {
        let usable = [0, 1, 2, 3];
        assert_eq!(
            Placement::choose(ShardCount::Auto, None, &usable)
                .unwrap()
                .cpus,
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            Placement::choose(ShardCount::Fixed(2), Some(&[1, 3]), &usable)
                .unwrap()
                .cpus,
            vec![1, 3]
        );
        assert!(matches!(
            Placement::choose(ShardCount::Fixed(5), None, &usable),
            Err(PlacementError::InsufficientCpus {
                required: 5,
                available: 4,
                ..
            })
        ));
        assert!(matches!(
            Placement::choose(ShardCount::Auto, Some(&[7]), &usable),
            Err(PlacementError::CpusNotUsable { .. })
        ));
    }

    #[test]
    fn usable_cpus_is_within_affinity() {
        let usable = usable_cpus().unwrap();
        let allowed = affinity_cpus().unwrap();
        assert!(!usable.is_empty());
        assert!(usable.iter().all(|c| allowed.contains(c)));
    }
}
