//! Locks whose holder panicked. A panic is a bug and is reported where it
//! happens; the data behind these locks (MAC tables, rule handle maps,
//! event lists, test gates) stays usable, so the other threads carry on
//! with it instead of panicking in turn.

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
