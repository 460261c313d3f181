//! Benchmark support: the criterion benches are under `benches/`.
