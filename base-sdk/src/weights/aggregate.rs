//! Pure aggregation of challenge weights (CONTRACTS.md §5).
