//! HTTP-level tests of the master's registry and admin API, run against
//! both store backends (PostgreSQL ones need `scripts/test.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base_sdk::auth::AdminAuth;
use base_sdk::config::Environment;
use base_sdk::registry::{Registry, token};
use base_sdk::store::{MockStore, Store, StoreError};
use base_server::{AppState, app};
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN: &str = "admin-token-for-tests-0123456789";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Api {
    state: AppState,
    store: Arc<dyn Store>,
}

impl Api {
    fn new(store: Arc<dyn Store>, env: Environment, admin: Option<&str>) -> Self {
        let registry = Registry::new(store.clone(), env);
        let auth = AdminAuth::new(admin.map(|t| SecretString::from(t.to_string())));
        Self {
            state: AppState::new(registry, auth, 100),
            store,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.raw(method, path, body.map(|b| b.to_string()), Some(ADMIN))
            .await
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("x-admin-token", t);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }
}

fn new_challenge(slug: &str) -> Value {
    json!({
        "slug": slug,
        "name": format!("Challenge {slug}"),
        "image": format!("ghcr.io/platformnetwork/{slug}:1.0.0@{DIGEST}"),
        "version": "1.0.0",
        "emission_percent": 40,
        "env": {"SECRET_ENV_VALUE": "do-not-leak"},
        "secrets": ["hidden_secret_name"],
        "metadata": {"tagline": "public line", "private_note": "internal"},
    })
}

base_sdk::backend_tests!(
    create_shows_tokens_once_and_stores_hashes,
    bad_input_is_rejected_and_nothing_is_written,
    registry_is_public_and_hides_private_fields,
    patch_status_rotate_delete_and_audit,
    admin_routes_need_the_token,
    production_policy_applies,
    bad_resources_in_a_patch_change_nothing,
);

async fn create_shows_tokens_once_and_stores_hashes(store: Arc<dyn Store>) {
    let api = Api::new(store, Environment::Development, Some(ADMIN));
    let (status, body) = api
        .call("POST", "/v1/admin/challenges", Some(new_challenge("term")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ct = body["challenge_token"].as_str().expect("challenge token");
    let bt = body["docker_broker_token"].as_str().expect("broker token");
    assert_ne!(ct, bt);
    let c = &body["challenge"];
    assert_eq!(c["slug"], "term");
    assert_eq!(c["emission_percent"], "40.0");
    assert_eq!(c["status"], "draft");
    assert_eq!(c["api_version"], "1.0");
    assert_eq!(c["internal_base_url"], "http://challenge-term:8000");
    assert_eq!(
        c["required_capabilities"],
        json!(["get_weights", "proxy_routes"])
    );

    let slug = base_sdk::model::Slug::parse("term").unwrap();
    let stored = api.store.tokens(&slug).await.unwrap();
    assert_eq!(stored.len(), 2);
    for t in &stored {
        let clear = match t.kind {
            base_sdk::model::TokenKind::Challenge => ct,
            base_sdk::model::TokenKind::DockerBroker => bt,
        };
        assert!(
            token::verify(clear, &t.hash),
            "stored hash matches the shown token"
        );
        assert_ne!(t.hash, clear, "cleartext is not stored");
    }

    let (status, view) = api.call("GET", "/v1/admin/challenges/term", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = view.to_string();
    assert!(
        !text.contains(ct) && !text.contains(bt),
        "tokens shown again"
    );
    for t in &stored {
        assert!(!text.contains(&t.hash), "token hash exposed: {text}");
    }
    assert_eq!(view["tokens"].as_array().map(Vec::len), Some(2));
    assert!(view["tokens"][0]["hint"].as_str().unwrap().contains('…'));

    let (status, body) = api
        .call("POST", "/v1/admin/challenges", Some(new_challenge("term")))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["detail"], "Challenge 'term' already exists");
    assert_eq!(
        api.store.tokens(&slug).await.unwrap(),
        stored,
        "duplicate changed tokens"
    );
}

async fn bad_input_is_rejected_and_nothing_is_written(store: Arc<dyn Store>) {
    let api = Api::new(store, Environment::Development, Some(ADMIN));
    let cases: Vec<(Option<String>, StatusCode, &str)> = vec![
        (Some("{not json".into()), StatusCode::UNPROCESSABLE_ENTITY, ""),
        (
            Some(json!({"slug": "ok-slug", "name": "n", "image": "a/b:1", "version": "1", "bogus": 1}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bogus",
        ),
        (
            Some(json!({"slug": "Bad_Slug!", "name": "n", "image": "a/b:1", "version": "1"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid slug",
        ),
        (
            Some(json!({"slug": "ok-slug", "name": "n", "image": "a/b:1", "version": "1", "emission_percent": -5}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "emission_percent",
        ),
        (
            Some(json!({"slug": "ok-slug", "name": "n", "image": "a/b:1", "version": "1", "emission_percent": "lots"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "emission_percent",
        ),
        (
            Some(json!({"slug": "ok-slug", "name": "n", "version": "1"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "image",
        ),
        (
            Some(json!({"slug": "ok-slug", "name": "n", "image": "not an image", "version": "1"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "image reference",
        ),
        (
            Some(json!({"slug": "ok-slug", "name": "", "image": "a/b:1", "version": "1"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            Some(json!({"slug": "ok-slug", "name": "n", "image": "a/b:1", "version": "1", "env": {"BASE_DATABASE_URL": "x"}}).to_string()),
            StatusCode::BAD_REQUEST,
            "reserved",
        ),
        // Resource keys are checked before the 201, by the rule the
        // orchestrator maps them with (they used to be stored and then
        // fail in the reconciler).
        (
            Some(json!({"slug": "ok-slug", "name": "n", "image": "a/b:1", "version": "1", "resources": {"gpu": "1"}}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "resources: unknown key 'gpu'",
        ),
        (
            Some(json!({"slug": "ok-slug", "name": "n", "image": "a/b:1", "version": "1", "resources": {"memory": "lots"}}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "resources.memory: 'lots'",
        ),
    ];
    for (body, want, needle) in cases {
        let (status, resp) = api
            .raw("POST", "/v1/admin/challenges", body.clone(), Some(ADMIN))
            .await;
        assert_eq!(status, want, "{body:?} -> {resp}");
        let detail = resp["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(needle),
            "{body:?}: detail {detail:?} lacks {needle:?}"
        );
    }
    // Missing content type is a body error too.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/admin/challenges")
        .header("x-admin-token", ADMIN)
        .body(Body::from(new_challenge("x1").to_string()))
        .unwrap();
    let resp = app(api.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);

    assert!(
        api.store.list_challenges().await.unwrap().is_empty(),
        "nothing half-written"
    );
    assert!(
        api.store.audit_log(None, 10).await.unwrap().is_empty(),
        "no audit rows for refused writes"
    );

    let (status, body) = api
        .call(
            "PATCH",
            "/v1/admin/challenges/missing",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (StatusCode::NOT_FOUND, Some("Challenge 'missing' not found"))
    );
    let (status, _) = api
        .call("GET", "/v1/admin/challenges/NOT%20A%20SLUG", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn bad_resources_in_a_patch_change_nothing(store: Arc<dyn Store>) {
    let api = Api::new(store, Environment::Development, Some(ADMIN));
    let mut body = new_challenge("limits");
    body["resources"] = json!({"cpus": "1.5", "memory": "512m", "pids": "128"});
    let (status, created) = api.call("POST", "/v1/admin/challenges", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, resp) = api
        .call(
            "PATCH",
            "/v1/admin/challenges/limits",
            Some(json!({"name": "renamed", "resources": {"cpus": "0"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert!(
        resp["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("resources.cpus: '0'"),
        "{resp}"
    );
    let (_, view) = api.call("GET", "/v1/admin/challenges/limits", None).await;
    let view = if view["challenge"].is_object() {
        &view["challenge"]
    } else {
        &view
    };
    assert_eq!(view["name"], "Challenge limits", "{view}");
    assert_eq!(
        view["resources"],
        json!({"cpus": "1.5", "memory": "512m", "pids": "128"})
    );
}

async fn registry_is_public_and_hides_private_fields(store: Arc<dyn Store>) {
    let api = Api::new(store, Environment::Development, Some(ADMIN));
    for slug in ["zeta", "alpha", "draft-one"] {
        let (s, _) = api
            .call("POST", "/v1/admin/challenges", Some(new_challenge(slug)))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    for slug in ["zeta", "alpha"] {
        let (s, _) = api
            .call(
                "POST",
                &format!("/v1/admin/challenges/{slug}/activate"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (status, body) = api.raw("GET", "/v1/registry", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["network"], "base");
    assert_eq!(body["api_version"], "1.0");
    assert_eq!(body["master_uid"], 0);
    let slugs: Vec<&str> = body["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["alpha", "zeta"], "non-draft only, ordered by slug");
    let text = body.to_string();
    for leaked in [
        "do-not-leak",
        "SECRET_ENV_VALUE",
        "hidden_secret_name",
        "private_note",
        "internal_base_url",
        "challenge-alpha:8000",
        "token",
    ] {
        assert!(!text.contains(leaked), "{leaked} leaked: {text}");
    }
    assert_eq!(body["challenges"][0]["metadata"]["tagline"], "public line");
    let (status, body) = api.raw("GET", "/health", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
}

async fn patch_status_rotate_delete_and_audit(store: Arc<dyn Store>) {
    let api = Api::new(store, Environment::Development, Some(ADMIN));
    let (_, created) = api
        .call("POST", "/v1/admin/challenges", Some(new_challenge("life")))
        .await;
    let old_ct = created["challenge_token"].as_str().unwrap().to_string();
    let old_bt = created["docker_broker_token"].as_str().unwrap().to_string();

    let (status, body) = api
        .call(
            "PATCH",
            "/v1/admin/challenges/life",
            Some(json!({"name": "Renamed", "emission_percent": "12.5"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["name"].as_str(), body["emission_percent"].as_str()),
        (Some("Renamed"), Some("12.5"))
    );
    assert_eq!(body["version"], "1.0.0", "untouched fields kept");
    let (status, body) = api
        .call(
            "PATCH",
            "/v1/admin/challenges/life",
            Some(json!({"slug": "other"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("immutable"));

    let (_, body) = api
        .call("POST", "/v1/admin/challenges/life/activate", None)
        .await;
    assert_eq!(body["status"], "active");
    let (_, body) = api
        .call("POST", "/v1/admin/challenges/life/deactivate", None)
        .await;
    assert_eq!(body["status"], "inactive");
    let (_, list) = api.call("GET", "/v1/admin/challenges", None).await;
    assert_eq!(list["challenges"][0]["status"], "inactive");

    let (status, rotated) = api
        .call(
            "POST",
            "/v1/admin/challenges/life/tokens/rotate",
            Some(json!({"kind": "challenge"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_ct = rotated["challenge_token"].as_str().unwrap();
    assert_ne!(new_ct, old_ct);
    assert!(rotated.get("docker_broker_token").is_none());
    let slug = base_sdk::model::Slug::parse("life").unwrap();
    let tokens = api.store.tokens(&slug).await.unwrap();
    let ch = tokens
        .iter()
        .find(|t| t.kind == base_sdk::model::TokenKind::Challenge)
        .unwrap();
    let br = tokens
        .iter()
        .find(|t| t.kind == base_sdk::model::TokenKind::DockerBroker)
        .unwrap();
    assert!(token::verify(new_ct, &ch.hash) && !token::verify(&old_ct, &ch.hash));
    assert!(token::verify(&old_bt, &br.hash), "broker token untouched");
    let (status, rotated) = api
        .raw(
            "POST",
            "/v1/admin/challenges/life/tokens/rotate",
            None,
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(rotated["challenge_token"].is_string() && rotated["docker_broker_token"].is_string());
    let (status, _) = api
        .call(
            "POST",
            "/v1/admin/challenges/life/tokens/rotate",
            Some(json!({"kind": "nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, body) = api
        .call(
            "DELETE",
            "/v1/admin/challenges/life?purge_volumes=true",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"deleted": "life", "volumes_retained": false}));
    let (status, _) = api.call("GET", "/v1/admin/challenges/life", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(api.store.tokens(&slug).await.unwrap().is_empty());

    let (status, audit) = api.call("GET", "/v1/admin/audit?slug=life", None).await;
    assert_eq!(status, StatusCode::OK);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "challenge.delete",
            "challenge.rotate_tokens",
            "challenge.rotate_tokens",
            "challenge.set_status",
            "challenge.set_status",
            "challenge.update",
            "challenge.create",
        ],
        "every write audited, newest first"
    );
    let text = audit.to_string();
    assert!(
        !text.contains(new_ct) && !text.contains(&old_ct) && !text.contains(ADMIN),
        "secrets in audit log"
    );
    assert!(
        audit["entries"][0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("admin:")
    );
}

async fn admin_routes_need_the_token(store: Arc<dyn Store>) {
    let routes = [
        ("POST", "/v1/admin/challenges"),
        ("GET", "/v1/admin/challenges"),
        ("GET", "/v1/admin/challenges/x"),
        ("PATCH", "/v1/admin/challenges/x"),
        ("DELETE", "/v1/admin/challenges/x"),
        ("POST", "/v1/admin/challenges/x/activate"),
        ("POST", "/v1/admin/challenges/x/deactivate"),
        ("POST", "/v1/admin/challenges/x/tokens/rotate"),
        ("GET", "/v1/admin/audit"),
    ];
    // Fail closed: no admin token configured means nobody gets in.
    let closed = Api::new(store.clone(), Environment::Development, None);
    let open = Api::new(store, Environment::Development, Some(ADMIN));
    for (method, path) in routes {
        for (api, token) in [
            (&closed, Some(ADMIN)),
            (&closed, Some("")),
            (&open, None),
            (&open, Some("wrong")),
        ] {
            let (status, body) = api
                .raw(method, path, Some(new_challenge("x").to_string()), token)
                .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            assert_eq!(body, json!({"detail": "Unauthorized"}));
        }
    }
    // Bearer works as well as X-Admin-Token.
    let req = Request::builder()
        .uri("/v1/admin/challenges")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let resp = app(open.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(open.store.list_challenges().await.unwrap().is_empty());
}

async fn production_policy_applies(store: Arc<dyn Store>) {
    let backend = store.backend();
    let api = Api::new(store, Environment::Production, Some(ADMIN));
    let mut body = new_challenge("prod");
    body["image"] = json!("ghcr.io/platformnetwork/prod");
    let (status, resp) = api.call("POST", "/v1/admin/challenges", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    let (status, resp) = api
        .call("POST", "/v1/admin/challenges", Some(new_challenge("prod")))
        .await;
    match backend {
        base_sdk::store::Backend::Postgres => {
            assert_eq!(status, StatusCode::CREATED, "{resp}");
            let (status, resp) = api
                .call(
                    "PATCH",
                    "/v1/admin/challenges/prod",
                    Some(json!({"image": "ghcr.io/x/y:main"})),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
            assert!(resp["detail"].as_str().unwrap().contains("SemVer"));
        }
        base_sdk::store::Backend::Sqlite => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(
                resp["detail"].as_str().unwrap().contains("PostgreSQL"),
                "{resp}"
            );
        }
    }
}

#[tokio::test]
async fn unreachable_database_is_503_with_no_details() {
    let mut mock = MockStore::new();
    mock.expect_backend()
        .return_const(base_sdk::store::Backend::Postgres);
    mock.expect_list_challenges()
        .returning(|| Err(StoreError::Unavailable(sqlx_io_error())));
    mock.expect_get_challenge()
        .returning(|_| Err(StoreError::Unavailable(sqlx_io_error())));
    mock.expect_create_challenge()
        .returning(|_, _, _| Err(StoreError::Unavailable(sqlx_io_error())));
    let api = Api::new(Arc::new(mock), Environment::Development, Some(ADMIN));
    let (status, body) = api.raw("GET", "/v1/registry", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!({"detail": "database unavailable"}));
    mock_create_fails(&api).await;
    let (status, body) = api.call("GET", "/v1/admin/challenges/db-down", None).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("database unavailable")
        )
    );
}

async fn mock_create_fails(api: &Api) {
    let (status, body) = api
        .call(
            "POST",
            "/v1/admin/challenges",
            Some(new_challenge("db-down")),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !body.to_string().contains("hunter2"),
        "database error details leaked"
    );
}

fn sqlx_io_error() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused to db.internal:5432 password=hunter2",
    ))
}

#[tokio::test]
async fn status_comes_from_the_orchestrator_and_delete_passes_the_purge_flag() {
    use base_sdk::model::Slug;
    use base_sdk::orchestrator::{MockOrchestrator, ServiceState, ServiceStatus};
    let db = base_sdk::testing::sqlite().await.unwrap();
    let without = Api::new(db.store.clone(), Environment::Development, Some(ADMIN));
    let (s, _) = without
        .call("POST", "/v1/admin/challenges", Some(new_challenge("live")))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, body) = without
        .call("GET", "/v1/admin/challenges/live/status", None)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["detail"].as_str().unwrap().contains("no orchestrator"));

    let mut o = MockOrchestrator::new();
    o.expect_name().return_const("swarm");
    o.expect_challenge_status().returning(|slug| {
        Ok(ServiceStatus {
            slug: slug.clone(),
            state: ServiceState::Failed,
            image: Some("ghcr.io/x:1".into()),
            endpoint: None,
            message: Some("task exited with 137".into()),
            started_at: None,
        })
    });
    o.expect_remove_challenge()
        .withf(|slug, purge| slug == &Slug::parse("live").unwrap() && *purge)
        .times(1)
        .returning(|_, _| Ok(()));
    let registry = Registry::new(db.store.clone(), Environment::Development);
    let state = AppState::new(
        registry,
        AdminAuth::new(Some(SecretString::from(ADMIN.to_string()))),
        100,
    )
    .with_orchestrator(Arc::new(o));
    let with = Api {
        state,
        store: db.store.clone(),
    };
    let (s, body) = with
        .call("GET", "/v1/admin/challenges/live/status", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["orchestrator"], "swarm");
    assert_eq!(body["desired_status"], "draft");
    assert_eq!(body["runtime"]["state"], "failed");
    assert_eq!(body["runtime"]["message"], "task exited with 137");
    let (s, _) = with
        .call("GET", "/v1/admin/challenges/nope/status", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = with
        .call(
            "DELETE",
            "/v1/admin/challenges/live?purge_volumes=true",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
}
