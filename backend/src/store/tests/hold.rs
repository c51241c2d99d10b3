//! A point where a test holds one of the store's threads (inside a device call) until it lets
//! it go: the tests' held devices share it.

use std::sync::{Condvar, Mutex};

#[derive(Default)]
struct State {
    held: bool,
    open: bool,
    /// The thread to be held finished without reaching the point.
    done: bool,
}

#[derive(Default)]
pub(super) struct Hold {
    state: Mutex<State>,
    cv: Condvar,
}

impl Hold {
    /// Holds the calling thread until [`release`](Self::release); with `first_only`, only
    /// if no thread was held here before.
    pub fn hold(&self, first_only: bool) {
        let mut g = self.state.lock().unwrap();
        if first_only && g.held {
            return;
        }
        g.held = true;
        self.cv.notify_all();
        while !g.open {
            g = self.cv.wait(g).unwrap();
        }
    }

    /// Waits until a thread is held; false if [`done`](Self::done) came first.
    pub fn wait_held(&self) -> bool {
        let mut g = self.state.lock().unwrap();
        while !g.held && !g.done {
            g = self.cv.wait(g).unwrap();
        }
        g.held
    }

    /// The thread to be held finished without being held.
    pub fn done(&self) {
        self.state.lock().unwrap().done = true;
        self.cv.notify_all();
    }

    /// Lets every held thread go, and any that reaches the point later.
    pub fn release(&self) {
        self.state.lock().unwrap().open = true;
        self.cv.notify_all();
    }
}
