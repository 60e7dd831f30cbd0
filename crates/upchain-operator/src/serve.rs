//! The operator's HTTP endpoints: `/metrics`, `/healthz` and `/readyz`, over plain HTTP or
//! TLS, with `/metrics` optionally behind the cluster's own authentication and
//! authorization (a TokenReview and a SubjectAccessReview for `get` on the non-resource
//! URL `/metrics`, as the kubelet and kube-rbac-proxy do). The probes stay open: the
//! kubelet sends no token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::metrics::Metrics;

/// How long a token's verdict is reused: a scrape every 30 s costs two reviews every
/// minute, not two per scrape.
const VERDICT_TTL: Duration = Duration::from_secs(60);
/// Tokens remembered at most; a flood of bad tokens cannot grow the cache beyond it.
const MAX_VERDICTS: usize = 1024;
/// How often certificate files are read again, so a renewed Secret is served without a
/// restart.
const CERTIFICATE_RELOAD: Duration = Duration::from_secs(300);
/// A client that opens a connection and never finishes its handshake is dropped after it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the TLS certificate comes from.
#[derive(Clone, Debug)]
pub enum Tls {
    /// Made at start-up, for scrapers that encrypt without verifying (the chart's
    /// default).
    SelfSigned,
    /// `tls.crt` and `tls.key` in this directory, as a `kubernetes.io/tls` Secret mounts
    /// them; read again every five minutes.
    Files(PathBuf),
}

/// How the endpoints are served.
#[derive(Clone, Default)]
pub struct Endpoints {
    /// TLS, or plain HTTP.
    pub tls: Option<Tls>,
    /// With a client: `/metrics` answers only bearer tokens that the cluster authenticates
    /// and allows `get` on `/metrics`.
    pub auth: Option<kube::Client>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("tls", &self.tls)
            .field("auth", &self.auth.is_some())
            .finish()
    }
}

/// Why the endpoints could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}; choose another --metrics-addr")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate or key could not be used.
    #[error(
        "cannot use the metrics certificate in {dir}: {reason}; mount a kubernetes.io/tls \
         Secret there (the chart's metrics.tls.secretName), or serve a self-signed one \
         (--metrics-tls self-signed)"
    )]
    Certificate {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Serves the endpoints on `addr` until `shutdown` completes; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    endpoints: Endpoints,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, ServeError> {
    let certificates = match &endpoints.tls {
        None => None,
        Some(tls) => Some(Arc::new(Certificates::load(tls)?)),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Listen { addr, source })?;
    let router = router(metrics, endpoints.auth.map(Reviewer::new));
    match certificates {
        None => {
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(%error, "metrics server stopped");
                }
            });
        }
        Some(certificates) => {
            if let Some(Tls::Files(dir)) = endpoints.tls {
                tokio::spawn(reload(certificates.clone(), dir));
            }
            tokio::spawn(serve_tls(listener, certificates, router, shutdown));
        }
    }
    Ok(bound)
}

fn router(metrics: Arc<Metrics>, reviewer: Option<Reviewer>) -> axum::Router {
    let scrape = Arc::new((metrics.clone(), reviewer));
    axum::Router::new()
        .route(
            "/metrics",
            get(
                |State(scrape): State<Arc<(Arc<Metrics>, Option<Reviewer>)>>,
                 headers: HeaderMap| async move {
                    let (metrics, reviewer) = &*scrape;
                    if let Some(reviewer) = reviewer
                        && let Err(refusal) = reviewer.admit(&headers).await
                    {
                        return refusal;
                    }
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                        .into_response()
                },
            ),
        )
        .with_state(scrape)
        .route(
            "/healthz",
            get({
                let metrics = metrics.clone();
                move || async move {
                    let problems = metrics.health.problems(Instant::now());
                    if problems.is_empty() {
                        (StatusCode::OK, "ok".to_owned()).into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n")).into_response()
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                if metrics.is_ready() {
                    (StatusCode::OK, "ok").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not yet filled").into_response()
                }
            }),
        )
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    certificates: Arc<Certificates>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = match rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => {
            let mut config = builder
                .with_no_client_auth()
                .with_cert_resolver(certificates);
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            config
        }
        Err(error) => {
            tracing::error!(%error, "metrics server cannot set up TLS");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(%error, "metrics server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The certificate being served; replaced when its files change.
#[derive(Debug)]
struct Certificates(RwLock<Arc<CertifiedKey>>);

impl Certificates {
    fn load(tls: &Tls) -> Result<Self, ServeError> {
        let key = match tls {
            Tls::SelfSigned => self_signed(),
            Tls::Files(dir) => from_files(dir),
        }?;
        Ok(Self(RwLock::new(Arc::new(key))))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

async fn reload(certificates: Arc<Certificates>, dir: PathBuf) {
    loop {
        tokio::time::sleep(CERTIFICATE_RELOAD).await;
        match from_files(&dir) {
            Ok(key) => *certificates.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key),
            Err(error) => tracing::warn!(%error, "keeping the metrics certificate served so far"),
        }
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
    dir: &Path,
) -> Result<CertifiedKey, ServeError> {
    let refuse = |reason: String| ServeError::Certificate {
        dir: dir.to_owned(),
        reason,
    };
    if chain.is_empty() {
        return Err(refuse("tls.crt holds no certificate".to_owned()));
    }
    let signing = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| refuse(format!("tls.key is not a usable private key: {e}")))?;
    Ok(CertifiedKey::new(chain, signing))
}

fn from_files(dir: &Path) -> Result<CertifiedKey, ServeError> {
    let refuse = |file: &str, error: rustls_pki_types::pem::Error| ServeError::Certificate {
        dir: dir.to_owned(),
        reason: format!("{file}: {error}"),
    };
    let chain = CertificateDer::pem_file_iter(dir.join("tls.crt"))
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| refuse("tls.crt", e))?;
    let key =
        PrivateKeyDer::from_pem_file(dir.join("tls.key")).map_err(|e| refuse("tls.key", e))?;
    certified(chain, &key, dir)
}

fn self_signed() -> Result<CertifiedKey, ServeError> {
    let dir = Path::new("(self-signed)");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).map_err(|e| {
        ServeError::Certificate {
            dir: dir.to_owned(),
            reason: e.to_string(),
        }
    })?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
    certified(vec![made.cert.der().clone()], &key, dir)
}

/// What the cluster said about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    /// Authenticated as this user, who may not get `/metrics`.
    Denied(String),
    Unauthenticated,
}

/// Reviews bearer tokens with the API server, remembering each verdict for a minute.
#[derive(Clone)]
struct Reviewer {
    client: kube::Client,
    verdicts: Arc<Mutex<HashMap<String, (Instant, Verdict)>>>,
}

impl Reviewer {
    fn new(client: kube::Client) -> Self {
        Self {
            client,
            verdicts: Arc::default(),
        }
    }

    /// Ok when the request's token may read `/metrics`; otherwise the answer to send.
    async fn admit(&self, headers: &HeaderMap) -> Result<(), Response> {
        let Some(token) = bearer_token(headers) else {
            return Err(refusal(
                StatusCode::UNAUTHORIZED,
                "send a bearer token (Authorization: Bearer ...) of an identity allowed to get \
                 the non-resource URL /metrics, such as Prometheus's ServiceAccount bound to \
                 the chart's metrics-reader ClusterRole",
            ));
        };
        let now = Instant::now();
        let remembered = self
            .verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .filter(|(at, _)| now.duration_since(*at) < VERDICT_TTL)
            .map(|(_, verdict)| verdict.clone());
        let verdict = match remembered {
            Some(verdict) => verdict,
            None => {
                let verdict = self.review(token).await.map_err(|error| {
                    tracing::warn!(%error, "cannot review a /metrics token");
                    refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "cannot review the token with the API server ({error}); check that \
                             upchain may create TokenReviews and SubjectAccessReviews"
                        ),
                    )
                })?;
                remember(
                    &mut self.verdicts.lock().unwrap_or_else(|p| p.into_inner()),
                    token,
                    now,
                    verdict.clone(),
                );
                verdict
            }
        };
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Denied(user) => Err(refusal(
                StatusCode::FORBIDDEN,
                &format!(
                    "{user} may not get /metrics: bind it to a ClusterRole granting get on the \
                     non-resource URL /metrics (the chart's metrics-reader)"
                ),
            )),
            Verdict::Unauthenticated => Err(refusal(
                StatusCode::UNAUTHORIZED,
                "the API server does not accept this bearer token: send a current \
                 ServiceAccount token",
            )),
        }
    }

    async fn review(&self, token: &str) -> Result<Verdict, kube::Error> {
        let review = Api::<TokenReview>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_owned()),
                        audiences: None,
                    },
                    ..TokenReview::default()
                },
            )
            .await?;
        let Some(status) = review.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(Verdict::Unauthenticated);
        };
        let user = status.user.unwrap_or_default();
        let name = user.username.clone().unwrap_or_default();
        let access = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &SubjectAccessReview {
                    spec: SubjectAccessReviewSpec {
                        user: user.username,
                        groups: user.groups,
                        uid: user.uid,
                        extra: user.extra,
                        non_resource_attributes: Some(NonResourceAttributes {
                            path: Some("/metrics".to_owned()),
                            verb: Some("get".to_owned()),
                        }),
                        ..SubjectAccessReviewSpec::default()
                    },
                    ..SubjectAccessReview::default()
                },
            )
            .await?;
        Ok(if access.status.is_some_and(|s| s.allowed) {
            Verdict::Allowed
        } else {
            Verdict::Denied(name)
        })
    }
}

fn remember(
    verdicts: &mut HashMap<String, (Instant, Verdict)>,
    token: &str,
    now: Instant,
    verdict: Verdict,
) {
    if verdicts.len() >= MAX_VERDICTS {
        verdicts.retain(|_, (at, _)| now.duration_since(*at) < VERDICT_TTL);
        if verdicts.len() >= MAX_VERDICTS {
            verdicts.clear();
        }
    }
    verdicts.insert(token.to_owned(), (now, verdict));
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn refusal(status: StatusCode, message: &str) -> Response {
    let mut response = (status, format!("{message}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_bearer_token_is_read_from_the_authorization_header_only() {
        assert_eq!(bearer_token(&with_authorization("Bearer abc")), Some("abc"));
        assert_eq!(
            bearer_token(&with_authorization("bearer  abc ")),
            Some("abc")
        );
        assert_eq!(bearer_token(&with_authorization("Basic abc")), None);
        assert_eq!(bearer_token(&with_authorization("Bearer ")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn certificates_are_read_from_a_tls_secret_mount_and_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = from_files(dir.path()).unwrap_err().to_string();
        assert!(missing.contains("tls.crt"), "{missing}");
        assert!(missing.contains("metrics.tls.secretName"), "{missing}");

        let made = rcgen::generate_simple_self_signed(vec!["upchain".to_owned()]).unwrap();
        std::fs::write(dir.path().join("tls.crt"), made.cert.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        let bad_key = from_files(dir.path()).unwrap_err().to_string();
        assert!(bad_key.contains("tls.key"), "{bad_key}");

        std::fs::write(dir.path().join("tls.key"), made.key_pair.serialize_pem()).unwrap();
        assert!(from_files(dir.path()).is_ok());
        assert!(self_signed().is_ok());
    }

    #[test]
    fn remembered_verdicts_are_bounded() {
        let mut verdicts = HashMap::new();
        let now = Instant::now();
        for i in 0..(MAX_VERDICTS + 10) {
            remember(
                &mut verdicts,
                &format!("token-{i}"),
                now,
                Verdict::Unauthenticated,
            );
        }
        assert!(verdicts.len() <= MAX_VERDICTS);
        assert!(verdicts.contains_key(&format!("token-{}", MAX_VERDICTS + 9)));
    }
}
