//! What the store answers: changes, API errors as a real server words them, patch
//! types and deletion propagation.

use serde_json::{Value, json};

/// Watch events kept for clients that resume from an older resourceVersion.
pub const DEFAULT_HISTORY: usize = 10_000;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed.
    Deleted,
}

impl ChangeType {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One change, as watchers receive it.
#[derive(Clone, Debug)]
pub struct Change {
    /// The resourceVersion it was committed at.
    pub rv: u64,
    /// The type's store id (`plural` or `plural.group`).
    pub resource: String,
    /// What happened.
    pub kind: ChangeType,
    /// The object after the change (its last state, for a deletion).
    pub object: Value,
    /// For a modification, the object before it: a watch with a selector turns a change
    /// that leaves (or enters) the selection into DELETED (or ADDED), as a real server does.
    pub previous: Option<Value>,
}

/// etcd's default request size limit (1.5 MiB): a custom resource stored larger is refused.
pub const MAX_OBJECT_BYTES: usize = 1_572_864;

/// An API error, with the HTTP status and reason a real server would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404.
    #[error("{kind} \"{name}\" not found")]
    NotFound {
        /// Resource plural.
        kind: String,
        /// Object name.
        name: String,
    },
    /// 409 on create.
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists {
        /// Resource plural.
        kind: String,
        /// Object name.
        name: String,
    },
    /// 409 on a stale write or an apply conflict.
    #[error("{0}")]
    Conflict(String),
    /// 422.
    #[error("{0}")]
    Invalid(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 410: the resourceVersion is older than the watch history.
    #[error("too old resource version: {0}")]
    Gone(String),
    /// 429: eviction would break a PodDisruptionBudget.
    #[error("{0}")]
    TooManyRequests(String),
    /// 500, injected.
    #[error("{0}")]
    Internal(String),
    /// 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 415: protobuf bodies are not served; clients fall back to JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
}

impl ApiError {
    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict(_) => 409,
            ApiError::Invalid(_) => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Gone(_) => 410,
            ApiError::TooManyRequests(_) => 429,
            ApiError::Internal(_) => 500,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::UnsupportedMediaType(_) => 415,
        }
    }

    /// The Status reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Invalid(_) => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Gone(_) => "Expired",
            ApiError::TooManyRequests(_) => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
        }
    }

    /// A `Status` object, as the body of the error response.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.to_string(), "reason": self.reason(), "code": self.code(),
        });
        if let ApiError::NotFound { kind, name } | ApiError::AlreadyExists { kind, name } = self {
            status["details"] = json!({"name": name, "kind": kind});
        }
        if let ApiError::TooManyRequests(_) = self {
            status["details"] =
                json!({"causes": [{"reason": "DisruptionBudget", "message": self.to_string()}]});
        }
        status
    }
}

/// How a patch body is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// application/merge-patch+json
    Merge,
    /// application/strategic-merge-patch+json
    Strategic,
    /// application/json-patch+json
    Json,
    /// application/apply-patch+yaml (server-side apply)
    Apply,
}

/// How dependents are treated when their owner is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted after the owner (the default).
    #[default]
    Background,
    /// Dependents are deleted before the owner.
    Foreground,
    /// Dependents lose the owner reference and stay.
    Orphan,
}
