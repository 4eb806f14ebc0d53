//! Small pure helpers for the HTTP front door's DERP endpoints (derp.md
//! §3.1), so the listener code needs no DERP knowledge beyond calling them.
//! No I/O here: the front door parses the request and writes the bytes.

use crate::wire::derp::{Key, PROTOCOL_VERSION};

/// True if the request's `Upgrade` header asks for DERP. Go compares it
/// case-insensitively; anything else on `/derp` deserves `426 Upgrade
/// Required`.
pub fn is_derp_upgrade(upgrade: Option<&str>) -> bool {
    upgrade.is_some_and(|u| u.trim().eq_ignore_ascii_case("derp"))
}

/// The `101 Switching Protocols` head to write before handing the stream to
/// [`crate::derp::serve_derp_conn`]. Clients only check the status code;
/// the `Derp-*` headers are informational (hex server key, as Go sends it).
pub fn switching_protocols_response(server_key: &Key) -> String {
    let hex: String = server_key.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: DERP\r\n\
         Connection: Upgrade\r\n\
         Derp-Version: {PROTOCOL_VERSION}\r\n\
         Derp-Public-Key: {hex}\r\n\r\n"
    )
}

/// For `GET /generate_204`: the `X-Tailscale-Response` value to send back
/// for a `X-Tailscale-Challenge`, or `None` if the challenge is absent or
/// not ≤ 64 characters of `[A-Za-z0-9._:-]` (then the header is omitted,
/// which is what captive-portal detection expects from a strict server).
pub fn generate_204_response(challenge: Option<&str>) -> Option<String> {
    let c = challenge?;
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then(|| format!("response {c}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_header() {
        assert!(is_derp_upgrade(Some("DERP")));
        assert!(is_derp_upgrade(Some("derp")));
        assert!(is_derp_upgrade(Some(" Derp ")));
        assert!(!is_derp_upgrade(Some("websocket")));
        assert!(!is_derp_upgrade(None));
    }

    #[test]
    fn switching_protocols() {
        let r = switching_protocols_response(&[0xab; 32]);
        assert!(r.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(r.contains("\r\nUpgrade: DERP\r\n"));
        assert!(r.contains(&format!("Derp-Public-Key: {}\r\n", "ab".repeat(32))));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn challenge() {
        assert_eq!(
            generate_204_response(Some("ts_1.2:3-x")),
            Some("response ts_1.2:3-x".to_string())
        );
        assert_eq!(generate_204_response(Some("bad value")), None);
        assert_eq!(generate_204_response(Some(&"a".repeat(65))), None);
        assert!(generate_204_response(Some(&"a".repeat(64))).is_some());
        assert_eq!(generate_204_response(Some("")), None);
        assert_eq!(generate_204_response(None), None);
    }
}
