//! User id -> owner shard. Stable across runs and processes (xxh3 with a fixed seed), so the
//! mapping is reproducible in tests, benchmarks and logs.

use xxhash_rust::xxh3::xxh3_64;

/// The shard that owns `user`'s connections among `shards` shards.
pub fn owner_shard(user: &str, shards: usize) -> usize {
    debug_assert!(shards > 0);
    // Lemire's multiply-shift range reduction: uniform and cheaper than `%`.
    ((u128::from(xxh3_64(user.as_bytes())) * shards as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_in_range() {
        for shards in 1..=8 {
            for i in 0..1000 {
                let user = format!("user-{i}");
                let s = owner_shard(&user, shards);
                assert!(s < shards);
                assert_eq!(s, owner_shard(&user, shards));
            }
        }
        assert_eq!(owner_shard("anything", 1), 0);
    }

    #[test]
    fn spreads_users_evenly() {
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            counts[owner_shard(&format!("u{i}"), 4)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread: {counts:?}");
        }
    }
}
