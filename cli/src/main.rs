//! `porthole-cli`: `docker exec` through a Porthole server, with its token, policy and audit, plus what
//! `docker exec` lacks: resume after a dropped connection, detach and attach, sandboxes and recordings.
//!
//! Exit codes follow `docker exec`: the remote process's code (a signal death is 128+n, as Docker reports
//! it), 125 when Porthole refused or could not be reached (the message names the error code), 126 for a
//! command that cannot be executed, 127 for one not found, and 0 after a detach.

mod commands;
mod config;
mod session;
mod term;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// jemalloc: the data path allocates a buffer per chunk of about 64 KiB, which glibc's malloc maps and unmaps
/// each time (page faults were a tenth of the client's time in a pipe).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code when Porthole refused the request or could not be reached (as `docker exec`'s 125).
pub const EXIT_REFUSED: u8 = 125;
/// Exit code for a command that exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// Exit code for a command that does not exist in the container.
pub const EXIT_NOT_FOUND: u8 = 127;

#[derive(Debug, Parser)]
#[command(name = "porthole-cli", version, about = "Shells and commands in containers, through a Porthole server")]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the server is and how to sign in; each falls back to the config file `login` wrote.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server's URL, e.g. https://porthole.example:7070.
    #[arg(long, global = true, env = "PORTHOLE_URL")]
    pub url: Option<String>,
    /// The access token (or JWT).
    #[arg(long, global = true, env = "PORTHOLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of the certificate authorities to trust instead of the system's.
    #[arg(long, global = true, env = "PORTHOLE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Saves the server's URL and a token (read from stdin) to the config file.
    Login {
        /// The server's URL.
        url: String,
    },
    /// Lists the containers (with sandboxes and their profiles) and terminals you may see.
    Ls {
        /// Print `{"containers": [...], "terminals": [...]}` as the REST API returns them.
        #[arg(long)]
        json: bool,
    },
    /// Runs a command (default: the container's login shell) in a container, like `docker exec`.
    Exec(ExecArgs),
    /// Joins a running terminal: replays its recent output, then goes live.
    Attach {
        /// The terminal's id (`t-…`, as `ls` shows).
        terminal: String,
        /// Watch without typing.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        keys: DetachArgs,
    },
    /// Sandboxes: fresh containers made from a profile.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Recordings: list, search, play.
    #[command(subcommand)]
    Rec(RecCommand),
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Allocate a tty.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open and send it to the process.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    #[command(flatten)]
    pub keys: DetachArgs,
    /// The container's name or id.
    pub container: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DetachArgs {
    /// The key sequence that detaches and leaves the terminal running, as Docker's (`ctrl-p,ctrl-q`).
    #[arg(long, default_value = "ctrl-p,ctrl-q")]
    pub detach_keys: String,
}

#[derive(Debug, Subcommand)]
enum SandboxCommand {
    /// Makes a sandbox from PROFILE and opens a shell in it.
    New {
        profile: String,
        #[command(flatten)]
        keys: DetachArgs,
    },
    /// Removes a sandbox (its terminals end).
    Rm { sandbox: String },
}

#[derive(Debug, Subcommand)]
enum RecCommand {
    /// Lists recordings, newest first.
    Ls {
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Searches the transcripts: recordings with a line holding every word.
    Search {
        query: String,
        #[arg(long)]
        json: bool,
    },
    /// Plays a recording in this terminal at its recorded speed.
    Play {
        id: String,
        /// Play this many times faster.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Shorten pauses longer than this many seconds to it.
        #[arg(long)]
        idle_time_limit: Option<f64>,
    },
}

/// A failure that ends the client: the message (one line, on stderr) and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Porthole refused, or could not be reached: 125, the message naming the error code.
    pub fn refused(code: &str, message: impl std::fmt::Display) -> Failure {
        Failure { code: EXIT_REFUSED, message: format!("{code}: {message}") }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::refused("error", format!("{e:#}"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    term::install_restore_hooks();
    // One thread: a keystroke, its socket write, the echo's read and its write to the screen never wait for a
    // wake-up on another thread (stdin is read on a thread of its own).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("porthole-cli: cannot start: {e}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    let result = runtime.block_on(run(cli));
    term::restore();
    let code = match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("porthole-cli: {}", f.message);
            f.code
        }
    };
    // Background tasks (the socket's, a stdin read in flight) are not waited for.
    runtime.shutdown_background();
    ExitCode::from(code)
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let server = cli.server;
    match cli.command {
        Command::Login { url } => commands::login(&server, &url).await,
        Command::Ls { json } => commands::ls(&config::Server::resolve(&server)?, json).await,
        Command::Exec(args) => session::exec(config::Server::resolve(&server)?, args).await,
        Command::Attach { terminal, read_only, keys } => {
            session::attach(config::Server::resolve(&server)?, terminal, read_only, &keys).await
        }
        Command::Sandbox(SandboxCommand::New { profile, keys }) => {
            session::sandbox(config::Server::resolve(&server)?, profile, &keys).await
        }
        Command::Sandbox(SandboxCommand::Rm { sandbox }) => {
            commands::sandbox_rm(&config::Server::resolve(&server)?, &sandbox).await
        }
        Command::Rec(RecCommand::Ls { json, limit }) => {
            commands::rec_list(&config::Server::resolve(&server)?, None, limit, json).await
        }
        Command::Rec(RecCommand::Search { query, json }) => {
            commands::rec_list(&config::Server::resolve(&server)?, Some(query), 50, json).await
        }
        Command::Rec(RecCommand::Play { id, speed, idle_time_limit }) => {
            commands::rec_play(&config::Server::resolve(&server)?, &id, speed, idle_time_limit).await
        }
    }
}
