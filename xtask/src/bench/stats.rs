//! Each BPF program's own run time, from the kernel's statistics
//! (`run_time_ns` and `run_cnt` of `bpftool prog show`).

use std::{
    collections::BTreeSet,
    os::fd::{FromRawFd as _, OwnedFd},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// `BPF_ENABLE_STATS` and `BPF_STATS_RUN_TIME` from `linux/bpf.h`.
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Run-time statistics are on while this lives. The same switch as
/// `sysctl kernel.bpf_stats_enabled=1`, taken with `BPF_ENABLE_STATS`
/// instead: the kernel turns it off when the fd closes, so a bench that is
/// interrupted cannot leave it on (it costs every program run a little).
pub struct StatsOn {
    _fd: OwnedFd,
}

pub fn enable() -> Result<StatsOn> {
    // `union bpf_attr` for this command is `struct { __u32 type; }`.
    let attr: u32 = BPF_STATS_RUN_TIME;
    // SAFETY: bpf(2) reads 4 bytes at `attr`, which lives across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &raw const attr,
            size_of::<u32>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_ENABLE_STATS");
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(StatsOn {
        _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
    })
}

/// One loaded program as `bpftool prog show -j` lists it. The statistics
/// are absent while they are off.
#[derive(Clone, Debug, Deserialize)]
pub struct Program {
    pub id: u32,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub run_time_ns: u64,
    #[serde(default)]
    pub run_cnt: u64,
}

/// Program types that run on the host's events: another process's
/// tracing program would add its cost to the figures.
const TRACING: [&str; 6] = [
    "tracepoint",
    "raw_tracepoint",
    "tracing",
    "kprobe",
    "lsm",
    "perf_event",
];

impl Program {
    pub fn traces(&self) -> bool {
        TRACING.contains(&self.kind.as_str())
    }
}

pub fn programs() -> Result<Vec<Program>> {
    parse_programs(&bpftool(&["prog", "show", "-j"])?)
}

fn parse_programs(json: &str) -> Result<Vec<Program>> {
    serde_json::from_str(json).context("reading `bpftool prog show -j`")
}

/// The programs that process `pid` holds (by program or link fd), from
/// `/proc/<pid>/fdinfo`: `bpftool perf show` misses programs attached
/// through a BPF link whose perf event fd was closed, as aya does.
pub fn programs_of(pid: u32) -> Result<BTreeSet<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // An fd closed since the listing has no fdinfo any more.
        if let Ok(info) = std::fs::read_to_string(entry?.path()) {
            ids.extend(prog_id(&info));
        }
    }
    Ok(ids)
}

/// The `prog_id` of one fd's fdinfo, if it is a program or a link.
fn prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))?
        .trim()
        .parse()
        .ok()
}

fn bpftool(args: &[&str]) -> Result<String> {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .context("running bpftool (cargo xtask setup --bench installs it)")?;
    if !out.status.success() {
        bail!(
            "bpftool {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What one program did between two snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    pub name: String,
    pub calls: u64,
    pub run_time_ns: u64,
}

impl Cost {
    pub fn ns_per_call(&self) -> f64 {
        self.run_time_ns as f64 / self.calls.max(1) as f64
    }
}

/// The programs among `ids` that ran between `before` and `after`, by name.
pub fn costs(before: &[Program], after: &[Program], ids: &BTreeSet<u32>) -> Vec<Cost> {
    let mut costs: Vec<Cost> = after
        .iter()
        .filter(|p| ids.contains(&p.id))
        .filter_map(|p| {
            let (cnt0, ns0) = before
                .iter()
                .find(|b| b.id == p.id)
                .map_or((0, 0), |b| (b.run_cnt, b.run_time_ns));
            let calls = p.run_cnt.saturating_sub(cnt0);
            (calls > 0).then(|| Cost {
                name: p.name.clone(),
                calls,
                run_time_ns: p.run_time_ns.saturating_sub(ns0),
            })
        })
        .collect();
    costs.sort_by_key(|c| std::cmp::Reverse(c.run_time_ns));
    costs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bpftool prog show -j` of the agent's exit program and bpftrace's, as
    /// bpftool 7.1 prints them with statistics on.
    const PROGS: &str = r#"[{"id":517,"type":"tracepoint","name":"sys_exit_openat","tag":"b11459a0e11ca14c","gpl_compatible":true,"run_time_ns":130000,"run_cnt":2000,"loaded_at":1796121303,"uid":0,"bytes_xlated":16,"jited":true,"bytes_jited":23,"bytes_memlock":4096},{"id":530,"type":"tracepoint","name":"sched_process_exit","tag":"c0b1a85fb75dc74b","gpl_compatible":true,"run_time_ns":9000,"run_cnt":3,"loaded_at":1796121310,"uid":0,"bytes_xlated":240,"jited":true,"bytes_jited":146,"bytes_memlock":4096,"map_ids":[599]}]"#;

    #[test]
    fn programs_parse_with_and_without_statistics() {
        let progs = parse_programs(PROGS).unwrap();
        assert_eq!(progs.len(), 2);
        assert_eq!((progs[0].id, progs[0].run_cnt), (517, 2000));
        let off = parse_programs(r#"[{"id":1,"type":"tracepoint","name":"x"}]"#).unwrap();
        assert_eq!((off[0].run_cnt, off[0].run_time_ns), (0, 0));
    }

    #[test]
    fn program_ids_come_from_program_and_link_fds() {
        let link = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2075\nlink_type:\tperf\nlink_id:\t428\nprog_tag:\t386357bb5b1c6de4\nprog_id:\t785\n";
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_jited:\t1\nprog_tag:\tb11459a0e11ca14c\nmemlock:\t4096\nprog_id:\t517\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        let file = "pos:\t0\nflags:\t0100000\nmnt_id:\t30\nino:\t1234\n";
        assert_eq!(prog_id(link), Some(785));
        assert_eq!(prog_id(prog), Some(517));
        assert_eq!(prog_id(file), None);
    }

    #[test]
    fn costs_are_deltas_of_the_chosen_programs_dearest_first() {
        let before = parse_programs(PROGS).unwrap();
        let mut after = before.clone();
        after[0].run_cnt += 1000;
        after[0].run_time_ns += 65_000;
        after[1].run_cnt += 10;
        after[1].run_time_ns += 150_000;
        let all = costs(&before, &after, &BTreeSet::from([517, 530]));
        assert_eq!(all[0].name, "sched_process_exit");
        assert_eq!(all[0].ns_per_call(), 15_000.0);
        assert_eq!(all[1].ns_per_call(), 65.0);
        let one = costs(&before, &after, &BTreeSet::from([517]));
        assert_eq!(one.len(), 1);
        assert!(costs(&before, &before, &BTreeSet::from([517])).is_empty());
    }
}
