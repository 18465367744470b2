//! How answers are shown: tables for people, pretty JSON for scripts.
//!
//! Every function returns the text instead of printing it, so the layout is
//! unit-tested and the caller decides where it goes. Cleartext tokens are
//! printed as plain lines, never inside a table: a table may wrap a long
//! cell on a narrow terminal, and a wrapped token cannot be copied.

use base_sdk::model::{AuditEntry, Challenge, EmissionPercent, PublicChallenge, WeightsSnapshot};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use comfy_table::{ContentArrangement, Table, presets};
use secrecy::ExposeSecret;

use crate::client::{Deleted, IssuedTokens, RegistryView, TokenHint};
use base_sdk::orchestrator::swarm::nodes::{
    Availability, NodeInfo, NodeRole, WORKLOAD_LABEL, Workload,
};

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

/// `challenge status`: desired against observed.
pub fn runtime_status(s: &crate::client::RuntimeStatus) -> String {
    let r = &s.runtime;
    let state = serde_json::to_value(r.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    for (k, v) in [
        ("slug", s.slug.clone()),
        ("desired", s.desired_status.as_str().to_string()),
        ("orchestrator", s.orchestrator.clone()),
        ("state", state),
        ("image", r.image.clone().unwrap_or_else(|| "-".into())),
        ("endpoint", r.endpoint.clone().unwrap_or_else(|| "-".into())),
        (
            "started",
            r.started_at.map_or_else(|| "-".into(), |t| t.to_rfc3339()),
        ),
        ("message", r.message.clone().unwrap_or_else(|| "-".into())),
        (
            "readiness",
            match &s.readiness {
                None => "-".into(),
                Some(base_sdk::orchestrator::readiness::Readiness::Ready) => "ready".into(),
                Some(base_sdk::orchestrator::readiness::Readiness::NotReady { reason }) => {
                    format!("not ready: {reason}")
                }
            },
        ),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    with_newline(&t)
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

/// A body printed exactly as received (`weights latest --json`), with a
/// final newline added if it has none.
pub fn verbatim(body: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(body).into_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The u16 values Bittensor puts in the extrinsic for `weights`, in the
/// same order: the largest weight becomes 65535 and every other one
/// `round(w / max_w * 65535)`, as `convert_weights_and_uids_for_emit` does.
/// Ties round to even, like Python's `round`, so the values match the
/// Python SDK exactly. Values that are not finite or ≤ 0 give 0, and so
/// does everything when no weight is positive (Bittensor would refuse or
/// send nothing in those cases).
pub fn to_u16_weights(weights: &[f64]) -> Vec<u16> {
    let max = weights
        .iter()
        .copied()
        .filter(|w| w.is_finite())
        .fold(0.0_f64, f64::max);
    weights
        .iter()
        .map(|&w| base_sdk::chain::commit::upscale_to_u16(w, max))
        .collect()
}

/// A duration as `1d 2h`, `3h 4m`, `5m 6s` or `7s` (sign ignored).
fn span(d: TimeDelta) -> String {
    let secs = d.num_seconds().unsigned_abs();
    let (days, hours, mins, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// `weights latest`: a header saying when the vector was computed and
/// whether it is still valid at `now`, the uid table (uid, weight with 6
/// decimals, the u16 Bittensor would set) sorted by uid, and the source
/// challenges.
///
/// There is no hotkey column: the body's `hotkey_weights` holds scores
/// *before* the uid mapping, including hotkeys the metagraph did not know
/// (dropped from the vector), and nothing in the body says which hotkey
/// has which uid. Any hotkey shown next to a uid would be a guess, so the
/// table shows only the count and points to `--json`.
pub fn weights_latest(s: &WeightsSnapshot, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let chain = if s.chain_endpoint.is_empty() {
        "-"
    } else {
        s.chain_endpoint.as_str()
    };
    out.push_str(&format!("netuid {} · chain {chain}\n", s.netuid));
    let age = if s.computed_at <= now {
        format!("{} ago", span(now - s.computed_at))
    } else {
        format!(
            "{} in the future: check the clocks",
            span(s.computed_at - now)
        )
    };
    out.push_str(&format!(
        "computed_at:          {} ({age})\n",
        time(&s.computed_at)
    ));
    let validity = if s.expires_at <= now {
        format!(
            "EXPIRED {} ago: submitters will not set it",
            span(now - s.expires_at)
        )
    } else {
        format!("valid for {}", span(s.expires_at - now))
    };
    out.push_str(&format!(
        "expires_at:           {} ({validity})\n",
        time(&s.expires_at)
    ));
    let metagraph = s
        .metagraph_updated_at
        .as_ref()
        .map_or_else(|| "- (not reported)".to_string(), time);
    out.push_str(&format!("metagraph_updated_at: {metagraph}\n"));

    out.push('\n');
    if s.uids.len() != s.weights.len() {
        out.push_str(&format!(
            "WARNING: {} uids but {} weights; submitters refuse such a vector, only the pairs are shown\n",
            s.uids.len(),
            s.weights.len()
        ));
    }
    let u16s = to_u16_weights(&s.weights);
    let mut rows: Vec<(u16, f64, u16)> = s
        .uids
        .iter()
        .zip(&s.weights)
        .zip(&u16s)
        .map(|((&uid, &w), &v)| (uid, w, v))
        .collect();
    rows.sort_by_key(|r| r.0);
    if rows.is_empty() {
        out.push_str("no uids in the vector\n");
    } else {
        let sum: f64 = rows.iter().map(|r| r.1).sum();
        out.push_str(&format!(
            "{} uids, weights sum to {sum:.6}; u16 = round(w / max_w * 65535), the value Bittensor sets\n",
            rows.len()
        ));
        let mut t = table(&["uid", "weight", "u16"]);
        for (uid, w, v) in &rows {
            t.add_row(vec![uid.to_string(), format!("{w:.6}"), v.to_string()]);
        }
        out.push_str(&with_newline(&t));
        if rows.iter().any(|r| r.2 == 0) {
            out.push_str("uids whose u16 is 0 are left out of the extrinsic by Bittensor\n");
        }
    }
    out.push_str(&format!(
        "hotkey_weights: {} entries, scores before the uid mapping; not shown per uid because the body does not say which hotkey has which uid (see --json)\n",
        s.hotkey_weights.len()
    ));

    out.push('\n');
    if s.source_challenges.is_empty() {
        out.push_str("no source challenges (no active challenge answered for this epoch)\n");
    } else {
        out.push_str("source challenges:\n");
        let mut t = table(&["challenge", "emission %", "ok", "error", "hotkeys"]);
        for c in &s.source_challenges {
            t.add_row(vec![
                c.slug.clone(),
                emission(c.emission_percent),
                if c.ok { "yes" } else { "no" }.to_string(),
                c.error.clone().unwrap_or_else(|| "-".to_string()),
                c.weights.len().to_string(),
            ]);
        }
        out.push_str(&with_newline(&t));
    }
    out
}

/// `base master worker label <NODE> --workload <W>`: the step after a
/// machine joined, with the workload chosen for it.
pub fn label_command(workload: Workload) -> String {
    format!("base master worker label <NODE> --workload {workload}")
}

/// `master worker token`: the join command for the new machine and the
/// label command for this manager. The join command holds the swarm join
/// token and is printed on a line of its own so it can be copied whole.
pub fn join_instructions(
    join_command: &str,
    manager_addr: &str,
    workload: Workload,
    rotated: bool,
) -> String {
    let daemon = match workload {
        Workload::Cpu => "daemon.cpu-worker.json",
        Workload::Gpu => "daemon.gpu-worker.json, with its GPU UUIDs filled in,",
    };
    let mut out = String::new();
    if rotated {
        out.push_str("rotated the worker join token: the previous one no longer admits anyone\n\n");
    }
    out.push_str(&format!(
        "1. On the new {workload} worker (with deploy/swarm/{daemon} installed as\n   \
         /etc/docker/daemon.json and dockerd restarted), run:\n\n    {join_command}\n\n"
    ));
    out.push_str(&format!(
        "2. Then, on this manager, label it (NODE: its hostname or id, see `base master worker list`):\n\n    {}\n\n",
        label_command(workload)
    ));
    let host = manager_addr
        .rsplit_once(':')
        .map_or(manager_addr, |(h, _)| h)
        .trim_matches(['[', ']']);
    if host == "localhost" || host.starts_with("127.") || host == "::1" {
        out.push_str(&format!(
            "WARNING: the swarm advertises {manager_addr}, a loopback address other machines cannot reach;\n\
             re-create the swarm with `docker swarm init --advertise-addr <this host's IP>`.\n\n"
        ));
    }
    out.push_str(
        "The token admits any machine that can reach the manager: keep it private, and\n\
         rotate it with `base master worker token --rotate` if it leaked.\n",
    );
    out
}

fn workload_cell(n: &NodeInfo) -> String {
    match (n.workload, n.labels.get(WORKLOAD_LABEL)) {
        (Some(w), _) => w.to_string(),
        (None, Some(raw)) => format!("{raw:?} (not cpu|gpu: no jobs)"),
        (None, None) => "-".to_string(),
    }
}

fn role_cell(n: &NodeInfo) -> String {
    if n.leader {
        format!("{} (leader)", n.role)
    } else {
        n.role.to_string()
    }
}

/// `master worker list`: one row per node.
pub fn worker_list(nodes: &[NodeInfo]) -> String {
    if nodes.is_empty() {
        return "no swarm nodes\n".to_string();
    }
    let mut t = table(&[
        "id",
        "hostname",
        "role",
        "availability",
        "state",
        "workload",
        "GPUs",
    ]);
    for n in nodes {
        t.add_row(vec![
            n.id.clone(),
            n.hostname.clone(),
            role_cell(n),
            n.availability.to_string(),
            n.state.to_string(),
            workload_cell(n),
            n.gpus.to_string(),
        ]);
    }
    let unlabelled = nodes
        .iter()
        .filter(|n| n.role == NodeRole::Worker && n.workload.is_none())
        .count();
    let mut out = with_newline(&t);
    if unlabelled > 0 {
        out.push_str(&format!(
            "{unlabelled} worker(s) without a cpu|gpu workload label take no BASE jobs: \
             `base master worker label <NODE> --workload cpu|gpu`\n"
        ));
    }
    out
}

/// `master worker inspect`: key/value rows.
pub fn worker_detail(n: &NodeInfo) -> String {
    let mut t = table(&[]);
    let labels = if n.labels.is_empty() {
        "-".to_string()
    } else {
        n.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows: Vec<(&str, String)> = vec![
        ("id", n.id.clone()),
        ("hostname", n.hostname.clone()),
        ("role", role_cell(n)),
        ("availability", n.availability.to_string()),
        ("state", n.state.to_string()),
        ("address", n.addr.clone().unwrap_or_else(|| "-".to_string())),
        ("workload", workload_cell(n)),
        ("GPUs (NVIDIA-GPU)", n.gpus.to_string()),
        (
            "engine",
            n.engine_version.clone().unwrap_or_else(|| "-".to_string()),
        ),
        ("labels", labels),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    with_newline(&t)
}

/// After `master worker label`, with a warning when a GPU node has no GPU
/// to offer.
pub fn workload_set(n: &NodeInfo) -> String {
    let mut out = format!(
        "node {} ({}) now takes {} jobs ({WORKLOAD_LABEL}={})\n",
        n.hostname,
        n.id,
        workload_cell(n),
        workload_cell(n)
    );
    if n.workload == Some(Workload::Gpu) && n.gpus == 0 {
        out.push_str(
            "WARNING: it advertises no NVIDIA-GPU resources, so no GPU job fits on it yet; \
             install deploy/swarm/daemon.gpu-worker.json with its GPU UUIDs (docs/workers.md)\n",
        );
    }
    out
}

/// After `master worker drain [--active]`.
pub fn availability_set(n: &NodeInfo) -> String {
    let what = match n.availability {
        Availability::Drain => "drained: no new tasks, and its running tasks move to other nodes",
        Availability::Active => "active: tasks may be placed on it",
        Availability::Pause => "paused: no new tasks, running ones stay",
    };
    format!("node {} ({}) is {what}\n", n.hostname, n.id)
}

// Tests may panic on anything unexpected: that is how they fail.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base_sdk::model::{BrokerPolicy, ChallengeStatus, Slug, TokenKind};

    #[test]
    fn runtime_status_shows_desired_and_observed() {
        let s: crate::client::RuntimeStatus = serde_json::from_value(serde_json::json!({
            "slug": "quiz", "desired_status": "active", "orchestrator": "swarm",
            "runtime": {"slug": "quiz", "state": "failed", "image": "base.local/q:1",
                        "endpoint": null, "message": "task: non-zero exit (137)", "started_at": null},
            "readiness": {"state": "not_ready", "reason": "/version says 0.9"}
        }))
        .unwrap();
        let text = runtime_status(&s);
        for want in [
            "not ready: /version says 0.9",
            "active",
            "swarm",
            "failed",
            "base.local/q:1",
            "non-zero exit (137)",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
    }
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
    fn u16_weights_upscale_the_max_to_65535() {
        // CONTRACTS.md §5's first test vector.
        assert_eq!(
            to_u16_weights(&[0.15, 0.65, 0.20]),
            vec![15123, 65535, 20165]
        );
        assert_eq!(to_u16_weights(&[1.0]), vec![65535]);
        assert_eq!(to_u16_weights(&[0.5, 0.5]), vec![65535, 65535]);
        // 65535 / 6 = 10922.5 exactly: Python's round gives the even 10922.
        assert_eq!(to_u16_weights(&[1.0 / 7.0, 6.0 / 7.0]), vec![10922, 65535]);
        assert!(to_u16_weights(&[]).is_empty());
    }

    #[test]
    fn u16_weights_round_ties_to_even_like_python() {
        // (w / 1.0) * 65535 is exactly 0.5, 1.5 and 2.5 here; Python's
        // round() gives 0, 2, 2 where round-half-away would give 1, 2, 3.
        let ws = [0.5 / 65535.0, 1.5 / 65535.0, 2.5 / 65535.0, 1.0];
        assert_eq!(to_u16_weights(&ws), vec![0, 2, 2, 65535]);
    }

    #[test]
    fn u16_weights_ignore_what_is_not_a_positive_number() {
        assert_eq!(
            to_u16_weights(&[f64::NAN, -1.0, 0.0, 0.25, f64::INFINITY, 0.5]),
            vec![0, 0, 0, 32768, 0, 65535]
        );
        assert_eq!(to_u16_weights(&[0.0, -2.0]), vec![0, 0]);
        assert_eq!(to_u16_weights(&[f64::NAN]), vec![0]);
    }

    fn snapshot(now: DateTime<Utc>) -> WeightsSnapshot {
        use base_sdk::model::SourceChallenge;
        WeightsSnapshot {
            netuid: 100,
            chain_endpoint: "ws://127.0.0.1:9944".into(),
            // Deliberately not ascending: the table sorts.
            uids: vec![3, 1, 2],
            weights: vec![0.2, 0.15, 0.65],
            hotkey_weights: BTreeMap::from([
                ("5Ha".into(), 0.15),
                ("5Hb".into(), 0.65),
                ("5Hc".into(), 0.2),
                ("5Hgone".into(), 0.1),
            ]),
            computed_at: now - TimeDelta::seconds(65),
            expires_at: now + TimeDelta::seconds(655),
            source_challenges: vec![
                SourceChallenge {
                    slug: "quiz-a".into(),
                    emission_percent: EmissionPercent(60.0),
                    weights: BTreeMap::from([("5Ha".into(), 0.25), ("5Hb".into(), 0.75)]),
                    ok: true,
                    error: None,
                },
                SourceChallenge {
                    slug: "quiz-b".into(),
                    emission_percent: EmissionPercent(12.5),
                    weights: BTreeMap::new(),
                    ok: false,
                    error: Some("timed out after 3 attempts".into()),
                },
            ],
            metagraph_updated_at: Some(now - TimeDelta::seconds(30)),
            status: Default::default(),
            last_epoch: None,
        }
    }

    /// The table row of `uid`, cells trimmed.
    fn row_of(out: &str, uid: &str) -> Vec<String> {
        out.lines()
            .map(|l| {
                l.trim_matches('│')
                    .split(['│', '┆'])
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .find(|cells| cells.first().map(String::as_str) == Some(uid))
            .unwrap_or_else(|| panic!("no row for uid {uid}:\n{out}"))
    }

    #[test]
    fn weights_show_the_header_and_uids_sorted_with_u16() {
        let now = Utc::now();
        let out = weights_latest(&snapshot(now), now);
        assert!(
            out.starts_with("netuid 100 · chain ws://127.0.0.1:9944\n"),
            "{out}"
        );
        assert!(out.contains("(1m 5s ago)"), "{out}");
        assert!(out.contains("(valid for 10m 55s)"), "{out}");
        assert!(!out.contains("EXPIRED"), "{out}");
        assert!(out.contains(&format!(
            "metagraph_updated_at: {}",
            time(&(now - TimeDelta::seconds(30)))
        )));
        assert!(out.contains("3 uids, weights sum to 1.000000"), "{out}");
        assert_eq!(row_of(&out, "1"), ["1", "0.150000", "15123"]);
        assert_eq!(row_of(&out, "2"), ["2", "0.650000", "65535"]);
        assert_eq!(row_of(&out, "3"), ["3", "0.200000", "20165"]);
        let order: Vec<usize> = ["│ 1 ", "│ 2 ", "│ 3 "]
            .iter()
            .map(|n| out.find(n).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "not sorted:\n{out}");
        assert!(out.contains("hotkey_weights: 4 entries"), "{out}");
        assert!(
            !out.contains("5Ha"),
            "no hotkey is attributed to a uid:\n{out}"
        );
        assert!(!out.contains("left out of the extrinsic"), "{out}");
    }

    #[test]
    fn weights_show_source_challenges_with_errors() {
        let now = Utc::now();
        let out = weights_latest(&snapshot(now), now);
        let sources = &out[out.find("source challenges:").unwrap()..];
        assert_eq!(
            row_of(sources, "quiz-a"),
            ["quiz-a", "60.0", "yes", "-", "2"]
        );
        let b = row_of(sources, "quiz-b");
        assert_eq!(b[..3], ["quiz-b", "12.5", "no"]);
        assert_eq!(b[4], "0");
        assert!(sources.contains("timed out"), "{sources}");
    }

    #[test]
    fn expired_and_odd_vectors_are_flagged() {
        let now = Utc::now();
        let mut s = snapshot(now);
        s.expires_at = now - TimeDelta::seconds(3 * 3600 + 120);
        s.metagraph_updated_at = None;
        s.weights.push(0.0);
        s.uids.push(7);
        s.weights[0] = 0.0;
        let out = weights_latest(&s, now);
        assert!(
            out.contains("(EXPIRED 3h 2m ago: submitters will not set it)"),
            "{out}"
        );
        assert!(
            out.contains("metagraph_updated_at: - (not reported)"),
            "{out}"
        );
        assert!(out.contains("left out of the extrinsic"), "{out}");
        assert_eq!(row_of(&out, "3"), ["3", "0.000000", "0"]);

        s.uids.pop();
        let out = weights_latest(&s, now);
        assert!(out.contains("WARNING: 3 uids but 4 weights"), "{out}");

        s.uids.clear();
        s.weights.clear();
        s.source_challenges.clear();
        let out = weights_latest(&s, now);
        assert!(out.contains("no uids in the vector"), "{out}");
        assert!(out.contains("no source challenges"), "{out}");
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(TimeDelta::seconds(7)), "7s");
        assert_eq!(span(TimeDelta::seconds(-306)), "5m 6s");
        assert_eq!(span(TimeDelta::seconds(3 * 3600 + 4 * 60 + 5)), "3h 4m");
        assert_eq!(span(TimeDelta::seconds(86_400 + 2 * 3600)), "1d 2h");
    }

    #[test]
    fn verbatim_keeps_the_bytes() {
        assert_eq!(verbatim(br#"{"b":1,"a":0.1}"#), "{\"b\":1,\"a\":0.1}\n");
        assert_eq!(verbatim(b"{}\n"), "{}\n");
    }

    #[test]
    fn emission_matches_the_wire_format() {
        assert_eq!(emission(EmissionPercent(40.0)), "40.0");
        assert_eq!(emission(EmissionPercent(12.5)), "12.5");
    }
    fn worker(hostname: &str, workload: Option<Workload>) -> NodeInfo {
        use base_sdk::orchestrator::swarm::nodes::NodeState;
        NodeInfo {
            id: format!("id-{hostname}"),
            hostname: hostname.into(),
            role: NodeRole::Worker,
            leader: false,
            availability: Availability::Active,
            state: NodeState::Ready,
            addr: Some("10.0.0.7".into()),
            workload,
            gpus: 0,
            engine_version: Some("27.3.1".into()),
            labels: workload
                .map(|w| BTreeMap::from([(WORKLOAD_LABEL.to_string(), w.to_string())]))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn worker_lists_show_labels_and_gpus() {
        let mut gpu = worker("gpu-1", Some(Workload::Gpu));
        gpu.gpus = 4;
        let mut mgr = worker("master", None);
        mgr.role = NodeRole::Manager;
        mgr.leader = true;
        let mut odd = worker("odd", None);
        odd.labels.insert(WORKLOAD_LABEL.into(), "tpu".into());
        let out = worker_list(&[mgr, gpu, odd, worker("cpu-1", Some(Workload::Cpu))]);
        assert_eq!(
            row_of(&out, "id-gpu-1"),
            ["id-gpu-1", "gpu-1", "worker", "active", "ready", "gpu", "4"]
        );
        assert_eq!(row_of(&out, "id-master")[2], "manager (leader)");
        assert_eq!(row_of(&out, "id-master")[5], "-");
        assert!(row_of(&out, "id-odd")[5].contains("tpu"), "{out}");
        assert_eq!(row_of(&out, "id-cpu-1")[5], "cpu");
        assert!(
            out.contains("1 worker(s) without a cpu|gpu workload label"),
            "the manager is not counted:\n{out}"
        );
        assert_eq!(worker_list(&[]), "no swarm nodes\n");
    }

    #[test]
    fn join_instructions_put_the_command_on_its_own_line() {
        let cmd = "docker swarm join --token SWMTKN-1-abc 10.0.0.1:2377";
        let out = join_instructions(cmd, "10.0.0.1:2377", Workload::Gpu, false);
        assert!(out.contains(&format!("\n    {cmd}\n")), "{out}");
        assert!(
            out.contains("\n    base master worker label <NODE> --workload gpu\n"),
            "{out}"
        );
        assert!(out.contains("daemon.gpu-worker.json"), "{out}");
        assert!(!out.contains("loopback"), "{out}");
        assert!(!out.contains("rotated"), "{out}");
        let out = join_instructions(cmd, "127.0.0.1:2377", Workload::Cpu, true);
        assert!(out.contains("loopback"), "{out}");
        assert!(out.starts_with("rotated"), "{out}");
        assert!(out.contains("--workload cpu"), "{out}");
        assert_eq!(
            label_command(Workload::Cpu),
            "base master worker label <NODE> --workload cpu"
        );
    }

    #[test]
    fn worker_details_and_confirmations() {
        let n = worker("gpu-1", Some(Workload::Gpu));
        let out = worker_detail(&n);
        assert_eq!(row_of(&out, "labels"), ["labels", "base.workload=gpu"]);
        assert_eq!(row_of(&out, "GPUs (NVIDIA-GPU)")[1], "0");
        let out = workload_set(&n);
        assert!(
            out.starts_with("node gpu-1 (id-gpu-1) now takes gpu jobs"),
            "{out}"
        );
        assert!(out.contains("advertises no NVIDIA-GPU"), "{out}");
        let mut drained = n;
        drained.availability = Availability::Drain;
        assert!(availability_set(&drained).contains("is drained"));
    }
}
