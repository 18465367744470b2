//! Which challenge paths the public proxy forwards (CONTRACTS.md §3.2 rule 1).
//!
//! A pure function over the raw, still percent-encoded path a miner sent
//! after `/challenges/{slug}`. It decodes once, treats `\` as `/`,
//! collapses empty segments, resolves `.` and `..` (clamped at the root,
//! as RFC 3986 §5.2.4 does) and then refuses every spelling of the
//! challenge's private routes: `/health`, `/version`, `/internal…` and the
//! benchmark-execution shapes. The comparison is case-insensitive and is
//! made on both the once-decoded path and the path decoded until it stops
//! changing, so a double-encoded `%252e%252e` cannot smuggle a `..` past us
//! to an upstream that decodes twice.
//!
//! The forwarded path is the once-decoded, normalized path re-encoded
//! canonically, so the challenge sees exactly the path that was checked.

use std::fmt;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};

/// Longest raw path (bytes) the proxy accepts; longer ones are refused.
/// Real challenge routes are short, and a cap bounds the work per request.
pub const MAX_PATH_BYTES: usize = 2048;

/// How many decoding rounds the blocking check looks through.
const MAX_DECODE_ROUNDS: usize = 4;

/// Last segments that make a `/benchmark(s)/…` path a benchmark execution.
const EXECUTION_VERBS: &[&str] = &["run", "execute", "launch"];

/// Characters escaped when a decoded segment is re-encoded for the
/// upstream: everything that would change how the path is split or read.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'[')
    .add(b']');

/// Why a path is refused (all answered 403 `Proxy path is not allowed`;
/// the variant is for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("path longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadEscape,
    /// Decodes to bytes that are not UTF-8.
    #[error("path is not valid UTF-8 once decoded")]
    NotUtf8,
    /// Decodes to a control character (NUL, CR, LF, …).
    #[error("control character in path")]
    ControlCharacter,
    /// Resolves to one of the challenge's private routes.
    #[error("path resolves to a private challenge route")]
    Private,
}

/// A path the proxy may forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPath {
    /// Decoded, normalized segments (no empty, `.` or `..` segment).
    segments: Vec<String>,
    /// Whether the miner's path ended in `/` (kept: `/a/` and `/a` may be
    /// different routes upstream).
    trailing_slash: bool,
}

impl ForwardPath {
    /// The decoded segments.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The length of [`ForwardPath::encoded`], without building it.
    fn encoded_len(&self) -> usize {
        let segments: usize = self
            .segments
            .iter()
            .map(|s| 1 + utf8_percent_encode(s, SEGMENT).map(str::len).sum::<usize>())
            .sum();
        segments + usize::from(segments == 0 || self.trailing_slash)
    }

    /// The path to request upstream: `/` plus the re-encoded segments.
    pub fn encoded(&self) -> String {
        let mut out =
            String::with_capacity(1 + self.segments.iter().map(|s| s.len() + 1).sum::<usize>());
        for s in &self.segments {
            out.push('/');
            out.extend(utf8_percent_encode(s, SEGMENT));
        }
        if out.is_empty() || self.trailing_slash {
            out.push('/');
        }
        out
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encoded())
    }
}

/// Decides whether `raw` (the percent-encoded path after
/// `/challenges/{slug}`, with or without a leading `/`, no query) may be
/// forwarded, and to which path.
pub fn check(raw: &str) -> Result<ForwardPath, PathError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    let once = decode_once(raw)?;
    let (segments, trailing_slash) = normalize(&once);
    if is_private(&segments) {
        return Err(PathError::Private);
    }
    // Look through further encodings too: a segment that still holds an
    // escape after one round is what an upstream that decodes again sees.
    // Both the miner's once-decoded text and the normalized path the
    // upstream actually receives are looked through: normalizing can join
    // pieces that no longer decode on their own (`%25/%2e%2e/%252e` becomes
    // `%2e`, which decodes to `.`), and the forwarded path must pass this
    // same check again.
    if once.contains('%')
        && (decodes_to_private(&once) || decodes_to_private(&format!("/{}", segments.join("/"))))
    {
        return Err(PathError::Private);
    }
    let path = ForwardPath {
        segments,
        trailing_slash,
    };
    // The limit holds for what is forwarded too: re-encoding a character
    // the miner sent raw (non-ASCII text, say) makes it up to three times
    // longer. Only a path that could grow past the limit is measured.
    if 3 * once.len() + 1 > MAX_PATH_BYTES && path.encoded_len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    Ok(path)
}

/// Whether decoding `text` again (up to [`MAX_DECODE_ROUNDS`] in all)
/// reaches a private route. Stops at the first round that fails or
/// changes nothing: what does not decode cleanly is not a path anyone acts
/// on.
fn decodes_to_private(text: &str) -> bool {
    let mut text = text.to_string();
    for _ in 1..MAX_DECODE_ROUNDS {
        let Ok(next) = decode_once(&text) else {
            return false;
        };
        if next == text {
            return false;
        }
        if is_private(&normalize(&next).0) {
            return true;
        }
        text = next;
    }
    false
}

/// One round of percent-decoding, refusing malformed escapes, non-UTF-8
/// results and control characters.
fn decode_once(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !ok {
                return Err(PathError::BadEscape);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let decoded = percent_decode(bytes)
        .decode_utf8()
        .map_err(|_| PathError::NotUtf8)?;
    if decoded.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    Ok(decoded.into_owned())
}

/// Splits on `/` and `\`, drops empty and `.` segments, resolves `..`
/// (never above the root). Returns the segments and whether the path
/// ended in a separator.
fn normalize(decoded: &str) -> (Vec<String>, bool) {
    let mut out: Vec<String> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split(['/', '\\']) {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    let trailing = trailing && !out.is_empty();
    (out, trailing)
}

/// The canonical form of a segment for the private-route comparison:
/// lowercase, cut at `;` (path parameters some servers strip), without the
/// trailing dots and spaces some servers ignore.
fn canonical(segment: &str) -> String {
    let cut = segment.split(';').next().unwrap_or_default();
    cut.trim_end_matches(['.', ' ']).to_ascii_lowercase()
}

/// Whether normalized segments name a private challenge route.
fn is_private(segments: &[String]) -> bool {
    let Some(first) = segments.first() else {
        return false;
    };
    let first = canonical(first);
    if segments.len() == 1 && (first == "health" || first == "version") {
        return true;
    }
    if first == "internal" || first == "benchmark-executions" {
        return true;
    }
    if first == "benchmark" || first == "benchmarks" {
        let last = segments.last().map(|s| canonical(s)).unwrap_or_default();
        return EXECUTION_VERBS.contains(&last.as_str());
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Attack paths: each must be refused.
    const BLOCKED: &[&str] = &[
        "/health",
        "health",
        "/health/",
        "/HEALTH",
        "/Health",
        "//health",
        "/./health",
        "/a/../health",
        "/a/b/../../health",
        "/../health",
        "/../../../../health",
        "/%68ealth",
        "/%48EALTH",
        "/%2e/health",
        "/%2E%2E/health",
        "/a/%2e%2e/health",
        "/a%2f..%2fhealth",
        "/a%2F..%2Fhealth",
        "/a%5c..%5chealth",
        "/a\\..\\health",
        "\\health",
        "/%252e%252e/health",
        "/a/%252e%252e/health",
        "/a%252f..%252fhealth",
        "/%25252e%25252e/health",
        // Normalizing joins what decodes to `.` only afterwards (found by
        // the fixed-point property).
        "/health/%25/%2e%2e/%252e",
        "/health;jsessionid=1",
        "/health.",
        "/health%20",
        "/version",
        "/VERSION/",
        "/%76ersion",
        "/internal",
        "/internal/",
        "/internal/v1/get_weights",
        "/Internal/V1/Get_Weights",
        "/INTERNAL/v1/bridge/submissions",
        "//internal//v1//get_weights",
        "/x/../internal/v1/get_weights",
        "/%69nternal/v1/get_weights",
        "/internal%2fv1%2fget_weights",
        "/internal;x/v1",
        "/benchmark-executions",
        "/benchmark-executions/42",
        "/Benchmark-Executions/42/logs",
        "/benchmarks/run",
        "/benchmark/run",
        "/benchmarks/abc/execute",
        "/benchmark/x/y/launch",
        "/BENCHMARKS/x/RUN",
        "/benchmarks/x/run/",
        "/benchmarks%2fx%2frun",
        // Malformed or hostile encodings.
        "/%",
        "/%4",
        "/%zz",
        "/a%ff",
        "/%c0%ae%c0%ae/health",
        "/%00",
        "/a%0d%0aX-Injected:1",
        "/a%09b",
    ];

    /// Legitimate paths and what is forwarded for them.
    const ALLOWED: &[(&str, &str)] = &[
        ("", "/"),
        ("/", "/"),
        ("//", "/"),
        ("/tasks", "/tasks"),
        ("/tasks/", "/tasks/"),
        ("/v1/submissions/abc", "/v1/submissions/abc"),
        ("/a//b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/x/../b", "/a/b"),
        ("/healthz", "/healthz"),
        ("/health/details", "/health/details"),
        ("/api/health", "/api/health"),
        ("/versions", "/versions"),
        ("/internals", "/internals"),
        ("/benchmarks", "/benchmarks"),
        ("/benchmarks/42", "/benchmarks/42"),
        ("/benchmarks/run/results", "/benchmarks/run/results"),
        ("/tasks/run", "/tasks/run"),
        ("/a%20b", "/a%20b"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("/a%2fb", "/a/b"),
        ("/100%25", "/100%25"),
        ("/a:b@c", "/a:b@c"),
        ("/q%3Fx", "/q%3Fx"),
    ];

    #[test]
    fn attack_paths_are_refused() {
        for raw in BLOCKED {
            assert!(check(raw).is_err(), "{raw:?} was allowed: {:?}", check(raw));
        }
    }

    #[test]
    fn legitimate_paths_are_forwarded_canonically() {
        for (raw, expected) in ALLOWED {
            match check(raw) {
                Ok(p) => assert_eq!(p.encoded(), *expected, "{raw:?}"),
                Err(e) => panic!("{raw:?} refused: {e}"),
            }
        }
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(check("/%zz"), Err(PathError::BadEscape));
        assert_eq!(check("/%ff"), Err(PathError::NotUtf8));
        assert_eq!(check("/%00"), Err(PathError::ControlCharacter));
        assert_eq!(check("/health"), Err(PathError::Private));
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(check(&long), Err(PathError::TooLong));
        assert!(check(&"/a".repeat(MAX_PATH_BYTES / 2)).is_ok());
        // Under the limit as sent, over it once re-encoded (found by the
        // proxy_path fuzz target): each `é` is forwarded as `%C3%A9`.
        let raw = format!("/{}", "é".repeat(MAX_PATH_BYTES / 3));
        assert!(raw.len() <= MAX_PATH_BYTES);
        assert_eq!(check(&raw), Err(PathError::TooLong));
        let fits = format!("/{}", "é".repeat((MAX_PATH_BYTES - 1) / 6));
        assert!(check(&fits).unwrap().encoded().len() <= MAX_PATH_BYTES);
    }

    /// Path-ish strings: segments from a small alphabet that includes the
    /// private names, dots, separators and their encodings.
    fn pathish() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            Just("health".to_string()),
            Just("HeAlTh".to_string()),
            Just("version".to_string()),
            Just("internal".to_string()),
            Just("benchmarks".to_string()),
            Just("run".to_string()),
            Just("benchmark-executions".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2e%2e".to_string()),
            Just("%252e".to_string()),
            Just("%2f".to_string()),
            Just("%5c".to_string()),
            Just("\\".to_string()),
            Just("".to_string()),
            Just(";".to_string()),
            Just("%25".to_string()),
            "[a-z0-9_-]{1,6}",
        ];
        prop::collection::vec(atom, 0..8).prop_map(|v| format!("/{}", v.join("/")))
    }

    proptest! {
        /// Never panics, whatever the bytes.
        #[test]
        fn total_on_any_string(s in ".{0,300}") {
            if let Ok(p) = check(&s) {
                prop_assert_eq!(p.encoded_len(), p.encoded().len());
                prop_assert!(p.encoded().len() <= MAX_PATH_BYTES);
            }
        }

        /// What is forwarded is itself allowed and forwards to itself: the
        /// challenge sees exactly the path that was checked.
        #[test]
        fn forwarded_path_is_a_fixed_point(s in pathish()) {
            if let Ok(p) = check(&s) {
                let again = check(&p.encoded());
                prop_assert_eq!(again.as_ref(), Ok(&p), "{} -> {}", s, p.encoded());
            }
        }

        /// The forwarded path has no empty, `.` or `..` segment, no raw
        /// backslash and starts with `/`.
        #[test]
        fn forwarded_path_is_normal(s in pathish()) {
            if let Ok(p) = check(&s) {
                let e = p.encoded();
                prop_assert!(e.starts_with('/'));
                prop_assert!(!e.contains("//") && !e.contains('\\'), "{}", e);
                for seg in p.segments() {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                }
            }
        }

        /// Prefixing any path with `x/..` or a run of `/` changes nothing.
        #[test]
        fn dot_segments_and_slashes_do_not_matter(s in pathish(), n in 1usize..4) {
            let plain = check(&s);
            let dotted = check(&format!("/x/..{s}"));
            let slashed = check(&format!("{}{s}", "/".repeat(n)));
            prop_assert_eq!(plain.is_ok(), dotted.is_ok(), "{}", s);
            prop_assert_eq!(plain.is_ok(), slashed.is_ok(), "{}", s);
        }

        /// Every spelling of a private route is refused: any case, any
        /// amount of percent-encoding of its letters.
        #[test]
        fn private_routes_refused_in_any_spelling(
            name in prop::sample::select(vec!["health", "version", "internal/v1/get_weights", "benchmarks/x/run"]),
            upper in prop::collection::vec(any::<bool>(), 32),
            encode in prop::collection::vec(0u8..3, 32),
        ) {
            let mut s = String::from("/");
            for (i, c) in name.chars().enumerate() {
                let c = if upper[i % 32] { c.to_ascii_uppercase() } else { c };
                match encode[i % 32] {
                    0 => s.push(c),
                    1 => s.push_str(&format!("%{:02X}", c as u32)),
                    _ => s.push_str(&format!("%25{:02X}", c as u32)),
                }
            }
            prop_assert!(check(&s).is_err(), "{} allowed", s);
        }
    }
}
