//! The broker's HTTP surface on `:18082` (CONTRACTS.md §4): the Python
//! platform's synchronous `/v1/docker/*` routes, byte for byte, and the
//! asynchronous `/v1/jobs` API. Every route authenticates the calling
//! challenge first; the slug then scopes everything it can see or touch.
//!
//! Handlers only parse and translate: the rules are in
//! `base_sdk::broker`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base_sdk::broker::Broker;
use base_sdk::broker::client::{JobOutputsView, JobView, LogLine};
use base_sdk::broker::request::{
    BrokerError, BrokerRunRequest, CleanupRequest, CleanupResponse, ListRequest,
};
use base_sdk::model::{JobFilter, Slug};
use futures::StreamExt;
use serde::Deserialize;

/// Largest request body: the mount archives' base64 (8 MiB each by
/// default) with room for several mounts and the rest of the request.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Longest long-poll of `GET /v1/jobs/{id}?wait=`.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The broker router.
pub fn app(broker: Broker) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/docker/run", post(run))
        .route("/v1/docker/cleanup", post(cleanup))
        .route("/v1/docker/list", post(list))
        .route("/v1/jobs", post(submit).get(jobs))
        .route("/v1/jobs/{id}", get(job).delete(cancel))
        .route("/v1/jobs/{id}/logs", get(logs))
        .route("/v1/jobs/{id}/outputs", get(outputs))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(broker)
}

/// Serves [`app`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Broker,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(broker))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A broker failure as `{"detail": …}` with its status.
#[derive(Debug)]
pub struct BrokerApiError(BrokerError);

impl From<BrokerError> for BrokerApiError {
    fn from(e: BrokerError) -> Self {
        Self(e)
    }
}

impl IntoResponse for BrokerApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self.0, "broker request failed");
        }
        let mut response = (
            status,
            Json(serde_json::json!({"detail": self.0.to_string()})),
        )
            .into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

/// The authenticated calling challenge.
pub struct Caller(pub Slug);

impl FromRequestParts<Broker> for Caller {
    type Rejection = BrokerApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        broker: &Broker,
    ) -> Result<Self, Self::Rejection> {
        let text = |h: &HeaderMap, name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let slug = text(&parts.headers, "x-base-challenge-slug");
        let authorization = text(&parts.headers, "authorization");
        let slug = broker
            .authenticate(slug.as_deref(), authorization.as_deref())
            .await?;
        Ok(Caller(slug))
    }
}

/// A JSON body whose rejection is 422 `{"detail": …}`, as FastAPI answered.
pub struct Body422<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body422<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(serde_json::json!({"detail": rejection.body_text()})),
            )
                .into_response()),
        }
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn run(
    State(broker): State<Broker>,
    Caller(slug): Caller,
    Body422(req): Body422<BrokerRunRequest>,
) -> Result<Response, BrokerApiError> {
    Ok(Json(broker.run(&slug, &req).await?).into_response())
}

async fn cleanup(
    State(broker): State<Broker>,
    Caller(slug): Caller,
    Body422(req): Body422<CleanupRequest>,
) -> Result<Json<CleanupResponse>, BrokerApiError> {
    broker.cleanup(&slug, &req.job_id).await?;
    Ok(Json(CleanupResponse::ok()))
}

async fn list(
    State(broker): State<Broker>,
    Caller(slug): Caller,
    Body422(req): Body422<ListRequest>,
) -> Result<Response, BrokerApiError> {
    Ok(Json(broker.list(&slug, req.job_id.as_deref()).await?).into_response())
}

async fn submit(
    State(broker): State<Broker>,
    Caller(slug): Caller,
    Body422(req): Body422<BrokerRunRequest>,
) -> Result<Response, BrokerApiError> {
    let record = broker.submit(&slug, &req).await?;
    let location = format!("/v1/jobs/{}", record.id);
    let mut response = (StatusCode::ACCEPTED, Json(JobView::from(&record))).into_response();
    if let Ok(value) = header::HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// `GET /v1/jobs` query.
#[derive(Debug, Deserialize)]
struct JobsQuery {
    job_id: Option<String>,
    #[serde(default)]
    active: bool,
    limit: Option<u32>,
}

async fn jobs(
    State(broker): State<Broker>,
    Caller(slug): Caller,
    Query(q): Query<JobsQuery>,
) -> Result<Response, BrokerApiError> {
    let records = broker
        .jobs(
            &slug,
            JobFilter {
                job_id: q.job_id,
                active_only: q.active,
                limit: Some(q.limit.unwrap_or(100).min(1000)),
                ..JobFilter::default()
            },
        )
        .await?;
    let views: Vec<JobView> = records.iter().map(JobView::from).collect();
    Ok(Json(serde_json::json!({"jobs": views})).into_response())
}

/// `GET /v1/jobs/{id}` query: `wait` long-polls up to that many seconds
/// (at most 60) for the job to end.
#[derive(Debug, Deserialize)]
struct JobQuery {
    wait: Option<u64>,
}

async fn job(
    State(broker): State<Broker>,
    Caller(slug): Caller,
    Path(id): Path<String>,
    Query(q): Query<JobQuery>,
) -> Result<Response, BrokerApiError> {
    let record = match q.wait.filter(|w| *w > 0) {
        Some(secs) => {
            let wait = Duration::from_secs(secs).min(MAX_WAIT);
            broker.wait(&slug, &id, Some(wait)).await?
        }
        None => broker.job(&slug, &id).await?,
    };
    Ok(Json(JobView::from(&record)).into_response())
}

async fn cancel(
    State(broker): State<Broker>,
    Caller(slug): Caller,
    Path(id): Path<String>,
) -> Result<Response, BrokerApiError> {
    let record = broker.cancel(&slug, &id).await?;
    Ok(Json(JobView::from(&record)).into_response())
}

/// What came back from the job's writable mounts (`{"outputs": […]}`,
/// empty until the job has ended).
async fn outputs(
    State(broker): State<Broker>,
    Caller(slug): Caller,
    Path(id): Path<String>,
) -> Result<Response, BrokerApiError> {
    let outputs = broker.outputs(&slug, &id).await?;
    Ok(Json(JobOutputsView { outputs }).into_response())
}

/// `GET /v1/jobs/{id}/logs` query.
#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// The tails as JSON, or with `follow=true` newline-delimited JSON
/// [`LogLine`]s streamed as the job writes them, ending with the job.
async fn logs(
    State(broker): State<Broker>,
    Caller(slug): Caller,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, BrokerApiError> {
    if !q.follow {
        return Ok(Json(broker.logs(&slug, &id).await?).into_response());
    }
    let body = match broker.follow_logs(&slug, &id).await? {
        Some(stream) => Body::from_stream(stream.map(|item| {
            let line = match item {
                Ok(chunk) => LogLine {
                    stream: chunk.stream,
                    data: String::from_utf8_lossy(&chunk.data).into_owned(),
                },
                // The stream's end is the client's signal; an error is
                // reported in-band on stderr rather than cutting it.
                Err(e) => LogLine {
                    stream: base_sdk::orchestrator::LogStreamKind::Stderr,
                    data: format!("[broker] log stream error: {e}\n"),
                },
            };
            Ok::<_, Infallible>(ndjson(&line))
        })),
        None => {
            // Already ended: the kept tails are the whole output.
            let tails = broker.logs(&slug, &id).await?;
            let lines = [
                (base_sdk::orchestrator::LogStreamKind::Stdout, tails.stdout),
                (base_sdk::orchestrator::LogStreamKind::Stderr, tails.stderr),
            ]
            .into_iter()
            .filter(|(_, data)| !data.is_empty())
            .map(|(stream, data)| ndjson(&LogLine { stream, data }))
            .collect::<Vec<_>>()
            .concat();
            Body::from(lines)
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn ndjson(line: &LogLine) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}
