//! Python clients the end-to-end tests drive (grpcio, kafka-python): a virtual environment in
//! `tests/python/.venv` with `tests/python/requirements.txt`, made on first use (`.ci/run`
//! makes it beforehand), `grpc_call.py`, one call per run, componentize-py, which builds
//! the Python plugins from source, and moto's S3-compatible server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// The virtual environment's interpreter, with the requirements installed (by `setup.sh`).
pub fn python() -> anyhow::Result<PathBuf> {
    let dir = python_dir();
    crate::set_up(&dir, ".venv.lock", "python3 with venv and pip, and PyPI")?;
    Ok(dir.join(".venv").join("bin").join("python"))
}

/// Builds the Python plugin whose `app.py` is in `source` (relative to the repository) for
/// `world` (`transform`, `source`, `sink`) with componentize-py and the Python SDK, as
/// docs/plugin-guide.md does, into `out`.
pub fn build_python_plugin(source: &str, world: &str, out: &Path) -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate is in the repository")?;
    let world = format!("appliance:plugin/{world}@0.1.0");
    let out = out.to_str().context("a UTF-8 path")?;
    componentize_py(
        repo,
        &[
            "-d",
            "sdk/wit",
            "-w",
            &world,
            "componentize",
            "app",
            "-p",
            source,
            "-p",
            "sdk/python",
            "-o",
            out,
        ],
    )
}

/// Runs componentize-py (from the virtual environment) in `dir` with `args`.
pub fn componentize_py(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let componentize = python()?.with_file_name("componentize-py");
    let output = Command::new(&componentize)
        .current_dir(dir)
        .args(args)
        .output()
        .with_context(|| format!("running {}", componentize.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "componentize-py {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Options of one grpcio call beyond its target, method and request.
#[derive(Debug, Default, Clone)]
pub struct CallOptions<'a> {
    pub token: Option<&'a str>,
    /// Use TLS, trusting this CA.
    pub ca: Option<&'a Path>,
    /// A client certificate and its key.
    pub client_cert: Option<(&'a Path, &'a Path)>,
    pub server_name: Option<&'a str>,
}

/// One call with Python's grpcio: `{"code": "OK", "response": {...}}` or
/// `{"code": "...", "message": "..."}`. Blocks; inside a multi-threaded runtime it lets the
/// runtime's other tasks run meanwhile.
pub fn grpc_call(
    target: &str,
    method: &str,
    request: &serde_json::Value,
    options: &CallOptions<'_>,
) -> anyhow::Result<serde_json::Value> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(|| call(target, method, request, options)),
        Err(_) => call(target, method, request, options),
    }
}

fn call(
    target: &str,
    method: &str,
    request: &serde_json::Value,
    options: &CallOptions<'_>,
) -> anyhow::Result<serde_json::Value> {
    let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let mut command = Command::new(python()?);
    command
        .arg(python_dir().join("grpc_call.py"))
        .arg(proto_root)
        .arg(
            target
                .trim_start_matches("http://")
                .trim_start_matches("https://"),
        )
        .arg(method)
        .arg(request.to_string());
    if let Some(token) = options.token {
        command.arg("--token").arg(token);
    }
    if let Some(ca) = options.ca {
        command.arg("--ca").arg(ca);
    }
    if let Some((cert, key)) = options.client_cert {
        command.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    if let Some(name) = options.server_name {
        command.arg("--server-name").arg(name);
    }
    let output = command.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "grpc_call.py {method} printed {stdout:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// An S3-compatible object store on a free loopback port: moto's server (PyPI `moto[server]`),
/// which keeps objects in memory and honours conditional puts (`If-None-Match: *`) as S3 does.
/// Stopped when dropped.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(python()?.with_file_name("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto_server from tests/python/.venv")?;
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "moto_server did not listen on port {port} within a minute"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// Creates `bucket` (moto takes an unsigned request for it).
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let host = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(host)?;
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        anyhow::ensure!(
            answer.starts_with("HTTP/1.1 200"),
            "creating bucket {bucket}: {answer}"
        );
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `console_browser.py` (Selenium driving Debian's headless Chromium through a web
/// console) with `args`; what it measured, or why it failed with its output. Blocks; inside a
/// multi-threaded runtime it lets the runtime's other tasks run meanwhile.
pub fn drive_console(args: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let run = || -> anyhow::Result<serde_json::Value> {
        let output = Command::new(python()?)
            .arg(python_dir().join("console_browser.py"))
            .arg(args.to_string())
            .output()
            .context("running console_browser.py")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "console_browser.py failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).with_context(|| format!("console_browser.py printed {stdout:?}"))
    };
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(run),
        Err(_) => run(),
    }
}
