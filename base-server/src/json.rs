//! A JSON body extractor whose rejections speak the API's error shape.

use axum::extract::FromRequest;

use crate::error::ApiError;

/// Like `axum::Json`, but a malformed body is a 422 `{"detail": …}`.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);
