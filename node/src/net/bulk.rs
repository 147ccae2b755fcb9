//! Bulk transfer of large gossip messages: the bounded store of bodies this node can serve, and
//! the request-response codec (`/fedmesh/bulk/1`) that fetches a body by its blake3 digest.
//!
//! A message over [`fedmesh_protocol::bulk::THRESHOLD`] is published as a small announcement;
//! its body waits in the publisher's [`Store`]. A member that hears the announcement fetches the
//! body (from the peer that forwarded the announcement, then its publisher, then any other
//! connected peer), checks it against the digest, keeps it in its own store so that it can serve
//! the peers it forwards the announcement to, and hands it to the runtime. The store forgets a
//! body after [`BODY_TTL`]: long enough to serve every peer that can still hear the announcement
//! (gossipsub's message cache keeps it 5 heartbeats, 2.5 s, plus a fetch's deadline), short enough
//! that a round's bodies are gone when the next round starts.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// The request-response protocol that serves bodies.
pub const PROTOCOL: &str = "/fedmesh/bulk/1";

/// How long a body stays fetchable after it was stored.
pub const BODY_TTL: Duration = Duration::from_secs(8);

/// Most bodies held at once (a bound against many small bulk messages).
pub const MAX_BODIES: usize = 1024;

/// Bytes the store may hold, as a multiple of the largest message.
pub const MAX_BYTES_IN_MESSAGES: usize = 16;

/// How long one fetch of one body from one peer may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// How long the node tries to fetch an announced body, over all peers, before it gives up and
/// ignores the announcement.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(10);

/// Announcements whose body is being fetched at once; more are ignored until some finish.
pub const MAX_FETCHES: usize = 128;

/// Of those, announcements forwarded by one peer: a peer that announces bodies nobody serves
/// holds at most this many fetch slots (each until [`FETCH_DEADLINE`]), never all of them.
pub const MAX_FETCHES_PER_SOURCE: usize = 32;

/// Requests in flight to one peer at once; a fetch whose next peer is at this limit waits.
pub const MAX_REQUESTS_PER_PEER: usize = 8;

/// A body's key: its blake3 digest.
pub type Digest = [u8; 32];

/// Bodies this node published or fetched, fetchable by digest for [`BODY_TTL`], bounded in
/// count and bytes (the oldest goes first).
#[derive(Debug)]
pub struct Store {
    bodies: HashMap<Digest, (Arc<Vec<u8>>, Instant)>,
    order: VecDeque<(Digest, Instant)>,
    /// This node's own bodies published since the last [`Store::release`]: its last round's.
    own: Vec<Digest>,
    bytes: usize,
    max_bytes: usize,
    max_bodies: usize,
    ttl: Duration,
}

impl Store {
    /// An empty store holding at most `max_bodies` bodies and `max_bytes` bytes, each for `ttl`.
    pub fn new(max_bodies: usize, max_bytes: usize, ttl: Duration) -> Store {
        Store {
            bodies: HashMap::new(),
            order: VecDeque::new(),
            own: Vec::new(),
            bytes: 0,
            max_bytes,
            max_bodies,
            ttl,
        }
    }

    /// Keep `body` under `digest` from `now`. Older bodies make room if needed; a body larger
    /// than the whole store is refused (false). A body already held keeps its first time.
    pub fn insert(&mut self, digest: Digest, body: Arc<Vec<u8>>, now: Instant) -> bool {
        if body.len() > self.max_bytes || self.max_bodies == 0 {
            return false;
        }
        self.expire(now);
        if self.bodies.contains_key(&digest) {
            return true;
        }
        while self.bodies.len() >= self.max_bodies || self.bytes + body.len() > self.max_bytes {
            if !self.pop_oldest() {
                break;
            }
        }
        self.bytes += body.len();
        self.bodies.insert(digest, (body, now));
        self.order.push_back((digest, now));
        true
    }

    /// [`Store::insert`] for a body this node publishes itself: the next [`Store::release`]
    /// forgets it whatever its age (a node publishes only in its current round).
    pub fn insert_own(&mut self, digest: Digest, body: Arc<Vec<u8>>, now: Instant) -> bool {
        let stored = self.insert(digest, body, now);
        if stored && self.own.len() < self.max_bodies {
            self.own.push(digest);
        }
        stored
    }

    /// The body under `digest`, if held and not expired at `now`.
    pub fn get(&self, digest: &Digest, now: Instant) -> Option<Arc<Vec<u8>>> {
        self.bodies
            .get(digest)
            .filter(|(_, at)| now.duration_since(*at) < self.ttl)
            .map(|(b, _)| b.clone())
    }

    /// Forget the body under `digest`.
    pub fn remove(&mut self, digest: &Digest) {
        if let Some((b, _)) = self.bodies.remove(digest) {
            self.bytes -= b.len();
        }
        if self.bodies.is_empty() {
            self.order.clear();
        }
    }

    /// Forget every body older than the TTL at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Bodies held.
    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// At the start of a round, forget the last round's bodies: those named in `finished` (the
    /// runtime has judged them for a round now over), this node's own since the last release,
    /// and every body stored more than `keep` before `now` (their announcements have left
    /// gossip's message cache or soon will). What stays is the newest bodies the runtime has not
    /// placed in a finished round: the next round's, which a node that commits late may already
    /// hold and its peers may still fetch. The finished round's bodies must go whatever their
    /// age: after a fast round they are younger than `keep`, and keeping them held 3–4 MB more at
    /// every other round-start trim of a secagg soak (RELIABILITY.md, Soak, Session 8).
    pub fn release(&mut self, now: Instant, keep: Duration, finished: &[Digest]) {
        let own = std::mem::take(&mut self.own);
        for digest in finished.iter().chain(&own) {
            self.remove(digest);
        }
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) < keep {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Drop the oldest body; false when there is none.
    fn pop_oldest(&mut self) -> bool {
        while let Some((digest, at)) = self.order.pop_front() {
            // The queue may name a body removed (and perhaps stored again) since: skip those.
            if self.bodies.get(&digest).is_some_and(|(_, a)| *a == at) {
                if let Some((b, _)) = self.bodies.remove(&digest) {
                    self.bytes -= b.len();
                }
                return true;
            }
        }
        false
    }
}

/// The store shared by the network task (which fills and serves it) and the node's
/// [`super::Handle`] (which releases the last round's bodies before the round-start heap trim,
/// synchronously, so that the trim finds them freed).
#[derive(Debug, Clone)]
pub struct SharedStore(Arc<Mutex<Store>>);

impl SharedStore {
    /// Share `store`.
    pub fn new(store: Store) -> SharedStore {
        SharedStore(Arc::new(Mutex::new(store)))
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // The store stays consistent even if a holder panicked mid-call: every method leaves it
        // whole before it can panic (it does not).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`Store::insert`].
    pub fn insert(&self, digest: Digest, body: Arc<Vec<u8>>, now: Instant) -> bool {
        self.lock().insert(digest, body, now)
    }

    /// See [`Store::get`].
    pub fn get(&self, digest: &Digest, now: Instant) -> Option<Arc<Vec<u8>>> {
        self.lock().get(digest, now)
    }

    /// See [`Store::remove`].
    pub fn remove(&self, digest: &Digest) {
        self.lock().remove(digest)
    }

    /// See [`Store::expire`].
    pub fn expire(&self, now: Instant) {
        self.lock().expire(now)
    }

    /// See [`Store::release`].
    pub fn release(&self, now: Instant, keep: Duration, finished: &[Digest]) {
        self.lock().release(now, keep, finished)
    }

    /// See [`Store::insert_own`].
    pub fn insert_own(&self, digest: Digest, body: Arc<Vec<u8>>, now: Instant) -> bool {
        self.lock().insert_own(digest, body, now)
    }

    /// Bodies and bytes held.
    pub fn size(&self) -> (usize, usize) {
        let s = self.lock();
        (s.len(), s.bytes())
    }
}

/// A peer's answer to a body request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkResponse {
    /// The body (not yet checked against the digest: the fetcher does that).
    Body(Arc<Vec<u8>>),
    /// The peer does not hold that body (never had it, or it expired).
    NotHeld,
}

/// The `/fedmesh/bulk/1` codec: a request is the 32-byte digest; a response is one tag byte
/// (0 not held, 1 body) and, for a body, its length (u32, big-endian) and bytes. Bodies longer
/// than `max_body` are refused before they are read.
#[derive(Debug, Clone)]
pub struct BulkCodec {
    /// Largest body this node reads (the network's `max_message_bytes`).
    pub max_body: usize,
}

const TAG_NOT_HELD: u8 = 0;
const TAG_BODY: u8 = 1;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl libp2p::request_response::Codec for BulkCodec {
    type Protocol = StreamProtocol;
    type Request = Digest;
    type Response = BulkResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Digest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut digest = [0u8; 32];
        io.read_exact(&mut digest).await?;
        Ok(digest)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BulkResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut tag = [0u8; 1];
        io.read_exact(&mut tag).await?;
        match tag[0] {
            TAG_NOT_HELD => Ok(BulkResponse::NotHeld),
            TAG_BODY => {
                let mut len = [0u8; 4];
                io.read_exact(&mut len).await?;
                let len = u32::from_be_bytes(len) as usize;
                if len > self.max_body {
                    return Err(invalid(format!(
                        "bulk body of {len} bytes exceeds the message limit of {}",
                        self.max_body
                    )));
                }
                let mut body = vec![0u8; len];
                io.read_exact(&mut body).await?;
                Ok(BulkResponse::Body(Arc::new(body)))
            }
            t => Err(invalid(format!("bulk response tag {t}"))),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        digest: Digest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&digest).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: BulkResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match res {
            BulkResponse::NotHeld => io.write_all(&[TAG_NOT_HELD]).await?,
            BulkResponse::Body(body) => {
                let len = u32::try_from(body.len())
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "body too large"))?;
                io.write_all(&[TAG_BODY]).await?;
                io.write_all(&len.to_be_bytes()).await?;
                io.write_all(&body).await?;
            }
        }
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec as _;

    fn body(n: usize, fill: u8) -> Arc<Vec<u8>> {
        Arc::new(vec![fill; n])
    }

    #[test]
    fn store_caps_bodies_and_bytes_oldest_first() {
        let t0 = Instant::now();
        let mut s = Store::new(3, 100, Duration::from_secs(10));
        for i in 0..3u8 {
            assert!(s.insert([i; 32], body(10, i), t0));
        }
        assert!(
            s.insert([3; 32], body(10, 3), t0),
            "a fourth body evicts the first"
        );
        assert_eq!(s.len(), 3);
        assert!(s.get(&[0; 32], t0).is_none());
        assert_eq!(s.get(&[3; 32], t0).unwrap()[0], 3);
        assert!(
            s.insert([4; 32], body(90, 4), t0),
            "a large body evicts until it fits"
        );
        assert_eq!(
            (s.len(), s.bytes()),
            (2, 100),
            "two oldest went, the newest small one stays"
        );
        assert!(s.get(&[3; 32], t0).is_some());
        assert!(
            !s.insert([5; 32], body(101, 5), t0),
            "larger than the store: refused"
        );
        assert_eq!(s.bytes(), 100);
        s.remove(&[4; 32]);
        assert_eq!((s.len(), s.bytes()), (1, 10));
    }

    #[test]
    fn store_expires_bodies() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(8);
        let mut s = Store::new(10, 1000, ttl);
        s.insert([1; 32], body(10, 1), t0);
        s.insert([2; 32], body(10, 2), t0 + Duration::from_secs(5));
        assert!(s
            .get(&[1; 32], t0 + ttl - Duration::from_millis(1))
            .is_some());
        assert!(
            s.get(&[1; 32], t0 + ttl).is_none(),
            "expired bodies are not served"
        );
        s.expire(t0 + ttl);
        assert_eq!((s.len(), s.bytes()), (1, 10));
        s.expire(t0 + Duration::from_secs(13));
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }

    #[test]
    fn store_reinsert_after_remove_keeps_accounting() {
        let t0 = Instant::now();
        let mut s = Store::new(2, 1000, Duration::from_secs(8));
        s.insert([1; 32], body(10, 1), t0);
        s.remove(&[1; 32]);
        s.insert([2; 32], body(10, 2), t0);
        let t1 = t0 + Duration::from_secs(1);
        s.insert([1; 32], body(10, 1), t1);
        // The stale queue entry of the first [1] must not evict the second one.
        s.insert([3; 32], body(10, 3), t1);
        assert!(s.get(&[1; 32], t1).is_some());
        assert!(s.get(&[2; 32], t1).is_none());
        assert_eq!((s.len(), s.bytes()), (2, 20));
        s.expire(t0 + Duration::from_secs(20));
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }

    #[test]
    fn release_keeps_only_the_newest() {
        let t0 = Instant::now();
        let s = SharedStore::new(Store::new(10, 1000, Duration::from_secs(8)));
        s.insert([1; 32], body(10, 1), t0);
        s.insert([2; 32], body(20, 2), t0 + Duration::from_millis(2500));
        s.release(t0 + Duration::from_secs(3), Duration::from_secs(1), &[]);
        assert_eq!(s.size(), (1, 20));
        assert!(s.get(&[2; 32], t0 + Duration::from_secs(3)).is_some());
        s.release(t0 + Duration::from_secs(4), Duration::ZERO, &[]);
        assert_eq!(s.size(), (0, 0));
    }

    /// The finished round's bodies and this node's own go at the release however young they
    /// are; a young body of the next round stays.
    #[test]
    fn release_forgets_the_finished_round_whatever_its_age() {
        let t0 = Instant::now();
        let s = SharedStore::new(Store::new(10, 1000, Duration::from_secs(8)));
        s.insert([1; 32], body(10, 1), t0); // the finished round's, fetched
        assert!(s.insert_own([2; 32], body(20, 2), t0)); // the finished round's, our own
        s.insert([3; 32], body(30, 3), t0); // the next round's, fetched early
        let now = t0 + Duration::from_millis(200);
        s.release(now, Duration::from_secs(1), &[[1; 32], [9; 32]]);
        assert_eq!(s.size(), (1, 30));
        assert!(s.get(&[3; 32], now).is_some());
        // Own bodies are forgotten once: a later release does not carry them over.
        assert!(s.insert_own([4; 32], body(40, 4), now));
        s.release(now, Duration::from_secs(1), &[]);
        assert_eq!(
            s.size(),
            (1, 30),
            "the own body of the round just over went"
        );
        s.insert([4; 32], body(40, 4), now);
        s.release(now, Duration::from_secs(1), &[]);
        assert_eq!(
            s.size(),
            (2, 70),
            "a fetched body is not taken for an own one"
        );
    }

    #[tokio::test]
    async fn codec_round_trip_and_refusals() {
        let proto = StreamProtocol::new(PROTOCOL);
        let mut c = BulkCodec { max_body: 1000 };
        for res in [BulkResponse::NotHeld, BulkResponse::Body(body(1000, 7))] {
            let mut buf = futures::io::Cursor::new(Vec::new());
            c.write_response(&proto, &mut buf, res.clone())
                .await
                .unwrap();
            let mut r = futures::io::Cursor::new(buf.into_inner());
            assert_eq!(c.read_response(&proto, &mut r).await.unwrap(), res);
        }
        let mut buf = futures::io::Cursor::new(Vec::new());
        c.write_request(&proto, &mut buf, [9; 32]).await.unwrap();
        let mut r = futures::io::Cursor::new(buf.into_inner());
        assert_eq!(c.read_request(&proto, &mut r).await.unwrap(), [9; 32]);

        let mut big = vec![TAG_BODY];
        big.extend_from_slice(&1001u32.to_be_bytes());
        let mut r = futures::io::Cursor::new(big);
        assert!(
            c.read_response(&proto, &mut r).await.is_err(),
            "over the limit"
        );
        let mut r = futures::io::Cursor::new(vec![2u8]);
        assert!(
            c.read_response(&proto, &mut r).await.is_err(),
            "unknown tag"
        );
        let mut short = vec![TAG_BODY];
        short.extend_from_slice(&10u32.to_be_bytes());
        short.extend_from_slice(&[0; 5]);
        let mut r = futures::io::Cursor::new(short);
        assert!(c.read_response(&proto, &mut r).await.is_err(), "truncated");
        let mut r = futures::io::Cursor::new(vec![0u8; 31]);
        assert!(
            c.read_request(&proto, &mut r).await.is_err(),
            "short digest"
        );
    }
}
