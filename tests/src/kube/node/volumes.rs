//! A pod's volumes as files on the host, as the kubelet writes them:
//! Secrets, ConfigMaps, the downward API, projected ServiceAccount tokens
//! (requested through TokenRequest with the pod's audience and expiry,
//! bound to the pod) and emptyDirs. Each lands in its own directory; the
//! containers see them at their mountPaths (see `super::pod`).
//!
//! Tokens are written once, at pod start: the kubelet renews them at 80 %
//! of their lifetime (at least 10 minutes), longer than a test runs.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};

/// A directory (or file) of the host shown to a container at `target`.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The host path.
    pub source: PathBuf,
    /// The container's mountPath.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Writes every volume of `pod` under `dir/<volume>`; the directory of each
/// volume by name. Fails (the pod stays pending, the caller retries) while
/// a Secret or ConfigMap it needs is missing.
pub async fn materialize(
    client: &kube::Client,
    pod: &Pod,
    dir: &Path,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok());
    let mut out = BTreeMap::new();
    for vol in spec.volumes.iter().flatten() {
        let vdir = dir.join(&vol.name);
        if vdir.exists() {
            std::fs::remove_dir_all(&vdir)?;
        }
        std::fs::create_dir_all(&vdir)?;
        let files = volume_files(client, pod, ns, vol)
            .await
            .with_context(|| format!("volume {:?}", vol.name))?;
        match files {
            Some((files, default_mode)) => {
                for (path, (bytes, mode)) in files {
                    write_file(&vdir, &path, &bytes, mode.unwrap_or(default_mode), fs_group)?;
                }
                chown_group(&vdir, fs_group)?;
            }
            None => {
                // emptyDir: writable by anyone in the pod, as the kubelet's.
                std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o777))?;
            }
        }
        out.insert(vol.name.clone(), vdir);
    }
    Ok(out)
}

/// File contents and modes by relative path.
type Files = BTreeMap<String, (Vec<u8>, Option<u32>)>;

/// The files of one volume and its default mode; `None` for an emptyDir.
async fn volume_files(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    vol: &Volume,
) -> anyhow::Result<Option<(Files, u32)>> {
    let mode = |m: Option<i32>| m.map(|m| m as u32).unwrap_or(0o644);
    if vol.empty_dir.is_some() {
        return Ok(None);
    }
    let mut files = Files::new();
    if let Some(s) = &vol.secret {
        let name = s
            .secret_name
            .as_deref()
            .context("secret volume without secretName")?;
        secret_files(client, ns, name, s.items.as_deref(), s.optional, &mut files).await?;
        return Ok(Some((files, mode(s.default_mode))));
    }
    if let Some(c) = &vol.config_map {
        config_map_files(
            client,
            ns,
            &c.name,
            c.items.as_deref(),
            c.optional,
            &mut files,
        )
        .await?;
        return Ok(Some((files, mode(c.default_mode))));
    }
    if let Some(d) = &vol.downward_api {
        downward_files(pod, d.items.as_deref().unwrap_or_default(), &mut files)?;
        return Ok(Some((files, mode(d.default_mode))));
    }
    if let Some(p) = &vol.projected {
        for src in p.sources.iter().flatten() {
            if let Some(s) = &src.secret {
                secret_files(
                    client,
                    ns,
                    &s.name,
                    s.items.as_deref(),
                    s.optional,
                    &mut files,
                )
                .await?;
            } else if let Some(c) = &src.config_map {
                config_map_files(
                    client,
                    ns,
                    &c.name,
                    c.items.as_deref(),
                    c.optional,
                    &mut files,
                )
                .await?;
            } else if let Some(d) = &src.downward_api {
                downward_files(pod, d.items.as_deref().unwrap_or_default(), &mut files)?;
            } else if let Some(t) = &src.service_account_token {
                let token = request_token(
                    client,
                    pod,
                    ns,
                    t.audience.as_deref(),
                    t.expiration_seconds.unwrap_or(3600),
                )
                .await?;
                files.insert(t.path.clone(), (token.into_bytes(), None));
            } else {
                bail!("a projected source this node stand-in does not support");
            }
        }
        return Ok(Some((files, mode(p.default_mode))));
    }
    bail!(
        "a volume type this node stand-in does not support (secret, configMap, downwardAPI, projected, emptyDir)"
    )
}

async fn secret_files(
    client: &kube::Client,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    files: &mut Files,
) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let Some(secret) = api.get_opt(name).await? else {
        if optional == Some(true) {
            return Ok(());
        }
        bail!("Secret {ns}/{name} not found");
    };
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    pick(&data, items, &format!("Secret {ns}/{name}"), files)
}

async fn config_map_files(
    client: &kube::Client,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    files: &mut Files,
) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let Some(cm) = api.get_opt(name).await? else {
        if optional == Some(true) {
            return Ok(());
        }
        bail!("ConfigMap {ns}/{name} not found");
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    pick(&data, items, &format!("ConfigMap {ns}/{name}"), files)
}

/// Every key as a file, or only `items` under their paths.
fn pick(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    what: &str,
    files: &mut Files,
) -> anyhow::Result<()> {
    match items {
        None => {
            for (k, v) in data {
                files.insert(k.clone(), (v.clone(), None));
            }
        }
        Some(items) => {
            for item in items {
                let v = data
                    .get(&item.key)
                    .with_context(|| format!("{what} has no key {:?}", item.key))?;
                files.insert(item.path.clone(), (v.clone(), item.mode.map(|m| m as u32)));
            }
        }
    }
    Ok(())
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    files: &mut Files,
) -> anyhow::Result<()> {
    for item in items {
        let field = item
            .field_ref
            .as_ref()
            .context("downwardAPI: only fieldRef items are supported")?;
        let value = super::pod::field_value(pod, &field.field_path)?;
        files.insert(
            item.path.clone(),
            (value.into_bytes(), item.mode.map(|m| m as u32)),
        );
    }
    Ok(())
}

/// A token for the pod's ServiceAccount, bound to the pod, as the kubelet
/// asks for a projected token.
async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    audience: Option<&str>,
    expiration_seconds: i64,
) -> anyhow::Result<String> {
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let resp: TokenRequest = api
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await
        .with_context(|| format!("TokenRequest for ServiceAccount {ns}/{sa}"))?;
    resp.status
        .map(|s| s.token)
        .context("TokenRequest answered without a token")
}

fn write_file(
    dir: &Path,
    rel: &str,
    bytes: &[u8],
    mode: u32,
    fs_group: Option<u32>,
) -> anyhow::Result<()> {
    if rel.split('/').any(|c| c == ".." || c.is_empty()) {
        bail!("bad path {rel:?} in a volume");
    }
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    if let Some(g) = fs_group {
        std::os::unix::fs::chown(&path, None, Some(g))?;
    }
    Ok(())
}

fn chown_group(dir: &Path, fs_group: Option<u32>) -> anyhow::Result<()> {
    if let Some(g) = fs_group {
        std::os::unix::fs::chown(dir, None, Some(g))?;
    }
    Ok(())
}
