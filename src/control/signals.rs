//! Signals of a running server.
//!
//! - SIGHUP reloads what Headscale reloads, the policy file (Headplane sends
//!   it after editing the config), and fetches the DERP map sources again.
//!   The DNS extra-records file is re-read whenever it changes (polled), so
//!   it needs no signal. Connected clients stay connected: a changed policy
//!   reaches them as a filter update.
//! - SIGTERM and SIGINT make recent relaxed commits durable, remove the
//!   admin socket and exit 0, so a service manager's stop is clean.

use super::SharedServer;
use async_signal::{Signal, Signals};
use futures_lite::StreamExt;

pub fn spawn(server: &SharedServer) {
    let mut signals = match Signals::new([Signal::Hup, Signal::Term, Signal::Int]) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("signals: {e} (SIGHUP will not reload)");
            return;
        }
    };
    let server = server.clone();
    smol::spawn(async move {
        while let Some(sig) = signals.next().await {
            match sig {
                Ok(Signal::Hup) => {
                    log::info!("SIGHUP: reloading the policy file and the DERP map");
                    super::policy::reload_if_changed(&server, true);
                    super::derpmap::refresh(&server).await;
                }
                Ok(sig) => {
                    log::info!("{sig:?}: flushing the database and stopping");
                    if let Err(e) = server.state().store.flush() {
                        log::error!("flushing the database: {e}");
                    }
                    let _ = std::fs::remove_file(&server.cfg.unix_socket);
                    std::process::exit(0);
                }
                Err(e) => log::warn!("signals: {e}"),
            }
        }
    })
    .detach();
}
