//! The submitter's feed against real HTTP(S) servers on loopback, each one
//! playing a hostile or intercepted master: a vector that is unsigned,
//! tampered with or signed by another key is refused before it is parsed;
//! an oversized answer is refused without being buffered; HTTPS to a
//! master with a private CA works once that CA is configured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::Router;
use axum::http::header::HeaderName;
use axum::response::IntoResponse;
use axum::routing::get;
use base_sdk::chain::submitter::{HttpWeightsFeed, SubmitterError, WeightsFeed};
use base_sdk::model::WeightsSnapshot;
use base_sdk::weights::signing::{KEY_HEADER, SIGNATURE_HEADER, SigningError, WeightsKey};
use chrono::Utc;

fn snapshot() -> WeightsSnapshot {
    let now = Utc::now();
    WeightsSnapshot {
        netuid: 1,
        chain_endpoint: String::new(),
        uids: vec![1, 2],
        weights: vec![0.25, 0.75],
        hotkey_weights: Default::default(),
        computed_at: now,
        expires_at: now + chrono::Duration::seconds(720),
        source_challenges: vec![],
        metagraph_updated_at: None,
        status: Default::default(),
        last_epoch: None,
    }
}

fn master_key() -> WeightsKey {
    WeightsKey::from_seed(&[42u8; 32])
}

/// A master that answers `/v1/weights/latest` with `body` and `signature`.
async fn serve(body: Vec<u8>, signature: Option<String>) -> String {
    let app = Router::new().route(
        "/v1/weights/latest",
        get(move || {
            let body = body.clone();
            let signature = signature.clone();
            async move {
                let mut resp = ([("content-type", "application/json")], body).into_response();
                if let Some(s) = signature {
                    resp.headers_mut().insert(
                        HeaderName::from_static(SIGNATURE_HEADER),
                        s.parse().unwrap(),
                    );
                    resp.headers_mut().insert(
                        HeaderName::from_static(KEY_HEADER),
                        master_key().public().to_string().parse().unwrap(),
                    );
                }
                resp
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn feed(url: &str) -> HttpWeightsFeed {
    HttpWeightsFeed::new(url, Duration::from_secs(5), 0)
        .unwrap()
        .with_master_key(master_key().public())
}

#[tokio::test]
async fn a_signed_vector_is_accepted() {
    let body = serde_json::to_vec(&snapshot()).unwrap();
    let sig = master_key().sign(&body);
    let url = serve(body, Some(sig)).await;
    let got = feed(&url).latest().await.unwrap();
    assert_eq!(got.uids, vec![1, 2]);
}

#[tokio::test]
async fn an_unsigned_vector_is_refused() {
    let body = serde_json::to_vec(&snapshot()).unwrap();
    let url = serve(body, None).await;
    let e = feed(&url).latest().await.unwrap_err();
    assert!(
        matches!(e, SubmitterError::Signature(SigningError::Unsigned)),
        "{e}"
    );
    assert!(e.to_string().contains("unsigned"), "{e}");
}

#[tokio::test]
async fn a_tampered_vector_is_refused() {
    let body = serde_json::to_vec(&snapshot()).unwrap();
    let sig = master_key().sign(&body);
    // A man in the middle moves the weight to uid 1.
    let tampered = String::from_utf8(body)
        .unwrap()
        .replace("[0.25,0.75]", "[0.75,0.25]")
        .into_bytes();
    let url = serve(tampered, Some(sig)).await;
    let e = feed(&url).latest().await.unwrap_err();
    assert!(
        matches!(e, SubmitterError::Signature(SigningError::Invalid { .. })),
        "{e}"
    );
    assert!(
        e.to_string().contains(&master_key().public().to_string()),
        "names the trusted key: {e}"
    );
}

#[tokio::test]
async fn a_vector_signed_by_another_key_is_refused() {
    let body = serde_json::to_vec(&snapshot()).unwrap();
    let sig = WeightsKey::from_seed(&[7u8; 32]).sign(&body);
    let url = serve(body, Some(sig)).await;
    let e = feed(&url).latest().await.unwrap_err();
    assert!(
        matches!(e, SubmitterError::Signature(SigningError::Invalid { .. })),
        "{e}"
    );
}

#[tokio::test]
async fn an_oversized_answer_is_refused() {
    // Declared length over the cap: refused from the head.
    let mut s = snapshot();
    s.hotkey_weights = (0..2000).map(|i| (format!("hk{i:060}"), 0.0)).collect();
    let body = serde_json::to_vec(&s).unwrap();
    assert!(body.len() > 64 * 1024);
    let sig = master_key().sign(&body);
    let url = serve(body, Some(sig)).await;
    let e = feed(&url)
        .with_max_body(64 * 1024)
        .latest()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("larger than 65536 bytes"), "{e}");

    // No declared length (a chunked stream that never ends): refused once
    // the bytes read pass the cap, not buffered to the end.
    let app = Router::new().route(
        "/v1/weights/latest",
        get(|| async {
            let chunks = futures::stream::repeat_with(|| {
                Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; 16 * 1024]))
            });
            axum::body::Body::from_stream(chunks)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let e = feed(&format!("http://{addr}")).latest().await.unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("larger than {} bytes", 4 << 20)),
        "{e}"
    );
}

/// HTTPS to a master whose certificate comes from a private CA: refused
/// without the CA (unknown issuer), accepted with `with_ca_file`.
#[tokio::test]
async fn https_to_a_remote_master_with_a_configured_ca() {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let body = serde_json::to_vec(&snapshot()).unwrap();
    let sig = master_key().sign(&body);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let body = body.clone();
            let sig = sig.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{SIGNATURE_HEADER}: {sig}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let url = format!("https://127.0.0.1:{port}");

    let e = feed(&url).latest().await.unwrap_err();
    assert!(matches!(e, SubmitterError::Feed(_)), "untrusted CA: {e}");

    let got = feed(&url)
        .with_ca_file(&dir.join("ca.pem"))
        .unwrap()
        .latest()
        .await
        .unwrap();
    assert_eq!(got.weights, vec![0.25, 0.75]);

    let e = feed(&url)
        .with_ca_file(&dir.join("server.key"))
        .unwrap_err();
    assert!(e.to_string().contains("server.key"), "{e}");
}
