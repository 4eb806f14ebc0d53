//! The top-level room: `tinyscale serve`. It builds the control plane and
//! the planes above it (OIDC, ACME), binds every listener (main, TLS, admin
//! socket, metrics, STUN, ACME HTTP-01), starts the background tasks and
//! wires the pieces together: the transport ([`crate::http`]) gets [`App`]
//! as its [`http::Service`] (the route table is [`router`]'s) and the control
//! plane as the handler of the requests inside Noise. No other module
//! imports this one.

mod metrics;
mod router;

use crate::config::Config;
use crate::control::{self, SharedServer};
use crate::http;
use async_io::Async;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// The running server: the control plane and the planes wired around it.
pub struct App {
    pub server: SharedServer,
    /// OpenID Connect login (`oidc.issuer` set).
    #[cfg(feature = "oidc")]
    pub oidc: Option<crate::oidc::Oidc>,
    /// ACME certificates (`tls_letsencrypt_hostname` set).
    #[cfg(feature = "acme")]
    pub acme: Option<Arc<crate::acme::Manager>>,
}

/// Runs `tinyscale serve` until the process is stopped.
pub fn serve(cfg: Config) -> io::Result<()> {
    crate::logging::init(&cfg.log_level);
    crate::logging::raise_nofile_limit();
    let app = build(cfg)?;
    run_forever(app)
}

/// Loads the store and the keys, builds the planes the configuration asks
/// for and the TLS certificate source.
pub fn build(cfg: Config) -> io::Result<Arc<App>> {
    #[cfg(feature = "oidc")]
    let mut oidc = None;
    #[cfg(feature = "acme")]
    let mut acme = None;
    let server = control::build_server(cfg, |cfg| {
        #[cfg(feature = "oidc")]
        {
            oidc = crate::oidc::from_config(cfg)?;
        }
        #[cfg(not(feature = "oidc"))]
        if let Some(o) = cfg.oidc.as_ref() {
            let msg = "oidc.issuer is set but this tinyscale was built without the `oidc` feature";
            if o.only_start_if_oidc_is_available {
                return Err(io::Error::other(format!(
                    "{msg}; rebuild with --features oidc, or set oidc.only_start_if_oidc_is_available: false to approve logins with `tinyscale auth register`"
                )));
            }
            log::warn!("{msg}; logins are approved with `tinyscale auth register`");
        }
        #[cfg(not(feature = "acme"))]
        if cfg.acme.is_some() {
            return Err(io::Error::other(
                "tls_letsencrypt_hostname is set but this tinyscale was built without the `acme` feature; rebuild with --features acme, or use tls_cert_path/tls_key_path",
            ));
        }
        #[cfg(feature = "acme")]
        {
            acme = match &cfg.acme {
                Some(a) => Some(crate::acme::Manager::new(a.clone())?),
                None => None,
            };
        }
        Ok(match cfg.tls_listen_addr {
            #[cfg(feature = "acme")]
            Some(_) if acme.is_some() => acme
                .as_ref()
                .map(|m| -> io::Result<_> {
                    let m2 = m.clone();
                    Ok(http::tls::Tls {
                        acceptor: crate::acme::acceptor(m)?,
                        pin: None,
                        ready: Some(Arc::new(move || m2.validity().is_some())),
                    })
                })
                .transpose()?,
            Some(_) => Some(http::tls::load_or_generate(
                cfg.tls_cert_path.as_deref(),
                cfg.tls_key_path.as_deref(),
                &cfg.data_dir,
                tls_names(cfg),
            )?),
            None => None,
        })
    })?;
    Ok(Arc::new(App {
        server,
        #[cfg(feature = "oidc")]
        oidc,
        #[cfg(feature = "acme")]
        acme,
    }))
}

/// Names the generated certificate is valid for: the control host and the
/// DERP addresses clients dial.
fn tls_names(cfg: &Config) -> Vec<String> {
    let mut v = vec![control::netmap::server_host(cfg)];
    v.extend(cfg.derp_ipv4.iter().cloned());
    v.extend(cfg.derp_ipv6.iter().cloned());
    if let Some(a) = cfg.tls_listen_addr.filter(|a| !a.ip().is_unspecified()) {
        v.push(a.ip().to_string());
    }
    v.sort();
    v.dedup();
    v.retain(|s| !s.is_empty() && s != "none");
    v
}

/// Starts every listener and serves until the process ends.
pub fn run_forever(app: Arc<App>) -> io::Result<()> {
    if std::env::var_os("SMOL_THREADS").is_none() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("SMOL_THREADS", n.to_string());
    }
    let server = &app.server;
    // Headscale's TLS: `listen_addr: 0.0.0.0:443` with a certificate makes that one listener
    // HTTPS. Ours would bind the plain listener and then fail the TLS bind of the same socket, so
    // when both name one socket the TLS listener serves everything (control, API, pages, DERP).
    let single = server.tls.is_some()
        && server
            .cfg
            .tls_listen_addr
            .is_some_and(|t| same_socket(t, server.cfg.listen_addr));
    let listener = if single { None } else { Some(bind(server)?) };
    if let Some(addr) = server.cfg.stun_listen_addr {
        if server.cfg.derp_server_enabled {
            start_stun(addr);
        }
    }
    start_admin(server)?;
    if let Some(addr) = server.cfg.metrics_listen_addr {
        metrics::spawn(server, addr);
    }
    let tls = start_tls(&app);
    #[cfg(feature = "acme")]
    let _http01 = start_acme_http01(&app);
    spawn_background(&app);
    control::signals::spawn(server);
    match listener {
        Some(listener) => {
            println!(
                "tinyscale listening on {}; server_url {}",
                server.cfg.listen_addr, server.cfg.server_url
            );
            let _tls = tls;
            let adm = server.admission.clone();
            smol::block_on(http::accept_loop(app, adm, listener));
        }
        None => {
            // The only listener: without it there is no server (start_tls said why).
            let tls = tls.ok_or_else(|| {
                io::Error::other(format!(
                    "listen_addr {} (HTTPS, the same socket as tls_listen_addr) could not be bound",
                    server.cfg.listen_addr
                ))
            })?;
            println!(
                "tinyscale listening on {} (HTTPS); server_url {}",
                server.cfg.listen_addr, server.cfg.server_url
            );
            smol::block_on(tls);
        }
    }
    Ok(())
}

/// Whether two listen addresses name one socket: the same port on the same address, or on
/// addresses that overlap because one of them is the unspecified address.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn start_stun(addr: SocketAddr) {
    match crate::derp::stun::spawn_stun(addr) {
        Ok(s) => {
            log::info!("STUN on {}", s.local_addr());
            s.detach();
        }
        Err(e) => log::warn!("STUN on {addr}: {e} (clients will take longer to find direct paths)"),
    }
}

/// The control plane's background tasks, and ACME's renewals.
fn spawn_background(app: &Arc<App>) {
    control::spawn_background(&app.server);
    #[cfg(feature = "acme")]
    if let Some(m) = &app.acme {
        crate::acme::spawn_renewer(m);
        if m.validity().is_none() {
            // Offer the relay once the first certificate is in.
            let weak = Arc::downgrade(&app.server);
            let m = m.clone();
            smol::spawn(async move {
                loop {
                    async_io::Timer::after(std::time::Duration::from_secs(1)).await;
                    let Some(server) = weak.upgrade() else { return };
                    if m.validity().is_some() {
                        control::derpmap::refresh(&server).await;
                        return;
                    }
                }
            })
            .detach();
        }
    }
}

/// Binds the TLS listener (when configured) and serves it on a task that
/// runs as long as the returned handle is kept.
fn start_tls(app: &Arc<App>) -> Option<smol::Task<()>> {
    let server = &app.server;
    let (Some(addr), Some(tls)) = (server.cfg.tls_listen_addr, server.tls.as_ref()) else {
        return None;
    };
    match Async::<TcpListener>::bind(addr) {
        Ok(l) => {
            let port = l
                .get_ref()
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(addr.port());
            let _ = server.tls_port.set(port);
            log::info!("TLS (DERP, HTTPS control) on {addr} (port {port})");
            Some(smol::spawn(http::accept_loop_tls(
                app.clone(),
                server.admission.clone(),
                l,
                tls.acceptor.clone(),
            )))
        }
        Err(e) => {
            let relay = if server.derp.is_some() {
                "the DERP map offers no embedded region"
            } else {
                "no DERP relay"
            };
            log::warn!("tls_listen_addr {addr}: {e} ({relay}; no HTTPS control fallback)");
            if server.derp.is_some() {
                // Said where a new user looks, not only in the log.
                eprintln!("tinyscale: tls_listen_addr {addr}: {e}: no embedded DERP relay is offered to clients (bind a port you may use, e.g. tls_listen_addr: 0.0.0.0:8443, or run with CAP_NET_BIND_SERVICE)");
            }
            None
        }
    }
}

/// The HTTP-01 listener (`tls_letsencrypt_listen`) when ACME validates
/// over HTTP; it answers challenge tokens and nothing else.
#[cfg(feature = "acme")]
fn start_acme_http01(app: &App) -> Option<smol::Task<()>> {
    let m = app.acme.as_ref()?;
    if m.cfg.challenge != crate::config::AcmeChallenge::Http01 {
        return None;
    }
    let addr = m.cfg.listen;
    match Async::<TcpListener>::bind(addr) {
        Ok(l) => {
            log::info!("ACME HTTP-01 on {addr}");
            Some(smol::spawn(router::accept_loop_http01(m.clone(), l)))
        }
        Err(e) => {
            log::warn!("tls_letsencrypt_listen {addr}: {e} (HTTP-01 validation will fail; TLS-ALPN-01 needs no port 80)");
            None
        }
    }
}

/// A server without its admin socket would leave the CLI talking to
/// whatever else listens at that path: failing to bind it is fatal.
fn start_admin(server: &SharedServer) -> io::Result<()> {
    crate::api::spawn(server.clone()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("admin socket {}: {e}", server.cfg.unix_socket.display()),
        )
    })
}

/// Binds the control listener.
fn bind(server: &control::Server) -> io::Result<Async<TcpListener>> {
    let l = Async::<TcpListener>::bind(server.cfg.listen_addr)?;
    log::info!(
        "listening on {} (server_url {})",
        server.cfg.listen_addr,
        server.cfg.server_url
    );
    Ok(l)
}

/// Binds the control listener and serves it on smol's executor; returns
/// the bound address (tests and benchmarks bind port 0). The admin socket,
/// metrics and STUN are left to the caller.
pub fn start_background(app: &Arc<App>) -> io::Result<(SocketAddr, smol::Task<()>)> {
    let listener = bind(&app.server)?;
    let addr = listener.get_ref().local_addr()?;
    let tls = start_tls(app);
    #[cfg(feature = "acme")]
    let http01 = start_acme_http01(app);
    spawn_background(app);
    let (app, adm) = (app.clone(), app.server.admission.clone());
    Ok((
        addr,
        // The TLS task lives (and is cancelled) with the control listener's.
        smol::spawn(async move {
            let _tls = tls;
            #[cfg(feature = "acme")]
            let _http01 = http01;
            http::accept_loop(app, adm, listener).await
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::same_socket;

    #[test]
    fn one_socket_or_two() {
        let a = |s: &str| s.parse().unwrap();
        // Headscale's `listen_addr: 0.0.0.0:443` against our default tls_listen_addr.
        assert!(same_socket(a("0.0.0.0:443"), a("0.0.0.0:443")));
        assert!(same_socket(a("192.0.2.1:443"), a("0.0.0.0:443")));
        assert!(same_socket(a("[::]:443"), a("192.0.2.1:443")));
        assert!(!same_socket(a("0.0.0.0:8080"), a("0.0.0.0:443")));
        assert!(!same_socket(a("192.0.2.1:443"), a("192.0.2.2:443")));
        // Port 0 is a fresh port for each bind.
        assert!(!same_socket(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}
