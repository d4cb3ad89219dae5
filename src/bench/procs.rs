//! The processes a benchmark run starts (tansu, the load generator, the HTTP sink, the bridge),
//! each killed when its handle drops so an interrupted run leaves nothing behind.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
pub struct Proc {
    /// The process.
    pub child: Child,
    name: &'static str,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL.
    pub fn terminate(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        tracing::debug!(name = self.name, "process stopped");
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// tansu: `--tansu`, else `$TANSU_BIN`, else `~/.cargo/bin/tansu`, else `tansu` on PATH.
pub fn tansu_bin(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = PathBuf::from(home).join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        PathBuf::from("tansu")
    }
}

/// Starts tansu with in-memory storage on a free port, logging to `log`; returns it and its
/// bootstrap address once it answers metadata requests.
pub fn start_tansu(bin: &Path, workdir: &Path, log: &Path) -> Result<(Proc, String), String> {
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(bin)
        .current_dir(workdir)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start tansu ({}): {e}. Install it with scripts/install-test-deps.sh or pass --tansu PATH",
                bin.display()
            )
        })?;
    let proc = Proc {
        child,
        name: "tansu",
    };
    let bootstrap = format!("127.0.0.1:{port}");
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .map_err(|e| format!("metadata client: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        use rdkafka::consumer::Consumer;
        if consumer
            .fetch_metadata(None, Duration::from_secs(1))
            .is_ok()
        {
            return Ok((proc, bootstrap));
        }
        if Instant::now() > deadline {
            return Err("tansu did not answer within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child speaking JSON lines: commands on stdin, one answer line each on stdout.
pub struct LineChild {
    /// The process.
    pub proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LineChild {
    /// Starts `callbridge <subcommand>` (this very binary), stderr to `log`.
    pub fn spawn(subcommand: &str, name: &'static str, log: &Path) -> Result<LineChild, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(exe)
            .arg(subcommand)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(format!("{name}: no pipes"));
        };
        Ok(LineChild {
            proc: Proc { child, name },
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// The next answer line, parsed; an `{"error": …}` answer is an error.
    pub fn read(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| format!("{}: {e}", self.proc.name))?;
        if n == 0 {
            return Err(format!("{} exited (see its log)", self.proc.name));
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| format!("{}: bad answer {line:?}: {e}", self.proc.name))?;
        if let Some(e) = v.get("error") {
            return Err(format!("{}: {e}", self.proc.name));
        }
        Ok(v)
    }

    /// Sends one command and reads its answer (blocking: run it on a blocking thread).
    pub fn call(&mut self, command: &impl serde::Serialize) -> Result<serde_json::Value, String> {
        let line = serde_json::to_string(command).map_err(|e| e.to_string())?;
        writeln!(self.stdin, "{line}").map_err(|e| format!("{}: {e}", self.proc.name))?;
        self.stdin
            .flush()
            .map_err(|e| format!("{}: {e}", self.proc.name))?;
        self.read()
    }
}

/// Starts `callbridge run --config CONFIG` (`bin`, or this executable) with `env`, stderr to
/// `log`.
pub fn start_bridge(
    bin: Option<&Path>,
    config: &Path,
    env: &[(&str, String)],
    log: &Path,
) -> Result<Proc, String> {
    let exe = match bin {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe().map_err(|e| format!("own executable: {e}"))?,
    };
    let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting the bridge: {e}"))?;
    Ok(Proc {
        child,
        name: "bridge",
    })
}
