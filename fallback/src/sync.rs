//! Locks whose holder panicked (a panic is a bug and is reported where it
//! happens; the data behind these locks, MAC tables, rule handle maps,
//! event lists, test gates, stays usable, so the other threads carry on
//! with it instead of panicking in turn), and the queue a PMD takes from
//! without ever waiting ([`TryQueue`]).

use std::sync::{LockResult, PoisonError};

/// `lock()`/`read()`/`write()` results: the guard, poisoned or not.
pub trait Recover<G> {
    fn recover(self) -> G;
}

impl<G> Recover<G> for LockResult<G> {
    fn recover(self) -> G {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}

/// A queue whose consumer never waits (a PMD): a pop gives up at once when
/// a producer holds the lock (it succeeds at the consumer's next loop),
/// where a channel receive waits for a slot a sender has claimed but not
/// yet written, that is, for as long as a preempted sender stays off its
/// core. Producers lock for one push. The consumer closes it when it goes.
pub struct TryQueue<T> {
    q: std::sync::Mutex<std::collections::VecDeque<T>>,
    closed: std::sync::atomic::AtomicBool,
}

/// [`TryQueue::try_pop`] found a producer at work: try again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy;

impl<T> Default for TryQueue<T> {
    fn default() -> Self {
        TryQueue {
            q: std::sync::Mutex::new(std::collections::VecDeque::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl<T> TryQueue<T> {
    pub fn push(&self, v: T) {
        self.q.lock().recover().push_back(v);
    }

    /// Pushes without waiting; a producer at work gives the item back.
    pub fn try_push(&self, v: T) -> Result<(), T> {
        match self.q.try_lock() {
            Ok(mut q) => {
                q.push_back(v);
                Ok(())
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                p.into_inner().push_back(v);
                Ok(())
            }
            Err(std::sync::TryLockError::WouldBlock) => Err(v),
        }
    }

    /// The oldest item (`Ok(None)`: empty), without waiting.
    pub fn try_pop(&self) -> Result<Option<T>, Busy> {
        match self.q.try_lock() {
            Ok(mut q) => Ok(q.pop_front()),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner().pop_front()),
            Err(std::sync::TryLockError::WouldBlock) => Err(Busy),
        }
    }

    /// Whether the queue is empty, without waiting.
    pub fn try_is_empty(&self) -> Result<bool, Busy> {
        match self.q.try_lock() {
            Ok(q) => Ok(q.is_empty()),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner().is_empty()),
            Err(std::sync::TryLockError::WouldBlock) => Err(Busy),
        }
    }

    /// The oldest item, waiting for a producer that holds the lock.
    pub fn pop(&self) -> Option<T> {
        self.q.lock().recover().pop_front()
    }

    /// The consumer is gone: producers may stop.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_pop_gives_up_while_a_producer_holds_the_lock() {
        let q = TryQueue::default();
        q.push(1);
        q.push(2);
        {
            let _held = q.q.lock().recover();
            assert_eq!(q.try_pop(), Err(Busy));
        }
        assert_eq!(q.try_pop(), Ok(Some(1)));
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.try_pop(), Ok(None));
        assert!(!q.is_closed());
        q.close();
        assert!(q.is_closed());
    }
}
