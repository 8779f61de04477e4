//! Pod IP allocation from the node's pod CIDR. The first host address is the
//! bridge (gateway); pods get the rest, handed out round-robin so a released
//! address is not reused right away.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IpamError {
    #[error("{0} is not a pod address of {1}")]
    OutOfRange(Ipv4Addr, Ipv4Net),
    #[error("{ip} is already held by pod {owner}")]
    Taken { ip: Ipv4Addr, owner: String },
}

#[derive(Debug)]
pub struct Ipam {
    net: Ipv4Net,
    by_ip: BTreeMap<u32, String>,
    by_owner: HashMap<String, Ipv4Addr>,
    /// Offset (from the network address) to try next.
    cursor: u32,
}

impl Ipam {
    /// `net` must leave room for the gateway and at least one pod (a /30 or larger).
    pub fn new(net: Ipv4Net) -> Result<Self, String> {
        let net = net.trunc();
        if net.prefix_len() > 30 {
            return Err(format!("pod CIDR {net} is too small (need /30 or larger)"));
        }
        if net.prefix_len() < 8 {
            return Err(format!("pod CIDR {net} is too large (need /8 or smaller)"));
        }
        Ok(Self {
            net,
            by_ip: BTreeMap::new(),
            by_owner: HashMap::new(),
            cursor: 2,
        })
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    /// The bridge's address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net.network()) + 1)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.net.prefix_len())
    }

    fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        let off = u32::from(ip).wrapping_sub(u32::from(self.net.network()));
        // Pod offsets are 2 ..= size-2 (network, gateway and broadcast excluded).
        (self.net.contains(&ip) && off >= 2 && off <= self.size() - 2).then_some(off)
    }

    pub fn get(&self, owner: &str) -> Option<Ipv4Addr> {
        self.by_owner.get(owner).copied()
    }

    /// The owner's address, allocating one if it has none. `None` when the range is full.
    pub fn allocate(&mut self, owner: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.get(owner) {
            return Some(ip);
        }
        let first = 2;
        let last = self.size() - 2;
        let count = last - first + 1;
        for i in 0..count {
            let off = first + (self.cursor - first + i) % count;
            if !self.by_ip.contains_key(&off) {
                let ip = Ipv4Addr::from(u32::from(self.net.network()) + off);
                self.by_ip.insert(off, owner.to_string());
                self.by_owner.insert(owner.to_string(), ip);
                self.cursor = if off == last { first } else { off + 1 };
                return Some(ip);
            }
        }
        None
    }

    /// Records that `owner` holds `ip` (recovery after a restart).
    pub fn reserve(&mut self, owner: &str, ip: Ipv4Addr) -> Result<(), IpamError> {
        let off = self.offset(ip).ok_or(IpamError::OutOfRange(ip, self.net))?;
        match self.by_ip.get(&off) {
            Some(o) if o == owner => return Ok(()),
            Some(o) => {
                return Err(IpamError::Taken {
                    ip,
                    owner: o.clone(),
                });
            }
            None => {}
        }
        if let Some(old) = self.by_owner.get(owner).copied()
            && let Some(old_off) = self.offset(old)
        {
            self.by_ip.remove(&old_off);
        }
        self.by_ip.insert(off, owner.to_string());
        self.by_owner.insert(owner.to_string(), ip);
        Ok(())
    }

    pub fn release(&mut self, owner: &str) -> Option<Ipv4Addr> {
        let ip = self.by_owner.remove(owner)?;
        if let Some(off) = self.offset(ip) {
            self.by_ip.remove(&off);
        }
        Some(ip)
    }

    pub fn in_use(&self) -> usize {
        self.by_owner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(cidr: &str) -> Ipam {
        Ipam::new(cidr.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn gateway_is_first_and_pods_follow() {
        let mut a = ipam("10.244.0.0/24");
        assert_eq!(a.gateway(), ip("10.244.0.1"));
        assert_eq!(a.allocate("a"), Some(ip("10.244.0.2")));
        assert_eq!(a.allocate("b"), Some(ip("10.244.0.3")));
        // Idempotent per owner.
        assert_eq!(a.allocate("a"), Some(ip("10.244.0.2")));
        assert_eq!(a.in_use(), 2);
    }

    #[test]
    fn truncates_host_bits() {
        let a = ipam("10.244.0.9/24");
        assert_eq!(a.net().to_string(), "10.244.0.0/24");
        assert_eq!(a.gateway(), ip("10.244.0.1"));
    }

    #[test]
    fn round_robin_reuse_and_exhaustion() {
        // /29: .0 network, .1 gateway, .2-.6 pods, .7 broadcast.
        let mut a = ipam("10.0.0.0/29");
        let got: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|o| a.allocate(o).unwrap())
            .collect();
        assert_eq!(got.last(), Some(&ip("10.0.0.6")));
        assert_eq!(a.allocate("f"), None);
        assert_eq!(a.release("b"), Some(ip("10.0.0.3")));
        assert_eq!(a.allocate("f"), Some(ip("10.0.0.3")));
        a.release("a");
        a.release("c");
        // The cursor is past .3: the next free address after it is .4, then it wraps to .2.
        assert_eq!(a.allocate("g"), Some(ip("10.0.0.4")));
        assert_eq!(a.allocate("h"), Some(ip("10.0.0.2")));
    }

    #[test]
    fn released_address_is_not_reused_immediately() {
        let mut a = ipam("10.244.0.0/24");
        let first = a.allocate("a").unwrap();
        a.release("a");
        assert_ne!(a.allocate("b").unwrap(), first);
    }

    #[test]
    fn reserve_recovers_and_detects_conflicts() {
        let mut a = ipam("10.244.0.0/24");
        a.reserve("a", ip("10.244.0.9")).unwrap();
        a.reserve("a", ip("10.244.0.9")).unwrap();
        assert_eq!(a.allocate("a"), Some(ip("10.244.0.9")));
        assert_eq!(
            a.reserve("b", ip("10.244.0.9")),
            Err(IpamError::Taken {
                ip: ip("10.244.0.9"),
                owner: "a".into()
            })
        );
        assert!(matches!(
            a.reserve("b", ip("10.244.0.1")),
            Err(IpamError::OutOfRange(..))
        ));
        assert!(matches!(
            a.reserve("b", ip("10.244.0.255")),
            Err(IpamError::OutOfRange(..))
        ));
        assert!(matches!(
            a.reserve("b", ip("10.245.0.3")),
            Err(IpamError::OutOfRange(..))
        ));
        // Moving an owner frees its old address.
        a.reserve("a", ip("10.244.0.10")).unwrap();
        a.reserve("b", ip("10.244.0.9")).unwrap();
        // Allocation skips reserved addresses.
        let mut seen = Vec::new();
        for i in 0..20 {
            seen.push(a.allocate(&format!("p{i}")).unwrap());
        }
        assert!(!seen.contains(&ip("10.244.0.9")));
        assert!(!seen.contains(&ip("10.244.0.10")));
    }

    #[test]
    fn rejects_tiny_ranges() {
        assert!(Ipam::new("10.0.0.0/31".parse().unwrap()).is_err());
        assert!(Ipam::new("0.0.0.0/0".parse().unwrap()).is_err());
        let mut a = ipam("10.0.0.0/30");
        assert_eq!(a.allocate("a"), Some(ip("10.0.0.2")));
        assert_eq!(a.allocate("b"), None);
    }
}
