//! Offline tier of the chain tests: `set_weights`, `commit_weights` and
//! `reveal_weights` extrinsics built by subxt's dynamic API against the
//! vendored metadata (tests/data/subtensor-metadata.scale), signed with a
//! fixed key, then taken apart byte by byte — pallet and call indices,
//! arguments, signed extensions — and the signature checked over a signer
//! payload assembled by hand.
//!
//! The vendored file is SYNTHETIC (no node was reachable when it was
//! made): `regenerate_synthetic_metadata` below builds it with
//! frame-metadata/scale-info, describing `SubtensorModule` at its real
//! pallet index (7) with the real call indices and argument types of
//! `set_weights` (0), `commit_weights` (96) and `reveal_weights` (97),
//! the storage items BASE reads with subtensor's key hashers, and Finney's
//! transaction extensions. See tests/data/README.md for how to
//! replace it with the live runtime's metadata.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use base_sdk::chain::subtensor::{
    check_metadata, commit_weights_call, reveal_weights_call, set_weights_call,
};
use base_sdk::chain::wallet::Hotkey;
use parity_scale_codec::{Compact, Decode, Encode};
use secrecy::SecretString;
use subxt::config::substrate::SpecVersionForRange;
use subxt::config::{SubstrateConfig, SubstrateExtrinsicParamsBuilder};
use subxt::{Metadata, OfflineClient};

const SPEC_VERSION: u32 = 300;
const TX_VERSION: u32 = 1;
const GENESIS: [u8; 32] = [0x11; 32];
// Alice's public dev seed: a fixed, well-known key, not a secret.
const ALICE_SEED: &str = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a";
const ALICE_PUB: &str = "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d";

fn vendored() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/subtensor-metadata.scale"
    );
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn offline() -> OfflineClient<SubstrateConfig> {
    let md = Arc::new(Metadata::decode_from(&vendored()).unwrap());
    let config = SubstrateConfig::builder()
        .set_genesis_hash(subxt::config::substrate::H256(GENESIS))
        .set_metadata_for_spec_versions([(SPEC_VERSION, md)])
        .set_spec_version_for_block_ranges([SpecVersionForRange {
            block_range: 0..u64::MAX,
            spec_version: SPEC_VERSION,
            transaction_version: TX_VERSION,
        }])
        .build();
    OfflineClient::new_with_config(config)
}

fn alice() -> Hotkey {
    Hotkey::from_seed_hex(&SecretString::from(ALICE_SEED)).unwrap()
}

/// Builds and signs `call` offline (nonce 5, immortal, no tip) and returns
/// (extrinsic bytes, signer payload).
fn sign<C: subxt::transactions::Payload>(call: &C) -> (Vec<u8>, Vec<u8>) {
    let client = offline();
    let at = client.at_block(0u64).unwrap();
    let params = SubstrateExtrinsicParamsBuilder::<SubstrateConfig>::new()
        .nonce(5)
        .build();
    let mut tx = at
        .transactions()
        .create_v4_signable_offline(call, params)
        .unwrap();
    let payload = tx.signer_payload().unwrap();
    let signed = tx.sign(alice().keypair()).unwrap();
    (signed.encoded().to_vec(), payload)
}

/// The parts of a signed v4 extrinsic.
struct Parsed {
    signer: [u8; 32],
    signature: [u8; 64],
    extra: Vec<u8>,
    call: Vec<u8>,
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut input = bytes;
    let len = Compact::<u32>::decode(&mut input).unwrap().0 as usize;
    assert_eq!(len, input.len(), "length prefix covers the rest");
    assert_eq!(input[0], 0x84, "signed, extrinsic format version 4");
    assert_eq!(input[1], 0x00, "MultiAddress::Id");
    let signer: [u8; 32] = input[2..34].try_into().unwrap();
    assert_eq!(input[34], 0x01, "MultiSignature::Sr25519");
    let signature: [u8; 64] = input[35..99].try_into().unwrap();
    // Extensions with data, in metadata order: CheckMortality (era),
    // CheckNonce (compact), ChargeTransactionPayment (compact tip),
    // CheckMetadataHash (mode); the others carry nothing.
    let extra = input[99..103].to_vec();
    Parsed {
        signer,
        signature,
        extra,
        call: input[103..].to_vec(),
    }
}

/// The signer payload as the runtime rebuilds it: call, extension values,
/// then implicit data (spec version, tx version, genesis, the era's block
/// hash — genesis when immortal — and no metadata hash).
fn expected_payload(call: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut p = call.to_vec();
    p.extend_from_slice(extra);
    SPEC_VERSION.encode_to(&mut p);
    TX_VERSION.encode_to(&mut p);
    p.extend_from_slice(&GENESIS);
    p.extend_from_slice(&GENESIS);
    p.push(0x00);
    assert!(
        p.len() <= 256,
        "longer payloads are hashed first; keep the test short"
    );
    p
}

#[test]
fn vendored_metadata_describes_subtensor_weights_calls() {
    let md = Metadata::decode_from(&vendored()).unwrap();
    check_metadata(&md).unwrap();
    let pallet = md.pallet_by_name("SubtensorModule").unwrap();
    assert_eq!(pallet.call_index(), 7);
    for (name, index) in [
        ("set_weights", 0u8),
        ("commit_weights", 96),
        ("reveal_weights", 97),
    ] {
        assert_eq!(
            pallet.call_variant_by_name(name).unwrap().index,
            index,
            "{name}"
        );
    }
}

#[test]
fn set_weights_is_encoded_and_signed_by_the_hotkey() {
    let (bytes, payload) = sign(&set_weights_call(1, &[1, 2, 3], &[15123, 65535, 20165], 42));
    let p = parse(&bytes);
    assert_eq!(hex::encode(p.signer), ALICE_PUB);
    assert_eq!(
        p.extra,
        vec![0x00, 0x14, 0x00, 0x00],
        "immortal, nonce 5, tip 0, no metadata hash"
    );
    assert_eq!(
        hex::encode(&p.call),
        concat!(
            "07",
            "00",   // SubtensorModule (7) :: set_weights (0)
            "0100", // netuid 1 (u16 LE)
            "0c",
            "010002000300", // dests [1, 2, 3]
            "0c",
            "133bffffc54e",     // weights [15123, 65535, 20165]
            "2a00000000000000", // version_key 42 (u64 LE)
        )
    );
    let expected = expected_payload(&p.call, &p.extra);
    assert_eq!(payload, expected, "subxt signs what the runtime will check");
    let sig = subxt_signer::sr25519::Signature(p.signature);
    let pubkey = subxt_signer::sr25519::PublicKey(p.signer);
    assert!(subxt_signer::sr25519::verify(&sig, &expected, &pubkey));
    // And it is not a signature over anything else.
    let mut tampered = expected.clone();
    tampered[3] ^= 1;
    assert!(!subxt_signer::sr25519::verify(&sig, &tampered, &pubkey));
}

#[test]
fn commit_weights_is_encoded_and_signed_by_the_hotkey() {
    let hash = [0xab; 32];
    let (bytes, payload) = sign(&commit_weights_call(100, hash));
    let p = parse(&bytes);
    assert_eq!(hex::encode(p.signer), ALICE_PUB);
    let mut call = vec![7u8, 96];
    call.extend_from_slice(&100u16.to_le_bytes());
    call.extend_from_slice(&hash);
    assert_eq!(p.call, call);
    let expected = expected_payload(&p.call, &p.extra);
    assert_eq!(payload, expected);
    assert!(subxt_signer::sr25519::verify(
        &subxt_signer::sr25519::Signature(p.signature),
        &expected,
        &subxt_signer::sr25519::PublicKey(p.signer)
    ));
}

#[test]
fn reveal_weights_call_data_matches_the_pallet() {
    let (bytes, _) = sign(&reveal_weights_call(1, &[4], &[65535], &[9, 8], 7));
    let p = parse(&bytes);
    assert_eq!(
        hex::encode(&p.call),
        concat!(
            "07",
            "61",   // SubtensorModule :: reveal_weights (97)
            "0100", // netuid 1
            "04",
            "0400", // uids [4]
            "04",
            "ffff", // values [65535]
            "08",
            "09000800",         // salt [9, 8]
            "0700000000000000", // version_key 7
        )
    );
}

#[test]
fn wrong_argument_shapes_are_refused_before_signing() {
    // A value that does not fit the metadata's u16 netuid.
    let call = subxt::dynamic::tx(
        "SubtensorModule",
        "set_weights",
        (70_000u32, vec![1u16], vec![1u16], 0u64),
    );
    let client = offline();
    let at = client.at_block(0u64).unwrap();
    let params = SubstrateExtrinsicParamsBuilder::<SubstrateConfig>::new()
        .nonce(0)
        .build();
    let e = match at.transactions().create_v4_signable_offline(&call, params) {
        Ok(mut tx) => tx.sign(alice().keypair()).err(),
        Err(e) => Some(e),
    };
    assert!(e.is_some(), "netuid 70000 must not encode as u16");
}

/// The storage keys the online reads use, built offline: netuid keys
/// `Identity`-hashed as a little-endian u16 (the `NetUid` newtype encodes
/// as its u16), hotkeys `Blake2_128Concat`.
#[test]
fn storage_keys_for_uids_keys_and_netuid_maps() {
    use base_sdk::chain::subtensor::{keys_address, netuid_map_address, uids_address};
    use blake2::digest::consts::U16;
    use blake2::{Blake2b, Digest};
    use subxt::utils::AccountId32;

    let client = offline();
    let at = client.at_block(0u64).unwrap();
    let storage = at.storage();
    let alice: [u8; 32] = hex::decode(ALICE_PUB).unwrap().try_into().unwrap();

    let uids = storage.entry(uids_address()).unwrap();
    let key = uids.fetch_key((100, AccountId32(alice))).unwrap();
    let mut expected = uids.key_prefix().to_vec();
    expected.extend_from_slice(&100u16.to_le_bytes());
    expected.extend_from_slice(&Blake2b::<U16>::digest(alice));
    expected.extend_from_slice(&alice);
    assert_eq!(hex::encode(&key), hex::encode(&expected));

    let keys = storage.entry(keys_address()).unwrap();
    let mut expected = keys.key_prefix().to_vec();
    expected.extend_from_slice(&7u16.to_le_bytes());
    assert_eq!(
        keys.iter_key((7u16,)).unwrap(),
        expected,
        "Keys iterated per netuid"
    );

    let tempo = storage.entry(netuid_map_address::<u16>("Tempo")).unwrap();
    let mut expected = tempo.key_prefix().to_vec();
    expected.extend_from_slice(&1u16.to_le_bytes());
    assert_eq!(tempo.fetch_key((1,)).unwrap(), expected);
    // The runtime's default comes back when a key has no value.
    assert_eq!(tempo.default_value().unwrap().decode().unwrap(), 360);

    // A netuid that does not fit the key type is refused, not truncated.
    let wide = subxt::dynamic::storage::<(u32,), u16>("SubtensorModule", "Tempo");
    assert!(
        storage
            .entry(wide)
            .unwrap()
            .fetch_key((70_000u32,))
            .is_err()
    );
}

#[test]
fn metadata_without_subtensor_is_refused_by_name() {
    let md = Metadata::decode_from(&synthetic::build("NotSubtensor")).unwrap();
    let e = check_metadata(&md).unwrap_err().to_string();
    assert!(e.contains("no pallet SubtensorModule"), "{e}");
}

#[test]
fn vendored_file_is_what_the_generator_makes_unless_replaced() {
    // If the file was replaced by real metadata (see tests/data/README.md)
    // this comparison no longer applies; the other tests still do.
    let vendored = vendored();
    let md = Metadata::decode_from(&vendored).unwrap();
    if md.pallet_by_name("Balances").is_none() {
        assert_eq!(vendored, synthetic::build("SubtensorModule"));
    }
}

/// Writes tests/data/subtensor-metadata.scale from [`synthetic::build`].
#[test]
#[ignore = "regenerates the vendored synthetic metadata; run on purpose"]
fn regenerate_synthetic_metadata() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/subtensor-metadata.scale"
    );
    std::fs::write(path, synthetic::build("SubtensorModule")).unwrap();
}

/// A minimal runtime description with subtensor's weights calls and
/// extrinsic format, built with scale-info (types) and frame-metadata (V15).
mod synthetic {
    #![allow(dead_code, non_camel_case_types)]

    use frame_metadata::v15::{
        CustomMetadata, ExtrinsicMetadata, OuterEnums, PalletCallMetadata, PalletMetadata,
        PalletStorageMetadata, RuntimeMetadataV15, SignedExtensionMetadata, StorageEntryMetadata,
        StorageEntryModifier, StorageEntryType, StorageHasher,
    };
    use frame_metadata::{META_RESERVED, RuntimeMetadata, RuntimeMetadataPrefixed};
    use parity_scale_codec::{Compact, Encode};
    use scale_info::{TypeInfo, meta_type};

    #[derive(TypeInfo)]
    pub struct AccountId32([u8; 32]);
    #[derive(TypeInfo)]
    pub struct H256([u8; 32]);
    /// `subtensor_runtime_common::NetUid`.
    #[derive(TypeInfo)]
    pub struct NetUid(u16);

    #[derive(TypeInfo)]
    pub enum MultiAddress {
        #[codec(index = 0)]
        Id(AccountId32),
        #[codec(index = 1)]
        Index(Compact<u32>),
        #[codec(index = 2)]
        Raw(Vec<u8>),
        #[codec(index = 3)]
        Address32([u8; 32]),
        #[codec(index = 4)]
        Address20([u8; 20]),
    }

    #[derive(TypeInfo)]
    pub enum MultiSignature {
        #[codec(index = 0)]
        Ed25519([u8; 64]),
        #[codec(index = 1)]
        Sr25519([u8; 64]),
        #[codec(index = 2)]
        Ecdsa([u8; 65]),
    }

    /// The weights calls of `pallet_subtensor::Call`, with their indices.
    #[derive(TypeInfo)]
    pub enum SubtensorCall {
        #[codec(index = 0)]
        set_weights {
            netuid: NetUid,
            dests: Vec<u16>,
            weights: Vec<u16>,
            version_key: u64,
        },
        #[codec(index = 96)]
        commit_weights { netuid: NetUid, commit_hash: H256 },
        #[codec(index = 97)]
        reveal_weights {
            netuid: NetUid,
            uids: Vec<u16>,
            values: Vec<u16>,
            salt: Vec<u16>,
            version_key: u64,
        },
    }

    #[derive(TypeInfo)]
    pub enum SystemCall {
        #[codec(index = 0)]
        remark { remark: Vec<u8> },
    }

    #[derive(TypeInfo)]
    pub enum RuntimeCall {
        #[codec(index = 0)]
        System(SystemCall),
        #[codec(index = 7)]
        SubtensorModule(SubtensorCall),
    }

    #[derive(TypeInfo)]
    pub enum RuntimeEvent {
        #[codec(index = 7)]
        SubtensorModule(SubtensorEvent),
    }

    #[derive(TypeInfo)]
    pub enum SubtensorEvent {
        #[codec(index = 0)]
        WeightsSet(NetUid, u16),
    }

    #[derive(TypeInfo)]
    pub enum RuntimeError {
        #[codec(index = 7)]
        SubtensorModule(SubtensorError),
    }

    #[derive(TypeInfo)]
    pub enum SubtensorError {
        #[codec(index = 0)]
        SettingWeightsTooFast,
    }

    #[derive(TypeInfo)]
    pub struct Runtime;

    #[derive(TypeInfo)]
    pub enum Era {
        #[codec(index = 0)]
        Immortal,
        #[codec(index = 1)]
        Mortal1(u8),
    }
    #[derive(TypeInfo)]
    pub enum Mode {
        Disabled,
        Enabled,
    }

    #[derive(TypeInfo)]
    pub struct CheckNonZeroSender;
    #[derive(TypeInfo)]
    pub struct CheckSpecVersion;
    #[derive(TypeInfo)]
    pub struct CheckTxVersion;
    #[derive(TypeInfo)]
    pub struct CheckGenesis;
    #[derive(TypeInfo)]
    pub struct CheckMortality(Era);
    #[derive(TypeInfo)]
    pub struct CheckNonce(Compact<u32>);
    #[derive(TypeInfo)]
    pub struct CheckWeight;
    #[derive(TypeInfo)]
    pub struct ChargeTransactionPayment(Compact<u128>);
    /// Subtensor's own extension: no data, skipped by subxt.
    #[derive(TypeInfo)]
    pub struct SubtensorTransactionExtension;
    #[derive(TypeInfo)]
    pub struct CheckMetadataHash {
        mode: Mode,
    }

    type Extra = (
        CheckNonZeroSender,
        CheckSpecVersion,
        CheckTxVersion,
        CheckGenesis,
        CheckMortality,
        CheckNonce,
        CheckWeight,
        ChargeTransactionPayment,
        SubtensorTransactionExtension,
        CheckMetadataHash,
    );

    fn ext<T: TypeInfo + 'static, A: TypeInfo + 'static>(
        name: &'static str,
    ) -> SignedExtensionMetadata {
        SignedExtensionMetadata {
            identifier: name,
            ty: meta_type::<T>(),
            additional_signed: meta_type::<A>(),
        }
    }

    fn map<K: TypeInfo + 'static, V: TypeInfo + 'static>(
        name: &'static str,
        hashers: Vec<StorageHasher>,
        modifier: StorageEntryModifier,
        default: Vec<u8>,
    ) -> StorageEntryMetadata {
        StorageEntryMetadata {
            name,
            modifier,
            ty: StorageEntryType::Map {
                hashers,
                key: meta_type::<K>(),
                value: meta_type::<V>(),
            },
            default,
            docs: vec![],
        }
    }

    /// The storage items BASE reads, with subtensor's hashers
    /// (`pallets/subtensor/src/lib.rs`): netuid keys are `Identity`,
    /// account keys `Blake2_128Concat`.
    fn storage() -> PalletStorageMetadata {
        use StorageEntryModifier::{Default as Dflt, Optional};
        use StorageHasher::{Blake2_128Concat, Identity};
        PalletStorageMetadata {
            prefix: "SubtensorModule",
            entries: vec![
                map::<(NetUid, AccountId32), u16>(
                    "Uids",
                    vec![Identity, Blake2_128Concat],
                    Optional,
                    vec![0],
                ),
                map::<(NetUid, u16), AccountId32>(
                    "Keys",
                    vec![Identity, Identity],
                    Dflt,
                    vec![0; 32],
                ),
                map::<NetUid, bool>("CommitRevealWeightsEnabled", vec![Identity], Dflt, vec![1]),
                map::<NetUid, u64>("RevealPeriodEpochs", vec![Identity], Dflt, 1u64.encode()),
                map::<NetUid, u64>("WeightsVersionKey", vec![Identity], Dflt, 0u64.encode()),
                map::<NetUid, u64>("WeightsSetRateLimit", vec![Identity], Dflt, 100u64.encode()),
                map::<NetUid, u16>("Tempo", vec![Identity], Dflt, 360u16.encode()),
                map::<NetUid, u16>("MinAllowedWeights", vec![Identity], Dflt, 1u16.encode()),
                map::<NetUid, u16>("MaxWeightsLimit", vec![Identity], Dflt, u16::MAX.encode()),
                map::<NetUid, Vec<u64>>("LastUpdate", vec![Identity], Dflt, vec![0]),
                StorageEntryMetadata {
                    name: "CommitRevealWeightsVersion",
                    modifier: Dflt,
                    ty: StorageEntryType::Plain(meta_type::<u16>()),
                    default: 4u16.encode(),
                    docs: vec![],
                },
            ],
        }
    }

    /// The metadata bytes (`RuntimeMetadataPrefixed`, V15) with the pallet
    /// at index 7 named `pallet_name`.
    pub fn build(pallet_name: &'static str) -> Vec<u8> {
        let pallets = vec![
            PalletMetadata {
                name: "System",
                storage: None,
                calls: Some(PalletCallMetadata {
                    ty: meta_type::<SystemCall>(),
                }),
                event: None,
                constants: vec![],
                error: None,
                index: 0,
                docs: vec![],
            },
            PalletMetadata {
                name: pallet_name,
                storage: Some(storage()),
                calls: Some(PalletCallMetadata {
                    ty: meta_type::<SubtensorCall>(),
                }),
                event: None,
                constants: vec![],
                error: None,
                index: 7,
                docs: vec![],
            },
        ];
        let extrinsic = ExtrinsicMetadata {
            version: 4,
            address_ty: meta_type::<MultiAddress>(),
            call_ty: meta_type::<RuntimeCall>(),
            signature_ty: meta_type::<MultiSignature>(),
            extra_ty: meta_type::<Extra>(),
            signed_extensions: vec![
                ext::<CheckNonZeroSender, ()>("CheckNonZeroSender"),
                ext::<CheckSpecVersion, u32>("CheckSpecVersion"),
                ext::<CheckTxVersion, u32>("CheckTxVersion"),
                ext::<CheckGenesis, H256>("CheckGenesis"),
                ext::<CheckMortality, H256>("CheckMortality"),
                ext::<CheckNonce, ()>("CheckNonce"),
                ext::<CheckWeight, ()>("CheckWeight"),
                ext::<ChargeTransactionPayment, ()>("ChargeTransactionPayment"),
                ext::<SubtensorTransactionExtension, ()>("SubtensorTransactionExtension"),
                ext::<CheckMetadataHash, Option<[u8; 32]>>("CheckMetadataHash"),
            ],
        };
        let md = RuntimeMetadataV15::new(
            pallets,
            extrinsic,
            meta_type::<Runtime>(),
            vec![],
            OuterEnums {
                call_enum_ty: meta_type::<RuntimeCall>(),
                event_enum_ty: meta_type::<RuntimeEvent>(),
                error_enum_ty: meta_type::<RuntimeError>(),
            },
            CustomMetadata {
                map: Default::default(),
            },
        );
        RuntimeMetadataPrefixed(META_RESERVED, RuntimeMetadata::V15(md)).encode()
    }
}
