//! A real Kafka broker for tests: one tansu process per test, on a free loopback port, killed
//! when the handle drops. tansu is installed by `scripts/install-test-deps.sh`.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running tansu broker.
pub struct Tansu {
    child: Option<Child>,
    port: u16,
    workdir: PathBuf,
    storage: String,
    _dir: TempDir,
}

impl Tansu {
    /// Starts a broker with in-memory storage and waits until it answers metadata requests.
    pub fn start() -> Tansu {
        Self::start_with_storage(None)
    }

    /// Starts a broker whose data lives in SQLite under `dir` (survives a restart).
    pub fn start_with_storage(sqlite_dir: Option<&std::path::Path>) -> Tansu {
        let port = free_port();
        let dir = TempDir::new("tansu");
        let workdir = sqlite_dir
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.0.clone());
        let storage = if sqlite_dir.is_some() {
            "sqlite://tansu.db".to_string()
        } else {
            "memory://tansu/".to_string()
        };
        let mut broker = Tansu {
            child: None,
            port,
            workdir,
            storage,
            _dir: dir,
        };
        broker.restart();
        broker
    }

    /// Kills the broker (SIGKILL): clients see connections refused until [`Tansu::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True while the broker process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the broker again on the same port and storage (data survives with `sqlite://`),
    /// and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // Kept after the test (under the target dir) for whoever debugs a failure. tansu logs to
        // stdout (its banner, and its tracing at the level `RUST_LOG` sets), so both streams go
        // here: a file for stderr alone stays empty.
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tansu-logs");
        let _ = std::fs::create_dir_all(&log_dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.join(format!("tansu-{}-{}.log", std::process::id(), self.port)))
            .expect("tansu log file");
        let stdout = log.try_clone().expect("tansu log file");
        let child = Command::new(tansu_bin())
            .current_dir(&self.workdir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            // `warn` by default: at `info` tansu logs every span's creation and entry (a
            // 1.5 s test wrote 430 KB). `TANSU_LOG` (an env filter, e.g. `info`) for more.
            .env(
                "RUST_LOG",
                std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // Plain text in the file, not terminal colour codes.
            .env("NO_COLOR", "1")
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu ({}): {e}; run scripts/install-test-deps.sh",
                    tansu_bin().display()
                )
            });
        self.child = Some(child);
        self.wait_ready();
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// callbridge's Kafka settings for this broker: default topics with `partitions` partitions,
    /// replication factor 1 (a single broker).
    pub fn kafka(&self, partitions: i32) -> callbridge::kafka::KafkaConfig {
        let mut k = callbridge::kafka::KafkaConfig {
            bootstrap_servers: self.bootstrap(),
            ..callbridge::kafka::KafkaConfig::default()
        };
        k.topics.partitions = partitions;
        k.topics.replication_factor = 1;
        k
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "0")
            .create()
            .expect("metadata client");
        loop {
            if consumer
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not become ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The same lookup as `callbridge bench`: `$TANSU_BIN`, `~/.cargo/bin/tansu`, then PATH.
fn tansu_bin() -> PathBuf {
    callbridge::bench::procs::tansu_bin(None)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A directory removed on drop, unless `CALLBRIDGE_KEEP_TEST_DIRS` is set (to read a failed
/// run's broker data afterwards: tansu's `sqlite://` storage lives there).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a fresh directory under cargo's temporary directory for tests (`target/tmp`), so a
    /// test killed before its drop leaves nothing behind that `cargo clean` does not remove.
    pub fn new(prefix: &str) -> TempDir {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "callbridge-{prefix}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("CALLBRIDGE_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
