//! Optional bearer-token authentication for the inference RPCs and the JSON
//! API. Health and reflection stay open so probes and tooling work.

use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

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
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let raw = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the auth token file {}: {e}", path.display()))?;
        let token = raw.trim();
        if token.is_empty() {
            return Err(format!("the auth token file {} is empty", path.display()));
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

impl tonic::service::Interceptor for TokenAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.check(header) {
            Ok(()) => Ok(req),
            Err(why) => {
                metrics::counter!(crate::metrics::UNAUTHENTICATED).increment(1);
                Err(Status::unauthenticated(why))
            }
        }
    }
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
