//! Container image references, parsed by the grammar Docker uses.
//!
//! The registry, the production policy and the broker's allowlist all need to
//! know which part of `registry:5000/ns/repo:1.2@sha256:…` is which, and a
//! hand-rolled `split(':')` gets the port case wrong, so the grammar lives
//! here once as a pure parser.

use std::fmt;
use std::str::FromStr;

/// A parsed image reference: `[registry/]repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host with optional port (`ghcr.io`, `registry:5000`), when
    /// the first path component names one.
    pub registry: Option<String>,
    /// Repository path (`platformnetwork/term-challenge`).
    pub repository: String,
    /// Tag, when present.
    pub tag: Option<String>,
    /// Content digest (`sha256:<64 hex>`), when present.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// Nothing to parse.
    #[error("image reference is empty")]
    Empty,
    /// Longer than Docker accepts.
    #[error("image reference is longer than {max} characters")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// White space or control characters.
    #[error("image reference '{0}' contains white space or control characters")]
    Unprintable(String),
    /// The registry host part is malformed.
    #[error("image reference '{0}' has an invalid registry host")]
    BadRegistry(String),
    /// A repository path component is malformed.
    #[error("image reference '{reference}' has an invalid repository component '{component}'")]
    BadRepository {
        /// The whole reference.
        reference: String,
        /// The offending component.
        component: String,
    },
    /// The tag is malformed.
    #[error("image reference '{0}' has an invalid tag")]
    BadTag(String),
    /// The digest is malformed.
    #[error("image reference '{0}' has an invalid digest (expected sha256:<64 lowercase hex>)")]
    BadDigest(String),
}

impl ImageRef {
    /// Longest reference accepted (the broker contract's limit).
    pub const MAX_LEN: usize = 255;

    /// Parses a reference. Pure; see the module docs.
    pub fn parse(raw: &str) -> Result<Self, ImageRefError> {
        if raw.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ImageRefError::TooLong { max: Self::MAX_LEN });
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ImageRefError::Unprintable(raw.to_string()));
        }
        let (name_tag, digest) = match raw.split_once('@') {
            Some((left, digest)) => {
                if !valid_digest(digest) {
                    return Err(ImageRefError::BadDigest(raw.to_string()));
                }
                (left, Some(digest.to_string()))
            }
            None => (raw, None),
        };
        // A tag is whatever follows the last ':' after the last '/'; a ':'
        // before that belongs to a registry port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].find(':') {
            Some(i) => {
                let at = last_slash + i;
                let tag = &name_tag[at + 1..];
                if !valid_tag(tag) {
                    return Err(ImageRefError::BadTag(raw.to_string()));
                }
                (&name_tag[..at], Some(tag.to_string()))
            }
            None => (name_tag, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_registry(first) {
                    return Err(ImageRefError::BadRegistry(raw.to_string()));
                }
                (Some(first.to_string()), rest)
            }
            _ => (None, name),
        };
        for component in repository.split('/') {
            if !valid_component(component) {
                return Err(ImageRefError::BadRepository {
                    reference: raw.to_string(),
                    component: component.to_string(),
                });
            }
        }
        Ok(Self {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// The 64 hex characters of a sha256 digest, when the reference has one.
    pub fn sha256(&self) -> Option<&str> {
        self.digest
            .as_deref()
            .and_then(|d| d.strip_prefix("sha256:"))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn valid_registry(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && !name.is_empty() && name.split('.').all(label_ok)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

fn valid_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", hex)) => {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        Some(("sha512", hex)) => {
            hex.len() == 128
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn registry_with_port_tag_and_digest() {
        let r = ImageRef::parse(&format!("registry:5000/x:1@{D}")).unwrap();
        assert_eq!(r.registry.as_deref(), Some("registry:5000"));
        assert_eq!(r.repository, "x");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.sha256().map(str::len), Some(64));
    }

    #[test]
    fn common_shapes() {
        let r = ImageRef::parse("ghcr.io/platformnetwork/term-challenge:v1.2.3").unwrap();
        assert_eq!(r.registry.as_deref(), Some("ghcr.io"));
        assert_eq!(r.repository, "platformnetwork/term-challenge");
        assert_eq!(r.tag.as_deref(), Some("v1.2.3"));
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!((r.registry, r.tag, r.digest), (None, None, None));
        let r = ImageRef::parse("localhost/app").unwrap();
        assert_eq!(r.registry.as_deref(), Some("localhost"));
        let r = ImageRef::parse("library/ubuntu:22.04").unwrap();
        assert_eq!(r.registry, None);
        let r = ImageRef::parse("registry:5000/x").unwrap();
        assert_eq!(r.tag, None);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "x:",
            "x:-tag",
            "x@sha256:abc",
            "x@md5:0123",
            "ghcr.io//x",
            "-x",
            "x/",
            "host:99999999/x",
            "x;rm -rf",
            "x$(id)",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ImageRef::parse(&"a".repeat(256)).is_err());
    }

    proptest! {
        #[test]
        fn display_round_trips(
            reg in proptest::option::of("[a-z]{1,8}\\.[a-z]{2,3}(:[0-9]{1,5})?"),
            repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            digest in proptest::option::of("[0-9a-f]{64}"),
        ) {
            let mut s = String::new();
            if let Some(r) = &reg { s.push_str(r); s.push('/'); }
            s.push_str(&repo);
            if let Some(t) = &tag { s.push(':'); s.push_str(t); }
            if let Some(d) = &digest { s.push_str("@sha256:"); s.push_str(d); }
            let parsed = ImageRef::parse(&s).unwrap();
            prop_assert_eq!(parsed.to_string(), s);
            prop_assert_eq!(parsed.registry, reg);
            prop_assert_eq!(parsed.tag, tag);
        }

        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = ImageRef::parse(&s);
        }
    }
}
