//! The ways a process can come to hold an open file of a secret, and which
//! of them the kernel side sees with the hooks in use: what `check` and the
//! README state, so that a gap is a stated blind spot, not a surprise.

use crate::features::ActiveHooks;

/// Whether a way to a secret is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Reported as a read of the secret (capture tests, and the VM tests for
    /// the hooks this machine refuses).
    Covered,
    /// Something is reported, not the read itself.
    Partly,
    /// Not reported: a stated blind spot.
    Blind,
}

impl Seen {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Covered => "covered",
            Self::Partly => "partly",
            Self::Blind => "blind",
        }
    }
}

/// One way to an open file of a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Way {
    pub what: &'static str,
    pub seen: Seen,
    /// How it is seen, or why not.
    pub how: &'static str,
}

const fn way(what: &'static str, seen: Seen, how: &'static str) -> Way {
    Way { what, seen, how }
}

/// Every way this project knows of, as seen with `hooks`.
pub fn ways(hooks: ActiveHooks) -> Vec<Way> {
    use Seen::{Blind, Covered, Partly};
    let mut all = vec![
        way(
            "open, openat, openat2, creat by any path",
            Covered,
            "relative names, dirfds, symlinks, hard links, bind mounts and other mount \
             namespaces reach the same (device, inode)",
        ),
        way(
            "open_by_handle_at",
            Covered,
            match hooks {
                ActiveHooks::Lsm => "the file_open LSM hook",
                ActiveHooks::Fexit | ActiveHooks::Tracepoints => {
                    "its own exit tracepoint (do_filp_open does not see it)"
                }
            },
        ),
        way(
            "overlay mounts (containers' image layers)",
            Covered,
            "the layer's file behind the overlay file is looked up, lower and upper layers; \
             reported for the secret where it is watched",
        ),
        way(
            "reopen through /proc/<pid>/fd/N",
            Covered,
            "the magic link resolves to the file itself",
        ),
    ];
    all.push(match hooks {
        ActiveHooks::Fexit | ActiveHooks::Lsm => way(
            "io_uring open",
            Covered,
            "the hook inside the kernel's open sees it (access.via = io_uring)",
        ),
        ActiveHooks::Tracepoints => way(
            "io_uring open",
            Partly,
            "the submitting process is reported once (io_uring_open), not the read",
        ),
    });
    all.extend([
        way(
            "an fd inherited across fork or exec",
            Blind,
            "the opener's read is reported, not the inheritor's use",
        ),
        way(
            "an fd passed over a unix socket (SCM_RIGHTS) or taken with pidfd_getfd",
            Blind,
            "the opener's read is reported, not the receiver's",
        ),
        way(
            "dup, mmap, sendfile, splice, copy_file_range of an open fd",
            Blind,
            "they need no new open; the open before them is reported, once",
        ),
        way(
            "fanotify listeners' event fds",
            Blind,
            "the kernel opens the file for the listener (CAP_SYS_ADMIN) through no hooked \
             path; the file_open LSM hook may see it (untested: no BPF LSM to test on)",
        ),
        way(
            "copies (cp, a memfd, a tmpfs file)",
            Blind,
            "the read of the original is reported; a copy is watched only once the \
             inventory or a name rule finds it",
        ),
        way(
            "raw block device reads and kernel-internal readers (nfsd, loop devices)",
            Blind,
            "no file of the secret is opened",
        ),
    ]);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_depends_on_the_hooks_and_the_holes_are_closed() {
        let seen = |hooks, what: &str| {
            ways(hooks)
                .into_iter()
                .find(|w| w.what.starts_with(what))
                .map(|w| w.seen)
                .unwrap()
        };
        assert_eq!(seen(ActiveHooks::Tracepoints, "io_uring"), Seen::Partly);
        assert_eq!(seen(ActiveHooks::Fexit, "io_uring"), Seen::Covered);
        assert_eq!(seen(ActiveHooks::Lsm, "io_uring"), Seen::Covered);
        for hooks in [
            ActiveHooks::Fexit,
            ActiveHooks::Lsm,
            ActiveHooks::Tracepoints,
        ] {
            assert_eq!(seen(hooks, "open_by_handle_at"), Seen::Covered);
            assert_eq!(seen(hooks, "overlay"), Seen::Covered);
        }
    }
}
