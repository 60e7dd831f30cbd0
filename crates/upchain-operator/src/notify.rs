//! Slack-compatible webhook notifications. The URL is a secret: it is read from its
//! Secret when needed, never stored, and errors are reported without it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use upchain_api::NamespacedKeyRef;

/// Why a notification was not sent; never contains the URL.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The Secret or its key could not be read.
    #[error(
        "Secret {namespace}/{name} key {key} could not be read: {reason}; create it with the webhook URL"
    )]
    Secret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The webhook refused or could not be reached.
    #[error("the webhook did not accept the notification: {0}")]
    Webhook(String),
}

/// Posts `text` as `{"text": ...}` to the URL in the Secret.
pub async fn send(
    client: &Client,
    http: &reqwest::Client,
    secret: &NamespacedKeyRef,
    text: &str,
) -> Result<(), NotifyError> {
    let failed = |reason: String| NotifyError::Secret {
        namespace: secret.namespace.clone(),
        name: secret.name.clone(),
        key: secret.key.clone(),
        reason,
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &secret.namespace);
    let object = secrets
        .get(&secret.name)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let url = object
        .data
        .as_ref()
        .and_then(|d| d.get(&secret.key))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
        .ok_or_else(|| failed("no such key".to_owned()))?;
    let response = http
        .post(&url)
        .timeout(Duration::from_secs(10))
        .json(&serde_json::json!({ "text": text }))
        .send()
        .await
        .map_err(|e| NotifyError::Webhook(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(NotifyError::Webhook(format!(
            "answered {}",
            response.status()
        )));
    }
    Ok(())
}
