//! Live tier of the chain tests, against a real subtensor node. Ignored by
//! default; run with an endpoint (see docs/chain.md):
//!
//! ```sh
//! BASE_TEST_SUBTENSOR_URL=wss://test.finney.opentensor.ai:443 BASE_TEST_NETUID=1 \
//!   cargo test -p base-sdk --test chain_live -- --ignored --nocapture
//! ```
//!
//! `live_set_weights` also signs and submits: it runs only when
//! `BASE_TEST_HOTKEY_FILE` names a hotkey registered on `BASE_TEST_NETUID`
//! (use a local devnet or testnet, never a production key).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base_sdk::chain::commit::to_u16_weights;
use base_sdk::chain::metagraph::{ChainMetagraph, LazySubtensor};
use base_sdk::chain::subtensor::{Subtensor, SubtensorSubmitter, WaitFor};
use base_sdk::chain::wallet::Hotkey;
use base_sdk::chain::{ChainSubmitter, SubmitMode};
use base_sdk::metagraph::Metagraph;

fn endpoint() -> Option<String> {
    match std::env::var("BASE_TEST_SUBTENSOR_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: set BASE_TEST_SUBTENSOR_URL to a subtensor ws(s):// endpoint");
            None
        }
    }
}

fn netuid() -> u16 {
    std::env::var("BASE_TEST_NETUID")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

#[tokio::test]
#[ignore = "needs subtensor endpoint"]
async fn live_metadata_has_the_weights_calls() {
    let Some(url) = endpoint() else { return };
    let chain = Subtensor::connect(&url).await.unwrap();
    // connect() already ran check_metadata; read the policy of a subnet
    // for an unregistered account to exercise every storage read.
    let p = chain.policy_for(netuid(), &[0u8; 32]).await.unwrap();
    eprintln!("{p:#?}");
    assert!(p.current_block > 0);
    assert!(
        p.tempo > 0,
        "netuid {} has no tempo: does it exist?",
        netuid()
    );
    assert_eq!(p.uid, None);
}

#[tokio::test]
#[ignore = "needs subtensor endpoint"]
async fn live_metagraph_lists_hotkeys() {
    let Some(url) = endpoint() else { return };
    let m = ChainMetagraph::new(
        LazySubtensor::new(url, std::time::Duration::from_secs(120)),
        netuid(),
        std::time::Duration::from_secs(60),
    );
    let s = m.snapshot().await.unwrap();
    eprintln!(
        "{} hotkeys, min_allowed_weights {}",
        s.uids.len(),
        s.min_allowed_weights
    );
    assert!(!s.uids.is_empty());
}

#[tokio::test]
#[ignore = "needs subtensor endpoint"]
async fn live_set_weights() {
    let Some(url) = endpoint() else { return };
    let Ok(file) = std::env::var("BASE_TEST_HOTKEY_FILE") else {
        eprintln!("skipped: set BASE_TEST_HOTKEY_FILE to a registered test hotkey");
        return;
    };
    let hotkey = Hotkey::from_file(std::path::Path::new(&file)).unwrap();
    let chain = Subtensor::connect(&url).await.unwrap();
    let s = SubtensorSubmitter::new(chain, hotkey, WaitFor::InBlock);
    let netuid = netuid();
    let p = s.policy(netuid).await.unwrap();
    let uid = p
        .uid
        .expect("the test hotkey must be registered on BASE_TEST_NETUID");
    // A self-weight is always valid in length and max-weight terms.
    let (uids, values) = to_u16_weights(&[uid], &[1.0]).unwrap();
    match p.mode().unwrap() {
        SubmitMode::Direct => {
            let inc = s
                .set_weights(netuid, &uids, &values, p.version_key)
                .await
                .unwrap();
            eprintln!("set in {}", inc.block_hash);
        }
        SubmitMode::CommitReveal => {
            let h = base_sdk::chain::commit::commit_hash(
                &s.account_id(),
                netuid,
                &uids,
                &values,
                &[1, 2, 3, 4, 5, 6, 7, 8],
                p.version_key,
            );
            let inc = s.commit_weights(netuid, h).await.unwrap();
            eprintln!("committed in {} (reveal later)", inc.block_hash);
        }
    }
}
