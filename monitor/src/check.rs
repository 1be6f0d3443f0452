//! `secretmon check`: what this kernel supports, what is missing, and how to
//! fix each gap, from the same feature probe the loader chooses its hooks
//! with; as text or as one JSON document.

use std::io::Write;

use serde::Serialize;

use crate::{
    coverage,
    features::{ActiveHooks, KernelFeatures, OpenHooks, Support},
    offsets, preflight,
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

    fn from_support(name: &'static str, required: bool, support: &Support) -> Self {
        let status = match support {
            Support::Yes(_) => Status::Ok,
            Support::No(_) => Status::Missing,
            Support::Unknown(_) => Status::Unknown,
        };
        item(name, required, status, support.detail())
    }
}

/// What `check` prints.
#[derive(Debug)]
pub struct Report {
    pub items: Vec<Item>,
    /// What `run --opens auto` will see opens with, when it can run.
    pub open_hooks: ActiveHooks,
}

/// The report for the running kernel.
pub fn probe() -> Report {
    report(KernelFeatures::get())
}

fn report(k: &KernelFeatures) -> Report {
    let mut items = Vec::new();
    items.push(
        if k.privileged() {
            item(
                "privileges",
                true,
                Status::Ok,
                "root or CAP_BPF+CAP_PERFMON+CAP_SYS_PTRACE",
            )
        } else {
            let names: Vec<String> = k.missing_caps.iter().map(|c| c.to_string()).collect();
            item(
                "privileges",
                true,
                Status::Missing,
                format!("missing {}", names.join(", ")),
            )
        }
        .fix("run secretmon as root (sudo)"),
    );
    items.push(
        item(
            "kernel",
            true,
            if k.kernel_supported() {
                Status::Ok
            } else {
                Status::Missing
            },
            format!("Linux {}", k.release),
        )
        .fix("upgrade to Linux >= 5.8 (ring buffer, BTF)"),
    );
    items.push(match &k.offsets {
        Ok(_) => item(
            "BTF",
            true,
            Status::Ok,
            format!("{} (all fields found)", offsets::VMLINUX_BTF),
        ),
        Err(e) => item("BTF", true, Status::Missing, e.to_string())
            .fix("use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
    });
    items.push(
        match &k.tracefs {
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
    items.push(
        Item::from_support("ring buffer", true, &k.ring_buffer).fix("upgrade to Linux >= 5.8"),
    );
    items.push(
        Item::from_support("tracepoints", true, &k.tracepoints)
            .fix("use a kernel with CONFIG_FTRACE_SYSCALLS=y and mount tracefs"),
    );
    items.push(Item::from_support("BPF LSM", false, &k.bpf_lsm).fix(preflight::lsm_fix(k)));
    items.push(Item::from_support("fentry/fexit", false, &k.fentry).fix(
        "optional: needs CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS and no lockdown refusal; \
         secretmon uses tracepoints without it",
    ));
    items.push(
        Item::from_support("saved regs", false, &k.saved_registers).fix(
            "optional: Linux >= 5.15 on x86_64; without it denied opens need enter hooks \
             and the fexit and LSM hooks are not used",
        ),
    );
    let open_hooks = k
        .open_hooks(OpenHooks::Auto)
        .ok()
        .and_then(|hooks| hooks.first().copied())
        .unwrap_or(ActiveHooks::Tracepoints);
    Report { items, open_hooks }
}

/// Whether `secretmon run` can work: every required item is there.
pub fn ready(report: &Report) -> bool {
    report
        .items
        .iter()
        .all(|i| !i.required || i.status == Status::Ok)
}

/// `check --json`: one document, `ready`, the open hooks `run` will use
/// and every item with its status, detail and fix; `true` when ready.
pub fn write_json(report: &Report, out: &mut impl Write) -> std::io::Result<bool> {
    #[derive(Serialize)]
    struct Json<'a> {
        schema: &'static str,
        ready: bool,
        opens: &'static str,
        items: &'a [Item],
    }
    let ready = ready(report);
    let json = Json {
        schema: "secretmon/check/v1",
        ready,
        opens: report.open_hooks.summary(),
        items: &report.items,
    };
    serde_json::to_writer(&mut *out, &json)?;
    writeln!(out)?;
    Ok(ready)
}

/// Print the report; `true` when every required item is present.
pub fn print(report: &Report, out: &mut impl Write) -> std::io::Result<bool> {
    let ready = ready(report);
    for it in &report.items {
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
        }
    }
    writeln!(out)?;
    if ready {
        writeln!(
            out,
            "ready: secretmon run will use {}",
            report.open_hooks.summary()
        )?;
    } else {
        writeln!(out, "not ready: fix the MISSING items above")?;
    }
    writeln!(
        out,
        "\nways to an open secret, with {}:",
        report.open_hooks.opens()
    )?;
    for way in coverage::ways(report.open_hooks) {
        writeln!(out, "{:<8} {}: {}", way.seen.as_str(), way.what, way.how)?;
    }
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::tests::debian_6_1;

    fn printed(report: &Report) -> (bool, String) {
        let mut out = Vec::new();
        let ready = print(report, &mut out).unwrap();
        (ready, String::from_utf8(out).unwrap())
    }

    #[test]
    fn report_says_ready_only_when_required_items_are_ok() {
        let ok = Report {
            items: vec![
                item("BTF", true, Status::Ok, "x"),
                item("BPF LSM", false, Status::Missing, "y"),
            ],
            open_hooks: ActiveHooks::Tracepoints,
        };
        let (ready, text) = printed(&ok);
        assert!(ready, "{text}");
        assert!(text.contains("\nready: secretmon run will use tracepoints\n"));
        let bad = Report {
            items: vec![item("tracefs", true, Status::Missing, "not mounted").fix("mount it")],
            open_hooks: ActiveHooks::Tracepoints,
        };
        let (ready, text) = printed(&bad);
        assert!(!ready);
        assert!(
            text.contains("MISSING") && text.contains("fix: mount it"),
            "{text}"
        );
    }

    #[test]
    fn the_report_names_the_hooks_the_loader_would_pick() {
        let mut k = debian_6_1();
        let (ready, text) = printed(&report(&k));
        assert!(ready, "{text}");
        assert!(
            text.contains("ready: secretmon run will use fexit:do_filp_open"),
            "{text}"
        );
        k.fentry = Support::No("load refused: EPERM".into());
        let (_, text) = printed(&report(&k));
        assert!(text.contains("will use lsm:file_open"), "{text}");
        assert!(text.contains("absent   fentry/fexit"), "{text}");
        k.saved_registers = Support::No("Linux < 5.15".into());
        let (_, text) = printed(&report(&k));
        assert!(text.contains("will use tracepoints\n"), "{text}");
    }

    #[test]
    fn the_report_states_what_the_hooks_see_and_miss() {
        let mut k = debian_6_1();
        k.fentry = Support::No("load refused: EPERM".into());
        k.bpf_lsm = Support::No("load refused: EPERM".into());
        let (_, text) = printed(&report(&k));
        assert!(
            text.contains("ways to an open secret, with tracepoints:"),
            "{text}"
        );
        assert!(text.contains("covered  open_by_handle_at: "), "{text}");
        assert!(text.contains("covered  overlay mounts"), "{text}");
        assert!(text.contains("partly   io_uring open: "), "{text}");
        assert!(
            text.contains("blind    an fd passed over a unix socket"),
            "{text}"
        );
    }
}
