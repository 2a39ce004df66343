//! CPU time and memory of a process, read from Linux's /proc (no libc needed).

/// Linux reports utime and stime in clock ticks of USER_HZ, which is 100 on every
/// architecture's user-space ABI.
const TICKS_PER_SEC: f64 = 100.0;

/// User plus system CPU seconds of process `pid` (`None`: this process), all threads.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    parse_stat_cpu(&text)
}

/// Parses utime + stime (fields 14 and 15) out of a /proc/PID/stat line. The command
/// name (field 2) is in parentheses and may contain spaces, so fields are counted from the
/// last ')'.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the ')' comes field 3 (state); utime is field 14, i.e. the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// (current RSS, peak RSS) of process `pid` in KiB, from /proc/PID/status.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_memory(&text)
}

pub fn parse_status_memory(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let line = "1234 (tern bench) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 \
                    4 0 100 1000000 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(parse_stat_cpu(line), Some(3.25));
    }

    #[test]
    fn parses_status_memory() {
        let status =
            "Name:\tmosquitto\nVmPeak:\t  20000 kB\nVmHWM:\t    9876 kB\nVmRSS:\t    5432 kB\n";
        assert_eq!(parse_status_memory(status), Some((5432, 9876)));
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds(None).is_some());
        let (rss, hwm) = memory_kib(std::process::id()).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }
}
