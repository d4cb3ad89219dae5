//! Publishing to the ordered topic: the record format ([`record`]).
pub mod record;
