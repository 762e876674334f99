//! Reaching the object store: what `s3://BUCKET/PREFIX` means, the client
//! built from the standard AWS environment, a small runtime of its own to
//! drive it from the session's blocking threads, and the store's errors as
//! one line naming the bucket, the endpoint and the cause.
//!
//! Settings: `--s3-endpoint URL` or `AWS_ENDPOINT_URL` (path-style
//! addressing for a custom endpoint), `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` (or the shared credentials file and
//! `AWS_PROFILE`), `AWS_REGION` (default `us-east-1`). Credentials come
//! from the environment and the profile files only: nothing is asked of
//! an instance metadata service. `AWS_CA_BUNDLE` is not read (the system's
//! roots are trusted over https; a plain-http endpoint has no TLS at all).

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use std::io;
use std::time::Duration;

/// Tries of one request (first included) before its error is reported.
pub const MAX_ATTEMPTS: u32 = 6;
/// Longest wait between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// Where a replica lives in an object store: `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; never empty.
    pub prefix: String,
    /// `--s3-endpoint`, else `AWS_ENDPOINT_URL` at connection time.
    pub endpoint: Option<String>,
}

impl S3Location {
    /// Parses `s3://BUCKET/PREFIX` (None: not an `s3://` URL).
    pub fn parse(s: &str) -> Option<Result<Self, String>> {
        let rest = s.strip_prefix("s3://")?;
        Some(Self::parse_rest(s, rest))
    }

    fn parse_rest(s: &str, rest: &str) -> Result<Self, String> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        let ok_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !ok_bucket {
            return Err(format!(
                "{s}: bad bucket name {bucket:?} (3 to 63 lowercase letters, digits, '-' or '.')"
            ));
        }
        if prefix.is_empty() {
            return Err(format!(
                "{s}: no prefix; give one, e.g. s3://{bucket}/replica (the replica's root directory is the marker PREFIX/)"
            ));
        }
        if prefix
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!("{s}: bad prefix (empty, '.' or '..' components)"));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: None,
        })
    }

    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The endpoint in use: the option, else `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> Option<String> {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|e| !e.is_empty())
    }
}

/// A client and the runtime that drives it.
pub struct Conn {
    rt: Option<tokio::runtime::Runtime>,
    pub client: Client,
    pub bucket: String,
    /// The prefix with its trailing `/`.
    pub root: String,
    /// `bucket B at ENDPOINT`, for messages.
    pub what: String,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Never blocks (a store may be dropped inside an async task).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Conn {
    pub fn new(loc: &S3Location) -> io::Result<Conn> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("replica-s3")
            .enable_all()
            .build()?;
        let endpoint = loc.endpoint();
        let what = match &endpoint {
            Some(e) => format!("bucket {} at {e}", loc.bucket),
            None => format!("bucket {} at AWS S3", loc.bucket),
        };
        let client = rt.block_on(async { build_client(endpoint.as_deref()) });
        Ok(Conn {
            rt: Some(rt),
            client,
            bucket: loc.bucket.clone(),
            root: format!("{}/", loc.prefix),
            what,
        })
    }

    /// Runs a request to its end from a blocking thread.
    pub fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("runtime until drop").block_on(f)
    }

    /// Starts a request in the background.
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.as_ref().expect("runtime until drop").spawn(f)
    }

    /// The full object key of a key relative to the prefix.
    pub fn full(&self, rel: &str) -> String {
        format!("{}{rel}", self.root)
    }

    /// Checks that the bucket answers with these credentials: the error
    /// is the one line a user needs.
    pub fn check(&self) -> io::Result<()> {
        let r = self.run(
            self.client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.root)
                .max_keys(1)
                .send(),
        );
        r.map(|_| ()).map_err(|e| self.error(e))
    }

    /// A request's error as one line (the bucket, the endpoint, the cause).
    pub fn error<E>(&self, e: SdkError<E, HttpResponse>) -> io::Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (kind, cause) = cause_of(&e);
        io::Error::new(kind, format!("{cause} ({})", self.what))
    }
}

fn build_client(endpoint: Option<&str>) -> Client {
    use aws_config::environment::EnvironmentVariableCredentialsProvider;
    use aws_config::meta::credentials::CredentialsProviderChain;
    use aws_config::profile::ProfileFileCredentialsProvider;
    use aws_smithy_http_client::tls;
    let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|r| !r.is_empty()))
        .unwrap_or_else(|| "us-east-1".into());
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let provider = aws_config::provider_config::ProviderConfig::without_region()
        .with_http_client(http.clone())
        .with_region(Some(Region::new(region.clone())));
    let creds = CredentialsProviderChain::first_try(
        "Environment",
        EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else(
        "Profile",
        ProfileFileCredentialsProvider::builder()
            .configure(&provider)
            .build(),
    );
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(creds)
        .http_client(http)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(100))
                .with_max_backoff(MAX_BACKOFF),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(30))
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        )
        // Stores other than AWS may not know the newer checksums.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
    if let Some(e) = endpoint {
        b = b.endpoint_url(e).force_path_style(true);
    }
    Client::from_conf(b.build())
}

/// The kind and the words of a request's failure.
pub fn cause_of<E>(e: &SdkError<E, HttpResponse>) -> (io::ErrorKind, String)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use io::ErrorKind as K;
    match e {
        _ if chain(e).contains("no credentials") || chain(e).contains("credential provider") => (
            K::PermissionDenied,
            "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a shared credentials file)".into(),
        ),
        SdkError::ConstructionFailure(_) => {
            (K::InvalidInput, format!("cannot make the request: {}", chain(e)))
        }
        SdkError::TimeoutError(_) => (K::TimedOut, "the endpoint did not answer in time".into()),
        SdkError::DispatchFailure(d) => {
            if d.is_timeout() {
                (K::TimedOut, "the endpoint did not answer in time".into())
            } else {
                (K::ConnectionRefused, format!("endpoint unreachable ({})", last_cause(e)))
            }
        }
        SdkError::ResponseError(_) => (K::InvalidData, format!("bad response ({})", chain(e))),
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("");
            match (status, code) {
                (_, "NoSuchBucket") => (K::NotFound, "no such bucket".into()),
                (_, "NoSuchKey") | (404, "") => (K::NotFound, "no such object".into()),
                (403, _) | (_, "AccessDenied") | (_, "InvalidAccessKeyId") | (_, "SignatureDoesNotMatch") => (
                    K::PermissionDenied,
                    format!("access denied ({})", if code.is_empty() { "403" } else { code }),
                ),
                _ => {
                    let msg = s.err().message().unwrap_or("");
                    (K::Other, format!("the store answered {status} {code} {msg}").trim_end().to_string())
                }
            }
        }
        _ => (K::Other, chain(e)),
    }
}

/// The deepest source of an error, in lower case without the OS number
/// ("connection refused").
fn last_cause(e: &dyn std::error::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(c) = cur.source() {
        cur = c;
    }
    let s = cur.to_string();
    let s = match s.find(" (os error") {
        Some(i) => &s[..i],
        None => &s,
    };
    s.to_lowercase()
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_with_clear_refusals() {
        let l = S3Location::parse("s3://my-bucket/a/b/").unwrap().unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", "a/b"));
        assert!(S3Location::parse("/tmp/x").is_none());
        for bad in [
            "s3://B/x",
            "s3://my-bucket",
            "s3://my-bucket/",
            "s3://bk/a//b",
            "s3://ab/x",
        ] {
            assert!(S3Location::parse(bad).unwrap().is_err(), "{bad}");
        }
    }
}
