//! Usage of SPEC §11: what each request cost. Today the pure counting per
//! protocol ([`count`]); limits, the store and `/usage` build on it.

pub mod count;
