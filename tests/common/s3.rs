//! A real S3 HTTP server for the offsite tests: moto's (`tests/fixtures/moto_s3.py`), on a
//! free 127.0.0.1 port, signatures checked against an access key it creates. Killed (by its
//! pid) on drop. Missing moto skips a test loudly, except under `CI=true`, where it fails:
//! `.ci/run` installs it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The bucket every test server creates.
pub const BUCKET: &str = "walcompactd-test";
/// moto imports a lot: on a loaded 2-core machine it can take a while to answer.
const START_DEADLINE: Duration = Duration::from_secs(90);

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
    /// Starts a server on `port` (0: a free one) and waits until it is ready.
    pub fn start(port: u16) -> S3 {
        let port = if port == 0 {
            super::free_port().port()
        } else {
            port
        };
        let mut child = Command::new("python3")
            .arg(super::fixture("moto_s3.py"))
            .args([&port.to_string(), BUCKET])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
                panic!("the moto fixture did not start: {other:?}");
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        S3 {
            child,
            port,
            access_key: v["access_key"].as_str().unwrap().to_string(),
            secret_key: v["secret_key"].as_str().unwrap().to_string(),
        }
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
