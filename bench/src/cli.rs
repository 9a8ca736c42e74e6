//! The `cli` part: `porthole-cli` against the `docker` CLI in one run, both driven the way a person's shell
//! drives them, on the same container and files:
//! - tty throughput: `exec -t … cat` of the text file, on a pty of the benchmark's, first byte to last;
//! - echo: one keystroke to `cat` under `exec -it` on a pty, until its echo is back;
//! - pipe throughput: `exec -i … cat` of a binary file to a pipe (out), and a binary stream into
//!   `exec -i … sh -c 'cat > /dev/null'` (in, from start to exit).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use super::{Args, Container, MIB, Server, median, percentiles, pty_echo, ratio};
/// Which client a measurement drives.
#[derive(Clone, Copy)]
enum Client<'a> {
    Docker,
    Porthole { cli: &'a Path, server: &'a Server },
}

impl Client<'_> {
    /// `<client> exec <flags> <container> [--] <cmd…>`.
    fn command(&self, flags: &[&str], container: &str, cmd: &[&str]) -> Command {
        match self {
            Client::Docker => {
                let mut c = Command::new("docker");
                c.arg("exec").args(flags).arg(container).args(cmd);
                c
            }
            Client::Porthole { cli, server } => {
                let mut c = Command::new(cli);
                c.arg("exec").args(flags).arg(container).arg("--").args(cmd);
                c.env("PORTHOLE_URL", &server.base).env("PORTHOLE_TOKEN", &server.token);
                c.env("XDG_CONFIG_HOME", std::env::temp_dir().join("porthole-bench-cli-config"));
                c
            }
        }
    }
}

/// Starts `cmd` with a new pty as its stdin, stdout and stderr; returns it and the pty's master side.
pub(crate) fn on_pty(mut cmd: Command) -> anyhow::Result<(Child, std::fs::File)> {
    let size = nix::pty::Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&size), None)?;
    let slave = std::fs::File::from(pty.slave);
    let child = cmd.stdin(slave.try_clone()?).stdout(slave.try_clone()?).stderr(slave).spawn()?;
    Ok((child, std::fs::File::from(pty.master)))
}

/// Bytes read from `r` until it ends, and the seconds from its first byte to its last.
fn drain(mut r: impl Read) -> (u64, f64) {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut total, mut first, mut last) = (0u64, None, Instant::now());
    // A pty's master reads EIO once the other side is closed: that is its end.
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
        total += n as u64;
    }
    (total, first.map_or(0.0, |t| last.duration_since(t).as_secs_f64()))
}

/// `exec -t cat` of the text file on a pty: MiB/s and bytes.
fn tty_cat(client: Client, container: &str) -> anyhow::Result<(f64, u64)> {
    let (mut child, master) = on_pty(client.command(&["-t"], container, &["cat", "/tmp/big.txt"]))?;
    let (bytes, secs) = drain(master);
    child.wait()?;
    Ok((bytes as f64 / MIB / secs.max(1e-9), bytes))
}

/// `exec -i cat` of the binary file into a pipe: MiB/s and bytes.
fn pipe_out(client: Client, container: &str) -> anyhow::Result<(f64, u64)> {
    let mut child = client
        .command(&["-i"], container, &["cat", "/tmp/big.bin"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let (bytes, secs) = drain(child.stdout.take().context("no stdout")?);
    let status = child.wait()?;
    if !status.success() {
        bail!("pipe out: {status}");
    }
    Ok((bytes as f64 / MIB / secs.max(1e-9), bytes))
}

/// `data` into `exec -i sh -c 'cat > /dev/null'`, from start to exit: MiB/s.
fn pipe_in(client: Client, container: &str, data: &[u8]) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut child = client
        .command(&["-i"], container, &["sh", "-c", "cat > /dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    stdin.write_all(data)?;
    drop(stdin);
    let status = child.wait()?;
    if !status.success() {
        bail!("pipe in: {status}");
    }
    Ok(data.len() as f64 / MIB / t0.elapsed().as_secs_f64())
}

/// Keystroke echo under `exec -it cat` on a pty, ms per sample.
fn echo(client: Client, container: &str, samples: usize) -> anyhow::Result<Vec<f64>> {
    let (child, master) = on_pty(client.command(&["-it"], container, &["cat"]))?;
    pty_echo(child, master, samples)
}

pub async fn report(args: &Args, docker: &bollard::Docker) -> anyhow::Result<String> {
    let cli = args.cli_bin.as_path();
    if !cli.exists() {
        bail!("{} not found: build it with cargo build --release -p porthole-cli", cli.display());
    }
    let c = Container::start(docker, &args.image, "cli").await?;
    c.write_big_file(args.mib).await?;
    c.sh(&format!("head -c {} /dev/urandom > /tmp/big.bin", args.mib * 1024 * 1024)).await?;
    let server = Server::start(&args.bin)?;
    let porthole = Client::Porthole { cli, server: &server };
    let data: Vec<u8> = (0..args.mib * 1024 * 1024).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (mut tty, mut out, mut inn) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut bytes = [0u64; 2];
    // Rounds alternate the two clients, so neither gets a quieter machine.
    for round in 0..args.rounds {
        eprintln!("[bench] cli: round {}", round + 1);
        for (i, client) in [Client::Docker, porthole].into_iter().enumerate() {
            let (rate, n) = tty_cat(client, &c.name)?;
            tty[i].push(rate);
            bytes[i] = n;
            let (rate, n) = pipe_out(client, &c.name)?;
            if n != (args.mib * 1024 * 1024) as u64 {
                bail!("pipe out delivered {n} bytes");
            }
            out[i].push(rate);
            inn[i].push(pipe_in(client, &c.name, &data)?);
        }
    }
    eprintln!("[bench] cli: echo");
    let docker_echo = percentiles(echo(Client::Docker, &c.name, args.samples)?);
    let porthole_echo = percentiles(echo(porthole, &c.name, args.samples)?);
    drop(server);
    c.remove().await;
    let (dt, pt) = (median(tty[0].clone()), median(tty[1].clone()));
    let (dout, pout) = (median(out[0].clone()), median(out[1].clone()));
    let (din, pin) = (median(inn[0].clone()), median(inn[1].clone()));
    Ok(format!(
        "## The command-line client (`--only cli`)\n\n\
         `porthole-cli` (release) against the `docker` CLI, both run as a shell runs them, {} rounds alternating, medians.\n\n\
         | | `docker exec` | `porthole-cli exec` | porthole-cli / docker | target |\n\
         |---|---|---|---|---|\n\
         | tty throughput, `exec -t … cat` of {} MiB of text on a pty ({:.1} / {:.1} MiB read), MiB/s | {dt:.1} | {pt:.1} | {} | ≥ 1.0x |\n\
         | keystroke echo p50 under `exec -it … cat` on a pty, ms ({} samples) | {:.3} | {:.3} | {} | ≤ 1.3x |\n\
         | keystroke echo p99, ms | {:.3} | {:.3} | {} | |\n\
         | pipe throughput out, `exec -i … cat` of {} MiB of random bytes to a pipe, MiB/s | {dout:.1} | {pout:.1} | {} | ≥ 0.9x |\n\
         | pipe throughput in, {} MiB into `exec -i … sh -c 'cat > /dev/null'`, start to exit, MiB/s | {din:.1} | {pin:.1} | {} | ≥ 0.9x |\n\n",
        args.rounds,
        args.mib,
        bytes[0] as f64 / MIB,
        bytes[1] as f64 / MIB,
        ratio(pt, dt),
        args.samples,
        docker_echo.p50,
        porthole_echo.p50,
        ratio(porthole_echo.p50, docker_echo.p50),
        docker_echo.p99,
        porthole_echo.p99,
        ratio(porthole_echo.p99, docker_echo.p99),
        args.mib,
        ratio(pout, dout),
        args.mib,
        ratio(pin, din),
    ))
}
