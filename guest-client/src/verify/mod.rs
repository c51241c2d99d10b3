//! Data-integrity checking: write self-describing blocks, remember what a completed FLUSH
//! promised, and later check that the disk kept the promise.
//!
//! Writes go in epochs. Before an epoch starts, the state file records the epoch's generation
//! and its blocks as *pending*; the writes are issued and completed, a FLUSH is issued and
//! completed, and only then are those blocks recorded as *flushed* at that generation (in the
//! same atomic state-file update that announces the next epoch). A crash at any point therefore
//! leaves every block allowed exactly its flushed generation, or that or the pending one.

pub mod block;
pub mod check;
pub mod state;

use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::buffer::Buffer;
use crate::queue::{Push, Queue};
use crate::request::{Completion, Request};
use check::{CheckReport, Rules, judge};
use state::{State, StateError};

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error(transparent)]
    Disk(#[from] crate::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Config(String),
    #[error(
        "block {block} (offset {offset}) holds {verdict} data before writing resumes: {detail}"
    )]
    Unresolved {
        block: u64,
        offset: u64,
        verdict: &'static str,
        detail: String,
    },
}

pub type Result<T> = std::result::Result<T, VerifyError>;

#[derive(Clone, Debug)]
pub struct VerifyConfig {
    pub block_size: usize,
    pub blocks: u64,
    pub seed: u64,
    pub iodepth: usize,
    /// Writes per epoch, i.e. between FLUSHes.
    pub flush_every: usize,
    /// Passes over all blocks; `Some(0)` runs until `duration` passes or the process is killed.
    pub rounds: u64,
    pub duration: Option<Duration>,
    pub rules: Rules,
}

impl VerifyConfig {
    pub fn validate(&self, capacity: u64) -> Result<()> {
        if self.block_size < block::MIN_BLOCK || !self.block_size.is_multiple_of(block::MIN_BLOCK) {
            return Err(VerifyError::Config(format!(
                "block size {} must be a multiple of {}",
                self.block_size,
                block::MIN_BLOCK
            )));
        }
        if self.blocks == 0 || self.iodepth == 0 || self.flush_every == 0 {
            return Err(VerifyError::Config(
                "--blocks, --iodepth and --flush-every must be at least 1".into(),
            ));
        }
        let needed = self.blocks.saturating_mul(self.block_size as u64);
        if needed > capacity {
            return Err(crate::Error::DeviceTooSmall { needed, capacity }.into());
        }
        Ok(())
    }

    fn offset(&self, block: u64) -> u64 {
        block * self.block_size as u64
    }
}

/// Loads the state at `path`, or starts a fresh one; refuses one made for other parameters.
pub fn open_state(path: &Path, config: &VerifyConfig) -> Result<State> {
    match State::load(path)? {
        Some(s) => {
            s.check_matches(path, config.block_size as u32, config.blocks, config.seed)?;
            Ok(s)
        }
        None => Ok(State::new(
            config.block_size as u32,
            config.blocks,
            config.seed,
        )),
    }
}

/// What a write run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WriteSummary {
    pub writes: u64,
    pub flushes: u64,
    pub passes: u64,
    pub last_generation: u64,
}

/// Writes generations of blocks in epochs, saving `state` to `path` after every FLUSH.
pub fn write(
    queue: &mut Queue,
    state: &mut State,
    path: &Path,
    config: &VerifyConfig,
) -> Result<WriteSummary> {
    config.validate(queue.limits().capacity)?;
    resolve_pending(queue, state, path, config)?;
    let started = Instant::now();
    let out_of_time = || config.duration.is_some_and(|d| started.elapsed() >= d);
    let forever = config.rounds == 0;
    let mut summary = WriteSummary::default();
    let mut io = Pipeline::new(queue, config)?;
    'passes: while forever || summary.passes < config.rounds {
        let mut order: Vec<u64> = (0..config.blocks).collect();
        fastrand::Rng::with_seed(config.seed ^ state.last_generation.rotate_left(17))
            .shuffle(&mut order);
        for epoch in order.chunks(config.flush_every) {
            if out_of_time() {
                break 'passes;
            }
            let generation = state.last_generation + 1;
            if generation > u64::from(u32::MAX) {
                return Err(VerifyError::Config("generation counter exhausted".into()));
            }
            state.set_pending(generation, epoch.to_vec());
            state.save(path)?;
            io.write_blocks(queue, epoch, generation, state.seed)?;
            if queue.limits().flush {
                queue.flush()?;
                summary.flushes += 1;
            }
            for &b in epoch {
                state.flushed[b as usize] = generation as u32;
            }
            state.last_generation = generation;
            state.set_pending(0, Vec::new());
            summary.writes += epoch.len() as u64;
        }
        summary.passes += 1;
    }
    state.save(path)?;
    summary.last_generation = state.last_generation;
    Ok(summary)
}

/// Before new writes, settles blocks whose writes were in flight when a previous run stopped:
/// reads what each holds (it must be one of the two allowed generations), flushes so that
/// content is durable, and records it as flushed.
fn resolve_pending(
    queue: &mut Queue,
    state: &mut State,
    path: &Path,
    config: &VerifyConfig,
) -> Result<()> {
    if state.pending.is_empty() {
        return Ok(());
    }
    let pending = state.pending.clone();
    let mut io = Pipeline::new(queue, config)?;
    let mut found = Vec::with_capacity(pending.len());
    io.read_blocks(queue, &pending, |block, data| {
        let (verdict, detail) = judge(state, block, data, Rules::default());
        if verdict != check::Verdict::Ok {
            return Err(VerifyError::Unresolved {
                block,
                offset: config.offset(block),
                verdict: verdict.name(),
                detail,
            });
        }
        let generation = match block::inspect(data) {
            block::Content::Stamp { generation, .. } => generation,
            _ => 0,
        };
        found.push((block, generation));
        Ok(())
    })?;
    if queue.limits().flush {
        queue.flush()?;
    }
    for (block, generation) in found {
        state.flushed[block as usize] = generation as u32;
    }
    state.last_generation = state.last_generation.max(state.pending_generation);
    state.set_pending(0, Vec::new());
    state.save(path)?;
    Ok(())
}

/// Reads every block and judges it against `state`.
pub fn check(queue: &mut Queue, state: &State, config: &VerifyConfig) -> Result<CheckReport> {
    config.validate(queue.limits().capacity)?;
    let mut report = CheckReport::default();
    let blocks: Vec<u64> = (0..state.blocks()).collect();
    let mut io = Pipeline::new(queue, config)?;
    io.read_blocks(queue, &blocks, |block, data| {
        let (verdict, detail) = judge(state, block, data, config.rules);
        report.add(block, config.offset(block), verdict, detail);
        Ok(())
    })?;
    Ok(report)
}

/// Keeps `iodepth` block-sized requests in flight on one queue.
struct Pipeline {
    idle: Vec<Buffer>,
    block_size: usize,
    /// Block number of each token (token = index into this vector).
    blocks: Vec<u64>,
    scratch: Vec<u8>,
    done: Vec<Completion>,
}

impl Pipeline {
    fn new(queue: &Queue, config: &VerifyConfig) -> Result<Self> {
        let depth = config.iodepth.min(queue.request_capacity(1)).max(1);
        let idle = (0..depth)
            .map(|_| queue.alloc(config.block_size))
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Self {
            idle,
            block_size: config.block_size,
            blocks: vec![0; depth],
            scratch: vec![0; config.block_size],
            done: Vec::with_capacity(depth),
        })
    }

    fn write_blocks(
        &mut self,
        queue: &mut Queue,
        blocks: &[u64],
        generation: u64,
        seed: u64,
    ) -> Result<()> {
        let mut next = blocks.iter();
        let mut free_tokens: Vec<usize> = (0..self.idle.len()).collect();
        loop {
            while let (Some(_), Some(&token)) = (self.idle.last(), free_tokens.last()) {
                let Some(&block) = next.next() else { break };
                let mut buf = self
                    .idle
                    .pop()
                    .ok_or_else(|| VerifyError::Config("no buffer".into()))?;
                free_tokens.pop();
                block::fill(&mut self.scratch, seed, block, generation);
                buf.write_at(0, &self.scratch)?;
                self.blocks[token] = block;
                let offset = block * self.block_size as u64;
                self.push(
                    queue,
                    Request::Write {
                        offset,
                        buffers: vec![buf],
                    },
                    token,
                )?;
            }
            queue.kick()?;
            if queue.in_flight() == 0 {
                return Ok(());
            }
            queue.wait(&mut self.done)?;
            for mut c in self.done.drain(..) {
                c.result()?;
                free_tokens.push(c.token as usize);
                if let Some(b) = c.buffers.pop() {
                    self.idle.push(b);
                }
            }
        }
    }

    fn read_blocks(
        &mut self,
        queue: &mut Queue,
        blocks: &[u64],
        mut each: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut next = blocks.iter();
        let mut free_tokens: Vec<usize> = (0..self.idle.len()).collect();
        loop {
            while let (Some(_), Some(&token)) = (self.idle.last(), free_tokens.last()) {
                let Some(&block) = next.next() else { break };
                let buf = self
                    .idle
                    .pop()
                    .ok_or_else(|| VerifyError::Config("no buffer".into()))?;
                free_tokens.pop();
                self.blocks[token] = block;
                let offset = block * self.block_size as u64;
                self.push(
                    queue,
                    Request::Read {
                        offset,
                        buffers: vec![buf],
                    },
                    token,
                )?;
            }
            queue.kick()?;
            if queue.in_flight() == 0 {
                return Ok(());
            }
            queue.wait(&mut self.done)?;
            let mut done = std::mem::take(&mut self.done);
            for mut c in done.drain(..) {
                c.result()?;
                let token = c.token as usize;
                free_tokens.push(token);
                if let Some(b) = c.buffers.pop() {
                    b.read_at(0, &mut self.scratch)?;
                    self.idle.push(b);
                }
                each(self.blocks[token], &self.scratch)?;
            }
            self.done = done;
        }
    }

    fn push(&mut self, queue: &mut Queue, request: Request, token: usize) -> Result<()> {
        match queue.push(request, token as u64)? {
            Push::Queued => Ok(()),
            // The pipeline never holds more requests than the ring has entries.
            Push::Full(_) => Err(VerifyError::Config(format!(
                "queue full at depth {}; lower --iodepth",
                self.blocks.len()
            ))),
        }
    }
}
