//! Included by `tests/offsite.rs` alone (`#[path]`), so the other test targets do not
//! compile it.
//!
//! A real S3 HTTP server for the offsite tests: moto's (`tests/fixtures/moto_s3.py`), on a
//! free 127.0.0.1 port, signatures checked against an access key it creates. Killed (by its
//! pid) on drop. Missing moto skips a test loudly, except under `CI=true`, where it fails:
//! `.ci/run` installs it.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::common::{DEADLINE, bin, fixture, free_port, names, wait_until, walcompactd};

/// The bucket every test server creates.
pub const BUCKET: &str = "walcompactd-test";
/// moto imports a lot: on a loaded 2-core machine it can take a while to answer.
const START_DEADLINE: Duration = Duration::from_secs(90);
/// Starts of the fixture before a test gives up (see [`S3::start`]).
const START_ATTEMPTS: usize = 3;
/// How much of a failed fixture's stderr a panic shows.
const STDERR_LINES: usize = 15;

/// A running server and the credentials it accepts.
pub struct S3 {
    child: Child,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
}

/// Whether moto's server and boto3 can be imported; under `CI=true` a missing one fails
/// the test instead.
pub fn available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "moto is not installed but CI=true: .ci/run must install moto[server]"
        );
        eprintln!(
            "SKIPPED: moto is not installed (pip install 'moto[server]==5.2.1'); the offsite tests need a real S3 server"
        );
    }
    ok
}

impl S3 {
    /// Starts a server on `port` (0: a free one) and waits until it is ready. A free port
    /// can be taken by another test between being picked and moto binding it, and a fixed one
    /// can still be held by the server just killed: a server that exits before it is ready is
    /// started again, a few times, and its stderr shown if it never is.
    pub fn start(port: u16) -> S3 {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = if port == 0 { free_port().port() } else { port };
            match S3::try_start(port) {
                Ok(s3) => return s3,
                Err(why) => {
                    eprintln!("the moto fixture did not start on port {port}: {why}");
                    failures.push(format!("port {port}: {why}"));
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("the moto fixture did not start:\n{}", failures.join("\n"));
    }

    fn try_start(port: u16) -> Result<S3, String> {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new("python3")
            .arg(fixture("moto_s3.py"))
            .args([&port.to_string(), BUCKET])
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .expect("python3 runs the moto fixture");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(START_DEADLINE) {
            Ok(l) if !l.trim().is_empty() => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let err = fs::read_to_string(stderr.path()).unwrap_or_default();
                let tail: Vec<&str> = err.lines().rev().take(STDERR_LINES).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!("{other:?}; its stderr ends:\n{}", tail.join("\n")));
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        Ok(S3 {
            child,
            port,
            access_key: v["access_key"].as_str().unwrap().to_string(),
            secret_key: v["secret_key"].as_str().unwrap().to_string(),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a client of this server needs (credentials as the daemon reads them).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }

    /// Stops the server at once (SIGKILL of its pid): everything it held is gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A client of this server with its credentials, for checking what is stored.
    pub fn client(&self) -> std::sync::Arc<dyn object_store::ObjectStore> {
        let s = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .build()
            .unwrap();
        std::sync::Arc::new(s)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `f` on a fresh single-threaded runtime (the tests are synchronous).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A daemon whose stdout and stderr both go to files (the secret checks read both).
pub struct Run {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Run {
    pub fn start(dir: &Path, env: &[(String, String)], tag: &str) -> Run {
        let (out, err) = (
            dir.join(format!("{tag}.out")),
            dir.join(format!("{tag}.err")),
        );
        let child = std::process::Command::new(bin())
            .args(["run", "--policy", "policy.toml"])
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Run { child, out, err }
    }

    pub fn logs(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for `n` log lines matching `pred`; panics with the log otherwise.
    pub fn wait_for(
        &self,
        n: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut found = Vec::new();
        wait_until(DEADLINE, || {
            found = self.logs().into_iter().filter(|v| pred(v)).collect();
            found.len() >= n
        });
        assert!(
            found.len() >= n,
            "{n} log lines not seen; log:\n{}",
            self.text()
        );
        found
    }

    /// Everything it printed, stdout then stderr.
    pub fn text(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
            + &fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        wait_until(DEADLINE, || self.child.try_wait().unwrap().is_some());
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn offsite_ok(v: &serde_json::Value) -> bool {
    v["event"] == "offsite" && v["outcome"] == "success"
}

pub fn offsite_failed(v: &serde_json::Value) -> bool {
    v["event"] == "offsite" && v["outcome"] == "failed"
}

pub fn sha256_hex(path: &Path) -> String {
    Sha256::digest(fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The object key of an `s3://bucket/key` URL.
pub fn key_of(url: &str) -> String {
    url.strip_prefix(&format!("s3://{BUCKET}/"))
        .unwrap()
        .to_string()
}

pub fn object_bytes(s3: &S3, url: &str) -> Vec<u8> {
    use object_store::ObjectStoreExt;
    let store = s3.client();
    let key = object_store::path::Path::from(key_of(url));
    block_on(async {
        store
            .get(&key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    })
}

/// A CLI command in `dir` with `env`; returns the output.
pub fn cli(dir: &Path, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    walcompactd()
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .output()
        .unwrap()
}

/// No credential in `text`; `what` names where it came from.
pub fn assert_no_secret(s3: &S3, secrets: &[&str], text: &str, what: &str) {
    for secret in [s3.access_key.as_str(), s3.secret_key.as_str()]
        .into_iter()
        .chain(secrets.iter().copied())
    {
        assert!(
            !text.contains(secret),
            "a credential appears in {what}:\n{text}"
        );
    }
}

/// The state directory's files (the state, the offsite queue) as one text.
pub fn state_text(dir: &Path) -> String {
    names(&dir.join("state"))
        .into_iter()
        .map(|n| fs::read_to_string(dir.join("state").join(n)).unwrap_or_default())
        .collect()
}
