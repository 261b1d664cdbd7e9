//! How many upgrades one source address may have in progress (`MAX_HANDSHAKES_PER_IP`), so a
//! slow-loris from one address cannot hold every connection slot in handshakes that never end.
//!
//! Process-wide (the kernel spreads one address's connections over every shard): a map from
//! address to handshakes in progress behind one mutex, taken twice per accepted connection
//! (enter, leave) and never on the notification path. IPv6 addresses count per /64, the block
//! one host usually holds; IPv4-mapped IPv6 addresses count as their IPv4 address.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex, PoisonError},
};

/// The per-address handshake counts and their cap.
pub struct HandshakeLimit {
    /// Handshakes one address may have in progress; 0 means no limit.
    per_address: usize,
    /// Address (or IPv6 /64) -> handshakes in progress. Entries at zero are removed.
    in_progress: Mutex<HashMap<IpAddr, usize>>,
}

impl HandshakeLimit {
    /// A limit of `per_address` handshakes per address (0: unlimited).
    pub fn new(per_address: usize) -> Self {
        Self {
            per_address,
            in_progress: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a handshake from `peer`, or `None` when its address already has the maximum in
    /// progress. The count is given back when the returned guard drops.
    pub fn try_enter(self: &Arc<Self>, peer: IpAddr) -> Option<HandshakeGuard> {
        if self.per_address == 0 {
            return Some(HandshakeGuard { entry: None });
        }
        let key = bucket(peer);
        let mut map = self
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(key).or_insert(0);
        if *count >= self.per_address {
            return None;
        }
        *count += 1;
        Some(HandshakeGuard {
            entry: Some((self.clone(), key)),
        })
    }

    /// Handshakes in progress from `peer`'s address.
    #[cfg(test)]
    fn count(&self, peer: IpAddr) -> usize {
        let map = self.in_progress.lock().unwrap();
        map.get(&bucket(peer)).copied().unwrap_or(0)
    }
}

/// One counted handshake; leaving it (drop) gives the count back.
pub struct HandshakeGuard {
    /// Where and under which key it was counted (`None` without a limit).
    entry: Option<(Arc<HandshakeLimit>, IpAddr)>,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        let Some((limit, key)) = self.entry.take() else {
            return;
        };
        let mut map = limit
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&key);
            }
        }
    }
}

/// The key an address is counted under.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_gives_back_on_drop() {
        let limit = Arc::new(HandshakeLimit::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = limit.try_enter(a).unwrap();
        let g2 = limit.try_enter(a).unwrap();
        assert!(limit.try_enter(a).is_none());
        assert!(
            limit.try_enter(b).is_some(),
            "other addresses are not affected"
        );
        drop(g1);
        let g3 = limit.try_enter(a).unwrap();
        drop((g2, g3));
        assert_eq!(limit.count(a), 0);
        assert!(
            limit.in_progress.lock().unwrap().is_empty(),
            "no entry left behind"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limit = Arc::new(HandshakeLimit::new(1));
        let _g = limit.try_enter("2001:db8::1".parse().unwrap()).unwrap();
        assert!(
            limit
                .try_enter("2001:db8::ffff:2".parse().unwrap())
                .is_none()
        );
        assert!(
            limit
                .try_enter("2001:db8:0:1::1".parse().unwrap())
                .is_some()
        );
        let _v4 = limit.try_enter("192.0.2.7".parse().unwrap()).unwrap();
        assert!(
            limit
                .try_enter("::ffff:192.0.2.7".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn zero_means_no_limit() {
        let limit = Arc::new(HandshakeLimit::new(0));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let guards: Vec<_> = (0..100).map(|_| limit.try_enter(ip).unwrap()).collect();
        assert_eq!(guards.len(), 100);
    }
}
