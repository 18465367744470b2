//! The SDK a challenge author embeds (CONTRACTS.md §2).
