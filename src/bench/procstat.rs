//! CPU time and memory of a process, and the CPU time the whole machine spent busy, read from
//! `/proc` (Linux only; elsewhere every figure is absent rather than wrong).

/// One reading.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User + system CPU seconds, all threads.
    pub cpu_secs: f64,
    /// Resident set now, bytes.
    pub rss_bytes: u64,
    /// Peak resident set, bytes.
    pub peak_rss_bytes: u64,
}

/// Linux's USER_HZ, the unit of `/proc/PID/stat` times: 100 on every mainstream architecture
/// (the kernel fixes it for user space regardless of CONFIG_HZ).
const USER_HZ: f64 = 100.0;

/// Reads `/proc/{pid}`; None when the process is gone or this is not Linux.
pub fn read(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse(&stat, &status)
}

/// CPU seconds all cores have spent busy since boot (every process, the kernel's interrupt work
/// included): the difference of two readings is what a phase cost the machine, whichever
/// process spent it. None when `/proc/stat` cannot be read.
pub fn machine_busy_secs() -> Option<f64> {
    parse_machine(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine(stat: &str) -> Option<f64> {
    // "cpu  user nice system idle iowait irq softirq steal guest guest_nice": guest time is
    // already inside user and nice, idle and iowait are not busy.
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
    if f.len() < 4 {
        return None;
    }
    Some((at(0) + at(1) + at(2) + at(5) + at(6) + at(7)) / USER_HZ)
}

fn parse(stat: &str, status: &str) -> Option<Usage> {
    // The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some(Usage {
        cpu_secs: (utime + stime) / USER_HZ,
        rss_bytes: kb("VmRSS:")?,
        peak_rss_bytes: kb("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "1234 (tokio (rt) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100 1000 10";
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        let u = parse(stat, status).unwrap();
        assert_eq!(u.cpu_secs, 3.0);
        assert_eq!(u.rss_bytes, 1024 * 1024);
        assert_eq!(u.peak_rss_bytes, 2048 * 1024);
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 20 30 5000 400 6 7 8 50 0\ncpu0 50 10 15 2500 200 3 3 4 25 0\n";
        // user + nice + system + irq + softirq + steal = 171 ticks.
        assert_eq!(parse_machine(stat), Some(1.71));
        assert_eq!(parse_machine("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_machine("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn reads_this_process_on_linux() {
        if cfg!(target_os = "linux") {
            let u = read(std::process::id()).expect("own /proc entry");
            assert!(u.rss_bytes > 0 && u.peak_rss_bytes >= u.rss_bytes, "{u:?}");
            assert!(machine_busy_secs().is_some_and(|s| s > 0.0));
        }
    }
}
