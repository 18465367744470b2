//! Placeholder library target of the top-level package; the real code lives in base-sdk.
