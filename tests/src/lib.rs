//! Shared helpers for swarmgate's integration tests live in each test file.
