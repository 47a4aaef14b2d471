//! Service names for pods without cluster DNS or kube-proxy: each pod's
//! `/etc/hosts` (a file of the node, bind-mounted) maps
//! `<service>.<namespace>.svc[.cluster.local]` (and `<service>` within the
//! pod's namespace) to the address of a ready endpoint of that Service,
//! from the EndpointSlices the real endpointslice controller publishes.
//! The files are rewritten in place when slices change, so a process
//! resolving the name again (a dataplane reconnecting) finds the current
//! endpoint. Ports are not translated: a Service stands for its pods'
//! own ports (the chart's controller Service maps 8090 to 8090).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::discovery::v1::EndpointSlice;

#[derive(Debug, Default)]
struct State {
    /// Ready addresses by (namespace, slice name), with the slice's Service.
    slices: BTreeMap<(String, String), (String, Vec<String>)>,
    /// Registered pods' hosts files by pod uid: (file, namespace, name, address).
    pods: BTreeMap<String, (PathBuf, String, String, Ipv4Addr)>,
}

/// The hosts files of the node's pods and what they say.
#[derive(Debug, Default)]
pub struct Hosts(Mutex<State>);

impl Hosts {
    /// Writes the pod's hosts file and keeps it current from now on.
    pub fn register(
        &self,
        uid: &str,
        file: &Path,
        ns: &str,
        name: &str,
        ip: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        st.pods.insert(
            uid.to_string(),
            (file.to_path_buf(), ns.to_string(), name.to_string(), ip),
        );
        write(&st, file, ns, name, ip)
    }

    /// Forgets a pod.
    pub fn unregister(&self, uid: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pods
            .remove(uid);
    }

    /// A slice was added or changed (`deleted`: removed).
    pub fn slice(&self, slice: &EndpointSlice, deleted: bool) {
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        let name = slice.metadata.name.clone().unwrap_or_default();
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name").cloned());
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (ns, name);
        match service {
            Some(service) if !deleted => {
                let mut ready: Vec<String> = slice
                    .endpoints
                    .iter()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .flat_map(|e| e.addresses.iter().cloned())
                    .collect();
                ready.sort();
                if st.slices.get(&key).map(|(_, r)| r) == Some(&ready) {
                    return;
                }
                st.slices.insert(key, (service, ready));
            }
            _ => {
                if st.slices.remove(&key).is_none() {
                    return;
                }
            }
        }
        for (file, ns, name, ip) in st.pods.values() {
            let _ = write(&st, file, ns, name, *ip);
        }
    }
}

/// Rewrites `file` in place (same inode: the bind mount sees it).
fn write(st: &State, file: &Path, pod_ns: &str, pod: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let mut text = format!("127.0.0.1 localhost\n::1 localhost\n{ip} {pod}\n");
    let mut services: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for ((ns, _), (svc, ready)) in &st.slices {
        if let Some(first) = ready.first() {
            services.entry((ns, svc)).or_insert(first);
        }
    }
    for ((ns, svc), addr) in services {
        text.push_str(&format!(
            "{addr} {svc}.{ns}.svc {svc}.{ns}.svc.cluster.local"
        ));
        if ns == pod_ns {
            text.push_str(&format!(" {svc}"));
        }
        text.push('\n');
    }
    std::fs::write(file, text)?;
    Ok(())
}
