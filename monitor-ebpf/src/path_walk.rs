//! A file's path, walked in the kernel from its dentry up through the
//! mounts to the root of the mount namespace, as `d_path` would give it
//! (which tracepoints may not call).

use monitor_common::{COMPONENT_LEN, PATH_COMPONENTS, WalkedPath};

use crate::kernel::Path;

/// Write `path`'s components into `p`, innermost first. A walk that does
/// not reach the root, or a name cut to fit, sets `p.truncated`.
///
/// # Safety
/// `p` points into a live reservation, with `depth` and `truncated` zero.
#[inline(never)]
pub unsafe fn walk_path(path: Path, p: *mut WalkedPath) {
    let (mut dentry, mut vfsmnt) = (path.dentry, path.mnt);
    // The depth lives in the event, read and written volatile: a value the
    // verifier cannot know keeps it from tracking every (turn, depth) pair.
    let depth = unsafe { &raw mut (*p).depth };
    // Mount crossings take a turn without a component; bound both.
    for _ in 0..(PATH_COMPONENTS + 8) {
        let Ok(mnt_root) = vfsmnt.root() else {
            break;
        };
        if dentry == mnt_root {
            let mnt = vfsmnt.mount();
            let Ok(parent) = mnt.parent() else {
                break;
            };
            if parent == mnt {
                // The root of the namespace: the path is whole.
                return;
            }
            let Ok(mountpoint) = mnt.mountpoint() else {
                break;
            };
            dentry = mountpoint;
            vfsmnt = parent.vfsmount();
            continue;
        }
        let Ok(parent) = dentry.parent() else {
            break;
        };
        let d = unsafe { core::ptr::read_volatile(depth) } as usize;
        if parent == dentry || d >= PATH_COMPONENTS {
            break;
        }
        let Ok(name) = dentry.name() else {
            break;
        };
        let slot = unsafe { &mut (*p).components[d & (PATH_COMPONENTS - 1)] };
        if !matches!(name.copy_to(slot), Ok(n) if n < COMPONENT_LEN - 1) {
            unsafe { (*p).truncated = 1 };
        }
        unsafe { core::ptr::write_volatile(depth, d as u32 + 1) };
        dentry = parent;
    }
    unsafe { (*p).truncated = 1 };
}
