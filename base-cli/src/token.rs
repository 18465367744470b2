//! Where the admin token comes from: a flag, a file, or the environment.
//!
//! The environment is read here rather than through clap's `env` support so
//! that the precedence is explicit and testable (clap would also need
//! `hide_env_values` everywhere to keep the token out of `--help`). The
//! token is held as a [`SecretString`] from the moment it is read, so no
//! `Debug` output or error message can show it.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

/// Env var holding the admin token itself.
pub const TOKEN_VAR: &str = "BASE_ADMIN_TOKEN";
/// Env var naming a file that holds the admin token (Docker-secret style).
pub const TOKEN_FILE_VAR: &str = "BASE_ADMIN_TOKEN_FILE";

/// Why no usable admin token could be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file named by a flag or env var cannot be read.
    #[error("cannot read the admin token file '{path}' (from {source_name}): {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Which setting named it (`--admin-token-file` or the env var).
        source_name: &'static str,
        /// The I/O error, as text (the error itself is not `Clone`).
        reason: String,
    },
    /// A token was given but is empty (or only a newline).
    #[error("the admin token from {0} is empty")]
    Empty(&'static str),
}

/// The token as given on the command line; resolved by [`resolve`].
#[derive(Debug, Clone, Default)]
pub struct TokenFlags {
    /// `--admin-token`.
    pub token: Option<SecretString>,
    /// `--admin-token-file`.
    pub file: Option<PathBuf>,
}

/// Picks the admin token: command-line flags beat the environment, and
/// within each level a file beats a literal value (as the server's own
/// settings treat `BASE_ADMIN_TOKEN_FILE`). `env` looks up a variable;
/// empty variables count as unset, since `export BASE_ADMIN_TOKEN=` is the
/// usual way to clear one in a shell.
pub fn resolve(
    flags: TokenFlags,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<SecretString>, TokenError> {
    if let Some(path) = flags.file {
        return read_file(&path, "--admin-token-file").map(Some);
    }
    if let Some(token) = flags.token {
        return non_empty(token, "--admin-token").map(Some);
    }
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(path) = set(TOKEN_FILE_VAR) {
        return read_file(Path::new(&path), TOKEN_FILE_VAR).map(Some);
    }
    if let Some(token) = set(TOKEN_VAR) {
        return non_empty(SecretString::from(token), TOKEN_VAR).map(Some);
    }
    Ok(None)
}

fn read_file(path: &Path, source_name: &'static str) -> Result<SecretString, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenError::Unreadable {
        path: path.to_path_buf(),
        source_name,
        reason: e.to_string(),
    })?;
    // Only line endings are trimmed, exactly as the server trims
    // `BASE_ADMIN_TOKEN_FILE`, so both sides read the same file the same way.
    let token = text.trim_end_matches(['\n', '\r']).to_string();
    non_empty(SecretString::from(token), source_name)
}

fn non_empty(token: SecretString, source_name: &'static str) -> Result<SecretString, TokenError> {
    // The server treats an empty configured token as "none"; sending an
    // empty one would only earn a 401 that hides the real mistake.
    if token.expose_secret().trim().is_empty() {
        Err(TokenError::Empty(source_name))
    } else {
        Ok(token)
    }
}

// Tests may panic on anything unexpected: that is how they fail.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn exposed(t: Option<SecretString>) -> Option<String> {
        t.map(|t| t.expose_secret().to_string())
    }

    #[test]
    fn flags_beat_env_and_files_beat_literals() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\r\n").unwrap();
        let env = env_of(&[(TOKEN_VAR, "from-env")]);

        let flag_token = TokenFlags {
            token: Some(SecretString::from("from-flag")),
            file: None,
        };
        assert_eq!(
            exposed(resolve(flag_token, &env).unwrap()).as_deref(),
            Some("from-flag")
        );

        let flag_file = TokenFlags {
            token: None,
            file: Some(file.clone()),
        };
        assert_eq!(
            exposed(resolve(flag_file, &env).unwrap()).as_deref(),
            Some("from-file")
        );

        let both_env = env_of(&[
            (TOKEN_VAR, "from-env"),
            (TOKEN_FILE_VAR, file.to_str().unwrap()),
        ]);
        assert_eq!(
            exposed(resolve(TokenFlags::default(), both_env).unwrap()).as_deref(),
            Some("from-file")
        );
        assert_eq!(
            exposed(resolve(TokenFlags::default(), &env).unwrap()).as_deref(),
            Some("from-env")
        );
    }

    #[test]
    fn nothing_and_empty_env_mean_no_token() {
        assert!(
            resolve(TokenFlags::default(), env_of(&[]))
                .unwrap()
                .is_none()
        );
        let empty = env_of(&[(TOKEN_VAR, ""), (TOKEN_FILE_VAR, "")]);
        assert!(resolve(TokenFlags::default(), empty).unwrap().is_none());
    }

    #[test]
    fn empty_or_missing_files_are_errors_naming_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "\n").unwrap();
        let e = resolve(
            TokenFlags {
                token: None,
                file: Some(file),
            },
            env_of(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--admin-token-file"), "{e}");

        let missing = dir.path().join("nope");
        let env = env_of(&[(TOKEN_FILE_VAR, missing.to_str().unwrap())]);
        let e = resolve(TokenFlags::default(), env).unwrap_err().to_string();
        assert!(e.contains(TOKEN_FILE_VAR) && e.contains("nope"), "{e}");
    }
}
