//! A loopback stand-in for a Kubernetes Service in front of several
//! controller replicas: each new connection goes to a replica whose
//! `/readyz` answers 200, as kube-proxy sends traffic only to ready
//! endpoints. With leader election only the leader is ready, so dataplanes
//! pointed at this address follow the leader across failovers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::client::HttpClient;

/// One replica behind the Service.
#[derive(Clone, Copy, Debug)]
pub struct Replica {
    /// Where connections are forwarded.
    pub serve: SocketAddr,
    /// Whose `/readyz` decides whether it gets them.
    pub admin: SocketAddr,
}

/// The Service: a listener and its readiness prober.
#[derive(Debug)]
pub struct ServiceProxy {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

/// How often readiness is probed.
const PROBE_EVERY: Duration = Duration::from_millis(100);

impl ServiceProxy {
    /// Listens on 127.0.0.1 and forwards to the first ready of `replicas`.
    /// With none ready, a connection is closed at once, as a Service
    /// without ready endpoints refuses it.
    pub async fn start(replicas: Vec<Replica>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ready: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let mut tasks = JoinSet::new();

        let probed = Arc::clone(&ready);
        tasks.spawn(async move {
            let http = HttpClient::new();
            loop {
                let mut first = None;
                for r in &replicas {
                    if let Ok(a) = http.get(r.admin, "localhost", "/readyz").await
                        && a.status == 200
                    {
                        first = Some(r.serve);
                        break;
                    }
                }
                *probed.lock().unwrap_or_else(PoisonError::into_inner) = first;
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });

        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let target = *ready.lock().unwrap_or_else(PoisonError::into_inner);
                        let Some(target) = target else { continue };
                        conns.spawn(async move {
                            if let Ok(mut upstream) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, tasks })
    }

    /// The Service's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding and closes every forwarded connection.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}
