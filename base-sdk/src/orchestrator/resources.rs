//! The one rule for a challenge record's `resources` map: which keys exist
//! and what their values mean.
//!
//! The registry calls [`parse_resources`] when a record is created or
//! updated (so a typo is a 422 naming the key, and nothing is stored), and
//! the Swarm spec mapping calls the same function to build the service's
//! limits. Keeping one function means the API can never accept a map the
//! orchestrator would then refuse after a 201.

use std::collections::BTreeMap;

/// The keys a record's `resources` may hold, in the order errors list them.
pub const RESOURCE_KEYS: &[&str] = &["cpus", "memory", "pids"];

/// Most cores a challenge may ask for: far above any real node, low enough
/// that the nano-CPU count cannot overflow.
const MAX_CPUS: f64 = 4096.0;

/// Why a `resources` map or a byte size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// A key outside [`RESOURCE_KEYS`].
    #[error("resources: unknown key '{key}' (known: cpus, memory, pids)")]
    UnknownKey {
        /// The key as given (escaped for display).
        key: String,
    },
    /// A known key with a value it cannot take.
    #[error("resources.{key}: '{value}' {reason}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value as given (escaped for display).
        value: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// A byte size that does not parse (`512m`, `4g`, `1024`, `2GiB` do).
    #[error("'{value}' is not a positive byte size (e.g. 512m, 4g, 2GiB, 1024)")]
    NotByteSize {
        /// The value as given (escaped for display).
        value: String,
    },
}

/// Limits parsed from a record's `resources`: absent keys are unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// CPU limit in nano-CPUs (1 core = 10⁹), as the engine takes it.
    pub nano_cpus: Option<i64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// Most processes/threads in the container.
    pub pids: Option<i64>,
}

impl ResourceLimits {
    /// Whether no limit is set (the service then carries no `Resources`).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Parses a byte size as Docker writes them: `512m`, `4g`, `1024`, `2GiB`
/// (binary multiples, as `docker run --memory` does). Zero, negative and
/// non-finite sizes are refused.
pub fn parse_byte_size(raw: &str) -> Result<i64, ResourceError> {
    let bad = || ResourceError::NotByteSize {
        value: raw.escape_debug().to_string(),
    };
    let s = raw.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bytes = value * mult;
    // `i64::MAX as f64` rounds up to 2^63, so `>=` keeps the cast exact.
    if !bytes.is_finite() || bytes < 1.0 || bytes >= i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as i64)
}

/// Parses a record's `resources` map. Known keys: `cpus` (cores, e.g.
/// `1.5`), `memory` (byte size, e.g. `512m`), `pids` (positive integer).
/// Any other key is refused, so an operator's typo is an error rather than
/// a silently unlimited service.
pub fn parse_resources(
    resources: &BTreeMap<String, String>,
) -> Result<ResourceLimits, ResourceError> {
    let mut limits = ResourceLimits::default();
    for (key, value) in resources {
        let shown = || value.escape_debug().to_string();
        match key.as_str() {
            "cpus" => {
                let bad = || ResourceError::BadValue {
                    key: "cpus",
                    value: shown(),
                    reason: "is not a positive number of cores (at most 4096)",
                };
                let cpus: f64 = value.trim().parse().map_err(|_| bad())?;
                let nano = (cpus * 1e9).round();
                // A fraction so small it rounds to 0 nano-CPUs would mean
                // "unlimited" to the engine: refused like 0 itself.
                if !cpus.is_finite() || cpus <= 0.0 || cpus > MAX_CPUS || nano < 1.0 {
                    return Err(bad());
                }
                limits.nano_cpus = Some(nano as i64);
            }
            "memory" => {
                let bytes = parse_byte_size(value).map_err(|_| ResourceError::BadValue {
                    key: "memory",
                    value: shown(),
                    reason: "is not a positive byte size (e.g. 512m, 4g, 2GiB)",
                })?;
                limits.memory_bytes = Some(bytes);
            }
            "pids" => {
                let pids: i64 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| ResourceError::BadValue {
                        key: "pids",
                        value: shown(),
                        reason: "is not a positive integer",
                    })?;
                limits.pids = Some(pids);
            }
            other => {
                return Err(ResourceError::UnknownKey {
                    key: other.escape_debug().to_string(),
                });
            }
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_byte_size("4g").unwrap(), 4 << 30);
        assert_eq!(parse_byte_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_byte_size("1024").unwrap(), 1024);
        assert_eq!(parse_byte_size("1.5k").unwrap(), 1536);
        for bad in [
            "",
            "m",
            "-1m",
            "0",
            "0.1",
            "1x",
            "1e3",
            "nan",
            "99999999999t",
        ] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn known_keys_parse_to_limits() {
        let l =
            parse_resources(&map(&[("cpus", "1.5"), ("memory", "512m"), ("pids", "64")])).unwrap();
        assert_eq!(
            l,
            ResourceLimits {
                nano_cpus: Some(1_500_000_000),
                memory_bytes: Some(512 << 20),
                pids: Some(64),
            }
        );
        assert!(parse_resources(&BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let e = parse_resources(&map(&[("gpu", "1")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "resources: unknown key 'gpu' (known: cpus, memory, pids)"
        );
        let e = parse_resources(&map(&[("memory", "lots")])).unwrap_err();
        assert!(e.to_string().starts_with("resources.memory: 'lots'"), "{e}");
        let e = parse_resources(&map(&[("cpus", "0")])).unwrap_err();
        assert!(e.to_string().starts_with("resources.cpus: '0'"), "{e}");
        let e = parse_resources(&map(&[("cpus", "1e-12")])).unwrap_err();
        assert!(e.to_string().starts_with("resources.cpus:"), "{e}");
        let e = parse_resources(&map(&[("pids", "0")])).unwrap_err();
        assert!(e.to_string().starts_with("resources.pids: '0'"), "{e}");
        // Control characters cannot forge lines in an error body or log.
        let e = parse_resources(&map(&[("cp\nus", "1")])).unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    proptest! {
        /// Any key outside the three known ones is refused, whatever the
        /// value; nothing unknown is ever silently dropped.
        #[test]
        fn unknown_keys_are_always_refused(key in "[a-z_]{1,12}", value in ".{0,12}") {
            prop_assume!(!RESOURCE_KEYS.contains(&key.as_str()));
            let refused = parse_resources(&map(&[("cpus", "1"), (&key, &value)]));
            prop_assert_eq!(refused, Err(ResourceError::UnknownKey { key: key.clone() }));
        }

        /// A positive whole number of MiB always parses to exactly that
        /// many bytes, in every spelling Docker accepts.
        #[test]
        fn mebibytes_round_trip(n in 1i64..1_000_000) {
            for unit in ["m", "M", "mb", "MiB", " m"] {
                prop_assert_eq!(parse_byte_size(&format!("{n}{unit}")), Ok(n << 20));
            }
        }

        /// cpus accepts exactly the positive finite values up to 4096 that
        /// do not round to zero nano-CPUs.
        #[test]
        fn cpus_domain(cpus in -10.0f64..5000.0) {
            let got = parse_resources(&map(&[("cpus", &cpus.to_string())]));
            let ok = cpus > 0.0 && cpus <= MAX_CPUS && (cpus * 1e9).round() >= 1.0;
            prop_assert_eq!(got.is_ok(), ok, "{}", cpus);
        }
    }
}
