//! Privacy decisions on typed data, with no IO: which headers an upstream
//! request carries ([`headers`]) and which targets may be reached ([`target`]), and
//! how redirects are pointed back through veilgate ([`redirect`]).

pub(crate) mod headers;
pub(crate) mod redirect;
pub mod target;
