//! Usage of SPEC §11: what each client's requests cost. [`count`] reads
//! usage from responses (pure), [`price`] prices it, [`ledger`] holds the
//! limits and month figures in memory, [`store`] keeps every request (SQLite
//! off the request path), [`meter`] ties them to one request.

pub mod count;
pub mod ledger;
pub(crate) mod meter;
pub mod price;
pub mod store;
pub mod time;
