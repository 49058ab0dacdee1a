//! Pure parsers of the kernel's performance files: bytes in, values out.
//! `/proc/<pid>/stat`, which procmond reads too, is parsed by
//! collector-core's [`collector_core::procfs`] (re-exported here).
//!
//! Nothing here does I/O, so each parser is unit-tested on recorded files
//! (`tests/data/`) and property-tested on arbitrary bytes: a parser never
//! panics, whatever it is given; it returns a [`ParseError`] naming the file
//! and what was wrong, or skips a line it does not know.
//!
//! The per-device files (`/proc/diskstats`, `/proc/net/dev`) are handed to
//! a callback line by line, borrowing the device name, so a sampler that
//! keeps its own table allocates nothing per read.

pub use collector_core::procfs::{parse_pid_stat, parse_u64, ParseError};

/// The fields of `/proc/<pid>/stat` the sampler uses, borrowed from the
/// bytes read (nothing is allocated): collector-core's one parser of that
/// file, [`parse_pid_stat`].
pub type PidStat<'a> = collector_core::procfs::PidStat<&'a [u8]>;

const fn err(file: &'static str, reason: &'static str) -> ParseError {
    ParseError::new(file, reason)
}

/// A decimal with an optional fraction (`24.39`), as the PSI and load
/// files write them; `None` on anything else.
pub fn parse_decimal(b: &[u8]) -> Option<f64> {
    let (int, frac) = match b.iter().position(|&c| c == b'.') {
        Some(dot) => (&b[..dot], &b[dot + 1..]),
        None => (b, &b[..0]),
    };
    let whole = parse_u64(int)?;
    let mut value = whole as f64;
    if !frac.is_empty() {
        let digits = frac.get(..frac.len().min(9))?;
        let f = parse_u64(digits)?;
        if frac.len() > 9 && !frac[9..].iter().all(u8::is_ascii_digit) {
            return None;
        }
        let scale = 10f64.powi(i32::try_from(digits.len()).ok()?);
        value += f as f64 / scale;
    }
    Some(value)
}

/// Whitespace-separated fields of a line, without allocating.
fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty())
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// CPU time in clock ticks, as one `cpu` line of `/proc/stat` gives it.
/// `guest` and `guest_nice` are already counted in `user` and `nice`, so
/// they are not kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Normal processes in user mode.
    pub user: u64,
    /// Niced processes in user mode.
    pub nice: u64,
    /// Kernel mode.
    pub system: u64,
    /// Idle.
    pub idle: u64,
    /// Idle while waiting for I/O.
    pub iowait: u64,
    /// Hardware interrupts.
    pub irq: u64,
    /// Software interrupts.
    pub softirq: u64,
    /// Stolen by the hypervisor.
    pub steal: u64,
}

impl CpuTimes {
    /// Every tick counted.
    pub const fn total(&self) -> u64 {
        self.user
            .saturating_add(self.nice)
            .saturating_add(self.system)
            .saturating_add(self.idle)
            .saturating_add(self.iowait)
            .saturating_add(self.irq)
            .saturating_add(self.softirq)
            .saturating_add(self.steal)
    }

    /// Ticks spent doing something (not idle, not waiting for I/O).
    pub const fn busy(&self) -> u64 {
        self.total()
            .saturating_sub(self.idle)
            .saturating_sub(self.iowait)
    }

    fn from_fields<'a>(mut f: impl Iterator<Item = &'a [u8]>) -> Option<Self> {
        let mut next = || f.next().and_then(parse_u64);
        // Kernels since 2.6.33 write at least these eight.
        Some(Self {
            user: next()?,
            nice: next()?,
            system: next()?,
            idle: next()?,
            iowait: next()?,
            irq: next()?,
            softirq: next()?,
            steal: next()?,
        })
    }
}

/// What perfmond reads from `/proc/stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStat {
    /// The `cpu` line: all CPUs together.
    pub total: CpuTimes,
    /// The `cpuN` lines, in the order written (`per_cpu[i]` is `cpu{ids[i]}`).
    pub per_cpu: Vec<CpuTimes>,
    /// The N of each `cpuN` line (offline CPUs are left out by the kernel).
    pub cpu_ids: Vec<u32>,
    /// `processes`: forks since boot.
    pub forks: u64,
    /// `procs_running`: tasks runnable now.
    pub procs_running: u64,
    /// `procs_blocked`: tasks blocked on I/O now.
    pub procs_blocked: u64,
    /// `ctxt`: context switches since boot.
    pub context_switches: u64,
}

/// Parses `/proc/stat` into `out`, reusing its vectors.
///
/// # Errors
/// When the `cpu` line or the `processes` line is missing or malformed.
pub fn parse_stat(bytes: &[u8], out: &mut HostStat) -> Result<(), ParseError> {
    const F: &str = "/proc/stat";
    out.per_cpu.clear();
    out.cpu_ids.clear();
    let (mut total, mut forks) = (false, false);
    for line in lines(bytes) {
        let mut f = fields(line);
        let Some(key) = f.next() else { continue };
        match key {
            b"cpu" => {
                out.total = CpuTimes::from_fields(f).ok_or(err(F, "bad cpu line"))?;
                total = true;
            }
            b"processes" => {
                out.forks = f
                    .next()
                    .and_then(parse_u64)
                    .ok_or(err(F, "bad processes"))?;
                forks = true;
            }
            b"procs_running" => out.procs_running = f.next().and_then(parse_u64).unwrap_or(0),
            b"procs_blocked" => out.procs_blocked = f.next().and_then(parse_u64).unwrap_or(0),
            b"ctxt" => out.context_switches = f.next().and_then(parse_u64).unwrap_or(0),
            k if k.starts_with(b"cpu") => {
                let id = parse_u64(&k[3..])
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or(err(F, "bad cpuN name"))?;
                let times = CpuTimes::from_fields(f).ok_or(err(F, "bad cpuN line"))?;
                out.cpu_ids.push(id);
                out.per_cpu.push(times);
            }
            _ => {}
        }
    }
    match (total, forks) {
        (false, _) => Err(err(F, "no cpu line")),
        (_, false) => Err(err(F, "no processes line")),
        _ => Ok(()),
    }
}

/// What perfmond reads from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemFree`.
    pub free: u64,
    /// `MemAvailable`: what can be had without swapping.
    pub available: u64,
    /// `Buffers`.
    pub buffers: u64,
    /// `Cached`.
    pub cached: u64,
    /// `SwapTotal`.
    pub swap_total: u64,
    /// `SwapFree`.
    pub swap_free: u64,
}

/// Parses `/proc/meminfo` (`Key:  N kB` lines).
///
/// # Errors
/// When `MemTotal` or `MemAvailable` is missing or malformed.
pub fn parse_meminfo(bytes: &[u8]) -> Result<MemInfo, ParseError> {
    const F: &str = "/proc/meminfo";
    let mut m = MemInfo::default();
    let (mut total, mut available) = (false, false);
    for line in lines(bytes) {
        let mut f = fields(line);
        let (Some(key), Some(value)) = (f.next(), f.next()) else {
            continue;
        };
        let unit = match f.next() {
            Some(b"kB") => 1024,
            None => 1,
            Some(_) => continue,
        };
        let slot = match key {
            b"MemTotal:" => {
                total = true;
                &mut m.total
            }
            b"MemFree:" => &mut m.free,
            b"MemAvailable:" => {
                available = true;
                &mut m.available
            }
            b"Buffers:" => &mut m.buffers,
            b"Cached:" => &mut m.cached,
            b"SwapTotal:" => &mut m.swap_total,
            b"SwapFree:" => &mut m.swap_free,
            _ => continue,
        };
        *slot = parse_u64(value)
            .ok_or(err(F, "bad value"))?
            .saturating_mul(unit);
    }
    match (total, available) {
        (false, _) => Err(err(F, "no MemTotal")),
        (_, false) => Err(err(F, "no MemAvailable")),
        _ => Ok(m),
    }
}

/// `/proc/loadavg`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadAvg {
    /// Over 1 minute.
    pub avg1: f64,
    /// Over 5 minutes.
    pub avg5: f64,
    /// Over 15 minutes.
    pub avg15: f64,
    /// Runnable tasks now.
    pub running: u64,
    /// Tasks in all.
    pub total: u64,
}

/// Parses `/proc/loadavg` (`0.12 0.30 0.25 2/345 6789`).
///
/// # Errors
/// When a field is missing or malformed.
pub fn parse_loadavg(bytes: &[u8]) -> Result<LoadAvg, ParseError> {
    const F: &str = "/proc/loadavg";
    let mut f = fields(bytes);
    let mut avg = |what| f.next().and_then(parse_decimal).ok_or(err(F, what));
    let (avg1, avg5, avg15) = (avg("bad avg1")?, avg("bad avg5")?, avg("bad avg15")?);
    let tasks = f.next().ok_or(err(F, "no tasks field"))?;
    let slash = tasks
        .iter()
        .position(|&b| b == b'/')
        .ok_or(err(F, "bad tasks field"))?;
    let running = parse_u64(&tasks[..slash]).ok_or(err(F, "bad running"))?;
    let total = parse_u64(&tasks[slash + 1..]).ok_or(err(F, "bad total"))?;
    Ok(LoadAvg {
        avg1,
        avg5,
        avg15,
        running,
        total,
    })
}

/// One line of a pressure file: the share of time (percent) some or all
/// tasks were stalled, averaged over 10, 60 and 300 s, and the total stall
/// in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureLine {
    /// Percent over the last 10 s.
    pub avg10: f64,
    /// Percent over the last 60 s.
    pub avg60: f64,
    /// Percent over the last 300 s.
    pub avg300: f64,
    /// Microseconds stalled since boot.
    pub total_us: u64,
}

/// `/proc/pressure/{cpu,memory,io}` (or a cgroup's `*.pressure`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// Some tasks stalled.
    pub some: PressureLine,
    /// All non-idle tasks stalled; `None` when the file has no `full` line
    /// (system-wide CPU pressure before 5.13).
    pub full: Option<PressureLine>,
}

/// Parses a pressure file
/// (`some avg10=0.00 avg60=0.00 avg300=0.00 total=0`, then `full ...`).
///
/// # Errors
/// When there is no `some` line or a line is malformed.
pub fn parse_pressure(bytes: &[u8]) -> Result<Pressure, ParseError> {
    const F: &str = "pressure file";
    let mut some = None;
    let mut full = None;
    for line in lines(bytes) {
        let mut f = fields(line);
        let slot = match f.next() {
            Some(b"some") => &mut some,
            Some(b"full") => &mut full,
            _ => continue,
        };
        let mut p = PressureLine::default();
        let mut seen = 0u8;
        for kv in f {
            let eq = kv
                .iter()
                .position(|&b| b == b'=')
                .ok_or(err(F, "no '=' in field"))?;
            let (k, v) = (&kv[..eq], &kv[eq + 1..]);
            let bad = err(F, "bad value");
            match k {
                b"avg10" => p.avg10 = parse_decimal(v).ok_or(bad)?,
                b"avg60" => p.avg60 = parse_decimal(v).ok_or(bad)?,
                b"avg300" => p.avg300 = parse_decimal(v).ok_or(bad)?,
                b"total" => p.total_us = parse_u64(v).ok_or(bad)?,
                _ => continue,
            }
            seen += 1;
        }
        if seen < 4 {
            return Err(err(F, "a line lacks avg10, avg60, avg300 or total"));
        }
        *slot = Some(p);
    }
    Ok(Pressure {
        some: some.ok_or(err(F, "no some line"))?,
        full,
    })
}

/// The counters of one block device in `/proc/diskstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// Reads completed.
    pub reads: u64,
    /// 512-byte sectors read.
    pub sectors_read: u64,
    /// Writes completed.
    pub writes: u64,
    /// 512-byte sectors written.
    pub sectors_written: u64,
    /// Milliseconds the device had I/O in flight.
    pub io_ms: u64,
}

/// Hands each device of `/proc/diskstats` to `each` (name, counters). A
/// malformed line is skipped and counted in the returned number.
pub fn parse_diskstats(bytes: &[u8], mut each: impl FnMut(&[u8], DiskCounters)) -> usize {
    let mut skipped = 0;
    for line in lines(bytes) {
        let mut f = fields(line);
        // major minor name, then the counters (field 4 on).
        let parsed = (|| {
            let _major = f.next()?;
            let _minor = f.next()?;
            let name = f.next()?;
            let mut n: [u64; 10] = [0; 10];
            for slot in &mut n {
                *slot = parse_u64(f.next()?)?;
            }
            Some((
                name,
                DiskCounters {
                    reads: n[0],
                    sectors_read: n[2],
                    writes: n[4],
                    sectors_written: n[6],
                    io_ms: n[9],
                },
            ))
        })();
        match parsed {
            Some((name, c)) => each(name, c),
            None => skipped += 1,
        }
    }
    skipped
}

/// The counters of one interface in `/proc/net/dev`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_drops: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets dropped on send.
    pub tx_drops: u64,
}

/// Hands each interface of `/proc/net/dev` to `each` (name, counters); the
/// two header lines are skipped. A malformed line is skipped and counted in
/// the returned number.
pub fn parse_net_dev(bytes: &[u8], mut each: impl FnMut(&[u8], NetCounters)) -> usize {
    let mut skipped = 0;
    for line in lines(bytes) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue; // header lines have `|`, not `:`
        };
        let name = line[..colon].trim_ascii();
        let mut f = fields(&line[colon + 1..]);
        let parsed = (|| {
            let mut n: [u64; 16] = [0; 16];
            for slot in &mut n {
                *slot = parse_u64(f.next()?)?;
            }
            Some(NetCounters {
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_drops: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_drops: n[11],
            })
        })();
        match parsed {
            Some(c) if !name.is_empty() => each(name, c),
            _ => skipped += 1,
        }
    }
    skipped
}

/// What perfmond reads from a cgroup v2 `cpu.stat`, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupCpu {
    /// `usage_usec`: CPU time of every task in the group.
    pub usage_us: u64,
    /// `user_usec`.
    pub user_us: u64,
    /// `system_usec`.
    pub system_us: u64,
    /// `throttled_usec` (0 without the cpu controller).
    pub throttled_us: u64,
}

/// Parses a cgroup v2 `cpu.stat` (`key value` lines).
///
/// # Errors
/// When `usage_usec` is missing or a known value is malformed.
pub fn parse_cgroup_cpu_stat(bytes: &[u8]) -> Result<CgroupCpu, ParseError> {
    const F: &str = "cpu.stat";
    let mut c = CgroupCpu::default();
    let mut usage = false;
    for line in lines(bytes) {
        let mut f = fields(line);
        let (Some(key), Some(value)) = (f.next(), f.next()) else {
            continue;
        };
        let slot = match key {
            b"usage_usec" => {
                usage = true;
                &mut c.usage_us
            }
            b"user_usec" => &mut c.user_us,
            b"system_usec" => &mut c.system_us,
            b"throttled_usec" => &mut c.throttled_us,
            _ => continue,
        };
        *slot = parse_u64(value).ok_or(err(F, "bad value"))?;
    }
    if usage {
        Ok(c)
    } else {
        Err(err(F, "no usage_usec"))
    }
}

/// Parses a cgroup v2 `memory.current` (one number of bytes).
///
/// # Errors
/// When it is not one number.
pub fn parse_memory_current(bytes: &[u8]) -> Result<u64, ParseError> {
    parse_u64(bytes.trim_ascii()).ok_or(err("memory.current", "not a number"))
}

/// Parses `/proc/uptime` (`12345.67 23456.78`): seconds since boot.
///
/// # Errors
/// When the first field is not a decimal.
pub fn parse_uptime(bytes: &[u8]) -> Result<f64, ParseError> {
    fields(bytes)
        .next()
        .and_then(parse_decimal)
        .ok_or(err("/proc/uptime", "bad uptime"))
}

/// The mount point of the cgroup v2 hierarchy in `/proc/mounts` (the
/// first `cgroup2` line; `\040`-style escapes undone), or `None`.
pub fn cgroup2_mount(bytes: &[u8]) -> Option<String> {
    lines(bytes).find_map(|line| {
        let mut f = fields(line);
        let (_dev, point, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == b"cgroup2").then(|| unescape_mount(point))
    })
}

/// Undoes the octal escapes (`\040` for a space) of a `/proc/mounts` field.
fn unescape_mount(field: &[u8]) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|c| (b'0'..=b'7').contains(c))
                .then(|| d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0')))
        });
        match (field[i], octal.and_then(|v| u8::try_from(v).ok())) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]

    use super::*;
    use proptest::prelude::*;

    const STAT: &[u8] = include_bytes!("../tests/data/stat");
    const MEMINFO: &[u8] = include_bytes!("../tests/data/meminfo");
    const LOADAVG: &[u8] = include_bytes!("../tests/data/loadavg");
    const PSI_CPU: &[u8] = include_bytes!("../tests/data/pressure_cpu");
    const PSI_MEM: &[u8] = include_bytes!("../tests/data/pressure_memory");
    const PSI_IO: &[u8] = include_bytes!("../tests/data/pressure_io");
    const DISKSTATS: &[u8] = include_bytes!("../tests/data/diskstats");
    const NET_DEV: &[u8] = include_bytes!("../tests/data/net_dev");
    const MOUNTS: &[u8] = include_bytes!("../tests/data/mounts");
    const CG_CPU: &[u8] = include_bytes!("../tests/data/cgroup_cpu.stat");
    const PID_STAT: &[u8] = include_bytes!("../tests/data/pid_stat_init");

    #[test]
    fn proc_stat_recorded() {
        let mut s = HostStat::default();
        parse_stat(STAT, &mut s).unwrap();
        assert_eq!(
            s.total,
            CpuTimes {
                user: 25618,
                nice: 0,
                system: 7056,
                idle: 22804,
                iowait: 189,
                irq: 0,
                softirq: 59,
                steal: 54,
            }
        );
        assert_eq!(s.cpu_ids, [0, 1]);
        assert_eq!(s.per_cpu[1].user, 12952);
        assert_eq!(
            (
                s.forks,
                s.procs_running,
                s.procs_blocked,
                s.context_switches
            ),
            (11923, 3, 0, 365_048)
        );
        assert_eq!(s.total.busy(), 25618 + 7056 + 59 + 54);
        // Parsing again reuses the vectors and does not append.
        parse_stat(STAT, &mut s).unwrap();
        assert_eq!(s.per_cpu.len(), 2);
    }

    #[test]
    fn proc_stat_without_cpu_or_processes_is_refused() {
        let mut s = HostStat::default();
        let e = parse_stat(b"processes 5\n", &mut s).unwrap_err();
        assert_eq!(e.reason, "no cpu line");
        let e = parse_stat(b"cpu 1 2 3 4 5 6 7 8\n", &mut s).unwrap_err();
        assert_eq!(e.reason, "no processes line");
        let e = parse_stat(b"cpu 1 2 3\nprocesses 5\n", &mut s).unwrap_err();
        assert_eq!(e.reason, "bad cpu line");
    }

    #[test]
    fn meminfo_recorded() {
        let m = parse_meminfo(MEMINFO).unwrap();
        let kb = |key: &str| -> u64 {
            let text = std::str::from_utf8(MEMINFO).unwrap();
            let line = text.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 1024
        };
        assert_eq!(m.total, kb("MemTotal:"));
        assert_eq!(m.available, kb("MemAvailable:"));
        assert_eq!(m.swap_free, kb("SwapFree:"));
        assert!(m.available <= m.total && m.total > 0);
        assert_eq!(
            parse_meminfo(b"MemTotal: 1 kB\n").unwrap_err().reason,
            "no MemAvailable"
        );
        assert_eq!(
            parse_meminfo(b"MemTotal: x kB\n").unwrap_err().reason,
            "bad value"
        );
    }

    #[test]
    fn loadavg_recorded() {
        let l = parse_loadavg(LOADAVG).unwrap();
        assert_eq!((l.avg1, l.avg5, l.avg15), (2.88, 1.30, 0.51));
        assert_eq!((l.running, l.total), (3, 106));
        assert!(parse_loadavg(b"1.0 2.0 3.0 4\n").is_err());
        assert!(parse_loadavg(b"").is_err());
    }

    #[test]
    fn pressure_recorded() {
        let cpu = parse_pressure(PSI_CPU).unwrap();
        assert_eq!(cpu.some.avg10, 28.22);
        assert_eq!(cpu.some.avg300, 10.33);
        assert_eq!(cpu.some.total_us, 38_996_751);
        assert_eq!(cpu.full.unwrap().total_us, 0);
        for file in [PSI_MEM, PSI_IO] {
            let p = parse_pressure(file).unwrap();
            assert!(p.full.is_some());
            assert!(p.some.avg10 >= 0.0 && p.some.avg10 <= 100.0);
        }
        // An older kernel's CPU file: no full line.
        let old = parse_pressure(b"some avg10=1.50 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!((old.some.avg10, old.full), (1.5, None));
        assert!(parse_pressure(b"full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").is_err());
        assert!(parse_pressure(b"some avg10=0.00 total=0\n").is_err());
    }

    #[test]
    fn diskstats_recorded() {
        let mut seen = Vec::new();
        let skipped = parse_diskstats(DISKSTATS, |name, c| {
            seen.push((String::from_utf8_lossy(name).into_owned(), c));
        });
        assert_eq!(skipped, 0);
        assert_eq!(seen[0].0, "loop0");
        let text = std::str::from_utf8(DISKSTATS).unwrap();
        assert_eq!(seen.len(), text.lines().count());
        // Fields 4, 6, 8, 10 and 13 of the last line.
        let last: Vec<u64> = text
            .lines()
            .last()
            .unwrap()
            .split_whitespace()
            .skip(3)
            .map(|v| v.parse().unwrap())
            .collect();
        let c = seen.last().unwrap().1;
        assert_eq!(
            [
                c.reads,
                c.sectors_read,
                c.writes,
                c.sectors_written,
                c.io_ms
            ],
            [last[0], last[2], last[4], last[6], last[9]]
        );
        assert_eq!(parse_diskstats(b"8 0 sda 1 2\n", |_, _| panic!()), 1);
    }

    #[test]
    fn net_dev_recorded() {
        let mut seen = Vec::new();
        let skipped = parse_net_dev(NET_DEV, |name, c| {
            seen.push((String::from_utf8_lossy(name).into_owned(), c));
        });
        assert_eq!(skipped, 0);
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["lo", "ifb0", "ifb1", "eth0"]);
        let eth0 = seen[3].1;
        assert_eq!((eth0.rx_bytes, eth0.rx_packets), (118_506_355, 3787));
        assert_eq!((eth0.tx_bytes, eth0.tx_packets), (248_058, 2312));
        assert_eq!(parse_net_dev(b"eth9: 1 2 3\n", |_, _| panic!()), 1);
    }

    #[test]
    fn cgroup_files_recorded() {
        let c = parse_cgroup_cpu_stat(CG_CPU).unwrap();
        assert_eq!(
            (c.usage_us, c.user_us, c.system_us, c.throttled_us),
            (327_423_283, 256_264_102, 71_159_181, 0)
        );
        assert!(parse_cgroup_cpu_stat(b"user_usec 5\n").is_err());
        assert_eq!(parse_memory_current(b"123456\n").unwrap(), 123_456);
        assert!(parse_memory_current(b"max\n").is_err());
        assert_eq!(
            cgroup2_mount(MOUNTS).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            cgroup2_mount(b"none /a\\040b cgroup2 rw 0 0\n").as_deref(),
            Some("/a b")
        );
        assert_eq!(cgroup2_mount(b"proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn pid_stat_recorded_and_odd_names() {
        let s = parse_pid_stat(PID_STAT).unwrap();
        assert_eq!(s.pid, 1);
        assert_eq!(s.ppid, 0);
        let text = std::str::from_utf8(PID_STAT).unwrap();
        let after: Vec<u64> = text[text.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .skip(1)
            .map(|v| u64::try_from(v.parse::<i128>().unwrap()).unwrap_or(u64::MAX))
            .collect();
        // after[0] is field 4.
        assert_eq!(
            (s.utime, s.stime, s.starttime, s.rss_pages),
            (after[10], after[11], after[18], after[20])
        );
        let odd = b"42 (a) b (c)) S 7 1 1 0 -1 4194560 1 0 0 0 11 22 0 0 20 0 1 0 333 100 44 1 2 3";
        let s = parse_pid_stat(odd).unwrap();
        assert_eq!(s.comm, b"a) b (c)");
        assert_eq!(
            (
                s.pid,
                s.state,
                s.ppid,
                s.utime,
                s.stime,
                s.starttime,
                s.rss_pages
            ),
            (42, 'S', 7, 11, 22, 333, 44)
        );
        assert!(parse_pid_stat(b"1 (x) S 0").is_err());
        assert!(parse_pid_stat(b"x (y) S 0 1 1 0 -1 0 0 0 0 0 1 1 0 0 0 0 0 0 1 1 1").is_err());
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal(b"24.39"), Some(24.39));
        assert_eq!(parse_decimal(b"7"), Some(7.0));
        assert_eq!(parse_decimal(b"0.5"), Some(0.5));
        assert_eq!(parse_decimal(b"1.2.3"), None);
        assert_eq!(parse_decimal(b".5"), None);
        assert_eq!(parse_decimal(b"-1"), None);
        assert_eq!(parse_u64(b"18446744073709551616"), None);
    }

    /// Every parser, on `bytes`.
    fn all(bytes: &[u8]) {
        let mut s = HostStat::default();
        let _ = parse_stat(bytes, &mut s);
        let _ = parse_meminfo(bytes);
        let _ = parse_loadavg(bytes);
        let _ = parse_pressure(bytes);
        let _ = parse_diskstats(bytes, |_, _| {});
        let _ = parse_net_dev(bytes, |_, _| {});
        let _ = parse_cgroup_cpu_stat(bytes);
        let _ = parse_memory_current(bytes);
        let _ = parse_uptime(bytes);
        let _ = cgroup2_mount(bytes);
        let _ = parse_pid_stat(bytes);
        let _ = parse_decimal(bytes);
    }

    const RECORDED: [&[u8]; 11] = [
        STAT, MEMINFO, LOADAVG, PSI_CPU, PSI_MEM, PSI_IO, DISKSTATS, NET_DEV, MOUNTS, CG_CPU,
        PID_STAT,
    ];

    proptest! {
        #[test]
        fn no_parser_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            all(&bytes);
        }

        /// Recorded files with bytes flipped, cut or inserted: near-valid
        /// input reaches deeper into each parser than random bytes do.
        #[test]
        fn no_parser_panics_on_damaged_files(
            which in 0..RECORDED.len(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..8),
        ) {
            let mut bytes = RECORDED[which].to_vec();
            for (at, byte, op) in edits {
                if bytes.is_empty() { break; }
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => { bytes.truncate(i); }
                    _ => bytes.insert(i, byte),
                }
            }
            all(&bytes);
        }
    }
}
