//! The `keyhole` binary: `keyhole serve` runs the server; the other commands are its client.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use clap::{Args, Parser, Subcommand};
use keyhole::api::{AppState, BodyLimits, router};
use keyhole::auth::Auth;
use keyhole::client::{Client, ClientError};
use keyhole::config::{Config, EgressOverride};
use keyhole::egress::Egress;
use keyhole::oauth::OAuth;
use keyhole::registry::Registry;
use keyhole::runtime::{Runtime, ScratchRoot};
use keyhole::store::{SledStore, Store};
use keyhole::vault::Vault;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Semaphore;
use url::Url;

/// Keyhole: a sandbox server for AI-tool plugins compiled to WebAssembly components.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage plugins on a running server (admin token).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Manage chat backends' API keys on a running server (admin token).
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// List the tools as a chat backend sees them (API key).
    Tools(ClientArgs),
    /// Invoke a tool for a user (API key). When the user must authorize first, prints the
    /// link and waits for the authorization to complete.
    Invoke {
        /// The plugin's id.
        plugin: String,
        /// The tool's name.
        tool: String,
        /// The end user the call is for.
        #[arg(long)]
        user: String,
        /// The arguments, as a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// How long to wait for an authorization, in seconds.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a user's connected accounts (API key).
    Connections {
        /// The end user.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disconnect a user's account from a plugin, revoking its token (API key).
    Disconnect {
        /// The plugin's id.
        plugin: String,
        /// The end user.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Flags of `keyhole serve`; each overrides the config file, which overrides the defaults.
#[derive(Args)]
struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long, env = "KEYHOLE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8787].
    #[arg(long, env = "KEYHOLE_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Data directory [default: ./keyhole-data].
    #[arg(long, env = "KEYHOLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The URL users reach the server at, when not the listen address.
    #[arg(long, env = "KEYHOLE_PUBLIC_URL")]
    public_url: Option<Url>,
    /// Send requests for an origin to another address: `https://api.example.com=https://127.0.0.1:9443`.
    #[arg(
        long = "egress-override",
        value_name = "ORIGIN=URL",
        env = "KEYHOLE_EGRESS_OVERRIDES",
        value_delimiter = ','
    )]
    egress_overrides: Vec<EgressOverride>,
    /// Trust an extra root certificate (PEM) for outgoing requests.
    #[arg(
        long = "egress-ca",
        value_name = "FILE",
        env = "KEYHOLE_EGRESS_CA",
        value_delimiter = ','
    )]
    egress_ca: Vec<PathBuf>,
    /// Let plugins reach this host over plain http (`host[:port]`, port 80 by default); the
    /// plugin must declare it with the same port.
    #[arg(
        long = "egress-allow-http",
        value_name = "HOST",
        env = "KEYHOLE_EGRESS_ALLOW_HTTP",
        value_delimiter = ','
    )]
    egress_allow_http: Vec<String>,
    /// Largest plugin upload, in bytes [default: 33554432].
    #[arg(long, env = "KEYHOLE_MAX_UPLOAD_BYTES")]
    max_upload_bytes: Option<usize>,
    /// Deadline of one tool call, in milliseconds [default: 10000].
    #[arg(long, env = "KEYHOLE_CALL_TIMEOUT_MS")]
    call_timeout_ms: Option<u64>,
    /// How long an authorization link and its flow stay valid, in seconds [default: 600].
    #[arg(long, env = "KEYHOLE_OAUTH_FLOW_TTL_SECS")]
    oauth_flow_ttl_secs: Option<u64>,
    /// Calls running at once, server-wide [default: 128].
    #[arg(long, env = "KEYHOLE_MAX_CONCURRENT_CALLS")]
    max_concurrent_calls: Option<u32>,
    /// Calls of one plugin running at once [default: the server-wide cap].
    #[arg(long, env = "KEYHOLE_MAX_CONCURRENT_CALLS_PER_PLUGIN")]
    max_concurrent_calls_per_plugin: Option<u32>,
    /// Largest linear memory of one plugin instance, in bytes [default: 67108864].
    #[arg(long, env = "KEYHOLE_MAX_MEMORY_BYTES")]
    max_memory_bytes: Option<usize>,
    /// Largest tool result, in bytes [default: 1048576].
    #[arg(long, env = "KEYHOLE_MAX_RESULT_BYTES")]
    max_result_bytes: Option<usize>,
    /// Install (or update) these plugins at start.
    #[arg(long = "install", value_name = "FILE.wasm")]
    install: Vec<PathBuf>,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(url) = &self.public_url {
            config.public_url = Some(url.clone());
        }
        config
            .egress
            .overrides
            .extend(self.egress_overrides.iter().cloned());
        config
            .egress
            .ca_files
            .extend(self.egress_ca.iter().cloned());
        if let Some(bytes) = self.max_upload_bytes {
            config.max_upload_bytes = bytes;
        }
        if let Some(ms) = self.call_timeout_ms {
            config.call_timeout_ms = ms;
        }
        if let Some(secs) = self.oauth_flow_ttl_secs {
            config.oauth_flow_ttl_secs = secs;
        }
        if let Some(calls) = self.max_concurrent_calls {
            config.max_concurrent_calls = calls;
        }
        if let Some(calls) = self.max_concurrent_calls_per_plugin {
            config.max_concurrent_calls_per_plugin = Some(calls);
        }
        if let Some(bytes) = self.max_memory_bytes {
            config.max_memory_bytes = bytes;
        }
        if let Some(bytes) = self.max_result_bytes {
            config.max_result_bytes = bytes;
        }
        config
            .egress
            .http_hosts
            .extend(self.egress_allow_http.iter().cloned());
        Ok(config)
    }
}

/// Where the server is and the credentials to use.
#[derive(Args)]
struct ClientArgs {
    /// The server's URL.
    #[arg(long, env = "KEYHOLE_URL", default_value = "http://127.0.0.1:8787")]
    server: Url,
    /// The admin token.
    #[arg(long, env = "KEYHOLE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// An API key.
    #[arg(long, env = "KEYHOLE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl ClientArgs {
    fn client(&self) -> Client {
        Client::new(
            self.server.clone(),
            self.admin_token.clone(),
            self.api_key.clone(),
        )
    }
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Upload a plugin's .wasm; replaces an installed plugin with the same id.
    Install {
        /// The component.
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List installed plugins.
    List(ClientArgs),
    /// Show one plugin.
    Show {
        /// The plugin's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Uninstall a plugin.
    Delete {
        /// The plugin's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set a plugin's OAuth client, approving the endpoints and hosts it declares. The secret
    /// is read from KEYHOLE_CLIENT_SECRET, or from standard input.
    OauthClient {
        /// The plugin's id.
        id: String,
        /// The client id from the provider.
        #[arg(long)]
        client_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a plugin's settings, or change them: NAME=VALUE sets one, NAME= unsets it.
    Settings {
        /// The plugin's id.
        id: String,
        /// Changes.
        changes: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create an API key for a chat backend; it is shown once.
    Create {
        /// The tenant whose users the key acts for.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List API keys (without secrets).
    List(ClientArgs),
    /// Revoke an API key.
    Delete {
        /// The key's id.
        key_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,cranelift=warn,wasmtime=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let result = runtime.block_on(run(cli.command));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if let Some(details) = err
                .downcast_ref::<ClientError>()
                .and_then(ClientError::details)
            {
                eprintln!("{details}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let output = match command {
        Command::Serve(args) => return serve(args).await,
        Command::Plugin(PluginCommand::Install { file, client }) => {
            client.client().install_plugin(&file).await?
        }
        Command::Plugin(PluginCommand::List(client)) => client.client().plugins().await?,
        Command::Plugin(PluginCommand::Show { id, client }) => client.client().plugin(&id).await?,
        Command::Plugin(PluginCommand::Delete { id, client }) => {
            client.client().delete_plugin(&id).await?
        }
        Command::Plugin(PluginCommand::Settings {
            id,
            changes,
            client,
        }) => {
            let client = client.client();
            let plugin = if changes.is_empty() {
                client.plugin(&id).await?
            } else {
                client.update_settings(&id, &changes).await?
            };
            plugin["settings"].clone()
        }
        Command::ApiKey(ApiKeyCommand::Create { tenant, client }) => {
            client.client().create_api_key(&tenant).await?
        }
        Command::ApiKey(ApiKeyCommand::List(client)) => client.client().api_keys().await?,
        Command::ApiKey(ApiKeyCommand::Delete { key_id, client }) => {
            client.client().delete_api_key(&key_id).await?
        }
        Command::Plugin(PluginCommand::OauthClient {
            id,
            client_id,
            client,
        }) => {
            let secret = client_secret()?;
            client
                .client()
                .set_oauth_client(&id, &client_id, &secret)
                .await?
        }
        Command::Tools(client) => client.client().tools().await?,
        Command::Invoke {
            plugin,
            tool,
            user,
            args,
            wait_secs,
            client,
        } => {
            let wait = std::time::Duration::from_secs(wait_secs);
            client
                .client()
                .invoke_waiting(&plugin, &tool, &user, &args, wait)
                .await?
        }
        Command::Connections { user, client } => client.client().connections(&user).await?,
        Command::Disconnect {
            plugin,
            user,
            client,
        } => client.client().disconnect(&user, &plugin).await?,
    };
    if !output.is_null() {
        println!("{}", serde_json::to_string_pretty(&output)?);
    }
    Ok(())
}

/// The OAuth client secret, from the environment or standard input, never from a flag: flags
/// show up in process listings and shell history.
fn client_secret() -> anyhow::Result<String> {
    if let Ok(secret) = std::env::var("KEYHOLE_CLIENT_SECRET") {
        return Ok(secret);
    }
    let mut secret = String::new();
    std::io::stdin()
        .read_line(&mut secret)
        .context("cannot read the client secret from standard input")?;
    Ok(secret.trim_end_matches(['\r', '\n']).to_owned())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;

    let store: Arc<dyn Store> = Arc::new(
        SledStore::open(&config.data_dir.join("store"))
            .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?,
    );
    let admin_token = std::env::var("KEYHOLE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let (auth, shown) = Auth::open(store.clone(), admin_token.as_deref())?;
    if let Some(token) = shown {
        println!("Admin token (shown once; keep it): {}", token.0);
    }

    let data_dir =
        Dir::open_ambient_dir(&config.data_dir, ambient_authority()).with_context(|| {
            format!(
                "cannot open the data directory {}",
                config.data_dir.display()
            )
        })?;
    let master_key = std::env::var("KEYHOLE_MASTER_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let vault = Arc::new(Vault::open(&data_dir, master_key.as_deref())?);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let public_url = config.public_url(bound);

    let egress = Arc::new(Egress::new(&config.egress)?);
    let limits = config.limits();
    let scratch = ScratchRoot::open(&data_dir, &config.data_dir)
        .context("cannot prepare the scratch space in the data directory")?;
    let runtime = Arc::new(Runtime::new(&limits, egress.clone(), Some(scratch))?);
    let registry = Arc::new(Registry::open(
        runtime.clone(),
        limits,
        store.clone(),
        vault.clone(),
    )?);
    install_at_start(&registry, &args.install).await?;
    let oauth = Arc::new(OAuth::new(
        store.clone(),
        vault,
        egress,
        public_url.clone(),
        config.oauth_flow_ttl_secs,
    ));
    sweep_expired_flows(oauth.clone());

    let state = AppState {
        registry,
        auth: Arc::new(auth),
        runtime,
        store: store.clone(),
        oauth,
        calls: Arc::new(Semaphore::new(config.max_concurrent_calls as usize)),
        limits: BodyLimits {
            upload: config.max_upload_bytes,
            json: config.max_request_bytes,
        },
    };
    tracing::info!(address = %bound, public_url = %public_url, "serving");
    let shutdown = ShutdownSignal::install()?;
    println!("keyhole listening on http://{bound}");

    // On a signal the server stops accepting connections and lets calls in flight finish, but
    // no longer than a call may take, plus a margin for answers to be written.
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signalled = stopping.clone();
    let registry = state.registry.clone();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown.received().await;
        signalled.notify_one();
    });
    tokio::select! {
        served = server => served?,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(shutdown_grace(&registry, &config)).await;
        } => {
            tracing::warn!("calls still running after the grace period; stopping anyway");
        }
    }
    store.flush()?;
    tracing::info!("stopped");
    Ok(())
}

/// How often authorization links and flows past their lifetime are removed from the store.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes expired authorization links and flows now and every [`SWEEP_EVERY`], off the
/// executor: each removal is a flushed write.
fn sweep_expired_flows(oauth: Arc<OAuth>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            let oauth = oauth.clone();
            match tokio::task::spawn_blocking(move || oauth.sweep_expired()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => {
                    tracing::info!(removed, "removed expired authorization links and flows");
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot remove expired authorization links and flows");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the sweep of expired authorization links stopped")
                }
            }
        }
    });
}

/// How long calls in flight may still run after a shutdown signal: the longest deadline any
/// plugin has, plus a margin for the answers to be written.
fn shutdown_grace(registry: &Registry, config: &Config) -> std::time::Duration {
    let longest = registry
        .list()
        .iter()
        .map(|plugin| plugin.context.limits.call_timeout())
        .fold(config.call_timeout(), std::cmp::max);
    longest + std::time::Duration::from_secs(5)
}

/// Installs plugins named on the command line, skipping those already installed unchanged.
async fn install_at_start(registry: &Registry, files: &[PathBuf]) -> anyhow::Result<()> {
    for file in files {
        let wasm =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wasm));
        let unchanged = registry
            .list()
            .iter()
            .any(|plugin| plugin.record.sha256 == sha256);
        if unchanged {
            continue;
        }
        let (plugin, _) = registry
            .install(wasm)
            .await
            .with_context(|| format!("cannot install {}", file.display()))?;
        tracing::info!(plugin = %plugin.description().id, file = %file.display(), "installed at start");
    }
    Ok(())
}

/// Ctrl-C or SIGTERM, listened for from the moment it is made: a signal that arrives before
/// the server polls it still stops the server gracefully, instead of killing it.
struct ShutdownSignal {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignal {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Resolves on the first signal; the server then stops taking connections and lets calls
    /// in flight finish.
    async fn received(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        tracing::info!("shutting down");
    }
}
