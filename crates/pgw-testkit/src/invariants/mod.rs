//! One module per property; [`crate::check`] runs them all.

pub(crate) mod durability;
pub(crate) mod identical;
pub(crate) mod linearizable;
pub(crate) mod phantom;
pub(crate) mod push_time;
