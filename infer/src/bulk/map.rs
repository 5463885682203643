//! The function as the worker of a Step Functions Distributed Map: the Map's S3 `ItemReader`
//! lists a prefix, its `ItemBatcher` hands each invocation a batch of the listed objects, and the
//! reply, one record per item in item order, is what the Map's `ResultWriter` collects into its
//! result files in S3 (nothing is written by the function itself).
//!
//! The event (`BatchInput` is set in the state machine's `ItemBatcher`; the bucket is not part
//! of the listed items):
//!
//! ```json
//! {"BatchInput": {"bucket": "my-images", "top_k": 5},
//!  "Items": [{"Key": "cats/1.jpg", "Etag": "\"5d4...\"", "Size": 2502,
//!             "LastModified": 1795000000, "StorageClass": "STANDARD"}, ...]}
//! ```
//!
//! The reply: `{"results": [<record>, ...], "classified": n, "failed": m}`. An object that
//! cannot be read or classified is a record with an `error`: it fails its item, not the batch,
//! so one corrupt image does not send the whole batch to the Map's tolerated failures. Only an
//! event the worker cannot act on at all (no bucket) fails the invocation.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::store::{Object, Objects};
use super::{Classify, InFlight, ItemError, Record};

/// Classes per record when `BatchInput` does not say.
pub const DEFAULT_TOP_K: usize = 5;

/// One invocation's batch.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MapBatch {
    pub items: Vec<MapItem>,
    #[serde(default)]
    pub batch_input: BatchInput,
}

/// One object as the S3 `ItemReader` lists it (`LastModified`, `StorageClass` are not needed).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MapItem {
    pub key: String,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
}

/// What the state machine passes to every batch.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BatchInput {
    pub bucket: Option<String>,
    pub top_k: Option<usize>,
}

/// The reply the Map's `ResultWriter` collects.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReply {
    pub results: Vec<Record>,
    pub classified: usize,
    pub failed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error(
        "the Distributed Map batch names no bucket: set `BatchInput: {{\"bucket\": ...}}` in the state machine's ItemBatcher"
    )]
    NoBucket,
    #[error("the event looks like a Distributed Map batch but is not one: {0}")]
    BadEvent(#[source] serde_json::Error),
}

impl MapBatch {
    /// `Some` when `event` has the Map's shape (an `Items` list, and nothing of an HTTP event);
    /// `None` for every other event, which the HTTP adapter then handles.
    pub fn recognise(event: &Value) -> Option<Result<Self, MapError>> {
        let object = event.as_object()?;
        let http = ["requestContext", "httpMethod", "routeKey"]
            .iter()
            .any(|k| object.contains_key(*k));
        if http || !object.get("Items").is_some_and(Value::is_array) {
            return None;
        }
        Some(serde_json::from_value(event.clone()).map_err(MapError::BadEvent))
    }
}

/// Classifies batches; the S3 client is made on the first batch, so HTTP-only use of the
/// function never loads it.
#[derive(Debug)]
pub struct Worker {
    classify: Arc<Classify>,
    concurrency: usize,
    client: OnceCell<aws_sdk_s3::Client>,
}

impl Worker {
    /// At most `concurrency` objects of a batch in flight at once.
    pub fn new(classify: Arc<Classify>, concurrency: usize) -> Self {
        Self {
            classify,
            concurrency: concurrency.max(1),
            client: OnceCell::new(),
        }
    }

    pub async fn handle(&self, batch: MapBatch) -> Result<BatchReply, MapError> {
        let started = std::time::Instant::now();
        let bucket = batch
            .batch_input
            .bucket
            .filter(|b| !b.is_empty())
            .ok_or(MapError::NoBucket)?;
        let top_k = batch.batch_input.top_k.unwrap_or(DEFAULT_TOP_K);
        let client = self.client.get_or_init(crate::s3::client).await.clone();
        let objects = Arc::new(Objects::S3 {
            client,
            bucket,
            prefix: String::new(),
        });
        let count = batch.items.len();
        let mut results: Vec<Option<Record>> = vec![None; count];
        let items = batch
            .items
            .into_iter()
            .map(|item| Object::s3(item.key, item.etag, item.size));
        let mut in_flight = InFlight::new(Arc::clone(&self.classify), objects, top_k, self.concurrency, items);
        loop {
            in_flight.fill();
            match in_flight.next().await {
                Some(Ok((i, record))) => results[i] = Some(record),
                // A task that panicked: its slot is filled below.
                Some(Err(_)) => {}
                None => break,
            }
        }
        let results: Vec<Record> = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|| Record::new(format!("item {i}"), None, Err(ItemError::Task("classify")))))
            .collect();
        let failed = results.iter().filter(|r| r.error.is_some()).count();
        tracing::info!(
            items = count,
            failed,
            ms = crate::logging::millis(started.elapsed()),
            "distributed map batch done"
        );
        Ok(BatchReply {
            classified: results.len() - failed,
            failed,
            results,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn recognises_a_map_batch_and_leaves_http_events_alone() {
        let batch = json!({
            "BatchInput": {"bucket": "b", "top_k": 2},
            "Items": [{"Etag": "\"abc\"", "Key": "x/1.png", "LastModified": 1_795_000_000, "Size": 12, "StorageClass": "STANDARD"}]
        });
        let parsed = MapBatch::recognise(&batch).and_then(Result::ok);
        let parsed = parsed.as_ref();
        assert_eq!(parsed.map(|b| b.items[0].key.as_str()), Some("x/1.png"));
        assert_eq!(parsed.and_then(|b| b.items[0].etag.as_deref()), Some("\"abc\""));
        assert_eq!(parsed.and_then(|b| b.batch_input.top_k), Some(2));

        let http = json!({"version": "2.0", "rawPath": "/v1/predict", "requestContext": {}, "Items": []});
        assert!(MapBatch::recognise(&http).is_none());
        assert!(MapBatch::recognise(&json!({"Items": "no"})).is_none());
        assert!(MapBatch::recognise(&json!([1, 2])).is_none());
        // The shape, but broken: an error that says so, not an HTTP 400 from the adapter.
        assert!(matches!(
            MapBatch::recognise(&json!({"Items": [{"Size": 1}]})),
            Some(Err(MapError::BadEvent(_)))
        ));
    }
}
