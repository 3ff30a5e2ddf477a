//! Optional bearer-token authentication for the inference RPCs and the JSON
//! API. Health and reflection stay open so probes and tooling work.

use std::future::{Ready, ready};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the auth token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the auth token file {0} is empty")]
    Empty(PathBuf),
}

/// The expected token, or None when authentication is off.
#[derive(Clone, Default)]
pub struct TokenAuth {
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.token.is_some() {
            "TokenAuth(on)"
        } else {
            "TokenAuth(off)"
        })
    }
}

impl TokenAuth {
    /// Reads the token from a file (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let raw = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let token = raw.trim();
        if token.is_empty() {
            return Err(AuthError::Empty(path.to_path_buf()));
        }
        Ok(TokenAuth {
            token: Some(Arc::from(token.as_bytes())),
        })
    }

    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Checks an `authorization` header value. The comparison takes the
    /// same time wherever the first wrong byte is.
    pub fn check(&self, header: Option<&str>) -> Result<(), &'static str> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let Some(value) = header else {
            return Err("missing bearer token; send the header `authorization: Bearer <token>`");
        };
        let Some(given) = value.strip_prefix("Bearer ").map(str::trim) else {
            return Err("the authorization header must be `Bearer <token>`");
        };
        if bool::from(given.as_bytes().ct_eq(expected)) {
            Ok(())
        } else {
            Err("invalid bearer token")
        }
    }
}

/// The one authentication mechanism, for both protocols: a tower layer that
/// checks the bearer token before the wrapped service sees the request.
/// Wrapped around the gRPC inference services and the JSON API's classify
/// route; health, reflection, the page and the model description stay open.
#[derive(Clone, Debug)]
pub struct RequireToken {
    auth: TokenAuth,
}

impl RequireToken {
    pub fn new(auth: TokenAuth) -> Self {
        RequireToken { auth }
    }
}

impl<S> tower::Layer<S> for RequireToken {
    type Service = Authed<S>;

    fn layer(&self, inner: S) -> Authed<S> {
        Authed {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// A service behind `RequireToken`.
#[derive(Clone, Debug)]
pub struct Authed<S> {
    inner: S,
    auth: TokenAuth,
}

/// How each protocol says "unauthenticated": the refusal built from the
/// response body type the protocol's services use.
pub trait Refusal: Sized {
    fn unauthenticated(why: &'static str) -> http::Response<Self>;
}

/// gRPC: a trailers-only response with status UNAUTHENTICATED.
impl Refusal for tonic::body::Body {
    fn unauthenticated(why: &'static str) -> http::Response<Self> {
        tonic::Status::unauthenticated(why).into_http()
    }
}

/// HTTP: 401 with the JSON API's error body.
impl Refusal for axum::body::Body {
    fn unauthenticated(why: &'static str) -> http::Response<Self> {
        use axum::response::IntoResponse;
        crate::http::ApiError(crate::error::ServiceError::Unauthenticated(why)).into_response()
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for Authed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Refusal,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<Ready<Result<http::Response<R>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The wrapped services (tonic's and axum's) reserve nothing here, so
        // a refused request that never reaches `call` leaks nothing.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.auth.check(header) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(why) => {
                metrics::counter!(mnister_core::metrics::UNAUTHENTICATED).increment(1);
                Either::Left(ready(Ok(R::unauthenticated(why))))
            }
        }
    }
}

/// tonic routes by service name, which the wrapper keeps.
impl<S: tonic::server::NamedService> tonic::server::NamedService for Authed<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_tokens() {
        let off = TokenAuth::default();
        assert!(off.check(None).is_ok());
        let on = TokenAuth {
            token: Some(Arc::from(&b"s3cret"[..])),
        };
        assert!(on.check(Some("Bearer s3cret")).is_ok());
        assert!(on.check(None).unwrap_err().contains("missing"));
        assert!(
            on.check(Some("Bearer nope"))
                .unwrap_err()
                .contains("invalid")
        );
        assert!(on.check(Some("Bearer s3cret2")).is_err());
        assert!(
            on.check(Some("Basic s3cret"))
                .unwrap_err()
                .contains("Bearer")
        );
    }
}
