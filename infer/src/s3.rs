//! Fetching a model from S3 or any S3-compatible server, through `aws-config`'s default chain
//! (environment, profile, IMDS/ECS/Lambda role), which also honours `AWS_ENDPOINT_URL`.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;

use crate::source::{SourceError, verify};

/// Downloads `s3://bucket/key` and checks it against `s3://bucket/key.sha256` when that exists.
pub async fn fetch(bucket: &str, key: &str) -> Result<(Vec<u8>, Option<String>), SourceError> {
    let uri = format!("s3://{bucket}/{key}");
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    // A custom endpoint (MinIO, moto, LocalStack) is addressed by path: `bucket.127.0.0.1` does not resolve.
    let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let s3_config = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(custom_endpoint)
        .build();
    let client = aws_sdk_s3::Client::from_conf(s3_config);

    let bytes = get(&client, bucket, key).await.map_err(|reason| SourceError::S3 {
        uri: uri.clone(),
        reason,
    })?;
    let sidecar_key = format!("{key}.sha256");
    let digest = match get(&client, bucket, &sidecar_key).await {
        Ok(text) => {
            let text = String::from_utf8_lossy(&text);
            Some(verify(&bytes, &text, &uri, &format!("s3://{bucket}/{sidecar_key}"))?)
        }
        Err(reason) if reason.starts_with(NO_SUCH_KEY) => {
            tracing::warn!(model = %uri, "no sha256 sidecar; integrity not verified");
            None
        }
        Err(reason) => {
            return Err(SourceError::S3 {
                uri: format!("s3://{bucket}/{sidecar_key}"),
                reason,
            });
        }
    };
    Ok((bytes, digest))
}

const NO_SUCH_KEY: &str = "no such key";

async fn get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| match &e {
            SdkError::ServiceError(service) if matches!(service.err(), GetObjectError::NoSuchKey(_)) => {
                format!("{NO_SUCH_KEY}: {key} is not in bucket {bucket}")
            }
            _ => DisplayErrorContext(&e).to_string(),
        })?;
    let body = object
        .body
        .collect()
        .await
        .map_err(|e| format!("reading the object body: {e}"))?;
    Ok(body.into_bytes().to_vec())
}

/// An S3 client from `aws-config`'s default chain; path-style addressing against a custom
/// endpoint (`AWS_ENDPOINT_URL[_S3]`), as [`fetch`] does. Used by [`crate::bulk`].
pub async fn client() -> aws_sdk_s3::Client {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let s3_config = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(custom_endpoint)
        .build();
    aws_sdk_s3::Client::from_conf(s3_config)
}
