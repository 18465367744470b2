//! Who may do what: the admin token check (more checks join with the
//! broker and the miner bridge).
//!
//! Admin routes fail closed: with no token configured every request is
//! refused, so a forgotten `BASE_ADMIN_TOKEN` never opens the registry.

use secrecy::SecretString;

use crate::registry::token;

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential, a wrong one, or no admin token configured.
    #[error("Unauthorized")]
    Unauthorized,
}

/// The configured admin credential.
#[derive(Clone)]
pub struct AdminAuth {
    token: Option<SecretString>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("configured", &self.token.is_some())
            .finish()
    }
}

impl AdminAuth {
    /// `None` means admin routes are closed.
    pub fn new(token: Option<SecretString>) -> Self {
        Self { token }
    }

    /// Checks `X-Admin-Token` or `Authorization: Bearer`; returns the actor
    /// name recorded in the audit log: `admin:` and the first 8 hex digits
    /// of the token's SHA-256, which tells tokens apart without revealing
    /// any of their characters.
    pub fn check(
        &self,
        x_admin_token: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<String, AuthError> {
        let configured = self.token.as_ref().ok_or(AuthError::Unauthorized)?;
        let presented = x_admin_token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .or_else(|| bearer(authorization))
            .ok_or(AuthError::Unauthorized)?;
        if token::secrets_equal(configured, presented) {
            Ok(format!("admin:{}", &token::hash(presented)[..8]))
        } else {
            Err(AuthError::Unauthorized)
        }
    }
}

/// The credential of an `Authorization: Bearer <t>` header (scheme
/// case-insensitive).
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim()).filter(|t| !t.is_empty())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_closed_without_a_token() {
        let a = AdminAuth::new(None);
        assert_eq!(a.check(Some("x"), None), Err(AuthError::Unauthorized));
        assert_eq!(
            a.check(None, Some("Bearer x")),
            Err(AuthError::Unauthorized)
        );
    }

    #[test]
    fn either_header_works() {
        let a = AdminAuth::new(Some(SecretString::from(
            "correct-horse-battery".to_string(),
        )));
        assert!(a.check(Some("correct-horse-battery"), None).is_ok());
        assert!(a.check(None, Some("Bearer correct-horse-battery")).is_ok());
        assert!(a.check(None, Some("bearer correct-horse-battery")).is_ok());
        assert!(a.check(Some("wrong"), None).is_err());
        assert!(a.check(None, Some("Basic correct-horse-battery")).is_err());
        assert!(a.check(Some(""), None).is_err());
        assert!(a.check(None, None).is_err());
        let actor = a.check(Some("correct-horse-battery"), None).unwrap();
        assert_eq!(actor.len(), "admin:".len() + 8);
        assert!(
            !actor.contains("corr") && !actor.contains("tery"),
            "{actor}"
        );
        assert!(!format!("{a:?}").contains("correct"));
    }
}
