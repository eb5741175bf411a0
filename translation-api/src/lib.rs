//! translation-api.
