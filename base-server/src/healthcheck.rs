//! `base-server healthcheck`: a Docker HEALTHCHECK for a FROM-scratch
//! image, which has no shell and no curl. It GETs the `/health` of the
//! master or broker listening in the same container and exits 0 or 1.

use std::time::Duration;

/// The master's health route on loopback: the default URL.
pub const DEFAULT_URL: &str = "http://127.0.0.1:18080/health";

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    /// The URL is not an `http(s)` URL.
    #[error("healthcheck URL '{0}' is not an http(s) URL")]
    BadUrl(String),
    /// Nothing answered, or the connection failed.
    #[error("GET {url}: {source}")]
    Request {
        /// What was asked.
        url: String,
        /// Why it failed.
        #[source]
        source: reqwest::Error,
    },
    /// Something answered, not with success.
    #[error("GET {url}: status {status}")]
    Status {
        /// What was asked.
        url: String,
        /// The answer's status.
        status: reqwest::StatusCode,
    },
}

/// GETs `url` with a `timeout`; Ok on a 2xx answer.
pub async fn check(url: &str, timeout: Duration) -> Result<(), HealthcheckError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => return Err(HealthcheckError::BadUrl(url.to_string())),
    }
    let request = |source| HealthcheckError::Request {
        url: url.to_string(),
        source,
    };
    // No proxy: the target is in this container, never behind HTTP_PROXY.
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(request)?;
    let resp = client.get(url).send().await.map_err(request)?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(HealthcheckError::Status {
            url: url.to_string(),
            status: resp.status(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;

    async fn serve(status: StatusCode) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/health", get(move || async move { status }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/health")
    }

    #[tokio::test]
    async fn healthy_is_ok_and_an_error_status_is_not() {
        let ok = serve(StatusCode::OK).await;
        check(&ok, Duration::from_secs(5)).await.unwrap();
        let bad = serve(StatusCode::SERVICE_UNAVAILABLE).await;
        let e = check(&bad, Duration::from_secs(5)).await.unwrap_err();
        assert!(
            matches!(e, HealthcheckError::Status { status, .. } if status == StatusCode::SERVICE_UNAVAILABLE)
        );
    }

    #[tokio::test]
    async fn nothing_listening_or_a_bad_url_fails() {
        // Bind then drop: a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = check(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HealthcheckError::Request { .. }), "{e}");
        let e = check("127.0.0.1:18080/health", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, HealthcheckError::BadUrl(_)), "{e}");
    }
}
