//! How adapters fail: retryable (with an optional delay the other side asked for) or permanent.
//! Messages never contain a secret value.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// Worth trying again: a timeout, a 429 or 5xx, a lost connection, a lost race.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Trying again will not help: wrong credentials, a refused request, bad configuration.
    #[error("{message}")]
    Permanent { message: String },
}

impl AdapterError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retryable { retry_after, .. } => *retry_after,
            Self::Permanent { .. } => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, AdapterError>;
