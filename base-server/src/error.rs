//! The one error type every handler returns, and how it becomes a response.
//!
//! Bodies are `{"detail": "…"}` as CONTRACTS.md §3 promises. Only server
//! errors are logged: client mistakes are the client's to read.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base_sdk::proxy::ProxyError;
use base_sdk::registry::RegistryError;
use base_sdk::store::StoreError;

/// An HTTP-level failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong credentials.
    #[error("Unauthorized")]
    Unauthorized,
    /// The body could not be read as the expected JSON.
    #[error("{0}")]
    Unprocessable(String),
    /// Malformed request other than the body (query, headers).
    #[error("{0}")]
    BadRequest(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// A dependency (the database) is down.
    #[error("{0}")]
    Unavailable(String),
    /// A registry rule or store failure.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Anything else on our side.
    #[error("internal error")]
    Internal(String),
    /// A proxied or bridged request refused or failed (its own status).
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The client is over a limit (429 with `Retry-After`).
    #[error("{detail}")]
    TooManyRequests {
        /// What limit, and when to retry.
        detail: String,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Registry(RegistryError::Store(e))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        // Every body problem is 422, as FastAPI answered on the Python
        // platform; the text says what was wrong (field, line, column).
        let detail = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                "expected a JSON body with Content-Type: application/json".to_string()
            }
            other => other.body_text(),
        };
        Self::Unprocessable(detail)
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Proxy(e) => e.status(),
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Registry(e) => match e {
                RegistryError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                RegistryError::Policy(_) => StatusCode::BAD_REQUEST,
                RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
                RegistryError::AlreadyExists(_) => StatusCode::CONFLICT,
                RegistryError::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
                RegistryError::Store(StoreError::Conflict(_)) => StatusCode::CONFLICT,
                RegistryError::Store(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
                RegistryError::Store(_) | RegistryError::Sealed { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
        }
    }

    fn detail(&self) -> String {
        match self {
            // Never leak database internals to a client.
            Self::Registry(RegistryError::Store(StoreError::Unavailable(_))) => {
                "database unavailable".to_string()
            }
            Self::Registry(RegistryError::Store(StoreError::Conflict(what))) => {
                format!("{what} already exists")
            }
            Self::Registry(RegistryError::Store(_)) | Self::Internal(_) => {
                "internal error".to_string()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Proxy answers are the miners' business: a dead challenge is
        // logged where it is found, not once per refused request.
        if status.is_server_error() && !matches!(self, Self::Proxy(_)) {
            match &self {
                Self::Registry(RegistryError::Store(e)) => {
                    tracing::error!(error = %e, source = ?std::error::Error::source(e), "store failure")
                }
                Self::Internal(e) => tracing::error!(error = %e, "internal error"),
                other => tracing::error!(error = %other, "server error"),
            }
        }
        let retry_after = match &self {
            Self::Proxy(e) => e.retry_after(),
            Self::TooManyRequests { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let mut response =
            (status, Json(serde_json::json!({ "detail": self.detail() }))).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
