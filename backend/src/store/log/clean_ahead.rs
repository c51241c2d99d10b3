//! The background cleaner's steps overlapped: the next victim is read while the copies of the
//! last are written, so the device serves the cleaner's reads and its writes together instead
//! of one after the other. In the full-disk random writes a step read for about 4 ms, then
//! copied and wrote for about 6, in series, and the guest (paced to the cleaner) went no faster
//! than the blocks those steps won back (docs/benchmarks.md, "More batches in flight, the next
//! victim read ahead").
//!
//! The reads run on one thread kept for the cleaner's life (`keel-clean-read`), not one per
//! step: a step comes every few milliseconds under load, and the segment-sized buffers a read
//! fills go back to that thread once their copies are written, so its buffer pool serves the
//! next read instead of a fresh, zeroed allocation each time.
//!
//! The two halves of a step share nothing but the store: the read-ahead victim stays pinned
//! until its own step writes it, and that step drops every move the guest overtook meanwhile,
//! so reading it early only costs copies that may have died since.

use super::cleaner::{CleanReport, ReadVictims};
use super::io_class::{ClassGuard, IoClass};
use crate::store::Store;
use crate::store::buf::AlignedBuf;
use crate::store::error::Result;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::{Scope, ScopedJoinHandle};

/// The cleaner's steps, with the victim read for the next one, if any.
pub(in crate::store) struct CleanAhead<'scope> {
    next: Option<ReadVictims>,
    /// The thread that reads ahead; none if it could not be started or has failed.
    reader: Option<Reader<'scope>>,
    /// Buffers of victims written, for the reader's pool.
    used: Vec<AlignedBuf>,
}

/// What the reader is asked for: the next victim, not one of `exclude`.
struct Request {
    class: IoClass,
    max_live: u32,
    exclude: Vec<u64>,
    /// Buffers to give back to the reader's pool (dropped on its thread).
    used: Vec<AlignedBuf>,
}

type Answer = Result<Option<ReadVictims>>;

struct Reader<'scope> {
    requests: Sender<Request>,
    answers: Receiver<Answer>,
    thread: ScopedJoinHandle<'scope, ()>,
}

impl<'scope> CleanAhead<'scope> {
    /// Steps of cleaning `store`, reading ahead on a thread of `scope` (which outlives them).
    pub fn new(scope: &'scope Scope<'scope, '_>, store: &'scope Store) -> Self {
        let (requests, asked) = channel::<Request>();
        let (answer, answers) = channel::<Answer>();
        let spawned = std::thread::Builder::new()
            .name("keel-clean-read".into())
            .spawn_scoped(scope, move || serve(store, &asked, &answer));
        let reader = match spawned {
            Ok(thread) => Some(Reader {
                requests,
                answers,
                thread,
            }),
            Err(e) => {
                log::warn!("cleaner: no thread to read ahead, reading in turn ({e})");
                None
            }
        };
        Self {
            next: None,
            reader,
            used: Vec::new(),
        }
    }

    /// One cleaning step of one victim: writes the one read ahead (or reads one now) and, with
    /// `read_next`, has the next one read (its I/O in `class` too) while this one's copies are
    /// written. Nothing when no segment holds garbage worth reclaiming.
    pub fn step(
        &mut self,
        store: &Store,
        class: IoClass,
        read_next: bool,
    ) -> Result<Option<CleanReport>> {
        let max_live = store.clean_max_live();
        let current = match self.next.take() {
            Some(read) => read,
            None => match store.read_victims(1, max_live, 0, &[])? {
                Some(read) => read,
                None => return Ok(None),
            },
        };
        let asked = read_next && self.ask(class, max_live, current.segments());
        let written = {
            let mut cw = store.lock(&store.cleaner_writer);
            store.write_victims(&mut cw, current, &mut self.used)
        };
        if asked {
            self.next = self.answer();
        }
        written.map(|r| r.into_iter().next())
    }

    /// Asks the reader for the next victim; whether it took the request.
    fn ask(&mut self, class: IoClass, max_live: u32, exclude: Vec<u64>) -> bool {
        let Some(reader) = &self.reader else {
            return false;
        };
        let request = Request {
            class,
            max_live,
            exclude,
            used: std::mem::take(&mut self.used),
        };
        if reader.requests.send(request).is_ok() {
            return true;
        }
        self.reader_failed();
        false
    }

    /// The reader's answer to the request it took.
    fn answer(&mut self) -> Option<ReadVictims> {
        let reader = self.reader.as_ref()?;
        match reader.answers.recv() {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                log::warn!("cleaner: reading the next victim ahead: {e}");
                None
            }
            Err(_) => {
                self.reader_failed();
                None
            }
        }
    }

    /// The reader is gone (it only stops on its own by panicking): the steps go on reading
    /// in turn.
    fn reader_failed(&mut self) {
        if let Some(reader) = self.reader.take() {
            drop(reader.requests);
            if reader.thread.join().is_err() {
                log::error!("cleaner: the thread reading ahead panicked; reading in turn");
            }
        }
    }

    /// The segments of the victim read ahead (none if none is).
    #[cfg(test)]
    pub fn read_ahead(&self) -> Vec<u64> {
        self.next
            .as_ref()
            .map(ReadVictims::segments)
            .unwrap_or_default()
    }

    /// Whether reads ahead run on their thread.
    #[cfg(test)]
    pub fn reads_ahead(&self) -> bool {
        self.reader.is_some()
    }
}

/// The reader's life: one victim read per request, until the cleaner goes.
fn serve(store: &Store, requests: &Receiver<Request>, answers: &Sender<Answer>) {
    while let Ok(request) = requests.recv() {
        drop(request.used);
        let _class = ClassGuard::enter(request.class);
        let read = store.read_victims(1, request.max_live, 0, &request.exclude);
        if answers.send(read).is_err() {
            return;
        }
    }
}
