//! The local control channel of a running node: a Unix socket `control.sock` in its data dir,
//! mode 0600, so only the operator's account can use it. The running node holds the sled lock on
//! the data dir, so commands that change its state (`fedmesh admit`) go through here.
//!
//! One JSON request line per connection, one JSON reply line back. Requests are bounded
//! ([`MAX_LINE`]); the node answers each through its round runtime, which owns the state.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::runtime::PendingRequest;

/// Largest request line (a join request is at most 4 KiB, hex doubles it).
pub const MAX_LINE: usize = 16 * 1024;

/// File name of the socket in the data dir.
pub const SOCKET: &str = "control.sock";

/// What the operator asks of its node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// The join requests this node knows of, pending.
    List,
    /// Take up a join request (hex of its bytes, as `fedmesh join` writes it) and vote for it.
    Submit { request: String },
    /// Vote for a pending request, named by the joiner's peer id or a prefix of its hash.
    Approve { who: String },
}

/// The node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Pending(Vec<PendingRequest>),
    /// This member voted for the request (`fresh` false: it had voted before).
    Voted {
        hash: String,
        peer_id: String,
        fresh: bool,
    },
    Error(String),
}

/// A command with the channel for its reply, handed to the runtime.
#[derive(Debug)]
pub struct Message {
    pub command: Command,
    pub reply: oneshot::Sender<Reply>,
}

/// The socket's path in `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Listen on the control socket of `data_dir` and pass each command to `tx`. A stale socket
/// file from an earlier run is replaced (the sled lock already ensures one node per data dir).
#[cfg(unix)]
pub fn listen(data_dir: &Path, tx: mpsc::Sender<Message>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot create the control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            // One connection at a time is plenty for an operator; a slow client cannot hold the
            // node up for more than the timeout.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), serve_one(stream, tx))
                .await;
        }
    });
    Ok(())
}

#[cfg(unix)]
async fn serve_one(stream: tokio::net::UnixStream, tx: mpsc::Sender<Message>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_LINE as u64));
    let reply = match reader.read_line(&mut line).await {
        Ok(_) if !line.ends_with('\n') => Reply::Error(format!(
            "request longer than {MAX_LINE} bytes or not ended by a newline"
        )),
        Ok(_) => match serde_json::from_str::<Command>(line.trim()) {
            Ok(command) => {
                let (reply, rx) = oneshot::channel();
                if tx.send(Message { command, reply }).await.is_err() {
                    Reply::Error("the node is stopping".into())
                } else {
                    rx.await
                        .unwrap_or_else(|_| Reply::Error("the node is stopping".into()))
                }
            }
            Err(e) => Reply::Error(format!("not a control command: {e}")),
        },
        Err(e) => Reply::Error(format!("cannot read the request: {e}")),
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// Send `command` to the node running on `data_dir` and wait for its reply.
#[cfg(unix)]
pub fn call(data_dir: &Path, command: &Command) -> anyhow::Result<Reply> {
    use std::io::{BufRead, Read, Write};
    let path = socket_path(data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the node's control socket {}: is the node running with this data dir?",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(15)))?;
    let mut line = serde_json::to_string(command)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .take(1 << 20)
        .read_line(&mut answer)
        .context("no answer from the node")?;
    serde_json::from_str(answer.trim()).context("the node's answer is not a control reply")
}

#[cfg(not(unix))]
pub fn listen(_: &Path, _: mpsc::Sender<Message>) -> anyhow::Result<()> {
    tracing::warn!("no control socket on this platform: `fedmesh admit` is unavailable");
    Ok(())
}

#[cfg(not(unix))]
pub fn call(_: &Path, _: &Command) -> anyhow::Result<Reply> {
    anyhow::bail!("the control socket needs a Unix platform")
}
