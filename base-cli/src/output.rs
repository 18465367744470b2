//! How answers are shown: tables for people, pretty JSON for scripts.
//!
//! Every function returns the text instead of printing it, so the layout is
//! unit-tested and the caller decides where it goes. Cleartext tokens are
//! printed as plain lines, never inside a table: a table may wrap a long
//! cell on a narrow terminal, and a wrapped token cannot be copied.

use base_sdk::model::{AuditEntry, Challenge, EmissionPercent, PublicChallenge};
use chrono::{DateTime, SecondsFormat, Utc};
use comfy_table::{ContentArrangement, Table, presets};
use secrecy::ExposeSecret;

use crate::client::{Deleted, IssuedTokens, RegistryView, TokenHint};

/// Why output could not be produced or written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The JSON could not be rendered.
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Standard output could not be written.
    #[error("cannot write to standard output: {0}")]
    Write(#[from] std::io::Error),
}

/// Pretty JSON with a final newline.
pub fn json(v: &serde_json::Value) -> Result<String, OutputError> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !header.is_empty() {
        t.set_header(header.iter().copied());
    }
    t
}

fn with_newline(t: &Table) -> String {
    format!("{t}\n")
}

/// The emission share as the wire shows it (`40.0`, `12.5`).
pub fn emission(e: EmissionPercent) -> String {
    if e.0.fract() == 0.0 && e.0.abs() < 1e15 {
        format!("{:.1}", e.0)
    } else {
        e.0.to_string()
    }
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(", ")
    }
}

fn json_or_dash<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) if m.is_empty() => "-".to_string(),
        Ok(serde_json::Value::Null) => "-".to_string(),
        Ok(v) => v.to_string(),
        Err(_) => "(unprintable)".to_string(),
    }
}

/// `challenge list`: one row per challenge.
pub fn challenge_list(challenges: &[Challenge]) -> String {
    if challenges.is_empty() {
        return "no challenges registered\n".to_string();
    }
    let mut t = table(&["slug", "name", "status", "emission %", "version", "image"]);
    for c in challenges {
        t.add_row(vec![
            c.slug.to_string(),
            c.name.clone(),
            c.status.as_str().to_string(),
            emission(c.emission_percent),
            c.version.clone(),
            c.image.to_string(),
        ]);
    }
    with_newline(&t)
}

/// `challenge show` (and the record part of `register`): key/value rows.
///
/// Env values are not shown, only names: the platform treats them as
/// possibly secret (the audit log redacts them), and a terminal is a worse
/// place for them than `--json` piped where the operator chooses.
pub fn challenge_detail(c: &Challenge, tokens: &[TokenHint]) -> String {
    let mut t = table(&[]);
    let env_names: Vec<String> = c.env.keys().cloned().collect();
    let env = if env_names.is_empty() {
        "-".to_string()
    } else {
        format!("{} (values hidden; see --json)", env_names.join(", "))
    };
    let rows: Vec<(&str, String)> = vec![
        ("slug", c.slug.to_string()),
        ("name", c.name.clone()),
        (
            "description",
            if c.description.is_empty() {
                "-".to_string()
            } else {
                c.description.clone()
            },
        ),
        ("status", c.status.as_str().to_string()),
        ("emission %", emission(c.emission_percent)),
        ("version", c.version.clone()),
        ("image", c.image.to_string()),
        (
            "image digest",
            c.image_digest.clone().unwrap_or_else(|| "-".to_string()),
        ),
        ("api version", c.api_version.clone()),
        ("internal base url", c.internal_base_url.clone()),
        ("capabilities", list_or_dash(&c.required_capabilities)),
        ("env", env),
        ("secrets", list_or_dash(&c.secrets)),
        ("resources", json_or_dash(&c.resources)),
        ("volumes", json_or_dash(&c.volumes)),
        ("metadata", json_or_dash(&c.metadata)),
        ("broker policy", json_or_dash(&c.broker)),
        ("created", time(&c.created_at)),
        ("updated", time(&c.updated_at)),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    for tok in tokens {
        t.add_row(vec![
            format!("{} token", tok.kind.as_str()),
            format!("{} (issued {})", tok.hint, time(&tok.created_at)),
        ]);
    }
    with_newline(&t)
}

/// The cleartext tokens of a create or a rotation, with the warning that
/// this is the only time they can be seen.
pub fn issued_tokens(slug: &str, tokens: &IssuedTokens) -> String {
    let mut out = String::new();
    let lines: Vec<(&str, &str)> = [
        ("challenge token", tokens.challenge_token.as_ref()),
        ("docker broker token", tokens.docker_broker_token.as_ref()),
    ]
    .into_iter()
    .filter_map(|(label, t)| t.map(|t| (label, t.expose_secret())))
    .collect();
    if lines.is_empty() {
        out.push_str(&format!(
            "the master returned no tokens for '{slug}'; run `base challenge rotate-token {slug}` to issue new ones\n"
        ));
        return out;
    }
    out.push_str(&format!(
        "\nWARNING: the tokens of '{slug}' are shown ONCE and will not be shown again.\n\
         Store them now (for example as Docker secrets); if lost, rotate them with\n\
         `base challenge rotate-token {slug}`.\n\n"
    ));
    for (label, token) in lines {
        out.push_str(&format!("{label}: {token}\n"));
    }
    out
}

/// `registry`: the public view.
pub fn registry(view: &RegistryView) -> String {
    let header = format!(
        "network {} · api {} · master uid {}\n",
        view.network, view.api_version, view.master_uid
    );
    if view.challenges.is_empty() {
        return format!("{header}no public challenges (drafts are not listed)\n");
    }
    let mut t = table(&["slug", "name", "status", "emission %", "version", "image"]);
    for c in &view.challenges {
        t.add_row(public_row(c));
    }
    format!("{header}{t}\n")
}

fn public_row(c: &PublicChallenge) -> Vec<String> {
    vec![
        c.slug.clone(),
        c.name.clone(),
        c.status.as_str().to_string(),
        emission(c.emission_percent),
        c.version.clone(),
        c.image.clone(),
    ]
}

/// `audit`: newest first.
pub fn audit(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no audit entries\n".to_string();
    }
    let mut t = table(&["id", "at", "actor", "action", "slug", "detail"]);
    for e in entries {
        t.add_row(vec![
            e.id.to_string(),
            time(&e.at),
            e.actor.clone(),
            e.action.clone(),
            e.slug.clone().unwrap_or_else(|| "-".to_string()),
            json_or_dash(&e.detail),
        ]);
    }
    with_newline(&t)
}

/// After `activate` / `deactivate`.
pub fn status_changed(c: &Challenge) -> String {
    format!("challenge '{}' is now {}\n", c.slug, c.status.as_str())
}

/// After `update`: the new record.
pub fn updated(c: &Challenge) -> String {
    format!(
        "updated challenge '{}'\n{}",
        c.slug,
        challenge_detail(c, &[])
    )
}

/// After `delete`.
pub fn deleted(d: &Deleted) -> String {
    let volume = if d.volumes_retained {
        "its data volume is kept"
    } else {
        "its data volume is marked for removal"
    };
    format!(
        "deleted challenge '{}' and its tokens; {volume}\n",
        d.deleted
    )
}

// Tests may panic on anything unexpected: that is how they fail.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base_sdk::model::{BrokerPolicy, ChallengeStatus, Slug, TokenKind};
    use secrecy::SecretString;
    use std::collections::BTreeMap;

    fn sample() -> Challenge {
        let now = Utc::now();
        Challenge {
            slug: Slug::parse("quiz").unwrap(),
            name: "Quiz".into(),
            description: String::new(),
            image: "ghcr.io/x/quiz:1.0.0".parse().unwrap(),
            image_digest: None,
            version: "1.0.0".into(),
            emission_percent: EmissionPercent(40.0),
            status: ChallengeStatus::Active,
            api_version: "1.0".into(),
            internal_base_url: "http://challenge-quiz:8000".into(),
            required_capabilities: vec!["get_weights".into()],
            resources: BTreeMap::new(),
            volumes: BTreeMap::new(),
            env: BTreeMap::from([("API_KEY".into(), "very-secret-value".into())]),
            secrets: vec![],
            metadata: serde_json::Map::new(),
            broker: BrokerPolicy::default(),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn lists_show_the_operator_columns() {
        let out = challenge_list(&[sample()]);
        for needle in [
            "slug",
            "emission %",
            "quiz",
            "Quiz",
            "active",
            "40.0",
            "ghcr.io/x/quiz:1.0.0",
        ] {
            assert!(out.contains(needle), "{needle} missing:\n{out}");
        }
        assert_eq!(challenge_list(&[]), "no challenges registered\n");
    }

    #[test]
    fn details_show_hints_and_hide_env_values() {
        let hints = [TokenHint {
            kind: TokenKind::DockerBroker,
            hint: "abcd…wxyz".into(),
            created_at: Utc::now(),
        }];
        let out = challenge_detail(&sample(), &hints);
        assert!(out.contains("docker_broker token"), "{out}");
        assert!(out.contains("abcd…wxyz"), "{out}");
        assert!(out.contains("API_KEY"), "{out}");
        assert!(!out.contains("very-secret-value"), "{out}");
    }

    #[test]
    fn tokens_are_whole_lines_with_a_warning() {
        let tokens = IssuedTokens {
            challenge_token: Some(SecretString::from("c".repeat(43))),
            docker_broker_token: None,
        };
        let out = issued_tokens("quiz", &tokens);
        assert!(out.contains("will not be shown again"), "{out}");
        assert!(
            out.contains(&format!("challenge token: {}\n", "c".repeat(43))),
            "{out}"
        );
        assert!(!out.contains("docker broker token"), "{out}");
        let none = IssuedTokens {
            challenge_token: None,
            docker_broker_token: None,
        };
        assert!(issued_tokens("quiz", &none).contains("rotate-token quiz"));
    }

    #[test]
    fn emission_matches_the_wire_format() {
        assert_eq!(emission(EmissionPercent(40.0)), "40.0");
        assert_eq!(emission(EmissionPercent(12.5)), "12.5");
    }
}
