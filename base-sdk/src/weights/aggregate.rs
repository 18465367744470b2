//! Pure aggregation of challenge weights (CONTRACTS.md §5): the one rule
//! that turns every challenge's raw scores into the subnet's weight vector.
//!
//! It lives apart from collection (HTTP, retries, timers) and submission
//! (the chain) so that the rule deciding emissions is a plain function of
//! its inputs: no I/O, no clock, no randomness, and a result that does not
//! depend on the order in which challenges answered. That is what lets it be
//! tested bit for bit and benchmarked on its own.
//!
//! # Algorithm (CONTRACTS.md §5, steps 1–5)
//!
//! 1. Per challenge, drop non-finite and `≤ 0` scores and normalise the
//!    rest to sum 1 (`n_{c,h}`).
//! 2. Over the challenges that answered, `e = max(emission, 0)` and
//!    `share = e / Σe` (all zero if `Σe ≤ 0`).
//! 3. `S_h = Σ_c share_c · n_{c,h}`.
//! 4. Map hotkeys to uids with the metagraph, drop unknown hotkeys and
//!    uid 0, sum per uid.
//! 5. Normalise over uids; if nothing is left, use the burn vector.
//!
//! # Decisions the contract leaves open
//!
//! * **A challenge that answered with nothing usable** (an empty map, or
//!   only NaN/infinite/`≤ 0` scores) is treated exactly like a failed one:
//!   it is left out of the share denominator, so its emission is
//!   redistributed to the challenges that did score someone (as a failed
//!   challenge's is in test vector 3). The final uid vector would be the
//!   same either way, because step 5 renormalises; the choice only keeps
//!   [`Aggregated::hotkey_weights`] a distribution (it sums to 1 whenever it
//!   is not empty) instead of silently shrinking it.
//! * **Emissions** that are negative, NaN or infinite count as 0. `+∞` has
//!   no meaningful share (`∞/∞`), so it is rejected rather than guessed at.
//! * **Determinism.** Contributions are put in a canonical order (slug, then
//!   emission, then the scores themselves) before anything is summed, and
//!   every sum is a left fold in that order, so shuffling the input slice
//!   gives a bit-for-bit identical result, duplicate slugs included.
//!   Duplicate slugs are two separate challenges; nothing is merged.
//! * **Overflow.** Sums of huge (finite) values can overflow to `∞`; every
//!   normalisation then rescales by the largest value first, so a challenge
//!   scoring `{a: f64::MAX, b: f64::MAX}` still gives `{a: .5, b: .5}`.
//!   Scores that underflow to 0 on the way end up with no weight.
//! * **Burn vector.** uid 0 gets 1.0. If `min_allowed_weights > 1`, the
//!   vector is padded with the lowest other uids (1, 2, …) at weight 0.0 up
//!   to `min_allowed_weights` entries (capped at the 65,536 uids a subnet
//!   can have). The normal vector is *not* padded: the contract only asks
//!   for it on the fallback.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;

/// One challenge's input to an epoch, as plain strings: the convenient form
/// for callers that already hold maps (tests, one-off tools). The epoch
/// itself builds a [`Ballot`] directly, interning hotkeys as it collects.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// The challenge's slug. Contributions are summed in slug order, which
    /// is what makes the result independent of the input order.
    pub slug: String,
    /// The challenge's relative emission share. Only ratios matter (they
    /// need not add up to 100); negative, NaN and infinite values count
    /// as 0.
    pub emission_percent: f64,
    /// The raw scores the challenge served, by hotkey (ss58), or `None` when
    /// the challenge failed this epoch. Non-finite and `≤ 0` scores are
    /// ignored; the rest are normalised, so only ratios matter here too.
    pub weights: Option<BTreeMap<String, f64>>,
}

/// The metagraph as aggregation needs it: hotkey (ss58 string) → uid.
pub type UidMap = HashMap<String, u16>;

/// The uid that receives the whole emission when nobody else can (the
/// subnet owner's burn uid); it never receives weight otherwise.
pub const BURN_UID: u16 = 0;

/// One epoch's contributions with every hotkey interned to a dense integer
/// id, which is what [`aggregate_ballot`] works on.
///
/// Why: an epoch sees the same few thousand hotkeys from every challenge.
/// Summing scores keyed by 262,144 separate heap strings (64 challenges ×
/// 4,096 hotkeys) is bound by memory latency, whatever the map; keyed by
/// ids it is a pass over flat arrays. Interning happens once per score as
/// the epoch collects the challenges' answers, and the hotkey strings are
/// kept once per epoch instead of once per challenge (docs/benchmarks.md
/// has both costs).
///
/// The ids are an internal detail: they depend on the order challenges were
/// added, so nothing that reaches the result depends on them (scores are
/// kept in hotkey order and every sum runs in a canonical order).
#[derive(Debug, Clone, Default)]
pub struct Ballot {
    /// hotkey → id.
    ids: FxHashMap<Box<str>, u32>,
    /// id → hotkey.
    names: Vec<Box<str>>,
    /// The challenges, in the order they were added.
    entries: Vec<Entry>,
}

/// One challenge in a [`Ballot`].
#[derive(Debug, Clone)]
struct Entry {
    slug: String,
    emission_percent: f64,
    /// `(hotkey id, raw score)`, strictly ascending by hotkey *name* (not id),
    /// one entry per hotkey; `None` for a failed challenge.
    scores: Option<Vec<(u32, f64)>>,
}

impl Ballot {
    /// An empty ballot (no challenges, which aggregates to the burn vector).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of challenges added.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no challenge was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The number of distinct hotkeys seen across all challenges.
    #[must_use]
    pub fn hotkeys(&self) -> usize {
        self.names.len()
    }

    /// Adds a challenge that failed this epoch: its emission is shared among
    /// the ones that answered.
    pub fn add_failed(&mut self, slug: impl Into<String>, emission_percent: f64) {
        self.entries.push(Entry {
            slug: slug.into(),
            emission_percent,
            scores: None,
        });
    }

    /// Adds a challenge's answer. Hotkeys may come in any order; when one
    /// appears twice the last score wins, as when a JSON object with a
    /// repeated key is read into a map.
    pub fn add<K: AsRef<str>>(
        &mut self,
        slug: impl Into<String>,
        emission_percent: f64,
        scores: impl IntoIterator<Item = (K, f64)>,
    ) {
        let mut pairs: Vec<(K, f64)> = scores.into_iter().collect();
        // A map's iterator (the usual caller) is already strictly ascending:
        // then there is nothing to sort or deduplicate.
        if !pairs.windows(2).all(|w| w[0].0.as_ref() < w[1].0.as_ref()) {
            // Stable, so among equal hotkeys the last one added stays last.
            pairs.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
            let mut deduped: Vec<(K, f64)> = Vec::with_capacity(pairs.len());
            for pair in pairs {
                match deduped.last_mut() {
                    Some(last) if last.0.as_ref() == pair.0.as_ref() => *last = pair,
                    _ => deduped.push(pair),
                }
            }
            pairs = deduped;
        }
        let scores = pairs
            .iter()
            .map(|(hotkey, value)| (self.intern(hotkey.as_ref()), *value))
            .collect();
        self.entries.push(Entry {
            slug: slug.into(),
            emission_percent,
            scores: Some(scores),
        });
    }

    /// The id of `hotkey`, assigning the next one if it is new.
    fn intern(&mut self, hotkey: &str) -> u32 {
        if let Some(id) = self.ids.get(hotkey) {
            return *id;
        }
        // More than 4 billion distinct hotkeys cannot fit in memory as
        // strings first, so the conversion cannot fail in practice; if it
        // ever did, saturating would merge hotkeys, so say so loudly.
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(hotkey.into());
        self.ids.insert(hotkey.into(), id);
        id
    }

    /// The hotkey behind an id this ballot assigned.
    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |name| name)
    }
}

impl<'a> FromIterator<&'a Contribution> for Ballot {
    fn from_iter<I: IntoIterator<Item = &'a Contribution>>(iter: I) -> Self {
        let mut ballot = Ballot::new();
        for contribution in iter {
            match &contribution.weights {
                Some(weights) => ballot.add(
                    contribution.slug.as_str(),
                    contribution.emission_percent,
                    weights
                        .iter()
                        .map(|(hotkey, value)| (hotkey.as_str(), *value)),
                ),
                None => {
                    ballot.add_failed(contribution.slug.as_str(), contribution.emission_percent);
                }
            }
        }
        ballot
    }
}

/// The result of one epoch's aggregation.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregated {
    /// The uids to set weights on, strictly ascending.
    pub uids: Vec<u16>,
    /// The weight of each uid in [`Aggregated::uids`] (same length), finite,
    /// `≥ 0` and summing to 1.
    pub weights: Vec<f64>,
    /// `S_h` (step 3), before the uid mapping: unknown hotkeys and hotkeys on
    /// uid 0 are still here. Only hotkeys with `S_h > 0` are kept. Filled in
    /// even when the burn vector is used (e.g. if every scored hotkey is
    /// unknown to the metagraph), so the reason for the fallback is visible.
    pub hotkey_weights: BTreeMap<String, f64>,
    /// `true` when nothing was left after step 4 and the burn vector was
    /// used instead.
    pub fallback: bool,
}

/// Aggregates contributions given as string maps: interns them into a
/// [`Ballot`] and calls [`aggregate_ballot`]. Same result, bit for bit.
///
/// `uids` is the metagraph (hotkey → uid); `min_allowed_weights` is the
/// chain's minimum vector length, used only to pad the burn vector.
#[must_use]
pub fn aggregate(
    contributions: &[Contribution],
    uids: &UidMap,
    min_allowed_weights: usize,
) -> Aggregated {
    aggregate_ballot(&contributions.iter().collect(), uids, min_allowed_weights)
}

/// Aggregates one epoch's challenge weights into a chain-ready vector,
/// exactly as CONTRACTS.md §5 specifies (see the module docs for the
/// decisions the contract leaves open).
///
/// `uids` is the metagraph (hotkey → uid); `min_allowed_weights` is the
/// chain's minimum vector length, used only to pad the burn vector.
///
/// The function is pure and deterministic: the same challenges added to the
/// ballot in any order give a bit-for-bit identical result.
#[must_use]
pub fn aggregate_ballot(ballot: &Ballot, uids: &UidMap, min_allowed_weights: usize) -> Aggregated {
    // Canonical order first: every later sum is a left fold in this order.
    // An unstable sort is enough because the order is total: two entries
    // that compare equal are identical, so their relative order cannot
    // change any result.
    let mut ordered: Vec<&Entry> = ballot.entries.iter().collect();
    ordered.sort_unstable_by(|a, b| canonical_order(ballot, a, b));

    // Step 1: which challenges have anything to give, and how to normalise
    // each one. Scores are summed in hotkey order, never id order, so the
    // normaliser does not depend on how ids were assigned.
    let answers: Vec<Answer<'_>> = ordered
        .iter()
        .filter_map(|entry| {
            let scores = entry.scores.as_deref()?;
            // `None` also for an answered-but-empty challenge: it then drops
            // out of the share denominator, like a failed one (module docs).
            let normalizer =
                Normalizer::new(scores.iter().map(|(_, v)| *v).filter(|v| usable(*v)))?;
            Some(Answer {
                emission: emission_or_zero(entry.emission_percent),
                scores,
                normalizer,
            })
        })
        .collect();

    // Step 2: shares over the challenges that answered. `None` means
    // `Σe ≤ 0`: every share is zero.
    let shares = Normalizer::new(answers.iter().map(|a| a.emission).filter(|e| *e > 0.0));

    // Step 3: S_h, accumulated in a flat array indexed by hotkey id. Each
    // S_h is still summed in canonical challenge order (the outer loop), so
    // the result is the same, bit for bit, as summing per hotkey string.
    let mut totals = vec![0.0f64; ballot.names.len()];
    if let Some(shares) = shares {
        for answer in &answers {
            let share = shares.apply(answer.emission);
            // A zero share adds exactly 0.0 to every S_h: skip the work.
            if share <= 0.0 {
                continue;
            }
            let normalizer = answer.normalizer;
            for &(id, value) in answer.scores {
                if usable(value)
                    && let Some(total) = totals.get_mut(id as usize)
                {
                    *total += share * normalizer.apply(value);
                }
            }
        }
    }
    // S_h can underflow to 0 (a tiny share times a tiny score); such a
    // hotkey has no weight and is dropped like one that was never scored.
    let hotkey_weights: BTreeMap<String, f64> = totals
        .iter()
        .zip(0u32..)
        .filter(|(s, _)| **s > 0.0)
        .map(|(s, id)| (ballot.name(id).to_owned(), *s))
        .collect();

    // Step 4: hotkeys to uids. Hotkeys are visited in ascending order, so
    // each per-uid sum is deterministic too.
    let mut per_uid: BTreeMap<u16, f64> = BTreeMap::new();
    for (hotkey, s) in &hotkey_weights {
        match uids.get(hotkey) {
            Some(&uid) if uid != BURN_UID => *per_uid.entry(uid).or_insert(0.0) += *s,
            // Unknown hotkeys and the burn uid get nothing from step 4.
            _ => {}
        }
    }

    // Step 5: normalise over uids, or burn.
    match Normalizer::new(per_uid.values().copied()) {
        Some(normalizer) => Aggregated {
            uids: per_uid.keys().copied().collect(),
            weights: per_uid.values().map(|w| normalizer.apply(*w)).collect(),
            hotkey_weights,
            fallback: false,
        },
        None => burn_vector(min_allowed_weights, hotkey_weights),
    }
}

/// The chain-valid vector used when nothing is left after step 4: uid 0
/// gets 1.0, padded with uids 1, 2, … at 0.0 to `min_allowed_weights`
/// entries (at most one per possible uid).
fn burn_vector(min_allowed_weights: usize, hotkey_weights: BTreeMap<String, f64>) -> Aggregated {
    let len = min_allowed_weights.max(1);
    let uids: Vec<u16> = std::iter::once(BURN_UID)
        .chain((0..=u16::MAX).filter(|uid| *uid != BURN_UID))
        .take(len)
        .collect();
    let weights = std::iter::once(1.0)
        .chain(std::iter::repeat(0.0))
        .take(uids.len())
        .collect();
    Aggregated {
        uids,
        weights,
        hotkey_weights,
        fallback: true,
    }
}

/// A challenge that answered with at least one usable score.
struct Answer<'a> {
    /// `max(emission, 0)`, with NaN and infinities as 0.
    emission: f64,
    /// The raw scores, re-read (and re-filtered) in step 3.
    scores: &'a [(u32, f64)],
    /// How to turn a usable raw score into `n_{c,h}`.
    normalizer: Normalizer,
}

/// Whether a raw score takes part at all (step 1): finite and `> 0`.
fn usable(value: f64) -> bool {
    value.is_finite() && value > 0.0
}

/// An emission as step 2 uses it: usable values as they are, anything else
/// (negative, zero, NaN, infinite) as 0.
fn emission_or_zero(value: f64) -> f64 {
    if usable(value) { value } else { 0.0 }
}

/// Normalisation of a set of finite, positive values to sum 1, robust to the
/// sum overflowing.
#[derive(Debug, Clone, Copy)]
struct Normalizer {
    /// 1.0 normally (an exact no-op); the largest value when the plain sum
    /// overflowed, so that the rescaled values sum to something finite.
    divisor: f64,
    /// The sum of the values after dividing by `divisor`.
    total: f64,
}

impl Normalizer {
    /// Builds the normaliser for `values`, which must all be finite and
    /// `> 0`; `None` when there are none (nothing to normalise).
    ///
    /// The iterator is cloned to take a second pass only when the plain sum
    /// overflows, which keeps the common path at one pass and one division
    /// per value, and exact to the contract's formula.
    fn new(values: impl Iterator<Item = f64> + Clone) -> Option<Self> {
        let total = values.clone().fold(0.0, |sum, v| sum + v);
        if total.is_finite() && total > 0.0 {
            return Some(Self {
                divisor: 1.0,
                total,
            });
        }
        let max = values.clone().fold(0.0, f64::max);
        if !(max.is_finite() && max > 0.0) {
            return None;
        }
        // Each rescaled value is in (0, 1], so this sum is at most the
        // number of values: it cannot overflow, and it is ≥ 1.
        let total = values.fold(0.0, |sum, v| sum + v / max);
        Some(Self {
            divisor: max,
            total,
        })
    }

    /// `value`'s share of the total.
    fn apply(self, value: f64) -> f64 {
        (value / self.divisor) / self.total
    }
}

/// The canonical order of challenges: by slug, then emission, then scores
/// (hotkey names and values, never ids). It is total (floats compare with
/// `total_cmp`), so only identical challenges compare equal.
fn canonical_order(ballot: &Ballot, a: &Entry, b: &Entry) -> Ordering {
    a.slug
        .cmp(&b.slug)
        .then_with(|| a.emission_percent.total_cmp(&b.emission_percent))
        .then_with(|| match (&a.scores, &b.scores) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) => {
                for (&(ida, va), &(idb, vb)) in a.iter().zip(b) {
                    let order = ballot
                        .name(ida)
                        .cmp(ballot.name(idb))
                        .then_with(|| va.total_cmp(&vb));
                    if order != Ordering::Equal {
                        return order;
                    }
                }
                a.len().cmp(&b.len())
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a contribution from literal scores.
    fn contribution(slug: &str, emission: f64, weights: Option<&[(&str, f64)]>) -> Contribution {
        Contribution {
            slug: slug.to_owned(),
            emission_percent: emission,
            weights: weights.map(|w| w.iter().map(|(h, v)| ((*h).to_owned(), *v)).collect()),
        }
    }

    /// Builds a metagraph from literal pairs.
    fn metagraph(pairs: &[(&str, u16)]) -> UidMap {
        pairs.iter().map(|(h, u)| ((*h).to_owned(), *u)).collect()
    }

    /// Asserts two weight vectors are equal to 1e-12.
    fn assert_close(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12, "{actual:?} vs {expected:?}");
        }
    }

    // ---- CONTRACTS.md §5 test vectors -------------------------------------

    #[test]
    fn vector_1_two_challenges_overlapping_hotkey() {
        let input = [
            contribution("a", 60.0, Some(&[("a", 0.25), ("b", 0.75)])),
            contribution("b", 40.0, Some(&[("b", 1.0), ("c", 1.0)])),
        ];
        let out = aggregate(&input, &metagraph(&[("a", 1), ("b", 2), ("c", 3)]), 1);
        assert_eq!(out.uids, [1, 2, 3]);
        assert_close(&out.weights, &[0.15, 0.65, 0.20]);
        assert!(!out.fallback);
    }

    #[test]
    fn vector_2_unknown_hotkey_dropped() {
        let input = [
            contribution("a", 40.0, Some(&[("hk1", 1.0), ("missing", 3.0)])),
            contribution("b", 60.0, Some(&[("hk2", 2.0)])),
        ];
        let out = aggregate(&input, &metagraph(&[("hk1", 1), ("hk2", 2)]), 1);
        assert_eq!(out.uids, [1, 2]);
        assert_close(&out.weights, &[1.0 / 7.0, 6.0 / 7.0]);
        // S_h before the mapping still shows the unknown hotkey.
        assert_close(
            &out.hotkey_weights.values().copied().collect::<Vec<_>>(),
            &[0.1, 0.6, 0.3],
        );
        assert!(out.hotkey_weights.contains_key("missing"));
    }

    #[test]
    fn vector_3_failed_challenge_share_redistributed() {
        let input = [
            contribution("c30", 30.0, Some(&[("h30", 1.0)])),
            contribution("c15", 15.0, Some(&[("h15", 1.0)])),
            contribution("c5", 5.0, Some(&[("h5", 1.0)])),
            contribution("failed", 50.0, None),
        ];
        let out = aggregate(
            &input,
            &metagraph(&[("h30", 30), ("h15", 15), ("h5", 5)]),
            1,
        );
        assert_eq!(out.uids, [5, 15, 30]);
        assert_close(&out.weights, &[0.1, 0.3, 0.6]);
        // The failed challenge's 50% went to the others, not to S_h's sum.
        assert_close(&[out.hotkey_weights.values().sum::<f64>()], &[1.0]);
    }

    #[test]
    fn vector_4_no_challenges_burns() {
        for min_allowed_weights in [0, 1] {
            let out = aggregate(&[], &metagraph(&[("a", 1)]), min_allowed_weights);
            assert_eq!(out.uids, [0]);
            assert_eq!(out.weights, [1.0]);
            assert!(out.fallback);
            assert!(out.hotkey_weights.is_empty());
        }
    }

    // ---- edge cases --------------------------------------------------------

    #[test]
    fn non_finite_and_non_positive_scores_are_ignored() {
        let input = [contribution(
            "a",
            100.0,
            Some(&[
                ("good", 3.0),
                ("nan", f64::NAN),
                ("inf", f64::INFINITY),
                ("neginf", f64::NEG_INFINITY),
                ("neg", -5.0),
                ("zero", 0.0),
                ("also_good", 1.0),
            ]),
        )];
        let uids = metagraph(&[
            ("good", 1),
            ("nan", 2),
            ("inf", 3),
            ("neginf", 4),
            ("neg", 5),
            ("zero", 6),
            ("also_good", 7),
        ]);
        let out = aggregate(&input, &uids, 1);
        assert_eq!(out.uids, [1, 7]);
        assert_close(&out.weights, &[0.75, 0.25]);
        assert_eq!(
            out.hotkey_weights.keys().collect::<Vec<_>>(),
            ["also_good", "good"]
        );
    }

    #[test]
    fn unusable_emission_counts_as_zero() {
        let uids = metagraph(&[("a", 1), ("b", 2)]);
        for bad in [-10.0, 0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let input = [
                contribution("bad", bad, Some(&[("a", 1.0)])),
                contribution("good", 10.0, Some(&[("b", 1.0)])),
            ];
            let out = aggregate(&input, &uids, 1);
            assert_eq!(out.uids, [2], "emission {bad}");
            assert_eq!(out.weights, [1.0], "emission {bad}");
            assert!(!out.hotkey_weights.contains_key("a"), "emission {bad}");
        }
    }

    #[test]
    fn all_emissions_zero_burns() {
        let input = [
            contribution("a", 0.0, Some(&[("a", 1.0)])),
            contribution("b", -3.0, Some(&[("b", 1.0)])),
        ];
        let out = aggregate(&input, &metagraph(&[("a", 1), ("b", 2)]), 1);
        assert!(out.fallback);
        assert_eq!(out.uids, [0]);
        assert_eq!(out.weights, [1.0]);
        assert!(out.hotkey_weights.is_empty());
    }

    #[test]
    fn answered_but_empty_challenge_is_redistributed() {
        let uids = metagraph(&[("a", 1), ("b", 2)]);
        let with_empty = [
            contribution("a", 50.0, Some(&[("a", 1.0)])),
            contribution("b", 25.0, Some(&[("b", 1.0)])),
            contribution("empty", 25.0, Some(&[])),
            contribution("zeros", 25.0, Some(&[("a", 0.0), ("b", f64::NAN)])),
        ];
        let out = aggregate(&with_empty, &uids, 1);
        assert_eq!(out.uids, [1, 2]);
        assert_close(&out.weights, &[2.0 / 3.0, 1.0 / 3.0]);
        // S_h stays a distribution: the empty challenges' share is not lost.
        assert_close(
            &out.hotkey_weights.values().copied().collect::<Vec<_>>(),
            &[2.0 / 3.0, 1.0 / 3.0],
        );
        // Identical to those challenges failing outright.
        let failed = [
            with_empty[0].clone(),
            with_empty[1].clone(),
            contribution("empty", 25.0, None),
        ];
        assert_eq!(aggregate(&failed, &uids, 1), out);
    }

    #[test]
    fn every_challenge_failed_burns() {
        let input = [contribution("a", 50.0, None), contribution("b", 50.0, None)];
        let out = aggregate(&input, &metagraph(&[("a", 1)]), 1);
        assert!(out.fallback);
        assert_eq!((out.uids, out.weights), (vec![0], vec![1.0]));
    }

    #[test]
    fn hotkeys_on_uid_zero_are_dropped() {
        let input = [contribution(
            "a",
            1.0,
            Some(&[("owner", 9.0), ("miner", 1.0)]),
        )];
        let out = aggregate(&input, &metagraph(&[("owner", 0), ("miner", 4)]), 1);
        assert_eq!(out.uids, [4]);
        assert_eq!(out.weights, [1.0]);
        assert!(!out.fallback);
        // S_h still reports the owner's score, before the uid mapping.
        assert_close(
            &[out.hotkey_weights.get("owner").copied().unwrap_or(0.0)],
            &[0.9],
        );
    }

    #[test]
    fn only_uid_zero_and_unknown_hotkeys_burn_but_keep_hotkey_weights() {
        let input = [contribution(
            "a",
            1.0,
            Some(&[("owner", 1.0), ("stranger", 1.0)]),
        )];
        let out = aggregate(&input, &metagraph(&[("owner", 0)]), 1);
        assert!(out.fallback);
        assert_eq!((&out.uids[..], &out.weights[..]), (&[0][..], &[1.0][..]));
        assert_eq!(out.hotkey_weights.len(), 2);
    }

    #[test]
    fn two_hotkeys_on_one_uid_are_summed() {
        // A metagraph snapshot can briefly show two hotkeys on one uid.
        let input = [contribution(
            "a",
            1.0,
            Some(&[("old", 1.0), ("new", 2.0), ("other", 1.0)]),
        )];
        let out = aggregate(
            &input,
            &metagraph(&[("old", 3), ("new", 3), ("other", 2)]),
            1,
        );
        assert_eq!(out.uids, [2, 3]);
        assert_close(&out.weights, &[0.25, 0.75]);
    }

    #[test]
    fn burn_vector_is_padded_to_min_allowed_weights() {
        let out = aggregate(&[], &UidMap::new(), 4);
        assert!(out.fallback);
        assert_eq!(out.uids, [0, 1, 2, 3]);
        assert_eq!(out.weights, [1.0, 0.0, 0.0, 0.0]);
        // At most one entry per possible uid.
        let out = aggregate(&[], &UidMap::new(), 100_000);
        assert_eq!(out.uids.len(), 65_536);
        assert_eq!(out.uids.last(), Some(&u16::MAX));
        assert_eq!(out.weights.iter().sum::<f64>(), 1.0);
    }

    #[test]
    fn normal_vector_is_not_padded() {
        let input = [contribution("a", 1.0, Some(&[("a", 1.0)]))];
        let out = aggregate(&input, &metagraph(&[("a", 7)]), 4);
        assert_eq!((out.uids, out.weights), (vec![7], vec![1.0]));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let input = [
            contribution("a", f64::MAX, Some(&[("a", f64::MAX), ("b", f64::MAX)])),
            contribution("b", f64::MAX, Some(&[("c", 1.0)])),
        ];
        let out = aggregate(&input, &metagraph(&[("a", 1), ("b", 2), ("c", 3)]), 1);
        assert_eq!(out.uids, [1, 2, 3]);
        assert_close(&out.weights, &[0.25, 0.25, 0.5]);
    }

    #[test]
    fn emissions_need_not_sum_to_100() {
        let a = [
            contribution("a", 3.0, Some(&[("a", 1.0)])),
            contribution("b", 1.0, Some(&[("b", 1.0)])),
        ];
        let out = aggregate(&a, &metagraph(&[("a", 1), ("b", 2)]), 1);
        assert_close(&out.weights, &[0.75, 0.25]);
    }

    #[test]
    fn input_order_does_not_matter_with_duplicate_slugs() {
        let uids = metagraph(&[("a", 1), ("b", 2), ("c", 3)]);
        let x = contribution("dup", 1.0, Some(&[("a", 0.1), ("b", 0.2)]));
        let y = contribution("dup", 1.0, Some(&[("a", 0.3), ("c", 0.7)]));
        let z = contribution("dup", 1.0, None);
        let forward = aggregate(&[x.clone(), y.clone(), z.clone()], &uids, 1);
        let backward = aggregate(&[z, y, x], &uids, 1);
        assert_eq!(forward, backward);
    }

    // ---- Ballot ------------------------------------------------------------

    #[test]
    fn ballot_takes_unsorted_scores_and_keeps_the_last_duplicate() {
        let uids = metagraph(&[("a", 1), ("b", 2)]);
        let mut ballot = Ballot::new();
        ballot.add("x", 1.0, [("b", 9.0), ("a", 1.0), ("b", 3.0)]);
        assert_eq!((ballot.len(), ballot.hotkeys()), (1, 2));
        let out = aggregate_ballot(&ballot, &uids, 1);
        let expected = aggregate(
            &[contribution("x", 1.0, Some(&[("a", 1.0), ("b", 3.0)]))],
            &uids,
            1,
        );
        assert_eq!(out, expected);
        assert_close(&out.weights, &[0.25, 0.75]);
    }

    #[test]
    fn ballot_ids_do_not_leak_into_the_result() {
        // The same challenges added in two orders assign different ids to
        // the same hotkeys; the result must not change by a single bit.
        let uids = metagraph(&[("a", 1), ("b", 2), ("c", 3)]);
        let mut first = Ballot::new();
        first.add("p", 2.0, [("a", 0.1), ("b", 0.2)]);
        first.add("q", 3.0, [("c", 0.3), ("b", 0.4)]);
        first.add_failed("r", 5.0);
        let mut second = Ballot::new();
        second.add_failed("r", 5.0);
        second.add("q", 3.0, [("c", 0.3), ("b", 0.4)]);
        second.add("p", 2.0, [("b", 0.2), ("a", 0.1)]);
        assert!(!first.is_empty());
        assert_eq!(
            aggregate_ballot(&first, &uids, 1),
            aggregate_ballot(&second, &uids, 1)
        );
    }

    #[test]
    fn empty_ballot_burns() {
        let out = aggregate_ballot(&Ballot::new(), &metagraph(&[("a", 1)]), 2);
        assert!(out.fallback);
        assert_eq!(out.uids, [0, 1]);
    }

    // ---- properties --------------------------------------------------------

    /// Raw values, weighted toward ordinary ones but with every kind of
    /// value step 1 and 2 must cope with.
    fn raw_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            8 => 0.0f64..100.0,
            1 => -100.0f64..0.0,
            1 => Just(0.0),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
            1 => Just(f64::MAX),
            1 => Just(f64::MIN_POSITIVE),
            1 => Just(5e-324),
        ]
    }

    /// Hotkeys from a small pool so that challenges overlap.
    fn hotkey() -> impl Strategy<Value = String> {
        (0u8..12).prop_map(|i| format!("hk{i}"))
    }

    fn contribution_strategy() -> impl Strategy<Value = Contribution> {
        (
            // A small slug pool, so duplicate slugs happen too.
            (0u8..4).prop_map(|i| format!("c{i}")),
            raw_value(),
            proptest::option::weighted(
                0.8,
                proptest::collection::btree_map(hotkey(), raw_value(), 0..8),
            ),
        )
            .prop_map(|(slug, emission_percent, weights)| Contribution {
                slug,
                emission_percent,
                weights,
            })
    }

    /// Contributions and a shuffled copy of them.
    fn contributions_and_shuffle() -> impl Strategy<Value = (Vec<Contribution>, Vec<Contribution>)>
    {
        proptest::collection::vec(contribution_strategy(), 0..7)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
    }

    /// A metagraph over part of the hotkey pool, uid 0 included.
    fn uid_map() -> impl Strategy<Value = UidMap> {
        proptest::collection::hash_map(hotkey(), 0u16..6, 0..12)
    }

    proptest! {
        #[test]
        fn output_is_a_valid_weight_vector(
            (input, _) in contributions_and_shuffle(),
            uids in uid_map(),
            min_allowed_weights in 0usize..5,
        ) {
            let out = aggregate(&input, &uids, min_allowed_weights);
            prop_assert_eq!(out.uids.len(), out.weights.len());
            prop_assert!(!out.uids.is_empty());
            let sum: f64 = out.weights.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-9, "sum {}", sum);
            prop_assert!(out.weights.iter().all(|w| w.is_finite() && *w >= 0.0));
            prop_assert!(out.uids.windows(2).all(|p| p[0] < p[1]));
            if out.fallback {
                prop_assert_eq!(out.uids[0], BURN_UID);
                prop_assert_eq!(out.weights[0], 1.0);
                prop_assert_eq!(out.uids.len(), min_allowed_weights.max(1));
            } else {
                prop_assert!(!out.uids.contains(&BURN_UID));
                prop_assert!(out.weights.iter().all(|w| *w > 0.0));
            }
            // S_h: finite, positive, and a distribution when not empty.
            prop_assert!(out.hotkey_weights.values().all(|s| s.is_finite() && *s > 0.0));
            if !out.hotkey_weights.is_empty() {
                let total: f64 = out.hotkey_weights.values().sum();
                prop_assert!((total - 1.0).abs() < 1e-9, "S_h sum {}", total);
            }
        }

        #[test]
        fn output_is_independent_of_contribution_order(
            (input, shuffled) in contributions_and_shuffle(),
            uids in uid_map(),
            min_allowed_weights in 0usize..5,
        ) {
            // Bit for bit, not merely close.
            prop_assert_eq!(
                aggregate(&input, &uids, min_allowed_weights),
                aggregate(&shuffled, &uids, min_allowed_weights)
            );
        }
    }
}
