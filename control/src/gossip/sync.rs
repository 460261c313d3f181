//! Full syncs of the tables over TCP 7946 (networkdb's bulk sync, `bulkSyncNode` in
//! `daemon/libnetwork/networkdb/cluster.go`, over memberlist's push/pull stream): one node
//! connects, sends every entry it knows, and reads back every entry the other knows; each
//! side applies what is newer. A node does one with a random other node every 30 s
//! (memberlist's LAN `PushPullInterval`, what networkdb's periodic bulk sync runs on) and
//! one with every node it sees come up (networkdb's sync on join), so a node that missed a
//! broadcast, was away, or just started holds everyone's entries within one round.
//!
//! Each message is one memberlist encrypted stream frame (hashicorp/memberlist `net.go`,
//! `encryptLocalState` / `decryptRemoteState`): the `encryptMsg` type byte (10), the
//! sealed length as a big-endian u32, and the sealed bytes ([`super::keyring`]'s version
//! 1 envelope) with those five header bytes as the authenticated data. A frame larger
//! than [`MAX_STATE`] is refused before it is read, as memberlist refuses one over its
//! `maxPushStateBytes`; a peer that stalls is dropped after [`TIMEOUT`].

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::keyring::{self, KEY_LEN};
use super::table::Event;

/// Between two periodic full syncs.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// The largest sealed state accepted: every row a node keeps, at the largest an event can
/// be, fits (memberlist's own limit, `maxPushStateBytes`, is 20 MB).
pub const MAX_STATE: usize = 32 << 20;
/// A whole exchange's bound.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// memberlist's `encryptMsg` message type.
const ENCRYPT_MSG: u8 = 10;

/// What one side of a full sync sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The sender's node ID.
    pub from: String,
    /// Every entry it knows, tombstones included.
    pub events: Vec<Event>,
}

/// Seals `state` as one stream frame.
pub fn frame(key: &[u8; KEY_LEN], state: &State) -> std::io::Result<Vec<u8>> {
    let plain = postcard::to_allocvec(state).map_err(std::io::Error::other)?;
    let len = keyring::sealed_len(plain.len());
    if len > MAX_STATE {
        return Err(std::io::Error::other(format!(
            "the state to send is {len} bytes, over the {MAX_STATE}-byte limit"
        )));
    }
    let mut out = Vec::with_capacity(5 + len);
    out.push(ENCRYPT_MSG);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    let sealed = keyring::seal_with(key, &plain, &out[..5])
        .ok_or_else(|| std::io::Error::other("sealing the state"))?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Reads one frame from `r` and opens it with one of `keys`.
pub async fn read<R: AsyncReadExt + Unpin>(
    r: &mut R,
    keys: &[[u8; KEY_LEN]],
) -> std::io::Result<State> {
    let head = read_head(r).await?;
    read_rest(r, head, keys).await
}

/// Reads a frame's 5-byte header.
pub async fn read_head<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<[u8; 5]> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    Ok(head)
}

/// Reads the rest of the frame whose header is `head` and opens it with one of `keys`.
pub async fn read_rest<R: AsyncReadExt + Unpin>(
    r: &mut R,
    head: [u8; 5],
    keys: &[[u8; KEY_LEN]],
) -> std::io::Result<State> {
    if head[0] != ENCRYPT_MSG {
        return Err(std::io::Error::other(format!(
            "not an encrypted state (message type {})",
            head[0]
        )));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_STATE {
        return Err(std::io::Error::other(format!(
            "a state of {len} bytes, over the {MAX_STATE}-byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let plain = keyring::open_with(keys, &body, &head)
        .ok_or_else(|| std::io::Error::other("a state no key of the ring opens"))?;
    postcard::from_bytes(&plain).map_err(|e| std::io::Error::other(format!("a bad state: {e}")))
}

/// Pushes `mine` to `peer` and pulls its state back, within [`TIMEOUT`].
pub async fn exchange(
    peer: SocketAddrV4,
    key: &[u8; KEY_LEN],
    keys: &[[u8; KEY_LEN]],
    mine: &State,
) -> std::io::Result<State> {
    let out = frame(key, mine)?;
    let go = async {
        let mut s = TcpStream::connect(SocketAddr::V4(peer)).await?;
        s.set_nodelay(true)?;
        s.write_all(&out).await?;
        read(&mut s, keys).await
    };
    tokio::time::timeout(TIMEOUT, go)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "full sync timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::table::{Key, Table, Value};

    fn state() -> State {
        State {
            from: "a".into(),
            events: vec![Event {
                key: Key {
                    table: Table::Endpoint,
                    network: "n1".into(),
                    owner: "a".into(),
                    key: "t1".into(),
                },
                incarnation: 3,
                ltime: 9,
                value: Some(Value::Endpoint {
                    name: "web.1.t1".into(),
                    service: Some("web".into()),
                    vip: Some("10.0.0.2".parse().unwrap()),
                    ip: "10.0.0.3".parse().unwrap(),
                    alias: Some("t1".into()),
                }),
                reap_in_s: 0,
            }],
        }
    }

    #[tokio::test]
    async fn a_frame_opens_with_any_key_of_the_ring_and_nothing_else() {
        let (k1, k2, k3) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        let f = frame(&k2, &state()).unwrap();
        assert_eq!(f[0], ENCRYPT_MSG);
        assert_eq!(
            u32::from_be_bytes(f[1..5].try_into().unwrap()) as usize,
            f.len() - 5
        );
        assert_eq!(read(&mut &f[..], &[k1, k2]).await.unwrap(), state());
        assert!(read(&mut &f[..], &[k1, k3]).await.is_err());
        // The header is authenticated: a changed type or length is refused.
        let mut g = f.clone();
        g[4] ^= 1;
        assert!(read(&mut &g[..], &[k2]).await.is_err());
        // A claimed size over the limit is refused before anything is read.
        let mut h = vec![ENCRYPT_MSG];
        h.extend_from_slice(&((MAX_STATE + 1) as u32).to_be_bytes());
        let e = read(&mut &h[..], &[k2]).await.unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        // Truncated.
        assert!(read(&mut &f[..f.len() - 1], &[k2]).await.is_err());
    }
}
