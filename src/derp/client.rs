//! A minimal DERP client, for tests of the relay and of the HTTP front door
//! (run it on the stream left after `101 Switching Protocols`), for
//! benchmarks and for probes. Real nodes use Tailscale's own client.

use std::io;

use crypto_box::aead::Aead;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::wire::derp::{FrameType, Header, Key, Repr, HEADER_LEN, NONCE_LEN, PROTOCOL_VERSION};

/// Options sent in ClientInfo.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Mesh key (makes this a trusted mesh peer if the server shares it).
    pub mesh_key: Option<Key>,
}

/// A connected, handshaken DERP client over `S`.
pub struct DerpClient<S> {
    stream: BufReader<S>,
    public: Key,
    server_key: Key,
    buf: Vec<u8>,
}

impl<S> std::fmt::Debug for DerpClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerpClient").finish_non_exhaustive()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<S: AsyncRead + AsyncWrite + Unpin> DerpClient<S> {
    /// Run the client side of the handshake: read ServerKey, send sealed
    /// ClientInfo, and wait for ServerInfo. A Health frame or EOF instead of
    /// ServerInfo (the server refused us) is an error carrying its text.
    pub async fn connect(
        stream: S,
        private_key: [u8; 32],
        opts: ClientOptions,
    ) -> io::Result<DerpClient<S>> {
        let secret = SecretKey::from_bytes(private_key);
        let public = secret.public_key().to_bytes();
        let mut c = DerpClient {
            stream: BufReader::with_capacity(4 << 10, stream),
            public,
            server_key: [0; 32],
            buf: Vec::new(),
        };
        let f = c.recv_frame().await?;
        let Ok((Repr::ServerKey { key }, _)) = Repr::parse_bytes(f) else {
            return Err(invalid("expected DERP ServerKey".into()));
        };
        c.server_key = key;

        let mut json = format!("{{\"version\":{PROTOCOL_VERSION},\"CanAckPings\":true");
        if let Some(mk) = opts.mesh_key {
            let hex: String = mk.iter().map(|b| format!("{b:02x}")).collect();
            json.push_str(&format!(",\"meshKey\":\"{hex}\""));
        }
        json.push('}');
        let boxed = SalsaBox::new(&PublicKey::from_bytes(key), &secret);
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
        let sealed = boxed
            .encrypt(&nonce.into(), json.as_bytes())
            .map_err(|_| io::Error::other("sealing ClientInfo"))?;
        c.send_repr(&Repr::ClientInfo {
            key: public,
            nonce,
            sealed: &sealed,
        })
        .await?;

        loop {
            let f = c.recv_frame().await?;
            match Repr::parse_bytes(f).map(|(r, _)| r) {
                Ok(Repr::ServerInfo { nonce, sealed }) => {
                    boxed
                        .decrypt(&nonce.into(), sealed)
                        .map_err(|_| invalid("ServerInfo box does not open".into()))?;
                    return Ok(c);
                }
                Ok(Repr::Health { problem }) if !problem.is_empty() => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        problem.to_string(),
                    ));
                }
                _ => continue,
            }
        }
    }

    /// Our node public key.
    pub fn public_key(&self) -> Key {
        self.public
    }

    /// The server's DERP public key.
    pub fn server_key(&self) -> Key {
        self.server_key
    }

    /// Send `packet` to `dst` through the relay.
    pub async fn send_packet(&mut self, dst: &Key, packet: &[u8]) -> io::Result<()> {
        self.send_repr(&Repr::SendPacket { dst: *dst, packet })
            .await
    }

    /// Send any frame.
    pub async fn send_repr(&mut self, r: &Repr<'_>) -> io::Result<()> {
        let w = self.stream.get_mut();
        w.write_all(&r.to_vec()).await?;
        w.flush().await
    }

    /// Receive the next frame, header included; parse it with
    /// [`Repr::parse_bytes`]. The bytes live until the next call.
    pub async fn recv_frame(&mut self) -> io::Result<&[u8]> {
        let mut head = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut head).await?;
        let h = Header::parse(&head).map_err(|e| invalid(e.to_string()))?;
        self.buf.clear();
        self.buf.extend_from_slice(&head);
        self.buf.resize(HEADER_LEN + h.payload_len, 0);
        self.stream.read_exact(&mut self.buf[HEADER_LEN..]).await?;
        Ok(&self.buf)
    }

    /// Receive until a relayed packet arrives, answering pings and skipping
    /// everything else; returns (source, packet).
    pub async fn recv_packet(&mut self) -> io::Result<(Key, Vec<u8>)> {
        loop {
            let f = self.recv_frame().await?;
            if f[0] == u8::from(FrameType::Ping) {
                if let Ok((Repr::Ping { data }, _)) = Repr::parse_bytes(f) {
                    self.send_repr(&Repr::Pong { data }).await?;
                }
                continue;
            }
            if let Ok((Repr::RecvPacket { src, packet }, _)) = Repr::parse_bytes(f) {
                return Ok((src, packet.to_vec()));
            }
        }
    }
}
