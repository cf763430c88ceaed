//! Group commit of writes: the requests this node takes while earlier ones are still being
//! replicated are proposed together as one [`Command::Batch`], i.e. one Raft entry, one log
//! append and one fsync (on every replica) for all of them.
//!
//! openraft 0.9 appends every `client_write` as its own entry and waits for that append's
//! fsync before it takes the next one, so without batching a node's write throughput is one
//! fsync per push. Here a single task pulls the queued writes: as long as fewer than
//! [`MAX_IN_FLIGHT`] batches are being written (one on the leader) it proposes whatever is
//! queued at once (a lone request waits for nobody), otherwise the queue grows until a slot
//! frees up and then goes out as one batch. Each command is still applied exactly as if it
//! had its own entry, in arrival order, and each request gets its own response; a request
//! that arrives after another's response was sent is always in a later position of the log.

use std::sync::{Arc, Weak};
use std::time::Duration;

use pgw_core::command::{Op, Payload};
use pgw_core::{Command, CommandResponse};
use pgw_raft::{Node, WriteError};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Batches being written at once by a follower, which forwards them to the leader: two
/// overlap one batch's forwarding round trip with the next (+10% cluster throughput). The
/// leader itself keeps one: its Raft core appends one entry at a time anyway, and a second
/// batch in flight only halves the batch size (-15% single-node throughput, measured).
const MAX_IN_FLIGHT: u32 = 2;
/// At most this many commands in one batch (what a leader admits from a forwarding node).
const MAX_COMMANDS: usize = pgw_core::policy::MAX_BATCH;
/// A batch is closed once its commands' payloads and keys reach this many bytes (a larger
/// push goes alone); the cluster port's message limit counts on it.
const MAX_BYTES: usize = pgw_core::policy::BATCH_BUDGET;

/// How often the memory that writes freed is handed back to the system, when the store
/// changed (on every node, the replicated writes included): glibc keeps what the push path
/// frees (bodies, decoded families, commands, log entries) in per-thread arenas, and a node
/// under steady pushes otherwise holds 50–70 MB more than its store needs at 100k series.
const TRIM_EVERY: Duration = Duration::from_secs(1);

struct Job {
    cmd: Command,
    reply: oneshot::Sender<Result<CommandResponse, WriteError>>,
}

/// The batching front of [`Node::write`].
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
    node: Arc<Node>,
    /// Writes admitted and not answered yet ([`Batcher::admit`]); bounds the queue.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    max_pending: usize,
}

/// A write's place among the `--push.max-pending-writes`; released on drop.
pub(crate) struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn payload_len(cmd: &Command) -> usize {
    let key = |k: &pgw_core::GroupingKey| -> usize {
        k.pairs().iter().map(|(a, b)| a.len() + b.len() + 4).sum()
    };
    64 + match cmd.op() {
        Some(Op::Push(p, _)) => {
            key(&p.key)
                + match &p.payload {
                    Payload::Families(b) => b.len(),
                    Payload::Invalid(m) => m.len(),
                }
        }
        Some(Op::Replace(snapshot)) => snapshot.len(),
        Some(Op::Delete(k)) => key(k),
        Some(Op::Wipe) | None => 0,
    }
}

impl Batcher {
    /// Starts the batching task (on the current Tokio runtime).
    pub(crate) fn new(node: Arc<Node>, max_pending: usize) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(node.clone(), rx));
        // Only where the runtime has worker threads (the binary's): the trim runs on the
        // blocking pool, whose real-time work would reorder the events of a simulated,
        // single-threaded runtime (tests/sim's determinism check).
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::spawn(trim(Arc::downgrade(&node)));
        }
        Batcher {
            tx,
            node,
            pending: Arc::default(),
            max_pending,
        }
    }

    /// A slot for one write, or `None` when `max_pending` writes are already waiting (the
    /// caller answers 429): the queue in front of the Raft log never grows without bound.
    pub(crate) fn admit(&self) -> Option<Slot> {
        use std::sync::atomic::Ordering::Relaxed;
        let prev = self.pending.fetch_add(1, Relaxed);
        let slot = Slot(self.pending.clone());
        (prev < self.max_pending).then_some(slot)
    }

    /// Replicates `cmd` like [`Node::write`], batched with concurrent writes.
    pub(crate) async fn write(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        if matches!(cmd, Command::Replace { .. } | Command::Wipe) {
            return self.node.write(cmd).await;
        }
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { cmd, reply }) {
            return self.node.write(job.cmd).await;
        }
        rx.await.unwrap_or(Err(WriteError::ShuttingDown))
    }
}

/// Every [`TRIM_EVERY`], if the store changed since the last time, returns free memory to the
/// system. Ends with the node.
async fn trim(node: Weak<Node>) {
    let mut seen = 0;
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        let Some(generation) = node.upgrade().map(|n| n.read(|s| s.generation())) else {
            return;
        };
        if generation != seen {
            seen = generation;
            let _ = tokio::task::spawn_blocking(super::scrape::release_memory).await;
        }
    }
}

async fn run(node: Arc<Node>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize));
    loop {
        // Wait for a free slot first: while every slot is busy, requests queue up and go out
        // together. A leader takes every slot for one batch.
        let want = if node.is_leader() { MAX_IN_FLIGHT } else { 1 };
        let Ok(permit) = slots.clone().acquire_many_owned(want).await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = payload_len(&first.cmd);
        let mut jobs = vec![first];
        while jobs.len() < MAX_COMMANDS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += payload_len(&job.cmd);
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let node = node.clone();
        tokio::spawn(async move {
            write_batch(&node, jobs).await;
            drop(permit);
        });
    }
}

async fn write_batch(node: &Node, mut jobs: Vec<Job>) {
    if jobs.len() == 1 {
        if let Some(job) = jobs.pop() {
            let _ = job.reply.send(node.write(job.cmd).await);
        }
        return;
    }
    let mut items = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job.cmd.into_item() {
            Ok(item) => {
                items.push(item);
                replies.push(job.reply);
            }
            // `Batcher::write` takes single commands only; a batch is written on its own.
            Err(inner) => {
                let _ = job.reply.send(node.write(Command::Batch(inner)).await);
            }
        }
    }
    let cmds = items;
    let n = cmds.len();
    if n == 0 {
        return;
    }
    match node.write(Command::Batch(cmds)).await {
        Ok(CommandResponse::Batch(responses)) if responses.len() == n => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response.into()));
            }
        }
        Ok(other) => {
            let msg = format!("unexpected response to a batch of {n} writes: {other:?}");
            tracing::error!("{msg}");
            for reply in replies {
                let _ = reply.send(Err(WriteError::Fatal(msg.clone())));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
