//! Fetching a model and its sha256 sidecar from S3 or any S3-compatible server, through
//! `aws-config`'s default chain (environment, profile, IMDS/ECS/Lambda role), which also honours
//! `AWS_ENDPOINT_URL`. Checking the model against the sidecar is the job of `source`.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::{GetObjectError, GetObjectOutput};

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("fetching model {uri}: {reason}")]
    Fetch { uri: String, reason: String },
    /// S3 answers 403, not 404, for a key that does not exist when the caller may not list the
    /// bucket: a denied sidecar may be a missing one, or one that is there and unreadable, so
    /// it stops the start rather than skipping the check.
    #[error(
        "fetching the checksum file {uri}: access denied (HTTP 403). The role needs s3:GetObject on \
         {key} (and s3:ListBucket on bucket {bucket}, so that a missing checksum file reads as \
         404 and the model loads unverified)"
    )]
    SidecarDenied { uri: String, bucket: String, key: String },
}

/// A model's bytes and, when the bucket holds `<key>.sha256`, the sidecar's URI and bytes.
#[derive(Debug)]
pub struct Fetched {
    pub model: Vec<u8>,
    pub sidecar: Option<(String, Vec<u8>)>,
}

/// Downloads `s3://bucket/key` and `s3://bucket/key.sha256` when that exists (404).
pub async fn fetch(bucket: &str, key: &str) -> Result<Fetched, S3Error> {
    let client = client().await;
    let model = get(&client, bucket, key).await.map_err(|failure| S3Error::Fetch {
        uri: format!("s3://{bucket}/{key}"),
        reason: failure.reason(bucket, key),
    })?;
    let sidecar_key = format!("{key}.sha256");
    let sidecar_uri = format!("s3://{bucket}/{sidecar_key}");
    let sidecar = match get(&client, bucket, &sidecar_key).await {
        Ok(bytes) => Some((sidecar_uri, bytes)),
        Err(Failure::NotFound) => None,
        Err(Failure::Denied(_)) => {
            return Err(S3Error::SidecarDenied {
                uri: sidecar_uri,
                bucket: bucket.to_owned(),
                key: sidecar_key,
            });
        }
        Err(other) => {
            return Err(S3Error::Fetch {
                reason: other.reason(bucket, &sidecar_key),
                uri: sidecar_uri,
            });
        }
    };
    Ok(Fetched { model, sidecar })
}

/// Why a GET failed, told apart by the SDK's typed error and the HTTP status.
#[derive(Debug, PartialEq)]
pub(crate) enum Failure {
    /// `NoSuchKey`, or any 404.
    NotFound,
    /// 403: no permission to read the key (or, without s3:ListBucket, to learn it is absent).
    Denied(String),
    Other(String),
}

impl Failure {
    fn of(e: &SdkError<GetObjectError, HttpResponse>) -> Self {
        let no_such_key = matches!(e, SdkError::ServiceError(service) if service.err().is_no_such_key());
        Self::classify(
            no_such_key,
            e.raw_response().map(|r| r.status().as_u16()),
            DisplayErrorContext(e).to_string(),
        )
    }

    fn classify(no_such_key: bool, status: Option<u16>, detail: String) -> Self {
        match status {
            _ if no_such_key => Failure::NotFound,
            Some(404) => Failure::NotFound,
            Some(403) => Failure::Denied(detail),
            _ => Failure::Other(detail),
        }
    }

    pub(crate) fn reason(self, bucket: &str, key: &str) -> String {
        match self {
            Failure::NotFound => format!("no such key: {key} is not in bucket {bucket}"),
            Failure::Denied(detail) => {
                format!("access denied (HTTP 403): the role needs s3:GetObject on {key}: {detail}")
            }
            Failure::Other(detail) => detail,
        }
    }
}

/// `GetObject` for `s3://bucket/key`, its failure told apart (missing, denied, other) as
/// [`fetch`] and the bulk reader need it.
pub(crate) async fn request(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<GetObjectOutput, Failure> {
    client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| Failure::of(&e))
}

async fn get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>, Failure> {
    let object = request(client, bucket, key).await?;
    let body = object
        .body
        .collect()
        .await
        .map_err(|e| Failure::Other(format!("reading the object body: {e}")))?;
    Ok(body.into_bytes().to_vec())
}

/// An S3 client from `aws-config`'s default chain, for [`fetch`] and [`crate::bulk`].
pub async fn client() -> aws_sdk_s3::Client {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    // A custom endpoint (MinIO, moto, LocalStack) is addressed by path: `bucket.127.0.0.1` does not resolve.
    let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let s3_config = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(custom_endpoint)
        .build();
    aws_sdk_s3::Client::from_conf(s3_config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_key_counts_as_no_sidecar() {
        let detail = || "service error".to_owned();
        assert_eq!(Failure::classify(true, Some(404), detail()), Failure::NotFound);
        assert_eq!(Failure::classify(false, Some(404), detail()), Failure::NotFound);
        assert_eq!(Failure::classify(false, Some(403), detail()), Failure::Denied(detail()));
        assert_eq!(Failure::classify(false, Some(500), detail()), Failure::Other(detail()));
        assert_eq!(Failure::classify(false, None, detail()), Failure::Other(detail()));
    }

    #[test]
    fn a_denied_sidecar_names_the_object_and_the_permissions() {
        let err = S3Error::SidecarDenied {
            uri: "s3://models/m.onnx.sha256".into(),
            bucket: "models".into(),
            key: "m.onnx.sha256".into(),
        }
        .to_string();
        for part in [
            "s3://models/m.onnx.sha256",
            "403",
            "s3:GetObject on m.onnx.sha256",
            "s3:ListBucket on bucket models",
            "404",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
    }
}
