//! Reading a component's Prometheus `/metrics` in tests.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;

use crate::http;

/// The sum of every sample of metric `name` (all label sets) that the
/// endpoint at `addr` serves on `/metrics`.
pub async fn metric_sum(addr: SocketAddr, name: &str) -> Result<f64> {
    let reply = http::get(addr, "localhost", "/metrics", Duration::from_secs(5)).await?;
    Ok(reply
        .body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
