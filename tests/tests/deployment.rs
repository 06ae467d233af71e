//! Deployment as an operator gets it: systemd's readiness and watchdog protocol of
//! `appliance run`; the aarch64 build under qemu-user (start, produce, consume, link to this
//! machine's hub); the .deb packages, the amd64 one installed with dpkg (binary,
//! configuration, unit, user), its unit verified and its service started as systemd would.
//!
//! The last two need what `packaging/build-deb.sh` makes, which takes a release build per
//! architecture: `cargo test --workspace` skips them as ignored, and .ci/run builds the
//! packages and then runs them with `--ignored`. The package test needs root (dpkg -i).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use appliance_e2e::cluster::{assert_identical, produce, wait_mirrored};
use appliance_e2e::{Daemon, Deployment, LINK, appliance_bin, cli_ok};
use nix::sys::signal::Signal;

/// The target directory's packages (packaging/build-deb.sh's default `--out`) and builds.
fn target_dir() -> anyhow::Result<PathBuf> {
    let bin = appliance_bin()?;
    bin.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("the appliance binary is not in a cargo target directory")
}

/// ELF's e_machine of the binary at `path` (62: x86-64, 183: AArch64).
fn elf_machine(path: &Path) -> anyhow::Result<u16> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.starts_with(b"\x7fELF"),
        "{} is no ELF",
        path.display()
    );
    Ok(u16::from_le_bytes([bytes[18], bytes[19]]))
}

/// The notifications a process sends to `$NOTIFY_SOCKET`, as systemd receives them.
struct NotifySocket {
    dir: tempfile::TempDir,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = UnixDatagram::bind(dir.path().join("notify"))?;
        Ok(Self { dir, socket })
    }

    fn path(&self) -> String {
        self.dir.path().join("notify").display().to_string()
    }

    /// Lets a service running as another user send (systemd's socket is the manager's).
    fn open_to_all(&self) -> anyhow::Result<()> {
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(
            self.dir.path().join("notify"),
            std::fs::Permissions::from_mode(0o777),
        )?;
        Ok(())
    }

    /// The next notification that holds `field`, within `within`.
    fn wait_for(&self, field: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut buffer = [0u8; 4096];
            let Ok(n) = self.socket.recv(&mut buffer) else {
                break;
            };
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if message.lines().any(|line| line == field) {
                return Ok(message);
            }
            seen.push(message);
        }
        bail!("no {field} within {within:?}; received {seen:?}")
    }
}

#[test]
fn run_tells_systemd_it_is_ready_pings_the_watchdog_and_says_when_it_stops() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let notify = NotifySocket::bind()?;
    let socket = notify.path();
    let daemon = Daemon::start_on_free_ports_with_env(
        dir.path(),
        &["--data-dir", "data"],
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "400000")],
    )?;
    let ready = notify.wait_for("READY=1", Duration::from_secs(10))?;
    let grpc_addr = daemon.grpc_url.trim_start_matches("http://");
    assert!(
        ready.contains(&format!("STATUS=serving gRPC on {grpc_addr}")),
        "{ready}"
    );
    // WatchdogSec of 0.4 s: a ping every 0.2 s.
    for _ in 0..3 {
        notify.wait_for("WATCHDOG=1", Duration::from_secs(2))?;
    }
    let (status, log) = daemon.stop_with(Signal::SIGTERM)?;
    assert!(status.success(), "{log}");
    notify.wait_for("STOPPING=1", Duration::from_secs(2))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The aarch64 build under qemu-user

const QEMU: &str = "qemu-aarch64";
/// Debian's aarch64 C library, for qemu-user to load the binary's dynamic libraries from.
const ARM64_SYSROOT: &str = "/usr/aarch64-linux-gnu";

fn arm64_binary() -> anyhow::Result<PathBuf> {
    let bin = target_dir()?.join("aarch64-unknown-linux-gnu/dist/appliance");
    ensure!(
        bin.exists(),
        "{} does not exist: packaging/build-deb.sh --arch arm64 builds it",
        bin.display()
    );
    ensure!(
        elf_machine(&bin)? == 183,
        "{} is not AArch64",
        bin.display()
    );
    Ok(bin)
}

/// The aarch64 appliance under qemu-user.
fn emulated(bin: &Path) -> Command {
    let mut command = Command::new(QEMU);
    command.arg("-L").arg(ARM64_SYSROOT).arg(bin);
    command
}

/// Runs `command`; its stdout, which must be a success.
fn stdout_of(mut command: Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// `program ARGS` as a client of `daemon` (its address, its admin token); its stdout.
fn client_of(mut program: Command, daemon: &Daemon, args: &[&str]) -> anyhow::Result<String> {
    program
        .args(args)
        .env("APPLIANCE_SERVER", &daemon.grpc_url)
        .env("APPLIANCE_TOKEN", &daemon.token);
    stdout_of(program)
}

/// The aarch64 CLI under qemu-user, run in `dir`, against `daemon`; its stdout.
fn emulated_cli(bin: &Path, daemon: &Daemon, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut program = emulated(bin);
    program.current_dir(dir);
    client_of(program, daemon, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the aarch64 build of packaging/build-deb.sh and qemu-user; .ci/run runs it"]
async fn an_arm64_edge_under_qemu_produces_consumes_and_links_to_an_x86_hub() -> anyhow::Result<()>
{
    let bin = arm64_binary()?;
    let deployment = Deployment::new(&["edge-arm"])?;
    let root = deployment.root();
    let hub = deployment.start_hub()?;
    let mut args = deployment.edge_args("edge-arm", 2)?;
    args.extend(
        [
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let edge =
        tokio::task::block_in_place(|| Daemon::start_program(emulated(&bin), root, &args, &[]))?;

    let status: serde_json::Value =
        serde_json::from_str(&emulated_cli(&bin, &edge, root, &["status", "--json"])?)?;
    assert_eq!(status["role"], "edge", "{status}");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");

    let edge_channel = edge.channel().await?;
    for partition in 0..2 {
        produce(&edge_channel, "sensors", "edge-arm", partition, 0..500).await?;
    }
    let consumed = emulated_cli(
        &bin,
        &edge,
        root,
        &[
            "consume",
            "sensors",
            "--from-beginning",
            "--max",
            "1000",
            "--timeout-ms",
            "20000",
            "--json",
        ],
    )?;
    assert_eq!(consumed.lines().count(), 1000, "{consumed}");

    deployment.link(&edge, "edge-arm", &deployment.hub_addr(), &[])?;
    let hub_channel = hub.channel().await?;
    wait_mirrored(&edge_channel, "sensors", &hub_channel, "edge-arm.sensors").await?;
    let compared =
        assert_identical(&edge_channel, "sensors", &hub_channel, "edge-arm.sensors").await?;
    assert_eq!(compared, 1000);
    let links = cli_ok(&edge, root, &["link", "list"], b"")?;
    assert!(links.contains(LINK), "{links}");

    let (status, log) = tokio::task::block_in_place(|| edge.stop_with(Signal::SIGTERM))?;
    assert!(status.success(), "{log}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The Debian packages

/// The package `packaging/build-deb.sh --arch ARCH` made.
fn package(arch: &str) -> anyhow::Result<PathBuf> {
    let dir = target_dir()?.join("packages");
    let suffix = format!("_{arch}.deb");
    std::fs::read_dir(&dir)
        .with_context(|| format!("{}: packaging/build-deb.sh makes it", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("appliance") && name.ends_with(&suffix))
        })
        .with_context(|| format!("no *{suffix} in {}", dir.display()))
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))
}

fn run_ok(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    stdout_of(command)
}

/// The installed package's name (appliance or appliance-edge), from the .deb.
fn package_name(deb: &Path) -> anyhow::Result<String> {
    let deb = deb.to_str().context("a UTF-8 path")?;
    Ok(run_ok("dpkg-deb", &["--field", deb, "Package"])?
        .trim()
        .to_owned())
}

#[test]
#[ignore = "needs packaging/build-deb.sh's packages; .ci/run runs it"]
fn the_arm64_package_holds_a_stripped_aarch64_binary_and_the_service() -> anyhow::Result<()> {
    let deb = package("arm64")?;
    let deb_path = deb.to_str().context("a UTF-8 path")?;
    assert_eq!(
        run_ok("dpkg-deb", &["--field", deb_path, "Architecture"])?.trim(),
        "arm64"
    );
    let contents = run_ok("dpkg-deb", &["--contents", deb_path])?;
    for file in [
        "./usr/bin/appliance",
        "./etc/appliance/appliance.toml",
        "./lib/systemd/system/appliance.service",
    ] {
        assert!(contents.contains(file), "{file} in\n{contents}");
    }
    let unpacked = tempfile::tempdir()?;
    run_ok(
        "dpkg-deb",
        &[
            "--extract",
            deb_path,
            unpacked.path().to_str().context("UTF-8")?,
        ],
    )?;
    let binary = unpacked.path().join("usr/bin/appliance");
    assert_eq!(elf_machine(&binary)?, 183, "AArch64");
    let sections = run_ok(
        "aarch64-linux-gnu-objdump",
        &["-h", binary.to_str().context("UTF-8")?],
    )?;
    assert!(!sections.contains(".debug_"), "stripped:\n{sections}");
    Ok(())
}

#[test]
#[ignore = "needs packaging/build-deb.sh's packages and root (dpkg -i); .ci/run runs it"]
fn the_amd64_package_installs_a_hardened_service_that_runs_as_its_own_user() -> anyhow::Result<()> {
    ensure!(
        std::fs::metadata("/proc/self")?.uid() == 0,
        "installing a package needs root"
    );
    let deb = package("amd64")?;
    let name = package_name(&deb)?;
    // What an earlier run may have left.
    for leftover in ["appliance", "appliance-edge"] {
        let _ = run("dpkg", &["--purge", leftover]);
    }
    run_ok("dpkg", &["--install", deb.to_str().context("UTF-8")?])?;
    let installed = Installed { name: name.clone() };

    // The layout: binary, configuration (the service's group reads it, no one else), unit,
    // user, data directory.
    let binary = Path::new("/usr/bin/appliance");
    assert_eq!(elf_machine(binary)?, 62, "x86-64");
    let version = run_ok("/usr/bin/appliance", &["--version"])?;
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let passwd = run_ok("getent", &["passwd", "appliance"])?;
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields[5], "/var/lib/appliance", "{passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    let uid: u32 = fields[2].parse()?;
    assert!(uid < 1000, "a system user: {passwd}");
    let config = std::fs::metadata("/etc/appliance/appliance.toml")?;
    assert_eq!(config.mode() & 0o777, 0o640);
    assert_eq!(config.uid(), 0);
    let data = std::fs::metadata("/var/lib/appliance")?;
    assert_eq!((data.uid(), data.mode() & 0o777), (uid, 0o750));

    // The unit verifies, and says what the issue asks of it.
    let unit_path = "/lib/systemd/system/appliance.service";
    let verify = run("systemd-analyze", &["verify", unit_path])?;
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let unit = std::fs::read_to_string(unit_path)?;
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "User=appliance",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/appliance",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(line), "{line} in\n{unit}");
    }

    // The service as systemd starts it: its user, no new privileges, no capabilities, the
    // packaged configuration (ports of its own so the test does not depend on 7070 being free).
    let notify = NotifySocket::bind()?;
    notify.open_to_all()?;
    let mut as_service = Command::new("setpriv");
    as_service.args([
        "--reuid=appliance",
        "--regid=appliance",
        "--init-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "/usr/bin/appliance",
    ]);
    let socket = notify.path();
    let daemon = Daemon::start_program(
        as_service,
        Path::new("/var/lib/appliance"),
        &[
            "--config",
            "/etc/appliance/appliance.toml",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &[("NOTIFY_SOCKET", &socket)],
    )?;
    notify.wait_for("READY=1", Duration::from_secs(10))?;
    let token = std::fs::metadata("/var/lib/appliance/admin.token")?;
    assert_eq!(
        (token.uid(), token.mode() & 0o777),
        (uid, 0o600),
        "the service's files are its own"
    );
    let status: serde_json::Value = serde_json::from_str(&client_of(
        Command::new("/usr/bin/appliance"),
        &daemon,
        &["status", "--json"],
    )?)?;
    assert_eq!(status["role"], "edge", "{status}");
    let (exit, log) = daemon.stop_with(Signal::SIGTERM)?;
    assert!(exit.success(), "{log}");
    notify.wait_for("STOPPING=1", Duration::from_secs(2))?;

    drop(installed);
    ensure!(
        run("getent", &["passwd", "appliance"])?.status.code() == Some(2),
        "a purge removes the user"
    );
    ensure!(!binary.exists() && !Path::new("/var/lib/appliance").exists());
    Ok(())
}

/// Purges the package when the test ends, passed or not.
struct Installed {
    name: String,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", &self.name]);
    }
}
