//! The plugins the tests upload, built from source once per test process.
//!
//! Each plugin workspace builds with its own `cargo build` and its own target directory, so the
//! nested build never waits on the lock of the `cargo test` that started this process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, ensure};

/// The guests' target triple, also set in each workspace's `.cargo/config.toml`.
const TARGET: &str = "wasm32-wasip2";

/// The built `.wasm` files.
pub(crate) struct Guests {
    weather: PathBuf,
    hacker_news: PathBuf,
    google_calendar: PathBuf,
    slack: PathBuf,
    github: PathBuf,
    probe: PathBuf,
    oidc_probe: PathBuf,
    oidc_probe_moved: PathBuf,
    hostile: PathBuf,
    other_world: PathBuf,
    bad_description: PathBuf,
    foreign_import: PathBuf,
}

impl Guests {
    /// The example plugin `examples/weather`.
    pub(crate) fn weather(&self) -> Result<Vec<u8>> {
        read(&self.weather)
    }

    /// Where the weather plugin's `.wasm` file is, for the CLI to upload.
    pub(crate) fn weather_path(&self) -> &Path {
        &self.weather
    }

    /// The example plugin `examples/hacker-news`.
    pub(crate) fn hacker_news(&self) -> Result<Vec<u8>> {
        read(&self.hacker_news)
    }

    /// The example plugin `examples/google-calendar`.
    pub(crate) fn google_calendar(&self) -> Result<Vec<u8>> {
        read(&self.google_calendar)
    }

    /// The example plugin `examples/slack`.
    pub(crate) fn slack(&self) -> Result<Vec<u8>> {
        read(&self.slack)
    }

    /// The example plugin `examples/github`.
    pub(crate) fn github(&self) -> Result<Vec<u8>> {
        read(&self.github)
    }

    /// The test plugin `tests/plugins/probe`.
    pub(crate) fn probe(&self) -> Result<Vec<u8>> {
        read(&self.probe)
    }

    /// Where the probe plugin's `.wasm` file is, for the CLI to upload.
    pub(crate) fn probe_path(&self) -> &Path {
        &self.probe
    }

    /// The test plugin `tests/plugins/oidc-probe`, whose provider is `tests/oauth-server`.
    pub(crate) fn oidc_probe(&self) -> Result<Vec<u8>> {
        read(&self.oidc_probe)
    }

    /// The test plugin `tests/plugins/oidc-probe-moved`: `oidc-probe` 0.2.0 with another token
    /// URL.
    pub(crate) fn oidc_probe_moved(&self) -> Result<Vec<u8>> {
        read(&self.oidc_probe_moved)
    }

    /// The test plugin `tests/plugins/hostile`: one tool per attack on the host.
    pub(crate) fn hostile(&self) -> Result<Vec<u8>> {
        read(&self.hostile)
    }

    /// `tests/plugins/other-world`: a valid component, a WASI command, that is no plugin.
    pub(crate) fn other_world(&self) -> Result<Vec<u8>> {
        read(&self.other_world)
    }

    /// The test plugin `tests/plugins/bad-description`, whose self-description is invalid.
    pub(crate) fn bad_description(&self) -> Result<Vec<u8>> {
        read(&self.bad_description)
    }

    /// The test plugin `tests/plugins/foreign-import`, which imports `acme:vault/keys`.
    pub(crate) fn foreign_import(&self) -> Result<Vec<u8>> {
        read(&self.foreign_import)
    }
}

/// Builds the guests on the first call; later calls, from any test, share the result.
pub(crate) async fn guests() -> Result<&'static Guests> {
    static GUESTS: OnceLock<Result<Guests, String>> = OnceLock::new();

    // The build blocks for a while; keep the test's runtime free to drive anything else.
    let built = tokio::task::spawn_blocking(|| {
        GUESTS.get_or_init(|| build_all().map_err(|err| format!("{err:#}")))
    })
    .await?;
    built
        .as_ref()
        .map_err(|err| anyhow!("the test plugins did not build: {err}"))
}

fn build_all() -> Result<Guests> {
    let root = repo_root();
    let examples = root.join("examples");
    Ok(Guests {
        weather: build(&examples, "weather")?,
        hacker_news: build(&examples, "hacker_news")?,
        google_calendar: build(&examples, "google_calendar")?,
        slack: build(&examples, "slack")?,
        github: build(&examples, "github")?,
        probe: build(&root.join("tests/plugins"), "probe")?,
        oidc_probe: build(&root.join("tests/plugins"), "oidc_probe")?,
        oidc_probe_moved: build(&root.join("tests/plugins"), "oidc_probe_moved")?,
        hostile: build(&root.join("tests/plugins"), "hostile")?,
        // A binary, not a library: its file keeps the package's hyphen.
        other_world: build(&root.join("tests/plugins"), "other-world")?,
        bad_description: build(&root.join("tests/plugins"), "bad_description")?,
        foreign_import: build(&root.join("tests/plugins"), "foreign_import")?,
    })
}

/// The repository's root: the parent of the `host` package that this test belongs to.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host package lives inside the repository")
        .to_path_buf()
}

/// Builds the workspace at `dir` in release mode and returns the path of `crate_name`'s `.wasm`.
fn build(dir: &Path, crate_name: &str) -> Result<PathBuf> {
    let target_dir = dir.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        // Settings meant for the outer, native build must not redirect or retarget this one.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .with_context(|| format!("could not run cargo in {}", dir.display()))?;
    ensure!(
        output.status.success(),
        "`cargo build --release` in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );

    let wasm = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{crate_name}.wasm"));
    ensure!(
        wasm.is_file(),
        "the build did not produce {}",
        wasm.display()
    );
    Ok(wasm)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("could not read {}", path.display()))
}
