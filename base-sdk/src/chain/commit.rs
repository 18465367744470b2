//! The pure arithmetic of putting weights on-chain: float → u16 conversion,
//! commit salts, the commit-reveal v2 hash and the epoch/reveal-window and
//! rate-limit rules, each written to match Bittensor and subtensor exactly.

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use parity_scale_codec::Encode;
use rand::Rng;

/// Why a vector cannot be converted for the chain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommitError {
    /// `uids` and `weights` differ in length.
    #[error("uids and weights differ in length: {uids} uids, {weights} weights")]
    LengthMismatch {
        /// Number of uids.
        uids: usize,
        /// Number of weights.
        weights: usize,
    },
    /// A weight is negative, NaN or infinite.
    #[error("weight {index} for uid {uid} is {value}: weights must be finite and ≥ 0")]
    InvalidWeight {
        /// Position in the vector.
        index: usize,
        /// The uid it belongs to.
        uid: u16,
        /// The offending value.
        value: f64,
    },
    /// The same uid appears twice (subtensor rejects duplicates).
    #[error("uid {0} appears more than once")]
    DuplicateUid(u16),
}

/// The largest chain weight: the biggest weight of a vector is upscaled to it.
pub const U16_MAX: u16 = u16::MAX;

/// Length of a commit salt, as Bittensor's SDK uses (`salt_length = 8`).
pub const SALT_LEN: usize = 8;

/// Float weights → the `(uids, values)` pair a `set_weights` extrinsic
/// carries, exactly as Bittensor's `convert_weights_and_uids_for_emit`.
///
/// The rule (bittensor `utils/weight_utils.py`):
/// 1. reject negative weights and length mismatches (we also reject NaN,
///    infinities and duplicate uids, which the Python lets through to fail
///    on-chain);
/// 2. if the weights sum to 0, nothing is set: `([], [])`;
/// 3. max-upscale: `w / max(w)`, so the largest weight becomes 1.0;
/// 4. `round(w * 65535)` with Python's `round`, which rounds halves to
///    the even integer (`round(0.5) == 0`, `round(32767.5) == 32768`),
///    hence [`f64::round_ties_even`] here, computed in the same order in
///    `f64` so the two agree bit for bit;
/// 5. drop entries whose value rounds to 0, keeping the input order.
pub fn to_u16_weights(uids: &[u16], weights: &[f64]) -> Result<(Vec<u16>, Vec<u16>), CommitError> {
    if uids.len() != weights.len() {
        return Err(CommitError::LengthMismatch {
            uids: uids.len(),
            weights: weights.len(),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(uids.len());
    for (index, (&uid, &value)) in uids.iter().zip(weights).enumerate() {
        if !value.is_finite() || value < 0.0 {
            return Err(CommitError::InvalidWeight { index, uid, value });
        }
        if !seen.insert(uid) {
            return Err(CommitError::DuplicateUid(uid));
        }
    }
    let max = weights.iter().copied().fold(0.0_f64, f64::max);
    let sum: f64 = weights.iter().sum();
    if sum == 0.0 || max <= 0.0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut out_uids = Vec::with_capacity(uids.len());
    let mut out_values = Vec::with_capacity(uids.len());
    for (&uid, &w) in uids.iter().zip(weights) {
        let value = upscale_to_u16(w, max);
        if value != 0 {
            out_uids.push(uid);
            out_values.push(value);
        }
    }
    Ok((out_uids, out_values))
}

/// One weight as Bittensor sets it, given the vector's largest weight
/// `max` (> 0): `round(w / max * 65535)` with halves to even, computed in
/// the same order as the Python SDK so the two agree bit for bit. Weights
/// that are not finite or ≤ 0 give 0.
pub fn upscale_to_u16(w: f64, max: f64) -> u16 {
    if !w.is_finite() || w <= 0.0 || !max.is_finite() || max <= 0.0 {
        return 0;
    }
    let scaled = (w / max) * f64::from(U16_MAX);
    // `scaled` is in [0, 65535] when w ≤ max; the clamp keeps the cast
    // lossless for any other input.
    let rounded = scaled.round_ties_even().clamp(0.0, f64::from(U16_MAX));
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let value = rounded as u16;
    value
}

/// A fresh commit salt: [`SALT_LEN`] random bytes, each widened to `u16`,
/// like Bittensor's `list(os.urandom(8))` sent as `Vec<u16>`.
pub fn generate_salt<R: Rng + ?Sized>(rng: &mut R) -> Vec<u16> {
    (0..SALT_LEN)
        .map(|_| u16::from(rng.r#gen::<u8>()))
        .collect()
}

/// The commit-reveal v2 hash, as subtensor's `do_reveal_weights` recomputes
/// it: `BlakeTwo256::hash_of(&(who, netuid, uids, values, salt, version_key))`,
/// i.e. blake2b-256 of the SCALE encoding of the tuple (32-byte account id,
/// `u16`, `Vec<u16>` ×3, `u64`). `netuid` is the `NetUid(u16)` newtype on
/// newer runtimes, which encodes the same.
pub fn commit_hash(
    account: &[u8; 32],
    netuid: u16,
    uids: &[u16],
    values: &[u16],
    salt: &[u16],
    version_key: u64,
) -> [u8; 32] {
    let encoded = (account, netuid, uids, values, salt, version_key).encode();
    let digest = Blake2b::<U32>::digest(&encoded);
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    out
}

/// Subtensor's `get_epoch_index`: `(block + netuid + 1) / (tempo + 1)`.
pub fn epoch_index(netuid: u16, tempo: u16, block: u64) -> u64 {
    let tempo_plus_one = u64::from(tempo).saturating_add(1);
    block.saturating_add(u64::from(netuid).saturating_add(1)) / tempo_plus_one
}

/// Subtensor's `get_reveal_blocks`: the inclusive block range in which a
/// commit made at `commit_block` may be revealed — the whole epoch
/// `commit_epoch + reveal_period`.
pub fn reveal_window(netuid: u16, tempo: u16, reveal_period: u64, commit_block: u64) -> (u64, u64) {
    let tempo_plus_one = u64::from(tempo).saturating_add(1);
    let reveal_epoch = epoch_index(netuid, tempo, commit_block).saturating_add(reveal_period);
    let first = reveal_epoch
        .saturating_mul(tempo_plus_one)
        .saturating_sub(u64::from(netuid).saturating_add(1));
    (first, first.saturating_add(u64::from(tempo)))
}

/// Subtensor's `is_commit_expired`: past its reveal epoch, a commit can no
/// longer be revealed.
pub fn commit_expired(
    netuid: u16,
    tempo: u16,
    reveal_period: u64,
    commit_block: u64,
    current_block: u64,
) -> bool {
    epoch_index(netuid, tempo, current_block)
        > epoch_index(netuid, tempo, commit_block).saturating_add(reveal_period)
}

/// Subtensor's `check_rate_limit`: the blocks still to wait before the
/// uid that last updated at `last_update` may set (or commit) again; 0
/// means now. A `last_update` of 0 is the storage default: never set.
pub fn rate_limit_wait(last_update: u64, current_block: u64, rate_limit: u64) -> u64 {
    if last_update == 0 {
        return 0;
    }
    let elapsed = current_block.saturating_sub(last_update);
    rate_limit.saturating_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn contract_vectors_convert_like_python() {
        // Expected values printed by the Python rule in the doc comment
        // (`round(float(w) / max * 65535)`, zeros dropped).
        let (u, v) = to_u16_weights(&[1, 2, 3], &[0.15, 0.65, 0.20]).unwrap();
        assert_eq!((u, v), (vec![1, 2, 3], vec![15123, 65535, 20165]));
        let (u, v) = to_u16_weights(&[1, 2], &[1.0 / 7.0, 6.0 / 7.0]).unwrap();
        assert_eq!((u, v), (vec![1, 2], vec![10922, 65535]));
        let (u, v) = to_u16_weights(&[5, 15, 30], &[0.1, 0.3, 0.6]).unwrap();
        assert_eq!((u, v), (vec![5, 15, 30], vec![10923, 32768, 65535]));
        let (u, v) = to_u16_weights(&[0], &[1.0]).unwrap();
        assert_eq!((u, v), (vec![0], vec![65535]));
    }

    #[test]
    fn halves_round_to_even_and_zeros_are_dropped() {
        // 0.5 * 65535 = 32767.5 → 32768 (even); 1/131070 * 65535 = 0.5 → 0
        // (dropped); 3/131070 * 65535 = 1.5 → 2.
        let (u, v) = to_u16_weights(&[0, 1, 2, 3], &[1.0, 0.5, 1e-6, 0.0]).unwrap();
        assert_eq!((u, v), (vec![0, 1], vec![65535, 32768]));
        let (u, v) = to_u16_weights(&[0, 1, 2], &[1.0, 1.0 / 131_070.0, 3.0 / 131_070.0]).unwrap();
        assert_eq!((u, v), (vec![0, 2], vec![65535, 2]));
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(
            to_u16_weights(&[1, 2], &[1.0]),
            Err(CommitError::LengthMismatch {
                uids: 2,
                weights: 1
            })
        );
        let e = to_u16_weights(&[1, 2], &[1.0, -0.1]).unwrap_err();
        assert!(e.to_string().contains("uid 2"), "{e}");
        assert!(matches!(
            to_u16_weights(&[1], &[f64::NAN]),
            Err(CommitError::InvalidWeight { .. })
        ));
        assert_eq!(
            to_u16_weights(&[1, 1], &[1.0, 1.0]),
            Err(CommitError::DuplicateUid(1))
        );
        assert_eq!(to_u16_weights(&[1, 2], &[0.0, 0.0]), Ok((vec![], vec![])));
        assert_eq!(to_u16_weights(&[], &[]), Ok((vec![], vec![])));
    }

    /// Known answer for the commit hash. The bytes are the SCALE encoding
    /// written out by hand (not by `parity-scale-codec`) and the digest was
    /// computed independently with Python's `hashlib.blake2b(digest_size=32)`:
    ///
    /// ```text
    /// account 00 01 … 1f | netuid 100 = 6400 | uids [1,2,3] = 0c 0100 0200 0300
    /// values [21845,65535,43690] = 0c 5555 ffff aaaa
    /// salt [1..=8] = 20 0100 … 0800 | version_key 1234 = d204000000000000
    /// ```
    #[test]
    fn commit_hash_known_answer() {
        let mut account = [0u8; 32];
        for (i, b) in account.iter_mut().enumerate() {
            *b = u8::try_from(i).unwrap();
        }
        let expected_bytes = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
                              6400\
                              0c010002000300\
                              0c5555ffffaaaa\
                              2001000200030004000500060007000800\
                              d204000000000000";
        let uids = [1u16, 2, 3];
        let values = [21845u16, 65535, 43690];
        let salt = [1u16, 2, 3, 4, 5, 6, 7, 8];
        let encoded = (&account, 100u16, &uids[..], &values[..], &salt[..], 1234u64).encode();
        assert_eq!(hex::encode(&encoded), expected_bytes);
        assert_eq!(
            hex::encode(commit_hash(&account, 100, &uids, &values, &salt, 1234)),
            "635ed795e1d823ebff9d142cda1409192a662e7aa3ed944cb0ac61d9bbc3862b"
        );
        // Empty vectors, zero account, netuid 1, version 0 (also from Python).
        assert_eq!(
            hex::encode(commit_hash(&[0u8; 32], 1, &[], &[], &[], 0)),
            "2d51d7fb3f544b5fb1cda215d49811675370ff82305324da1987e3137c482238"
        );
    }

    #[test]
    fn salt_is_eight_byte_values() {
        let mut rng = rand::thread_rng();
        let s = generate_salt(&mut rng);
        assert_eq!(s.len(), SALT_LEN);
        assert!(s.iter().all(|v| *v <= 255));
    }

    #[test]
    fn epochs_and_reveal_windows_follow_subtensor() {
        // netuid 1, tempo 99: epoch = (block + 2) / 100.
        assert_eq!(epoch_index(1, 99, 97), 0);
        assert_eq!(epoch_index(1, 99, 98), 1);
        // Commit in epoch 1 (block 150), reveal period 1 → epoch 2 =
        // blocks 198..=297.
        assert_eq!(reveal_window(1, 99, 1, 150), (198, 297));
        assert!(!commit_expired(1, 99, 1, 150, 297));
        assert!(commit_expired(1, 99, 1, 150, 298));
        // tempo 0 must not divide by zero.
        assert_eq!(epoch_index(0, 0, 5), 6);
    }

    #[test]
    fn rate_limit_counts_blocks_since_last_update() {
        assert_eq!(rate_limit_wait(0, 10, 100), 0);
        assert_eq!(rate_limit_wait(100, 150, 100), 50);
        assert_eq!(rate_limit_wait(100, 200, 100), 0);
        assert_eq!(rate_limit_wait(100, 50, 100), 100);
    }

    proptest! {
        #[test]
        fn conversion_upscales_max_and_keeps_order(
            raw in proptest::collection::vec(0.0f64..1e6, 1..64)
        ) {
            let uids: Vec<u16> = (0..raw.len()).map(|i| u16::try_from(i).unwrap()).collect();
            let (u, v) = to_u16_weights(&uids, &raw).unwrap();
            prop_assert_eq!(u.len(), v.len());
            prop_assert!(v.iter().all(|x| *x > 0));
            if raw.iter().any(|x| *x > 0.0) {
                prop_assert_eq!(v.iter().copied().max(), Some(U16_MAX));
            } else {
                prop_assert!(v.is_empty());
            }
            // Monotone: a larger float never gets a smaller u16.
            for (i, a) in u.iter().enumerate() {
                for (j, b) in u.iter().enumerate() {
                    if raw[usize::from(*a)] < raw[usize::from(*b)] {
                        prop_assert!(v[i] <= v[j]);
                    }
                }
            }
        }

        #[test]
        fn reveal_window_is_one_tempo_long_and_after_commit(
            netuid in 0u16..1024, tempo in 1u16..1000, period in 1u64..4, block in 0u64..10_000_000
        ) {
            let (first, last) = reveal_window(netuid, tempo, period, block);
            prop_assert_eq!(last - first, u64::from(tempo));
            prop_assert!(first > block);
            prop_assert_eq!(epoch_index(netuid, tempo, first), epoch_index(netuid, tempo, block) + period);
            prop_assert_eq!(epoch_index(netuid, tempo, last), epoch_index(netuid, tempo, block) + period);
        }
    }
}
