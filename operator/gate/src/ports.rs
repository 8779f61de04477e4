//! Which ports the gate takes in the pod: fixed, so the operator, the
//! activator and kubelet agree, and moved aside when the function itself
//! uses one of them.

const PREFERRED: [u16; 4] = [8012, 8013, 8022, 8023];

/// The gate's request and admin ports for a function serving on
/// `function_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatePorts {
    pub requests: u16,
    pub admin: u16,
}

impl GatePorts {
    /// The first two preferred ports the function does not use.
    pub fn for_function(function_port: u16) -> Self {
        let mut free = PREFERRED.into_iter().filter(|p| *p != function_port);
        // Four candidates, at most one excluded: two always remain.
        let requests = free.next().unwrap_or(8012);
        let admin = free.next().unwrap_or(8013);
        Self { requests, admin }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_avoid_the_functions_own() {
        assert_eq!(
            GatePorts::for_function(8080),
            GatePorts {
                requests: 8012,
                admin: 8013
            }
        );
        assert_eq!(
            GatePorts::for_function(8012),
            GatePorts {
                requests: 8013,
                admin: 8022
            }
        );
        assert_eq!(
            GatePorts::for_function(8013),
            GatePorts {
                requests: 8012,
                admin: 8022
            }
        );
    }
}
