//! Benchmark of `base_sdk::weights::aggregate::aggregate` at the size BASE is
//! built for: 64 challenges each scoring every one of 4,096 hotkeys, against
//! a metagraph of the same 4,096 hotkeys. It exists to track one epoch's
//! aggregation against its 5 ms budget (results and analysis in
//! docs/benchmarks.md).
//!
//! Run with `cargo bench --bench aggregate -- --warm-up-time 1 --measurement-time 3`.

use std::collections::BTreeMap;
use std::hint::black_box;

use base_sdk::weights::aggregate::{Ballot, Contribution, UidMap, aggregate, aggregate_ballot};
use criterion::{Criterion, criterion_main};

/// Number of challenges in the benchmarked epoch.
const CHALLENGES: usize = 64;
/// Number of hotkeys in the metagraph, all scored by every challenge.
const HOTKEYS: usize = 4_096;
/// The base58 alphabet, so hotkeys look like (and compare like) ss58.
const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// SplitMix64: a tiny deterministic generator, so every run benchmarks the
/// same input without pulling a random-number crate into the bench.
struct SplitMix64(u64);

impl SplitMix64 {
    /// The next pseudo-random 64-bit value.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A pseudo-random value in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A 48-character ss58-looking hotkey. Real ss58 addresses of one network
/// share their first character, which this mimics, so that comparisons are
/// not made artificially cheap by an early difference.
fn hotkey(rng: &mut SplitMix64) -> String {
    std::iter::once('5')
        .chain((1..48).map(|_| {
            // 58 < 2^6, so the modulo bias is irrelevant for a benchmark.
            let index = (rng.next_u64() % BASE58.len() as u64) as usize;
            char::from(BASE58[index])
        }))
        .collect()
}

/// The metagraph (hotkey i on uid i, uid 0 included, as on chain) and the
/// epoch's contributions.
fn input() -> (UidMap, Vec<Contribution>) {
    let mut rng = SplitMix64(0x00BA_5E00);
    let hotkeys: Vec<String> = (0..HOTKEYS).map(|_| hotkey(&mut rng)).collect();
    let uids: UidMap = hotkeys
        .iter()
        .zip(0u16..)
        .map(|(hotkey, uid)| (hotkey.clone(), uid))
        .collect();
    let contributions = (0..CHALLENGES)
        .map(|c| {
            let weights: BTreeMap<String, f64> = hotkeys
                .iter()
                .map(|hotkey| (hotkey.clone(), rng.next_f64()))
                .collect();
            Contribution {
                slug: format!("challenge-{c:02}"),
                emission_percent: 1.0 + (c % 7) as f64,
                weights: Some(weights),
            }
        })
        .collect();
    (uids, contributions)
}

/// The criterion targets, measured side by side in one run:
///
/// * `aggregate_ballot`: the rule itself on an interned ballot, which is
///   what the epoch calls (target: under 5 ms);
/// * `Ballot` interning: what the epoch pays while taking in the answers
///   (once per score, in the collection step);
/// * `aggregate` from string maps: both of the above, as one call;
/// * a baseline that only touches every scored hotkey's first and last
///   byte: the floor of any work over string-keyed input.
///
/// Results are dropped inside the timing, since freeing them is part of an
/// epoch's cost. On a shared machine all figures move together, so their
/// ratios are the numbers to watch.
fn bench_aggregate(c: &mut Criterion) {
    let (uids, contributions) = input();
    let ballot: Ballot = contributions.iter().collect();
    c.bench_function(
        "weights::aggregate_ballot 64 challenges x 4096 hotkeys",
        |b| {
            b.iter(|| aggregate_ballot(black_box(&ballot), black_box(&uids), black_box(1)));
        },
    );
    c.bench_function("Ballot: intern 64 challenges x 4096 hotkeys", |b| {
        b.iter(|| black_box(&contributions).iter().collect::<Ballot>());
    });
    c.bench_function(
        "weights::aggregate (intern + aggregate) from string maps",
        |b| {
            b.iter(|| aggregate(black_box(&contributions), black_box(&uids), black_box(1)));
        },
    );
    c.bench_function("baseline: touch every scored hotkey once", |b| {
        b.iter(|| {
            black_box(&contributions)
                .iter()
                .filter_map(|contribution| contribution.weights.as_ref())
                .flat_map(|weights| weights.iter())
                .map(|(hotkey, score)| {
                    let bytes = hotkey.as_bytes();
                    let ends = bytes.first().zip(bytes.last());
                    ends.map_or(0, |(first, last)| u64::from(*first ^ *last)) as f64 + score
                })
                .sum::<f64>()
        });
    });
}

/// The criterion group, in a private module only because the macro declares
/// a `pub fn` that the workspace's `missing_docs` lint would otherwise flag.
mod group {
    use super::bench_aggregate;
    use criterion::criterion_group;

    criterion_group!(benches, bench_aggregate);
}

criterion_main!(group::benches);
