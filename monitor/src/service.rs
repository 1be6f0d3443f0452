//! The service manager's side of the agent (systemd, `Type=notify`): ready
//! once the probes are attached, reloading on SIGHUP, stopping, a status
//! line, and the watchdog's keep-alive. Not under a service manager (no
//! `NOTIFY_SOCKET`), each call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

pub struct Notifier {
    /// `WatchdogSec=` of the unit, when it set one for this process.
    watchdog: Option<Duration>,
    /// A failed send is logged once, not on every ping.
    warned: bool,
}

impl Notifier {
    pub fn from_env() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
            warned: false,
        }
    }

    /// How often to say "alive": twice per watchdog period, as sd_notify(3)
    /// advises. `None` without a watchdog.
    pub fn keepalive_period(&self) -> Option<Duration> {
        self.watchdog
            .map(|d| (d / 2).max(Duration::from_millis(10)))
    }

    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Until the next [`Notifier::ready`].
    pub fn reloading(&mut self) {
        // systemd wants the monotonic time with RELOADING=1 (notify-reload).
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&mut self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    pub fn status(&mut self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// WATCHDOG=1: called from the agent's event loop, so it stops when the
    /// loop (and with it the drain of the ring buffer) stalls.
    pub fn alive(&mut self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&mut self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states)
            && !self.warned
        {
            self.warned = true;
            tracing::warn!(
                "cannot notify the service manager: {}",
                crate::errors::error_text(&e)
            );
        }
    }
}
