//! `secretmon check`: what this kernel supports, what is missing, and how to
//! fix each gap, as text or as one JSON document.

use std::{io::Write, path::Path};

use serde::Serialize;

use aya::{
    maps::MapType,
    programs::{LsmAttachType, ProgramType},
    sys::{is_map_supported, is_program_supported},
};

use crate::{
    offsets,
    preflight::{self, LsmGap, bpf_lsm_listed},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Missing,
    Unknown,
}

#[derive(Debug, Serialize)]
pub struct Item {
    pub name: &'static str,
    /// Without it the agent cannot run.
    pub required: bool,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

fn item(name: &'static str, required: bool, status: Status, detail: impl Into<String>) -> Item {
    Item {
        name,
        required,
        status,
        detail: detail.into(),
        fix: None,
    }
}

impl Item {
    fn fix(mut self, fix: impl Into<String>) -> Self {
        if self.status != Status::Ok {
            self.fix = Some(fix.into());
        }
        self
    }
}

/// What an optional item's fix says besides its own.
const OPTIONAL: &str = "optional: secretmon uses tracepoints without it";

/// Probe everything. Probes that load programs need privileges; without
/// them they say `unknown` rather than a misleading `missing`.
pub fn probe() -> Vec<Item> {
    let privileged = preflight::missing_caps().is_empty();
    let mut items = Vec::new();

    items.push(
        if privileged {
            item(
                "privileges",
                true,
                Status::Ok,
                "root or CAP_BPF+CAP_PERFMON+CAP_SYS_PTRACE",
            )
        } else {
            let names: Vec<String> = preflight::missing_caps()
                .iter()
                .map(|c| c.to_string())
                .collect();
            item(
                "privileges",
                true,
                Status::Missing,
                format!("missing {}", names.join(", ")),
            )
        }
        .fix("run secretmon as root (sudo)"),
    );

    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let new_enough = kernel_at_least(&release, 5, 8);
    items.push(
        item(
            "kernel",
            true,
            if new_enough {
                Status::Ok
            } else {
                Status::Missing
            },
            format!("Linux {release}"),
        )
        .fix("upgrade to Linux >= 5.8 (ring buffer, BTF)"),
    );

    let btf = Path::new(offsets::VMLINUX_BTF);
    items.push(match offsets::from_btf_file(btf) {
        Ok(_) => item(
            "BTF",
            true,
            Status::Ok,
            format!("{} (all fields found)", btf.display()),
        ),
        Err(e) => item("BTF", true, Status::Missing, e.to_string())
            .fix("use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
    });

    let tracefs = preflight::tracefs_dir();
    items.push(
        match &tracefs {
            Some(d) => item(
                "tracefs",
                true,
                Status::Ok,
                format!("mounted at {}", d.display()),
            ),
            None => item("tracefs", true, Status::Missing, "not mounted"),
        }
        .fix(preflight::TRACEFS_FIX),
    );

    let ring = if privileged {
        match is_map_supported(MapType::RingBuf) {
            Ok(true) => item("ring buffer", true, Status::Ok, "BPF_MAP_TYPE_RINGBUF"),
            Ok(false) => item(
                "ring buffer",
                true,
                Status::Missing,
                "BPF_MAP_TYPE_RINGBUF refused",
            ),
            Err(e) => item(
                "ring buffer",
                true,
                Status::Unknown,
                format!("probe failed: {}", crate::errors::error_text(&e)),
            ),
        }
    } else {
        item("ring buffer", true, Status::Unknown, "probing needs root")
    };
    items.push(ring.fix("upgrade to Linux >= 5.8"));

    let events = tracefs.map(|d| d.join("events"));
    let has_tp = |cat: &str, name: &str| {
        events
            .as_ref()
            .is_some_and(|e| e.join(cat).join(name).is_dir())
    };
    let tp_names = ["syscalls/sys_exit_openat", "sched/sched_process_exec"];
    let tps_present =
        has_tp("syscalls", "sys_exit_openat") && has_tp("sched", "sched_process_exec");
    let tp = match (
        privileged.then(|| is_program_supported(ProgramType::TracePoint)),
        tps_present,
    ) {
        (Some(Ok(true)), true) => item("tracepoints", true, Status::Ok, tp_names.join(", ")),
        (Some(Ok(true)), false) => item(
            "tracepoints",
            true,
            Status::Missing,
            "syscall tracepoints absent (CONFIG_FTRACE_SYSCALLS) or tracefs unmounted",
        ),
        (Some(Ok(false)), _) => item(
            "tracepoints",
            true,
            Status::Missing,
            "tracepoint programs refused",
        ),
        (Some(Err(e)), _) => item(
            "tracepoints",
            true,
            Status::Unknown,
            format!("probe failed: {}", crate::errors::error_text(&e)),
        ),
        (None, _) => item("tracepoints", true, Status::Unknown, "probing needs root"),
    };
    items.push(tp.fix("use a kernel with CONFIG_FTRACE_SYSCALLS=y and mount tracefs"));

    let lsm = match (privileged, bpf_lsm_listed()) {
        (false, _) => item("BPF LSM", false, Status::Unknown, "probing needs root")
            .fix("run `secretmon check` as root to probe it"),
        (true, Err((gap, why))) => item("BPF LSM", false, Status::Missing, why).fix(gap.fix()),
        (true, Ok(())) => match is_program_supported(ProgramType::Lsm(LsmAttachType::Mac)) {
            Ok(true) => item("BPF LSM", false, Status::Ok, "active"),
            Ok(false) => item("BPF LSM", false, Status::Missing, "program type refused"),
            Err(e) => item(
                "BPF LSM",
                false,
                Status::Missing,
                format!("load refused: {}", crate::errors::error_text(&e)),
            ),
        }
        .fix(LsmGap::Refused.fix()),
    };
    items.push(lsm);

    let fentry = if privileged {
        match is_program_supported(ProgramType::Tracing) {
            Ok(true) => item("fentry/fexit", false, Status::Ok, "BPF trampolines load"),
            Ok(false) => item(
                "fentry/fexit",
                false,
                Status::Missing,
                "refused by this kernel",
            ),
            Err(e) => item(
                "fentry/fexit",
                false,
                Status::Missing,
                format!("load refused: {}", crate::errors::error_text(&e)),
            ),
        }
    } else {
        item("fentry/fexit", false, Status::Unknown, "probing needs root")
    };
    items.push(fentry.fix("needs CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS and no lockdown refusal"));
    items
}

/// What `secretmon run --opens auto` will see opens with, from the probes:
/// the trampoline hooks also need `bpf_task_pt_regs` (5.15+).
fn open_hooks(items: &[Item]) -> &'static str {
    let ok = |name| {
        items
            .iter()
            .any(|i| i.name == name && i.status == Status::Ok)
    };
    let recent = items
        .iter()
        .find(|i| i.name == "kernel")
        .and_then(|i| i.detail.strip_prefix("Linux "))
        .is_some_and(|release| kernel_at_least(release, 5, 15));
    match (recent, ok("fentry/fexit"), ok("BPF LSM")) {
        (true, true, _) => {
            "fexit:do_filp_open for every open (io_uring's and denied ones too), no syscall tracepoints"
        }
        (true, false, true) => {
            "lsm:file_open for opens (io_uring's too), tracepoints for denied opens"
        }
        _ => "tracepoints",
    }
}

/// `major.minor` of a release string such as `6.18.44-fc-v669`.
pub fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let ma = parts.next().and_then(|p| p.parse::<u32>().ok());
    let mi = parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((ma, mi), (Some(a), Some(b)) if (a, b) >= (major, minor))
}

/// Whether `secretmon run` can work: every required item is there.
pub fn ready(items: &[Item]) -> bool {
    items.iter().all(|i| !i.required || i.status == Status::Ok)
}

/// `check --json`: one document, `ready`, the open hooks `run` will use
/// and every item with its status, detail and fix.
pub fn write_json(items: &[Item], out: &mut impl Write) -> std::io::Result<bool> {
    #[derive(Serialize)]
    struct Report<'a> {
        schema: &'static str,
        ready: bool,
        opens: &'static str,
        items: &'a [Item],
    }
    let ready = ready(items);
    let report = Report {
        schema: "secretmon/check/v1",
        ready,
        opens: open_hooks(items),
        items,
    };
    serde_json::to_writer(&mut *out, &report)?;
    writeln!(out)?;
    Ok(ready)
}

/// Print the report; `true` when every required item is present.
pub fn print(items: &[Item], out: &mut impl Write) -> std::io::Result<bool> {
    let ready = ready(items);
    for it in items {
        let status = match it.status {
            Status::Ok => "ok",
            Status::Missing if it.required => "MISSING",
            Status::Missing => "absent",
            Status::Unknown => "unknown",
        };
        let kind = if it.required { "required" } else { "optional" };
        writeln!(out, "{status:<8} {:<13} {kind:<9} {}", it.name, it.detail)?;
        if let Some(fix) = &it.fix {
            writeln!(out, "{:<8} {:<13} {:<9} fix: {fix}", "", "", "")?;
            if !it.required {
                writeln!(out, "{:<8} {:<13} {:<9} ({OPTIONAL})", "", "", "")?;
            }
        }
    }
    let path = open_hooks(items);
    writeln!(out)?;
    if ready {
        writeln!(out, "ready: secretmon run will use {path}")?;
    } else {
        writeln!(out, "not ready: fix the MISSING items above")?;
    }
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert!(kernel_at_least("6.18.44-fc-v669", 5, 8));
        assert!(kernel_at_least("5.8.0", 5, 8));
        assert!(!kernel_at_least("5.4.0-150-generic", 5, 8));
        assert!(!kernel_at_least("garbage", 5, 8));
        assert!(kernel_at_least("10.0", 5, 8));
    }

    #[test]
    fn report_says_ready_only_when_required_items_are_ok() {
        let ok = vec![
            item("BTF", true, Status::Ok, "x"),
            item("BPF LSM", false, Status::Missing, "y"),
        ];
        let mut out = Vec::new();
        assert!(print(&ok, &mut out).unwrap());
        let bad = vec![item("tracefs", true, Status::Missing, "not mounted").fix("mount it")];
        let mut out = Vec::new();
        assert!(!print(&bad, &mut out).unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("MISSING") && text.contains("fix: mount it"),
            "{text}"
        );
    }

    #[test]
    fn json_has_every_item_and_the_verdict() {
        let items = vec![
            item("kernel", true, Status::Ok, "Linux 6.1.0"),
            item("BPF LSM", false, Status::Missing, "refused").fix(LsmGap::Refused.fix()),
        ];
        let mut out = Vec::new();
        assert!(write_json(&items, &mut out).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["schema"], "secretmon/check/v1");
        assert_eq!(v["ready"], true);
        assert_eq!(v["opens"], "tracepoints");
        assert_eq!(v["items"][0]["status"], "ok");
        assert_eq!(v["items"][0]["fix"], serde_json::Value::Null);
        assert_eq!(v["items"][1]["status"], "missing");
        assert_eq!(v["items"][1]["required"], false);
        assert_eq!(v["items"][1]["fix"], LsmGap::Refused.fix());
    }

    #[test]
    fn open_hooks_prefer_fexit_then_lsm_on_5_15_and_later() {
        let with = |release: &str, fexit, lsm| {
            let status = |ok| if ok { Status::Ok } else { Status::Missing };
            open_hooks(&[
                item("kernel", true, Status::Ok, format!("Linux {release}")),
                item("fentry/fexit", false, status(fexit), "x"),
                item("BPF LSM", false, status(lsm), "x"),
            ])
        };
        assert!(with("6.1.0-56-cloud-amd64", true, true).starts_with("fexit:do_filp_open"));
        assert!(with("6.1.0", false, true).starts_with("lsm:file_open"));
        assert_eq!(with("6.18.44-fc-v669", false, false), "tracepoints");
        // No bpf_task_pt_regs before 5.15: the trampoline hooks are not used.
        assert_eq!(with("5.10.0-30-amd64", true, true), "tracepoints");
    }
}
