//! Challenge records: the rules of CONTRACTS.md §3.1 and the operations the
//! admin API and the CLI perform on them.
//!
//! The rules are pure functions ([`validate_new`], [`apply_patch`],
//! [`check_production`]); [`Registry`] is the thin service that runs them
//! and then writes through the [`Store`], so that a request that breaks a
//! rule never reaches the database.

pub mod image;
pub mod token;

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::Environment;
use crate::model::{
    AuditEntry, BrokerPolicy, Challenge, ChallengeStatus, EmissionPercent, Slug, TokenKind,
};
use crate::orchestrator::ChallengeSecrets;
use crate::store::{Backend, Store, StoreError};
use crate::vault::Vault;
use image::ImageRef;

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A field is malformed (answered 422).
    #[error("{0}")]
    Invalid(String),
    /// The request is well-formed but breaks policy (answered 400).
    #[error("{0}")]
    Policy(String),
    /// No such challenge (404).
    #[error("Challenge '{0}' not found")]
    NotFound(String),
    /// The slug is taken (409).
    #[error("Challenge '{0}' already exists")]
    AlreadyExists(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// A token the master must present cannot be recovered (no sealing
    /// key configured when it was issued, or a different key now).
    #[error("token '{kind}' of challenge '{slug}' cannot be revealed: {reason}")]
    Sealed {
        /// Challenge.
        slug: String,
        /// Token kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Capabilities required of a challenge when the record names none.
pub fn default_capabilities() -> Vec<String> {
    vec!["get_weights".into(), "proxy_routes".into()]
}

/// The body of `POST /v1/admin/challenges`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChallenge {
    /// Identifier (lowercased).
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Challenge version.
    pub version: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Relative emission share (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emission_percent: Option<EmissionPercent>,
    /// Initial status (default draft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ChallengeStatus>,
    /// Contract version (default "1.0").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Where the master reaches it (default `http://challenge-<slug>:8000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_base_url: Option<String>,
    /// Capabilities required for readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_capabilities: Option<Vec<String>>,
    /// Service resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BTreeMap<String, String>>,
    /// Extra volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, String>>,
    /// Service environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Operator secret names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Broker limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerPolicy>,
}

/// The body of `PATCH /v1/admin/challenges/{slug}`: every field optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengePatch {
    /// Accepted only when equal to the current slug (slugs are immutable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// New image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// New version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// New emission share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emission_percent: Option<EmissionPercent>,
    /// New status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ChallengeStatus>,
    /// New contract version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// New internal URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_base_url: Option<String>,
    /// New required capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_capabilities: Option<Vec<String>>,
    /// New resources (replaces the map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BTreeMap<String, String>>,
    /// New volumes (replaces the map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, String>>,
    /// New environment (replaces the map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// New secret names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<String>>,
    /// New metadata (replaces the object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// New broker limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerPolicy>,
}

/// What the rules depend on besides the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Development, staging or production.
    pub environment: Environment,
    /// The control-plane database engine.
    pub backend: Backend,
}

impl Policy {
    /// Whether production rules apply.
    pub fn strict(&self) -> bool {
        self.environment.is_strict()
    }
}

fn required(field: &str, value: &str) -> Result<(), RegistryError> {
    if value.trim().is_empty() {
        return Err(RegistryError::Invalid(format!(
            "{field} is required and must not be empty"
        )));
    }
    Ok(())
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), RegistryError> {
    if value.chars().count() > max {
        return Err(RegistryError::Invalid(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(())
}

fn check_emission(e: EmissionPercent) -> Result<(), RegistryError> {
    if !e.0.is_finite() || e.0 < 0.0 {
        return Err(RegistryError::Invalid(format!(
            "emission_percent must be a finite number >= 0, got {}",
            e.0
        )));
    }
    Ok(())
}

fn check_url(raw: &str) -> Result<(), RegistryError> {
    match url::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(RegistryError::Invalid(format!(
            "internal_base_url '{raw}' must be an absolute http(s) URL"
        ))),
    }
}

fn check_env_names(env: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    for k in env.keys() {
        if !crate::model::is_env_name(k) {
            return Err(RegistryError::Invalid(format!(
                "env name '{k}' is not a valid variable name"
            )));
        }
        // CHALLENGE_* and BASE_* are set by the platform; letting a record
        // override them would let it point a challenge at the control plane.
        if crate::model::is_reserved_env(k) {
            return Err(RegistryError::Policy(format!(
                "env name '{k}' is reserved: BASE_* and CHALLENGE_* are set by the platform"
            )));
        }
    }
    Ok(())
}

/// `resources` by the same rule the orchestrator maps them with, so a
/// record that is stored can always be deployed (422 naming key and value).
fn check_resources(resources: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    crate::orchestrator::resources::parse_resources(resources)
        .map(|_| ())
        .map_err(|e| RegistryError::Invalid(e.to_string()))
}

/// Extra `volumes` are not mounted by any orchestrator yet: a record
/// asking for them is refused rather than stored and silently ignored
/// (the challenge's own `/data` volume needs no entry).
fn check_volumes(volumes: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    match volumes.keys().next() {
        None => Ok(()),
        Some(name) => Err(RegistryError::Invalid(format!(
            "volumes: '{}' cannot be honoured: extra volumes are not supported yet (each challenge gets its own /data volume)",
            name.escape_debug()
        ))),
    }
}

fn parse_image(raw: &str) -> Result<ImageRef, RegistryError> {
    ImageRef::parse(raw).map_err(|e| RegistryError::Invalid(e.to_string()))
}

/// Builds a record from a create request. Pure; `now` stamps both times.
pub fn validate_new(
    req: NewChallenge,
    policy: &Policy,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Challenge, RegistryError> {
    let slug = Slug::parse(&req.slug).map_err(|e| RegistryError::Invalid(e.to_string()))?;
    required("name", &req.name)?;
    check_len("name", &req.name, 200)?;
    required("version", &req.version)?;
    check_len("version", &req.version, 64)?;
    let image = parse_image(&req.image)?;
    let emission = req.emission_percent.unwrap_or_default();
    check_emission(emission)?;
    let internal_base_url = req
        .internal_base_url
        .unwrap_or_else(|| format!("http://challenge-{slug}:8000"));
    check_url(&internal_base_url)?;
    let env = req.env.unwrap_or_default();
    check_env_names(&env)?;
    let resources = req.resources.unwrap_or_default();
    check_resources(&resources)?;
    let volumes = req.volumes.unwrap_or_default();
    check_volumes(&volumes)?;
    let challenge = Challenge {
        image_digest: image.digest.clone(),
        slug,
        name: req.name.trim().to_string(),
        description: req.description.unwrap_or_default(),
        image,
        version: req.version.trim().to_string(),
        emission_percent: emission,
        status: req.status.unwrap_or_default(),
        api_version: req.api_version.unwrap_or_else(|| "1.0".into()),
        internal_base_url,
        required_capabilities: req
            .required_capabilities
            .unwrap_or_else(default_capabilities),
        resources,
        volumes,
        env,
        secrets: req.secrets.unwrap_or_default(),
        metadata: req.metadata.unwrap_or_default(),
        broker: req.broker.unwrap_or_default(),
        created_at: now,
        updated_at: now,
    };
    check_production(&challenge, policy)?;
    Ok(challenge)
}

/// Applies a partial update. Pure; the slug and `created_at` never change.
pub fn apply_patch(
    current: &Challenge,
    patch: ChallengePatch,
    policy: &Policy,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Challenge, RegistryError> {
    let mut c = current.clone();
    if let Some(s) = patch.slug
        && s.to_ascii_lowercase() != current.slug.as_str()
    {
        return Err(RegistryError::Policy(format!(
            "slug is immutable: cannot change '{}' to '{s}'",
            current.slug
        )));
    }
    if let Some(v) = patch.name {
        required("name", &v)?;
        check_len("name", &v, 200)?;
        c.name = v.trim().to_string();
    }
    if let Some(v) = patch.description {
        c.description = v;
    }
    if let Some(v) = patch.image {
        let image = parse_image(&v)?;
        c.image_digest = image.digest.clone();
        c.image = image;
    }
    if let Some(v) = patch.version {
        required("version", &v)?;
        check_len("version", &v, 64)?;
        c.version = v.trim().to_string();
    }
    if let Some(v) = patch.emission_percent {
        check_emission(v)?;
        c.emission_percent = v;
    }
    if let Some(v) = patch.status {
        c.status = v;
    }
    if let Some(v) = patch.api_version {
        required("api_version", &v)?;
        c.api_version = v;
    }
    if let Some(v) = patch.internal_base_url {
        check_url(&v)?;
        c.internal_base_url = v;
    }
    if let Some(v) = patch.required_capabilities {
        c.required_capabilities = v;
    }
    if let Some(v) = patch.resources {
        check_resources(&v)?;
        c.resources = v;
    }
    if let Some(v) = patch.volumes {
        check_volumes(&v)?;
        c.volumes = v;
    }
    if let Some(v) = patch.env {
        check_env_names(&v)?;
        c.env = v;
    }
    if let Some(v) = patch.secrets {
        c.secrets = v;
    }
    if let Some(v) = patch.metadata {
        c.metadata = v;
    }
    if let Some(v) = patch.broker {
        c.broker = v;
    }
    c.updated_at = now;
    check_production(&c, policy)?;
    Ok(c)
}

/// Production policy (CONTRACTS.md §3.1): PostgreSQL only; images pinned by
/// tag and sha256 digest with a SemVer or `latest` tag; broker allowlists
/// scoped to `registry.with.dot/namespace/`.
pub fn check_production(c: &Challenge, policy: &Policy) -> Result<(), RegistryError> {
    if !policy.strict() {
        return Ok(());
    }
    check_database(policy)?;
    check_pinned_image(&c.image)?;
    check_allowlist_scoped(&c.broker.allowed_images)?;
    Ok(())
}

/// In production the control-plane database must be PostgreSQL.
pub fn check_database(policy: &Policy) -> Result<(), RegistryError> {
    if policy.strict() && policy.backend != Backend::Postgres {
        return Err(RegistryError::Policy(format!(
            "the {} environment requires PostgreSQL as the control-plane database",
            policy.environment.as_str()
        )));
    }
    Ok(())
}

/// An image usable in production: a SemVer or `latest` tag plus a sha256 digest.
pub fn check_pinned_image(image: &ImageRef) -> Result<(), RegistryError> {
    let Some(tag) = image.tag.as_deref() else {
        return Err(RegistryError::Policy(format!(
            "image '{image}' needs a tag in production (a SemVer tag such as 1.2.3, or latest)"
        )));
    };
    if tag != "latest" && !is_semver_tag(tag) {
        return Err(RegistryError::Policy(format!(
            "image tag '{tag}' is not SemVer (1.2.3, v1.2.3, 1.2.3-rc.1) or latest"
        )));
    }
    if image.sha256().is_none() {
        return Err(RegistryError::Policy(format!(
            "image '{image}' needs a sha256 digest in production (…@sha256:<64 hex>)"
        )));
    }
    Ok(())
}

/// `[v]MAJOR.MINOR.PATCH[-pre][+build]`.
pub fn is_semver_tag(tag: &str) -> bool {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let core_end = t.find(['-', '+']).unwrap_or(t.len());
    let (core, rest) = t.split_at(core_end);
    let nums: Vec<&str> = core.split('.').collect();
    let num_ok = |n: &&str| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && (n.len() == 1 || !n.starts_with('0'))
    };
    let ident_ok = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    let rest_ok = if rest.is_empty() {
        true
    } else {
        let (pre, build) = match rest.split_once('+') {
            Some((p, b)) => (p, Some(b)),
            None => (rest, None),
        };
        let pre_ok = pre.is_empty() || pre.strip_prefix('-').is_some_and(ident_ok);
        pre_ok && build.is_none_or(ident_ok)
    };
    nums.len() == 3 && nums.iter().all(num_ok) && rest_ok
}

/// Broker allowlist prefixes must name a registry host with a dot and at
/// least one namespace, ending in `/` (so `ghcr.io/` or `ghcr.io/org` cannot
/// admit every image on a registry or `ghcr.io/orgevil/`).
pub fn check_allowlist_scoped(prefixes: &[String]) -> Result<(), RegistryError> {
    for p in prefixes {
        let parts: Vec<&str> = p.split('/').collect();
        let scoped = p.ends_with('/')
            && parts.len() >= 3
            && parts[0].contains('.')
            && parts[..parts.len() - 1].iter().all(|s| !s.is_empty());
        if !scoped {
            return Err(RegistryError::Policy(format!(
                "broker image allowlist entry '{p}' must be scoped as registry.host/namespace/"
            )));
        }
    }
    Ok(())
}

/// Cleartext tokens returned once, when a challenge is created or rotated.
#[derive(Serialize)]
pub struct IssuedTokens {
    /// The challenge token, if issued.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_secret")]
    pub challenge_token: Option<SecretString>,
    /// The broker token, if issued.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_secret")]
    pub docker_broker_token: Option<SecretString>,
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuedTokens([REDACTED])")
    }
}

// Serializing is the one deliberate exposure: the create/rotate response.
fn ser_secret<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    match v {
        Some(t) => s.serialize_str(t.expose_secret()),
        None => s.serialize_none(),
    }
}

/// The registry service: rules first, then one atomic store write.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    policy: Policy,
    vault: Option<Arc<Vault>>,
}

impl Registry {
    /// A registry over `store` in `environment`.
    pub fn new(store: Arc<dyn Store>, environment: Environment) -> Self {
        let policy = Policy {
            environment,
            backend: store.backend(),
        };
        Self {
            store,
            policy,
            vault: None,
        }
    }

    /// Seals issued tokens under `vault` so the master can present them
    /// later (see [`crate::vault`]).
    pub fn with_vault(mut self, vault: Arc<Vault>) -> Self {
        self.vault = Some(vault);
        self
    }

    fn issue(&self, slug: &Slug, kind: TokenKind) -> Result<token::IssuedToken, RegistryError> {
        let mut t = token::issue(slug, kind);
        if let Some(v) = &self.vault {
            use secrecy::ExposeSecret;
            // A sealing failure fails the write: storing no (or an empty)
            // sealed value would leave a token the master cannot present.
            let sealed = v
                .seal(t.cleartext.expose_secret(), &seal_context(slug, kind))
                .map_err(|e| RegistryError::Sealed {
                    slug: slug.to_string(),
                    kind: kind.as_str(),
                    reason: e.to_string(),
                })?;
            t.record.sealed = Some(sealed);
        }
        Ok(t)
    }

    /// The cleartext tokens of a challenge, for the master's own use
    /// (calling `get_weights`, handing secrets to the orchestrator).
    pub async fn reveal(&self, slug: &Slug) -> Result<ChallengeSecrets, RegistryError> {
        let records = self.store.tokens(slug).await?;
        let open = |kind: TokenKind| -> Result<SecretString, RegistryError> {
            let sealed_err = |reason: &str| RegistryError::Sealed {
                slug: slug.to_string(),
                kind: kind.as_str(),
                reason: reason.to_string(),
            };
            let rec = records
                .iter()
                .find(|r| r.kind == kind)
                .ok_or_else(|| sealed_err("no such token"))?;
            let sealed = rec
                .sealed
                .as_deref()
                .ok_or_else(|| sealed_err("it was issued without a sealing key; rotate it"))?;
            let vault = self
                .vault
                .as_ref()
                .ok_or_else(|| sealed_err("no sealing key configured (BASE_SECRET_KEY)"))?;
            vault
                .open(sealed, &seal_context(slug, kind))
                .map_err(|e| sealed_err(&e.to_string()))
        };
        Ok(ChallengeSecrets {
            challenge_token: open(TokenKind::Challenge)?,
            broker_token: open(TokenKind::DockerBroker)?,
        })
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Creates a challenge and issues both tokens.
    pub async fn create(
        &self,
        req: NewChallenge,
        actor: &str,
    ) -> Result<(Challenge, IssuedTokens), RegistryError> {
        let challenge = validate_new(req, &self.policy, crate::model::now())?;
        let issued: Vec<token::IssuedToken> = TokenKind::ALL
            .iter()
            .map(|k| self.issue(&challenge.slug, *k))
            .collect::<Result<_, _>>()?;
        let records: Vec<_> = issued.iter().map(|t| t.record.clone()).collect();
        let audit = AuditEntry::new(
            actor,
            "challenge.create",
            Some(&challenge.slug),
            serde_json::json!({
                "image": challenge.image.to_string(),
                "version": challenge.version,
                "status": challenge.status,
                "emission_percent": challenge.emission_percent,
            }),
        );
        match self
            .store
            .create_challenge(&challenge, &records, &audit)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(RegistryError::AlreadyExists(challenge.slug.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
        let mut it = issued.into_iter();
        let tokens = IssuedTokens {
            challenge_token: it.next().map(|t| t.cleartext),
            docker_broker_token: it.next().map(|t| t.cleartext),
        };
        Ok((challenge, tokens))
    }

    /// One challenge, or `NotFound`.
    pub async fn get(&self, slug: &str) -> Result<Challenge, RegistryError> {
        let parsed = Slug::parse(slug).map_err(|_| RegistryError::NotFound(slug.to_string()))?;
        self.store
            .get_challenge(&parsed)
            .await?
            .ok_or_else(|| RegistryError::NotFound(slug.to_string()))
    }

    /// Opens every sealed token with the configured key, so a master whose
    /// `BASE_SECRET_KEY` differs from the one the tokens were sealed with
    /// refuses to start instead of failing every epoch and every bridge
    /// call. Returns how many tokens opened; tokens issued without a key
    /// are skipped (they say so when revealed).
    pub async fn check_sealing(&self) -> Result<usize, RegistryError> {
        let Some(vault) = &self.vault else {
            return Ok(0);
        };
        let mut opened = 0;
        for c in self.list().await? {
            for rec in self.store.tokens(&c.slug).await? {
                let Some(sealed) = rec.sealed.as_deref() else {
                    continue;
                };
                vault
                    .open(sealed, &seal_context(&c.slug, rec.kind))
                    .map_err(|_| RegistryError::Sealed {
                        slug: c.slug.to_string(),
                        kind: rec.kind.as_str(),
                        reason: "it does not open with the configured BASE_SECRET_KEY (BASE_SECRET_KEY_FILE): \
                                 the key is not the one the stored tokens were sealed with"
                            .to_string(),
                    })?;
                opened += 1;
            }
        }
        Ok(opened)
    }

    /// Every challenge, by slug.
    pub async fn list(&self) -> Result<Vec<Challenge>, RegistryError> {
        Ok(self.store.list_challenges().await?)
    }

    /// Every non-draft challenge, by slug: what `/v1/registry` shows.
    pub async fn public(&self) -> Result<Vec<Challenge>, RegistryError> {
        let mut all = self.list().await?;
        all.retain(|c| c.status != ChallengeStatus::Draft);
        Ok(all)
    }

    /// Applies a partial update.
    pub async fn update(
        &self,
        slug: &str,
        patch: ChallengePatch,
        actor: &str,
    ) -> Result<Challenge, RegistryError> {
        let current = self.get(slug).await?;
        let detail = serde_json::to_value(&patch)
            .map(redact_patch)
            .unwrap_or(serde_json::Value::Null);
        let next = apply_patch(&current, patch, &self.policy, crate::model::now())?;
        let audit = AuditEntry::new(actor, "challenge.update", Some(&next.slug), detail);
        self.write(&next, &audit).await?;
        Ok(next)
    }

    /// Sets the status (activate, deactivate, disable).
    pub async fn set_status(
        &self,
        slug: &str,
        status: ChallengeStatus,
        actor: &str,
    ) -> Result<Challenge, RegistryError> {
        let mut c = self.get(slug).await?;
        let from = c.status;
        c.status = status;
        c.updated_at = crate::model::now();
        check_production(&c, &self.policy)?;
        let audit = AuditEntry::new(
            actor,
            "challenge.set_status",
            Some(&c.slug),
            serde_json::json!({"from": from, "to": status}),
        );
        self.write(&c, &audit).await?;
        Ok(c)
    }

    /// Deletes a challenge record and its tokens. Whether its data volume is
    /// kept is recorded in the audit entry for the orchestrator to honour.
    pub async fn delete(
        &self,
        slug: &str,
        purge_volumes: bool,
        actor: &str,
    ) -> Result<Challenge, RegistryError> {
        let c = self.get(slug).await?;
        let audit = AuditEntry::new(
            actor,
            "challenge.delete",
            Some(&c.slug),
            serde_json::json!({"purge_volumes": purge_volumes}),
        );
        match self.store.delete_challenge(&c.slug, &audit).await {
            Ok(()) => Ok(c),
            Err(StoreError::NotFound(_)) => Err(RegistryError::NotFound(slug.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Issues new tokens of the given kinds; the old ones stop working at once.
    pub async fn rotate(
        &self,
        slug: &str,
        kinds: &[TokenKind],
        actor: &str,
    ) -> Result<IssuedTokens, RegistryError> {
        let c = self.get(slug).await?;
        let issued: Vec<token::IssuedToken> = kinds
            .iter()
            .map(|k| self.issue(&c.slug, *k))
            .collect::<Result<_, _>>()?;
        let records: Vec<_> = issued.iter().map(|t| t.record.clone()).collect();
        let audit = AuditEntry::new(
            actor,
            "challenge.rotate_tokens",
            Some(&c.slug),
            serde_json::json!({
                "kinds": kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                "hints": records.iter().map(|r| r.hint.clone()).collect::<Vec<_>>(),
            }),
        );
        self.store
            .replace_tokens(&records, &audit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => RegistryError::NotFound(slug.to_string()),
                other => other.into(),
            })?;
        let mut out = IssuedTokens {
            challenge_token: None,
            docker_broker_token: None,
        };
        for t in issued {
            match t.record.kind {
                TokenKind::Challenge => out.challenge_token = Some(t.cleartext),
                TokenKind::DockerBroker => out.docker_broker_token = Some(t.cleartext),
            }
        }
        Ok(out)
    }

    async fn write(&self, c: &Challenge, audit: &AuditEntry) -> Result<(), RegistryError> {
        self.store
            .update_challenge(c, audit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => RegistryError::NotFound(c.slug.to_string()),
                other => other.into(),
            })
    }
}

fn seal_context(slug: &Slug, kind: TokenKind) -> String {
    format!("{slug}/{}", kind.as_str())
}

/// Env values may be secrets: the audit log keeps their names only.
fn redact_patch(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(env) = v.get_mut("env").and_then(|e| e.as_object_mut()) {
        for val in env.values_mut() {
            *val = serde_json::Value::String("[REDACTED]".into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn dev() -> Policy {
        Policy {
            environment: Environment::Development,
            backend: Backend::Sqlite,
        }
    }

    fn prod() -> Policy {
        Policy {
            environment: Environment::Production,
            backend: Backend::Postgres,
        }
    }

    fn req(slug: &str, image: &str) -> NewChallenge {
        NewChallenge {
            slug: slug.into(),
            name: "Term".into(),
            image: image.into(),
            version: "1.0.0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_in() {
        let c = validate_new(
            req("Term-Bench", "ghcr.io/x/y:1"),
            &dev(),
            crate::model::now(),
        )
        .unwrap();
        assert_eq!(c.slug.as_str(), "term-bench");
        assert_eq!(c.internal_base_url, "http://challenge-term-bench:8000");
        assert_eq!(c.required_capabilities, default_capabilities());
        assert_eq!(c.status, ChallengeStatus::Draft);
        assert_eq!(c.api_version, "1.0");
        assert_eq!(c.emission_percent, EmissionPercent(0.0));
    }

    #[test]
    fn bad_fields_are_invalid() {
        let now = crate::model::now();
        assert!(matches!(
            validate_new(req("-x", "a/b:1"), &dev(), now),
            Err(RegistryError::Invalid(_))
        ));
        let mut r = req("ab", "a/b:1");
        r.emission_percent = Some(EmissionPercent(-1.0));
        assert!(
            matches!(validate_new(r, &dev(), now), Err(RegistryError::Invalid(m)) if m.contains("emission_percent"))
        );
        let mut r = req("ab", "a/b:1");
        r.name = " ".into();
        assert!(
            matches!(validate_new(r, &dev(), now), Err(RegistryError::Invalid(m)) if m.contains("name"))
        );
        assert!(matches!(
            validate_new(req("ab", "Bad Image"), &dev(), now),
            Err(RegistryError::Invalid(_))
        ));
        let mut r = req("ab", "a/b:1");
        r.env = Some(BTreeMap::from([("BASE_DATABASE_URL".into(), "x".into())]));
        assert!(matches!(
            validate_new(r, &dev(), now),
            Err(RegistryError::Policy(_))
        ));
    }

    #[test]
    fn production_policy() {
        let now = crate::model::now();
        let pinned = format!("ghcr.io/x/y:1.2.3@{DIGEST}");
        assert!(validate_new(req("ab", &pinned), &prod(), now).is_ok());
        assert!(
            validate_new(
                req("ab", &format!("ghcr.io/x/y:latest@{DIGEST}")),
                &prod(),
                now
            )
            .is_ok()
        );
        for bad in [
            "ghcr.io/x/y:1.2.3",
            "ghcr.io/x/y",
            "ghcr.io/x/y:main@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let e = validate_new(req("ab", bad), &prod(), now).unwrap_err();
            assert!(matches!(e, RegistryError::Policy(_)), "{bad}: {e:?}");
        }
        let sqlite_prod = Policy {
            backend: Backend::Sqlite,
            ..prod()
        };
        assert!(
            matches!(validate_new(req("ab", &pinned), &sqlite_prod, now), Err(RegistryError::Policy(m)) if m.contains("PostgreSQL"))
        );
        let mut r = req("ab", &pinned);
        r.broker = Some(BrokerPolicy {
            allowed_images: vec!["ghcr.io/".into()],
            ..Default::default()
        });
        assert!(matches!(
            validate_new(r, &prod(), now),
            Err(RegistryError::Policy(_))
        ));
        // Development accepts what production refuses.
        assert!(validate_new(req("ab", "busybox"), &dev(), now).is_ok());
    }

    #[test]
    fn patch_keeps_slug() {
        let now = crate::model::now();
        let c = validate_new(req("ab", "a/b:1"), &dev(), now).unwrap();
        let p = ChallengePatch {
            slug: Some("other".into()),
            ..Default::default()
        };
        assert!(
            matches!(apply_patch(&c, p, &dev(), now), Err(RegistryError::Policy(m)) if m.contains("immutable"))
        );
        let p = ChallengePatch {
            slug: Some("AB".into()),
            name: Some("New".into()),
            ..Default::default()
        };
        let n = apply_patch(&c, p, &dev(), now).unwrap();
        assert_eq!((n.slug.as_str(), n.name.as_str()), ("ab", "New"));
        assert_eq!(n.created_at, c.created_at);
    }

    #[test]
    fn resources_are_checked_on_create_and_on_patch() {
        let now = crate::model::now();
        let mut r = req("ab", "a/b:1");
        r.resources = Some(BTreeMap::from([("gpus".into(), "1".into())]));
        assert!(
            matches!(validate_new(r, &dev(), now), Err(RegistryError::Invalid(m)) if m.contains("unknown key 'gpus'"))
        );
        let mut r = req("ab", "a/b:1");
        r.resources = Some(BTreeMap::from([("memory".into(), "lots".into())]));
        assert!(
            matches!(validate_new(r, &dev(), now), Err(RegistryError::Invalid(m)) if m.contains("resources.memory: 'lots'"))
        );
        let mut r = req("ab", "a/b:1");
        let good = BTreeMap::from([("cpus".into(), "0.5".into()), ("pids".into(), "64".into())]);
        r.resources = Some(good.clone());
        let c = validate_new(r, &dev(), now).unwrap();
        assert_eq!(c.resources, good);
        let p = ChallengePatch {
            resources: Some(BTreeMap::from([("cpus".into(), "-1".into())])),
            ..Default::default()
        };
        assert!(
            matches!(apply_patch(&c, p, &dev(), now), Err(RegistryError::Invalid(m)) if m.contains("resources.cpus: '-1'"))
        );
    }

    #[test]
    fn volumes_are_refused_not_ignored() {
        let now = crate::model::now();
        let mut r = req("ab", "a/b:1");
        r.volumes = Some(BTreeMap::from([("cache".into(), "/cache".into())]));
        assert!(
            matches!(validate_new(r, &dev(), now), Err(RegistryError::Invalid(m)) if m.contains("volumes: 'cache'"))
        );
        let c = validate_new(req("ab", "a/b:1"), &dev(), now).unwrap();
        let p = ChallengePatch {
            volumes: Some(BTreeMap::from([("x".into(), "/x".into())])),
            ..Default::default()
        };
        assert!(
            matches!(apply_patch(&c, p, &dev(), now), Err(RegistryError::Invalid(m)) if m.contains("volumes: 'x'"))
        );
        let p = ChallengePatch {
            volumes: Some(BTreeMap::new()),
            ..Default::default()
        };
        assert!(apply_patch(&c, p, &dev(), now).unwrap().volumes.is_empty());
    }

    #[test]
    fn semver_tags() {
        for ok in [
            "1.2.3",
            "v0.0.1",
            "1.2.3-rc.1",
            "1.2.3+build.5",
            "10.20.30-alpha+x",
        ] {
            assert!(is_semver_tag(ok), "{ok}");
        }
        for bad in ["1.2", "01.2.3", "1.2.3-", "main", "1.2.3.4", "v", "1.2.3+"] {
            assert!(!is_semver_tag(bad), "{bad}");
        }
    }

    #[test]
    fn allowlist_scope() {
        assert!(check_allowlist_scoped(&["ghcr.io/platformnetwork/".into()]).is_ok());
        for bad in [
            "ghcr.io/",
            "ghcr.io/org",
            "localhost/x/",
            "ghcr.io//",
            "/x/",
        ] {
            assert!(check_allowlist_scoped(&[bad.into()]).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn emission_never_negative(e in -1e9f64..1e9) {
            let mut r = req("ab", "a/b:1");
            r.emission_percent = Some(EmissionPercent(e));
            let out = validate_new(r, &dev(), crate::model::now());
            prop_assert_eq!(out.is_ok(), e >= 0.0);
        }
    }
}
