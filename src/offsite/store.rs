//! The object store client: object_store's S3 client, credentials from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! container and instance roles: `AmazonS3Builder::from_env`), never from the policy.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::OffsiteError;

/// Retries inside one request (a dropped connection, a 5xx): few and short, because the
/// queue retries the whole upload later with its own backoff; a server that is down must
/// cost a log line and a retry, not minutes of a pass.
const REQUEST_RETRIES: usize = 2;
/// How long object_store keeps retrying one request.
const REQUEST_RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// A server that does not accept a connection within this is down for this pass.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request (a part of up to `upload::PART_BYTES`) may take this long on a slow link.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Where to connect: the bucket, and the policy's endpoint (`None`: the provider's own, or
/// `AWS_ENDPOINT_URL` from the environment) and `allow_http`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub allow_http: bool,
}

/// Builds the client. Its `Debug` may print credentials: never log the builder or store.
pub fn build(cfg: &StoreConfig) -> Result<Arc<dyn ObjectStore>, OffsiteError> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&cfg.bucket)
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: REQUEST_RETRIES,
            retry_timeout: REQUEST_RETRY_TIMEOUT,
        })
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT),
        );
    if let Some(endpoint) = &cfg.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if cfg.allow_http {
        builder = builder.with_allow_http(true);
    }
    builder
        .build()
        .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        .map_err(|e| OffsiteError::Client {
            target: format!("s3://{}/", cfg.bucket),
            detail: super::error_chain(&e),
        })
}
