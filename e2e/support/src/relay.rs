//! A TCP relay a test can cut: stands between an activator and the
//! operator, so the activator keeps serving while its reports are lost (a
//! partition of the control path only).

use std::net::SocketAddr;

use anyhow::Result;
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

pub struct Relay {
    pub addr: SocketAddr,
    blocked: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Relays loopback connections to `target` until dropped.
    pub async fn start(target: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (blocked, watch) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = watch.clone();
                if *watch.borrow() {
                    // Cut: the connection closes at once, nothing reaches
                    // the target.
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|blocked| *blocked) => {}
                    }
                });
            }
        });
        Ok(Relay {
            addr,
            blocked,
            task,
        })
    }

    /// Cuts every connection through the relay and refuses new ones (true),
    /// or lets them through again (false).
    pub fn block(&self, blocked: bool) {
        self.blocked.send_replace(blocked);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
