//! A reload's new set of outputs, swapped in at one point of the event
//! loop. What is the same as before is carried over as it runs; what is new
//! or changed is started off the loop beforehand; what is gone or changed
//! writes out its queue and stops off the loop afterwards. An event routed
//! before the swap goes to the old set, one routed after it to the new: none
//! is dropped or written twice. A new output that writes where a replaced
//! one wrote (the same file, stdout, or the same spool, which is named by
//! the output) opens it only once that one has written out its queue and
//! let go, so that no two writers share it; its events wait in its queue.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
};

use super::{
    Context, Handle, Outputs, Sender, Target, config::Destination, config::OutputSpec, launch,
    start_one,
};
use crate::{event::OutputChanges, metrics::Metrics};

/// Where an output writes: no two outputs write to one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    Stdout,
    File(PathBuf),
    /// A network output's spool, named by the output.
    Spool(String),
}

fn resource(spec: &OutputSpec) -> Resource {
    match &spec.destination {
        Destination::Stdout => Resource::Stdout,
        Destination::File(path) => Resource::File(path.clone()),
        Destination::Syslog(_) | Destination::Http(_) => Resource::Spool(spec.name.clone()),
    }
}

/// How the running outputs become the configured ones.
#[derive(Debug, PartialEq)]
struct Plan {
    /// In the new order: carried over (by name) or started.
    outputs: Vec<Step>,
    /// Running outputs that stop without a successor on their resource.
    stopped: Vec<String>,
    changes: OutputChanges,
}

#[derive(Debug, PartialEq)]
enum Step {
    Keep(String),
    /// Started once the named running outputs (that wrote where it writes)
    /// have stopped.
    Start(Box<OutputSpec>, Vec<String>),
}

fn plan(running: &[OutputSpec], new: &[OutputSpec]) -> Plan {
    let mut changes = OutputChanges::default();
    let kept = |spec: &OutputSpec| running.contains(spec);
    let mut outputs = Vec::with_capacity(new.len());
    let mut successors = Vec::new();
    for spec in new {
        if kept(spec) {
            outputs.push(Step::Keep(spec.name.clone()));
            continue;
        }
        match running.iter().any(|r| r.name == spec.name) {
            true => changes.changed.push(spec.name.clone()),
            false => changes.added.push(spec.name.clone()),
        }
        let predecessors: Vec<String> = running
            .iter()
            .filter(|r| !new.contains(r) && resource(r) == resource(spec))
            .map(|r| r.name.clone())
            .filter(|name| !successors.contains(name))
            .collect();
        successors.extend(predecessors.iter().cloned());
        outputs.push(Step::Start(Box::new(spec.clone()), predecessors));
    }
    for r in running {
        if !new.iter().any(|n| n.name == r.name) {
            changes.removed.push(r.name.clone());
        }
    }
    let stopped = running
        .iter()
        .filter(|r| !new.contains(r) && !successors.contains(&r.name))
        .map(|r| r.name.clone())
        .collect();
    Plan {
        outputs,
        stopped,
        changes,
    }
}

/// The new outputs, started as far as they can be before the swap.
pub struct Staged {
    outputs: Vec<Staging>,
    stopped: Vec<String>,
    changes: OutputChanges,
}

enum Staging {
    Keep(String),
    Running(Handle),
    /// Opens its target once `predecessors` stopped; its sender is made.
    After {
        spec: OutputSpec,
        sender: Option<Sender>,
        predecessors: Vec<String>,
    },
}

/// Running outputs that a reload replaced, until they have written out
/// their queues.
#[derive(Default)]
pub struct Retiring {
    count: Mutex<usize>,
    done: Condvar,
}

impl Retiring {
    fn add(&self, n: usize) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += n;
    }

    fn finished(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.done.notify_all();
    }

    /// Block until none is left.
    pub fn wait(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 {
            count = self.done.wait(count).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What a reload needs of the running outputs, to stage the new ones off
/// the event loop.
pub struct Stager {
    running: Vec<OutputSpec>,
    context: Context,
    retiring: Arc<Retiring>,
}

impl Stager {
    /// Start what `new` adds or changes (blocking: files, spools, TLS
    /// settings). An output that cannot start is an error, and those
    /// started so far are closed: the running ones stay.
    pub fn stage(self, new: Vec<OutputSpec>) -> Result<Staged, super::OutputError> {
        // The last reload's replaced outputs first let go of their files
        // and spools.
        self.retiring.wait();
        let plan = plan(&self.running, &new);
        let mut outputs = Vec::with_capacity(plan.outputs.len());
        for step in plan.outputs {
            let staging = match step {
                Step::Keep(name) => Ok(Staging::Keep(name)),
                Step::Start(spec, predecessors) if predecessors.is_empty() => {
                    start_one(*spec, &self.context).map(Staging::Running)
                }
                Step::Start(spec, predecessors) => {
                    Sender::for_output(&spec).map(|sender| Staging::After {
                        spec: *spec,
                        sender,
                        predecessors,
                    })
                }
            };
            match staging {
                Ok(s) => outputs.push(s),
                Err(e) => {
                    for s in outputs {
                        if let Staging::Running(h) = s {
                            retire(h, Some(&self.context.metrics));
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(Staged {
            outputs,
            stopped: plan.stopped,
            changes: plan.changes,
        })
    }
}

/// Close an output; forget its metrics when no output of its name runs on.
fn retire(h: Handle, metrics: Option<&Metrics>) {
    let name = h.spec.name.clone();
    h.close();
    if let Some(metrics) = metrics {
        metrics.forget_output(&name);
    }
}

impl Outputs {
    /// For a reload: what runs now.
    pub fn stager(&self) -> Stager {
        Stager {
            running: self.outputs.iter().map(|h| h.spec.clone()).collect(),
            context: self.context.clone(),
            retiring: self.retiring.clone(),
        }
    }

    /// Put `staged` in place of the running outputs; what it replaces
    /// writes out its queue and stops off the loop. Does not block.
    pub fn swap(&mut self, staged: Staged) -> OutputChanges {
        let mut old: HashMap<String, Handle> = self
            .outputs
            .drain(..)
            .map(|h| (h.spec.name.clone(), h))
            .collect();
        let names: Vec<String> = staged
            .outputs
            .iter()
            .map(|s| match s {
                Staging::Keep(name) => name.clone(),
                Staging::Running(h) => h.spec.name.clone(),
                Staging::After { spec, .. } => spec.name.clone(),
            })
            .collect();
        // Metrics are by name: an output whose name stays keeps them.
        let forget =
            |name: &str| (!names.iter().any(|n| n == name)).then(|| self.context.metrics.clone());
        for s in staged.outputs {
            match s {
                Staging::Keep(name) => self.outputs.extend(old.remove(&name)),
                Staging::Running(h) => self.outputs.push(h),
                Staging::After {
                    spec,
                    sender,
                    predecessors,
                } => {
                    let before: Vec<(Handle, Option<Metrics>)> = predecessors
                        .iter()
                        .filter_map(|n| old.remove(n))
                        .map(|h| {
                            let m = forget(&h.spec.name);
                            (h, m)
                        })
                        .collect();
                    match self.after(spec, sender, before) {
                        Ok(h) => self.outputs.push(h),
                        Err(e) => tracing::error!("reload: {}", crate::errors::error_text(&e)),
                    }
                }
            }
        }
        let stopping: Vec<(Handle, Option<Metrics>)> = staged
            .stopped
            .iter()
            .filter_map(|n| old.remove(n))
            .map(|h| {
                let m = forget(&h.spec.name);
                (h, m)
            })
            .collect();
        if !stopping.is_empty() {
            self.retiring.add(1);
            let retiring = self.retiring.clone();
            let spawned = std::thread::Builder::new()
                .name("out-retire".into())
                .spawn(move || {
                    for (h, m) in stopping {
                        retire(h, m.as_ref());
                    }
                    retiring.finished();
                });
            if let Err(e) = spawned {
                // The closure and its outputs are gone with the error: their
                // threads end on their own once their queues are empty.
                self.retiring.finished();
                tracing::error!(
                    "reload: cannot start a thread to close the old outputs: {}",
                    crate::errors::error_text(&e)
                );
            }
        }
        staged.changes
    }

    /// Start `spec` on the resource `before` used, once they have stopped.
    fn after(
        &self,
        spec: OutputSpec,
        sender: Option<Sender>,
        before: Vec<(Handle, Option<Metrics>)>,
    ) -> Result<Handle, super::OutputError> {
        let m = self.context.metrics.output(&spec.name);
        let state = self.context.state.clone();
        let opening = spec.clone();
        launch(spec, m.clone(), &self.context, move |run| {
            for (h, metrics) in before {
                retire(h, metrics.as_ref());
            }
            match Target::open(&opening, &state, sender) {
                Ok(target) => {
                    // The queued count carries on from the replaced output.
                    if let Target::Network { spool, .. } = &target {
                        m.spool_bytes.set(spool.bytes() as i64);
                    }
                    run(target)
                }
                Err(e) => tracing::error!(
                    "{}; its events are dropped until the next reload",
                    crate::errors::error_text(&e)
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::config::{Format, OutputConfig, resolve};

    fn specs(urls: &[(&str, &str)]) -> Vec<OutputSpec> {
        let configs: Vec<OutputConfig> = urls
            .iter()
            .map(|(name, url)| OutputConfig {
                name: Some(name.to_string()),
                ..OutputConfig::from_url(url)
            })
            .collect();
        resolve(&configs, Format::Native).unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_same_configuration_carries_every_output_over() {
        let running = specs(&[
            ("events", "/var/log/secretmon/events.jsonl"),
            ("siem", "syslog+tcp://siem.example:514"),
        ]);
        let p = plan(&running, &running);
        assert_eq!(
            p.outputs,
            vec![Step::Keep("events".into()), Step::Keep("siem".into())]
        );
        assert!(p.stopped.is_empty());
        assert!(p.changes.is_empty());
    }

    #[test]
    fn an_added_output_starts_at_once_and_a_removed_one_stops() {
        let running = specs(&[
            ("events", "/var/log/secretmon/events.jsonl"),
            ("siem", "syslog+tcp://siem.example:514"),
        ]);
        let new = specs(&[
            ("events", "/var/log/secretmon/events.jsonl"),
            ("collector", "https://collector.example/v1/logs"),
        ]);
        let p = plan(&running, &new);
        assert_eq!(
            p.outputs,
            vec![
                Step::Keep("events".into()),
                Step::Start(Box::new(new[1].clone()), vec![])
            ]
        );
        assert_eq!(p.stopped, names(&["siem"]));
        assert_eq!(
            p.changes,
            OutputChanges {
                added: names(&["collector"]),
                changed: vec![],
                removed: names(&["siem"]),
            }
        );
    }

    #[test]
    fn a_changed_output_waits_for_the_one_it_replaces_on_its_spool() {
        let running = specs(&[("siem", "syslog+tcp://siem.example:514")]);
        let new = specs(&[("siem", "syslog+tcp://siem2.example:514")]);
        let p = plan(&running, &new);
        assert_eq!(
            p.outputs,
            vec![Step::Start(Box::new(new[0].clone()), names(&["siem"]))]
        );
        assert!(p.stopped.is_empty());
        assert_eq!(p.changes.changed, names(&["siem"]));
    }

    #[test]
    fn a_renamed_file_output_waits_for_the_one_that_wrote_its_file() {
        let running = specs(&[("a", "/var/log/secretmon/events.jsonl"), ("stdout", "-")]);
        let new = specs(&[("b", "/var/log/secretmon/events.jsonl")]);
        let p = plan(&running, &new);
        assert_eq!(
            p.outputs,
            vec![Step::Start(Box::new(new[0].clone()), names(&["a"]))]
        );
        // Stdout has no successor: it just stops.
        assert_eq!(p.stopped, names(&["stdout"]));
        assert_eq!(
            p.changes,
            OutputChanges {
                added: names(&["b"]),
                changed: vec![],
                removed: names(&["a", "stdout"]),
            }
        );
    }

    #[test]
    fn a_network_output_renamed_gets_a_spool_of_its_own() {
        // Spools are by name: the new one does not share the old one's.
        let running = specs(&[("siem", "syslog+tcp://siem.example:514")]);
        let new = specs(&[("siem-eu", "syslog+tcp://siem.example:514")]);
        let p = plan(&running, &new);
        assert_eq!(
            p.outputs,
            vec![Step::Start(Box::new(new[0].clone()), vec![])]
        );
        assert_eq!(p.stopped, names(&["siem"]));
    }

    #[test]
    fn a_new_default_format_changes_the_outputs_that_take_it() {
        let configs = [
            OutputConfig::from_url("/var/log/secretmon/events.jsonl"),
            OutputConfig {
                format: Some(Format::Native),
                ..OutputConfig::from_url("syslog+tcp://siem.example:514")
            },
        ];
        let running = resolve(&configs, Format::Native).unwrap();
        let new = resolve(&configs, Format::Ocsf).unwrap();
        let p = plan(&running, &new);
        assert_eq!(p.changes.changed, vec![new[0].name.clone()]);
        assert_eq!(p.outputs[1], Step::Keep(new[1].name.clone()));
    }

    /// Outputs as `secretmon run` starts them, writing under `dir`.
    fn running(dir: &std::path::Path, specs: Vec<OutputSpec>) -> Outputs {
        let (reports, _) = tokio::sync::mpsc::unbounded_channel();
        Outputs::start(specs, dir, &Metrics::new("1.5.0"), reports).unwrap()
    }

    fn route(outputs: &mut Outputs, numbers: std::ops::Range<usize>) {
        let host = crate::event::Host {
            name: "web-1".into(),
        };
        outputs.route(numbers.map(|n| {
            crate::event::Event::new(
                chrono::Utc::now(),
                &host,
                crate::event::Body::Agent(crate::event::Agent {
                    status: crate::event::AgentStatus::Lost,
                    message: format!("event {n}"),
                    lost: n as u64,
                    kernel_errors: Default::default(),
                    output: None,
                    identity_cache: None,
                    capture: None,
                    watch_overflow: None,
                    reload: None,
                }),
            )
        }));
    }

    /// The numbers of the events in a file output, in file order.
    fn numbers_in(path: &std::path::Path) -> Vec<usize> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["lost"].as_u64().unwrap() as usize
            })
            .collect()
    }

    #[test]
    fn a_swap_routes_each_event_once_and_hands_a_rebuilt_output_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        let (a_url, b_url) = (a.to_str().unwrap(), b.to_str().unwrap());
        let mut outputs = running(dir.path(), specs(&[("a", a_url)]));
        route(&mut outputs, 0..5000);
        // `a` rebuilt on its file (another rotation setting), `b` added.
        let mut new = specs(&[("a", a_url), ("b", b_url)]);
        new[0].max_files = 9;
        let staged = outputs.stager().stage(new.clone()).unwrap();
        // Staged, not yet swapped in: still the old outputs' events.
        route(&mut outputs, 5000..10000);
        assert_eq!(
            outputs.swap(staged),
            OutputChanges {
                added: names(&["b"]),
                changed: names(&["a"]),
                removed: vec![],
            }
        );
        route(&mut outputs, 10000..15000);
        let staged = outputs.stager().stage(vec![new[0].clone()]).unwrap();
        assert_eq!(outputs.swap(staged).removed, names(&["b"]));
        route(&mut outputs, 15000..20000);
        outputs.close();
        assert_eq!(numbers_in(&a), (0..20000).collect::<Vec<_>>());
        assert_eq!(numbers_in(&b), (10000..15000).collect::<Vec<_>>());
    }

    #[test]
    fn an_output_that_cannot_start_leaves_the_running_ones_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "").unwrap();
        let bad = not_a_dir.join("c.jsonl");
        let running_specs = specs(&[("a", a.to_str().unwrap())]);
        let mut outputs = running(dir.path(), running_specs.clone());
        route(&mut outputs, 0..100);
        let mut new = running_specs.clone();
        new.extend(specs(&[(
            "ok",
            dir.path().join("ok.jsonl").to_str().unwrap(),
        )]));
        new.extend(specs(&[("c", bad.to_str().unwrap())]));
        let err = outputs.stager().stage(new).err().unwrap().to_string();
        assert!(
            err.contains("output `c`") && err.contains("c.jsonl"),
            "{err}"
        );
        route(&mut outputs, 100..200);
        outputs.close();
        assert_eq!(numbers_in(&a), (0..200).collect::<Vec<_>>());
        // Started before `c` failed, and closed again: it got nothing.
        assert_eq!(
            numbers_in(&dir.path().join("ok.jsonl")),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn a_changed_network_output_takes_over_its_spool_with_nothing_lost_or_doubled() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on: every event stays spooled.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let old = specs(&[("siem", &format!("syslog+tcp://127.0.0.1:{port}"))]);
        let mut outputs = running(dir.path(), old.clone());
        route(&mut outputs, 0..300);
        let mut new = old.clone();
        new[0].facility = crate::outputs::config::Facility::Local0;
        let staged = outputs.stager().stage(new).unwrap();
        assert_eq!(outputs.swap(staged).changed, names(&["siem"]));
        route(&mut outputs, 300..700);
        outputs.close();
        let spool = crate::outputs::spool::Spool::open(
            &crate::outputs::config::spool_dir(dir.path(), "siem"),
            old[0].spool_bytes,
        )
        .unwrap();
        assert_eq!(spool.pending(), 700);
    }
}
