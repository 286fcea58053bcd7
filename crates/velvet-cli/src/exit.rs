//! Exit codes of design §6 and the error that carries one.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Failed = 1,
    Usage = 2,
    NotFound = 3,
    Conflict = 4,
    GateDenied = 5,
}

impl Code {
    /// The `error` of a JSON failure when the server named none.
    pub fn word(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Usage => "usage",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::GateDenied => "gate_denied",
        }
    }
}

/// A command failure: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
    /// The API's error code (`job_active`, `gate_required`…) when the server refused.
    pub error: Option<String>,
}

impl Failure {
    pub fn new(code: Code, message: impl fmt::Display) -> Self {
        Self {
            code,
            message: message.to_string(),
            error: None,
        }
    }

    pub fn with_error(mut self, error: &str) -> Self {
        if !error.is_empty() {
            self.error = Some(error.to_string());
        }
        self
    }

    /// Prints the failure on stderr: a line for people, or `{"error", "message"}` for scripts.
    pub fn print(&self, json: bool) {
        if json {
            let v = serde_json::json!({
                "error": self.error.as_deref().unwrap_or(self.code.word()),
                "message": self.message,
            });
            eprintln!("{v}");
        } else {
            eprintln!("error: {}", self.message);
        }
    }

    pub fn usage(message: impl fmt::Display) -> Self {
        Self::new(Code::Usage, message)
    }

    pub fn failed(message: impl fmt::Display) -> Self {
        Self::new(Code::Failed, message)
    }
}

impl From<velvet_core::config::ConfigError> for Failure {
    fn from(e: velvet_core::config::ConfigError) -> Self {
        Self::usage(e)
    }
}

impl From<velvet_core::keyring::KeyringError> for Failure {
    fn from(e: velvet_core::keyring::KeyringError) -> Self {
        use velvet_core::keyring::KeyringError as K;
        let code = match e {
            K::Read { .. } | K::Corrupt { .. } | K::Permissions { .. } | K::BadMasterKey => {
                Code::Usage
            }
            _ => Code::Failed,
        };
        Self::new(code, e)
    }
}

impl From<velvet_store::StoreError> for Failure {
    fn from(e: velvet_store::StoreError) -> Self {
        use velvet_store::StoreError as S;
        let code = match &e {
            S::NotFound(_) => Code::NotFound,
            S::Conflict(_) => Code::Conflict,
            _ => Code::Failed,
        };
        Self::new(code, e)
    }
}

impl From<velvet_server::StartError> for Failure {
    fn from(e: velvet_server::StartError) -> Self {
        match e {
            velvet_server::StartError::Keyring(k) => k.into(),
            velvet_server::StartError::Store(s) => s.into(),
            other => Self::failed(other),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::failed(e)
    }
}
