//! The server under test: the release `keyhole` binary as a child process, with a data
//! directory that outlives its restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// How long a start may take before the benchmark gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How often readiness is polled; the resolution of the start time.
const POLL: Duration = Duration::from_millis(1);

/// How to start the server, and what stays the same across its restarts.
pub(crate) struct Server {
    binary: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    admin_token: String,
    /// Flags for every start: the egress override and the CA.
    base_args: Vec<String>,
    http: reqwest::Client,
}

/// A running server; killed when dropped.
pub(crate) struct Running {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    /// From spawning the process until `/healthz` first answered 200.
    pub(crate) ready_after: Duration,
}

impl Running {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
    pub(crate) fn memory(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .with_context(|| format!("no {name} in /proc/PID/status"))?;
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .context("an empty field")?
                .parse()?;
            Ok(kb * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Asks the server to stop with SIGTERM and waits for it to exit.
    pub(crate) async fn stop(mut self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid)?;
        // SAFETY: kill only sends a signal, to the child this value owns and has not reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("keyhole did not stop within 30 s of SIGTERM")??;
        ensure!(status.success(), "keyhole exited with {status}");
        Ok(())
    }
}

impl Server {
    /// A server with its data in `dir`, sending the plugin's upstream origin to `upstream`
    /// and trusting `ca_pem` for it.
    pub(crate) fn new(binary: &Path, dir: &Path, upstream: SocketAddr, ca_pem: &Path) -> Self {
        Self {
            binary: binary.to_owned(),
            data_dir: dir.join("data"),
            log: dir.join("keyhole.log"),
            admin_token: format!("bench-admin-{}", hex(&rand::random::<[u8; 16]>())),
            base_args: vec![
                "--egress-override".to_owned(),
                format!("https://{}=https://{upstream}", crate::pki::UPSTREAM_HOST),
                "--egress-ca".to_owned(),
                ca_pem.display().to_string(),
            ],
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("the admin client builds"),
        }
    }

    /// The server's log, stdout and stderr of every start.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// Starts the server with `extra` flags, and waits until `/healthz` answers.
    pub(crate) async fn start(&self, extra: &[&str]) -> Result<Running> {
        let addr = free_port()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(&self.binary);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KEYHOLE_") {
                command.env_remove(name);
            }
        }
        command
            .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.base_args)
            .args(extra)
            .env("KEYHOLE_ADMIN_TOKEN", &self.admin_token)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);

        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        let pid = child.id().context("keyhole exited at once")?;
        let url = format!("http://{addr}/healthz");
        loop {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("keyhole exited with {status}; see {}", self.log.display());
            }
            if spawned.elapsed() > START_TIMEOUT {
                bail!("keyhole was not ready within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(Running {
            child,
            pid,
            addr,
            ready_after: spawned.elapsed(),
        })
    }

    /// Uploads a plugin; answers its id.
    pub(crate) async fn install(&self, server: &Running, wasm: Vec<u8>) -> Result<String> {
        let response = self
            .http
            .post(format!("http://{}/admin/plugins", server.addr))
            .bearer_auth(&self.admin_token)
            .header("content-type", "application/wasm")
            .body(wasm)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        ensure!(status.is_success(), "upload answered {status}: {body}");
        Ok(body["id"].as_str().context("no id")?.to_owned())
    }

    /// Creates an API key; answers the secret.
    pub(crate) async fn create_api_key(&self, server: &Running) -> Result<String> {
        let response = self
            .http
            .post(format!("http://{}/admin/api-keys", server.addr))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "tenant": "bench" }))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        ensure!(
            status.is_success(),
            "creating a key answered {status}: {body}"
        );
        Ok(body["api_key"].as_str().context("no api_key")?.to_owned())
    }

    /// How many plugins the server has installed.
    pub(crate) async fn plugin_count(&self, server: &Running) -> Result<usize> {
        let body: Value = self
            .http
            .get(format!("http://{}/admin/plugins", server.addr))
            .bearer_auth(&self.admin_token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(body["plugins"].as_array().map_or(0, Vec::len))
    }
}

/// A loopback address with a port that was free a moment ago. The server must listen on a
/// known port, so that readiness is polled from the moment it is spawned.
fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
