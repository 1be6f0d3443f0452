//! Where a host path is inside another mount namespace (a container's), so
//! a secret read in a container is reported at both paths.
//!
//! The watched file is known by its host path. A container sees it through
//! a bind mount (a Kubernetes secret volume, `docker -v`) or through its
//! root overlay (the image's layers and the container's upper layer). Both
//! are in the container's `/proc/<pid>/mountinfo`: a bind mount by its
//! device and the directory of that device it shows (`root`), the overlay
//! by its `upperdir`/`lowerdir` options.

use std::path::{Path, PathBuf};

use procfs::process::MountInfo;

/// `host_path` as seen in the mount namespace whose mounts are `inner`,
/// given the agent's own mounts `host`. `canonical` resolves the overlay's
/// layer directories, which runtimes name through symlinks.
pub fn inner_path(
    host: &[MountInfo],
    inner: &[MountInfo],
    host_path: &Path,
    canonical: impl Fn(&Path) -> Option<PathBuf>,
) -> Option<PathBuf> {
    bind_path(host, inner, host_path).or_else(|| overlay_path(inner, host_path, canonical))
}

/// Through a mount of the same filesystem: the host path's place on its
/// device, re-rooted at the inner mount that shows that place. The most
/// specific mount (the longest root) wins: a container's bind mount of a
/// secret over the plain view of the whole device it may also have.
fn bind_path(host: &[MountInfo], inner: &[MountInfo], host_path: &Path) -> Option<PathBuf> {
    let outer = host
        .iter()
        .filter(|m| host_path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())?;
    let on_device = Path::new(&outer.root).join(host_path.strip_prefix(&outer.mount_point).ok()?);
    inner
        .iter()
        .filter(|m| m.majmin == outer.majmin && on_device.starts_with(&m.root))
        .max_by_key(|m| m.root.len())
        .and_then(|m| Some(m.mount_point.join(on_device.strip_prefix(&m.root).ok()?)))
}

/// Through an overlay (the container's root): a host path inside one of its
/// layers is at the same place below the overlay's mount point.
fn overlay_path(
    inner: &[MountInfo],
    host_path: &Path,
    canonical: impl Fn(&Path) -> Option<PathBuf>,
) -> Option<PathBuf> {
    inner
        .iter()
        .filter(|m| m.fs_type == "overlay")
        .find_map(|m| {
            let option = |key: &str| m.super_options.get(key).cloned().flatten();
            let upper = option("upperdir");
            let lower = option("lowerdir").unwrap_or_default();
            upper
                .iter()
                .map(String::as_str)
                .chain(lower.split(':'))
                .filter(|layer| layer.starts_with('/'))
                .find_map(|layer| {
                    let layer = Path::new(layer);
                    let rest = match host_path.strip_prefix(layer) {
                        Ok(rest) => rest.to_path_buf(),
                        Err(_) => host_path
                            .strip_prefix(canonical(layer)?)
                            .ok()?
                            .to_path_buf(),
                    };
                    Some(m.mount_point.join(rest))
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(lines: &[&str]) -> Vec<MountInfo> {
        lines
            .iter()
            .map(|l| MountInfo::from_line(l).unwrap())
            .collect()
    }

    const HOST: &[&str] = &[
        "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw",
        "30 22 0:26 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755",
        "41 22 0:40 / /var/lib/kubelet/pods/7d3c/volumes/kubernetes.io~secret/db rw shared:20 - tmpfs tmpfs rw",
    ];

    #[test]
    fn bind_mounted_file_and_secret_volume() {
        let host = mounts(HOST);
        let container = mounts(&[
            "500 400 0:90 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/9f/diff,workdir=/var/lib/docker/overlay2/9f/work",
            "501 500 253:1 /srv/app/config /etc/app rw,relatime - ext4 /dev/vda1 rw",
            "502 500 0:40 / /run/secrets/db ro,relatime - tmpfs tmpfs rw",
        ]);
        let none = |_: &Path| None;
        assert_eq!(
            inner_path(&host, &container, Path::new("/srv/app/config/.env"), none),
            Some(PathBuf::from("/etc/app/.env"))
        );
        assert_eq!(
            inner_path(
                &host,
                &container,
                Path::new("/var/lib/kubelet/pods/7d3c/volumes/kubernetes.io~secret/db/password"),
                none
            ),
            Some(PathBuf::from("/run/secrets/db/password"))
        );
        // Not visible in the container at all.
        assert_eq!(
            inner_path(&host, &container, Path::new("/root/.aws/credentials"), none),
            None
        );
    }

    #[test]
    fn overlay_layers() {
        let host = mounts(HOST);
        let container = mounts(&[
            "500 400 0:90 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/9f/diff,workdir=/var/lib/docker/overlay2/9f/work",
        ]);
        let upper = Path::new("/var/lib/docker/overlay2/9f/diff/root/.aws/credentials");
        assert_eq!(
            inner_path(&host, &container, upper, |_| None),
            Some(PathBuf::from("/root/.aws/credentials"))
        );
        // Lower layers are named by symlinks (l/ABC -> ../1a/diff).
        let lower = Path::new("/var/lib/docker/overlay2/1a/diff/etc/ssl/private/key.pem");
        let resolve = |p: &Path| {
            (p == Path::new("/var/lib/docker/overlay2/l/ABC"))
                .then(|| PathBuf::from("/var/lib/docker/overlay2/1a/diff"))
        };
        assert_eq!(
            inner_path(&host, &container, lower, resolve),
            Some(PathBuf::from("/etc/ssl/private/key.pem"))
        );
    }

    #[test]
    fn chroot_like_plain_view_is_the_identity() {
        let host = mounts(HOST);
        assert_eq!(
            inner_path(&host, &host, Path::new("/etc/shadow"), |_| None),
            Some(PathBuf::from("/etc/shadow"))
        );
    }
}
