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
///
/// The length is also kept in an atomic, written under the lock: a
/// consumer that finds it 0 returns without touching the lock, so a PMD
/// polling an empty queue every loop iteration only reads a cache line the
/// producer seldom writes (a `try_lock` per iteration writes the lock's
/// line each time, and takes it from the producer that is about to push).
/// Whoever sees a producer's later store (an epoch, with Release after the
/// push) sees the push's length too.
pub struct TryQueue<T> {
    q: std::sync::Mutex<std::collections::VecDeque<T>>,
    len: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicBool,
}

/// [`TryQueue::try_pop`] found a producer at work: try again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy;

impl<T> Default for TryQueue<T> {
    fn default() -> Self {
        TryQueue {
            q: std::sync::Mutex::new(std::collections::VecDeque::new()),
            len: std::sync::atomic::AtomicUsize::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl<T> TryQueue<T> {
    /// Records the queue's length; called with the lock held.
    fn set_len(&self, q: &std::collections::VecDeque<T>) {
        self.len
            .store(q.len(), std::sync::atomic::Ordering::Release);
    }

    fn is_seen_empty(&self) -> bool {
        self.len.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    pub fn push(&self, v: T) {
        let mut q = self.q.lock().recover();
        q.push_back(v);
        self.set_len(&q);
    }

    /// Pushes without waiting; a producer at work gives the item back.
    pub fn try_push(&self, v: T) -> Result<(), T> {
        let mut q = match self.q.try_lock() {
            Ok(q) => q,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(v),
        };
        q.push_back(v);
        self.set_len(&q);
        Ok(())
    }

    /// The oldest item (`Ok(None)`: empty), without waiting.
    pub fn try_pop(&self) -> Result<Option<T>, Busy> {
        if self.is_seen_empty() {
            return Ok(None);
        }
        let mut q = match self.q.try_lock() {
            Ok(q) => q,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(Busy),
        };
        let v = q.pop_front();
        self.set_len(&q);
        Ok(v)
    }

    /// How many items it holds, as of the last push or pop, without waiting.
    pub fn held(&self) -> usize {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the queue is empty, without waiting (a push under way when
    /// this reads counts once it is done).
    pub fn try_is_empty(&self) -> Result<bool, Busy> {
        Ok(self.is_seen_empty())
    }

    /// The oldest item, waiting for a producer that holds the lock.
    pub fn pop(&self) -> Option<T> {
        if self.is_seen_empty() {
            return None;
        }
        let mut q = self.q.lock().recover();
        let v = q.pop_front();
        self.set_len(&q);
        v
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
    fn an_empty_queue_is_seen_empty_without_its_lock() {
        let q: TryQueue<u32> = TryQueue::default();
        {
            let _held = q.q.lock().recover();
            assert_eq!(q.try_pop(), Ok(None));
            assert_eq!(q.try_is_empty(), Ok(true));
        }
        q.push(7);
        assert_eq!(q.try_push(8), Ok(()));
        assert_eq!(q.try_is_empty(), Ok(false));
        {
            let _held = q.q.lock().recover();
            assert_eq!(q.try_pop(), Err(Busy));
        }
        assert_eq!(q.try_pop(), Ok(Some(7)));
        assert_eq!(q.pop(), Some(8));
        assert_eq!(q.try_is_empty(), Ok(true));
        assert_eq!(q.pop(), None);
    }

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
